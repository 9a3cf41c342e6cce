"""validity.csv: Spearman per image and Kendall tau of method rankings against the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from metrics_support import CHARACTER_A, OBJECT_B, write_results
from PIL import Image

from harness.metrics.base import Metric
from harness.store import VALIDITY_FILE, append_rows, iter_images, read_set_metadata, write_set_metadata, write_testbed_info
from harness.tables import lora_ids, tidy_table
from harness.validity import VALIDITY_COLUMNS, GroundTruth, ground_truth_pairs, validity_table
from harness.workflow import rebuild_outputs

TRUTH = GroundTruth("oracle", "all_present")


def validity_of(results: Path) -> pd.DataFrame:
    return validity_table(ground_truth_pairs(tidy_table(results), TRUTH, lora_ids(iter_images(results))))


class Rows(Metric):
    """Writes given values as rows of metric ``name`` (not registered: the tests own no plugin name)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.registered_name = name


def test_validity_agreement_and_disagreement(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # three methods of increasing brightness; the oracle says "all present" for bright images
    images = {(label, "set_a"): [np.full((8, 8, 3), int(level + rng.integers(0, 60)), np.uint8) for _ in range(6)]
              for label, level in (("merge", 40), ("switch", 110), ("composite", 180))}
    results = write_results(tmp_path / "r", images, {"set_a": [CHARACTER_A, OBJECT_B]})
    records = list(iter_images(results))
    brightness = {r.key: float(np.asarray(Image.open(r.path)).mean()) for r in records}
    oracle, good, bad = Rows("oracle"), Rows("good"), Rows("bad")
    rows = []
    for record in records:
        value = brightness[record.key]
        rows.append(oracle.row(record, float(value > 130), "all_present"))
        rows.append(oracle.row(record, 1.0, "character"))
        rows.append(good.row(record, value))
        rows.append(good.row(record, 0.0, "clip:character_1"))  # per-LoRA: not a validity column
        rows.append(bad.row(record, -value))
    append_rows(results, rows)
    table = validity_of(results)
    assert list(table.columns) == VALIDITY_COLUMNS
    assert set(table["metric"]) == {"good", "bad"} and set(table["sub_metric"]) == {"all"}
    good_row, bad_row = table.set_index("metric").loc["good"], table.set_index("metric").loc["bad"]
    assert good_row["n_images"] == 18 and good_row["n_methods"] == 3
    assert good_row["spearman_rho"] > 0.7 and bad_row["spearman_rho"] < -0.7
    assert good_row["kendall_tau"] == pytest.approx(1.0) and bad_row["kendall_tau"] == pytest.approx(-1.0)
    assert good_row["metric_ranking"] == good_row["oracle_ranking"] == "composite > switch > merge"


def test_no_validity_without_ground_truth_rows(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r", {("m", "s"): [np.zeros((8, 8, 3), np.uint8)]}, {"s": [CHARACTER_A]})
    append_rows(results, [Rows("good").row(next(iter_images(results)), 1.0)])
    assert validity_of(results).empty
    write_testbed_info(results, {"name": "toy", "ground_truth": str(TRUTH)})
    assert "validity" not in rebuild_outputs(results, tables_only=True)
    write_testbed_info(results, {"name": "toy", "ground_truth": None})  # a testbed without ground truth
    assert "validity" not in rebuild_outputs(results, tables_only=True)


def test_csv_and_plots_agree_and_drop_regenerated_images(tmp_path: Path) -> None:
    """validity.csv and the validity plots read one computation, which skips rows of regenerated images."""
    images = {(label, "set_a"): [np.full((8, 8, 3), level + 10 * i, np.uint8) for i in range(5)]
              for label, level in (("merge", 40), ("switch", 120))}
    results = write_results(tmp_path / "r", images, {"set_a": [CHARACTER_A, OBJECT_B]})
    write_testbed_info(results, {"name": "toy", "ground_truth": str(TRUTH), "primary_columns": []})
    oracle, good = Rows("oracle"), Rows("good")
    rows = []
    for record in iter_images(results):
        value = float(np.asarray(Image.open(record.path)).mean())
        rows += [oracle.row(record, float(value > 100), "all_present"), good.row(record, value)]
    append_rows(results, rows)
    # regenerate one image: its key changes, so its stored rows are stale and must not count anywhere
    folder = next(iter_images(results)).path.parent
    metadata = read_set_metadata(folder)
    metadata["images"]["0"]["key"] = "regenerated"
    write_set_metadata(folder, metadata)
    paths = rebuild_outputs(results)
    table = pd.read_csv(paths["validity"]).set_index("metric")
    assert paths["validity"].name == VALIDITY_FILE
    assert table.loc["good", "n_images"] == 9  # 10 images, one regenerated since it was scored
    pairs = ground_truth_pairs(tidy_table(results), TRUTH)
    assert len(pairs[pairs["metric"] == "good"]) == table.loc["good", "n_images"]
    assert (results / "pictures" / "plots" / "validity_good.png").exists()
