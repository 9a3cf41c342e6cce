"""Seconds per image and peak memory of every method on an SD1.5-shaped model with random weights, K=5.

Builds Stable Diffusion 1.5's architecture from configs written here (UNet, VAE, CLIP text encoder, an offline
CLIP tokenizer, DPMSolver++), with random weights, saves it as a diffusers folder in float32 (as SD1.5's own
folders are, so a float16 run casts on load like a real model) and loads it through
``harness.pipelines.load_pipeline`` (the code path of a real model), printing the memory that load added at
its peak (``harness.bench.load_measured``: host resident set and GPU); writes 5 random kohya-format LoRAs of
ranks 8, 16, 32, 64 and 128 on the attention and feed-forward layers of the UNet and the text encoder (the
layers and ranks of Civitai LoRAs); then times each method through ``harness.sampler.Sampler`` at batch 1 and
with ``--batch-size`` images (seeds of the one set) per denoising loop.
Nothing is downloaded: the model and LoRAs are cached under ``--folder`` and reused.

Each method gets one warm-up image; the repeats are interleaved across methods (each repeat runs every
method once) so that a busy machine slows them alike. Prints per method the median seconds per image and the
peak memory during its images (reset per image; model weights included): ``torch.cuda.max_memory_allocated``
on a GPU, the process's resident set on the CPU (Linux); then Composite(K=5) / Merge (goal: <= 2.5) and
Merge / a bare diffusers ``pipe(...)`` call with the same adapters set (goal: <= 1.05).

    python benchmarks/sd15_speed.py                     # GPU: 512x512, 30 steps, float16
    python benchmarks/sd15_speed.py --tiny --methods merge composite    # CPU-sized check of the same code
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import harness  # noqa: F401  (before diffusers)
import torch
from safetensors.torch import save_file

from harness.bench import load_measured
from harness.devices import peak_memory_mib, reset_peak_memory, resolve_device
from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.sampler import ImageJob, NonFiniteError, Sampler, SamplingSettings
from harness.tiny import build_clip_tokenizer

ALL_METHODS = ["base", "merge", "switch", "composite", "w_switch", "w_composite", "cmlora", "loratorio", "klora",
               "merge_svd", "merge_ties", "merge_dare"]
BARE = "diffusers"  # not a method: a bare pipe(...) call with Merge's adapters set, Merge's yardstick
RANKS = (8, 16, 32, 64, 128)
TINY_RANKS = (2, 4, 8, 16, 32)  # --tiny: no rank above its narrowest layer (32), which the SVD merges need
UNET_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "mlp.fc1", "mlp.fc2")
SCALE = 0.8  # every LoRA's scale
CATEGORIES = ("character", "clothing", "style", "background", "object")
DEFAULT_FOLDER = Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "sd15-speed"

# SD1.5's architecture (runwayml/stable-diffusion-v1-5 configs); --tiny keeps the block structure, narrower
SD15 = {"ranks": RANKS, "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768,
        "vae_channels": (128, 256, 512, 512),
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}}
TINY = {"ranks": TINY_RANKS, "block_out_channels": (32, 64, 64, 64), "cross_attention_dim": 64,
        "vae_channels": (32, 32, 64, 64),
        "text": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}}


def build_sd15_shaped(folder: Path, shape: dict[str, Any], seed: int = 0) -> Path:
    """Save a random-weight StableDiffusionPipeline of ``shape`` (SD15 or TINY) to ``folder`` (kept if present)."""
    from diffusers import (AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel

    if (folder / "model_index.json").exists():
        return folder
    torch.manual_seed(seed)
    tokenizer = build_clip_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, hidden_act="quick_gelu",
        projection_dim=shape["text"]["hidden_size"], bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **shape["text"],
    ))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=shape["block_out_channels"],
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=shape["cross_attention_dim"], attention_head_dim=8, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=shape["vae_channels"],
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
        sample_size=512,
    )
    scheduler = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                            num_train_timesteps=1000, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=folder.parent))
    pipe.save_pretrained(scratch)
    os.replace(scratch, folder)  # a half-written folder never looks complete
    return folder


def write_kohya_lora(pipe: Any, path: Path, rank: int, seed: int) -> Path:
    """A random kohya-format LoRA of ``rank`` on the pipeline's attention and feed-forward Linears (UNet and text
    encoder), alpha = rank; dW = B A with entries of a few hundredths of W's, as in trained LoRAs."""
    if path.exists():
        return path
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module, targets in (("lora_unet", pipe.unet, UNET_TARGETS),
                                    ("lora_te", pipe.text_encoder, TEXT_ENCODER_TARGETS)):
        for name, layer in module.named_modules():
            if isinstance(layer, torch.nn.Linear) and name.endswith(targets):
                key = f"{prefix}_{name.replace('.', '_')}"
                tensors[f"{key}.lora_down.weight"] = torch.randn(rank, layer.in_features, generator=generator) \
                    / layer.in_features ** 0.5
                tensors[f"{key}.lora_up.weight"] = torch.randn(layer.out_features, rank, generator=generator) \
                    * (0.05 / rank ** 0.5)
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".tmp")
    save_file(tensors, str(scratch), metadata={"format": "pt"})
    os.replace(scratch, path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="same architecture, block_out_channels (32, 64, 64, 64), a 2-layer text encoder; "
                             "size 64 and 4 steps unless given")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (512; --tiny: 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; --tiny: 4)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default=None, help="float16 on cuda, float32 on cpu unless given")
    parser.add_argument("--methods", nargs="+", default=ALL_METHODS + [BARE], choices=ALL_METHODS + [BARE],
                        help=f"methods to time; {BARE!r}: a bare diffusers pipe(...) call after pipe.set_adapters with "
                             "the 5 adapters at Merge's scale (both timed)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8,
                        help="also time each method this many images per denoising loop (seeds 0.., one set); 0: skip")
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="where the model and LoRAs are kept")
    args = parser.parse_args(argv)
    size = args.size or (64 if args.tiny else 512)
    steps = args.steps or (4 if args.tiny else 30)
    device = resolve_device(args.device)
    dtype = args.dtype or ("float16" if device.startswith("cuda") else "float32")
    on_cuda = device.startswith("cuda")

    # 1. model and LoRAs (built once, then read from --folder like any local model)
    name = "sd15-tiny" if args.tiny else "sd15"
    started = time.perf_counter()
    shape = TINY if args.tiny else SD15
    base = build_sd15_shaped(args.folder / name, shape)
    pipe, load_peak = load_measured(base, dtype, device)
    specs = [LoraSpec(f"{category}_r{rank}", f"random rank-{rank} LoRA", category, (f"trigger{index}",),
                      write_kohya_lora(pipe, args.folder / f"{name}-lora" / f"r{rank}.safetensors", rank, index + 1))
             for index, (category, rank) in enumerate(zip(CATEGORIES, shape["ranks"]))]
    reports = AdapterCache(pipe).ensure(specs)
    applied = {part: sum(report["layers_applied"][part] for report in reports.values())
               for part in ("unet", "text_encoder")}
    setup_seconds = time.perf_counter() - started

    # 2. time the methods: one warm-up image each, then the repeats interleaved across methods
    settings = SamplingSettings(steps, 7.5, size, size)
    prompt = "a photo of " + ", ".join(spec.trigger[0] for spec in specs)
    samplers = {method: Sampler(pipe) for method in args.methods if method != BARE}
    seconds: dict[str, list[float]] = defaultdict(list)
    peak: dict[str, float] = {}  # GiB; none where it cannot be read (a CPU without /proc)
    failed: dict[str, str] = {}

    def one_image(method_name: str, seed: int) -> float:
        if method_name == BARE:  # sets its adapters in its time, as each method's sampler does after forget()
            def generate() -> Any:
                pipe.set_adapters([spec.id for spec in specs], [SCALE] * len(specs))
                return pipe(prompt, negative_prompt="", num_inference_steps=steps,
                            guidance_scale=settings.guidance_scale, height=size, width=size,
                            generator=torch.Generator("cpu").manual_seed(seed), output_type="pil")
        else:
            sampler = samplers[method_name]
            sampler.adapters.forget()  # another method (or the bare call) changed the adapters since
            method = METHODS.get(method_name)()
            context = ImageContext(specs, SCALE, prompt, steps, sampler.importance_embedder(method),
                                   sampler.lora_deltas)

            def generate() -> Any:
                return sampler.generate(method, context, "", settings, seed)
        reset_peak_memory(device)
        started = time.perf_counter()
        generate()
        if on_cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        peak_mib = peak_memory_mib(device)
        if peak_mib is not None:
            peak[method_name] = max(peak.get(method_name, 0.0), peak_mib / 1024)
        return elapsed

    for repeat in range(args.repeats + 1):  # repeat 0 is the warm-up
        for method_name in args.methods:
            if method_name in failed:
                continue
            try:
                elapsed = one_image(method_name, repeat)
            except NonFiniteError as error:  # random weights in float16 may overflow: say so, time the rest
                failed[method_name] = str(error).split(":")[0]
                continue
            if repeat:
                seconds[method_name].append(elapsed)

    # 3. the same methods, --batch-size images (seeds) per denoising loop: one warm-up batch, then the repeats
    batch_seconds: dict[str, list[float]] = defaultdict(list)
    batch_peak: dict[str, float] = {}
    for repeat in range(args.repeats + 1 if args.batch_size > 1 else 0):
        for method_name in args.methods:
            if method_name == BARE or method_name in failed:
                continue
            sampler = samplers[method_name]
            sampler.adapters.forget()
            methods = [METHODS.get(method_name)() for _ in range(args.batch_size)]  # one instance per image
            jobs = [ImageJob(method, ImageContext(specs, SCALE, prompt, steps, sampler.importance_embedder(method),
                                                  sampler.lora_deltas), seed) for seed, method in enumerate(methods)]
            reset_peak_memory(device)
            started = time.perf_counter()
            outcomes = sampler.generate_batch(jobs, "", settings)
            if on_cuda:
                torch.cuda.synchronize()
            if any(outcome.error for outcome in outcomes):
                failed[method_name] = f"batch of {args.batch_size}: {next(o.error for o in outcomes if o.error)}"
                continue
            if repeat:
                batch_seconds[method_name].append((time.perf_counter() - started) / args.batch_size)
            peak_mib = peak_memory_mib(device)
            if peak_mib is not None:
                batch_peak[method_name] = max(batch_peak.get(method_name, 0.0), peak_mib / 1024)

    # 4. the table
    gpu = torch.cuda.get_device_name(torch.device(device)) if on_cuda else "no GPU"
    print(f"SD1.5-shaped random model{' (--tiny)' if args.tiny else ''}, {size}x{size}, {steps} steps, {dtype}, "
          f"device {device} ({gpu}), torch threads {torch.get_num_threads()}, K=5 LoRAs of ranks "
          f"{', '.join(map(str, shape['ranks']))}, median of {args.repeats}; "
          f"LoRA layers applied: UNet {applied['unet']}, text encoder {applied['text_encoder']} (all 5); "
          f"build/load {setup_seconds:.1f} s")

    def gib(mib: float | None) -> str:
        return "n/a" if mib is None else f"{mib / 1024:.2f} GiB"

    print(f"load peak ({dtype}, load_pipeline and one read of every weight), added: host resident "
          f"{gib(load_peak.resident_mib)}, GPU {gib(load_peak.cuda_mib)}; weights {gib(load_peak.weights_mib)}")
    batch = args.batch_size
    print(f"{'method':<12} {'s/image':>8} {'peak GiB':>9} {f'b{batch} s/image':>12} {f'b{batch} peak GiB':>14}  "
          f"(batch 1, then {batch} images per loop; peak: {'GPU allocated' if on_cuda else 'process resident set'})")
    medians, batch_medians = {}, {}
    for method_name in args.methods:
        if method_name in failed:
            print(f"{method_name:<12} {'failed':>8} {'':>9}  {failed[method_name]}")
            continue
        medians[method_name] = statistics.median(seconds[method_name])
        memory = f"{peak[method_name]:.2f}" if method_name in peak else "n/a"
        batched, batched_memory = "n/a", "n/a"
        if batch_seconds.get(method_name):
            batch_medians[method_name] = statistics.median(batch_seconds[method_name])
            batched = f"{batch_medians[method_name]:.3f}"
            batched_memory = f"{batch_peak[method_name]:.2f}" if method_name in batch_peak else "n/a"
        print(f"{method_name:<12} {medians[method_name]:>8.3f} {memory:>9} {batched:>12} {batched_memory:>14}")
    if "composite" in medians and "merge" in medians:
        print(f"composite(K=5) / merge: {medians['composite'] / medians['merge']:.2f} at batch 1"
              + (f", {batch_medians['composite'] / batch_medians['merge']:.2f} at batch {batch}"
                 if "composite" in batch_medians and "merge" in batch_medians else "") + " (goal <= 2.5 batched)")
    else:
        print("composite(K=5) / merge: n/a (time both merge and composite)")
    if "merge" in medians and BARE in medians:
        print(f"merge / {BARE}: {medians['merge'] / medians[BARE]:.3f} (goal <= 1.05)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
