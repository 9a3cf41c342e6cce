"""The trained LoRA as a standard safetensors file that ``pipe.load_lora_weights`` reads.

Keys are peft-style with one prefix per model part (``unet.<module>.lora_A.weight``,
``text_encoder.<module>.lora_B.weight``), the layout diffusers' own ``save_lora_weights`` writes. The
LoRA config (rank, alpha, targets) goes into the ``lora_adapter_metadata`` entry diffusers reads back, so
an alpha other than the rank loads with the right scale; the training record (trigger, base model, steps,
...) goes into plain string entries next to it.

``format="kohya"`` writes the same weights under kohya-ss / A1111 / ComfyUI names instead:
``lora_unet_<module with _ for .>.lora_down.weight`` (A), ``.lora_up.weight`` (B) and ``.alpha`` per module,
``lora_te_`` for the text encoder, with kohya's ``ss_network_*`` metadata entries. diffusers reads that format
too (``load_lora_weights`` converts it), so ``harness.lora`` loads both.
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


KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
_KOHYA_WEIGHTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


def kohya_state_dict(part: str, state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """One part's peft state dict (``<module>.lora_A.weight``) under kohya names, with an ``alpha`` per module."""
    tensors = {}
    for key, value in state.items():
        module, _, weight = key.rpartition(".lora_")
        if part == "text_encoder" and not module.startswith("text_model."):  # kohya names CLIPTextModel's modules
            module = "text_model." + module
        name = KOHYA_PREFIXES[part] + module.replace(".", "_")
        tensors[f"{name}.{_KOHYA_WEIGHTS['lora_' + weight]}"] = value
        tensors[f"{name}.alpha"] = torch.tensor(float(alpha))
    return tensors


def save_lora_file(
    path: str | Path,
    parts: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]],
    metadata: dict[str, Any],
    format: str = "diffusers",
) -> Path:
    """Write ``{part: (peft state dict, adapter config)}`` and ``metadata`` to ``path`` atomically, in the
    ``diffusers`` (default) or ``kohya`` layout."""
    from safetensors.torch import save_file

    if format not in ("diffusers", "kohya"):
        raise ValueError(f"unknown LoRA file format {format!r}; use diffusers or kohya")
    tensors: dict[str, torch.Tensor] = {}
    packed_configs: dict[str, Any] = {}
    for part, (state, config) in parts.items():
        state = {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}
        if format == "kohya":
            tensors.update(kohya_state_dict(part, state, config["lora_alpha"]))
        else:
            tensors.update({f"{part}.{key}": value for key, value in state.items()})
        packed_configs.update({f"{part}.{key}": value for key, value in config.items()})
    header = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    header["format"] = "pt"
    if format == "kohya":  # what A1111 / ComfyUI show about a LoRA
        config = next(iter(parts.values()))[1]
        header.update({"ss_network_module": "networks.lora", "ss_network_dim": str(config["r"]),
                       "ss_network_alpha": str(config["lora_alpha"])})
    else:
        header[LORA_ADAPTER_METADATA_KEY] = json.dumps(packed_configs, sort_keys=True)
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    return path


def read_lora_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a LoRA file (all values are strings, JSON for structured ones)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})
