"""Result tables of a results folder: the tidy score table, the leaderboard, coverage and judge wins.

``python -m harness table RESULTS_DIR`` rebuilds, from the stored rows alone::

    scores.parquet, scores.csv   tidy: one row per image x metric x sub-metric (harness.store.SCORE_COLUMNS)
    leaderboard.csv              one row per method x N (and N = "all"), a column group per metric, then the
                                 cost columns (``COST_COLUMNS``: seconds and UNet evaluations per image)
    leaderboard_long.csv         the same numbers, one row per method x N x metric column group
    leaderboard.meta.json        what defines the numbers: metric settings per column group, CI method
    coverage.csv                 per method x metric: generated, failed, scored, missing and why
    judge_wtl.csv                LLM-judge pairwise win/tie/loss per method pair x N x criterion

(file names: ``harness.store``; ``validity.csv`` is ``harness.validity``'s.)

Aggregation (documented in the README and in leaderboard.meta.json): the unit is the *set*. A set's
value is the mean over its seeds that have a value; the leaderboard mean is the mean over sets, and the
95 % CI resamples sets (scipy.stats.bootstrap, BCa, fixed random_state). Missing values (status other
than ok/fallback_full_image) never enter a mean; they are counted per status instead. Costs come from the
image records, not the score rows: the mean over images of the runner's ``seconds`` and
``unet_evaluations`` (older records without the latter: counted from their recorded plan).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from harness import stats
from harness.io import atomic_write, atomic_write_json
from harness.store import (
    COVERAGE_FILE, JUDGE_FILE, LEADERBOARD_FILE, LEADERBOARD_LONG_FILE, LEADERBOARD_META_FILE, PAIRWISE_MARKER,
    SCORE_COLUMNS, SCORES_STEM, STATUSES, VALUE_STATUSES, ImageRecord, is_results_folder, iter_failures, iter_images,
    label_settings, load_scores, parse_pairwise_sub_metric, read_testbed_info,
)

JUDGE_METRIC = "llm_judge"
ALL_N = "all"
# Sub-metrics that summarise a whole image, kept in the default headline (see ``headline_columns``).
HEADLINE_SUB_METRICS = ("mean", "all_present", "all_kept", "overall")
STAT_COLUMNS = ["mean", "ci_low", "ci_high", "n_scored", "n_missing"]
# What an image costs (``cost_table``), appended to leaderboard.csv: the mean per image of each method x N.
COST_COLUMNS = {"seconds_per_image": "cost/seconds_per_image",
                "unet_evaluations_per_image": "cost/unet_evaluations_per_image",
                "shallow_evaluations_per_image": "cost/shallow_evaluations_per_image"}


# ----------------------------------------------------------------------------------------------- reading


def typed_scores(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.reindex(columns=SCORE_COLUMNS).copy()
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["n"] = frame["n"].astype(int)
    frame["seed"] = frame["seed"].astype(int)
    for column in SCORE_COLUMNS:
        if column not in ("value", "n", "seed"):
            frame[column] = frame[column].fillna("").astype(str)
    return frame


def tidy_table(results_dir: str | Path, current_keys: dict[str, str] | None = None) -> pd.DataFrame:
    """One row per image x metric x sub-metric (harness.store.load_scores), stale rows dropped.

    A row is stale when its image was regenerated since (its ``image_key`` differs from the key now in
    metadata.json); ``current_keys`` maps image_id -> key and is read from the folder when not given.
    """
    frame = typed_scores(load_scores(results_dir))  # the last row per image key x metric key x sub-metric
    if current_keys is None:
        current_keys = {record.image_id: record.key for record in iter_images(results_dir)}
    if current_keys:
        known = frame["image_id"].map(current_keys)
        frame = frame[known.isna() | (known == frame["image_key"])]
    return frame.sort_values(["method_label", "n", "set_id", "seed", "metric", "metric_key", "sub_metric"],
                             kind="stable").reset_index(drop=True)


def has_value(frame: pd.DataFrame) -> pd.Series:
    return frame["value"].notna()


# ------------------------------------------------------------------------------------- metric column groups


def is_pairwise_judge(frame: pd.DataFrame) -> pd.Series:
    """Judge pairwise rows (``composition_vs_<label>``...) belong in judge_wtl.csv, not the leaderboard."""
    return frame["sub_metric"].str.contains(PAIRWISE_MARKER, regex=False).astype(bool)


def lora_ids(records: Iterable[ImageRecord]) -> frozenset[str]:
    """Ids of every LoRA used by these images' sets (to recognise per-LoRA sub-metrics)."""
    return frozenset(lora["id"] for record in records for lora in record.loras)


def names_a_lora(frame: pd.DataFrame, ids: frozenset[str]) -> pd.Series:
    """Sub-metrics about one LoRA (``<id>``, ``dino:<id>``): each exists only in the sets holding that LoRA,
    so they stay in the tidy table but are not leaderboard columns (their per-category and mean are)."""
    if not ids:
        return pd.Series(False, index=frame.index)
    tokens = frame["sub_metric"].str.replace("=", ":", regex=False).str.split(":")
    return tokens.map(lambda parts: any(part in ids for part in parts)).astype(bool)


def column_groups(tidy: pd.DataFrame, lora_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per leaderboard column group: metric, sub_metric, metric_key, its name, version, settings.

    The name is ``metric`` (sub-metric ``all``) or ``metric/sub_metric``; ``@metric_key`` is appended only
    when one folder holds the same metric made with several settings, so names stay short and unique.
    Judge pairwise rows and per-LoRA sub-metrics (see ``names_a_lora``) get no column.
    """
    frame = tidy[~is_pairwise_judge(tidy) & ~names_a_lora(tidy, lora_ids)]
    groups = frame.drop_duplicates(["metric", "sub_metric", "metric_key"])[
        ["metric", "sub_metric", "metric_key", "metric_version", "metric_settings"]
    ].sort_values(["metric", "metric_key", "sub_metric"], kind="stable")
    keys_per_metric = groups.groupby("metric")["metric_key"].nunique()
    names = []
    for row in groups.itertuples():
        name = row.metric if row.sub_metric == "all" else f"{row.metric}/{row.sub_metric}"
        if keys_per_metric[row.metric] > 1:
            name += f"@{row.metric_key}"
        names.append(name)
    return groups.assign(column=names).reset_index(drop=True)


# ------------------------------------------------------------------------------------------- leaderboard


def primary_columns_of(results_dir: str | Path) -> list[str] | None:
    """The testbed's primary columns, as recorded in ``<results>/testbed.json`` (``harness.store``).

    None when the folder does not record them (no such file or key); ``headline_columns`` then picks a default.
    """
    columns = read_testbed_info(results_dir).get("primary_columns")
    return None if columns is None else [str(column) for column in columns]


def headline_columns(columns: Iterable[str], primary: list[str] | None) -> list[str]:
    """The columns shown first, out of the leaderboard ``columns`` present (given in leaderboard order).

    With ``primary`` (the testbed's list): those of them that have data, in the testbed's order. Without:
    a default that keeps one number per metric and question, in leaderboard order: whole-metric columns
    (no "/", e.g. ``clip_text``), per-image means over LoRAs or categories (sub-metric ``mean`` or ending
    in ``:mean``, e.g. ``arcface/mean``, ``image_ref/dino:mean``), the oracle's every-element indicators
    (``all_present``, ``all_kept``) and the judge's ``overall``. Per-category and per-element sub-metrics
    stay in the details.
    """
    present = list(dict.fromkeys(columns))
    if primary is not None:
        return [column for column in primary if column in present]
    return [column for column in present if _is_default_headline(column)]


def _is_default_headline(column: str) -> bool:
    name = column.split("@")[0]  # "@metric_key" is appended when one folder holds several settings
    if "/" not in name:
        return True
    sub_metric = name.split("/", 1)[1]
    return sub_metric in HEADLINE_SUB_METRICS or sub_metric.endswith(":mean")




def summarise(values: pd.DataFrame) -> dict[str, Any]:
    """Mean, CI and counts of one method x N x column group (rows of the tidy table)."""
    valued = values[has_value(values)]
    per_set = valued.groupby("set_id")["value"].mean().to_numpy()
    mean, low, high = stats.mean_ci(per_set)
    summary: dict[str, Any] = {
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "n_scored": int(len(valued)),
        "n_missing": int(len(values) - len(valued)),
    }
    for status, count in values.loc[~has_value(values), "status"].value_counts().items():
        summary[f"missing_{status}"] = int(count)
    return summary


def leaderboard_long(tidy: pd.DataFrame, lora_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per method_label x N (each, then ``all``) x column group with mean, CI and counts."""
    groups = column_groups(tidy, lora_ids)
    records = []
    for group in groups.itertuples():
        rows = tidy[(tidy["metric"] == group.metric) & (tidy["sub_metric"] == group.sub_metric)
                    & (tidy["metric_key"] == group.metric_key)]
        for label, by_method in rows.groupby("method_label", sort=True):
            method_keys = ",".join(sorted(by_method["method_key"].unique()))
            partitions = [(str(n), part) for n, part in by_method.groupby("n", sort=True)]
            partitions.append((ALL_N, by_method))
            for n, part in partitions:
                records.append({
                    "method_label": label,
                    "method": by_method["method"].iloc[0],
                    "method_key": method_keys,
                    "n": n,
                    "column": group.column,
                    "metric": group.metric,
                    "sub_metric": group.sub_metric,
                    "metric_key": group.metric_key,
                    **summarise(part),
                })
    long = pd.DataFrame.from_records(records)
    if long.empty:
        return pd.DataFrame(columns=["method_label", "method", "method_key", "n", "column", "metric",
                                     "sub_metric", "metric_key", *STAT_COLUMNS])
    missing_columns = sorted(c for c in long.columns if c.startswith("missing_"))
    long[missing_columns] = long[missing_columns].fillna(0).astype(int)
    return long


def n_order(n: str) -> int:
    return 10**6 if n == ALL_N else int(n)


def leaderboard_wide(long: pd.DataFrame) -> pd.DataFrame:
    """``leaderboard.csv``: one row per method x N, columns ``<group>.mean``, ``<group>.ci_low``..."""
    index = ["method_label", "method", "method_key", "n"]
    if long.empty:
        return pd.DataFrame(columns=index)
    stat_columns = STAT_COLUMNS + sorted(c for c in long.columns if c.startswith("missing_"))
    wide = long.pivot(index=index, columns="column", values=stat_columns)
    column_order = list(dict.fromkeys(long["column"]))
    ordered = [(stat, column) for column in column_order for stat in stat_columns
               if not (stat.startswith("missing_") and wide[(stat, column)].fillna(0).eq(0).all())]
    wide = wide[ordered]
    wide.columns = [f"{column}.{stat}" for stat, column in ordered]
    wide = wide.reset_index()
    wide["_order"] = wide["n"].map(n_order)
    return wide.sort_values(["method_label", "_order"]).drop(columns="_order").reset_index(drop=True)


def distinguishing_settings(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label (``store.label_settings``): the settings in which it differs from another label of the same
    method (e.g. ``single`` at ``lora_scale`` 0.4 and 1.0), {} for a method with one label."""
    differs: dict[str, dict[str, Any]] = {}
    by_method: dict[str, list[str]] = {}
    for label, info in settings.items():
        by_method.setdefault(info["method"], []).append(label)
    for labels in by_method.values():
        names = {name for label in labels for name in settings[label]["settings"]}
        varying = sorted(name for name in names
                         if len({json.dumps(settings[label]["settings"].get(name), sort_keys=True)
                                 for label in labels}) > 1)
        for label in labels:
            differs[label] = {name: settings[label]["settings"].get(name) for name in varying}
    return differs


def leaderboard_meta(tidy: pd.DataFrame, lora_ids: frozenset[str] = frozenset(),
                     settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """What defines the leaderboard numbers: compare two of these before comparing two leaderboards.

    ``methods`` names, per label, its method keys and, with ``settings`` (``store.label_settings``), the method
    and run settings of its images and the ones that tell it apart from other labels of the same method."""
    columns = {}
    for group in column_groups(tidy, lora_ids).itertuples():
        columns[group.column] = {
            "metric": group.metric,
            "sub_metric": group.sub_metric,
            "metric_key": group.metric_key,
            "metric_version": group.metric_version,
            "settings": json.loads(group.metric_settings) if group.metric_settings else {},
        }
    return {
        "testbeds": sorted(tidy["testbed"].unique().tolist()),
        "methods": _methods_meta(tidy, settings or {}),
        "columns": columns,
        "aggregation": ("unit = set: per set, mean over seeds with a value; mean over sets; missing values "
                        "(status not ok/fallback_full_image) are excluded and counted per status; per-LoRA "
                        "sub-metrics and judge pairwise rows are not leaderboard columns"),
        "ci": {"method": stats.CI_METHOD, "confidence_level": stats.CONFIDENCE_LEVEL,
               "n_resamples": stats.N_RESAMPLES, "random_state": stats.RANDOM_STATE, "resampled": "sets"},
        "generated_by": "python -m harness table",
    }


def _methods_meta(tidy: pd.DataFrame, settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    differs = distinguishing_settings(settings)
    methods = {}
    for label in sorted(set(tidy["method_label"]) | set(settings)):
        info = settings.get(label, {})
        methods[label] = {"method_keys": sorted(tidy.loc[tidy["method_label"] == label, "method_key"].unique().tolist()),
                          "method": info.get("method"), "settings": info.get("settings", {}),
                          "differs": differs.get(label, {})}
    return methods


# -------------------------------------------------------------------------------------------------- cost


def unet_evaluations(metadata: dict[str, Any]) -> tuple[float, float]:
    """(full, shallow) UNet evaluations of one image record: as the runner counted them, or, for records
    written before it did, from the recorded plan (every pass of every step, ``reuse`` passes shallow)."""
    counted = metadata.get("unet_evaluations")
    if isinstance(counted, dict):
        return float(counted.get("full", 0)), float(counted.get("shallow", 0))
    schedule = (metadata.get("plan") or {}).get("schedule")
    if not schedule:
        return np.nan, np.nan
    shallow = sum(step.get("features", []).count("reuse") for step in schedule)
    return float(sum(len(step["passes"]) for step in schedule) - shallow), float(shallow)


def cost_table(results_dir: str | Path) -> pd.DataFrame:
    """Per method x N (each, then ``all``): images, mean seconds and UNet evaluations per image, total seconds,
    device(s).

    ``seconds`` is what the runner recorded per image (sampling and decoding, plus building a merged adapter for
    the first image of a set; not model loading), so it depends on the machine named in ``device``."""
    columns = ["method_label", "n", "images", *COST_COLUMNS, "total_seconds", "device"]
    records = []
    for record in iter_images(results_dir):
        full, shallow = unet_evaluations(record.metadata)
        seconds = pd.to_numeric(record.metadata.get("seconds"), errors="coerce")
        records.append({"method_label": record.method_label, "n": str(record.n), "seconds": seconds,
                        "full": full, "shallow": shallow, "device": str(record.metadata.get("device", ""))})
    images = pd.DataFrame.from_records(records, columns=["method_label", "n", "seconds", "full", "shallow", "device"])
    rows = []
    for label, by_method in images.groupby("method_label", sort=True):
        partitions = [(n, part) for n, part in sorted(by_method.groupby("n"), key=lambda item: n_order(item[0]))]
        for n, part in partitions + [(ALL_N, by_method)]:
            rows.append({"method_label": label, "n": n, "images": len(part),
                         "seconds_per_image": part["seconds"].mean(),
                         "unet_evaluations_per_image": part["full"].mean(),
                         "shallow_evaluations_per_image": part["shallow"].mean(),
                         "total_seconds": part["seconds"].sum(min_count=1),
                         "device": ", ".join(sorted(set(part["device"]) - {""}))})
    return pd.DataFrame.from_records(rows, columns=columns)


def with_cost_columns(wide: pd.DataFrame, cost: pd.DataFrame) -> pd.DataFrame:
    """leaderboard.csv: the metric columns, then ``COST_COLUMNS`` of the same method x N."""
    named = cost.rename(columns=COST_COLUMNS)[["method_label", "n", *COST_COLUMNS.values()]]
    return wide.assign(n=wide["n"].astype(str)).merge(named, on=["method_label", "n"], how="left")


# ---------------------------------------------------------------------------------------------- coverage


COVERAGE_COLUMNS = ["method_label", "metric", "metric_key", "images_generated", "generation_failures", "images_scored",
                    "images_missing", "images_not_scored", "rows_ok", "rows_missing",
                    *[f"missing_{status}" for status in STATUSES if status not in VALUE_STATUSES],
                    "reasons"]


def coverage_table(tidy: pd.DataFrame, results_dir: str | Path | None = None) -> pd.DataFrame:
    """Per method x metric (x metric_key): images generated, generation failures, scored, missing, why.

    An image counts as *scored* for a metric when at least one of its rows has a value, *missing* when it
    has rows but none with a value, and *not scored* when the metric never wrote a row for it.
    """
    generated: Counter[str] = Counter()
    generated_ids: dict[str, set[str]] = {}
    failed: Counter[str] = Counter()
    if results_dir is not None:
        for record in iter_images(results_dir):
            generated[record.method_label] += 1
            generated_ids.setdefault(record.method_label, set()).add(record.image_id)
        for failure in iter_failures(results_dir):
            failed[failure["method_label"]] += 1
    labels = sorted(set(generated) | set(failed) | set(tidy["method_label"]))
    metrics = tidy.drop_duplicates(["metric", "metric_key"])[["metric", "metric_key"]].sort_values(
        ["metric", "metric_key"]).itertuples(index=False)
    metrics = list(metrics) or [("", "")]  # nothing scored yet: still one row per method with its counts
    records = []
    for label in labels:
        for metric, metric_key in metrics:
            rows = tidy[(tidy["method_label"] == label) & (tidy["metric"] == metric)
                        & (tidy["metric_key"] == metric_key)]
            valued_images = set(rows.loc[has_value(rows), "image_id"])
            row_images = set(rows["image_id"])
            missing_rows = rows[~has_value(rows)]
            reasons = Counter(f"{r.status}: {r.reason}" if r.reason else r.status
                              for r in missing_rows.itertuples())
            record = {
                "method_label": label,
                "metric": metric,
                "metric_key": metric_key,
                "images_generated": generated[label] if results_dir is not None else len(row_images),
                "generation_failures": failed[label],
                "images_scored": len(valued_images),
                "images_missing": len(row_images - valued_images),
                "images_not_scored": len(generated_ids.get(label, set()) - row_images),
                "rows_ok": int(has_value(rows).sum()),
                "rows_missing": int(len(missing_rows)),
            }
            for status in STATUSES:
                if status not in VALUE_STATUSES:
                    record[f"missing_{status}"] = int((missing_rows["status"] == status).sum())
            record["reasons"] = " | ".join(f"{text} (x{count})" for text, count in reasons.most_common(5))
            records.append(record)
    return pd.DataFrame.from_records(records, columns=COVERAGE_COLUMNS)


# ---------------------------------------------------------------------------------------------- the judge


def judge_pairs(tidy: pd.DataFrame) -> pd.DataFrame:
    """Pairwise judge rows as one row per (A, B, set, seed, criterion) with both scores and consistency.

    Row format (fixed by the judge metric): image A carries ``<criterion>_vs_<B>`` = A's score averaged
    over both orders and ``<criterion>_consistent_vs_<B>`` = 1/0; image B carries ``<criterion>_vs_<A>``.
    """
    judge = tidy[(tidy["metric"] == JUDGE_METRIC) & is_pairwise_judge(tidy)]
    columns = ["method_a", "method_b", "metric_key", "set_id", "n", "seed", "criterion", "score_a", "score_b",
               "consistent"]
    if judge.empty:
        return pd.DataFrame(columns=columns)
    parts = [parse_pairwise_sub_metric(sub_metric) for sub_metric in judge["sub_metric"]]
    judge = judge.assign(criterion=[p[0] for p in parts], is_consistency=[p[1] for p in parts],
                         other=[p[2] for p in parts])
    keys = ["metric_key", "set_id", "n", "seed", "criterion"]
    scores = judge[~judge["is_consistency"]]
    a_side = scores.rename(columns={"method_label": "method_a", "other": "method_b", "value": "score_a"})
    b_side = scores.rename(columns={"method_label": "method_b", "other": "method_a", "value": "score_b"})
    pairs = a_side[keys + ["method_a", "method_b", "score_a"]].merge(
        b_side[keys + ["method_a", "method_b", "score_b"]], on=keys + ["method_a", "method_b"], how="inner")
    consistency = judge[judge["is_consistency"]].rename(
        columns={"method_label": "method_a", "other": "method_b", "value": "consistent"})
    # The consistency flag is written on one side only; take it from whichever side holds it.
    flipped = consistency.rename(columns={"method_a": "method_b", "method_b": "method_a"})
    flags = pd.concat([consistency, flipped])[keys + ["method_a", "method_b", "consistent"]].drop_duplicates(
        keys + ["method_a", "method_b"])
    pairs = pairs.merge(flags, on=keys + ["method_a", "method_b"], how="left")
    pairs = pairs[pairs["method_a"] < pairs["method_b"]]  # every unordered pair once
    return pairs[columns].reset_index(drop=True)


JUDGE_COLUMNS = ["method_a", "method_b", "metric_key", "n", "criterion", "pairs", "wins_a", "ties", "wins_b",
                 "win_rate_a", "win_rate_b", "mean_a", "mean_b", "consistency_rate", "sign_test_p", "missing_pairs"]


def judge_win_tie_loss(tidy: pd.DataFrame) -> pd.DataFrame:
    """Win/tie/loss of A vs B per N (and all) and criterion, as in the published judge tables."""
    pairs = judge_pairs(tidy)
    records = []
    for (a, b, key, criterion), part in pairs.groupby(["method_a", "method_b", "metric_key", "criterion"]):
        partitions = [(str(n), p) for n, p in part.groupby("n", sort=True)] + [(ALL_N, part)]
        for n, p in partitions:
            both = p.dropna(subset=["score_a", "score_b"])
            wins, ties, losses = stats.win_tie_loss(both["score_a"], both["score_b"])
            total = wins + ties + losses
            records.append({
                "method_a": a, "method_b": b, "metric_key": key, "n": n, "criterion": criterion,
                "pairs": total, "wins_a": wins, "ties": ties, "wins_b": losses,
                "win_rate_a": wins / total if total else np.nan,
                "win_rate_b": losses / total if total else np.nan,
                "mean_a": both["score_a"].mean(), "mean_b": both["score_b"].mean(),
                "consistency_rate": p["consistent"].mean(),
                "sign_test_p": stats.sign_test_p(wins, losses),
                "missing_pairs": int(len(p) - len(both)),
            })
    return pd.DataFrame.from_records(records, columns=JUDGE_COLUMNS)


# ------------------------------------------------------------------------------------------------ writing


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def write_tables(results_dir: str | Path) -> dict[str, Path]:
    """Rebuild every table of ``results_dir`` from its stored rows; returns name -> path written."""
    results_dir = Path(results_dir)
    if not is_results_folder(results_dir):
        raise FileNotFoundError(
            f"{results_dir} is not a results folder (no images/ or scores/ in it): pass the folder a run "
            f"wrote, e.g. `python -m harness table results/toy`.")
    tidy = tidy_table(results_dir)
    ids = lora_ids(iter_images(results_dir))
    long = leaderboard_long(tidy, ids)
    paths = {
        "scores_parquet": results_dir / f"{SCORES_STEM}.parquet",
        "scores_csv": results_dir / f"{SCORES_STEM}.csv",
        "leaderboard": results_dir / LEADERBOARD_FILE,
        "leaderboard_long": results_dir / LEADERBOARD_LONG_FILE,
        "leaderboard_meta": results_dir / LEADERBOARD_META_FILE,
        "coverage": results_dir / COVERAGE_FILE,
        "judge": results_dir / JUDGE_FILE,
    }
    atomic_write(paths["scores_parquet"], lambda tmp: tidy.to_parquet(tmp, index=False))
    write_csv(tidy, paths["scores_csv"])
    write_csv(with_cost_columns(leaderboard_wide(long), cost_table(results_dir)), paths["leaderboard"])
    write_csv(long, paths["leaderboard_long"])
    atomic_write_json(paths["leaderboard_meta"], leaderboard_meta(tidy, ids, label_settings(results_dir)))
    write_csv(coverage_table(tidy, results_dir), paths["coverage"])
    write_csv(judge_win_tie_loss(tidy), paths["judge"])
    return paths
