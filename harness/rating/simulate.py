"""Simulated raters: the toy world's oracle answers a study (``python -m harness rate RESULTS --simulate oracle``).

The oracle rater reads the ``oracle`` score rows of the folder (exact truth per image, ``harness.toy``) and
answers every item of its list the way the page would store it, through the same database calls:

- pairwise ``composition``: the image with ``all_present`` = 1 wins; if both or neither, the one with more of
  its set's elements present (mean of ``present:<category>``); equal -> tie;
- pairwise ``identity``: ``present:character`` (the character is drawn as that character); equal -> tie;
- pairwise ``quality``: the share of prompted generic slots drawn as prompted (mean of ``kept:<category>``);
  equal, or a set with no generic slot -> tie;
- pointwise (0-10, rounded): element_integration = 10 x share present; spatial_consistency = 10 x all_present;
  semantic_accuracy = 10 x share of present and kept together; aesthetic_quality = 10 x share kept (10 when no slot).

``noise`` is the probability that an answer is replaced by a uniformly random one (left / right / tie, or 0-10),
drawn per rater from a fixed seed, so a simulated study is reproducible. Simulated answers record no time
(``seconds`` NULL). These rules stand in for people on the toy testbed only; they are not a model of raters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.io import stable_hash
from harness.rating.db import RatingsDB
from harness.rating.study import PAIRWISE_ANSWERS, POINTWISE_SCORES, Shown, Study, StudyError, answer_for
from harness.store import RETRY_STATUSES, load_scores

ORACLE = "oracle"
SIMULATED = ("oracle",)


def oracle_truth(results_dir: str | Path, keys: set[str]) -> dict[str, dict[str, float]]:
    """image key -> {oracle sub-metric: value} for ``keys``; StudyError when the folder has no oracle rows."""
    scores = load_scores(results_dir)
    rows = scores[(scores["metric"] == ORACLE) & ~scores["status"].isin(RETRY_STATUSES)
                  & scores["value"].notna()] if not scores.empty else scores
    if rows.empty:
        raise StudyError(f"{results_dir} has no oracle rows, so the oracle cannot rate: score the toy testbed's "
                         f"images first (python -m harness score {results_dir} --metric oracle)")
    truth: dict[str, dict[str, float]] = {}
    for key, sub_metric, value in zip(rows["image_key"], rows["sub_metric"], rows["value"]):
        if key in keys:
            truth.setdefault(key, {})[sub_metric] = float(value)
    missing = keys - set(truth)
    if missing:
        raise StudyError(f"{len(missing)} image(s) of the study have no oracle rows (e.g. key {sorted(missing)[0]}): "
                         f"score them first (python -m harness score {results_dir} --metric oracle)")
    return truth


def _share(values: dict[str, float], prefix: str) -> float | None:
    picked = [v for k, v in values.items() if k.startswith(prefix)]
    return float(np.mean(picked)) if picked else None


def oracle_features(values: dict[str, float]) -> dict[str, float | None]:
    present, kept = _share(values, "present:"), _share(values, "kept:")
    if present is None:  # a folder scored with all_present only
        present = values.get("all_present")
    both = [v for k, v in values.items() if k.startswith(("present:", "kept:"))]
    return {"all_present": values.get("all_present"), "present": present, "kept": kept,
            "character": values.get("present:character"), "both": float(np.mean(both)) if both else None}


def _compare(left: tuple, right: tuple) -> str:
    if None in left or None in right or left == right:
        return "tie"
    return "left" if left > right else "right"


def pairwise_answer(criterion: str, left: dict[str, float | None], right: dict[str, float | None]) -> str:
    if criterion == "composition":
        return _compare((left["all_present"], left["present"]), (right["all_present"], right["present"]))
    if criterion == "identity":
        return _compare((left["character"],), (right["character"],))
    if criterion == "quality":
        return _compare((left["kept"],), (right["kept"],))
    raise StudyError(f"the oracle rater has no rule for pairwise criterion {criterion!r}")


def pointwise_answer(criterion: str, image: dict[str, float | None]) -> str:
    value = {"element_integration": image["present"], "spatial_consistency": image["all_present"],
             "semantic_accuracy": image["both"],
             "aesthetic_quality": 1.0 if image["kept"] is None else image["kept"]}.get(criterion, "missing")
    if value == "missing":
        raise StudyError(f"the oracle rater has no rule for pointwise criterion {criterion!r}")
    return str(int(round(10 * (value or 0.0))))


def simulate(study: Study, results_dir: str | Path, db: RatingsDB, raters: int = 1, noise: float = 0.0,
             kind: str = ORACLE) -> dict[str, int]:
    """Let ``raters`` oracle raters (ids ``oracle-1``...) answer what they have not yet answered; returns
    rater -> answers added. Each rater's answers go in with one transaction."""
    if kind not in SIMULATED:
        raise StudyError(f"--simulate {kind!r}: the simulated raters are {list(SIMULATED)}")
    if not 0.0 <= noise <= 1.0:
        raise StudyError(f"--noise {noise}: give a probability between 0 and 1")
    truth = {key: oracle_features(values) for key, values in oracle_truth(results_dir, set(study.images)).items()}
    criteria = list(study.rubric.criteria)
    added = {}
    for index in range(1, raters + 1):
        rater = f"{kind}-{index}"
        rng = np.random.default_rng(int(stable_hash(["simulate", study.name, rater, noise], 16), 16))
        done = db.answered(study.name, rater)
        answers = []
        for shown in study.plan(rater):
            for criterion in criteria:
                answer = _answer(study, shown, criterion, truth)
                if rng.random() < noise:
                    options = PAIRWISE_ANSWERS if shown.right is not None else POINTWISE_SCORES
                    answer = str(options[int(rng.integers(len(options)))])
                if criterion not in done.get(shown.id, {}):
                    answers.append(answer_for(study, shown, rater, criterion, answer, seconds=None))
        db.add(answers)
        added[rater] = len(answers)
    return added


def _answer(study: Study, shown: Shown, criterion: str, truth: dict[str, dict[str, float | None]]) -> str:
    if shown.right is None:
        return pointwise_answer(criterion, truth[shown.left])
    return pairwise_answer(criterion, truth[shown.left], truth[shown.right])

