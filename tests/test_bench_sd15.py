"""``benchmarks/sd15_speed.py`` at its --tiny size on CPU, and the Merge-vs-diffusers table of ``harness bench``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import sd15_speed  # noqa: E402

from harness import bench  # noqa: E402


def test_sd15_speed_tiny_prints_a_line_per_method_and_the_ratio(tmp_path, capsys):
    methods = ["merge", "composite", "merge_svd", "diffusers"]
    assert sd15_speed.main(["--tiny", "--device", "cpu", "--repeats", "1", "--steps", "2", "--folder",
                            str(tmp_path), "--methods", *methods]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "64x64, 2 steps, float32, device cpu" in lines[0]
    assert "LoRA layers applied: UNet 800, text encoder 60" in lines[0]  # every attention and ff layer, x5
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-2]}
    assert list(rows) == methods
    assert all(float(seconds) > 0 and memory == "n/a" for seconds, memory in rows.values())
    assert re.fullmatch(r"composite\(K=5\) / merge: \d+\.\d\d \(goal <= 2\.5\)", lines[-2])
    assert re.fullmatch(r"merge / diffusers: \d+\.\d{3} \(goal <= 1\.05\)", lines[-1])
    assert (tmp_path / "sd15-tiny" / "model_index.json").exists()  # kept: the next run loads it


def test_bench_merge_vs_diffusers_same_image(tmp_path, capsys):
    assert bench.main(["--sections", "merge_vs_diffusers", "--steps", "2", "--repeats", "1",
                       "--folder", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    harness_s, diffusers_s, ratio, difference = lines[-1].split()
    assert float(harness_s) > 0 and float(diffusers_s) > 0 and float(ratio) > 0
    assert int(difference) <= 1  # the bare pipe call does the same work: the same image
