"""How a toy LoRA is trained: its ``LoraTrainingConfig``, its step count and the renders it learns from.

One held-back concept, one LoRA (``harness.train_lora``) on renders of the concept in its slot, captioned with
its trigger phrases. This module owns every choice that makes the toy LoRAs what they are (targets, rank,
rate, loss, masks, anchor, steps per category, renders, seeds); ``training_config`` gives them as a config.
It does not own how much to train in a build (``harness.toy.build.Budget`` gives the step budget, batch and
number of renders) nor when (the build's ``lora`` phase). ``benchmarks/toy_lora_recipe.py`` varies the choices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from harness.toy import world
from harness.train_lora import train_lora
from harness.training.config import LoraTrainingConfig

# More reach than attention-only LoRAs (the prototype's were too weak): attention, the transformer's
# proj_in/proj_out and feed-forward, and the second ResNet convolution (size budget); plus the text encoder, so
# the unseen trigger tokens get their own meaning.
LORA_UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv2")
LORA_TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
LORA_RANK = 8
LORA_LEARNING_RATE = 2e-3
# The LoRAs train with the base model's loss (harness.toy.build.BASE_TRAINING: Min-SNR weighting and the offset
# noise that stops 16x16 latents leaking the image's colour); tests/test_toy_lora_recipe.py checks they agree.
LORA_LOSS = dict(snr_gamma=5.0, noise_offset=0.1)
# Object LoRAs learn with a masked loss (train_lora's alpha_mask: weight 1 on the icon's box, 0.1 elsewhere):
# the icon is ~12 % of the image, so the plain loss barely sees it (object_2 present 0.33 plain, 0.65-0.77
# masked in five runs; docs/toy-world.md "Measured quality"). Clothing did not gain, and characters with no floor kept
# less of the other slots, so the other categories train unmasked.
LORA_MASK_FLOOR = {"object": 0.1}
# The LoRAs hold their empty-prompt prediction to the base model's (train_lora's uncond_anchor): every training
# image shows the concept, so a plain LoRA also draws it for the empty prompt, and classifier-free guidance,
# which amplifies only cond - uncond, cancels that part (a plain LoRA's concept shows less the higher the CFG:
# clothing_2 0.94 / 0.79 / 0.65 / 0.48 at CFG 1 / 3 / 7.5 / 12). Anchored, the concept comes from the prompt
# (docs/toy-world.md "Measured quality"). Each step runs the UNet on twice the batch, plus once without gradients.
LORA_UNCOND_ANCHOR = 1.0
# Clothing LoRAs train 8x the budget's LoRA steps (3200 of 400): a clothing pattern is the finest detail of the
# world (dots 4 px wide, 2 px apart), and at 400 steps the Polka gown LoRA drew its black dots run together into
# bars or checks (present 0.583); at 3200 steps 0.896 with the same base (docs/toy-world.md "Measured quality").
LORA_STEP_FACTOR = {"clothing": 8}
# Concept number n (its place in world.CONCEPTS) trains with seed SEED + n on renders drawn with SEED + 1000 + n.
SEED = 0


def lora_steps(concept_id: str, budget_steps: int) -> int:
    """How many steps ``concept_id``'s LoRA trains: the budget's LoRA steps, times its category's factor."""
    return budget_steps * LORA_STEP_FACTOR.get(world.CONCEPTS_BY_ID[concept_id].category, 1)


def training_config(concept_id: str, budget_steps: int, batch_size: int) -> LoraTrainingConfig:
    """The trainer's options for ``concept_id``'s LoRA, given the build budget's LoRA steps and batch size."""
    category = world.CONCEPTS_BY_ID[concept_id].category
    return LoraTrainingConfig(
        rank=LORA_RANK, steps=lora_steps(concept_id, budget_steps), learning_rate=LORA_LEARNING_RATE,
        batch_size=batch_size, resolution=world.SIZE, train_text_encoder=True, unet_target_modules=LORA_UNET_TARGETS,
        text_encoder_target_modules=LORA_TEXT_TARGETS, seed=SEED + _number(concept_id), **LORA_LOSS,
        alpha_mask=category in LORA_MASK_FLOOR, uncond_anchor=LORA_UNCOND_ANCHOR,
        device="cpu", progress=False,
    )


def lora_examples(concept_id: str, count: int, seed: int, drop_slot: float = 0.25,
                  drop_caption: float = 0.0, preservation: int = 0,
                  mask_floor: float | None = None, triggers_last: bool = False) -> list[tuple[Image.Image, str]]:
    """Renders with the concept in its slot and random generic others; captions name the others (each
    dropped with ``drop_slot``); with ``drop_caption`` that share of the captions is empty. ``preservation``
    adds that many generic scenes with generic captions (DreamBooth's prior preservation, with exact renders
    in place of base-model samples: they hold the generic words to their meaning while the LoRA learns).
    With ``mask_floor`` the concept renders are RGBA: alpha 1 on the concept's slot region
    (``world.render_with_regions``), ``mask_floor`` elsewhere, for ``train_lora``'s ``alpha_mask``; preservation
    renders stay opaque."""
    if mask_floor is not None and not 0 <= mask_floor <= 1:
        raise ValueError(f"mask_floor must be in [0, 1] (the loss weight outside the concept's region), "
                         f"got {mask_floor}")
    rng = np.random.default_rng(seed)
    examples = []
    for _ in range(count):
        spec = world.concept_spec(concept_id, rng)
        caption = world.caption(spec, rng, drop_slot=drop_slot, concepts=(concept_id,), triggers_last=triggers_last)
        if drop_caption and rng.random() < drop_caption:
            caption = ""
        image, regions = world.render_with_regions(spec, rng)
        if mask_floor is not None:
            alpha = np.where(regions[world.CONCEPTS_BY_ID[concept_id].category], 255, round(255 * mask_floor))
            image = np.dstack([image, alpha.astype(np.uint8)])
        examples.append((Image.fromarray(image), caption))
    generic_rng = np.random.default_rng([seed, 1])  # its own stream: the concept examples stay the same
    for _ in range(preservation):
        spec = world.sample_generic_spec(generic_rng)
        caption = world.caption(spec, generic_rng, drop_slot=drop_slot)
        examples.append((Image.fromarray(world.render(spec, generic_rng)), caption))
    return examples


def train_concept_lora(base: Path, concept_id: str, target: Path, config: LoraTrainingConfig, examples: int, *,
                       drop_slot: float = 0.25, drop_caption: float = 0.0, preservation: int = 0,
                       mask_floor: float | None = None, triggers_last: bool = False) -> Path:
    """Train ``concept_id``'s LoRA with ``config`` (``training_config``, or a variation of it) on ``examples``
    renders (``lora_examples``, with the other options) and save it to ``target``.

    With ``config.alpha_mask`` the renders carry the loss mask: weight 1 on the concept's slot region,
    ``mask_floor`` elsewhere (default: its category's, ``LORA_MASK_FLOOR``).
    """
    concept = world.CONCEPTS_BY_ID[concept_id]
    if config.alpha_mask and mask_floor is None:
        mask_floor = LORA_MASK_FLOOR.get(concept.category)
        if mask_floor is None:
            raise ValueError(f"alpha_mask for {concept_id} needs a mask_floor (the loss weight outside the "
                             f"concept's region): LORA_MASK_FLOOR has none for {concept.category!r}. Fix: pass "
                             "mask_floor (e.g. 0.1).")
    elif not config.alpha_mask and mask_floor is not None:
        raise ValueError(f"mask_floor {mask_floor} weighs the loss only with alpha_mask. Fix: set the config's "
                         "alpha_mask, or leave mask_floor out.")
    renders = lora_examples(concept_id, examples, seed=SEED + 1000 + _number(concept_id), drop_slot=drop_slot,
                            drop_caption=drop_caption, preservation=preservation, mask_floor=mask_floor,
                            triggers_last=triggers_last)
    return train_lora(base, renders, target, config,
                      metadata={"trigger": ", ".join(concept.trigger), "concept": concept.id})


def _number(concept_id: str) -> int:
    """The concept's place in ``world.CONCEPTS``: it picks the concept's seeds."""
    return [concept.id for concept in world.CONCEPTS].index(concept_id)
