"""Answers in ratings.sqlite -> votes per pair and score rows of metric ``human`` for the tidy table.

``export_human_scores`` rewrites ``scores/human/`` from the database whole (``harness.store.replace_metric_rows``),
so an undone answer disappears from the tables too; ``python -m harness table`` and ``agreement`` call it
first, so the leaderboard gets ``human/<criterion>`` columns like any metric's. Rows, per rated image (main
items only; repeats and gold items measure the raters, not the methods):

- pairwise rubric: ``<criterion>`` = the image's share of preferences over every pair it was rated in
  (chosen = 1, tie = 0.5, the other image = 0; mean over raters and pairs), and ``<criterion>_vs_<other>``
  the same against one other method (``harness.store.pairwise_sub_metric``; not a leaderboard column);
- pointwise rubric: ``<criterion>`` = mean 0-10 score over raters, ``overall`` = mean of the criteria.

A criterion every rater answered "can't tell" gets a row with status ``refused`` and the count as reason:
missing, never 0. The metric key is made from the rubric and its version: answers given under another
version of the questions form another column.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from harness.io import stable_hash
from harness.rating.db import RatingsDB
from harness.rating.study import SKIP
from harness.store import (
    RATINGS_FILE, ImageRecord, ScoreRow, image_id, iter_images, pairwise_sub_metric, replace_metric_rows,
)

logger = logging.getLogger(__name__)

HUMAN_METRIC = "human"
EXPORT_VERSION = "1"
VOTE_COLUMNS = ["study", "rater", "item", "base_item", "kind", "expected", "criterion", "set_id", "seed", "n",
                "method_a", "method_b", "key_a", "key_b", "answer", "pref_a", "seconds"]
SCORE_COLUMNS = ["study", "rater", "item", "base_item", "kind", "expected", "criterion", "set_id", "seed", "n",
                 "method", "key", "answer", "score", "seconds"]


def pairwise_votes(answers: pd.DataFrame, keep_skips: bool = False) -> pd.DataFrame:
    """Pairwise answers oriented A/B (A = the method label first in sort order, whatever side it was shown on):
    ``pref_a`` is 1 when A was chosen, 0 for B, 0.5 for a tie (NaN for "can't tell", kept only on request)."""
    rows = answers[answers["rubric"] == "pairwise"]
    if not keep_skips:
        rows = rows[rows["answer"] != SKIP]
    if rows.empty:
        return pd.DataFrame(columns=VOTE_COLUMNS)
    left_is_a = rows["method_left"] < rows["method_right"]
    key_a = rows["image_left"].where(left_is_a, rows["image_right"])
    key_b = rows["image_right"].where(left_is_a, rows["image_left"])
    chosen = rows["image_left"].where(rows["answer"] == "left", rows["image_right"].where(rows["answer"] == "right"))
    pref_a = np.where(rows["answer"] == "tie", 0.5, np.where(chosen == key_a, 1.0, 0.0))
    pref_a = np.where(rows["answer"] == SKIP, np.nan, pref_a)
    return rows.assign(
        base_item=rows["repeat_of"].where(rows["kind"] == "repeat", rows["item"]),
        method_a=rows["method_left"].where(left_is_a, rows["method_right"]),
        method_b=rows["method_right"].where(left_is_a, rows["method_left"]),
        key_a=key_a, key_b=key_b, pref_a=pref_a)[VOTE_COLUMNS].reset_index(drop=True)


def pointwise_scores(answers: pd.DataFrame, keep_skips: bool = False) -> pd.DataFrame:
    """Pointwise answers with ``score`` as a number (NaN for "can't tell", kept only on request)."""
    rows = answers[answers["rubric"] == "pointwise"]
    if not keep_skips:
        rows = rows[rows["answer"] != SKIP]
    if rows.empty:
        return pd.DataFrame(columns=SCORE_COLUMNS)
    return rows.assign(
        base_item=rows["repeat_of"].where(rows["kind"] == "repeat", rows["item"]),
        method=rows["method_left"], key=rows["image_left"],
        score=pd.to_numeric(rows["answer"], errors="coerce"))[SCORE_COLUMNS].reset_index(drop=True)


def per_image_values(answers: pd.DataFrame) -> pd.DataFrame:
    """One row per (rubric version, image key, sub-metric) of main items: value (NaN: only skips) and count."""
    parts = []
    for (rubric, version), part in answers[answers["kind"] == "main"].groupby(["rubric", "rubric_version"]):
        if rubric == "pairwise":
            votes = pairwise_votes(part, keep_skips=True)
            sides = pd.concat([
                votes.assign(key=votes["key_a"], method=votes["method_a"], other=votes["method_b"],
                             value=votes["pref_a"]),
                votes.assign(key=votes["key_b"], method=votes["method_b"], other=votes["method_a"],
                             value=1 - votes["pref_a"])])
            overall = sides.assign(sub_metric=sides["criterion"])
            against = sides.assign(sub_metric=[pairwise_sub_metric(c, o) for c, o in
                                               zip(sides["criterion"], sides["other"])])
            long = pd.concat([overall, against])
        else:
            scores = pointwise_scores(part, keep_skips=True)
            long = scores.assign(sub_metric=scores["criterion"], value=scores["score"])
        grouped = long.groupby(["key", "sub_metric"]).agg(value=("value", "mean"), answers=("value", "size"),
                                                           votes=("value", "count")).reset_index()
        if rubric == "pointwise":
            per_criterion = grouped[grouped["votes"] > 0]
            overall = per_criterion.groupby("key").agg(value=("value", "mean"), answers=("answers", "sum"),
                                                       votes=("votes", "sum")).reset_index()
            grouped = pd.concat([grouped, overall.assign(sub_metric="overall")])
        parts.append(grouped.assign(rubric=rubric, rubric_version=version))
    if not parts:
        return pd.DataFrame(columns=["rubric", "rubric_version", "key", "sub_metric", "value", "answers", "votes"])
    return pd.concat(parts, ignore_index=True)


def human_metric_key(rubric: str, rubric_version: str) -> tuple[str, dict[str, str]]:
    settings = {"rubric": rubric, "rubric_version": rubric_version}
    return stable_hash({"metric": HUMAN_METRIC, "version": EXPORT_VERSION, "settings": settings}, 12), settings


def human_score_rows(answers: pd.DataFrame, records: dict[str, ImageRecord]) -> list[ScoreRow]:
    """Score rows of metric ``human`` for every rated image still in the folder (``records``: key -> record)."""
    rows = []
    values = per_image_values(answers)
    stale = sorted(set(values["key"]) - set(records))
    if stale:
        logger.warning("%d rated image(s) are no longer in the results folder (regenerated since); their ratings "
                       "are not exported", len(stale))
    for row in values[values["key"].isin(records)].itertuples():
        record = records[row.key]
        metric_key, settings = human_metric_key(row.rubric, row.rubric_version)
        has_votes = row.votes > 0
        rows.append(ScoreRow(
            image_id=image_id(record.method_label, record.set_id, record.seed), image_key=record.key,
            testbed=record.testbed, method=record.method, method_label=record.method_label,
            method_key=record.method_key, set_id=record.set_id, n=record.n, seed=record.seed, metric=HUMAN_METRIC,
            sub_metric=row.sub_metric, value=float(row.value) if has_votes else None,
            status="ok" if has_votes else "refused",
            reason="" if has_votes else f"every rater answered \"can't tell\" ({int(row.answers)} answers)",
            metric_key=metric_key, metric_version=EXPORT_VERSION,
            metric_settings=json.dumps(settings, sort_keys=True)))
    return rows


def read_answers(results_dir: str | Path) -> pd.DataFrame | None:
    """Every answer in the folder's ratings.sqlite; None (creating nothing) when the folder has none."""
    if not (Path(results_dir) / RATINGS_FILE).exists():
        return None
    return RatingsDB.of(results_dir).answers()


def export_human_scores(results_dir: str | Path) -> int:
    """Rewrite ``scores/human/`` from ratings.sqlite; returns the rows written (0, touching nothing, without a
    database)."""
    answers = read_answers(results_dir)
    if answers is None:
        return 0
    records = {record.key: record for record in iter_images(results_dir)}
    return replace_metric_rows(results_dir, HUMAN_METRIC, human_score_rows(answers, records))

