"""The toy world's oracle as a metric: exact per-slot ground truth for every generated image.

Rows per image (value 1.0 = yes, 0.0 = no):
- ``present:<category>``: the set's LoRA of that category shows its concept (one LoRA per category in a set);
- ``all_present``: every LoRA of the set shows its concept;
- ``kept:<category>``: a generic slot phrase in the prompt (``fill``) is drawn as prompted;
- ``all_kept``: every prompted generic slot is drawn as prompted.
Only meaningful on the toy testbed: images of another size, or LoRAs that are not toy concepts, get rows with
status ``unavailable`` and a reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from harness.metrics.base import Metric
from harness.store import ImageRecord, ScoreRow
from harness.toy import world
from harness.toy.oracle import Oracle


class ToyOracleMetric(Metric):
    """Registered as metric ``oracle`` through the ``harness.metrics`` entry-point group (pyproject.toml), the
    way a third-party metric plugs in; the toy testbed names it as its ``ground_truth``."""

    version = "1"
    batch_size = 64

    def __init__(self, oracle_dir: str = "testbed/toy/oracle", batch_size: int = 64) -> None:
        super().__init__(oracle_dir=str(oracle_dir))  # batch size does not change the numbers
        self.batch_size = int(batch_size)
        self._oracle: Any = None

    def oracle(self) -> Any:
        if self._oracle is None:
            self._oracle = Oracle.load(Path(self.settings["oracle_dir"]))
        return self._oracle

    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        images = list(images)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            arrays = [np.asarray(Image.open(image.path).convert("RGB")) for image in chunk]
            usable = [i for i, array in enumerate(arrays) if array.shape == (world.SIZE, world.SIZE, 3)]
            predictions = dict(zip(usable, self.oracle().predict([arrays[i] for i in usable]))) if usable else {}
            for index, image in enumerate(chunk):
                if index not in predictions:
                    reason = (f"image is {arrays[index].shape[1]}x{arrays[index].shape[0]}; the toy oracle reads "
                              f"{world.SIZE}x{world.SIZE} toy-world images only")
                    yield self.row(image, None, "all_present", status="unavailable", reason=reason)
                    continue
                yield from self._rows(image, predictions[index])

    def _rows(self, image: ImageRecord, slots: dict[str, Any]) -> Iterator[ScoreRow]:
        present = []
        for lora in image.loras:
            category, lora_id = lora.get("category"), lora.get("id")
            concept = world.CONCEPTS_BY_ID.get(lora_id)
            if concept is None or concept.category != category:
                yield self.row(image, None, f"present:{category}", status="unavailable",
                               reason=f"LoRA {lora_id!r} ({category}) is not a toy-world concept")
                present.append(None)
                continue
            hit = slots[category].label == lora_id
            present.append(hit)
            yield self.row(image, float(hit), f"present:{category}")
        if image.loras:
            if None in present:
                yield self.row(image, None, "all_present", status="unavailable",
                               reason="some LoRAs of the set are not toy-world concepts")
            else:
                yield self.row(image, float(all(present)), "all_present")
        lora_categories = {lora.get("category") for lora in image.loras}
        prompted = {category: label for category, label in world.parse_prompt(image.prompt).items()
                    if category not in lora_categories}
        for category, label in prompted.items():
            yield self.row(image, float(slots[category].label == label), f"kept:{category}")
        if prompted:
            yield self.row(image, float(all(slots[c].label == label for c, label in prompted.items())), "all_kept")
