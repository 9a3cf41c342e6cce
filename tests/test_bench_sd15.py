"""``benchmarks/sd15_speed.py`` at its --tiny size on CPU, and the Merge-vs-diffusers and load tables of
``harness bench``."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import sd15_speed  # noqa: E402

from harness import bench  # noqa: E402


def test_sd15_speed_tiny_prints_a_line_per_method_and_the_ratio(tmp_path, capsys):
    methods = ["merge", "composite", "merge_svd", "diffusers"]
    assert sd15_speed.main(["--tiny", "--device", "cpu", "--repeats", "1", "--steps", "2", "--folder",
                            str(tmp_path), "--methods", *methods, "--batch-size", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "64x64, 2 steps, float32, device cpu" in lines[0]
    assert "LoRA layers applied: UNet 800, text encoder 60" in lines[0]  # every attention and ff layer, x5
    assert re.fullmatch(r"load peak \(float32, .*\), added: host resident \d+\.\d\d GiB, GPU n/a; "
                        r"weights 0\.0\d GiB", lines[1])
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:-2]}
    assert list(rows) == methods
    for name, (seconds, memory, *batched) in rows.items():  # batch 1 and batch 3: s/image, resident GiB
        assert float(seconds) > 0 and float(memory) > 0
        assert batched == ["n/a", "n/a"] if name == "diffusers" else all(float(value) > 0 for value in batched)
    assert re.fullmatch(r"composite\(K=5\) / merge: \d+\.\d\d at batch 1, \d+\.\d\d at batch 3 "
                        r"\(goal <= 2\.5 batched\)", lines[-2])
    assert re.fullmatch(r"merge / diffusers: \d+\.\d{3} \(goal <= 1\.05\)", lines[-1])
    assert (tmp_path / "sd15-tiny" / "model_index.json").exists()  # kept: the next run loads it


def test_bench_merge_vs_diffusers_same_image(tmp_path, capsys):
    assert bench.main(["--sections", "merge_vs_diffusers", "--steps", "2", "--repeats", "1",
                       "--folder", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    harness_s, diffusers_s, ratio, difference = lines[-1].split()
    assert float(harness_s) > 0 and float(diffusers_s) > 0 and float(ratio) > 0
    assert int(difference) <= 1  # the bare pipe call does the same work: the same image


def test_bench_load_section_prints_float32_and_the_dtype(tiny_testbed_dir, capsys):
    assert bench.main(["--sections", "load", "--dtype", "bfloat16", "--folder", str(tiny_testbed_dir)]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[-2:]}
    assert list(rows) == ["float32", "bfloat16"]
    (float32_resident, float32_gpu, float32_weights), (resident, gpu, weights) = rows.values()
    assert float(float32_resident) > 0 and float(resident) > 0 and float32_gpu == gpu == "n/a"
    assert float(weights) == pytest.approx(float(float32_weights) / 2, rel=0.01)  # every weight in bfloat16


def test_bench_batch_size_section_prints_each_method(capsys):
    """On the tiny testbed (as a named testbed whose assets the config builds): a row per method, with a ratio and
    the latent difference between batch 1 and the batch."""
    assert bench.main(["--sections", "batch_size", "--batch-testbed", "tiny", "--batch-size", "2", "--batch-images",
                       "4", "--batch-methods", "merge", "composite"]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[-2:]}
    assert list(rows) == ["merge", "composite"]
    for single, batched, ratio, difference, peak in rows.values():
        assert float(single) > 0 and float(batched) > 0 and float(ratio) > 0 and float(peak) > 0
        assert float(difference) < 1e-2  # the tiny model's latents are ~30: float rounding only
