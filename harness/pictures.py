"""Pictures of a results folder: labelled image grids, contact sheets and metric plots (PNG).

Written under ``<results>/pictures/`` from the images and the tables ``python -m harness table`` wrote::

    grids/<set_id>.png        one set: methods as rows x seeds as columns, labelled
    contact_n<N>.png          every set of one N (rows, first seed) x methods (columns)
    plots/metric_<col>.png    each leaderboard column: mean and 95 % CI by method, split by N
    plots/judge_win_rates.png LLM-judge pairwise win/tie/loss shares per method pair and N
    plots/validity_<col>.png  per image, metric value vs the testbed's ground truth (toy: the oracle)
    plots/agreement_*.png     human win rates per method pair, and each metric's pairwise accuracy against the
                              human majority (from agreement.csv, ``harness.agreement``)

Plots use matplotlib's object API with the Agg canvas (no display, no global pyplot state).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from harness.io import atomic_write
from harness.store import JUDGE_FILE, LEADERBOARD_LONG_FILE, PICTURES_DIR, ImageRecord, iter_images
from harness.tables import ALL_N, n_order

GRID_CELL = 160  # pixels per image in a set grid (small toy images are upscaled without smoothing)
CONTACT_CELL = 96
PLOT_MAX_WIDTH = 10.0  # inches at 100 dpi: a metric plot fits a page without being scaled down
CONTACT_MAX_SETS = 60  # per N; a larger testbed gets the first sets and a note in the title
MIN_LABEL_WIDTH = 80
HEADER_HEIGHT = 26
BACKGROUND = (255, 255, 255)
MISSING_FILL = (225, 225, 225)


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_")


def _font(size: int = 14) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit(path: Path, size: int) -> Image.Image:
    image = Image.open(path).convert("RGB")
    scale = size / max(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    # Nearest-neighbour keeps tiny toy images crisp; Lanczos for downscaling real ones.
    return image.resize(new_size, Image.NEAREST if scale >= 1 else Image.LANCZOS)


def _readable(path: Path | None, size: int) -> Image.Image | None:
    if path is None:
        return None
    try:
        return _fit(path, size)
    except (OSError, ValueError, SyntaxError):  # PIL's errors for a truncated or garbage file
        return None


def label_width(labels: list[str]) -> int:
    """Pixels for the row labels: the widest label plus a margin (set ids can be long)."""
    font = _font(15)
    return max([MIN_LABEL_WIDTH] + [int(font.getlength(label)) + 16 for label in labels])


def labelled_grid(title: str, column_labels: list[str], rows: list[tuple[str, list[Path | None]]],
                  cell: int) -> Image.Image:
    """A grid of images with a title, a label per column (top) and per row (left); None is a grey cell."""
    font, small = _font(15), _font(12)
    left_margin = label_width([label for label, _ in rows])
    width = max(left_margin + cell * len(column_labels), int(font.getlength(title)) + 12)
    height = 2 * HEADER_HEIGHT + cell * len(rows)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 5), title, fill=(0, 0, 0), font=font)
    for column, label in enumerate(column_labels):
        draw.text((left_margin + column * cell + 4, HEADER_HEIGHT + 5), label, fill=(60, 60, 60), font=small)
    for row, (label, paths) in enumerate(rows):
        top = 2 * HEADER_HEIGHT + row * cell
        draw.text((6, top + cell // 2 - 8), label, fill=(0, 0, 0), font=font)
        for column, path in enumerate(paths):
            left = left_margin + column * cell
            image = _readable(path, cell - 4)
            if image is None:  # not generated (failed), or a file PIL cannot read (corrupt): a grey cell says so
                draw.rectangle([left + 2, top + 2, left + cell - 3, top + cell - 3], fill=MISSING_FILL)
                note = "missing" if path is None else "unreadable"
                draw.text((left + 8, top + cell // 2 - 6), note, fill=(120, 120, 120), font=small)
            else:
                offset = ((cell - 4 - image.width) // 2, (cell - 4 - image.height) // 2)
                canvas.paste(image, (left + 2 + offset[0], top + 2 + offset[1]))
    return canvas


def _save_image(image: Image.Image, path: Path) -> Path:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return path


def _save_figure(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    return path


def write_set_grids(records: list[ImageRecord], out_dir: Path) -> list[Path]:
    """One grid per set: methods (rows) x seeds (columns)."""
    by_set: dict[str, dict[str, dict[int, Path]]] = defaultdict(lambda: defaultdict(dict))
    n_of_set: dict[str, int] = {}
    for record in records:
        by_set[record.set_id][record.method_label][record.seed] = record.path
        n_of_set[record.set_id] = record.n
    methods = sorted({record.method_label for record in records})
    written = []
    for set_id, by_method in sorted(by_set.items()):
        seeds = sorted({seed for images in by_method.values() for seed in images})
        rows = [(label, [by_method.get(label, {}).get(seed) for seed in seeds]) for label in methods]
        grid = labelled_grid(f"{set_id}  (N={n_of_set[set_id]})", [f"seed {seed}" for seed in seeds], rows, GRID_CELL)
        written.append(_save_image(grid, out_dir / f"{slug(set_id)}.png"))
    return written


def write_contact_sheets(records: list[ImageRecord], out_dir: Path) -> list[Path]:
    """One sheet per N: its sets (rows, the lowest seed present) x methods (columns)."""
    methods = sorted({record.method_label for record in records})
    by_n: dict[int, dict[str, dict[str, ImageRecord]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        kept = by_n[record.n][record.set_id].get(record.method_label)
        if kept is None or record.seed < kept.seed:
            by_n[record.n][record.set_id][record.method_label] = record
    written = []
    for n, by_set in sorted(by_n.items()):
        set_ids = sorted(by_set)
        shown = set_ids[:CONTACT_MAX_SETS]
        title = f"N={n}: {len(set_ids)} sets" + (f" (first {len(shown)} shown)" if len(shown) < len(set_ids) else "")
        rows = [(set_id, [by_set[set_id][m].path if m in by_set[set_id] else None for m in methods])
                for set_id in shown]
        written.append(_save_image(labelled_grid(title, methods, rows, CONTACT_CELL), out_dir / f"contact_n{n}.png"))
    return written


def plot_metric(long: pd.DataFrame, column: str, out_dir: Path) -> Path:
    """Mean and 95 % CI of one leaderboard column by method, one group of points per N (and all)."""
    rows = long[long["column"] == column]
    ns = sorted(rows["n"].unique(), key=n_order)
    methods = sorted(rows["method_label"].unique())
    # Shown at its own size in the report: wide enough to separate the points, never wider than a page.
    figure_width = min(PLOT_MAX_WIDTH, max(6.0, 2.0 + 0.25 * len(ns) * max(1, len(methods))))
    figure = Figure(figsize=(figure_width, 4.0))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(methods))
    for index, method in enumerate(methods):
        part = rows[rows["method_label"] == method].set_index("n").reindex(ns)
        x = np.arange(len(ns)) + (index - (len(methods) - 1) / 2) * width
        mean = part["mean"].to_numpy(dtype=float)
        errors = np.vstack([mean - part["ci_low"].to_numpy(dtype=float), part["ci_high"].to_numpy(dtype=float) - mean])
        axes.errorbar(x, mean, yerr=np.nan_to_num(errors), fmt="o", capsize=3, label=method)
    axes.set_xticks(np.arange(len(ns)), [f"N={n}" if n != ALL_N else "all" for n in ns])
    axes.set_ylabel(column)
    axes.set_title(f"{column}: mean, 95% CI (higher is better)", fontsize=11)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a point
    return _save_figure(figure, out_dir / f"metric_{slug(column)}.png")


def plot_judge_win_rates(judge: pd.DataFrame, out_dir: Path) -> Path | None:
    """Stacked win/tie/loss shares per method pair and N, one panel per criterion."""
    if judge.empty:
        return None
    criteria = sorted(judge["criterion"].unique())
    figure = Figure(figsize=(7.5, 1.0 + 0.45 * judge.groupby("criterion").size().max() * len(criteria)))
    for panel, criterion in enumerate(criteria, start=1):
        axes = figure.add_subplot(len(criteria), 1, panel)
        part = judge[judge["criterion"] == criterion].copy()
        part["_order"] = part["n"].map(n_order)
        part = part.sort_values(["method_a", "method_b", "_order"])
        total = part["pairs"].replace(0, np.nan)
        labels = [f"{r.method_a} vs {r.method_b}, " + (f"N={r.n}" if r.n != ALL_N else "all N")
                  for r in part.itertuples()]
        left = np.zeros(len(part))
        for column, colour, name in (("wins_a", "#4c72b0", "A wins"), ("ties", "#bbbbbb", "tie"),
                                     ("wins_b", "#dd8452", "B wins")):
            share = (part[column] / total).fillna(0).to_numpy()
            axes.barh(labels, share, left=left, color=colour, label=name)
            left += share
        axes.set_xlim(0, 1)
        axes.invert_yaxis()
        axes.set_title(f"LLM judge, {criterion}: share of pairs (A = first named)")
        axes.legend(fontsize=8, loc="lower right")
    return _save_figure(figure, out_dir / "judge_win_rates.png")


def plot_validity(pairs: pd.DataFrame, validity: pd.DataFrame, truth: str, out_dir: Path) -> list[Path]:
    """Per image, each metric column against the ground truth; the title quotes validity.csv's Spearman rho
    (``pairs`` and ``validity`` come from ``harness.validity``: one computation for both)."""
    rho_of = {(r.metric, r.metric_key, r.sub_metric): r.spearman_rho for r in validity.itertuples()}
    rng = np.random.default_rng(0)  # jitter only spreads overlapping points; fixed so files are stable
    written = []
    for column, merged in pairs.groupby("column", sort=False):
        if len(merged) < 3:
            continue
        first = merged.iloc[0]
        rho = rho_of.get((first["metric"], first["metric_key"], first["sub_metric"]), np.nan)
        figure = Figure(figsize=(4.8, 3.6))
        axes = figure.add_subplot()
        for method, part in merged.groupby("method_label"):
            jitter = rng.uniform(-0.04, 0.04, len(part))
            axes.scatter(part["truth"] + jitter, part["value"], s=14, alpha=0.7, label=method)
        axes.set_xlabel(f"{truth} (jittered)")
        axes.set_ylabel(column)
        axes.set_title(f"{column} vs {truth}\nSpearman rho = {rho:.2f}, n = {len(merged)}", fontsize=9)
        axes.legend(fontsize=7)
        written.append(_save_figure(figure, out_dir / f"validity_{slug(column)}.png"))
    return written


def plot_agreement(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """From agreement.csv: human win rates with 95 % CIs (one panel per rubric x criterion), and each metric's
    pairwise accuracy against the human majority with its CI (one panel per criterion)."""
    written = []
    for figure_name, filename, title in (
            ("win_rate", "agreement_win_rates.png", "human preference for the first method (0.5 = even)"),
            ("pairwise_accuracy", "agreement_metrics.png", "pairwise accuracy vs the human majority (0.5 = chance)")):
        rows = table[(table["figure"] == figure_name) & table["value"].notna()]
        if rows.empty:
            continue
        panels = list(rows.groupby(["rubric", "criterion"], sort=False))
        height = sum(0.8 + 0.28 * len(part) for _, part in panels)
        figure = Figure(figsize=(8.0, max(2.5, height)))
        for index, ((rubric, criterion), part) in enumerate(panels, start=1):
            axes = figure.add_subplot(len(panels), 1, index)
            part = part.sort_values("value", kind="stable")
            y = np.arange(len(part))
            value = part["value"].to_numpy(dtype=float)
            errors = np.vstack([value - part["ci_low"].to_numpy(dtype=float),
                                part["ci_high"].to_numpy(dtype=float) - value])
            axes.errorbar(value, y, xerr=np.nan_to_num(np.clip(errors, 0, None)), fmt="o", capsize=3)
            axes.axvline(0.5, color="#999999", linewidth=1, linestyle="--")
            axes.set_yticks(y, part["subject"].tolist(), fontsize=8)
            axes.set_xlim(0, 1)
            axes.set_title(f"{rubric}, {criterion}: {title}", fontsize=9)
            axes.grid(axis="x", alpha=0.3)
        written.append(_save_figure(figure, out_dir / filename))
    return written


def write_pictures(results_dir: str | Path, validity: tuple[pd.DataFrame, pd.DataFrame, str] | None = None,
                   agreement: pd.DataFrame | None = None) -> dict[str, Path]:
    """Rebuild every picture of a results folder from its tables; ``validity`` is ``(pairs, table, truth)`` from
    ``harness.validity`` where the testbed has a ground truth, ``agreement`` the table of ``harness.agreement``
    where the folder has ratings."""
    results_dir = Path(results_dir)
    long_path, judge_path = results_dir / LEADERBOARD_LONG_FILE, results_dir / JUDGE_FILE
    if not long_path.exists():
        raise FileNotFoundError(f"{long_path} is missing: build the tables first with "
                                f"`python -m harness table {results_dir}`.")
    out = results_dir / PICTURES_DIR
    old = set(out.rglob("*.png"))
    records = list(iter_images(results_dir))
    written = write_set_grids(records, out / "grids") + write_contact_sheets(records, out)
    long = pd.read_csv(long_path, dtype={"n": str})
    written += [plot_metric(long, column, out / "plots") for column in dict.fromkeys(long["column"])]
    judge_plot = plot_judge_win_rates(pd.read_csv(judge_path, dtype={"n": str}), out / "plots")
    written += [judge_plot] if judge_plot else []
    if validity is not None:
        pairs, table, truth = validity
        written += plot_validity(pairs, table, truth, out / "plots")
    if agreement is not None:
        written += plot_agreement(agreement, out / "plots")
    for stale in old - set(written):  # pictures of sets, metrics or methods no longer in the folder
        stale.unlink()
    return {"pictures": out}
