"""Seconds and UNet evaluations per image of composition methods on a testbed: ``python benchmarks/method_costs.py``.

Times every method on the same few sets (``--per-n`` evenly spaced sets of each N), interleaved (for each
repeat, each set, each method) so that a busy machine slows them alike, after one warm-up image per method
and set. A sampler keeps the last two peft merges, so with more sets than that a merge method rebuilds its
adapter for every image, as a run with one seed per set (the demo) does. Prints, per method and N, the median
seconds per image, its ratio to Merge's, and the UNet evaluations the sampler counted (full, shallow).
A method is ``name`` or ``name:key=value,key=value`` (settings), e.g. ``cmlora:cache=false``.

    OMP_NUM_THREADS=1 python benchmarks/method_costs.py --testbed toy --batching sequential \\
        --methods merge composite cmlora cmlora:cache=false loratorio klora merge_svd
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import harness  # noqa: F401  (before diffusers)
import torch
from omegaconf import OmegaConf

from harness.config import load_testbed_config, testbed_config
from harness.lora import AdapterCache
from harness.methods import METHODS, ImageContext
from harness.paths import local_or_hub
from harness.pipelines import load_pipeline
from harness.runner import image_seed, select_sets
from harness.sampler import Sampler, SamplingSettings

DEFAULT_METHODS = ["merge", "composite", "cmlora", "cmlora:cache=false", "loratorio", "klora", "merge_svd",
                   "merge_ties", "merge_dare"]


def parse_method(text: str) -> tuple[str, dict]:
    name, _, settings = text.partition(":")
    return name, OmegaConf.to_container(OmegaConf.from_dotlist(settings.split(","))) if settings else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--testbed", default="toy")
    parser.add_argument("--methods", nargs="*", default=DEFAULT_METHODS)
    parser.add_argument("--per-n", type=int, default=1, help="evenly spaced sets per N")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batching", default="auto", choices=["auto", "batched", "sequential"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    testbed = load_testbed_config(testbed_config(args.testbed))
    sets = select_sets(testbed.sets(), limit_per_n=args.per_n)
    model, sampling = testbed.model, testbed.sampling
    pipe = load_pipeline(local_or_hub(model["base"]), vae=local_or_hub(model.get("vae")),
                         scheduler=model.get("scheduler", "dpmsolver++"), dtype=model.get("dtype", "float32"),
                         device=args.device)
    adapters = AdapterCache(pipe, capacity=64)
    settings = SamplingSettings(int(sampling["steps"]), float(sampling["guidance_scale"]), int(sampling["height"]),
                                int(sampling["width"]))
    scale = float(sampling.get("lora_scale", 0.8))
    methods = {text: parse_method(text) for text in args.methods}
    samplers = {text: Sampler(pipe, batching=args.batching) for text in methods}
    seconds: dict[tuple[str, int], list[float]] = defaultdict(list)
    evaluations: dict[tuple[str, int], dict[str, int]] = {}

    def one_image(text: str, composition, seed: int) -> float:
        name, method_settings = methods[text]
        sampler = samplers[text]
        adapters.ensure(list(composition.loras))
        sampler.adapters.forget()
        context = ImageContext(list(composition.loras), scale, testbed.prompt_for(composition), settings.steps,
                               sampler.importance_embedder(METHODS.get(name)), sampler.lora_deltas)
        method = METHODS.get(name)(**method_settings)
        started = time.perf_counter()
        sampler.generate(method, context, testbed.negative_prompt, settings, image_seed(seed, composition.id))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        evaluations[(text, composition.n)] = dict(sampler.evaluations)
        return time.perf_counter() - started

    for composition in sets:  # warm-up: first call of each method on each set (and its merge)
        for text in methods:
            one_image(text, composition, 0)
    for repeat in range(args.repeats):
        for composition in sets:
            for text in methods:
                seconds[(text, composition.n)].append(one_image(text, composition, repeat + 1))

    print(f"{testbed.name}: {len(sets)} sets ({args.per_n} per N), {settings.steps} steps, batching {args.batching}, "
          f"device {pipe.device}, torch threads {torch.get_num_threads()}, median of {args.repeats} per set")
    sizes = sorted({composition.n for composition in sets})
    merge_median = {n: statistics.median(seconds[("merge", n)]) for n in sizes if ("merge", n) in seconds}
    print(f"{'method':<24} {'N':>2} {'s/image':>8} {'x merge':>8} {'full':>5} {'shallow':>7}")
    for text in methods:
        for n in sizes:
            median = statistics.median(seconds[(text, n)])
            ratio = f"{median / merge_median[n]:.2f}" if n in merge_median else ""
            counted = evaluations[(text, n)]
            print(f"{text:<24} {n:>2} {median:>8.3f} {ratio:>8} {counted.get('full', 0):>5} "
                  f"{counted.get('shallow', 0):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
