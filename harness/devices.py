"""Devices and dtypes named in configs (``device: auto``, ``dtype: float16``), resolved in one place."""

from __future__ import annotations

from typing import Any

DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "float16": "float16", "fp16": "float16",
               "bfloat16": "bfloat16", "bf16": "bfloat16"}


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when CUDA is present, else ``cpu``; any other name is returned unchanged."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: Any) -> Any:
    """A torch dtype from its config name (``float16``/``fp16``...) or a torch dtype itself."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)}")
    return getattr(torch, DTYPE_NAMES[dtype])
