"""Score an existing results folder with metric plugins: batched, resumable, append-only JSON lines.

For each metric (``{name: settings}`` as composed from ``conf/metric/<name>.yaml``) the driver builds
``METRICS.get(name)(**settings)``, skips images already scored with the same metric key (a hash of the
metric's name, version and settings), scores the rest in batches of ``metric.batch_size`` and appends the
rows to ``scores/<metric>/<metric_key>/<method_label>.jsonl`` (flush + fsync per batch, so a killed run
loses at most the batch in flight). A metric whose model is missing yields ``unavailable`` rows naming the
path it looked for; the other metrics still run. Such rows (and ``error`` rows) are retried on the next run.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.metrics.backbones import ModelUnavailable
from harness.metrics.base import METRICS, Metric
from harness.store import ImageRecord, ScoreRow, append_rows, iter_images, mark_scored, scored_images

logger = logging.getLogger(__name__)


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


# --- scoring -----------------------------------------------------------------------------------------------
def _batches(items: list[ImageRecord], size: int) -> Iterator[list[ImageRecord]]:
    for start in range(0, len(items), max(1, size)):
        yield items[start:start + size]


def _unavailable_rows(metric: Metric, images: Iterable[ImageRecord], reason: str) -> list[ScoreRow]:
    return [metric.row(image, None, sub_metric="all", status="unavailable", reason=reason) for image in images]


def score_metric(results_dir: str | Path, metric: Metric, images: list[ImageRecord], progress: bool = True) -> dict[str, Any]:
    """Score the images this metric has not scored yet; returns counts for the summary."""
    from tqdm import tqdm

    done = scored_images(results_dir, metric.name, metric.key)
    todo = [image for image in images if not _already_scored(image, done)]
    summary = {"metric": metric.name, "metric_key": metric.key, "settings": metric.settings,
               "images": len(images), "skipped": len(images) - len(todo), "scored": 0, "rows": 0,
               "statuses": Counter()}
    if not todo:
        return _finish(summary)
    load = getattr(metric, "load", None)  # metrics with models load them here, once
    if load is not None:
        try:
            load()
        except ModelUnavailable as error:
            logger.warning("metric %s unavailable: %s", metric.name, error)
            rows = _unavailable_rows(metric, todo, str(error))
            summary.update(reason=str(error), rows=append_rows(results_dir, rows))
            summary["statuses"].update(row.status for row in rows)
            return _finish(summary)
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
            mark_scored(results_dir, metric.name, metric.key, batch)  # only now are the batch's rows complete
            summary["statuses"].update(row.status for row in rows)
            summary["scored"] += len(batch)
            bar.update(len(batch))
    return _finish(summary)


def _already_scored(image: ImageRecord, done: dict[str, str | None]) -> bool:
    """Scored with this key, and (where both are known) from the same image bytes."""
    if image.key not in done:
        return False
    scored_sha, current_sha = done[image.key], image.metadata.get("sha256")
    return scored_sha is None or current_sha is None or scored_sha == current_sha


def _finish(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's status says what the rows say: ``ok`` only when some rows have a value."""
    statuses: Counter = summary["statuses"]
    if not statuses:
        summary["status"] = "ok (nothing new)"
    elif statuses["ok"] or statuses["fallback_full_image"]:
        summary["status"] = "ok" if len(statuses) == 1 else "partly ok"
    else:
        summary["status"] = statuses.most_common(1)[0][0]
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
        by_status = ", ".join(f"{status} {count}" for status, count in summary["statuses"].most_common())
        print(f"[score] {metric.name}: {summary['scored']} scored, {summary['skipped']} already scored, "
              f"{summary['rows']} rows written ({by_status or 'none'}), status {summary['status']}")
        summaries.append(summary)
    return summaries
