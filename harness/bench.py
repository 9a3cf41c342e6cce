"""``python -m harness bench``: the memory a pipeline load adds (float32 and the requested dtype), seconds per
image and peak memory per method, batched vs sequential Composite at K=2..5, the harness's Merge against a
bare diffusers ``StableDiffusionPipeline`` call with the same adapters set, and images per second at batch 8 vs
batch 1 per method on the toy testbed (``batch_size``; the tiny one where the toy is not built).

Prints figures; it asserts nothing (speed targets are checked by reading these numbers, not by tests).
Runs on the tiny random pipeline (CPU-sized; ``--folder`` keeps it between runs); ``--device cuda --dtype
float16`` times it on a GPU. Peak memory is the process's resident set on the CPU (Linux) and the memory
allocated on the device on CUDA (``torch.cuda.max_memory_allocated``), model weights included.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from harness.devices import peak_memory_mib, reset_peak_memory, resident_memory_mib, resolve_device
from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings
from harness.tiny import build_tiny_testbed

SECTIONS = ("load", "methods", "merge_vs_diffusers", "batching", "batch_size")
CORE_METHODS = ["base", "merge", "switch", "composite", "w_switch", "w_composite"]
CATEGORY_ORDER = ["character", "clothing", "style", "background", "object"]


def _specs(folder: Path) -> list[LoraSpec]:
    import json

    manifest = json.loads((folder / "lora_info.json").read_text())
    firsts = [manifest[category][0] for category in CATEGORY_ORDER]
    return [LoraSpec(e["id"], e["name"], c, tuple(e["trigger"]), folder / "lora" / f"{e['id']}.safetensors")
            for c, e in zip(CATEGORY_ORDER, firsts)]


@dataclass(frozen=True)
class LoadPeak:
    """What a pipeline load added at its peak, in MiB: the process's resident set and the memory allocated on a
    CUDA device (None where not measured), next to the size of the loaded weights."""

    resident_mib: float | None
    cuda_mib: float | None
    weights_mib: float


def load_measured(base: str | Path, dtype: str, device: str) -> tuple[Any, LoadPeak]:
    """``load_pipeline(base, dtype=dtype, device=device)`` and the memory it added at its peak. Every weight is read
    once inside the measure, as the first image reads it: a float32 load maps its files and reads nothing yet.
    A process's first load also counts the libraries' modules it imports (tens of MiB)."""
    device = resolve_device(device)
    gc.collect()
    resident_before = resident_memory_mib()
    cuda_before = torch.cuda.memory_allocated(device) / 2**20 if device.startswith("cuda") else None
    reset_peak_memory(device)
    pipe = load_pipeline(base, dtype=dtype, device=device)
    tensors = [tensor for model in (pipe.unet, pipe.vae, pipe.text_encoder) for tensor in model.state_dict().values()]
    for tensor in tensors:  # what the first image does
        tensor.sum()
    resident_peak = resident_memory_mib(peak=True)
    resident = None if resident_peak is None or resident_before is None else resident_peak - resident_before
    cuda = None if cuda_before is None else peak_memory_mib(device) - cuda_before
    return pipe, LoadPeak(resident, cuda, sum(tensor.nbytes for tensor in tensors) / 2**20)


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _time(sampler: Sampler, method_name: str, specs: list[LoraSpec], settings: SamplingSettings, repeats: int,
          device: str) -> tuple[float, float | None]:
    """Median seconds per image after one warm-up, and the peak memory (MiB) over all its images."""
    method = METHODS.get(method_name)()
    prompt = "a picture, " + ", ".join(p for spec in specs for p in spec.trigger)
    context = ImageContext(specs, 0.8, prompt, settings.steps, sampler.embed_without_loras)
    reset_peak_memory(device)
    sampler.generate(method, context, "", settings, 0)  # warm-up
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        sampler.generate(method, context, "", settings, repeat)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), peak_memory_mib(device)


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


@dataclass(frozen=True)
class BatchFigures:
    """One method on a testbed's images: seconds per image at batch 1 and at batch B, the largest difference of
    any image's final latents between the two, and the peak memory (MiB) of the batch-B run."""

    single_seconds: float
    batch_seconds: float
    max_latent_difference: float
    batch_peak_mib: float | None


def batch_figures(testbed_name: str, methods: list[str], batch_size: int, images: int,
                  device: str) -> tuple[str, dict[str, BatchFigures]]:
    """Each method's ``images`` first images of the testbed (an even share of every N, one seed), made one at a time
    and then ``batch_size`` at a time through the runner's sampler, after one warm-up batch."""
    from harness.config import load_testbed_config, testbed_config
    from harness.runner import Runner, image_seed, select_sets
    from harness.sampler import ImageJob

    testbed = load_testbed_config(testbed_config(testbed_name))
    sets = select_sets(testbed.sets(), limit_per_n=max(1, images // len(testbed.n)))[:images]
    figures = {}
    for name in methods:
        runner = Runner(testbed, METHODS.get(name)(), name, Path(tempfile.gettempdir()), device=device)
        sampler = runner.sampler()
        runner._adapters.ensure([lora for composition in sets for lora in composition.loras])

        def jobs(chunk: list[Any]) -> list[ImageJob]:
            return [ImageJob(METHODS.get(name)(), ImageContext(
                list(composition.loras), runner.lora_scale, testbed.prompt_for(composition), runner.settings.steps,
                sampler.importance_embedder(runner.method), sampler.lora_deltas), image_seed(0, composition.id))
                for composition in chunk]

        def timed(size: int) -> tuple[float, list[torch.Tensor]]:
            latents, started = [], time.perf_counter()
            for start in range(0, len(sets), size):
                outcomes = sampler.generate_batch(jobs(sets[start : start + size]), testbed.negative_prompt,
                                                  runner.settings)
                latents += [outcome.latents for outcome in outcomes]
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return (time.perf_counter() - started) / len(sets), latents

        sampler.generate_batch(jobs(sets[:batch_size]), testbed.negative_prompt, runner.settings)  # warm-up
        single, alone = timed(1)
        reset_peak_memory(device)
        batched, together = timed(batch_size)
        difference = max(float((a - b).abs().max()) for a, b in zip(alone, together))
        figures[name] = BatchFigures(single, batched, difference, peak_memory_mib(device))
    return f"{testbed.name}, {len(sets)} images of {len(sets)} sets", figures


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
    parser.add_argument("--batch-testbed", default=None,
                        help="testbed of the batch_size section (default: toy if built, else tiny)")
    parser.add_argument("--batch-size", type=int, default=8, help="the batch_size section's batch")
    parser.add_argument("--batch-images", type=int, default=16, help="images per method in the batch_size section")
    parser.add_argument("--batch-methods", nargs="+", default=CORE_METHODS, help="methods of the batch_size section")
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.gettempdir()) / "harness-bench-tiny"
    build_tiny_testbed(folder)
    device = resolve_device(args.device)
    pipe = load_pipeline(folder / "base", dtype=args.dtype, device=device)
    specs = _specs(folder)
    AdapterCache(pipe).ensure(specs)
    settings = SamplingSettings(args.steps, 7.5, args.size, args.size)
    memory = "GPU allocated" if device.startswith("cuda") else "process resident set"
    print(f"device {pipe.device}, dtype {args.dtype}, {args.steps} steps, {args.size}x{args.size}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}; peak MiB: {memory}")
    if "load" in args.sections:
        # measured after the first load, which also imports the libraries' modules
        peaks = {dtype: load_measured(folder / "base", dtype, device)[1]
                 for dtype in dict.fromkeys(["float32", args.dtype])}
        print("\nload: memory added at the peak of load_pipeline and one read of every weight (a float32 load "
              "maps its files and reads them at the first image)")
        print(f"{'dtype':<10} {'resident MiB':>13} {'GPU MiB':>8} {'weights MiB':>12}")
        for dtype, peak in peaks.items():
            print(f"{dtype:<10} {_mib(peak.resident_mib):>13} {_mib(peak.cuda_mib):>8} {peak.weights_mib:>12.1f}")
    if "methods" in args.sections:
        print("\nseconds per image and peak memory, K=3 (character, clothing, style)")
        print(f"{'method':<12} {'s/image':>8} {'peak MiB':>9}")
        for name in ["base", "merge", "switch", "composite", "w_switch", "w_composite"]:
            seconds, peak_mib = _time(Sampler(pipe), name, specs[:3], settings, args.repeats, device)
            print(f"{name:<12} {seconds:>8.3f} {_mib(peak_mib):>9}")
    if "merge_vs_diffusers" in args.sections:
        harness_s, diffusers_s, difference = _merge_vs_diffusers(pipe, specs[:3], settings, args.repeats)
        print("\nmerge per image, K=3: the harness (Sampler.generate) vs a bare diffusers pipe(...) call, same "
              "adapters (pipe.set_adapters), steps and seed; goal ratio <= 1.05")
        print(f"{'harness s':>10} {'diffusers s':>12} {'ratio':>6} {'max pixel diff':>15}")
        print(f"{harness_s:>10.3f} {diffusers_s:>12.3f} {harness_s / diffusers_s:>6.3f} {difference:>15}")
    if "batching" in args.sections:
        print("\ncomposite: batched (one UNet call, per-sample adapters) vs sequential (K calls), and peak memory")
        print(f"{'K':>2} {'batched s':>10} {'sequential s':>13} {'ratio':>6} {'batched MiB':>12} "
              f"{'sequential MiB':>15}")
        for k in range(2, 6):
            batched, batched_mib = _time(Sampler(pipe, "batched"), "composite", specs[:k], settings, args.repeats,
                                         device)
            sequential, sequential_mib = _time(Sampler(pipe, "sequential"), "composite", specs[:k], settings,
                                               args.repeats, device)
            print(f"{k:>2} {batched:>10.3f} {sequential:>13.3f} {batched / sequential:>6.2f} "
                  f"{_mib(batched_mib):>12} {_mib(sequential_mib):>15}")
    if "batch_size" in args.sections:
        from harness.demo import default_testbed

        what, figures = batch_figures(args.batch_testbed or default_testbed(), args.batch_methods, args.batch_size,
                                      args.batch_images, device)
        print(f"\nimages per second at batch {args.batch_size} vs batch 1 ({what}, the testbed's steps and size); "
              f"goal >= 2x; max |d latents| between the two; peak MiB of the batched run")
        print(f"{'method':<12} {'batch 1 img/s':>14} {f'batch {args.batch_size} img/s':>14} {'ratio':>6} "
              f"{'max |d|':>9} {'peak MiB':>9}")
        for name, figure in figures.items():
            print(f"{name:<12} {1 / figure.single_seconds:>14.2f} {1 / figure.batch_seconds:>14.2f} "
                  f"{figure.single_seconds / figure.batch_seconds:>6.2f} {figure.max_latent_difference:>9.1e} "
                  f"{_mib(figure.batch_peak_mib):>9}")
    return 0
