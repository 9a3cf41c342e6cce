"""Shared by the LoRA-training tests: images a LoRA can fit, the examples made of them, and a tiny base model
trained on one torch thread (on a shared 2-core machine two threads per step are several times slower)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image

import harness  # noqa: F401  (before diffusers)
from harness.tiny import build_tiny_pipeline


def pattern_image(index: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """A coloured square on a plain background, different per index: something a LoRA can fit."""
    rng = np.random.default_rng(index)
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8) + rng.integers(0, 255, 3, dtype=np.uint8)
    array[8:24, 8:24] = rng.integers(0, 255, 3, dtype=np.uint8)
    return Image.fromarray(array)


EXAMPLES = [(pattern_image(index), "zqx toy") for index in range(4)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_pipeline(tmp_path_factory.mktemp("train_lora") / "base")
