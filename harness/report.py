"""A static HTML report of a results folder: ``python -m harness report RESULTS_DIR``.

``<results>/report.html`` needs no server: it links the tables (rendered as HTML tables too), the plots
and the image grids by relative paths, so the folder can be zipped, copied or opened from disk. A small
script at the end of the page writes a ``#render-check`` element saying how many tables and images
loaded; the headless-Chromium test reads it.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from harness.io import atomic_write_text, read_json
from harness.pictures import slug
from harness.store import (
    COVERAGE_FILE, JUDGE_FILE, LEADERBOARD_FILE, LEADERBOARD_LONG_FILE, LEADERBOARD_META_FILE, PICTURES_DIR,
    REPORT_FILE, SCORES_STEM, VALIDITY_FILE,
)
from harness.tables import ALL_N, n_order
DOWNLOADS = [LEADERBOARD_FILE, LEADERBOARD_LONG_FILE, LEADERBOARD_META_FILE, f"{SCORES_STEM}.parquet",
             f"{SCORES_STEM}.csv", COVERAGE_FILE, JUDGE_FILE, VALIDITY_FILE]

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
.ci { color: #666; font-size: 11px; }
.plots img, .sheets img { max-width: 100%; margin: 4px; border: 1px solid #ddd; vertical-align: top; }
.metric { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
.metric .plots img { max-width: 520px; }
.grids a { display: inline-block; margin: 2px 6px; }
.wide { overflow-x: auto; }
.note { color: #555; font-size: 13px; }
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


def leaderboard_section(long: pd.DataFrame, results_dir: Path) -> str:
    """Per leaderboard column: a method x N table of mean [95 % CI] (n) and its plot."""
    parts = []
    for column in dict.fromkeys(long["column"]):
        rows = long[long["column"] == column]
        pivot = rows.assign(cell=rows.apply(_format_cell, axis=1)).pivot(
            index="method_label", columns="n", values="cell")
        pivot = pivot[sorted(pivot.columns, key=n_order)]
        pivot.columns = [f"N={n}" if n != ALL_N else "all" for n in pivot.columns]
        table = pivot.rename_axis("method").reset_index().fillna("").to_html(escape=False, index=False, border=0)
        plot = results_dir / PICTURES_DIR / "plots" / f"metric_{slug(column)}.png"
        image = f"<img src='{_rel(plot, results_dir)}' alt='{html.escape(column)}'>" if plot.exists() else ""
        parts.append(f"<h3>{html.escape(column)}</h3><div class='metric'><div>{table}</div>"
                     f"<div class='plots'>{image}</div></div>")
    return "\n".join(parts)


def _rel(path: Path, root: Path) -> str:
    return html.escape(path.relative_to(root).as_posix(), quote=True)


def _table(frame: pd.DataFrame) -> str:
    # Per-status count columns that are all zero only add width on screen (the CSV keeps them).
    empty = [c for c in frame.columns if c.startswith("missing_") and frame[c].eq(0).all()]
    table = frame.drop(columns=empty).to_html(index=False, na_rep="", float_format=lambda x: f"{x:.4g}", border=0)
    return f"<div class='wide'>{table}</div>"


def render_report(results_dir: Path) -> str:
    long = pd.read_csv(results_dir / LEADERBOARD_LONG_FILE, dtype={"n": str})
    meta = read_json(results_dir / LEADERBOARD_META_FILE, default={})
    coverage = pd.read_csv(results_dir / COVERAGE_FILE, keep_default_na=False)
    judge = pd.read_csv(results_dir / JUDGE_FILE, dtype={"n": str})
    pictures = results_dir / PICTURES_DIR
    plots = pictures / "plots"
    title = f"Results: {results_dir.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.append(f"<p class='note'>Testbed(s): {html.escape(', '.join(meta.get('testbeds', [])))}; methods: "
                f"{html.escape(', '.join(meta.get('methods', {})))}. Rebuilt with <code>python -m harness table "
                f"{html.escape(str(results_dir))}</code>.</p>")
    links = [f"<a href='{name}'>{name}</a>" for name in DOWNLOADS if (results_dir / name).exists()]
    body.append(f"<p>Files: {' · '.join(links)}</p>")

    body.append("<h2>Leaderboard</h2>")
    ci = meta.get("ci", {})
    body.append(f"<p class='note'>Mean [95% CI] (n scored). {html.escape(meta.get('aggregation', ''))}. CI: "
                f"{html.escape(str(ci.get('method', '')))} bootstrap over {html.escape(str(ci.get('resampled', '')))}, "
                f"{ci.get('n_resamples', '')} resamples, random_state {ci.get('random_state', '')}.</p>")
    body.append(leaderboard_section(long, results_dir) if not long.empty else "<p>No scores yet.</p>")

    if not judge.empty:
        body.append("<h2>LLM judge: pairwise win / tie / loss</h2>")
        body.append("<p class='note'>Scores averaged over both presentation orders; consistency_rate = share of "
                    "pairs whose verdict survives the swap; sign test on wins vs losses.</p>")
        body.append(_table(judge))
        judge_plot = plots / "judge_win_rates.png"
        if judge_plot.exists():
            body.append(f"<div class='plots'><img src='{_rel(judge_plot, results_dir)}' alt='judge win rates'></div>")

    validity = sorted(plots.glob("validity_*.png"))
    if validity or (results_dir / VALIDITY_FILE).exists():
        body.append("<h2>Validity: metric vs the testbed's ground truth</h2>")
        if (results_dir / VALIDITY_FILE).exists():
            body.append(_table(pd.read_csv(results_dir / VALIDITY_FILE, keep_default_na=False)))
        body.append("<div class='plots'>")
        body += [f"<img src='{_rel(path, results_dir)}' alt='{html.escape(path.stem)}'>" for path in validity]
        body.append("</div>")

    body.append("<h2>Coverage</h2>")
    body.append(_table(coverage) if not coverage.empty else "<p>No images or scores yet.</p>")

    if meta.get("columns"):
        body.append("<h2>Metric settings</h2>")
        settings = pd.DataFrame([{"column": name, "metric": c["metric"], "sub_metric": c["sub_metric"],
                                  "metric_key": c["metric_key"], "version": c["metric_version"],
                                  "settings": str(c["settings"])} for name, c in meta["columns"].items()])
        body.append(_table(settings))

    body.append("<h2>Images</h2><div class='sheets'>")
    body += [f"<img src='{_rel(path, results_dir)}' alt='{html.escape(path.stem)}'>"
             for path in sorted(pictures.glob("contact_n*.png"), key=lambda p: int(p.stem.removeprefix("contact_n")))]
    body.append("</div><p>Per-set grids (methods x seeds):</p><div class='grids'>")
    body += [f"<a href='{_rel(path, results_dir)}'>{html.escape(path.stem)}</a>"
             for path in sorted((pictures / "grids").glob("*.png"))]
    body.append("</div>")

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
