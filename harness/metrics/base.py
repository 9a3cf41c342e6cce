"""The metric plugin contract: a metric turns image records into tidy score rows.

A metric is one class registered by name plus ``conf/metric/<name>.yaml``::

    @METRICS.register("my_metric")
    class MyMetric(Metric):
        version = "1"
        def score(self, images):
            for image in images:
                yield self.row(image, value=..., sub_metric="all")

A value that could not be computed is ``None`` with a ``status`` other than ``ok`` and a ``reason``;
never 0.
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Iterator

from harness.io import stable_hash
from harness.registry import Registry
from harness.store import STATUSES, ImageRecord, ScoreRow


class Metric:
    """Base class: holds settings, computes the settings key, builds rows."""

    registered_name: str = "metric"
    version: str = "1"
    batch_size: int = 16

    def __init__(self, **settings: Any) -> None:
        self.settings = dict(settings)

    @property
    def name(self) -> str:
        return self.registered_name

    @property
    def key(self) -> str:
        """Hash of name, version and settings: rows with another key were made another way."""
        return stable_hash({"metric": self.name, "version": self.version, "settings": self.settings}, 12)

    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        raise NotImplementedError

    def row(
        self,
        image: ImageRecord,
        value: float | None,
        sub_metric: str = "all",
        status: str = "ok",
        reason: str = "",
    ) -> ScoreRow:
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; use one of {STATUSES}")
        if value is not None and not math.isfinite(float(value)):  # never let NaN/inf into a mean
            value, status, reason = None, "error", f"{self.name} computed a non-finite value ({value}); {reason}".rstrip("; ")
        if value is None and status in ("ok", "fallback_full_image"):
            raise ValueError(f"{self.name}: a missing value needs a status other than {status!r} and a reason")
        return ScoreRow(
            image_id=image.image_id,
            image_key=image.key,
            testbed=image.testbed,
            method=image.method,
            method_label=image.method_label,
            method_key=image.method_key,
            set_id=image.set_id,
            n=image.n,
            seed=image.seed,
            metric=self.name,
            sub_metric=sub_metric,
            value=None if value is None else float(value),
            status=status,
            reason=reason,
            metric_key=self.key,
            metric_version=self.version,
            metric_settings=json.dumps(self.settings, sort_keys=True, default=str),
        )


METRICS: Registry[Metric] = Registry("metric", "harness.metrics")
