"""How long the result tables take for ~10k score rows (target: a few seconds on one CPU core).

    .venv/bin/python benchmarks/bench_tables.py [--rows-per-image 5] [--sets 50]

Writes synthetic score rows (5 methods x N in 2..5 x sets x 2 seeds x sub-metrics) into a temporary
results folder with harness.store.append_rows, then times harness.tables.write_tables (tidy table,
leaderboard with bootstrap CIs, coverage, judge table). Images are not needed for the tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import harness  # noqa: F401
from harness.io import stable_hash
from harness.metrics.base import ScoreRow
from harness.store import append_rows
from harness.tables import write_tables

METHODS = ["merge", "switch", "composite", "w_switch", "w_composite"]


def synthetic_rows(n_sets: int, sub_metrics: int, seeds: int = 2) -> list[ScoreRow]:
    rng = np.random.default_rng(0)
    settings = json.dumps({"model": "bench"})
    key = stable_hash(settings, 12)
    rows = []
    for method_index, method in enumerate(METHODS):
        for n in (2, 3, 4, 5):
            for set_index in range(n_sets):
                for seed in range(seeds):
                    set_id = f"n{n}_{set_index}"
                    for sub in range(sub_metrics):
                        missing = rng.random() < 0.02
                        value = None if missing else float(rng.normal(method_index, 1))
                        rows.append(ScoreRow(
                            image_id=f"{method}/{set_id}/seed{seed}", image_key=f"{method}{set_id}{seed}",
                            testbed="bench", method=method, method_label=method, method_key=method, set_id=set_id,
                            n=n, seed=seed, metric="bench", sub_metric=f"s{sub}", value=value,
                            status="error" if missing else "ok", reason="synthetic" if missing else "",
                            metric_key=key, metric_version="1", metric_settings=settings))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=50, help="sets per N")
    parser.add_argument("--rows-per-image", type=int, default=5, help="sub-metrics per image")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "bench"
        rows = synthetic_rows(args.sets, args.rows_per_image)
        append_rows(results, rows)
        start = time.perf_counter()
        write_tables(results)
        elapsed = time.perf_counter() - start
    print(f"write_tables: {len(rows)} rows in {elapsed:.2f} s")


if __name__ == "__main__":
    main()
