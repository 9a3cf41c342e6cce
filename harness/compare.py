"""Paired comparison of two methods: ``python -m harness compare A B [--results DIR] [--force]``.

A and B are method labels inside one results folder (``--results``, default ``results/toy``), or
sources from different runs: a results folder, a tidy table (``scores.parquet`` / ``scores.csv``), a
``leaderboard.csv`` (its folder's tidy table is used: paired statistics need per-image values) or a score
``.jsonl`` file. ``SOURCE#LABEL`` picks one method from a source that holds several.

Images are paired on (set_id, seed); the statistical unit is the set (per set, the mean over its paired
seeds), as the methods share sets and seeds. Per metric column group and per N (plus ``all``): the mean
difference A - B with a paired bootstrap 95 % CI, the Wilcoxon signed-rank p-value, win/tie/loss counts,
a sign-test p-value (the usual test for judge verdicts) and Holm-adjusted Wilcoxon p-values across the
metric groups of that N. Judge pairwise rows (``<criterion>_vs_<other>``) are paired as criterion
``llm_judge/<criterion>``. Numbers made with different metric settings (metric_key) are refused unless
``--force``.

What it prints: first the headline, all N and one row per headline column (the testbed's primary columns,
see ``harness.tables.headline_columns``) with both means, the difference and its CI, p-values and a
verdict in words, then a one-paragraph summary. A verdict reads the CI alone: every metric here is
higher-is-better, so a CI above 0 means A is better, below 0 B, and a CI holding 0 no clear difference.
``--full`` also prints every column per N; ``--out FILE`` always writes that full table as CSV.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from harness import stats
from harness.store import (
    LEADERBOARD_FILE, SCORE_COLUMNS, SCORES_STEM, iter_images, pairwise_sub_metric, results_dir_of_scores,
)
from harness.tables import (
    ALL_N, JUDGE_METRIC, headline_columns, is_pairwise_judge, lora_ids, n_order, names_a_lora, primary_columns_of,
    tidy_table, typed_scores, write_csv,
)

DEFAULT_RESULTS = Path("results/toy")
PAIR_KEYS = ["set_id", "seed"]


class ComparabilityError(ValueError):
    """The two sides' numbers were made with different metric settings."""


@dataclass
class Side:
    label: str
    source: str
    rows: pd.DataFrame  # tidy rows of this method only
    folder: Path  # the results folder the rows come from (its testbed settings name the headline columns)


def _load_source(path: Path) -> pd.DataFrame:
    if path.is_dir():
        return tidy_table(path)
    if path.name == LEADERBOARD_FILE:
        # A leaderboard holds only aggregates; the paired test needs the per-image rows beside it.
        return tidy_table(path.parent)
    if path.suffix == ".parquet":
        return typed_scores(pd.read_parquet(path))
    if path.suffix == ".csv":
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
        missing = [c for c in SCORE_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path} is not a tidy score table (no columns {missing}); pass a results folder, "
                             f"{SCORES_STEM}.parquet/.csv or {LEADERBOARD_FILE} written by `python -m harness table`.")
        return typed_scores(frame)
    if path.suffix == ".jsonl":
        # scores/<metric>/<metric_key>/<label>.jsonl: read through its folder so the usual dedup applies.
        rows = tidy_table(results_dir_of_scores(path))
        return rows[(rows["metric"] == path.parents[1].name) & (rows["metric_key"] == path.parent.name)
                    & (rows["method_label"] == path.stem)]
    raise ValueError(f"cannot read {path}: expected a results folder, .parquet, .csv, {LEADERBOARD_FILE} or .jsonl")


def _folder_of(path: Path) -> Path:
    """The results folder a source lives in (a tidy table and leaderboard sit at its top)."""
    if path.is_dir():
        return path
    return results_dir_of_scores(path) if path.suffix == ".jsonl" else path.parent


def resolve_side(spec: str, results_dir: Path | None) -> Side:
    """A method label in ``results_dir``, or ``PATH`` / ``PATH#LABEL`` naming rows from another run."""
    path_text, _, label = spec.partition("#")
    path = Path(path_text)
    if results_dir is not None and not path.exists():
        rows, label, source, folder = tidy_table(results_dir), spec, str(results_dir), results_dir
    elif path.exists():
        rows, source, folder = _load_source(path), path_text, _folder_of(path)
    else:
        raise FileNotFoundError(
            f"{spec!r} is neither a method label in the results folder nor an existing file or folder; "
            f"pass --results DIR with method labels, or paths to results folders / score tables.")
    # Per-LoRA sub-metrics are left out, as in the leaderboard: they would only widen the Holm family.
    rows = rows[~names_a_lora(rows, lora_ids(iter_images(folder)))]
    labels = sorted(rows["method_label"].unique())
    if not label:
        if len(labels) != 1:
            raise ValueError(f"{source} holds methods {labels}: pick one with {path_text}#LABEL.")
        label = labels[0]
    if label not in labels:
        raise ValueError(f"method {label!r} has no score rows in {source}; methods there: {labels}. "
                         f"Run `python -m harness score` first or check the label.")
    return Side(label=label, source=source, rows=rows[rows["method_label"] == label], folder=folder)


def _paired_view(side: Side, other_label: str) -> pd.DataFrame:
    """Rows keyed by comparison column; judge pairwise rows against the other side become criteria."""
    rows = side.rows.copy()
    suffix = pairwise_sub_metric("", other_label)  # "_vs_<other>": this side's score against the other
    versus_other = (rows["metric"] == JUDGE_METRIC) & rows["sub_metric"].str.endswith(suffix) & \
        ~rows["sub_metric"].str.endswith(pairwise_sub_metric("", other_label, consistency=True))
    rows = rows[~is_pairwise_judge(rows) | versus_other].copy()
    judged = is_pairwise_judge(rows)
    rows.loc[judged, "sub_metric"] = rows.loc[judged, "sub_metric"].str.removesuffix(suffix) + " (pairwise)"
    rows["column"] = np.where(rows["sub_metric"] == "all", rows["metric"], rows["metric"] + "/" + rows["sub_metric"])
    return rows


def match_metric_keys(a: pd.DataFrame, b: pd.DataFrame, force: bool) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Pairs of (metric, key_a, key_b) to compare, and notes; raises ComparabilityError on a settings mismatch."""
    keys_a = a.groupby("metric")["metric_key"].unique().map(set)
    keys_b = b.groupby("metric")["metric_key"].unique().map(set)
    pairs, notes, problems = [], [], []
    for metric in sorted(set(keys_a.index) | set(keys_b.index)):
        ka, kb = keys_a.get(metric, set()), keys_b.get(metric, set())
        if not ka or not kb:
            notes.append(f"{metric}: scored for one side only, skipped")
            continue
        pairs += [(metric, key, key) for key in sorted(ka & kb)]
        only_a, only_b = ka - kb, kb - ka
        if only_a or only_b:
            settings_a = a[a["metric_key"].isin(only_a)]["metric_settings"].unique().tolist()
            settings_b = b[b["metric_key"].isin(only_b)]["metric_settings"].unique().tolist()
            problems.append(f"{metric}: keys {sorted(only_a)} (settings {settings_a}) vs {sorted(only_b)} "
                            f"(settings {settings_b})")
            if force and len(only_a) == 1 and len(only_b) == 1:
                pairs.append((metric, next(iter(only_a)), next(iter(only_b))))
    if problems and not force:
        raise ComparabilityError(
            "refusing to compare numbers made with different metric settings: " + "; ".join(problems)
            + ". Re-score both sides with the same metric config, or pass --force to compare them anyway.")
    notes += [f"forced despite different settings: {problem}" for problem in problems]
    return pairs, notes


def side_names(side_a: Side, side_b: Side) -> tuple[str, str]:
    """How verdicts name the sides: their labels, or "A" and "B" when both runs use the same label."""
    return (side_a.label, side_b.label) if side_a.label != side_b.label else ("A", "B")


def verdict(ci_low: float, ci_high: float, name_a: str, name_b: str) -> str:
    """The verdict in words from the 95 % CI of A - B; every metric here is higher-is-better."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "no CI (fewer than 2 sets)"
    if ci_low > 0:
        return f"{name_a} better"
    if ci_high < 0:
        return f"{name_b} better"
    return "no clear difference (CI includes 0)"


def compare(side_a: Side, side_b: Side, force: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """The comparison table (one row per metric column x N) and notes about what was skipped or forced."""
    a = _paired_view(side_a, side_b.label)
    b = _paired_view(side_b, side_a.label)
    key_pairs, notes = match_metric_keys(a, b, force)
    records = []
    for metric, key_a, key_b in key_pairs:
        part_a = a[(a["metric"] == metric) & (a["metric_key"] == key_a)]
        part_b = b[(b["metric"] == metric) & (b["metric_key"] == key_b)]
        merged = part_a.merge(part_b, on=["column", *PAIR_KEYS], suffixes=("_a", "_b"))
        merged = merged.dropna(subset=["value_a", "value_b"])
        merged["n"] = merged["n_a"]
        if (merged["n_a"] != merged["n_b"]).any():
            raise ValueError(f"{metric}: the same set id has a different N on the two sides; these results "
                             f"come from different testbeds and cannot be paired.")
        for column, by_column in merged.groupby("column", sort=True):
            partitions = [(str(n), p) for n, p in by_column.groupby("n", sort=True)] + [(ALL_N, by_column)]
            for n, part in partitions:
                per_set = part.groupby("set_id")[["value_a", "value_b"]].mean()
                va, vb = per_set["value_a"].to_numpy(), per_set["value_b"].to_numpy()
                diff, low, high = stats.paired_difference_ci(va, vb)
                wins, ties, losses = stats.win_tie_loss(va, vb)
                records.append({
                    "column": column, "n": n, "metric_key_a": key_a, "metric_key_b": key_b,
                    "pairs": len(part), "sets": len(per_set),
                    "mean_a": va.mean(), "mean_b": vb.mean(),
                    "mean_diff": diff, "ci_low": low, "ci_high": high,
                    "wins_a": wins, "ties": ties, "wins_b": losses,
                    "wilcoxon_p": stats.wilcoxon_p(va, vb), "sign_test_p": stats.sign_test_p(wins, losses),
                })
    table = pd.DataFrame.from_records(records)
    if table.empty:
        notes.append("no metric has paired values on both sides (same set_id and seed)")
        return table, notes
    table["holm_p"] = np.nan
    for n, index in table.groupby("n").groups.items():
        table.loc[index, "holm_p"] = stats.holm(table.loc[index, "wilcoxon_p"].to_numpy())
    name_a, name_b = side_names(side_a, side_b)
    table["verdict"] = [verdict(low, high, name_a, name_b) for low, high in zip(table["ci_low"], table["ci_high"])]
    table["_order"] = table["n"].map(n_order)
    table = table.sort_values(["_order", "column"]).drop(columns="_order").reset_index(drop=True)
    return table, notes


def headline(table: pd.DataFrame, primary: list[str] | None) -> pd.DataFrame:
    """The all-N rows of the headline columns (``harness.tables.headline_columns``), in their order."""
    everything = table[table["n"] == ALL_N].set_index("column")
    return everything.loc[headline_columns(everything.index, primary)].reset_index()


def format_headline(rows: pd.DataFrame, name_a: str, name_b: str) -> str:
    """The headline rows as text: both means, A - B [95 % CI], p-values, sets and the verdict."""
    shown = pd.DataFrame({
        "column": rows["column"],
        name_a: rows["mean_a"].map("{:.4g}".format),
        name_b: rows["mean_b"].map("{:.4g}".format),
        f"{name_a} - {name_b} [95% CI]": [f"{d:.3g} [{lo:.3g}, {hi:.3g}]" for d, lo, hi in
                                           zip(rows["mean_diff"], rows["ci_low"], rows["ci_high"])],
        "p": rows["wilcoxon_p"].map("{:.2g}".format),
        "p_holm": rows["holm_p"].map("{:.2g}".format),
        "sets": rows["sets"],
        "verdict": rows["verdict"],
    })
    return _aligned(shown, left={"column", "verdict"})


def _aligned(frame: pd.DataFrame, left: set[str]) -> str:
    """A text table: the ``left`` columns left-aligned (names read better so), the numbers right-aligned."""
    widths = {name: max(len(str(name)), frame[name].astype(str).str.len().max()) for name in frame.columns}

    def line(cells: Iterable[object]) -> str:
        return "  ".join(str(cell).ljust(widths[name]) if name in left else str(cell).rjust(widths[name])
                         for name, cell in zip(frame.columns, cells)).rstrip()

    return "\n".join([line(frame.columns)] + [line(row) for row in frame.itertuples(index=False)])


def summary(rows: pd.DataFrame, family_size: int, name_a: str, name_b: str) -> str:
    """One paragraph: where each side is better on the headline columns, and what a verdict rests on."""
    better_a = rows.loc[rows["verdict"] == f"{name_a} better", "column"]
    better_b = rows.loc[rows["verdict"] == f"{name_b} better", "column"]
    unclear = rows.loc[~rows["column"].isin([*better_a, *better_b]), "column"]
    parts = [f"{winner} is better than {loser} on {', '.join(columns)}" for winner, loser, columns in
             ((name_a, name_b, better_a), (name_b, name_a, better_b)) if len(columns)]
    parts += [f"no clear difference on {', '.join(unclear)}"] if len(unclear) else []
    return textwrap.fill(
        f"Summary (all N, up to {rows['sets'].max()} sets paired on set and seed): " + "; ".join(parts) + ". "
        f"A verdict reads the paired 95 % bootstrap CI of the mean per-set difference A - B (higher is better "
        f"for every metric); it is not corrected for testing several columns, p_holm is (Wilcoxon p, "
        f"Holm-adjusted over all {family_size} columns compared at all N). Every column per N: --full, "
        f"or --out FILE for the CSV.", width=110, break_on_hyphens=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness compare",
        description="Paired comparison of method A against method B (A - B), by set and seed.")
    parser.add_argument("a", help="method label in --results, or PATH[#LABEL] (results folder, scores.parquet/"
                                  ".csv, leaderboard.csv or a score .jsonl)")
    parser.add_argument("b", help="as A")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"results folder holding both methods (default {DEFAULT_RESULTS} when A and B "
                             f"are not paths)")
    parser.add_argument("--force", action="store_true", help="compare even when metric settings differ")
    parser.add_argument("--full", action="store_true",
                        help="also print every column (sub-metrics included) per N, not only the headline")
    parser.add_argument("--out", type=Path, default=None, help="write the full table (every column, per N) as CSV")
    args = parser.parse_args(argv)
    results_dir = args.results
    both_paths = all(Path(spec.partition("#")[0]).exists() for spec in (args.a, args.b))
    if results_dir is None and not both_paths:
        results_dir = DEFAULT_RESULTS
    try:
        if results_dir is not None and not results_dir.is_dir():
            raise FileNotFoundError(f"results folder {results_dir} does not exist; pass --results DIR.")
        side_a, side_b = resolve_side(args.a, results_dir), resolve_side(args.b, results_dir)
        table, notes = compare(side_a, side_b, force=args.force)
    except (ComparabilityError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"A = {side_a.label} ({side_a.source})   B = {side_b.label} ({side_b.source})   difference = A - B")
    if table.empty:
        print("(nothing to compare)")
    else:
        # Sides from different runs: the headline columns of A's results folder.
        rows = headline(table, primary_columns_of(results_dir if results_dir is not None else side_a.folder))
        name_a, name_b = side_names(side_a, side_b)
        if rows.empty:
            print("\n(no headline column has paired values; --full shows every column)")
        else:
            print(f"\nHeadline, all N:\n{format_headline(rows, name_a, name_b)}")
            print("\n" + summary(rows, int((table["n"] == ALL_N).sum()), name_a, name_b))
        if args.full:
            print("\nEvery column, per N and all:")
            with pd.option_context("display.width", 250, "display.max_columns", None,
                                   "display.float_format", "{:.4g}".format):
                print(table.to_string(index=False))
    for note in notes:
        print(f"note: {note}")
    if args.out is not None:
        write_csv(table, args.out)
        print(f"written: {args.out}")
    return 0
