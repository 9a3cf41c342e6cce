"""Metric validity on the toy testbed: how well each metric agrees with the oracle (the ground truth).

For every metric column (metric x metric key x sub-metric; per-LoRA sub-metrics are left out, their
per-image aggregates such as ``clip:mean`` stay) against the oracle's ``all_present`` (1 when every concept
of the set is in the image):

- ``spearman_rho``: Spearman correlation over images (both values present);
- ``kendall_tau``: Kendall tau between the method ranking the metric gives (mean per method over those
  images) and the oracle's ranking of the same methods.

``write_validity(results_dir)`` writes ``validity.csv`` next to the leaderboard;
``python -m harness.validity RESULTS_DIR`` does the same from the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness.io import atomic_write
from harness.records import iter_images
from harness.scoring import load_scores

ORACLE_METRIC, ORACLE_SUB_METRIC = "oracle", "all_present"
VALUE_STATUSES = ("ok", "fallback_full_image")
VALIDITY_FILE = "validity.csv"
VALIDITY_COLUMNS = ["metric", "sub_metric", "metric_key", "n_images", "spearman_rho", "spearman_p", "n_methods",
                    "kendall_tau", "kendall_p", "metric_ranking", "oracle_ranking"]


def _ranking(means: pd.Series) -> str:
    """'a > b > c' by mean, best first; a constant column ranks nothing."""
    if means.nunique() <= 1:
        return "(all equal)"
    return " > ".join(means.sort_values(ascending=False, kind="stable").index)


def validity_table(results_dir: str | Path, oracle_metric: str = ORACLE_METRIC,
                   oracle_sub_metric: str = ORACLE_SUB_METRIC) -> pd.DataFrame:
    """One row per metric column: agreement with the oracle per image (Spearman) and per method (Kendall)."""
    from scipy.stats import kendalltau, spearmanr

    from harness.tables import is_pairwise_judge, lora_ids, names_a_lora

    scores = load_scores(results_dir)
    scores = scores[scores["status"].isin(VALUE_STATUSES) & scores["value"].notna()]
    oracle = scores[(scores["metric"] == oracle_metric) & (scores["sub_metric"] == oracle_sub_metric)]
    if oracle.empty:
        raise ValueError(f"{results_dir} has no oracle rows ({oracle_metric}/{oracle_sub_metric}): validity needs the "
                         f"toy testbed's oracle. Score with it first: `python -m harness score output_dir={results_dir} "
                         f"metric=[oracle]`.")
    oracle_key = oracle["metric_key"].value_counts().index[0]  # the oracle settings with the most rows
    oracle = oracle[oracle["metric_key"] == oracle_key][["image_key", "method_label", "value"]]
    rows = []
    others = scores[~scores["metric"].isin([ORACLE_METRIC, oracle_metric])]
    # per-LoRA sub-metrics exist only for some sets, and judge pairwise rows compare two images: neither is a
    # per-image score of the set, so neither is checked against the oracle here
    others = others[~names_a_lora(others, lora_ids(iter_images(results_dir))) & ~is_pairwise_judge(others)]
    for (metric, metric_key, sub_metric), group in others.groupby(["metric", "metric_key", "sub_metric"], sort=True):
        per_image = group.groupby(["image_key", "method_label"], as_index=False)["value"].mean()
        paired = per_image.merge(oracle, on=["image_key", "method_label"], suffixes=("", "_oracle"))
        row = {"metric": metric, "sub_metric": sub_metric, "metric_key": metric_key, "n_images": len(paired),
               "spearman_rho": np.nan, "spearman_p": np.nan, "n_methods": 0, "kendall_tau": np.nan,
               "kendall_p": np.nan, "metric_ranking": "", "oracle_ranking": ""}
        if len(paired) >= 3 and paired["value"].nunique() > 1 and paired["value_oracle"].nunique() > 1:
            result = spearmanr(paired["value"], paired["value_oracle"])
            row.update(spearman_rho=float(result.statistic), spearman_p=float(result.pvalue))
        methods = paired.groupby("method_label")[["value", "value_oracle"]].mean()
        row["n_methods"] = len(methods)
        row["metric_ranking"] = _ranking(methods["value"])
        row["oracle_ranking"] = _ranking(methods["value_oracle"])
        if len(methods) >= 2 and methods["value"].nunique() > 1 and methods["value_oracle"].nunique() > 1:
            result = kendalltau(methods["value"], methods["value_oracle"])
            row.update(kendall_tau=float(result.statistic), kendall_p=float(result.pvalue))
        rows.append(row)
    return pd.DataFrame(rows, columns=VALIDITY_COLUMNS)


def write_validity(results_dir: str | Path, oracle_metric: str = ORACLE_METRIC,
                   oracle_sub_metric: str = ORACLE_SUB_METRIC, filename: str = VALIDITY_FILE) -> Path:
    """Write ``<results_dir>/validity.csv`` (next to leaderboard.csv) and return its path."""
    table = validity_table(results_dir, oracle_metric, oracle_sub_metric)
    path = Path(results_dir) / filename
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False, float_format="%.4f"))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.validity", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir")
    args = parser.parse_args(argv)
    path = write_validity(args.results_dir)
    print(pd.read_csv(path).to_string(index=False))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
