"""Image-to-reference similarity (the prompt-aware paper's ICLIP / IDINO), per concept region.

For each LoRA of the set: cut its region out of the generated image (region extractor by category, see
``harness.metrics.regions``), embed it with CLIP (open_clip image tower) and DINOv2 (CLS token), compare with
the embeddings of the concept's reference images: max over references (the paper) or mean. Values are
``scale * cosine`` (100 = the paper's tables). Rows per image:

- ``clip:<lora id>`` / ``dino:<lora id>``: status ok, or ``fallback_full_image`` (value kept) when the region
  extractor used the whole image; ``unavailable`` when the LoRA has no reference images;
- ``clip:category=<category>`` / ``dino:...``: the same value keyed by category (one LoRA per category per set),
  so tables can average per category across sets;
- ``clip:mean`` / ``dino:mean``: the mean over the set's LoRAs.

``crop_references: true`` cuts the same region out of the references (they are whole scenes in the toy world;
real reference sets are usually already the concept alone).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np
from PIL import Image

from harness.devices import resolve_device
from harness.metrics.arcface import reference_files
from harness.metrics.backbones import clip_image_embeddings, dinov2_embeddings, load_dinov2, load_open_clip
from harness.metrics.base import METRICS, Metric, ScoreRow
from harness.metrics.regions import REGIONS, Region
from harness.store import ImageRecord

DEFAULT_REGIONS = {"character": "face", "clothing": "mask", "object": "mask", "background": "background",
                   "style": "full"}


@METRICS.register("image_ref")
class ImageRef(Metric):
    version = "1"

    def __init__(self, clip: dict[str, Any] | None = None, dinov2: str | None = None, reference: str = "max",
                 regions: dict[str, str] | None = None, region_settings: dict[str, Any] | None = None,
                 crop_references: bool = False, scale: float = 100.0, device: str = "cpu",
                 batch_size: int = 16) -> None:
        if reference not in ("max", "mean"):
            raise ValueError(f"image_ref: reference={reference!r}; use 'max' (the paper) or 'mean' over references")
        regions = {**DEFAULT_REGIONS, **(regions or {})}
        for category, region in regions.items():
            REGIONS.get(region)  # unknown extractor names fail now, with the known names
        if clip is None and dinov2 is None:
            raise ValueError("image_ref: set `clip` (open_clip model/pretrained) and/or `dinov2` (a local folder)")
        super().__init__(clip=dict(clip) if clip else None, dinov2=dinov2, reference=reference, regions=regions,
                         region_settings=dict(region_settings or {}), crop_references=bool(crop_references),
                         scale=float(scale))
        self.device, self.batch_size = device, int(batch_size)
        self._extractors = {category: REGIONS.get(name)(**self.settings["region_settings"])
                            for category, name in regions.items()}
        self._clip: tuple[Any, Any, Any] | None = None
        self._dino: tuple[Any, Any] | None = None
        self._references: dict[str, dict[str, np.ndarray] | None] = {}

    def load(self) -> None:
        self.device = resolve_device(self.device)
        clip = self.settings["clip"]
        if clip:
            self._clip = load_open_clip(clip["model"], clip["pretrained"], clip.get("model_config"),
                                        str(clip.get("quick_gelu", "auto")), self.device)
        if self.settings["dinov2"]:
            self._dino = load_dinov2(self.settings["dinov2"], self.device)

    def embed(self, images: list[Image.Image]) -> dict[str, np.ndarray]:
        """{"clip": (N, D), "dino": (N, D')} normed embeddings of PIL images."""
        if self._clip is None and self._dino is None:
            self.load()
        embeddings = {}
        if self._clip is not None:
            model, preprocess, _ = self._clip
            embeddings["clip"] = clip_image_embeddings(model, preprocess, images, self.device).cpu().numpy()
        if self._dino is not None:
            embeddings["dino"] = dinov2_embeddings(*self._dino, images, self.device).cpu().numpy()
        return embeddings

    def regions(self, image: Image.Image, record: ImageRecord | None, lora: dict[str, Any]) -> list[Region]:
        extractor = self._extractors.get(lora["category"]) or REGIONS.get("full")()
        return extractor.extract(image, record, lora)

    def reference_embeddings(self, lora: dict[str, Any]) -> dict[str, np.ndarray] | None:
        cache_key = f"{lora['id']}:{lora.get('references')}"
        if cache_key not in self._references:
            images = [Image.open(path).convert("RGB") for path in reference_files(lora)]
            if self.settings["crop_references"]:
                images = [self.regions(image, None, lora)[0].image for image in images]
            self._references[cache_key] = self.embed(images) if images else None
        return self._references[cache_key]

    def similarity(self, region_embeddings: np.ndarray, reference_embeddings: np.ndarray) -> float:
        """Best region; per region the max (or mean) cosine over the references."""
        cosines = region_embeddings @ reference_embeddings.T  # (regions, references)
        per_region = cosines.max(axis=1) if self.settings["reference"] == "max" else cosines.mean(axis=1)
        return float(per_region.max())

    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        for image in images:
            yield from self.score_image(image, Image.open(image.path).convert("RGB"))

    def score_image(self, record: ImageRecord, image: Image.Image) -> Iterator[ScoreRow]:
        scale = self.settings["scale"]
        values: dict[str, list[float]] = {}
        for lora in record.loras:
            references = self.reference_embeddings(lora)
            if references is None:
                for backbone in ("clip", "dino"):
                    if (backbone == "clip" and self.settings["clip"]) or (backbone == "dino" and self.settings["dinov2"]):
                        yield self.row(record, None, f"{backbone}:{lora['id']}", "unavailable",
                                       f"no reference images for {lora['id']} in {lora.get('references')!r}: put "
                                       f"images of the concept in the testbed's reference_dir/{lora['id']}/")
                continue
            regions = self.regions(image, record, lora)
            status, reason = regions[0].status, regions[0].reason
            region_embeddings = self.embed([region.image for region in regions])
            for backbone, embedded in region_embeddings.items():
                value = scale * self.similarity(embedded, references[backbone])
                values.setdefault(backbone, []).append(value)
                yield self.row(record, value, f"{backbone}:{lora['id']}", status, reason)
                yield self.row(record, value, f"{backbone}:category={lora['category']}", status, reason)
        for backbone, backbone_values in values.items():
            yield self.row(record, float(np.mean(backbone_values)), f"{backbone}:mean")
