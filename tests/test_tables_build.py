"""Tidy table, leaderboard, coverage and judge tables built from a fake results folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

import harness  # noqa: F401  (first: makes torchvision importable)
from harness import store, tables
from harness.cli import table_main
from harness.report import write_report
from harness.store import SCORE_COLUMNS
from results_fixture import (  # noqa: F401  (results_dir is a fixture)
    ERROR_ROW, FAILED, METHOD_MEANS, NOT_SCORED, SEEDS, SETS, make_results_folder, results_dir,
)


@pytest.fixture(scope="module")
def built(results_dir: Path) -> dict[str, Path]:
    return tables.write_tables(results_dir)


def test_tidy_table_has_one_row_per_image_metric_submetric(results_dir: Path, built: dict[str, Path]) -> None:
    tidy = pd.read_parquet(built["scores_parquet"])
    assert list(tidy.columns) == SCORE_COLUMNS
    assert not tidy.duplicated(["image_id", "metric", "metric_key", "sub_metric"]).any()
    # The superseded row (999) was written first; only the last row per identity survives.
    assert tidy["value"].max() < 100
    assert tidy["sub_metric"].str.startswith("dino:n2_a_").any()  # per-LoRA rows stay in the tidy table
    csv = pd.read_csv(built["scores_csv"])
    assert len(csv) == len(tidy)
    # A missing value stays missing with its status and reason, never 0.
    label, set_id, seed = ERROR_ROW
    row = tidy[(tidy["image_id"] == f"{label}/{set_id}/seed{seed}") & (tidy["metric"] == "clip_t")].iloc[0]
    assert pd.isna(row["value"]) and row["status"] == "error" and row["reason"]


def test_stale_rows_of_regenerated_images_are_dropped(results_dir: Path) -> None:
    tidy = tables.tidy_table(results_dir)
    image = tidy["image_id"].iloc[0]
    keys = {image: "regenerated-key"}
    fresh = tables.tidy_table(results_dir, current_keys=keys)
    assert image not in set(fresh["image_id"])
    assert len(fresh) == len(tidy) - (tidy["image_id"] == image).sum()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    folder = make_results_folder(tmp_path / "toy")
    path = next((folder / store.SCORES_DIR / "clip_t").glob("*/merge.jsonl"))
    before = len(tables.tidy_table(folder))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"image_id": "merge/n2_a/se')
    assert len(tables.tidy_table(folder)) == before


def test_leaderboard_rows_columns_and_order(built: dict[str, Path]) -> None:
    board = pd.read_csv(built["leaderboard"], dtype={"n": str})
    ns = sorted({str(n) for _, n in SETS}) + [tables.ALL_N]
    assert set(zip(board["method_label"], board["n"])) == {(m, n) for m in METHOD_MEANS for n in ns}
    assert {"clip_t.mean", "clip_t.ci_low", "clip_t.ci_high", "clip_t.n_scored", "clip_t.n_missing",
            "llm_judge/overall.mean", "oracle/all_present.mean"} <= set(board.columns)
    # Pairwise judge rows and per-LoRA sub-metrics are not leaderboard columns; the per-image mean is.
    assert not [c for c in board.columns if "_vs_" in c]
    assert "image_ref/dino:mean.mean" in board.columns
    assert not [c for c in board.columns if c.startswith("image_ref/") and "dino:mean" not in c]
    everything = board[board["n"] == tables.ALL_N].set_index("method_label")
    ranking = everything["clip_t.mean"].sort_values().index.tolist()
    assert ranking == sorted(METHOD_MEANS, key=METHOD_MEANS.get)
    assert (everything["clip_t.ci_low"] <= everything["clip_t.mean"]).all()
    assert (everything["clip_t.mean"] <= everything["clip_t.ci_high"]).all()


def test_leaderboard_counts_missing_by_status(built: dict[str, Path]) -> None:
    board = pd.read_csv(built["leaderboard"], dtype={"n": str}).set_index(["method_label", "n"])
    label, set_id, _ = ERROR_ROW
    n = str(dict(SETS)[set_id])
    assert board.loc[(label, n), "clip_t.missing_error"] == 1
    assert board.loc[(label, tables.ALL_N), "clip_t.n_missing"] == 1
    expected_scored = len(SETS) * len(SEEDS) - 1
    assert board.loc[(label, tables.ALL_N), "clip_t.n_scored"] == expected_scored


def test_leaderboard_mean_is_mean_over_sets(results_dir: Path, built: dict[str, Path]) -> None:
    tidy = pd.read_parquet(built["scores_parquet"])
    clip = tidy[(tidy["metric"] == "clip_t") & (tidy["method_label"] == "composite")].dropna(subset=["value"])
    expected = clip.groupby("set_id")["value"].mean().mean()
    long = pd.read_csv(built["leaderboard_long"], dtype={"n": str})
    got = long[(long["column"] == "clip_t") & (long["method_label"] == "composite") & (long["n"] == "all")]
    assert got["mean"].iloc[0] == pytest.approx(expected, rel=1e-5)


def test_meta_records_metric_settings_and_ci(built: dict[str, Path]) -> None:
    meta = json.loads(built["leaderboard_meta"].read_text())
    clip = meta["columns"]["clip_t"]
    assert clip["settings"] == {"model": "toy-clip", "text": "prompt"}
    assert clip["metric_key"] and meta["ci"]["n_resamples"] > 0 and meta["ci"]["random_state"] is not None


def test_tables_are_reproducible(results_dir: Path, built: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "toy"
    shutil.copytree(results_dir, copy)
    again = tables.write_tables(copy)
    for name in ("leaderboard", "leaderboard_long", "coverage", "judge"):
        assert again[name].read_bytes() == built[name].read_bytes(), name


def test_same_metric_with_two_settings_gets_two_columns(tmp_path: Path) -> None:
    folder = make_results_folder(tmp_path / "toy", clip_settings={"merge": {"model": "other"}})
    board = tables.leaderboard_wide(tables.leaderboard_long(tables.tidy_table(folder)))
    clip_means = [c for c in board.columns if c.startswith("clip_t@") and c.endswith(".mean")]
    assert len(clip_means) == 2


def test_coverage_counts_generated_failed_scored_missing(built: dict[str, Path]) -> None:
    coverage = pd.read_csv(built["coverage"], keep_default_na=False).set_index(["method_label", "metric"])
    total = len(SETS) * len(SEEDS)
    assert coverage.loc[(FAILED[0], "clip_t"), "images_generated"] == total - 1
    assert coverage.loc[(FAILED[0], "clip_t"), "generation_failures"] == 1
    assert coverage.loc[(ERROR_ROW[0], "clip_t"), "images_missing"] == 1
    assert coverage.loc[(ERROR_ROW[0], "clip_t"), "missing_error"] == 1
    assert "bad tensor" in coverage.loc[(ERROR_ROW[0], "clip_t"), "reasons"]
    assert coverage.loc[(NOT_SCORED[0], "clip_t"), "images_not_scored"] == 1
    assert coverage.loc[(NOT_SCORED[0], "clip_t"), "images_scored"] == total - 1


def test_judge_win_tie_loss_per_n(built: dict[str, Path]) -> None:
    judge = pd.read_csv(built["judge"], dtype={"n": str})
    composition = judge[judge["criterion"] == "composition"].set_index("n")
    assert set(composition.index) == {str(n) for _, n in SETS} | {tables.ALL_N}
    # The fixture gives switch (B) one point more on composition in every pair.
    assert (composition["wins_b"] == composition["pairs"]).all()
    assert composition.loc[tables.ALL_N, "pairs"] == len(SETS) * len(SEEDS)
    # Consistency flag is 1 for seed 0 and 0 for seed 1.
    assert composition["consistency_rate"].tolist() == pytest.approx([0.5] * len(composition))
    quality = judge[(judge["criterion"] == "quality") & (judge["n"] == tables.ALL_N)].iloc[0]
    assert quality["ties"] == len(SETS) and quality["wins_b"] == len(SETS)
    assert 0 < composition.loc[tables.ALL_N, "sign_test_p"] < quality["sign_test_p"] <= 1


def test_table_cli_rebuilds_and_reports_bad_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_results_folder(tmp_path / "toy")
    assert table_main([str(folder), "--tables-only"]) == 0
    assert (folder / store.LEADERBOARD_FILE).exists()
    with pytest.raises(SystemExit) as exit_info:
        table_main([str(tmp_path / "nope")])
    assert exit_info.value.code == 2
    assert "not a results folder" in capsys.readouterr().err


def test_folder_with_images_but_no_scores(tmp_path: Path) -> None:
    folder = make_results_folder(tmp_path / "toy")
    shutil.rmtree(folder / store.SCORES_DIR)
    paths = tables.write_tables(folder)
    coverage = pd.read_csv(paths["coverage"], keep_default_na=False).set_index("method_label")
    assert coverage.loc["merge", "images_generated"] == len(SETS) * len(SEEDS)
    assert coverage.loc["merge", "images_not_scored"] == len(SETS) * len(SEEDS)
    assert pd.read_csv(paths["leaderboard"]).empty
    assert "No scores yet" in write_report(folder).read_text(encoding="utf-8")


def test_leaderboard_cost_columns_from_image_records(tmp_path: Path) -> None:
    """Seconds and UNet evaluations per image per method x N; records without a count fall back to their plan."""
    folder = make_results_folder(tmp_path / "toy")
    for metadata_path in (folder / "images").glob("*/*/metadata.json"):
        meta = json.loads(metadata_path.read_text())
        label, n = meta["method"]["label"], len(meta["set"]["loras"])
        for record in meta["images"].values():
            record["seconds"] = {"merge": 1.0, "composite": 0.5 * n, "switch": 2.0}[label]
            if label == "merge":
                record["unet_evaluations"] = {"full": 20, "shallow": 0}
            elif label == "composite":  # an older record: only its plan, n passes per step, one of them reused
                record["plan"] = {"schedule": [{"passes": [{}] * n, "weights": [1 / n] * n,
                                                "features": ["full"] * (n - 1) + ["reuse"]}] * 10}
        metadata_path.write_text(json.dumps(meta))
    board = pd.read_csv(tables.write_tables(folder)["leaderboard"], dtype={"n": str}).set_index(["method_label", "n"])
    assert list(board.columns[-3:]) == list(tables.COST_COLUMNS.values())
    assert board.loc[("merge", "2"), "cost/unet_evaluations_per_image"] == 20
    assert board.loc[("composite", "3"), "cost/unet_evaluations_per_image"] == 20  # (3 - 1) x 10
    assert board.loc[("composite", "3"), "cost/shallow_evaluations_per_image"] == 10
    assert board.loc[("composite", "2"), "cost/seconds_per_image"] == 1.0
    # all N: the mean over images (composite has one failed N=3 image)
    images = {2: 4 * len(SEEDS), 3: 4 * len(SEEDS) - 1}
    expected = sum(0.5 * n * count for n, count in images.items()) / sum(images.values())
    assert board.loc[("composite", tables.ALL_N), "cost/seconds_per_image"] == pytest.approx(expected, rel=1e-5)
    assert pd.isna(board.loc[("switch", "2"), "cost/unet_evaluations_per_image"])  # no count, no plan: missing
