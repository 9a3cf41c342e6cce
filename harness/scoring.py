"""Score an existing results folder with metric plugins: batched, resumable, append-only JSON lines.

For each metric (``{name: settings}`` as composed from ``conf/metric/<name>.yaml``) the driver builds
``METRICS.get(name)(**settings)``, skips images already scored with the same metric key (a hash of the
metric's name, version and settings), scores the rest in batches of ``metric.batch_size`` and appends the
rows to ``scores/<metric>/<metric_key>/<method_label>.jsonl`` (flush + fsync per batch, so a killed run
loses at most the batch in flight). A metric whose model is missing yields ``unavailable`` rows naming the
path it looked for; the other metrics still run. Such rows (and ``error`` rows) are retried on the next run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.metrics.base import METRICS, SCORE_COLUMNS, Metric, ScoreRow
from harness.records import ImageRecord, iter_images

logger = logging.getLogger(__name__)

SCORES_DIR = "scores"
RETRY_STATUSES = ("unavailable", "error")  # rows that do not count as scored: a later run tries again
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def metric_class(name: str) -> type[Metric]:
    """The registered metric class; a built-in metric lives in ``harness/metrics/<name>.py``."""
    try:
        return METRICS.get(name)
    except KeyError:
        if importlib.util.find_spec(f"harness.metrics.{name}") is None:
            raise
        importlib.import_module(f"harness.metrics.{name}")
        return METRICS.get(name)


def build_metric(settings: dict[str, Any]) -> Metric:
    """``{"name": <registered name>, **settings}`` -> metric instance."""
    settings = dict(settings)
    name = settings.pop("name")
    return metric_class(name)(**settings)


# --- storage -----------------------------------------------------------------------------------------------
def scores_path(results_dir: str | Path, metric: str, metric_key: str, method_label: str) -> Path:
    return Path(results_dir) / SCORES_DIR / metric / metric_key / f"{method_label}.jsonl"


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON-lines file; a truncated last line (a killed writer) is skipped with a warning."""
    with open(path, encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number >= len(lines) - 1:  # only the last line may be cut short
                logger.warning("%s: skipping truncated last line %d", path, number)
                continue
            raise ValueError(f"{path}: line {number} is not valid JSON; the file is corrupt (delete it to rescore)")


def append_rows(results_dir: str | Path, rows: Iterable[ScoreRow]) -> int:
    """Append rows to their per-method JSONL files; flush and fsync so a finished batch survives a crash."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for row in rows:
        path = scores_path(results_dir, row.metric, row.metric_key, row.method_label)
        by_file[path].append(json.dumps(row.to_dict(), default=str))
    for path, lines in by_file.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _repair_truncated_tail(path)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    return sum(len(lines) for lines in by_file.values())


def _repair_truncated_tail(path: Path) -> None:
    """A killed writer can leave a partial last line: cut it off so new rows do not follow garbage.

    The image it belonged to has no complete row, so it counts as not scored and is scored again.
    """
    if not path.exists() or not path.stat().st_size:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a truncated last line before appending", path)
        handle.truncate(keep)


def scored_image_keys(results_dir: str | Path, metric: str, metric_key: str) -> set[str]:
    """Image keys that already have a final (not unavailable/error) row for this metric key."""
    folder = Path(results_dir) / SCORES_DIR / metric / metric_key
    done: set[str] = set()
    for path in sorted(folder.glob("*.jsonl")):
        for row in read_jsonl(path):
            if row.get("status") not in RETRY_STATUSES:
                done.add(row["image_key"])
    return done


def load_scores(results_dir: str | Path) -> "pandas.DataFrame":  # noqa: F821
    """Every score row of a results folder as a DataFrame with columns SCORE_COLUMNS.

    Where an image was scored again after an ``unavailable``/``error`` row, the retried rows are dropped;
    among duplicates of (image, metric key, sub-metric) the last written wins.
    """
    import pandas as pd

    rows = [row for path in sorted((Path(results_dir) / SCORES_DIR).glob("*/*/*.jsonl")) for row in read_jsonl(path)]
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    if frame.empty:
        return frame
    unit = ["image_key", "metric_key"]
    final = ~frame["status"].isin(RETRY_STATUSES)
    has_final = final.groupby([frame[c] for c in unit]).transform("any")
    frame = frame[final | ~has_final]
    frame = frame.drop_duplicates(subset=unit + ["sub_metric"], keep="last")
    return frame.reset_index(drop=True)


# --- scoring -----------------------------------------------------------------------------------------------
def _batches(items: list[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


def _unavailable_rows(metric: Metric, images: Iterable[ImageRecord], reason: str) -> list[ScoreRow]:
    return [metric.row(image, None, sub_metric="all", status="unavailable", reason=reason) for image in images]


def score_metric(results_dir: str | Path, metric: Metric, images: list[ImageRecord], progress: bool = True) -> dict[str, Any]:
    """Score the images this metric has not scored yet; returns counts for the summary."""
    from tqdm import tqdm

    from harness.metrics.models import ModelUnavailable

    done = scored_image_keys(results_dir, metric.name, metric.key)
    todo = [image for image in images if image.key not in done]
    summary = {"metric": metric.name, "metric_key": metric.key, "settings": metric.settings,
               "images": len(images), "skipped": len(images) - len(todo), "scored": 0, "rows": 0, "status": "ok"}
    if not todo:
        return summary
    load = getattr(metric, "load", None)  # metrics with models load them here, once
    if load is not None:
        try:
            load()
        except ModelUnavailable as error:
            logger.warning("metric %s unavailable: %s", metric.name, error)
            summary.update(status="unavailable", reason=str(error),
                           rows=append_rows(results_dir, _unavailable_rows(metric, todo, str(error))))
            return summary
    with tqdm(total=len(todo), desc=f"score {metric.name}", unit="img", disable=not progress) as bar:
        for batch in _batches(todo, metric.batch_size):
            try:
                rows = list(metric.score(batch))
            except ModelUnavailable as error:
                rows = _unavailable_rows(metric, batch, str(error))
            except Exception as error:  # one bad batch must not lose the others: record and go on
                logger.exception("metric %s failed on a batch", metric.name)
                rows = [metric.row(image, None, status="error", reason=f"{type(error).__name__}: {error}")
                        for image in batch]
            summary["rows"] += append_rows(results_dir, rows)
            summary["scored"] += len(batch)
            bar.update(len(batch))
    return summary


def score_results(results_dir: str | Path, metrics: dict[str, dict[str, Any]], methods: list[str] | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Score ``results_dir`` with every metric in ``metrics`` ({name: settings}); returns one summary per metric."""
    results_dir = Path(results_dir)
    if not (results_dir / "images").is_dir():
        raise FileNotFoundError(
            f"{results_dir} has no images/ folder: it is not a results folder. Generate images first with "
            f"`python -m harness run` (or point output_dir at the folder that holds images/<method>/<set>/).")
    images = list(iter_images(results_dir, methods))
    summaries = []
    for name, settings in metrics.items():
        settings = dict(settings or {})
        settings.setdefault("name", name)
        metric = build_metric(settings)
        print(f"[score] {metric.name} key={metric.key} settings={json.dumps(metric.settings, sort_keys=True, default=str)}")
        summary = score_metric(results_dir, metric, images, progress=progress)
        print(f"[score] {metric.name}: {summary['scored']} scored, {summary['skipped']} already scored, "
              f"{summary['rows']} rows written, status {summary['status']}")
        summaries.append(summary)
    return summaries


# --- entry points ------------------------------------------------------------------------------------------
def score_from_config(cfg: Any) -> int:
    """What the Hydra ``score`` app calls: ``cfg.output_dir``, ``cfg.metrics`` ({name: settings}), ``cfg.methods``."""
    from omegaconf import OmegaConf

    metrics = OmegaConf.to_container(cfg.metrics, resolve=True) if cfg.get("metrics") is not None else {}
    if isinstance(metrics, list):  # `metrics: [clip_text, ...]` names only: read each conf/metric/<name>.yaml
        metrics = {name: metric_config(name) for name in metrics}
    if not metrics:
        raise ValueError("No metric selected: choose some with `metric=[clip_text,arcface]` "
                         "(configs in conf/metric/<name>.yaml).")
    methods = cfg.get("methods")
    methods = list(methods) if methods else None
    # an unavailable metric is recorded in its rows, not a failed command: the other metrics ran
    score_results(cfg.output_dir, metrics, methods=methods)
    return 0


def metric_config(name: str, conf_dir: str | Path = CONF_DIR) -> dict[str, Any]:
    """Settings of ``conf/metric/<name>.yaml`` as a plain dict."""
    from omegaconf import OmegaConf

    path = Path(conf_dir) / "metric" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise FileNotFoundError(f"No metric config {path}. Known metrics: {known}. Add conf/metric/{name}.yaml "
                                f"with `name: {name}` and its settings.")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> int:
    """Score from the command line.

    ``python -m harness score output_dir=results/toy metric=[clip_text,arcface]`` is the Hydra app
    (``harness.cli.score_app``, config ``conf/config.yaml``). When the first argument is an existing folder,
    a small argparse interface is used instead: ``RESULTS_DIR --metric NAME [--set NAME.KEY=VALUE]``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not Path(argv[0]).is_dir():
        try:
            from harness import cli
        except ModuleNotFoundError:
            cli = None
        if cli is not None and hasattr(cli, "score_app"):
            sys.argv = ["harness score", *argv]  # Hydra parses sys.argv itself
            cli.score_app()
            return 0
    parser = argparse.ArgumentParser(prog="python -m harness score", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", help="results folder (holds images/<method>/<set>/)")
    parser.add_argument("--metric", action="append", required=True, help="metric name (conf/metric/<name>.yaml); repeat")
    parser.add_argument("--set", action="append", default=[], metavar="METRIC.KEY=VALUE",
                        help="override a metric setting, e.g. clip_text.scale=2.5")
    parser.add_argument("--methods", nargs="*", default=None, help="only these method labels or names")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    metrics = {name: metric_config(name) for name in args.metric}
    for override in args.set:
        dotted, _, value = override.partition("=")
        name, _, key = dotted.partition(".")
        if name not in metrics or not key:
            parser.error(f"--set {override!r}: expected METRIC.KEY=VALUE with METRIC one of {list(metrics)}")
        metrics[name][key] = _parse_value(value)
    score_results(args.results_dir, metrics, methods=args.methods, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
