"""The toy base model: a standard diffusers StableDiffusionPipeline trained from scratch on the toy world.

Standard classes only (CLIPTokenizer, CLIPTextModel, AutoencoderKL, UNet2DConditionModel,
DPMSolverMultistepScheduler with SD1.5's noise schedule), so the folder loads through the same code path as
SD1.5. The VAE is trained first (32x32 -> 4x16x16 latents), then the UNet and the text encoder jointly on
generic captions with random slot dropout (so an unprompted slot is filled by the model) and 10% empty
captions (for classifier-free guidance).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from harness.toy import world
from harness.training.losses import denoising_loss

SD15_SCHEDULE = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
UNET_ATTENTION_RESOLUTIONS = "8x8 and 4x4 latents"
# The toy tokenizer's context: the longest composition prompt (5 LoRAs' triggers + fill) has 33 tokens and a
# generic caption 25, and every position past the prompt still costs text-encoder and cross-attention time.
PROMPT_TOKENS = 48
# 2 attention heads of 32 channels (8 of 8 until 2026-12-05: SDPA on such thin heads is slow on CPU). With the
# shorter context, one training step at batch 32 costs ~20 % less (`python benchmarks/toy_unet_step.py`).
UNET_HEADS = 2


@dataclass
class Pool:
    """Rendered training scenes: images in [-1, 1] (N, 3, 32, 32), their specs, and per scene the categories
    its captions must never name (a held-back concept fills that slot)."""

    images: torch.Tensor
    specs: list[world.SceneSpec]
    unnamed: list[tuple[str, ...]] = field(default_factory=list)
    # (N, len(world.CATEGORIES), 32, 32) bool: each scene's slot regions (world.render_with_regions)
    regions: torch.Tensor | None = None

    def omitted(self, index: int) -> tuple[str, ...]:
        return self.unnamed[index] if self.unnamed else ()


def render_pool(count: int, seed: int, unnamed_held_back: float = 0.0) -> Pool:
    """``count`` generic scenes; with ``unnamed_held_back`` > 0 that share of them gets one held-back concept
    (uniform over the 11) in its slot, a slot their captions then leave out.

    Why: a real LoRA teaches a word for something its base model can already draw (SD1.5 has seen polka-dot
    gowns, never the word "polkagown"). A base that never saw a held-back combination cannot draw it even when
    it is named in its own words (docs/toy-world.md "Measured quality", the `--named` row), so its LoRA has to teach the
    UNet a new picture, not a word. Shown unnamed, the combination is drawable and still never named.
    The generic specs and the renders' random stream do not depend on the share (a separate generator picks
    the scenes), so a share of 0 gives the plain pool.
    """
    rng = np.random.default_rng(seed)
    specs = [world.sample_generic_spec(rng) for _ in range(count)]
    if not 0 <= unnamed_held_back <= 1:
        raise ValueError(f"render_pool: unnamed_held_back must be a share in [0, 1], got {unnamed_held_back}")
    unnamed: list[tuple[str, ...]] = [() for _ in specs]
    if unnamed_held_back > 0:
        pick = np.random.default_rng([seed, 1])
        for index in np.flatnonzero(pick.random(count) < unnamed_held_back):
            concept = world.CONCEPTS[int(pick.integers(len(world.CONCEPTS)))]
            specs[index] = world.with_concept(specs[index], concept.id)
            unnamed[index] = (concept.category,)
    rendered = [world.render_with_regions(spec, rng) for spec in specs]
    regions = torch.from_numpy(np.stack([np.stack([masks[c] for c in world.CATEGORIES]) for _, masks in rendered]))
    return Pool(to_model_range(np.stack([image for image, _ in rendered])), specs, unnamed, regions)


def region_pixel_weights(pool: Pool, region_weights: dict[str, float], size: int) -> torch.Tensor:
    """(N, 1, size, size) loss weights: 1, plus ``weight - 1`` on each listed slot's region (a pixel in two
    listed regions gets both), averaged down to latent resolution."""
    if pool.regions is None:
        raise ValueError("region_pixel_weights: the pool has no regions (render it with render_pool)")
    unknown = set(region_weights) - set(world.CATEGORIES)
    if unknown or any(weight <= 0 for weight in region_weights.values()):
        raise ValueError(f"region_weights: categories must be among {world.CATEGORIES} and weights > 0; got "
                         f"{region_weights}")
    weights = torch.ones(pool.regions.shape[0], 1, *pool.regions.shape[-2:])
    for category, weight in region_weights.items():
        weights += (weight - 1.0) * pool.regions[:, world.CATEGORIES.index(category), None].float()
    return F.interpolate(weights, size=(size, size), mode="area")


def scene_sampling_weights(pool: Pool, attribute_weights: dict[tuple[str, str], float]) -> np.ndarray:
    """Each scene's probability of being drawn for a training batch: proportional to the product of the weights
    of the attribute values it shows ({("clothing", "dots"): 3.0} draws every scene with dots 3x as often)."""
    for (category, value), weight in attribute_weights.items():
        first, second = world.SLOT_ATTRIBUTES.get(category, ((), ()))
        if value not in (*first, *second) or weight <= 0:
            raise ValueError(f"attribute_weights: {(category, value)!r} must name a category of {world.CATEGORIES} "
                             f"and one of its attribute values, with a weight > 0; got {weight}")
    odds = np.ones(len(pool.specs))
    for index, spec in enumerate(pool.specs):
        for (category, value), weight in attribute_weights.items():
            if value in spec.slot(category):
                odds[index] *= weight
    return odds / odds.sum()


def to_model_range(arrays: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def build_text_encoder(vocab_size: int, tokenizer: Any) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def build_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=8, sample_size=world.SIZE,
        mid_block_add_attention=False,  # 16x16 self-attention costs more than it helps on 32x32 scenes
    )


def build_unet(attention_at_16: bool = False, heads: int = UNET_HEADS) -> Any:
    """The toy UNet; ``attention_at_16`` adds cross-attention at the full 16x16 latent level too (pilots)."""
    from diffusers import UNet2DConditionModel

    first_down, last_up = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") if attention_at_16 else ("DownBlock2D", "UpBlock2D")
    return UNet2DConditionModel(
        sample_size=world.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=(first_down, "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", last_up),
        # diffusers reads attention_head_dim as the number of heads (a historical misnomer it keeps for SD1.5)
        cross_attention_dim=64, attention_head_dim=heads, norm_num_groups=16,
    )


def warmup_cosine_lr(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to a tenth of it."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_vae(pool: Pool, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0,
              log: Callable[[str], None] = print) -> Any:
    """Reconstruction + tiny KL; sets ``scaling_factor`` so latents have unit std (as SD's 0.18215 does)."""
    torch.manual_seed(seed)
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, lr)
        batch = pool.images[torch.randint(len(pool.images), (batch_size,), generator=generator)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            psnr = 10 * math.log10(4.0 / max(F.mse_loss(recon, batch).item(), 1e-10))
            log(f"  vae step {step + 1}/{steps} loss {loss.item():.4f} psnr {psnr:.1f} dB ({time.time() - start:.0f}s)")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in pool.images[:1024].split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


@torch.no_grad()
def vae_roundtrip(vae: Any, images: torch.Tensor) -> torch.Tensor:
    return torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample.clamp(-1, 1)
                      for chunk in images.split(256)])


def encode_captions(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def augment_caption(caption: str, rng: np.random.Generator, shuffle: bool, repeat: float,
                    offset: int = 0) -> str:
    """Shuffle the slot phrases after the leading "a picture", repeat each with probability ``repeat``, and
    put 0..``offset`` (uniform) extra comma tokens in front, which moves the whole caption on by that many
    positions while keeping its order.

    Why: with one fixed phrase order the text encoder ties each slot to absolute token positions, and a
    prompt whose trigger phrases are longer than the generic phrase they replace pushes the later slots to
    positions it never saw (measured: one extra character phrase, +4 tokens, drops clothing accuracy 0.92 ->
    0.25 and object 0.75 -> 0.10). Shuffled, repeated phrases put every phrase at many positions, up to
    the length of composition prompts; an offset does so without changing the order the phrases come in,
    so the encoder must find a slot by its words and neighbours, not by where it sits.
    """
    if offset < 0 or not 0 <= repeat <= 1:
        raise ValueError(f"augment_caption: offset must be >= 0 (got {offset}) and repeat a probability in "
                         f"[0, 1] (got {repeat})")
    if not caption:
        return caption
    first, *phrases = caption.split(", ")
    if shuffle:
        phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    if repeat > 0:
        phrases = [copy for phrase in phrases for copy in [phrase] * (2 if rng.random() < repeat else 1)]
    lead = ", " * int(rng.integers(offset + 1)) if offset > 0 else ""
    return lead + ", ".join([first, *phrases])


def train_unet(pool: Pool, vae: Any, tokenizer: Any, steps: int, batch_size: int = 64, lr: float = 1e-3,
               seed: int = 0, drop_slot: float = 0.25, drop_caption: float = 0.1,
               phrase_shuffle: bool = False, phrase_repeat: float = 0.0, phrase_offset: int = 0,
               snr_gamma: float | None = None, ema: bool = False, noise_offset: float = 0.0,
               schedule: dict | None = None, attention_at_16: bool = False,
               region_weights: dict[str, float] | None = None,
               attribute_weights: dict[tuple[str, str], float] | None = None,
               log: Callable[[str], None] = print,
               on_snapshot: Callable[[int, Any, Any], None] | None = None, snapshot_every: int = 0,
               on_step: Callable[[int], None] | None = None,
               ) -> tuple[Any, Any]:
    """Train UNet + text encoder jointly (SD1.5 noise schedule and epsilon prediction unless ``schedule``, a
    DDPMScheduler config, says otherwise).

    ``phrase_shuffle`` / ``phrase_repeat`` / ``phrase_offset``: caption augmentation (``augment_caption``).
    ``snr_gamma``: Min-SNR loss weighting (``harness.training.losses``). ``noise_offset``: per-channel offset
    noise, which hides the image's mean colour from the model at high noise (see ``harness.toy.build``).
    ``region_weights`` ({category: weight}) weights the loss per latent pixel by the slots' regions
    (``region_pixel_weights``), so small regions (the icon, the clothing pattern) are learnt sooner.
    ``attribute_weights`` ({(category, attribute value): weight}) draws the scenes that show a value that many
    times as often (``scene_sampling_weights``): for a variant the model learns late, such as dots.
    ``ema`` returns an exponential moving average of the weights (diffusers' EMAModel with warm-up), the usual
    way to get clean samples from a short, high-learning-rate run; snapshots hold the raw weights.

    ``on_snapshot(step, unet, text_encoder)`` is called every ``snapshot_every`` steps (e.g. to save a
    provisional pipeline that LoRA settings can be tried on while training goes on).
    ``on_step(step)`` is called after every step (the toy build uses it to take a core that became free).
    """
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel


    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    unet, text_encoder = build_unet(attention_at_16), build_text_encoder(len(tokenizer), tokenizer)
    noise_scheduler = DDPMScheduler(**(schedule or SD15_SCHEDULE))
    with torch.no_grad():  # the pool's latent posteriors, computed once
        moments = [vae.encode(chunk).latent_dist for chunk in pool.images.split(256)]
        means = torch.cat([m.mean for m in moments])
        stds = torch.cat([m.std for m in moments])
    scale = vae.config.scaling_factor
    pixel_weights = region_pixel_weights(pool, region_weights, means.shape[-1]) if region_weights else None
    scene_odds = scene_sampling_weights(pool, attribute_weights) if attribute_weights else None
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    average = EMAModel(params, decay=0.9999, use_ema_warmup=True) if ema else None
    unet.train()
    text_encoder.train()
    start = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine_lr(step, steps, lr)
        if scene_odds is None:  # uniform draws stay as they were, so an unweighted base is unchanged
            index = torch.from_numpy(rng.integers(len(pool.specs), size=batch_size))
        else:
            index = torch.from_numpy(rng.choice(len(pool.specs), size=batch_size, p=scene_odds))
        latents = (means[index] + stds[index] * torch.randn_like(means[index])) * scale
        captions = ["" if rng.random() < drop_caption else world.caption(pool.specs[i], rng, drop_slot,
                                                                        omit=pool.omitted(i))
                    for i in index.tolist()]
        if phrase_shuffle or phrase_repeat or phrase_offset:
            captions = [augment_caption(caption, rng, phrase_shuffle, phrase_repeat, phrase_offset)
                        for caption in captions]
        hidden = text_encoder(encode_captions(tokenizer, captions))[0]
        noise = torch.randn_like(latents)
        if noise_offset:
            noise = noise + noise_offset * torch.randn(batch_size, latents.shape[1], 1, 1)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,))
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=hidden).sample
        loss = denoising_loss(noise_scheduler, prediction, latents, noise, timesteps, snr_gamma,
                              pixel_weights[index] if pixel_weights is not None else None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if average is not None:
            average.step(params)
        if on_snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0 and step + 1 < steps:
            on_snapshot(step + 1, unet.eval(), text_encoder.eval())
            unet.train()
            text_encoder.train()
        if on_step is not None:
            on_step(step + 1)
        if step % max(1, steps // 20) == 0 or step == steps - 1:
            log(f"  unet step {step + 1}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f}s)")
    if average is not None:
        average.copy_to(params)
    return unet.eval(), text_encoder.eval()


def save_pipeline(folder: str | Path, vae: Any, unet: Any, text_encoder: Any, tokenizer: Any,
                  schedule: dict | None = None) -> Path:
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    if schedule is None:
        scheduler = DPMSolverMultistepScheduler(**SD15_SCHEDULE, steps_offset=1, algorithm_type="dpmsolver++")
    else:  # e.g. zero terminal SNR: sampling must start at the last training step ("trailing")
        scheduler = DPMSolverMultistepScheduler(**schedule, algorithm_type="dpmsolver++", timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return Path(folder)
