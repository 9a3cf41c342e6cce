"""The built-in composition methods (see shared reference ``methods.md`` for what each computes)."""

from __future__ import annotations

import logging

from harness.methods.base import (METHODS, CompositionMethod, ImageContext, ImagePlan, Pass, StepPlan,
                                  one_adapter_steps, per_adapter_steps, same_step)
from harness.methods.importance import (
    PAW_FLOOR, paw_from_importance, prompt_ablation_importance, ptw_from_similarity, trigger_similarity,
)
from harness.methods.schedules import switch_schedule, w_switch_schedule

log = logging.getLogger("harness.methods")
_warned: set[tuple[str, str]] = set()


def warn_once(method: str, kind: str, note: str) -> None:
    """One console line per method and kind of degenerate plan per process; every image keeps its own note."""
    if (method, kind) not in _warned:
        _warned.add((method, kind))
        log.warning("%s plan degenerates (said once; each image's metadata has a note): %s", method, note)


def degenerate_notes(method: str, ids: list[str], order: list[int], steps: int, interval: int) -> dict[str, str]:
    """A Switch-style schedule in which some LoRA never runs says so (a warning and a note in the metadata)."""
    unused = [ids[k] for k in range(len(ids)) if k not in set(order)]
    if not unused:
        return {}
    note = (f"{len(unused)} of {len(ids)} LoRAs never run ({', '.join(unused)}): {steps} steps with interval "
            f"{interval} reach only the first blocks of the rotation; use more steps or a smaller interval")
    warn_once(method, "unused", note)
    return {"degenerate": note}


@METHODS.register("base")
class Base(CompositionMethod):
    """No LoRA: the floor every method should beat."""

    def prepare(self, context: ImageContext) -> ImagePlan:
        return ImagePlan({}, same_step(StepPlan((Pass(),), (1.0,)), context.steps))


@METHODS.register("single")
class Single(CompositionMethod):
    """One LoRA of the set alone (``lora`` = its index in the set), UNet and text encoder."""

    def __init__(self, lora: int = 0, **settings) -> None:
        super().__init__(lora=lora, **settings)
        self.index = lora

    def prepare(self, context: ImageContext) -> ImagePlan:
        adapter = {context.adapter_ids[self.index]: context.lora_scale}
        return ImagePlan(adapter, same_step(StepPlan((Pass.of(adapter),), (1.0,)), context.steps))


@METHODS.register("merge")
class Merge(CompositionMethod):
    """All K adapters active at once: W = W0 + scale * sum_k dW_k (a sum, not an average)."""

    def prepare(self, context: ImageContext) -> ImagePlan:
        adapters = {adapter: context.lora_scale for adapter in context.adapter_ids}
        return ImagePlan(adapters, same_step(StepPlan((Pass.of(adapters),), (1.0,)), context.steps))


@METHODS.register("switch")
class Switch(CompositionMethod):
    """One adapter per step, rotating in set order every ``interval`` steps, starting with the character.
    The prompt is encoded once with only the first LoRA's text-encoder part active."""

    def __init__(self, interval: int = 5, timing: str = "reference", **settings) -> None:
        super().__init__(interval=interval, timing=timing, **settings)
        self.interval, self.timing = interval, timing

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        order = switch_schedule(len(ids), context.steps, self.interval, self.timing)
        return ImagePlan({ids[0]: context.lora_scale}, one_adapter_steps([ids[k] for k in order], context.lora_scale),
                         notes={"timing": self.timing,
                                **degenerate_notes(self.name, ids, order, context.steps, self.interval)})


@METHODS.register("composite")
class Composite(CompositionMethod):
    """K passes per step, one adapter each; uncond and cond halves averaged over k, guidance applied once.
    The prompt is encoded with every LoRA's text-encoder part merged at the LoRA scale."""

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        weights = [1.0 / len(ids)] * len(ids)
        return ImagePlan({adapter: context.lora_scale for adapter in ids},
                         per_adapter_steps(ids, weights, context.lora_scale, context.steps))


IMPORTANCE_TEXT_ENCODER = ("disabled", "as_left")


class PromptAware(CompositionMethod):
    """Shared by W-Switch and W-Composite: where v(p) comes from. ``disabled`` (default, deterministic):
    every text-encoder LoRA off. ``as_left``: the encoder as the previous image left it, which is what the
    released code does (weights then depend on call order); only for reproducing its exact numbers."""

    def __init__(self, importance_text_encoder: str = "disabled", **settings) -> None:
        if importance_text_encoder not in IMPORTANCE_TEXT_ENCODER:
            raise ValueError(f"importance_text_encoder must be one of {IMPORTANCE_TEXT_ENCODER}")
        super().__init__(importance_text_encoder=importance_text_encoder, **settings)
        self.importance_text_encoder = importance_text_encoder


@METHODS.register("w_switch")
class WSwitch(PromptAware):
    """Switch with block lengths from prompt-ablation weights (PAW) and a reserved character tail."""

    def __init__(self, interval: int = 5, timing: str = "reference", reserved_steps: int = 5, **settings) -> None:
        super().__init__(interval=interval, timing=timing, reserved_steps=reserved_steps, **settings)
        self.interval, self.timing, self.reserved_steps = interval, timing, reserved_steps

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        raw = prompt_ablation_importance(context.prompt, context.loras, context.embed_text)
        weights = paw_from_importance(raw)
        character = next((k for k, lora in enumerate(context.loras) if lora.category == "character"), 0)
        order = w_switch_schedule(weights, context.steps, self.interval, self.reserved_steps, character, self.timing)
        notes = {"timing": self.timing, "raw_importance": dict(zip(ids, raw)),
                 **degenerate_notes(self.name, ids, order, context.steps, self.interval)}
        if all(value < PAW_FLOOR for value in raw):
            note = f"every prompt-ablation importance is under the floor {PAW_FLOOR}: the weights are uniform"
            warn_once(self.name, "uniform", note)
            notes["degenerate_weights"] = note
        return ImagePlan({ids[0]: context.lora_scale}, one_adapter_steps([ids[k] for k in order], context.lora_scale),
                         importance=dict(zip(ids, weights)), notes=notes)


@METHODS.register("w_composite")
class WComposite(PromptAware):
    """Composite with prompt-trigger similarity weights (PTW): eps = sum_k w_k [u_k + s (c_k - u_k)]."""

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        raw = trigger_similarity(context.prompt, context.loras, context.embed_text)
        weights = ptw_from_similarity(raw)
        return ImagePlan({adapter: context.lora_scale for adapter in ids},
                         per_adapter_steps(ids, weights, context.lora_scale, context.steps),
                         importance=dict(zip(ids, weights)), notes={"raw_importance": dict(zip(ids, raw))})
