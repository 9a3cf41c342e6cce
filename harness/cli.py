"""Command-line entry points that orchestrate: ``run`` and ``score`` (Hydra apps, config in ``conf/``),
``table`` and ``report`` (argparse). Each turns its arguments into typed objects (``harness.config``), calls
the layer below, and reports problems as one ``error: ...`` line with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Iterator

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from harness.config import RunConfig, metric_config, selected_metrics
from harness.paths import CONF_DIR
from harness.runner import run
from harness.settings import ConfigError
from harness.testbeds import TestbedError
from harness.workflow import RunFailed, finish_results, rebuild_outputs

USER_ERRORS = (ConfigError, TestbedError, FileNotFoundError)


def _exit_with(error: Exception, code: int = 2) -> None:
    """One line for a user's mistake; with HYDRA_FULL_ERROR=1 the error is raised with its traceback instead."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    print(f"error: {error}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def _one_line_errors() -> Iterator[None]:
    """A user's mistake (exit 2) or a full disk (exit 1) ends the command in one line, not a traceback."""
    try:
        yield
    except USER_ERRORS as error:
        _exit_with(error)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        _exit_with(OSError(error.errno, f"the disk is full ({error.filename or 'writing results'}). Everything "
                                        "written before is intact. Fix: free space, then rerun the same command: "
                                        "it resumes"), 1)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def run_app(cfg: DictConfig) -> None:
    logging.getLogger("harness").setLevel(logging.INFO)
    with _one_line_errors():
        config = RunConfig.from_hydra(cfg)
    settings = config.settings
    with _one_line_errors():
        summary = run(config.testbed, config.method, config.method_label, settings)
        finish_results(settings.output_dir, config.metrics, methods=[config.method_label], score=settings.score,
                       tables=settings.tables, progress=settings.progress)
    if summary.failed:
        failure = RunFailed(f"{summary.failed_count} image(s) failed: " + summary.line(0, settings.output_dir)
                            + ". Reasons are in each set's metadata.json under 'failed'; rerun to retry them.")
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise failure  # Hydra reports the failed sweep point
        _exit_with(failure, 1)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def score_app(cfg: DictConfig) -> None:
    with _one_line_errors():
        metrics = selected_metrics(cfg)
        if not metrics:
            raise ConfigError("No metric selected: choose some with `metric=[clip_text,arcface]` (configs in "
                              "conf/metric/<name>.yaml), or give the testbed a default `metrics` list.")
        methods = list(cfg.methods) if cfg.get("methods") else None
        # an unavailable metric is recorded in its rows, not a failed command: the other metrics ran
        finish_results(cfg.output_dir, metrics, methods=methods, tables=bool(cfg.get("tables", True)),
                       progress=bool(cfg.get("progress", True)))


def _hydra_app(app: object, name: str, argv: list[str]) -> int:
    sys.argv = [f"harness {name}", *argv]  # Hydra parses sys.argv itself
    app()  # type: ignore[operator]
    return 0


def run_main(argv: list[str]) -> int:
    return _hydra_app(run_app, "run", argv)


def score_main(argv: list[str]) -> int:
    """``python -m harness score [overrides]`` (Hydra), or ``score RESULTS_DIR --metric NAME [--set M.K=V]``.

    When the first argument is an existing folder, a small argparse interface is used instead of Hydra.
    """
    if not argv or not Path(argv[0]).is_dir():
        return _hydra_app(score_app, "score", argv)
    parser = argparse.ArgumentParser(prog="python -m harness score",
                                     description="Score an existing results folder with metric plugins.")
    parser.add_argument("results_dir", help="results folder (holds images/<method>/<set>/)")
    parser.add_argument("--metric", action="append", required=True, help="metric name (conf/metric/<name>.yaml); repeat")
    parser.add_argument("--set", action="append", default=[], metavar="METRIC.KEY=VALUE",
                        help="override a metric setting, e.g. clip_text.scale=2.5")
    parser.add_argument("--methods", nargs="*", default=None, help="only these method labels or names")
    parser.add_argument("--no-tables", action="store_true", help="score only; do not rebuild tables and report")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        metrics = {name: metric_config(name) for name in args.metric}
        for override in args.set:
            dotted, _, value = override.partition("=")
            name, _, key = dotted.partition(".")
            if name not in metrics or not key:
                parser.error(f"--set {override!r}: expected METRIC.KEY=VALUE with METRIC one of {list(metrics)}")
            metrics[name][key] = yaml.safe_load(value)
        finish_results(args.results_dir, metrics, methods=args.methods, tables=not args.no_tables,
                       progress=not args.no_progress)
    except USER_ERRORS as error:
        parser.exit(2, f"error: {error}\n")
    return 0


def table_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness table",
        description="Rebuild the tidy score table, leaderboard, coverage, judge and validity tables of a results "
                    "folder from its stored rows (and, unless --tables-only, its pictures and report).")
    parser.add_argument("results_dir", type=Path, help="results folder, e.g. results/toy")
    parser.add_argument("--tables-only", action="store_true", help="skip pictures and the HTML report")
    args = parser.parse_args(argv)
    try:
        paths = rebuild_outputs(args.results_dir, tables_only=args.tables_only)
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def report_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness report",
        description="Rebuild tables, pictures and the static HTML report of a results folder.")
    parser.add_argument("results_dir", type=Path, help="results folder, e.g. results/toy")
    args = parser.parse_args(argv)
    try:
        paths = rebuild_outputs(args.results_dir)
    except FileNotFoundError as error:
        parser.exit(2, f"error: {error}\n")
    print(f"report: {paths['report']}")
    return 0
