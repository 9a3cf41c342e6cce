"""``make demo`` / ``python -m harness demo``: the full benchmark's six methods on every set of the embedded default
testbed, scored, with a printed leaderboard. The default is the toy world when its built assets are present, else the tiny
random testbed (which runs every code path but whose images mean nothing)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir

from harness.config import RunConfig
from harness.paths import CONF_DIR, PROJECT_ROOT
from harness.rating.cli import simulated_study
from harness.rating.study import StudyError
from harness.store import LEADERBOARD_FILE, iter_failures, iter_images, read_testbed_info
from harness.workflow import finish_results

# The six methods of the full benchmark, heaviest first (the joblib launcher starts them in this order, so
# the long ones do not end up last on one worker). The field's methods (cmlora, loratorio, klora, merge_svd/ties/dare)
# run with `--methods`; their costs are in docs/methods.md.
DEMO_METHODS = ["composite", "w_composite", "merge", "switch", "w_switch", "base"]
DEMO_SETS_PER_N = 0  # every set
DEMO_BATCH_SIZE = 16  # images per denoising loop: on the toy ~2-3x the images per second of batch 1 (docs/results.md)


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


def generate(testbed: str, methods: list[str], subset: list[str], overrides: list[str], jobs: int) -> int:
    """Every method's images, as one Hydra multirun on its joblib launcher: ``jobs`` methods at a time, each job a
    process with one torch thread (on a small model, two one-thread processes make more images per second than one
    process with two threads). Returns the multirun's exit code."""
    command = [sys.executable, "-m", "harness", "run", "-m", f"testbed={testbed}", f"method={','.join(methods)}",
               "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "score=false", "tables=false",
               "progress=false", *subset, *overrides]
    print("demo:", " ".join(command[1:]), flush=True)
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness demo", description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default=None, help="conf/testbed/<name>.yaml (default: toy if built, else tiny)")
    parser.add_argument("--methods", nargs="*", default=DEMO_METHODS)
    parser.add_argument("--sets-per-n", type=int, default=DEMO_SETS_PER_N,
                        help="evenly spaced sets per N, for a quicker look; 0 = every set (the default)")
    parser.add_argument("--batch-size", type=int, default=DEMO_BATCH_SIZE, help="images per denoising loop")
    parser.add_argument("--jobs", type=int, default=0, help="methods generated at once (default: one per CPU core)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. limit=10 output_dir=/tmp/demo")
    args = parser.parse_args(argv)
    testbed = args.testbed or default_testbed()
    if args.testbed is None and testbed == "tiny":
        print("demo: the toy testbed is not built (testbed/toy/base missing); running the tiny random testbed")
    started = time.perf_counter()
    subset = [f"limit_per_n={args.sets_per_n}"] if args.sets_per_n else []
    overrides = [f"batch_size={args.batch_size}", *args.overrides]
    jobs = args.jobs or max(1, min(len(args.methods), os.cpu_count() or 1))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # a wrong override stops us here
        config = RunConfig.from_hydra(compose("config", overrides=[f"testbed={testbed}", *subset, *overrides]))
    output_dir = config.settings.output_dir
    code = generate(testbed, args.methods, subset, overrides, jobs)
    generated = time.perf_counter() - started
    if code and not any(True for _ in iter_images(output_dir, args.methods)):
        print(f"demo: generation failed (exit code {code}; its error is above) and made no image: nothing to score")
        return code
    finish_results(output_dir, config.metrics, tables=False)  # every method at once: one model load per metric
    scored = time.perf_counter() - started
    if testbed == "toy":  # the oracle rates the images as three noisy raters -> agreement.csv (docs/rating.md)
        try:
            simulated_study(output_dir)
        except StudyError as error:
            print(f"demo: no simulated rating study ({error})")
    finish_results(output_dir, {}, score=False)  # tables, validity, agreement, pictures, report
    leaderboard = output_dir / LEADERBOARD_FILE
    if leaderboard.exists():
        print(headline(leaderboard, read_testbed_info(output_dir).get("primary_columns") or []))
    print(f"demo: {len(args.methods)} methods on {testbed} in {time.perf_counter() - started:.0f} s (generated in "
          f"{generated:.0f} s, scored by {scored:.0f} s) -> {output_dir}")
    failures = Counter(failure["method_label"] for failure in iter_failures(output_dir))
    for label, count in sorted(failures.items()):
        print(f"failed: {label}: {count} image(s); reasons in each set's metadata.json under 'failed'")
    return 1 if code or failures else 0
