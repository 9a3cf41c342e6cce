"""Helpers for the engine tests: testbed configs and runners over the session's tiny testbed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.methods import METHODS
from harness.runner import Runner
from harness.testbeds import Testbed, load_testbed


def tiny_config(folder: Path, **overrides: Any) -> dict[str, Any]:
    config = {
        "name": "tiny", "manifest": str(folder / "lora_info.json"), "lora_dir": str(folder / "lora"),
        "categories": ["character", "clothing", "style", "background", "object"], "always": ["character"],
        "n": [2, 3], "prompt": "a picture", "negative_prompt": "blurry",
        "model": {"base": str(folder / "base"), "scheduler": "dpmsolver++", "dtype": "float32"},
        "sampling": {"steps": 6, "guidance_scale": 7.5, "height": 32, "width": 32, "lora_scale": 0.8},
        "seeds": [0],
    }
    config.update(overrides)
    return config


def tiny_testbed(folder: Path, **overrides: Any) -> Testbed:
    return load_testbed(tiny_config(folder, **overrides))


def make_runner(testbed: Testbed, output: Path, method: str = "merge", **settings: Any) -> Runner:
    return Runner(testbed, METHODS.get(method)(**settings), method, output, device="cpu")
