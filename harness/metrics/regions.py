"""Region extractors: cut the part of an image that shows one concept, before comparing it with references.

``REGIONS.get(name)(**settings).extract(image, record, lora) -> list[Region]``. Every extractor that cannot
find its region returns the whole image with status ``fallback_full_image`` and the reason, so a table can
count how often the comparison was not about the concept's region at all (the prompt-aware paper silently
used the whole image for an empty mask).

- ``full``: the whole image (styles).
- ``box``: known boxes ``[x0, y0, x1, y1]``: the image record's ``boxes`` (by LoRA id or category), else the
  ``boxes`` setting (by category). The toy world knows where it draws each slot.
- ``face``: insightface detection boxes, square crops (characters).
- ``mask``: CLIPSeg prompted with the concept's name (or triggers), threshold 0.5, crop = tight box of the
  mask with everything outside the mask filled grey (clothing, objects).
- ``background``: the whole image with the foreground blurred; the foreground is the known boxes, else the
  CLIPSeg mask of ``foreground_prompt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from harness.store import ImageRecord
from harness.metrics.backbones import load_clipseg, load_face_analysis
from harness.registry import Registry

FILL = (127, 127, 127)  # what replaces the non-mask part of a mask crop


@dataclass
class Region:
    image: Image.Image
    status: str = "ok"  # ok | fallback_full_image
    reason: str = ""
    box: list[int] | None = field(default=None)


class RegionExtractor:
    """Base class: ``settings`` are the metric's ``region_settings`` (each extractor reads what it needs)."""

    registered_name = "region"

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def extract(self, image: Image.Image, record: ImageRecord | None, lora: dict[str, Any]) -> list[Region]:
        raise NotImplementedError

    def fallback(self, image: Image.Image, reason: str) -> list[Region]:
        return [Region(image, "fallback_full_image", f"{self.registered_name}: {reason}; used the full image")]


REGIONS: Registry[RegionExtractor] = Registry("region", "harness.regions")


def square_box(box: list[float], width: int, height: int, margin: float = 0.0) -> list[int]:
    """The square around ``box``'s centre with side = its longer edge (+ margin), shifted to fit the image."""
    x0, y0, x1, y1 = box
    side = min(max(x1 - x0, y1 - y0) * (1 + margin), width, height)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(round(min(max(cx - side / 2, 0), width - side)))
    top = int(round(min(max(cy - side / 2, 0), height - side)))
    return [left, top, left + int(round(side)), top + int(round(side))]


def known_boxes(record: ImageRecord | None, settings: dict[str, Any]) -> dict[str, list[int]]:
    """Boxes by LoRA id or category: the image record's own ``boxes`` over the ``boxes`` setting."""
    boxes = dict(settings.get("boxes") or {})
    if record is not None:
        boxes.update(record.metadata.get("boxes") or {})
    return boxes


@REGIONS.register("full")
class FullImage(RegionExtractor):
    def extract(self, image, record, lora):
        return [Region(image)]


@REGIONS.register("box")
class KnownBox(RegionExtractor):
    def extract(self, image, record, lora):
        boxes = known_boxes(record, self.settings)
        box = boxes.get(lora["id"]) or boxes.get(lora["category"])
        if box is None:
            return self.fallback(image, f"no known box for {lora['id']} ({lora['category']})")
        box = [int(v) for v in box]
        return [Region(image.crop(box), box=box)]


@REGIONS.register("face")
class FaceBoxes(RegionExtractor):
    """Square crops around every face insightface detects (``insightface`` setting: root, pack, ...)."""

    def extract(self, image, record, lora):
        face_settings = dict(self.settings.get("insightface") or {})
        app = load_face_analysis(face_settings["root"], face_settings["pack"],
                                 tuple(face_settings.get("providers", ["CPUExecutionProvider"])),
                                 int(face_settings.get("det_size", 640)))
        faces = app.get(np.asarray(image.convert("RGB"))[:, :, ::-1].copy())  # insightface wants BGR
        if not faces:
            return self.fallback(image, "no face detected")
        regions = []
        for face in faces:
            box = square_box(list(face.bbox), image.width, image.height, margin=0.2)
            regions.append(Region(image.crop(box), box=box))
        return regions


def clipseg_mask(image: Image.Image, prompt: str, path: str, threshold: float = 0.5, device: str = "cpu") -> np.ndarray:
    """Boolean (H, W) mask of ``prompt`` in ``image`` from CLIPSeg (probabilities > threshold)."""
    import torch


    model, processor = load_clipseg(path, device)
    inputs = processor(text=[prompt], images=[image.convert("RGB")], padding=True, return_tensors="pt").to(device)
    with torch.no_grad():
        logits = model(**inputs).logits
    logits = logits.reshape(1, 1, *logits.shape[-2:])  # one prompt: CLIPSeg squeezes the batch away
    probabilities = torch.nn.functional.interpolate(torch.sigmoid(logits), size=(image.height, image.width),
                                                    mode="bilinear", align_corners=False)[0, 0]
    return (probabilities > threshold).cpu().numpy()


def concept_prompt(lora: dict[str, Any], source: str) -> str:
    return ", ".join(lora["trigger"]) if source == "triggers" else lora["name"]


@REGIONS.register("mask")
class TextMask(RegionExtractor):
    """CLIPSeg (``clipseg`` setting: a local folder) prompted with the concept; tight crop, outside greyed."""

    def extract(self, image, record, lora):
        path = self.settings.get("clipseg")
        if not path:
            return self.fallback(image, "no segmenter configured (region_settings.clipseg is null)")
        mask = clipseg_mask(image, concept_prompt(lora, self.settings.get("prompt", "name")), path,
                            float(self.settings.get("threshold", 0.5)))
        if not mask.any():
            return self.fallback(image, f"empty mask for {lora['id']} at threshold {self.settings.get('threshold', 0.5)}")
        ys, xs = np.nonzero(mask)
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[~mask] = FILL
        return [Region(Image.fromarray(pixels).crop(box), box=box)]


@REGIONS.register("background")
class BlurredForeground(RegionExtractor):
    """The whole image with the foreground (known boxes, else the CLIPSeg mask) blurred away."""

    def extract(self, image, record, lora):
        radius = float(self.settings.get("blur_radius", 8))
        foreground = np.zeros((image.height, image.width), bool)
        boxes = {k: v for k, v in known_boxes(record, self.settings).items()
                 if k not in (lora["id"], lora["category"], "background", "style")}
        for x0, y0, x1, y1 in boxes.values():
            foreground[int(y0):int(y1), int(x0):int(x1)] = True
        if not foreground.any() and self.settings.get("clipseg"):
            foreground = clipseg_mask(image, self.settings.get("foreground_prompt", "person"),
                                      self.settings["clipseg"], float(self.settings.get("threshold", 0.5)))
        if not foreground.any():
            return self.fallback(image, "no foreground found to blur")
        blurred = np.asarray(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)))
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[foreground] = blurred[foreground]
        return [Region(Image.fromarray(pixels))]
