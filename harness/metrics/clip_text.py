"""CLIP text alignment ("CLIPScore"), with every variant in the literature as an explicit setting.

| variant                           | model    | text     | scale | clamp             |
| Zhong / CMLoRA / LoRAtorio tables | ViT-B-16 | triggers | 100   | per image         |
| prompt-aware paper (TCLIP)        | ViT-B-32 | prompt   | 100   | none              |
| torchmetrics CLIPScore            | any      | any      | 100   | on the mean       |
| Hessel et al. / CustomConcept101  | ViT-B-32 | prompt   | 2.5   | per image         |

Images go in as decoded uint8 PNGs (torchmetrics rescales float input a second time). OpenAI weights need
QuickGELU: use the ``-quickgelu`` model names (``ViT-B-32-quickgelu``); ``quick_gelu: auto`` also turns it on
for weights that look like OpenAI's.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from harness.devices import resolve_device
from harness.metrics.backbones import clip_image_embeddings, clip_text_embeddings, load_open_clip
from harness.metrics.base import METRICS, Metric, ScoreRow
from harness.store import ImageRecord

TEXT_SOURCES = ("prompt", "triggers")
MODES = ("per_image", "torchmetrics")


@METRICS.register("clip_text")
class ClipText(Metric):
    version = "1"

    def __init__(self, model: str = "ViT-B-32-quickgelu", pretrained: str | None = None,
                 model_config: str | None = None, quick_gelu: str = "auto", text: str = "prompt",
                 scale: float = 100.0, clamp: bool = True, mode: str = "per_image", device: str = "cpu",
                 batch_size: int = 16) -> None:
        if text not in TEXT_SOURCES:
            raise ValueError(f"clip_text: text={text!r}; use 'prompt' (full prompt) or 'triggers' (trigger phrases only)")
        if mode not in MODES:
            raise ValueError(f"clip_text: mode={mode!r}; use 'per_image' or 'torchmetrics' (clamp applied to the mean)")
        # batch_size and device do not change the number: keep them out of the settings key
        super().__init__(model=model, pretrained=pretrained, model_config=model_config, quick_gelu=str(quick_gelu),
                         text=text, scale=float(scale), clamp=bool(clamp), mode=mode)
        self.device, self.batch_size = device, int(batch_size)
        self._loaded: tuple[Any, Any, Any] | None = None

    def load(self) -> None:
        self.device = resolve_device(self.device)
        s = self.settings
        self._loaded = load_open_clip(s["model"], s["pretrained"], s["model_config"], s["quick_gelu"], self.device)

    def text_of(self, image: ImageRecord) -> str:
        return image.prompt if self.settings["text"] == "prompt" else image.trigger_text

    def cosines(self, images: Sequence[Any], texts: Sequence[str]) -> list[float]:
        """Cosine between each PIL image and its text."""
        if self._loaded is None:
            self.load()
        model, preprocess, tokenizer = self._loaded
        image_emb = clip_image_embeddings(model, preprocess, list(images), self.device)
        text_emb = clip_text_embeddings(model, tokenizer, list(texts), self.device)
        return (image_emb * text_emb).sum(-1).tolist()

    def value(self, cosine: float) -> float:
        """Scaled per-image value; in torchmetrics mode the clamp belongs to the mean (see ``aggregate``)."""
        scaled = self.settings["scale"] * cosine
        if self.settings["clamp"] and self.settings["mode"] == "per_image":
            scaled = max(scaled, 0.0)
        return scaled

    def score(self, images: Iterable[ImageRecord]) -> Iterator[ScoreRow]:
        from PIL import Image

        images = list(images)
        pixels = [Image.open(image.path).convert("RGB") for image in images]
        for image, cosine in zip(images, self.cosines(pixels, [self.text_of(image) for image in images])):
            yield self.row(image, self.value(cosine), sub_metric="all")


def aggregate(values: Sequence[float], settings: dict[str, Any]) -> float:
    """Mean of per-image clip_text values as its settings define it (torchmetrics clamps the mean at 0)."""
    import numpy as np

    mean = float(np.mean(values)) if len(values) else float("nan")
    if settings.get("mode") == "torchmetrics" and settings.get("clamp", True):
        mean = max(mean, 0.0)
    return mean
