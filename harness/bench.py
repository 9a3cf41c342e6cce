"""``python -m harness bench``: seconds per image per method, batched vs sequential Composite at K=2..5, and the
harness's Merge against a bare diffusers ``StableDiffusionPipeline`` call with the same adapters set.

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
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings
from harness.tiny import build_tiny_testbed

SECTIONS = ("methods", "merge_vs_diffusers", "batching")
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


def _merge_vs_diffusers(pipe: Any, specs: list[LoraSpec], settings: SamplingSettings, repeats: int,
                        scale: float = 0.8) -> tuple[float, float, int]:
    """Median seconds per image of the harness's Merge (``Sampler.generate``) and of a bare diffusers call
    ``pipe(prompt, ...)`` with the same adapters at the same scale (``pipe.set_adapters``, UNet and text
    encoder), same prompt, negative prompt, steps, guidance, size and seed. ``set_adapters`` runs before each
    bare call, outside its timing (the bare call's best case; the harness's own adapter calls are timed). The
    repeats alternate which goes first so that machine noise hits both. Also returns the largest pixel
    difference (0-255) between the two images of the last repeat: the same work gives (nearly) the same image."""
    sampler, method = Sampler(pipe), METHODS.get("merge")()
    prompt = "a picture, " + ", ".join(p for spec in specs for p in spec.trigger)
    context = ImageContext(specs, scale, prompt, settings.steps, sampler.embed_without_loras)
    ids = [spec.id for spec in specs]

    def harness_image(seed: int) -> Image.Image:
        return sampler.generate(method, context, "", settings, seed)[0]

    def diffusers_image(seed: int) -> Image.Image:
        return pipe(prompt, negative_prompt="", num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale, height=settings.height, width=settings.width,
                    generator=torch.Generator("cpu").manual_seed(seed), output_type="pil").images[0]

    def timed(make: Callable[[int], Image.Image], seed: int) -> tuple[float, Image.Image]:
        if make is diffusers_image:
            pipe.set_adapters(ids, [scale] * len(ids))
        started = time.perf_counter()
        image = make(seed)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - started, image

    timed(harness_image, 0), timed(diffusers_image, 0)  # warm-up
    times: dict[str, list[float]] = {"harness": [], "diffusers": []}
    images: dict[str, Image.Image] = {}
    makers = {"harness": harness_image, "diffusers": diffusers_image}
    for repeat in range(repeats):
        for which in (["harness", "diffusers"] if repeat % 2 == 0 else ["diffusers", "harness"]):
            seconds, images[which] = timed(makers[which], repeat)
            times[which].append(seconds)
    difference = int(np.abs(np.asarray(images["harness"], dtype=np.int16)
                            - np.asarray(images["diffusers"], dtype=np.int16)).max())
    return statistics.median(times["harness"]), statistics.median(times["diffusers"]), difference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness bench", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--folder", type=Path, default=None, help="tiny testbed folder (built if missing)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                        help="which tables to print (default: all)")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.gettempdir()) / "harness-bench-tiny"
    build_tiny_testbed(folder)
    pipe = load_pipeline(folder / "base", dtype=args.dtype, device=args.device)
    specs = _specs(folder)
    AdapterCache(pipe).ensure(specs)
    settings = SamplingSettings(args.steps, 7.5, args.size, args.size)
    print(f"device {pipe.device}, dtype {args.dtype}, {args.steps} steps, {args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")
    if "methods" in args.sections:
        print("\nseconds per image, K=3 (character, clothing, style)")
        print(f"{'method':<12} {'s/image':>8}")
        for name in ["base", "merge", "switch", "composite", "w_switch", "w_composite"]:
            print(f"{name:<12} {_time(Sampler(pipe), name, specs[:3], settings, args.repeats):>8.3f}")
    if "merge_vs_diffusers" in args.sections:
        harness_s, diffusers_s, difference = _merge_vs_diffusers(pipe, specs[:3], settings, args.repeats)
        print("\nmerge per image, K=3: the harness (Sampler.generate) vs a bare diffusers pipe(...) call, same "
              "adapters (pipe.set_adapters), steps and seed; goal ratio <= 1.05")
        print(f"{'harness s':>10} {'diffusers s':>12} {'ratio':>6} {'max pixel diff':>15}")
        print(f"{harness_s:>10.3f} {diffusers_s:>12.3f} {harness_s / diffusers_s:>6.3f} {difference:>15}")
    if "batching" in args.sections:
        print("\ncomposite: batched (one UNet call, per-sample adapters) vs sequential (K calls)")
        print(f"{'K':>2} {'batched s':>10} {'sequential s':>13} {'ratio':>6}")
        for k in range(2, 6):
            batched = _time(Sampler(pipe, "batched"), "composite", specs[:k], settings, args.repeats)
            sequential = _time(Sampler(pipe, "sequential"), "composite", specs[:k], settings, args.repeats)
            print(f"{k:>2} {batched:>10.3f} {sequential:>13.3f} {batched / sequential:>6.2f}")
    return 0
