"""Train a LoRA on any diffusers Stable Diffusion 1.x-family model: ``python -m harness train-lora``.

Standard SD LoRA training (as in diffusers' ``train_text_to_image_lora.py``): the images are VAE-encoded
once (they are fixed and not augmented, so the latents are cached), noised with the model's own DDPM
schedule, and a peft LoRA on the UNet (optionally also on the text encoder) learns to predict the noise
(or v, when the scheduler says so) under an MSE loss with AdamW, in fp32.

Determinism and resuming: every random draw of a step (which images, flips, latent samples, noise,
timesteps) comes from a generator seeded by ``(seed, step)``, so a run resumed from a checkpoint
(LoRA weights + optimizer state + step) makes exactly the same draws as an uninterrupted one.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import harness
from harness.io import stable_hash
from harness.training import TrainingInputError
from harness.training.checkpoint import load_checkpoint, save_checkpoint
from harness.training.dataset import alpha_channel, has_alpha, load_examples, open_image, resize_and_center_crop
from harness.training.lora_file import adapter_config, save_lora_file
from harness.training.losses import denoising_loss

DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DEFAULT_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
MAX_GRAD_NORM = 1.0
WEIGHT_DECAY = 1e-2

__all__ = ["train_lora", "fit_lora", "TrainedLora", "load_examples", "main", "TrainingInputError"]


@dataclass
class TrainedLora:
    """A pipeline whose UNet (and text encoder) carry the trained ``default`` peft adapter."""

    pipeline: Any
    parts: dict[str, tuple[torch.nn.Module, list[str]]]  # "unet"/"text_encoder" -> (module, target modules)
    rank: int
    alpha: float
    record: dict[str, Any]  # the training record stored in the file's metadata

    def save(self, output_path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the LoRA as safetensors (atomically); ``metadata`` is stored next to the training record."""
        from peft.utils import get_peft_model_state_dict

        file_parts = {part: (_cpu(get_peft_model_state_dict(module)), adapter_config(self.rank, self.alpha, targets))
                      for part, (module, targets) in self.parts.items()}
        return save_lora_file(output_path, file_parts, {**(metadata or {}), **self.record})


def train_lora(
    base_model: str | Path,
    examples: list[tuple[Image.Image | Path, str]],
    output_path: str | Path,
    *,
    rank: int = 8,
    alpha: float | None = None,
    steps: int = 500,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    resolution: int = 512,
    unet_target_modules: list[str] | None = None,
    train_text_encoder: bool = False,
    text_encoder_target_modules: list[str] | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = True,
    device: str = "auto",
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    flip: bool = False,
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    text_encoder_learning_rate: float | None = None,
    loraplus_lr_ratio: float | None = None,
    timestep_range: tuple[int, int] | None = None,
    warmup_steps: int = 0,
    alpha_mask: bool = False,
    uncond_anchor: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
    single_file_config: str | Path | None = None,
) -> Path:
    """Train a LoRA on ``examples`` ((image, caption) pairs) and save it to ``output_path`` (safetensors).

    ``alpha`` defaults to ``rank`` (scale 1). ``metadata`` (e.g. ``{"trigger": "zqx girl"}``) is stored in
    the file next to the training record. With ``checkpoint_dir`` and ``checkpoint_every > 0`` a checkpoint
    is written every that many steps; with ``resume`` a rerun continues from it. ``flip`` adds random
    horizontal flips (off by default: identity LoRAs care about asymmetry). ``snr_gamma`` turns on Min-SNR
    loss weighting and ``noise_offset`` adds that much per-channel offset noise (both as in diffusers'
    training scripts; use the base model's own training settings). ``text_encoder_learning_rate`` (default
    ``learning_rate``) is the text-encoder LoRA's rate, as kohya's and diffusers' scripts allow.
    ``loraplus_lr_ratio`` trains the B matrices that many times faster than the A matrices (LoRA+, peft's
    ``create_loraplus_optimizer``; 16 is the paper's usual value). ``timestep_range`` (low, high) samples
    training timesteps in [low, high) only (diffusers' "timestep bias" idea: spend the steps where a concept's
    layout and colours are decided). ``warmup_steps`` raises every learning rate linearly from 0 over that many
    steps. ``alpha_mask`` weights the loss by each image's alpha channel (kohya's masked loss: opaque pixels
    count, transparent ones do not; an image without alpha counts everywhere), so a LoRA can learn a small
    region (a face, an accessory) without spending itself on the rest. ``uncond_anchor`` (a weight, 0 = off)
    adds a term that holds the LoRA model's prediction for the empty prompt to the base model's on the same
    noisy latents: classifier-free guidance amplifies only what the prompt changes (``uncond + g * (cond -
    uncond)``), so a LoRA that also draws its concept for the empty prompt (every training image shows it)
    has that part cancelled at sampling, more the higher the guidance; anchored, the concept must come from
    the prompt, and guidance amplifies it (docs/toy-world.md "Measured quality"); the reported losses stay the denoising
    loss alone. ``on_step(step, loss)`` is called
    after every optimizer step. ``single_file_config`` is the diffusers config folder for a single-file base
    checkpoint (needed offline). Returns ``output_path``.
    """
    output_path = Path(output_path)
    if output_path.suffix != ".safetensors":
        raise TrainingInputError(f"The LoRA output {str(output_path)!r} is not a .safetensors path. Fix: name "
                                 "the output file <name>.safetensors.")
    trained = fit_lora(
        base_model, examples, rank=rank, alpha=alpha, steps=steps, learning_rate=learning_rate,
        batch_size=batch_size, resolution=resolution, unet_target_modules=unet_target_modules,
        train_text_encoder=train_text_encoder, text_encoder_target_modules=text_encoder_target_modules,
        seed=seed, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
        device=device, progress=progress, flip=flip, snr_gamma=snr_gamma, noise_offset=noise_offset,
        text_encoder_learning_rate=text_encoder_learning_rate, loraplus_lr_ratio=loraplus_lr_ratio,
        timestep_range=timestep_range, warmup_steps=warmup_steps, alpha_mask=alpha_mask,
        uncond_anchor=uncond_anchor, on_step=on_step, single_file_config=single_file_config,
    )
    return trained.save(output_path, metadata)


def fit_lora(
    base_model: str | Path,
    examples: list[tuple[Image.Image | Path, str]],
    *,
    rank: int = 8,
    alpha: float | None = None,
    steps: int = 500,
    learning_rate: float = 1e-4,
    batch_size: int = 4,
    resolution: int = 512,
    unet_target_modules: list[str] | None = None,
    train_text_encoder: bool = False,
    text_encoder_target_modules: list[str] | None = None,
    seed: int = 0,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = True,
    device: str = "auto",
    progress: bool = True,
    flip: bool = False,
    snr_gamma: float | None = None,
    noise_offset: float = 0.0,
    text_encoder_learning_rate: float | None = None,
    loraplus_lr_ratio: float | None = None,
    timestep_range: tuple[int, int] | None = None,
    warmup_steps: int = 0,
    alpha_mask: bool = False,
    uncond_anchor: float = 0.0,
    on_step: Callable[[int, float], None] | None = None,
    single_file_config: str | Path | None = None,
) -> TrainedLora:
    """The training itself (see ``train_lora``); returns the pipeline with the trained adapter, unsaved."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    from harness.pipelines import load_pipeline, model_identity

    alpha = float(rank if alpha is None else alpha)
    unet_targets = list(unet_target_modules or DEFAULT_UNET_TARGETS)
    text_targets = list(text_encoder_target_modules or DEFAULT_TEXT_ENCODER_TARGETS) if train_text_encoder else []
    _check_settings(examples, rank, steps, batch_size, resolution, checkpoint_dir, checkpoint_every, snr_gamma,
                    noise_offset, loraplus_lr_ratio, text_encoder_learning_rate, timestep_range, warmup_steps,
                    uncond_anchor)

    images = [open_image(image) for image, _ in examples]
    pixels = torch.stack([_to_tensor(resize_and_center_crop(image.convert("RGB"), resolution)) for image in images])
    masks = _alpha_masks(images, [image for image, _ in examples], resolution) if alpha_mask else None
    captions = [caption for _, caption in examples]

    pipe = load_pipeline(base_model, scheduler="default", dtype="float32", device=device,
                         single_file_config=single_file_config)
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    run_device = unet.device
    for module in (unet, text_encoder, vae):
        module.requires_grad_(False)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    prediction_type = noise_scheduler.config.prediction_type
    if timestep_range and timestep_range[1] > noise_scheduler.config.num_train_timesteps:
        raise TrainingInputError(f"Cannot train the LoRA: the timestep range {list(timestep_range)} ends past the "
                                 f"model's {noise_scheduler.config.num_train_timesteps} training timesteps. Fix: "
                                 f"end it at {noise_scheduler.config.num_train_timesteps} or less.")

    latent_mean, latent_std = _encode_images(vae, pixels, batch_size, run_device, flip)
    if masks is not None:  # to latent resolution, in the same orientations as the latents
        masks = F.interpolate(masks, size=latent_mean.shape[-2:], mode="area")
        masks = torch.stack([masks, masks.flip(-1)] if flip else [masks]).to(run_device)
    input_ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                          return_tensors="pt").input_ids.to(run_device)
    cached_text = None
    if not train_text_encoder:  # a frozen encoder gives the same states every step: compute them once
        with torch.no_grad():
            cached_text = torch.cat([text_encoder(input_ids[i:i + batch_size])[0]
                                     for i in range(0, len(input_ids), batch_size)])

    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids.to(run_device)
    with torch.no_grad():  # before the adapters exist: the base text encoder's states for the empty prompt
        empty_base = text_encoder(empty_ids)[0]
    torch.manual_seed(seed)  # LoRA A-matrix initialisation
    parts = {"unet": (unet, unet_targets)}
    if train_text_encoder:
        parts["text_encoder"] = (text_encoder, text_targets)
    for part, (module, targets) in parts.items():
        try:
            module.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0,
                                          init_lora_weights=True))
        except ValueError as error:
            raise TrainingInputError(
                f"Could not put a LoRA on the {part} with target modules {targets}: {error}. Fix: name "
                f"modules that exist in the {part} (module-name suffixes such as "
                f"{DEFAULT_UNET_TARGETS if part == 'unet' else DEFAULT_TEXT_ENCODER_TARGETS})."
            ) from error
        module.train()
    trainable = [p for module, _ in parts.values() for p in module.parameters() if p.requires_grad]
    optimizer = _optimizer(parts, learning_rate, text_encoder_learning_rate, loraplus_lr_ratio)
    peak_rates = [group["lr"] for group in optimizer.param_groups]

    identity = model_identity(base_model)
    fingerprint = stable_hash({
        "base": identity["base_hash"], "pixels": hashlib.sha256(pixels.numpy().tobytes()).hexdigest(),
        "captions": captions, "rank": rank, "alpha": alpha, "lr": learning_rate, "batch_size": batch_size,
        "resolution": resolution, "unet_targets": unet_targets, "text_targets": text_targets, "seed": seed,
        "flip": flip,
        # only when used, so checkpoints written before these options existed still resume
        **({"snr_gamma": snr_gamma} if snr_gamma is not None else {}),
        **({"noise_offset": noise_offset} if noise_offset else {}),
        **({"loraplus_lr_ratio": loraplus_lr_ratio} if loraplus_lr_ratio is not None else {}),
        **({"text_encoder_lr": text_encoder_learning_rate} if text_encoder_learning_rate else {}),
        **({"timestep_range": list(timestep_range)} if timestep_range else {}),
        **({"warmup_steps": warmup_steps} if warmup_steps else {}),
        **({"uncond_anchor": uncond_anchor} if uncond_anchor else {}),
        **({"alpha_mask": hashlib.sha256(masks.cpu().numpy().tobytes()).hexdigest()} if masks is not None else {}),
    })
    start_step, losses = 0, []
    if checkpoint_dir and resume:
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
            torch.set_rng_state(state["torch_rng"])
            start_step, losses = state["step"], list(state["losses"])

    batches = _BatchSchedule(len(examples), batch_size, seed)
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, desc="train-lora", disable=not progress)
    for step in bar:
        if warmup_steps:  # linear warm-up, a function of the step alone (nothing to resume)
            for group, peak in zip(optimizer.param_groups, peak_rates):
                group["lr"] = peak * min(1.0, (step + 1) / warmup_steps)
        generator = torch.Generator().manual_seed(_derived_seed(seed, "step", step))
        index = batches.indices(step)
        orientation = (torch.randint(0, 2, (len(index),), generator=generator) if flip
                       else torch.zeros(len(index), dtype=torch.long))
        mean, std = latent_mean[orientation, index], latent_std[orientation, index]
        latents = (mean + std * torch.randn(mean.shape, generator=generator).to(run_device))
        latents = latents * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator).to(run_device)
        if noise_offset:
            noise = noise + noise_offset * torch.randn(*latents.shape[:2], 1, 1, generator=generator).to(run_device)
        low, high = timestep_range or (0, noise_scheduler.config.num_train_timesteps)
        timesteps = torch.randint(low, high, (len(index),), generator=generator).to(run_device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        text_states = cached_text[index] if cached_text is not None else text_encoder(input_ids[index])[0]
        if uncond_anchor:  # the empty prompt rides in the same UNet call (cheaper than a second one)
            empty_states = text_encoder(empty_ids)[0] if train_text_encoder else empty_base
            prediction, empty_prediction = unet(
                torch.cat([noisy, noisy]), torch.cat([timesteps, timesteps]),
                torch.cat([text_states, empty_states.expand(len(noisy), -1, -1)])).sample.chunk(2)
        else:
            prediction = unet(noisy, timesteps, text_states).sample
        pixel_weights = masks[orientation, index] if masks is not None else None
        loss = denoising_loss(noise_scheduler, prediction, latents, noise, timesteps, snr_gamma, pixel_weights)
        denoising = loss.item()  # what losses, on_step and final_loss report: comparable with or without the anchor
        if uncond_anchor:
            loss = loss + uncond_anchor * F.mse_loss(empty_prediction,
                                                     _base_prediction(unet, noisy, timesteps, empty_base))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(denoising)
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if on_step is not None:
            on_step(step, losses[-1])
        if checkpoint_dir and checkpoint_every > 0 and (step + 1) % checkpoint_every == 0:
            save_checkpoint(checkpoint_dir, {
                "fingerprint": fingerprint, "step": step + 1, "losses": losses, "torch_rng": torch.get_rng_state(),
                "optimizer": optimizer.state_dict(),
                "lora": {part: _cpu(get_peft_model_state_dict(module)) for part, (module, _) in parts.items()},
            })
    bar.close()
    for module, _ in parts.values():
        module.eval()

    record = {
        "trainer": "harness.train_lora", "harness_version": harness.__version__,
        "base_model": identity, "rank": rank, "alpha": alpha, "steps": steps, "learning_rate": learning_rate,
        "batch_size": batch_size, "resolution": resolution, "unet_target_modules": unet_targets,
        "train_text_encoder": train_text_encoder, "text_encoder_target_modules": text_targets, "seed": seed,
        "flip": flip, "snr_gamma": snr_gamma, "noise_offset": noise_offset, "loraplus_lr_ratio": loraplus_lr_ratio,
        "text_encoder_learning_rate": text_encoder_learning_rate if train_text_encoder else None,
        "timestep_range": list(timestep_range) if timestep_range else None, "warmup_steps": warmup_steps,
        "alpha_mask": alpha_mask, "uncond_anchor": uncond_anchor,
        "prediction_type": prediction_type,
        "num_images": len(examples),
        "captions": sorted(set(captions))[:50],
        # mean loss of the last tenth of training: noisy (random timesteps) but comparable between runs
        "final_loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else None,
    }
    return TrainedLora(pipe, parts, rank, alpha, record)


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


def _optimizer(parts: dict[str, tuple[torch.nn.Module, list[str]]], learning_rate: float,
               text_encoder_learning_rate: float | None, loraplus_lr_ratio: float | None) -> torch.optim.Optimizer:
    """AdamW over the adapters: one parameter group per part (the text encoder's at its own rate when given),
    split by peft into A and B groups for LoRA+. Plain settings give one group (so older checkpoints resume)."""
    if loraplus_lr_ratio is None and not text_encoder_learning_rate:
        return torch.optim.AdamW([p for module, _ in parts.values() for p in module.parameters() if p.requires_grad],
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
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=learning_rate,
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


def _check_settings(examples: list, rank: int, steps: int, batch_size: int, resolution: int,
                    checkpoint_dir: Any, checkpoint_every: int, snr_gamma: float | None = None,
                    noise_offset: float = 0.0, loraplus_lr_ratio: float | None = None,
                    text_encoder_learning_rate: float | None = None,
                    timestep_range: tuple[int, int] | None = None, warmup_steps: int = 0,
                    uncond_anchor: float = 0.0) -> None:
    problems = []
    if not examples:
        problems.append("no training examples were given (pass at least one (image, caption) pair)")
    if rank < 1:
        problems.append(f"rank must be >= 1 (got {rank})")
    if steps < 0:
        problems.append(f"steps must be >= 0 (got {steps})")
    if batch_size < 1:
        problems.append(f"batch size must be >= 1 (got {batch_size})")
    if resolution < 8 or resolution % 8:
        problems.append(f"resolution must be a positive multiple of 8 (got {resolution})")
    if checkpoint_every < 0 or (checkpoint_every and not checkpoint_dir):
        problems.append("checkpoint_every needs a checkpoint_dir and must be >= 0")
    if snr_gamma is not None and not snr_gamma > 0:
        problems.append(f"snr_gamma must be > 0 (got {snr_gamma}; 5 is usual, leave it unset to turn Min-SNR off)")
    if not noise_offset >= 0:
        problems.append(f"noise_offset must be >= 0 (got {noise_offset}; 0.1 is usual)")
    if loraplus_lr_ratio is not None and not loraplus_lr_ratio >= 1:
        problems.append(f"loraplus_lr_ratio must be >= 1 (got {loraplus_lr_ratio}; 16 is usual, leave it unset "
                        "for plain LoRA)")
    if timestep_range is not None and not 0 <= timestep_range[0] < timestep_range[1]:
        problems.append(f"timestep_range must be LOW HIGH with 0 <= LOW < HIGH (got {list(timestep_range)})")
    if warmup_steps < 0:
        problems.append(f"warmup_steps must be >= 0 (got {warmup_steps})")
    if not uncond_anchor >= 0:
        problems.append(f"uncond_anchor must be >= 0 (got {uncond_anchor}; 0 turns it off)")
    if text_encoder_learning_rate is not None and not text_encoder_learning_rate > 0:
        problems.append(f"the text-encoder learning rate (text_encoder_lr) must be > 0 "
                        f"(got {text_encoder_learning_rate})")
    if problems:
        raise TrainingInputError("Cannot train the LoRA: " + "; ".join(problems) + ". Fix: correct those settings.")


# ---- command line ----------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness train-lora",
        description="Train a LoRA on a folder of images (kohya-style img.png + img.txt captions, or a trigger "
                    "phrase for all) for a diffusers Stable Diffusion 1.x-family model; save it as safetensors.",
    )
    parser.add_argument("--base", required=True, help="base model: diffusers folder, single-file checkpoint or hub id")
    parser.add_argument("--images", required=True, help="folder of training images (+ optional caption files)")
    parser.add_argument("--trigger", default=None, help="trigger phrase: captions every image, or is put in "
                                                        "front of captions that lack it")
    parser.add_argument("--single-file-config", default=None,
                        help="diffusers config folder for a single-file --base checkpoint (needed offline)")
    parser.add_argument("--out", required=True, help="output .safetensors file")
    parser.add_argument("--caption-extension", default=".txt")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--text-encoder", action="store_true", help="also train a LoRA on the text encoder")
    parser.add_argument("--unet-targets", nargs="+", default=None,
                        help=f"UNet module-name suffixes (default {' '.join(DEFAULT_UNET_TARGETS)}; "
                             "e.g. add proj_in proj_out ff.net.0.proj ff.net.2)")
    parser.add_argument("--text-encoder-targets", nargs="+", default=None,
                        help=f"text-encoder modules (default {' '.join(DEFAULT_TEXT_ENCODER_TARGETS)})")
    parser.add_argument("--flip", action="store_true", help="random horizontal flips (off: keeps asymmetry)")
    parser.add_argument("--snr-gamma", type=float, default=None, help="Min-SNR loss weighting (e.g. 5)")
    parser.add_argument("--noise-offset", type=float, default=0.0, help="per-channel offset noise (e.g. 0.1)")
    parser.add_argument("--text-encoder-lr", type=float, default=None,
                        help="learning rate of the text-encoder LoRA (default: --lr)")
    parser.add_argument("--timestep-range", type=int, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="train on timesteps in [LOW, HIGH) only (e.g. 300 1000)")
    parser.add_argument("--warmup-steps", type=int, default=0, help="linear learning-rate warm-up (steps)")
    parser.add_argument("--alpha-mask", action="store_true",
                        help="weight the loss by each image's alpha channel (masked loss; RGBA PNGs)")
    parser.add_argument("--uncond-anchor", type=float, default=0.0,
                        help="weight of a term holding the empty prompt's prediction to the base model's, so "
                             "the concept comes from the prompt and CFG amplifies it (e.g. 1; 0 = off)")
    parser.add_argument("--loraplus-lr-ratio", type=float, default=None,
                        help="LoRA+: learning rate of the B matrices / that of the A matrices (e.g. 16)")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (on a shared CPU, 1 can be several times faster)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    from harness.pipelines import ModelLoadError

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        examples = load_examples(args.images, trigger=args.trigger, caption_extension=args.caption_extension)
        path = train_lora(
            args.base, examples, args.out, rank=args.rank, alpha=args.alpha, steps=args.steps,
            learning_rate=args.lr, batch_size=args.batch_size, resolution=args.resolution,
            unet_target_modules=args.unet_targets, train_text_encoder=args.text_encoder,
            text_encoder_target_modules=args.text_encoder_targets, seed=args.seed,
            checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
            resume=not args.no_resume, device=args.device, progress=not args.no_progress, flip=args.flip,
            snr_gamma=args.snr_gamma, noise_offset=args.noise_offset, loraplus_lr_ratio=args.loraplus_lr_ratio,
            text_encoder_learning_rate=args.text_encoder_lr,
            timestep_range=tuple(args.timestep_range) if args.timestep_range else None,
            warmup_steps=args.warmup_steps, alpha_mask=args.alpha_mask, uncond_anchor=args.uncond_anchor,
            metadata={"trigger": args.trigger} if args.trigger else None,
            single_file_config=args.single_file_config,
        )
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
