"""Train a LoRA on any diffusers Stable Diffusion 1.x-family model: ``python -m harness train-lora``.

Standard SD LoRA training (as in diffusers' ``train_text_to_image_lora.py``): the images are VAE-encoded
once (they are fixed and not augmented, so the latents are cached), noised with the model's own DDPM
schedule, and a peft LoRA on the UNet (optionally also on the text encoder) learns to predict the noise
(or v, when the scheduler says so) under an MSE loss with AdamW, in fp32.

Determinism and resuming: every random draw of a step (which images, flips, latent samples, noise,
timesteps) comes from a generator seeded by ``(seed, step)``, so a run resumed from a checkpoint
(LoRA weights + optimizer state + step) makes exactly the same draws as an uninterrupted one.

The options (their defaults, help, validation, and which of them the record and the resume fingerprint
hold) are ``harness.training.config.LoraTrainingConfig``; this module owns the loop and the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import harness
from harness.devices import resolve_device
from harness.io import stable_hash
from harness.pipelines import ModelLoadError, load_pipeline, model_identity
from harness.training import TrainingInputError
from harness.training.checkpoint import load_checkpoint, save_checkpoint
from harness.training.config import DEFAULT_TEXT_ENCODER_TARGETS, DEFAULT_UNET_TARGETS, LoraTrainingConfig
from harness.training.dataset import (
    alpha_channel, dataset_trigger, example_problems, has_alpha, load_examples, open_image, resize_and_center_crop,
)
from harness.training.lora_file import adapter_config, save_lora_file
from harness.training.validation import grid_path, render_validation, validation_folder, write_validation_grid
from harness.training.losses import denoising_loss

MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2
# schedules whose rate at a step depends on the total steps: a run with them cannot be extended by more steps
STEP_DEPENDENT_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial")

__all__ = ["train_lora", "fit_lora", "TrainedLora", "LoraTrainingConfig", "load_examples", "main",
           "TrainingInputError"]


@dataclass
class TrainedLora:
    """A pipeline whose UNet (and text encoder) carry the trained ``default`` peft adapter."""

    pipeline: Any
    parts: dict[str, tuple[torch.nn.Module, list[str]]]  # "unet"/"text_encoder" -> (module, target modules)
    rank: int
    alpha: float
    record: dict[str, Any]  # the training record stored in the file's metadata
    save_format: str = "diffusers"

    def save(self, output_path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the LoRA as safetensors (atomically, in ``save_format``); ``metadata`` is stored next to the
        training record."""
        from peft.utils import get_peft_model_state_dict

        file_parts = {part: (_cpu(get_peft_model_state_dict(module)), adapter_config(self.rank, self.alpha, targets))
                      for part, (module, targets) in self.parts.items()}
        return save_lora_file(output_path, file_parts, {**(metadata or {}), **self.record}, self.save_format)


def step_file(output_path: str | Path, step: int) -> Path:
    """Where ``--save-every`` puts the LoRA of ``step``: ``<out>-step<N>.safetensors`` next to ``<out>``."""
    output_path = Path(output_path)
    return output_path.with_name(f"{output_path.stem}-step{step:06d}.safetensors")


def train_lora(
    base_model: str | Path,
    examples: list[tuple[Image.Image | Path, str]],
    output_path: str | Path,
    config: LoraTrainingConfig | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    **options: Any,
) -> Path:
    """Train a LoRA on ``examples`` ((image, caption) pairs) and save it to ``output_path`` (safetensors).

    ``config`` holds the training options (``LoraTrainingConfig``, its defaults when None); keyword
    ``options`` override its fields (``train_lora(base, examples, out, rank=4)``). ``metadata`` (e.g.
    ``{"trigger": "zqx girl"}``) is stored in the file next to the training record. ``on_step(step, loss)`` is
    called after every optimizer step. Returns ``output_path``.
    """
    output_path = Path(output_path)
    if output_path.suffix != ".safetensors":
        raise TrainingInputError(f"The LoRA output {str(output_path)!r} is not a .safetensors path. Fix: name "
                                 "the output file <name>.safetensors.")
    config = LoraTrainingConfig(**options) if config is None else replace(config, **options)
    prompts = list(config.validation_prompts or [])

    def validate(step: int, trained: TrainedLora) -> None:
        if prompts:
            render_validation(trained.pipeline, [module for module, _ in trained.parts.values()], prompts, step,
                              validation_folder(output_path), seed=config.validation_seed,
                              sampling_steps=config.validation_sampling_steps, guidance=config.validation_guidance,
                              resolution=config.resolution)
            write_validation_grid(validation_folder(output_path), prompts, grid_path(output_path))

    def on_save(step: int, trained: TrainedLora) -> None:
        trained.save(step_file(output_path, step), metadata)
        validate(step, trained)

    trained = fit_lora(base_model, examples, config, on_step=on_step, on_save=on_save)
    path = trained.save(output_path, metadata)
    validate(config.steps, trained)
    return path


def fit_lora(
    base_model: str | Path,
    examples: list[tuple[Image.Image | Path, str]],
    config: LoraTrainingConfig | None = None,
    *,
    on_step: Callable[[int, float], None] | None = None,
    on_save: Callable[[int, TrainedLora], None] | None = None,
    **options: Any,
) -> TrainedLora:
    """The training itself (see ``train_lora``); returns the pipeline with the trained adapter, unsaved.

    With ``config.save_every`` N, ``on_save(step, trained)`` is called after every N-th step before the last
    (``trained`` holds the adapter of that step; ``train_lora`` saves it and renders the validation prompts)."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm


    config = LoraTrainingConfig(**options) if config is None else replace(config, **options)
    if not examples:
        raise TrainingInputError("Cannot train the LoRA: no training examples were given (pass at least one "
                                 "(image, caption) pair). Fix: correct those settings.")
    optimizer_class = _optimizer_class(config.optimizer, resolve_device(config.device))
    if config.mixed_precision != "no" and not resolve_device(config.device).startswith("cuda"):
        raise TrainingInputError(
            f"Cannot train with mixed precision ({config.mixed_precision}) on {resolve_device(config.device)}: it "
            "autocasts to half precision on CUDA GPUs, where it saves memory and time; on a CPU it would be slower "
            "or unsupported. Fix: leave --mixed-precision at no (fp32), or train on a GPU (--device cuda).")

    images = [open_image(image) for image, _ in examples]
    pixels = torch.stack([_to_tensor(resize_and_center_crop(image.convert("RGB"), config.resolution))
                          for image in images])
    masks = _alpha_masks(images, [image for image, _ in examples], config.resolution) if config.alpha_mask else None
    captions = [caption for _, caption in examples]

    pipe = load_pipeline(base_model, scheduler="default", dtype="float32", device=config.device,
                         single_file_config=config.single_file_config)
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    run_device = unet.device
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    timestep_range = config.timestep_range
    if timestep_range and timestep_range[1] > noise_scheduler.config.num_train_timesteps:
        raise TrainingInputError(f"Cannot train the LoRA: the timestep range {list(timestep_range)} ends past the "
                                 f"model's {noise_scheduler.config.num_train_timesteps} training timesteps. Fix: "
                                 f"end it at {noise_scheduler.config.num_train_timesteps} or less.")

    batch_size, flip = config.batch_size, config.flip
    latent_mean, latent_std = _encode_images(vae, pixels, batch_size, run_device, flip)
    if masks is not None:  # to latent resolution, in the same orientations as the latents
        masks = F.interpolate(masks, size=latent_mean.shape[-2:], mode="area")
        masks = torch.stack([masks, masks.flip(-1)] if flip else [masks]).to(run_device)
    input_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(run_device)
    cached_text = None
    if not config.train_text_encoder:  # a frozen encoder gives the same states every step: compute them once
        with torch.no_grad():
            cached_text = torch.cat([text_encoder(input_ids[i:i + batch_size])[0]
                                     for i in range(0, len(input_ids), batch_size)])

    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids.to(run_device)
    with torch.no_grad():  # before the adapters exist: the base text encoder's states for the empty prompt
        empty_base = text_encoder(empty_ids)[0]
    torch.manual_seed(config.seed)  # LoRA A-matrix initialisation
    parts = {"unet": (unet, list(config.unet_targets))}
    if config.train_text_encoder:
        parts["text_encoder"] = (text_encoder, list(config.text_targets))
    for part, (module, targets) in parts.items():
        try:
            module.add_adapter(LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, target_modules=targets,
                                          lora_dropout=0.0, init_lora_weights=True))
        except ValueError as error:
            raise TrainingInputError(
                f"Could not put a LoRA on the {part} with target modules {targets}: {error}. Fix: name "
                f"modules that exist in the {part} (module-name suffixes such as "
                f"{list(DEFAULT_UNET_TARGETS if part == 'unet' else DEFAULT_TEXT_ENCODER_TARGETS)})."
            ) from error
        module.train()
    if config.gradient_checkpointing:  # non-reentrant: the frozen inputs carry no grad, the LoRA weights do
        unet.enable_gradient_checkpointing()
        if config.train_text_encoder:
            text_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for module, _ in parts.values() for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(parts, config.learning_rate, config.text_encoder_learning_rate, config.loraplus_lr_ratio,
                           optimizer_class)
    peak_rates = [group["lr"] for group in optimizer.param_groups]
    rate_factors = None  # constant: the trainer's own warm-up below
    if config.lr_scheduler != "constant":  # diffusers' schedules, as functions of the step (nothing to resume)
        from diffusers.optimization import get_scheduler

        rate_factors = get_scheduler(config.lr_scheduler, optimizer, num_warmup_steps=config.warmup_steps,
                                     num_training_steps=config.steps).lr_lambdas
    autocast = (torch.autocast("cuda", dtype=torch.float16 if config.mixed_precision == "fp16" else torch.bfloat16)
                if config.mixed_precision != "no" else contextlib.nullcontext())
    scaler = torch.amp.GradScaler("cuda") if config.mixed_precision == "fp16" else None

    identity = model_identity(base_model)
    settings = config.fingerprint_settings()
    if config.lr_scheduler in STEP_DEPENDENT_SCHEDULERS:  # the rate of every step depends on the total
        settings["schedule_steps"] = config.steps
    if masks is not None:  # the masks are data: their content, not the switch, must match
        settings["alpha_mask"] = hashlib.sha256(masks.cpu().numpy().tobytes()).hexdigest()
    fingerprint = stable_hash({"base": identity["base_hash"], "captions": captions, **settings,
                               "pixels": hashlib.sha256(pixels.numpy().tobytes()).hexdigest()})
    start_step, losses = 0, []
    steps, checkpoint_dir = config.steps, config.checkpoint_dir
    if checkpoint_dir and config.resume:
        state = load_checkpoint(checkpoint_dir, fingerprint)
        if state is not None:
            if state["step"] > steps:
                raise TrainingInputError(
                    f"The checkpoint in {str(checkpoint_dir)!r} is at step {state['step']}, past the "
                    f"{steps} steps asked for. Fix: ask for at least {state['step']} steps, or use another "
                    "--checkpoint-dir."
                )
            for part, (module, _) in parts.items():
                set_peft_model_state_dict(module, state["lora"][part])
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            start_step, losses = state["step"], list(state["losses"])

    def record_of(losses: list[float]) -> dict[str, Any]:
        return {
            "trainer": "harness.train_lora", "harness_version": harness.__version__, "base_model": identity,
            **config.record(),
            "prediction_type": prediction_type,
            "num_images": len(examples),
            "captions": sorted(set(captions))[:50],
            # mean loss of the last tenth of training: noisy (random timesteps) but comparable between runs
            "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None,
        }

    batches = _BatchSchedule(len(examples), batch_size, config.seed)
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train-lora",
               disable=not config.progress)
    for step in bar:
        if rate_factors is not None:
            for group, peak, factor in zip(optimizer.param_groups, peak_rates, rate_factors):
                group["lr"] = peak * factor(step)
        elif config.warmup_steps:  # linear warm-up, a function of the step alone (nothing to resume)
            for group, peak in zip(optimizer.param_groups, peak_rates):
                group["lr"] = peak * min(1.0, (step + 1) / config.warmup_steps)
        generator = torch.Generator().manual_seed(_derived_seed(config.seed, "step", step))
        index = batches.indices(step)
        orientation = (torch.randint(0, 2, (len(index),), generator=generator) if flip
                       else torch.zeros(len(index), dtype=torch.long))
        mean, std = latent_mean[orientation, index], latent_std[orientation, index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator).to(run_device))
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(run_device)
        if config.noise_offset:
            noise = noise + config.noise_offset * torch.randn(*latents.shape[:2], 1, 1,
                                                              generator=generator).to(run_device)
        low, high = timestep_range or (0, noise_scheduler.config.num_train_timesteps)
        timesteps = torch.randint(low, high, (len(index),), generator=generator).to(run_device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        with autocast:
            text_states = cached_text[index] if cached_text is not None else text_encoder(input_ids[index])[0]
            if config.uncond_anchor:  # the empty prompt rides in the same UNet call (cheaper than a second one)
                empty_states = text_encoder(empty_ids)[0] if config.train_text_encoder else empty_base
                prediction, empty_prediction = unet(
                    torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                    torch.cat([text_states, empty_states.expand(len(noisy), -1, -1)])).sample.chunk(2)
            else:
                prediction = unet(noisy, timesteps, text_states).sample
            pixel_weights = masks[orientation, index] if masks is not None else None
            loss = denoising_loss(noise_scheduler, prediction, latents, noise, timesteps, config.snr_gamma,
                                  pixel_weights)
            denoising = loss.item()  # what losses, on_step and final_loss report: comparable with or without the anchor
            if config.uncond_anchor:
                loss = loss + config.uncond_anchor * F.mse_loss(
                    empty_prediction.float(), _base_prediction(unet, noisy, timesteps, empty_base).float())
        if scaler is not None:  # fp16: scale the loss so small gradients do not underflow
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(denoising)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(step, losses[-1])
        if checkpoint_dir and config.checkpoint_every > 0 and (step + 1) % config.checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, {
                "fingerprint": fingerprint, "step": step + 1, "losses": losses, "torch_rng": torch.get_rng_state(),
                "optimizer": optimizer.state_dict(),
                "lora": {part: _cpu(get_peft_model_state_dict(module)) for part, (module, _) in parts.items()},
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            })
        if on_save is not None and config.save_every and (step + 1) % config.save_every == 0 and step + 1 < steps:
            on_save(step + 1, TrainedLora(pipe, parts, config.rank, config.lora_alpha,
                                          {**record_of(losses), "saved_at_step": step + 1}, config.save_format))
    bar.close()
    for module, _ in parts.values():
        module.eval()
    return TrainedLora(pipe, parts, config.rank, config.lora_alpha, record_of(losses), config.save_format)


@torch.no_grad()
def _base_prediction(unet: Any, noisy: torch.Tensor, timesteps: torch.Tensor,
                     empty_base: torch.Tensor) -> torch.Tensor:
    """The base model's prediction for the empty prompt (``uncond_anchor``'s target): the UNet with its adapter
    switched off, fed ``empty_base``, the base text encoder's states for ""."""
    unet.disable_adapters()
    try:
        return unet(noisy, timesteps, empty_base.expand(len(noisy), -1, -1)).sample
    finally:
        unet.enable_adapters()


class _BatchSchedule:
    """Batch indices for any step: epochs of seeded permutations, so no state is needed to resume."""

    def __init__(self, count: int, batch_size: int, seed: int) -> None:
        self.count, self.batch_size, self.seed = count, batch_size, seed
        self._permutations: dict[int, torch.Tensor] = {}

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(_derived_seed(self.seed, "epoch", epoch))
            self._permutations = {epoch: torch.randperm(self.count, generator=generator)}  # keep one epoch
        return self._permutations[epoch]

    def indices(self, step: int) -> torch.Tensor:
        positions = range(step * self.batch_size, (step + 1) * self.batch_size)
        return torch.stack([self._permutation(p // self.count)[p % self.count] for p in positions])


def _optimizer_class(name: str, device: str) -> type[torch.optim.Optimizer]:
    """torch's AdamW, or bitsandbytes' 8-bit AdamW (a clear error where it is not installed or cannot run)."""
    if name == "adamw":
        return torch.optim.AdamW
    try:
        import bitsandbytes
    except ImportError as error:
        raise TrainingInputError(
            "Cannot train with --optimizer adamw8bit: 8-bit AdamW comes from bitsandbytes, which is not installed "
            f"({error}). Fix: `pip install bitsandbytes` (needs a CUDA GPU), or use --optimizer adamw.") from error
    if not device.startswith("cuda"):
        raise TrainingInputError(f"Cannot train with --optimizer adamw8bit on {device}: bitsandbytes' 8-bit AdamW "
                                 "runs on CUDA GPUs. Fix: use --optimizer adamw, or train on a GPU.")
    return bitsandbytes.optim.AdamW8bit


def _optimizer(parts: dict[str, tuple[torch.nn.Module, list[str]]], learning_rate: float,
               text_encoder_learning_rate: float | None, loraplus_lr_ratio: float | None,
               optimizer_class: type[torch.optim.Optimizer] = torch.optim.AdamW) -> torch.optim.Optimizer:
    """AdamW (``optimizer_class``) over the adapters: one parameter group per part (the text encoder's at its own
    rate when given), split by peft into A and B groups for LoRA+. Plain settings give one group (so older
    checkpoints resume)."""
    if loraplus_lr_ratio is None and not text_encoder_learning_rate:
        return optimizer_class([p for module, _ in parts.values() for p in module.parameters() if p.requires_grad],
                               lr=learning_rate, weight_decay=WEIGHT_DECAY)
    groups = []
    for part, (module, _) in parts.items():
        rate = text_encoder_learning_rate if part == "text_encoder" and text_encoder_learning_rate else learning_rate
        if loraplus_lr_ratio is None:
            groups.append({"params": [p for p in module.parameters() if p.requires_grad], "lr": rate})
        else:
            from peft.optimizers import create_loraplus_optimizer

            groups += create_loraplus_optimizer(module, torch.optim.AdamW, lr=rate,
                                                loraplus_lr_ratio=loraplus_lr_ratio,
                                                weight_decay=WEIGHT_DECAY).param_groups
    return optimizer_class([group for group in groups if group["params"]], lr=learning_rate,
                           weight_decay=WEIGHT_DECAY)


def _derived_seed(seed: int, *names: Any) -> int:
    return int(stable_hash([seed, *names]), 16) % (2**63)


def _alpha_masks(images: list[Image.Image], sources: list, resolution: int) -> torch.Tensor:
    """Loss weights in [0, 1] from the images' alpha channels, cropped like the images: (N, 1, H, W)."""
    if not any(has_alpha(image) for image in images):
        raise TrainingInputError("Cannot train with alpha_mask: none of the training images has an alpha "
                                 "channel. Fix: save the images as RGBA PNGs whose alpha marks the region to "
                                 "learn (opaque) and the rest (transparent), or train without --alpha-mask.")
    masks = []
    for number, (image, source) in enumerate(zip(images, sources)):
        mask = np.asarray(resize_and_center_crop(alpha_channel(image), resolution), dtype=np.float32) / 255.0
        if not mask.any():
            raise TrainingInputError(f"The training image {_describe(source, number)} is fully transparent, so with "
                                     "alpha_mask it would teach nothing. Fix: make the region to learn opaque "
                                     "in its alpha channel, or remove the image.")
        masks.append(torch.from_numpy(mask)[None])
    return torch.stack(masks)


def _describe(source: Any, number: int) -> str:
    return repr(str(source)) if isinstance(source, (str, Path)) else f"number {number} (in-memory)"


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [-1, 1], as the VAE expects."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


@torch.no_grad()
def _encode_images(vae: Any, pixels: torch.Tensor, batch_size: int, device: torch.device,
                   flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent mean and std for each image (and its mirror image when ``flip``): (orientations, N, C, h, w)."""
    views = [pixels, pixels.flip(-1)] if flip else [pixels]
    means, stds = [], []
    for view in views:
        distributions = [vae.encode(view[i:i + batch_size].to(device)).latent_dist
                         for i in range(0, len(view), batch_size)]
        means.append(torch.cat([d.mean for d in distributions]))
        stds.append(torch.cat([d.std for d in distributions]))
    return torch.stack(means), torch.stack(stds)


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu").clone() for key, value in state.items()}


# ---- command line ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness train-lora",
        description="Train a LoRA on a folder of images (kohya-style img.png + img.txt captions, or a trigger "
                    "phrase for all) for a diffusers Stable Diffusion 1.x-family model; save it as safetensors.",
    )
    # the data and the process; the training options are LoraTrainingConfig's fields
    parser.add_argument("--base", required=True, help="base model: diffusers folder, single-file checkpoint or hub id")
    parser.add_argument("--images", required=True, help="folder of training images (+ optional caption files)")
    parser.add_argument("--trigger", default=None, help="trigger phrase: captions every image, or is put in "
                                                        "front of captions that lack it")
    parser.add_argument("--caption-extension", default=".txt", help="extension of the caption files")
    parser.add_argument("--strict", action="store_true",
                        help="refuse the data when a caption lacks the trigger or an image is much smaller than "
                             "the resolution or far from square (default: a warning each)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a shared CPU, 1 can be several times faster)")
    LoraTrainingConfig.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        config = LoraTrainingConfig.from_args(args)
        examples = load_examples(args.images, trigger=args.trigger, caption_extension=args.caption_extension)
        trigger = args.trigger or dataset_trigger(args.images)
        problems = example_problems(examples, config.resolution, trigger)
        if problems and args.strict:
            raise TrainingInputError("--strict: " + "; ".join(problems) + ".")
        for problem in problems:
            print(f"warning: {problem}.", file=sys.stderr)
        path = train_lora(args.base, examples, args.out, config,
                          metadata={"trigger": trigger} if trigger else None)
    except ModelLoadError as error:
        # the loader's message names the Hydra config keys; say the matching command-line options
        message = str(error).replace("`model.base`", "--base").replace("`model.single_file_config`",
                                                                          "--single-file-config")
        print(f"error: {message}", file=sys.stderr)
        return 2
    except TrainingInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"saved LoRA: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
