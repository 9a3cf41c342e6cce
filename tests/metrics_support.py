"""Helpers for the metric tests: fake results folders and tiny random metric models (built in seconds)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import harness  # noqa: F401
from harness.store import image_filename, new_set_metadata, set_folder, write_set_metadata

CHARACTER_A = {"id": "character_1", "name": "A", "category": "character", "trigger": ["zorblat"], "path": "x",
               "sha256": "0", "scale": 0.8, "references": None}
OBJECT_B = {"id": "object_1", "name": "B", "category": "object", "trigger": ["tanghoop"], "path": "x",
            "sha256": "0", "scale": 0.8, "references": None}


def write_results(root: Path, images: dict[tuple[str, str], list[np.ndarray]], loras: dict[str, list[dict]],
                  prompt: str = "a picture, zorblat, tanghoop", extra: dict[str, Any] | None = None) -> Path:
    """A results folder: images[(method_label, set_id)] = [uint8 HxWx3 per seed]; loras[set_id] = lora list."""
    for (label, set_id), arrays in images.items():
        folder = set_folder(root, label, set_id)
        folder.mkdir(parents=True, exist_ok=True)
        records = {}
        for seed, array in enumerate(arrays):
            Image.fromarray(array).save(folder / image_filename(seed))
            records[str(seed)] = {"file": image_filename(seed), "key": f"{label}-{set_id}-{seed}", "prompt": prompt,
                                  "negative_prompt": "", **(extra or {})}
        meta = new_set_metadata("fake", {"name": label, "label": label, "key": f"k-{label}", "settings": {}},
                                {"id": set_id, "n": len(loras[set_id]), "loras": loras[set_id]})
        write_set_metadata(folder, {**meta, "images": records})
    return root


def random_image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def save_random_clip(folder: Path) -> dict[str, str]:
    """A random toy-clip checkpoint (no training) + its config: the clip_text / image_ref settings to use it."""
    import open_clip
    import torch

    from harness.toy.metric_weights import TOY_CLIP_NAME, write_toy_clip_config

    config = write_toy_clip_config(folder)
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, _ = open_clip.create_model_and_transforms(TOY_CLIP_NAME, pretrained=None)
    torch.save({"state_dict": model.state_dict()}, folder / "clip.pt")
    return {"model": TOY_CLIP_NAME, "pretrained": str(folder / "clip.pt"), "model_config": str(config)}
