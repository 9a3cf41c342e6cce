"""The trained LoRA as a standard safetensors file that ``pipe.load_lora_weights`` reads.

Keys are peft-style with one prefix per model part (``unet.<module>.lora_A.weight``,
``text_encoder.<module>.lora_B.weight``), the layout diffusers' own ``save_lora_weights`` writes. The
LoRA config (rank, alpha, targets) goes into the ``lora_adapter_metadata`` entry diffusers reads back, so
an alpha other than the rank loads with the right scale; the training record (trigger, base model, steps,
...) goes into plain string entries next to it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_write

# diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY (repeated here so reading needs no diffusers import)
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"


def adapter_config(rank: int, alpha: float, target_modules: list[str]) -> dict[str, Any]:
    """The LoraConfig fields diffusers rebuilds the adapter from when it loads the file."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(target_modules), "lora_dropout": 0.0,
            "bias": "none"}


def save_lora_file(
    path: str | Path,
    parts: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]],
    metadata: dict[str, Any],
) -> Path:
    """Write ``{part: (peft state dict, adapter config)}`` and ``metadata`` to ``path`` atomically."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    packed_configs: dict[str, Any] = {}
    for part, (state, config) in parts.items():
        tensors.update({f"{part}.{key}": value.detach().to("cpu", torch.float32).contiguous()
                        for key, value in state.items()})
        packed_configs.update({f"{part}.{key}": value for key, value in config.items()})
    header = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    header.update({"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed_configs, sort_keys=True)})
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a LoRA file (all values are strings, JSON for structured ones)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
