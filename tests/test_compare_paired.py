"""``python -m harness compare``: paired statistics, cross-run sources, the settings guard and the headline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import harness  # noqa: F401
from harness import compare, store, tables
from results_fixture import SETS, make_results_folder, results_dir  # noqa: F401


def _run(results_dir: Path, a: str, b: str, force: bool = False) -> pd.DataFrame:
    side_a, side_b = compare.resolve_side(a, results_dir), compare.resolve_side(b, results_dir)
    table, _ = compare.compare(side_a, side_b, force=force)
    return table


def test_paired_difference_direction_and_counts(results_dir: Path) -> None:
    table = _run(results_dir, "switch", "merge").set_index(["column", "n"])
    clip = table.loc[("clip_t", tables.ALL_N)]
    assert clip["mean_diff"] > 0 and clip["ci_low"] > 0
    assert clip["sets"] == len(SETS)
    assert clip["wins_a"] + clip["ties"] + clip["wins_b"] == clip["sets"]
    assert clip["holm_p"] >= clip["wilcoxon_p"]
    columns = set(table.index.get_level_values("column"))
    assert "image_ref/dino:mean" in columns and not [c for c in columns if c.startswith("image_ref/dino:n")]
    # Swapping A and B flips the sign and the win counts.
    flipped = _run(results_dir, "merge", "switch").set_index(["column", "n"]).loc[("clip_t", tables.ALL_N)]
    assert flipped["mean_diff"] == pytest.approx(-clip["mean_diff"])
    assert (flipped["wins_a"], flipped["wins_b"]) == (clip["wins_b"], clip["wins_a"])


def test_mean_diff_is_mean_of_per_set_differences(results_dir: Path) -> None:
    tidy = tables.tidy_table(results_dir)
    clip = tidy[(tidy["metric"] == "clip_t")].dropna(subset=["value"])
    a = clip[clip["method_label"] == "composite"].set_index(["set_id", "seed"])["value"]
    b = clip[clip["method_label"] == "merge"].set_index(["set_id", "seed"])["value"]
    paired = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner")
    expected = (paired["a"] - paired["b"]).groupby(level="set_id").mean().mean()
    table = _run(results_dir, "composite", "merge").set_index(["column", "n"])
    assert table.loc[("clip_t", tables.ALL_N), "mean_diff"] == pytest.approx(expected)
    assert table.loc[("clip_t", tables.ALL_N), "pairs"] == len(paired)


def test_judge_pairwise_rows_become_criteria(results_dir: Path) -> None:
    table = _run(results_dir, "switch", "merge").set_index(["column", "n"])
    composition = table.loc[("llm_judge/composition (pairwise)", tables.ALL_N)]
    assert composition["wins_a"] == composition["sets"] and composition["wins_b"] == 0
    # No pairwise judge rows exist between composite and merge: no such column.
    other = _run(results_dir, "composite", "merge")
    assert not other["column"].str.contains("pairwise").any()


def test_holm_is_applied_within_each_n(results_dir: Path) -> None:
    table = _run(results_dir, "switch", "composite")
    for _, part in table.groupby("n"):
        finite = part["wilcoxon_p"].notna()
        assert (part.loc[finite, "holm_p"] >= part.loc[finite, "wilcoxon_p"] - 1e-12).all()
        assert part.loc[finite, "holm_p"].max() <= 1.0


def test_refuses_different_metric_settings_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = make_results_folder(tmp_path / "toy", clip_settings={"merge": {"model": "other", "text": "prompt"}})
    with pytest.raises(compare.ComparabilityError, match="clip_t"):
        _run(folder, "switch", "merge")
    assert compare.main(["switch", "merge", "--results", str(folder)]) == 2
    message = capsys.readouterr().err
    assert "different metric settings" in message and "--force" in message
    forced = _run(folder, "switch", "merge", force=True)
    assert "clip_t" in set(forced["column"])
    assert compare.main(["switch", "merge", "--results", str(folder), "--force"]) == 0


def test_sources_from_different_runs(results_dir: Path, tmp_path: Path) -> None:
    tables.write_tables(results_dir)
    other = make_results_folder(tmp_path / "rerun", rng_seed=1)
    tables.write_tables(other)
    out = tmp_path / "cmp.csv"
    code = compare.main([f"{results_dir / store.LEADERBOARD_FILE}#switch", f"{other / 'scores.parquet'}#switch",
                         "--out", str(out)])
    assert code == 0
    table = pd.read_csv(out, dtype={"n": str}).set_index(["column", "n"])
    # Same method, different noise draws: a small difference, both sides paired on every set.
    assert table.loc[("clip_t", tables.ALL_N), "sets"] == len(SETS)
    assert abs(table.loc[("clip_t", tables.ALL_N), "mean_diff"]) < 0.02
    jsonl = next((results_dir / store.SCORES_DIR / "clip_t").glob("*/composite.jsonl"))
    side = compare.resolve_side(str(jsonl), None)
    assert side.label == "composite" and set(side.rows["metric"]) == {"clip_t"}
    assert np.isfinite(side.rows["value"]).all()


def test_clear_errors_for_bad_sides(results_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert compare.main(["switch", "nobody", "--results", str(results_dir)]) == 2
    assert "nobody" in capsys.readouterr().err
    assert compare.main([str(results_dir), "merge", "--results", str(results_dir)]) == 2
    assert "#LABEL" in capsys.readouterr().err


def test_verdict_follows_the_ci() -> None:
    assert compare.verdict(0.1, 0.3, "switch", "merge") == "switch better"
    assert compare.verdict(-0.3, -0.1, "switch", "merge") == "merge better"
    assert compare.verdict(-0.1, 0.3, "switch", "merge") == "no clear difference (CI includes 0)"
    assert compare.verdict(0.0, 0.0, "switch", "merge") == "no clear difference (CI includes 0)"
    assert compare.verdict(np.nan, np.nan, "switch", "merge") == "no CI (fewer than 2 sets)"


def test_every_row_carries_the_verdict_of_its_ci(results_dir: Path, tmp_path: Path) -> None:
    table = _run(results_dir, "merge", "switch")
    expected = np.select([table["ci_low"] > 0, table["ci_high"] < 0], ["merge better", "switch better"],
                         "no clear difference (CI includes 0)")
    assert (table["verdict"] == expected).all()
    # switch beats merge on clip_t by construction; here switch is B.
    assert table.set_index(["column", "n"]).loc[("clip_t", tables.ALL_N), "verdict"] == "switch better"
    # The same rows in another folder: no difference anywhere, and the sides (one label) are named A and B.
    twin = make_results_folder(tmp_path / "twin")
    side_a, side_b = compare.resolve_side(f"{results_dir}#switch", None), compare.resolve_side(f"{twin}#switch", None)
    same, _ = compare.compare(side_a, side_b)
    assert compare.side_names(side_a, side_b) == ("A", "B")
    assert (same["verdict"] == "no clear difference (CI includes 0)").all()


def test_default_output_is_the_headline(results_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert compare.main(["switch", "merge", "--results", str(results_dir)]) == 0
    out = capsys.readouterr().out
    headline = out[out.index("Headline, all N:"):out.index("Summary")]
    lines = headline.splitlines()[2:]
    rows = {line.split()[0]: line for line in lines if line.strip()}
    # The default headline columns of the fixture (no testbed.json), in leaderboard order.
    assert list(rows) == ["clip_t", "image_ref/dino:mean", "llm_judge/overall", "oracle/all_present"]
    assert rows["clip_t"].endswith("switch better")
    assert "switch is better than merge on clip_t" in " ".join(out.split())
    # No per-N rows and no sub-metric rows without --full.
    assert "Every column, per N" not in out and "llm_judge/aesthetic_quality" not in out


def test_full_prints_every_row_and_out_writes_them(results_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    table = _run(results_dir, "switch", "merge")
    out_file = tmp_path / "short.csv"
    assert compare.main(["switch", "merge", "--results", str(results_dir), "--out", str(out_file)]) == 0
    assert "Every column, per N" not in capsys.readouterr().out
    written = pd.read_csv(out_file, dtype={"n": str})
    # --out holds the full table even without --full: every column, every N and all, with its verdict.
    assert len(written) == len(table) and set(written["n"]) == {str(n) for _, n in SETS} | {tables.ALL_N}
    assert list(written["verdict"]) == list(table["verdict"])
    assert compare.main(["switch", "merge", "--results", str(results_dir), "--full"]) == 0
    out = capsys.readouterr().out
    full = out[out.index("Every column, per N"):]
    assert "llm_judge/aesthetic_quality" in full
    assert len([line for line in full.splitlines() if line.split()[:1] == ["clip_t"]]) == len(set(n for _, n in SETS)) + 1


def test_headline_uses_the_testbed_primary_columns(results_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "toy"
    shutil.copytree(results_dir, folder)
    (folder / store.TESTBED_FILE).write_text(json.dumps(
        {"primary_columns": ["oracle/all_present", "not_scored_here", "clip_t"]}))
    assert compare.main(["switch", "merge", "--results", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out[out.index("Headline, all N:"):out.index("Summary")].splitlines()[2:]
    assert [line.split()[0] for line in lines if line.strip()] == ["oracle/all_present", "clip_t"]
