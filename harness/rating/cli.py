"""``python -m harness rate`` (serve the rating page, or let the toy oracle rate) and ``python -m harness agreement``.

Both turn their arguments into a study and a results folder, call the layers below and report a user's
mistake as one ``error: ...`` line with exit code 2 (docs/rating.md has the whole workflow).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.agreement import METRIC_FIGURES, metric_summary
from harness.paths import CONF_DIR, resolve_path
from harness.rating.db import RatingsDB, RatingsError
from harness.rating.export import read_answers
from harness.rating.server import ServerError, create_app, serve
from harness.rating.simulate import SIMULATED, simulate
from harness.rating.study import RUBRICS, Study, StudyError, StudySpec, build_study, default_spec
from harness.store import AGREEMENT_FILE, LEADERBOARD_LONG_FILE, RATINGS_FILE, is_results_folder
from harness.tables import headline_columns, primary_columns_of
from harness.workflow import rebuild_outputs

DEFAULT_PORT = 8765
DEFAULT_HOST = "127.0.0.1"
USER_ERRORS = (StudyError, RatingsError, ServerError, FileNotFoundError)


def _results_folder(path: Path) -> Path:
    if not path.is_dir() or not is_results_folder(path):
        raise FileNotFoundError(f"{path} is not a results folder (no images/ in it): pass the folder a run wrote, "
                                f"e.g. results/toy")
    return path


def _items(text: str) -> int | str:
    return "all" if text == "all" else int(text)


def study_spec(args: argparse.Namespace) -> StudySpec:
    """The study file, or a default study, with the command line's overrides applied."""
    overrides = {"rubric": args.rubric, "pairs": args.pairs.split(",") if args.pairs else None,
                 "items_per_rater": args.items_per_rater, "repeats": args.repeats, "gold": args.gold}
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if args.study is None:
        return default_spec(name=args.name, **overrides)
    spec = StudySpec.from_yaml(resolve_path(args.study))
    if not overrides and args.name is None:
        return spec
    data = {**spec.definition(), **overrides}
    data.pop("rubric_version")
    if args.name is not None:
        data["name"] = args.name
    if "rubric" in overrides and overrides["rubric"] != spec.rubric:
        data.pop("pairs" if overrides["rubric"] == "pointwise" else "methods", None)
    return StudySpec.from_dict(data)


def open_study(results_dir: Path, spec: StudySpec) -> tuple[Study, RatingsDB]:
    """Build the study on the folder and record it in ratings.sqlite (refused if the name has another definition)."""
    study = build_study(spec, results_dir)
    db = RatingsDB.of(results_dir)
    db.register_study(study.name, study.rubric.name, study.rubric.version, spec.definition())
    return study, db


ORACLE_STUDY = CONF_DIR / "rating" / "toy_oracle.yaml"


def simulated_study(results_dir: Path, study_file: Path = ORACLE_STUDY, raters: int = 3,
                    noise: float = 0.1) -> dict[str, int]:
    """The oracle-rated study ``demo`` runs on the toy testbed (before its tables are rebuilt): rater -> answers
    added (none on a rerun: every answer is there)."""
    study, db = open_study(results_dir, StudySpec.from_yaml(study_file))
    return simulate(study, results_dir, db, raters=raters, noise=noise)


def rate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness rate",
        description="Serve a rating page for a results folder (answers go to <results>/ratings.sqlite), or let "
                    "the toy oracle answer the study (--simulate oracle).")
    parser.add_argument("results_dir", type=Path, help="results folder, e.g. results/toy")
    parser.add_argument("--study", type=Path, default=None, help="study YAML (examples: conf/rating/*.yaml)")
    parser.add_argument("--pairs", default=None, help="method pairs A:B,C:D (pairwise; default: every pair)")
    parser.add_argument("--rubric", choices=sorted(RUBRICS), default=None, help="default: pairwise")
    parser.add_argument("--name", default=None, help="study name (default: the file name, or one made from the "
                                                     "definition)")
    parser.add_argument("--items-per-rater", type=_items, default=None, metavar="N|all")
    parser.add_argument("--repeats", type=int, default=None, help="repeated items per rater (sides swapped)")
    parser.add_argument("--gold", type=int, default=None, help="gold items per rater (needs a ground truth)")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default 127.0.0.1: this "
                                                             "machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--simulate", choices=SIMULATED, default=None,
                        help="no page: simulated raters answer every item from the toy oracle's truth")
    parser.add_argument("--raters", type=int, default=3, help="simulated raters (oracle-1 ...)")
    parser.add_argument("--noise", type=float, default=0.1, help="simulated raters: chance of a random answer")
    args = parser.parse_args(argv)
    try:
        results_dir = _results_folder(args.results_dir)
        study, db = open_study(results_dir, study_spec(args))
        per_rater = study.list_length
        if args.simulate:
            added = simulate(study, results_dir, db, raters=args.raters, noise=args.noise, kind=args.simulate)
            print(f"study {study.name} ({study.rubric.version}): {per_rater} items per rater; "
                  + ", ".join(f"{rater} +{count} answers" for rater, count in added.items()))
            print(f"ratings: {db.path}\nnext: python -m harness agreement {results_dir}")
            return 0
        app = create_app(study, db, results_dir)
        print(f"rating page: http://{args.host}:{args.port}/  (study {study.name}, {study.rubric.name}, {per_rater} "
              f"items per rater; answers go to {db.path}; Ctrl-C stops)")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}: anyone who can reach this machine can rate", file=sys.stderr)
        serve(app, args.host, args.port)
    except USER_ERRORS as error:
        parser.exit(2, f"error: {error}\n")
    print(f"stopped. next: python -m harness agreement {args.results_dir}")
    return 0


def format_agreement(table: pd.DataFrame, columns: list[str] | None = None) -> str:
    """The figures a reader wants first, as text: raters and ratings, human figures, metric agreement (for
    ``columns`` and the judge's pairwise verdicts only, when given)."""
    table = table.assign(missing_reason=table["missing_reason"].fillna(""))
    lines = []
    human = table[~table["figure"].isin(METRIC_FIGURES)]
    for rubric, part in human.groupby("rubric", sort=True):
        main = part[part["figure"].isin(["win_rate", "mean_score"])]
        raters = int(main["n_raters"].max()) if not main.empty else 0
        ratings = int(main.groupby("criterion")["n_ratings"].sum().max()) if not main.empty else 0
        lines.append(f"== {rubric}: {raters} raters, {ratings} ratings per criterion on main items")
        shown = part.assign(value=part["value"].map(lambda v: "" if pd.isna(v) else f"{v:.3f}"),
                            ci=[("" if pd.isna(lo) else f"[{lo:.3f}, {hi:.3f}]")
                                for lo, hi in zip(part["ci_low"], part["ci_high"])])
        lines.append(shown[["figure", "criterion", "subject", "value", "ci", "n", "n_raters", "n_ratings",
                            "missing_reason"]].to_string(index=False))
    summary = metric_summary(table)
    if columns is not None and not summary.empty:
        summary = summary[summary["subject"].isin(columns) | summary["subject"].str.endswith(" (pairwise)")]
    if not summary.empty:
        lines.append("== metrics vs the human majority (pairwise accuracy, Kendall tau over methods, Spearman rho "
                     "over images)" + ("; headline columns, every column in agreement.csv:" if columns is not None
                                       else ":"))
        lines.append(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-"))
    return "\n".join(lines)


def agreement_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness agreement",
        description="Human win rates, inter-rater agreement, rater consistency and gold accuracy, and how far each "
                    "metric agrees with the raters: exports the ratings as metric `human`, rebuilds the tables "
                    f"(with {AGREEMENT_FILE}), pictures and report, and prints the figures.")
    parser.add_argument("results_dir", type=Path, help="results folder with ratings.sqlite, e.g. results/toy")
    parser.add_argument("--tables-only", action="store_true", help="skip pictures and the HTML report")
    parser.add_argument("--all-metrics", action="store_true",
                        help="print every metric column (default: the headline columns, as in the report)")
    args = parser.parse_args(argv)
    try:
        results_dir = _results_folder(args.results_dir)
        answers = read_answers(results_dir)
        if answers is None or answers.empty:
            raise FileNotFoundError(f"no ratings in {results_dir / RATINGS_FILE}: collect some with `python -m "
                                    f"harness rate {results_dir}` (on the toy testbed: add --simulate oracle)")
        paths = rebuild_outputs(results_dir, tables_only=args.tables_only)
    except USER_ERRORS as error:
        parser.exit(2, f"error: {error}\n")
    table = pd.read_csv(paths["agreement"], keep_default_na=False, na_values=[""])
    columns = None
    if not args.all_metrics:
        long = pd.read_csv(results_dir / LEADERBOARD_LONG_FILE, dtype={"n": str})
        columns = headline_columns(dict.fromkeys(long["column"]), primary_columns_of(results_dir))
    print(format_agreement(table, columns))
    print(f"agreement: {paths['agreement']}" + (f"\nreport: {paths['report']}" if "report" in paths else ""))
    return 0
