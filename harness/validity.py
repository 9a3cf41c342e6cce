"""Metric validity: how well each metric agrees with the testbed's ground truth (the toy world's oracle).

Which metric is the ground truth is a testbed setting (``ground_truth: oracle/all_present`` in
``conf/testbed/toy.yaml``), recorded in the results folder's ``testbed.json``. For every leaderboard column
(metric x metric key x sub-metric; per-LoRA sub-metrics and judge pairwise rows have no column) against it:

- ``spearman_rho``: Spearman correlation over images (both values present);
- ``kendall_tau``: Kendall tau between the method ranking the metric gives (mean per method over those
  images) and the ground truth's ranking of the same methods.

One computation serves the table and the plots: ``ground_truth_pairs`` pairs each image's metric value with
its ground-truth value from the tidy table (rows of regenerated images already dropped), and both
``validity_table`` (``validity.csv``) and ``harness.pictures.plot_validity`` read those pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import kendalltau, spearmanr

from harness.io import atomic_write
from harness.store import VALIDITY_FILE, read_testbed_info
from harness.tables import column_groups, has_value

VALIDITY_COLUMNS = ["metric", "sub_metric", "metric_key", "n_images", "spearman_rho", "spearman_p", "n_methods",
                    "kendall_tau", "kendall_p", "metric_ranking", "oracle_ranking"]
PAIR_COLUMNS = ["column", "metric", "sub_metric", "metric_key", "image_id", "method_label", "value", "truth"]


@dataclass(frozen=True)
class GroundTruth:
    """The metric column that is the truth on a testbed, e.g. ``oracle/all_present``."""

    metric: str
    sub_metric: str

    @classmethod
    def parse(cls, text: str) -> GroundTruth:
        metric, _, sub_metric = str(text).partition("/")
        if not metric or not sub_metric:
            raise ValueError(f"ground_truth must look like <metric>/<sub_metric> (e.g. oracle/all_present), "
                             f"got {text!r}")
        return cls(metric, sub_metric)

    @classmethod
    def of(cls, results_dir: str | Path) -> GroundTruth | None:
        """The ground truth recorded for a results folder, None where its testbed has none."""
        text = read_testbed_info(results_dir).get("ground_truth")
        return cls.parse(text) if text else None

    def __str__(self) -> str:
        return f"{self.metric}/{self.sub_metric}"


def ground_truth_pairs(tidy: pd.DataFrame, truth: GroundTruth,
                       lora_ids: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per leaderboard column x image: the metric's value and the ground truth's (both present)."""
    valued = tidy[has_value(tidy)]
    truth_rows = valued[(valued["metric"] == truth.metric) & (valued["sub_metric"] == truth.sub_metric)]
    if truth_rows.empty:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    truth_key = truth_rows["metric_key"].value_counts().index[0]  # the ground-truth settings with the most rows
    truth_values = truth_rows[truth_rows["metric_key"] == truth_key][["image_key", "method_label", "value"]]
    truth_values = truth_values.rename(columns={"value": "truth"})
    parts = []
    for group in column_groups(valued, lora_ids).itertuples():
        if group.metric == truth.metric:
            continue
        rows = valued[(valued["metric"] == group.metric) & (valued["sub_metric"] == group.sub_metric)
                      & (valued["metric_key"] == group.metric_key)]
        per_image = rows.groupby(["image_key", "image_id", "method_label"], as_index=False)["value"].mean()
        paired = per_image.merge(truth_values, on=["image_key", "method_label"])
        parts.append(paired.assign(column=group.column, metric=group.metric, sub_metric=group.sub_metric,
                                   metric_key=group.metric_key))
    if not parts:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    return pd.concat(parts, ignore_index=True)[PAIR_COLUMNS]


def _ranking(means: pd.Series) -> str:
    """'a > b > c' by mean, best first; a constant column ranks nothing."""
    if means.nunique() <= 1:
        return "(all equal)"
    return " > ".join(means.sort_values(ascending=False, kind="stable").index)


def validity_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per metric column: agreement with the ground truth per image (Spearman) and per method (Kendall)."""
    rows = []
    for (metric, metric_key, sub_metric), paired in pairs.groupby(["metric", "metric_key", "sub_metric"], sort=True):
        row = {"metric": metric, "sub_metric": sub_metric, "metric_key": metric_key, "n_images": len(paired),
               "spearman_rho": np.nan, "spearman_p": np.nan, "n_methods": 0, "kendall_tau": np.nan,
               "kendall_p": np.nan, "metric_ranking": "", "oracle_ranking": ""}
        if len(paired) >= 3 and paired["value"].nunique() > 1 and paired["truth"].nunique() > 1:
            result = spearmanr(paired["value"], paired["truth"])
            row.update(spearman_rho=float(result.statistic), spearman_p=float(result.pvalue))
        methods = paired.groupby("method_label")[["value", "truth"]].mean()
        row["n_methods"] = len(methods)
        row["metric_ranking"] = _ranking(methods["value"])
        row["oracle_ranking"] = _ranking(methods["truth"])
        if len(methods) >= 2 and methods["value"].nunique() > 1 and methods["truth"].nunique() > 1:
            result = kendalltau(methods["value"], methods["truth"])
            row.update(kendall_tau=float(result.statistic), kendall_p=float(result.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=VALIDITY_COLUMNS)


def write_validity(results_dir: str | Path, table: pd.DataFrame, filename: str = VALIDITY_FILE) -> Path:
    """Write ``<results_dir>/validity.csv`` (next to leaderboard.csv) and return its path."""
    path = Path(results_dir) / filename
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    return path
