"""Pictures and the static HTML report, rendered in headless Chromium when it is installed."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import harness  # noqa: F401
from browser_support import chromium_path
from harness import pictures, report, store, tables
from harness.workflow import rebuild_outputs
from results_fixture import FAILED, METHOD_MEANS, SEEDS, SETS, make_results_folder, results_dir  # noqa: F401

CHROMIUM_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def refreshed(results_dir: Path) -> dict[str, Path]:
    return rebuild_outputs(results_dir)


def test_set_grid_has_a_row_per_method_and_marks_failures(results_dir: Path, refreshed: dict[str, Path]) -> None:
    set_id = FAILED[1]
    grid = Image.open(results_dir / store.PICTURES_DIR / "grids" / f"{set_id}.png").convert("RGB")
    label_width = pictures.label_width(sorted(METHOD_MEANS))
    assert grid.width == label_width + pictures.GRID_CELL * len(SEEDS)
    assert grid.height == 2 * pictures.HEADER_HEIGHT + pictures.GRID_CELL * len(METHOD_MEANS)
    # The failed image's cell is the grey placeholder; the others hold the method's colour.
    row = sorted(METHOD_MEANS).index(FAILED[0])
    centre = (label_width + pictures.GRID_CELL * FAILED[2] + 10,
              2 * pictures.HEADER_HEIGHT + pictures.GRID_CELL * row + 10)
    assert grid.getpixel(centre) == pictures.MISSING_FILL


def test_contact_sheets_and_plots_exist(results_dir: Path, refreshed: dict[str, Path]) -> None:
    out = results_dir / store.PICTURES_DIR
    assert sorted(p.name for p in out.glob("contact_n*.png")) == sorted({f"contact_n{n}.png" for _, n in SETS})
    long = pd.read_csv(results_dir / store.LEADERBOARD_LONG_FILE)
    for column in set(long["column"]):
        assert (out / "plots" / f"metric_{pictures.slug(column)}.png").exists(), column
    assert (out / "plots" / "judge_win_rates.png").exists()
    assert (out / "plots" / "validity_clip_t.png").exists()
    assert not (out / "plots" / "validity_oracle_all_present.png").exists()


def test_stale_pictures_are_removed(results_dir: Path, refreshed: dict[str, Path]) -> None:
    stale = results_dir / store.PICTURES_DIR / "grids" / "gone_set.png"
    Image.new("RGB", (4, 4)).save(stale)
    rebuild_outputs(results_dir)
    assert not stale.exists()


def test_report_links_resolve(results_dir: Path, refreshed: dict[str, Path]) -> None:
    page = refreshed["report"].read_text(encoding="utf-8")
    targets = re.findall(r"(?:src|href)='([^']+)'", page)
    assert any(t.endswith(".png") for t in targets) and store.LEADERBOARD_FILE in targets
    assert store.VALIDITY_FILE in targets and "spearman_rho" in page  # the fixture has oracle rows
    for target in targets:
        assert (results_dir / target).exists(), target
    for column in ("clip_t", "llm_judge/overall", "oracle/all_present", "llm_judge/aesthetic_quality"):
        assert f"<summary>{column}</summary>" in page


def _headline_rows(page: str) -> tuple[list[str], dict[str, list[str]]]:
    """Header names and, per method, the cells of the page's headline table."""
    table = re.search(r"<table[^>]*headline.*?</table>", page, re.S).group(0)
    header = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S):
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        if cells:  # the header row holds <th> only
            rows[cells[0]] = cells[1:]
    return header, rows


def test_report_opens_with_headline_sample_and_cost(results_dir: Path, refreshed: dict[str, Path]) -> None:
    page = refreshed["report"].read_text(encoding="utf-8")
    order = [page.index(mark) for mark in ("<h2>Headline (all N)</h2>", "<h2>Sample</h2>", "<h2>Cost per method</h2>",
                                           "<h2>Details</h2>")]
    assert order == sorted(order)
    # Nothing before the details is folded, and the first table on the page is the headline.
    assert "<details" not in page[:order[-1]] and page.index("<details") > order[-1]
    assert page.index("<table") == page.index("<table", order[0]) and "headline" in page[page.index("<table"):][:80]
    header, rows = _headline_rows(page)
    long = pd.read_csv(results_dir / store.LEADERBOARD_LONG_FILE, dtype={"n": str})
    expected = tables.headline_columns(long["column"], None)
    assert header == ["method", *expected]
    assert "clip_t" in expected and "oracle/all_present" in expected and "image_ref/dino:mean" in expected
    assert "llm_judge/aesthetic_quality" not in expected  # a sub-metric: only in the details
    assert sorted(rows) == sorted(METHOD_MEANS)
    # The best clip_t mean (switch, by construction of the fixture) is the one marked, and only it.
    clip = expected.index("clip_t")
    marked = [method for method, cells in rows.items() if "class='best'" in cells[clip]]
    assert marked == [max(METHOD_MEANS, key=METHOD_MEANS.get)]
    # The sample is a set grid; the cost table counts images per method (composite has one failure).
    sample = page[order[1]:order[2]]
    assert f"{store.PICTURES_DIR}/grids/" in sample and "<img" in sample
    cost = page[order[2]:order[3]]
    assert "seconds per image" in cost and all(f"<td>{method}</td>" in cost for method in METHOD_MEANS)


def test_headline_marks_every_best_and_none_when_all_tie() -> None:
    long = pd.DataFrame([{"method_label": method, "n": tables.ALL_N, "column": column, "mean": mean,
                          "ci_low": mean, "ci_high": mean}
                         for column, means in {"tied": [1.0, 1.0, 1.0], "two_best": [0.5, 0.9, 0.9]}.items()
                         for method, mean in zip(["a", "b", "c"], means)])
    _, rows = _headline_rows(report.headline_table(long, ["tied", "two_best"]))
    assert [method for method, cells in rows.items() if "class='best'" in cells[0]] == []
    assert [method for method, cells in rows.items() if "class='best'" in cells[1]] == ["b", "c"]


def test_cost_table_reads_seconds_from_image_records(tmp_path: Path) -> None:
    folder = make_results_folder(tmp_path / "toy")
    for metadata_path in (folder / "images").glob("*/*/metadata.json"):
        meta = json.loads(metadata_path.read_text())
        seconds = {"merge": 1.0, "composite": 2.0, "switch": 4.0}[meta["method"]["label"]]
        for record in meta["images"].values():
            record["seconds"], record["device"] = seconds, "cpu"
            record["unet_evaluations"] = {"full": 20 if meta["method"]["label"] != "composite" else 40, "shallow": 0}
        metadata_path.write_text(json.dumps(meta))
    coverage = tables.coverage_table(tables.tidy_table(folder), folder)
    cost = report.cost_table(folder, coverage).set_index("method")
    images = len(SETS) * len(SEEDS)
    assert cost.loc["composite", "images generated"] == images - 1 and cost.loc["composite", "failed"] == 1
    assert cost.loc["merge", "failed"] == 0
    assert cost["seconds per image"].to_dict() == {"composite": 2.0, "merge": 1.0, "switch": 4.0}
    assert cost.loc["switch", "total seconds"] == 4.0 * images and cost.loc["switch", "device"] == "cpu"
    assert cost["UNet evaluations per image"].to_dict() == {"composite": 40.0, "merge": 20.0, "switch": 20.0}
    assert "shallow evaluations per image" not in cost  # shown only where a feature cache computed some


def test_primary_columns_come_from_the_results_folder(tmp_path: Path) -> None:
    assert tables.primary_columns_of(tmp_path) is None
    (tmp_path / store.TESTBED_FILE).write_text(json.dumps({"primary_columns": ["oracle/all_present",
                                                                                         "absent", "clip_t"]}))
    primary = tables.primary_columns_of(tmp_path)
    assert primary == ["oracle/all_present", "absent", "clip_t"]
    present = ["clip_t", "image_ref/dino:category=style", "image_ref/dino:mean", "oracle/all_present",
               "oracle/present:style", "llm_judge/overall", "llm_judge/aesthetic_quality", "arcface/mean"]
    # The testbed's order, columns without data skipped.
    assert tables.headline_columns(present, primary) == ["oracle/all_present", "clip_t"]
    # No list: whole metrics, means and the all-element indicators, in leaderboard order.
    assert tables.headline_columns(present, None) == ["clip_t", "image_ref/dino:mean", "oracle/all_present",
                                                      "llm_judge/overall", "arcface/mean"]


def test_report_headline_follows_the_testbed_primary_columns(results_dir: Path, refreshed: dict[str, Path],
                                                             tmp_path: Path) -> None:
    folder = tmp_path / "toy"
    shutil.copytree(results_dir, folder)
    (folder / store.TESTBED_FILE).write_text(json.dumps({"primary_columns": ["llm_judge/overall",
                                                                                       "clip_t"]}))
    page = report.write_report(folder).read_text(encoding="utf-8")
    header, _ = _headline_rows(page)
    assert header == ["method", "llm_judge/overall", "clip_t"]
    assert "the testbed's primary columns" in page
    # The primary columns' details come first, each folded; the rest sit in one fold below them.
    details = page[page.index("<h2>Details</h2>"):]
    assert details.index("<summary>llm_judge/overall</summary>") < details.index("<summary>clip_t</summary>") \
        < details.index("Other columns") < details.index("<summary>oracle/all_present</summary>")


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"headless Chromium did not finish within {CHROMIUM_TIMEOUT_S} s on this machine")


def test_report_renders_in_headless_chromium(results_dir: Path, refreshed: dict[str, Path], tmp_path: Path) -> None:
    chromium = chromium_path()
    url = refreshed["report"].resolve().as_uri()
    dom = _headless(chromium, "--dump-dom", url).stdout
    check = re.search(r'id="render-check"[^>]*data-tables="(\d+)"[^>]*data-images="(\d+)"'
                      r'[^>]*data-images-loaded="(\d+)"', dom)
    assert check, "the page's load script did not run (no #render-check in the DOM)"
    n_tables, n_images, n_loaded = map(int, check.groups())
    long = pd.read_csv(results_dir / store.LEADERBOARD_LONG_FILE)
    assert n_tables >= long["column"].nunique() + 2  # a table per leaderboard column, judge, coverage
    assert n_images > 0 and n_loaded == n_images

    screenshot = tmp_path / "report.png"
    _headless(chromium, f"--screenshot={screenshot}", "--window-size=1280,1600", url)
    assert screenshot.exists(), "Chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1280)
    assert pixels.std() > 10  # text, tables and plots, not a blank page
