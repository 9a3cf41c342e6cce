"""``benchmarks/toy_unet_step.py``: times the toy base model's training step in the modes asked for."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import toy_unet_step  # noqa: E402
import torch  # noqa: E402


def test_prints_one_timing_per_mode(capsys):
    threads = torch.get_num_threads()  # the script sets its own; give the worker back its setting
    try:
        _check_modes(capsys)
    finally:
        torch.set_num_threads(threads)


def _check_modes(capsys) -> None:
    assert toy_unet_step.main(["--batch", "2", "--steps", "1"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["fp32"]
    assert toy_unet_step.main(["--batch", "2", "--steps", "1", "--bf16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["fp32", "bf16"]
    assert all(re.search(r"\d+\.\d{3} s/step median \(batch 2, 1 thread\(s\)", line) for line in lines)
