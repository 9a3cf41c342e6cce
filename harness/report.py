"""A static HTML report of a results folder: ``python -m harness report RESULTS_DIR``.

``<results>/report.html`` needs no server: it links the tables (rendered as HTML tables too), the plots
and the image grids by relative paths, so the folder can be zipped, copied or opened from disk. A small
script at the end of the page writes a ``#render-check`` element saying how many tables and images
loaded; the headless-Chromium test reads it.

The page opens with what a reader wants first: the headline table (all N, the testbed's primary columns,
best value per column in bold), one sample image grid and the cost per method. Everything else (each
column by N with its plot, judge, validity, coverage, settings, every image) is folded below.

Which columns are the headline is ``harness.tables.headline_columns`` (``python -m harness compare`` uses the
same choice).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from harness import tables
from harness.agreement import METRIC_FIGURES, metric_summary
from harness.io import atomic_write_text, read_json
from harness.pictures import slug
from harness.store import (
    AGREEMENT_FILE, COVERAGE_FILE, JUDGE_FILE, LEADERBOARD_FILE, LEADERBOARD_LONG_FILE, LEADERBOARD_META_FILE,
    PICTURES_DIR, REPORT_FILE, SCORES_STEM, TESTBED_FILE, VALIDITY_FILE, iter_images,
)
from harness.tables import ALL_N, headline_columns, n_order, primary_columns_of

DOWNLOADS = [LEADERBOARD_FILE, LEADERBOARD_LONG_FILE, LEADERBOARD_META_FILE, f"{SCORES_STEM}.parquet",
             f"{SCORES_STEM}.csv", COVERAGE_FILE, JUDGE_FILE, VALIDITY_FILE, AGREEMENT_FILE]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
.ci { color: #666; font-size: 11px; }
.plots img, .sheets img, .sample img { max-width: 100%; margin: 4px; border: 1px solid #ddd; vertical-align: top; }
.grids a { display: inline-block; margin: 2px 6px; }
.wide { overflow-x: auto; }
.note { color: #555; font-size: 13px; }
table.headline { font-size: 15px; }
table.headline td { padding: 5px 10px; }
table.headline .best { font-weight: bold; }
details { margin: 0.4em 0; }
details > summary { cursor: pointer; font-weight: 600; padding: 2px 0; }
details details { margin-left: 1.2em; }
details > div { margin: 0.5em 0 1em; }
.opening { display: flex; flex-wrap: wrap; gap: 3em; align-items: flex-start; }
.opening > div { max-width: 640px; }
"""

# Counts loaded images and tables after everything has loaded, for headless checks and for humans.
RENDER_CHECK = """
<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (img) { return img.complete && img.naturalWidth > 0; }).length;
  var check = document.createElement("p");
  check.id = "render-check";
  check.className = "note";
  check.setAttribute("data-tables", document.querySelectorAll("table").length);
  check.setAttribute("data-images", images.length);
  check.setAttribute("data-images-loaded", loaded);
  check.textContent = "Render check: " + loaded + " of " + images.length + " images loaded, "
    + document.querySelectorAll("table").length + " tables.";
  document.body.appendChild(check);
});
</script>
"""


def _format_cell(row: pd.Series) -> str:
    if pd.isna(row["mean"]):
        return f"&ndash; <span class='ci'>(0 scored, {int(row['n_missing'])} missing)</span>"
    ci = "" if pd.isna(row["ci_low"]) else f" [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
    missing = f", {int(row['n_missing'])} missing" if row["n_missing"] else ""
    return f"{row['mean']:.4g}<span class='ci'>{ci} (n={int(row['n_scored'])}{missing})</span>"


def _folded(summary: str, content: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary><div>{content}</div></details>"


def column_detail(long: pd.DataFrame, column: str, results_dir: Path) -> str:
    """One leaderboard column, folded: a method x N table of mean [95 % CI] (n) and its plot below it."""
    rows = long[long["column"] == column]
    pivot = rows.assign(cell=rows.apply(_format_cell, axis=1)).pivot(
        index="method_label", columns="n", values="cell")
    pivot = pivot[sorted(pivot.columns, key=n_order)]
    pivot.columns = [f"N={n}" if n != ALL_N else "all" for n in pivot.columns]
    table = pivot.rename_axis("method").reset_index().fillna("").to_html(escape=False, index=False, border=0)
    plot = results_dir / PICTURES_DIR / "plots" / f"metric_{slug(column)}.png"
    image = f"<img src='{_rel(plot, results_dir)}' alt='{html.escape(column)}'>" if plot.exists() else ""
    return _folded(column, f"<div class='wide'>{table}</div><div class='plots'>{image}</div>")


def _rel(path: Path, root: Path) -> str:
    return html.escape(path.relative_to(root).as_posix(), quote=True)


def _table(frame: pd.DataFrame) -> str:
    # Per-status count columns that are all zero only add width on screen (the CSV keeps them).
    empty = [c for c in frame.columns if c.startswith("missing_") and frame[c].eq(0).all()]
    table = frame.drop(columns=empty).to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
    return f"<div class='wide'>{table}</div>"


def _headline_cell(row: pd.Series, best: bool) -> str:
    if pd.isna(row["mean"]):
        return "&ndash;"
    ci = "" if pd.isna(row["ci_low"]) else f" <span class='ci'>[{row['ci_low']:.3g}, {row['ci_high']:.3g}]</span>"
    value = f"<span class='best'>{row['mean']:.4g}</span>" if best else f"{row['mean']:.4g}"
    return value + ci


def headline_table(long: pd.DataFrame, columns: list[str]) -> str:
    """All N, one row per method, one column per headline column: mean [95 % CI], the best mean in bold.

    Every metric here is higher-is-better. A column where all methods tie marks none.
    """
    rows = long[(long["n"] == ALL_N) & long["column"].isin(columns)]
    methods = sorted(rows["method_label"].unique())
    cells = pd.DataFrame(index=methods, columns=columns, dtype=object).fillna("")
    for column in columns:
        part = rows[rows["column"] == column].set_index("method_label")
        means = part["mean"].dropna()
        best = means.max() if means.nunique() > 1 else np.nan
        for method, row in part.iterrows():
            cells.loc[method, column] = _headline_cell(row, best=bool(row["mean"] == best))
    table = cells.rename_axis("method").reset_index().to_html(escape=False, index=False, border=0,
                                                               classes="headline")
    return f"<div class='wide'>{table}</div>"


def cost_table(results_dir: Path, coverage: pd.DataFrame) -> pd.DataFrame:
    """Per method: images generated, generation failures (from coverage.csv), and per image the seconds and
    UNet evaluations the runner recorded in its metadata (``harness.tables.cost_table``, all N)."""
    counts = coverage.drop_duplicates("method_label").set_index("method_label")[
        ["images_generated", "generation_failures"]]
    per_image = tables.cost_table(results_dir)
    per_image = per_image[per_image["n"] == ALL_N].set_index("method_label")
    cost = counts.join(per_image, how="left")
    shown = ["images_generated", "generation_failures", "seconds_per_image", "total_seconds",
             "unet_evaluations_per_image", "device"]
    if (cost["shallow_evaluations_per_image"].fillna(0) > 0).any():  # only CMLoRA-style caches compute these
        shown.insert(5, "shallow_evaluations_per_image")
    cost = cost[shown].rename_axis("method").reset_index()
    cost["device"] = cost["device"].fillna("")
    # what tells two labels of one method apart (e.g. a LoRA-scale sweep), from leaderboard.meta.json
    methods = read_json(results_dir / LEADERBOARD_META_FILE, default={}).get("methods", {})
    differs = {label: ", ".join(f"{name}={value}" for name, value in (info or {}).get("differs", {}).items())
               for label, info in methods.items() if isinstance(info, dict)}
    if any(differs.values()):
        cost["differs by"] = cost["method"].map(differs).fillna("")
    return cost.rename(columns={"images_generated": "images generated", "generation_failures": "failed",
                                "seconds_per_image": "seconds per image", "total_seconds": "total seconds",
                                "unet_evaluations_per_image": "UNet evaluations per image",
                                "shallow_evaluations_per_image": "shallow evaluations per image"})


def agreement_section(results_dir: Path) -> str:
    """agreement.csv in two tables (the raters' figures; each metric against the raters) and its plots."""
    table = pd.read_csv(results_dir / AGREEMENT_FILE, keep_default_na=False, na_values=[""])
    human = table[~table["figure"].isin(METRIC_FIGURES)].drop(columns=["detail"])
    plots = [results_dir / PICTURES_DIR / "plots" / name for name in ("agreement_win_rates.png",
                                                                      "agreement_metrics.png")]
    images = "".join(f"<img src='{_rel(path, results_dir)}' alt='{html.escape(path.stem)}'>"
                     for path in plots if path.exists())
    return ("<p class='note'>From ratings.sqlite (<code>python -m harness rate</code>); every figure with its "
            "raters and ratings. Win rate = preference share of the first method (tie = 1/2), 95% CI over sets; "
            "Krippendorff's alpha over main items; consistency on repeated items (sides swapped); accuracy on gold "
            "items. <a href='" + AGREEMENT_FILE + "'>" + AGREEMENT_FILE + "</a> has every figure.</p>"
            + _table(human)
            + "<p class='note'>Each metric against the human majority: pairwise accuracy on the same pairs (a metric "
              "tie counts 1/2), Kendall tau between method rankings, Spearman rho over images.</p>"
            + _table(metric_summary(table)) + f"<div class='plots'>{images}</div>")


def render_report(results_dir: Path) -> str:
    long = pd.read_csv(results_dir / LEADERBOARD_LONG_FILE, dtype={"n": str})
    meta = read_json(results_dir / LEADERBOARD_META_FILE, default={})
    coverage = pd.read_csv(results_dir / COVERAGE_FILE, keep_default_na=False)
    judge = pd.read_csv(results_dir / JUDGE_FILE, dtype={"n": str})
    pictures = results_dir / PICTURES_DIR
    plots = pictures / "plots"
    grids = sorted((pictures / "grids").glob("*.png"))
    primary = primary_columns_of(results_dir)
    columns = list(dict.fromkeys(long["column"]))
    headline = headline_columns(columns, primary)
    title = f"Results: {results_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.append(f"<p class='note'>Testbed(s): {html.escape(', '.join(meta.get('testbeds', [])))}; methods: "
                f"{html.escape(', '.join(meta.get('methods', {})))}. Rebuilt with <code>python -m harness table "
                f"{html.escape(str(results_dir))}</code>.</p>")

    # 1. The headline: the numbers a reader came for.
    body.append("<h2>Headline (all N)</h2>")
    chosen = ("the testbed's primary columns" if primary is not None else
              f"default headline columns (no primary_columns in {TESTBED_FILE}; see "
              f"harness.tables.headline_columns)")
    body.append(f"<p class='note'>Mean over sets [95% CI], {chosen}. Higher is better for every metric; "
                f"<b>bold</b> = the best mean of its column (none when all tie). Overlapping CIs are no clear "
                f"win: <code>python -m harness compare A B</code> tests one pair. Every N and sub-metric is in "
                f"the details below.</p>")
    body.append(headline_table(long, headline) if headline else "<p>No scores yet.</p>")

    # 2. One sample next to 3. what each method costs (side by side: the grid is narrow and tall).
    body.append("<div class='opening'>")
    if grids:
        body.append(f"<div><h2>Sample</h2><p class='note'>Set {html.escape(grids[0].stem)}: methods (rows) x "
                    f"seeds (columns).<br>Every set is under Images below.</p><div class='sample'>"
                    f"<img src='{_rel(grids[0], results_dir)}' alt='sample grid'></div></div>")
    body.append("<div><h2>Cost per method</h2><p class='note'>Seconds per image as the runner recorded them "
                "(sampling and decoding, not model loading), on the device named; blank where the records carry "
                "no time. A UNet evaluation is one pass over the [uncond, cond] pair (Merge: one per step, "
                "Composite: one per LoRA and step); shallow ones (a feature cache) skip the deep blocks. Per N: "
                "the <code>cost/*</code> columns of leaderboard.csv.</p>"
                + _table(cost_table(results_dir, coverage)) + "</div>")
    body.append("</div>")

    # 4. Everything else, folded.
    body.append("<h2>Details</h2>")
    links = [f"<a href='{name}'>{name}</a>" for name in DOWNLOADS if (results_dir / name).exists()]
    body.append(f"<p>Files: {' · '.join(links)}</p>")
    ci = meta.get("ci", {})
    body.append(f"<p class='note'>Each column by N: mean [95% CI] (n scored). "
                f"{html.escape(meta.get('aggregation', ''))}. CI: {html.escape(str(ci.get('method', '')))} "
                f"bootstrap over {html.escape(str(ci.get('resampled', '')))}, {ci.get('n_resamples', '')} "
                f"resamples, random_state {ci.get('random_state', '')}.</p>")
    body += [column_detail(long, column, results_dir) for column in headline]
    others = [column for column in columns if column not in headline]
    if others:
        body.append(_folded(f"Other columns ({len(others)}): the remaining sub-metrics",
                            "".join(column_detail(long, column, results_dir) for column in others)))

    if not judge.empty:
        judge_plot = plots / "judge_win_rates.png"
        image = (f"<div class='plots'><img src='{_rel(judge_plot, results_dir)}' alt='judge win rates'></div>"
                 if judge_plot.exists() else "")
        body.append(_folded("LLM judge: pairwise win / tie / loss",
                            "<p class='note'>Scores averaged over both presentation orders; consistency_rate = "
                            "share of pairs whose verdict survives the swap; sign test on wins vs losses.</p>"
                            + _table(judge) + image))

    validity = sorted(plots.glob("validity_*.png"))
    if validity or (results_dir / VALIDITY_FILE).exists():
        table = (_table(pd.read_csv(results_dir / VALIDITY_FILE, keep_default_na=False))
                 if (results_dir / VALIDITY_FILE).exists() else "")
        images = "".join(f"<img src='{_rel(path, results_dir)}' alt='{html.escape(path.stem)}'>" for path in validity)
        body.append(_folded("Validity: metric vs the testbed's ground truth", table + f"<div class='plots'>{images}</div>"))

    if (results_dir / AGREEMENT_FILE).exists():
        body.append(_folded("Human ratings: agreement with people", agreement_section(results_dir)))

    body.append(_folded("Coverage", _table(coverage) if not coverage.empty else "<p>No images or scores yet.</p>"))

    if meta.get("columns"):
        settings = pd.DataFrame([{"column": name, "metric": c["metric"], "sub_metric": c["sub_metric"],
                                  "metric_key": c["metric_key"], "version": c["metric_version"],
                                  "settings": str(c["settings"])} for name, c in meta["columns"].items()])
        body.append(_folded("Metric settings", _table(settings)))

    sheets = sorted(pictures.glob("contact_n*.png"), key=lambda p: int(p.stem.removeprefix("contact_n")))
    body.append(_folded(
        "Images: a contact sheet per N, a grid per set",
        "<div class='sheets'>" + "".join(f"<img src='{_rel(path, results_dir)}' alt='{html.escape(path.stem)}'>"
                                         for path in sheets)
        + "</div><p>Per-set grids (methods x seeds):</p><div class='grids'>"
        + "".join(f"<a href='{_rel(path, results_dir)}'>{html.escape(path.stem)}</a>" for path in grids) + "</div>"))

    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + RENDER_CHECK + "</body></html>\n")


def write_report(results_dir: str | Path) -> Path:
    """Write ``<results>/report.html`` from the tables and pictures already in the folder."""
    results_dir = Path(results_dir)
    if not (results_dir / LEADERBOARD_LONG_FILE).exists():
        raise FileNotFoundError(f"{results_dir / LEADERBOARD_LONG_FILE} is missing: build the tables first with "
                                f"`python -m harness table {results_dir}` (it also writes the report).")
    path = results_dir / REPORT_FILE
    atomic_write_text(path, render_report(results_dir))
    return path
