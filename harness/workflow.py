"""What happens after images exist: score them, rebuild the tables, validity, pictures and the report.

The one place that orders those steps. ``run``, ``score``, ``table``, ``report`` and ``demo`` all call
``finish_results`` or ``rebuild_outputs``; none of the modules below knows the others exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from harness.agreement import agreement_table, write_agreement
from harness.pictures import write_pictures
from harness.rating.export import export_human_scores, read_answers
from harness.report import write_report
from harness.scoring import score_results
from harness.store import SCORES_DIR, SCORES_STEM, iter_images
from harness.tables import lora_ids, write_tables
from harness.validity import GroundTruth, ground_truth_pairs, validity_table, write_validity


class RunFailed(RuntimeError):
    """Some images failed; the others were kept. Raised at the end so a sweep still runs every job."""


def rebuild_outputs(results_dir: str | Path, tables_only: bool = False) -> dict[str, Path]:
    """Rebuild every table (and, unless ``tables_only``, pictures and report) from the stored rows.

    Human ratings (ratings.sqlite) are exported as metric ``human`` rows first, and agreement.csv follows them.
    """
    results_dir = Path(results_dir)
    export_human_scores(results_dir)
    paths = write_tables(results_dir)
    validity = None
    truth = GroundTruth.of(results_dir)
    ids = lora_ids(iter_images(results_dir))
    tidy = pd.read_parquet(results_dir / f"{SCORES_STEM}.parquet")
    if truth is not None:
        pairs = ground_truth_pairs(tidy, truth, ids)
        if not pairs.empty:
            table = validity_table(pairs)
            paths["validity"] = write_validity(results_dir, table)
            validity = (pairs, table, str(truth))
    agreement = None
    answers = read_answers(results_dir)
    if answers is not None and not answers.empty:
        agreement = agreement_table(answers, tidy, ids)
        paths["agreement"] = write_agreement(results_dir, agreement)
    if not tables_only:
        paths.update(write_pictures(results_dir, validity, agreement))
        paths["report"] = write_report(results_dir)
    return paths


def finish_results(results_dir: str | Path, metrics: dict[str, dict[str, Any]], methods: list[str] | None = None,
                   score: bool = True, tables: bool = True, progress: bool = True) -> dict[str, Path]:
    """Score ``methods``' images (all when None) with ``metrics``, then rebuild the outputs if any scores exist."""
    results_dir = Path(results_dir)
    if score and metrics:
        score_results(results_dir, metrics, methods=methods, progress=progress)
    if tables and any((results_dir / SCORES_DIR).glob("*")):
        return rebuild_outputs(results_dir)
    return {}
