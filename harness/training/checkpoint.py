"""Resumable training checkpoints: LoRA weights, optimizer state, step and RNG state in one file.

One file per run folder, replaced atomically, so a run killed at any moment resumes from its last
complete checkpoint. A fingerprint of the settings that shape the weights (base model, data, rank,
targets, seed, ...) guards against resuming a different run; ``steps`` is left out so a finished run can
be extended.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from harness.io import atomic_write
from harness.training import TrainingInputError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    path = Path(folder) / CHECKPOINT_NAME
    atomic_write(path, lambda tmp: torch.save(state, tmp))
    return path


def load_checkpoint(folder: str | Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``folder`` if there is one; an error if it belongs to another run."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        raise TrainingInputError(
            f"The checkpoint {str(path)!r} was written by a run with different settings or data "
            f"(fingerprint {state.get('fingerprint')!r}, this run {fingerprint!r}). Fix: use another "
            "--checkpoint-dir, delete that checkpoint, or turn resuming off (--no-resume / resume=False)."
        )
    return state
