"""Pictures and the static HTML report, rendered in headless Chromium when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import harness  # noqa: F401
from harness import pictures, report, store, tables
from harness.workflow import rebuild_outputs
from results_fixture import FAILED, METHOD_MEANS, SEEDS, SETS, results_dir  # noqa: F401

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
    for column in ("clip_t", "llm_judge/overall", "oracle/all_present"):
        assert f"<h3>{column}</h3>" in page


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("headless Chromium is not installed (Debian: apt-get install -y chromium; .ci/run installs it)")


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.skip(f"headless Chromium did not finish within {CHROMIUM_TIMEOUT_S} s on this machine")


def test_report_renders_in_headless_chromium(results_dir: Path, refreshed: dict[str, Path], tmp_path: Path) -> None:
    chromium = _chromium()
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
