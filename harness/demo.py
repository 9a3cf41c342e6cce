"""``make demo`` / ``python -m harness demo``: every method on the embedded default testbed, scored, with a
printed leaderboard. The default is the toy world when its built assets are present, else the tiny
random testbed (which runs every code path but whose images mean nothing)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from harness.config import RunConfig
from harness.paths import CONF_DIR, PROJECT_ROOT
from harness.rating.cli import simulated_study
from harness.rating.study import StudyError
from harness.runner import run
from harness.store import LEADERBOARD_FILE, read_testbed_info
from harness.workflow import finish_results

# The field's methods too (issue 28); merge_cat is left out: it reproduces merge (tests/test_methods_peft_merge.py).
# Their cost on the toy is in docs/methods.md ("Measured on the toy testbed"): the demo stays near 8 minutes.
DEMO_METHODS = ["base", "merge", "switch", "composite", "w_switch", "w_composite", "cmlora", "loratorio", "klora",
                "merge_svd", "merge_ties", "merge_dare"]
DEMO_SETS_PER_N = 12


def default_testbed() -> str:
    return "toy" if (PROJECT_ROOT / "testbed" / "toy" / "base" / "model_index.json").exists() else "tiny"


def headline(leaderboard: Path, columns: list[str]) -> str:
    """The leaderboard's "all" rows, the testbed's primary columns as 'mean [95% CI]' (the CSV has every column)."""
    table = pd.read_csv(leaderboard)
    table = table[table["n"].astype(str) == "all"]
    shown = {"method": table["method"]}
    for column in columns:
        if f"{column}.mean" in table:
            shown[column] = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(m) else "missing" for m, lo, hi in
                             zip(table[f"{column}.mean"], table[f"{column}.ci_low"], table[f"{column}.ci_high"])]
    return f"leaderboard (all N; every column and N in {leaderboard}):\n" + pd.DataFrame(shown).to_string(index=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness demo", description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default=None, help="conf/testbed/<name>.yaml (default: toy if built, else tiny)")
    parser.add_argument("--methods", nargs="*", default=DEMO_METHODS)
    parser.add_argument("--sets-per-n", type=int, default=DEMO_SETS_PER_N,
                        help="evenly spaced sets per N (keeps the demo near 10 min on 2 CPU cores); 0 = every set")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. limit=10 output_dir=/tmp/demo")
    args = parser.parse_args(argv)
    testbed = args.testbed or default_testbed()
    if testbed == "tiny":
        print("demo: the toy testbed is not built (testbed/toy/base missing); running the tiny random testbed")
    started = time.perf_counter()
    failed = []
    subset = [f"limit_per_n={args.sets_per_n}"] if args.sets_per_n else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for method in args.methods:
            cfg = compose("config", overrides=[f"testbed={testbed}", f"method={method}", *subset, *args.overrides])
            config = RunConfig.from_hydra(cfg)
            summary = run(config.testbed, config.method, config.method_label, config.settings)
            if summary.failed:
                failed.append(f"{method}: {summary.failed_count} image(s) failed: "
                              + summary.line(0, config.settings.output_dir))
    output_dir = config.settings.output_dir
    finish_results(output_dir, config.metrics, tables=False)  # every method at once: one model load per metric
    if testbed == "toy":  # the oracle rates the images as three noisy raters -> agreement.csv (docs/rating.md)
        try:
            simulated_study(output_dir)
        except StudyError as error:
            print(f"demo: no simulated rating study ({error})")
    finish_results(output_dir, {}, score=False)  # tables, validity, agreement, pictures, report
    leaderboard = output_dir / LEADERBOARD_FILE
    if leaderboard.exists():
        print(headline(leaderboard, read_testbed_info(output_dir).get("primary_columns") or []))
    print(f"demo: {len(args.methods)} methods on {testbed} in {time.perf_counter() - started:.0f} s -> {output_dir}")
    for line in failed:
        print("failed:", line)
    return 1 if failed else 0
