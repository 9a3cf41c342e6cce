"""validity.csv: Spearman per image and Kendall tau of method rankings against the oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from metrics_support import CHARACTER_A, OBJECT_B, write_results
from PIL import Image

from harness.metrics.base import Metric
from harness.records import iter_images
from harness.scoring import append_rows
from harness.validity import VALIDITY_COLUMNS, write_validity


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
    table = pd.read_csv(write_validity(results))
    assert list(table.columns) == VALIDITY_COLUMNS
    assert set(table["metric"]) == {"good", "bad"} and set(table["sub_metric"]) == {"all"}
    good_row, bad_row = table.set_index("metric").loc["good"], table.set_index("metric").loc["bad"]
    assert good_row["n_images"] == 18 and good_row["n_methods"] == 3
    assert good_row["spearman_rho"] > 0.7 and bad_row["spearman_rho"] < -0.7
    assert good_row["kendall_tau"] == pytest.approx(1.0) and bad_row["kendall_tau"] == pytest.approx(-1.0)
    assert good_row["metric_ranking"] == good_row["oracle_ranking"] == "composite > switch > merge"


def test_validity_needs_the_oracle(tmp_path: Path) -> None:
    results = write_results(tmp_path / "r", {("m", "s"): [np.zeros((8, 8, 3), np.uint8)]}, {"s": [CHARACTER_A]})
    append_rows(results, [Rows("good").row(next(iter_images(results)), 1.0)])
    with pytest.raises(ValueError, match="oracle"):
        write_validity(results)
