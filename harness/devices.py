"""Devices and dtypes named in configs (``device: auto``, ``dtype: float16``), resolved in one place, and the
peak memory of a device (what the benchmarks print next to speed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Linux: the process's resident set (VmRSS) and its peak (VmHWM); writing 5 to clear_refs resets that peak
PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")

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


def reset_peak_memory(device: str) -> None:
    """Start new peaks: the process's resident set and, on a CUDA device, the memory allocated on it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        pass  # no /proc (not Linux) or not writable: the resident peak stays the process's peak since its start


def resident_memory_mib(peak: bool = False) -> float | None:
    """The process's resident set in MiB, or its peak since ``reset_peak_memory``; None where there is no /proc.

    Pages of a memory-mapped file count once read: a float32 model loaded from safetensors counts as it is used.
    """
    field = "VmHWM:" if peak else "VmRSS:"
    try:
        lines = PROC_STATUS.read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith(field)), None)


def peak_memory_mib(device: str) -> float | None:
    """Peak since ``reset_peak_memory`` in MiB: memory allocated on a CUDA device (``max_memory_allocated``),
    else the process's resident set (None where there is no /proc)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_memory_mib(peak=True)
