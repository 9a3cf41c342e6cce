"""``python -m harness bench``: seconds per image per method, and batched vs sequential Composite at K=2..5.

Prints figures; it asserts nothing (speed targets are checked by reading these numbers, not by tests).
Runs on the tiny random pipeline (CPU-sized; ``--folder`` keeps it between runs); ``--device cuda --dtype
float16`` times it on a GPU.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings
from harness.tiny import build_tiny_testbed

CATEGORY_ORDER = ["character", "clothing", "style", "background", "object"]


def _specs(folder: Path) -> list[LoraSpec]:
    import json

    manifest = json.loads((folder / "lora_info.json").read_text())
    firsts = [manifest[category][0] for category in CATEGORY_ORDER]
    return [LoraSpec(e["id"], e["name"], c, tuple(e["trigger"]), folder / "lora" / f"{e['id']}.safetensors")
            for c, e in zip(CATEGORY_ORDER, firsts)]


def _time(sampler: Sampler, method_name: str, specs: list[LoraSpec], settings: SamplingSettings, repeats: int) -> float:
    method = METHODS.get(method_name)()
    prompt = "a picture, " + ", ".join(p for spec in specs for p in spec.trigger)
    context = ImageContext(specs, 0.8, prompt, settings.steps, sampler.embed_without_loras)
    sampler.generate(method, context, "", settings, 0)  # warm-up
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        sampler.generate(method, context, "", settings, repeat)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--folder", type=Path, default=None, help="tiny testbed folder (built if missing)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.gettempdir()) / "harness-bench-tiny"
    build_tiny_testbed(folder)
    pipe = load_pipeline(folder / "base", dtype=args.dtype, device=args.device)
    specs = _specs(folder)
    AdapterCache(pipe).ensure(specs)
    settings = SamplingSettings(args.steps, 7.5, args.size, args.size)
    print(f"device {pipe.device}, dtype {args.dtype}, {args.steps} steps, {args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print("\nseconds per image, K=3 (character, clothing, style)")
    print(f"{'method':<12} {'s/image':>8}")
    for name in ["base", "merge", "switch", "composite", "w_switch", "w_composite"]:
        print(f"{name:<12} {_time(Sampler(pipe), name, specs[:3], settings, args.repeats):>8.3f}")
    print("\ncomposite: batched (one UNet call, per-sample adapters) vs sequential (K calls)")
    print(f"{'K':>2} {'batched s':>10} {'sequential s':>13} {'ratio':>6}")
    for k in range(2, 6):
        batched = _time(Sampler(pipe, "batched"), "composite", specs[:k], settings, args.repeats)
        sequential = _time(Sampler(pipe, "sequential"), "composite", specs[:k], settings, args.repeats)
        print(f"{k:>2} {batched:>10.3f} {sequential:>13.3f} {batched / sequential:>6.2f}")
    return 0
