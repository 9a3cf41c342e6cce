"""The method contract: per image, a method decides which adapters run at each step and how to combine.

The denoising loop (``harness.sampler``) reads ``ImagePlan.steps[i]``: a list of UNet passes (each pass runs
the [uncond, cond] batch with the given adapters active at the given scales) and the weights with which the
passes' predictions are averaged before classifier-free guidance is applied once::

    u = sum_p w_p * eps_p(x, negative)      c = sum_p w_p * eps_p(x, prompt)      eps = u + s * (c - u)

That one rule covers every built-in method: Merge and Switch are one pass per step, Composite is K passes
with w_p = 1/K, W-Composite K passes with prompt-aware w_p (linearity makes it equal to weighting each
pass's guided prediction). A method with another rule overrides ``combine`` (LoRAtorio: per-patch weights).

Three optional parts of a plan, each absent (and absent from the recorded plan) unless a method uses it:

- ``Pass.features`` (CMLoRA's cache): ``"store"`` = a full pass that keeps its deep UNet features for its
  adapters, ``"reuse"`` = a shallow pass that recomputes only the outer blocks on the features the last
  ``"store"`` pass of the same adapters kept (``harness.deepcache``).
- ``Pass.routing`` (K-LoRA): a ``LayerRouting`` that lets each LoRA layer of the UNet use one adapter of its own.
- ``ImagePlan.merged_adapters`` (peft merges): adapters the sampler builds from the set's before step 0
  (``harness.lora.MergedAdapter``); passes and the text encoder then name them like any adapter.
"""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from harness.io import stable_hash
from harness.lora import LoraSpec, MergedAdapter
from harness.registry import Registry

FULL, STORE, REUSE = "", "store", "reuse"  # Pass.features: a plain full pass, keep deep features, reuse them


@dataclass(frozen=True)
class LayerRouting:
    """Which one adapter each LoRA layer of the UNet uses in a pass: ``layers[i]`` uses ``adapters[i]`` at the
    pass's scale for it; a LoRA layer not listed uses none."""

    layers: tuple[str, ...]
    adapters: tuple[str, ...]

    @property
    def key(self) -> str:
        return stable_hash([self.layers, self.adapters], 10)

    def as_dict(self) -> dict[str, str]:
        return dict(zip(self.layers, self.adapters))

    def counts(self) -> dict[str, int]:
        return dict(Counter(self.adapters))


@dataclass(frozen=True)
class Pass:
    """One UNet pass over the [uncond, cond] batch with these adapters active (id -> LoRA scale).

    ``features`` (FULL, STORE, REUSE) and ``routing`` are optional: see the module docstring."""

    adapters: tuple[tuple[str, float], ...] = ()
    features: str = FULL
    routing: LayerRouting | None = None

    @staticmethod
    def of(adapters: dict[str, float], features: str = FULL, routing: LayerRouting | None = None) -> "Pass":
        if features not in (FULL, STORE, REUSE):
            raise ValueError(f"Pass.features must be one of {(FULL, STORE, REUSE)}, got {features!r}")
        return Pass(tuple(adapters.items()), features, routing)

    def as_dict(self) -> dict[str, float]:
        return dict(self.adapters)

    @property
    def feature_key(self) -> tuple:
        """Passes with the same key share stored deep features."""
        return (self.adapters, self.routing.key if self.routing else None)


@dataclass(frozen=True)
class StepPlan:
    passes: tuple[Pass, ...]
    weights: tuple[float, ...]

    def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = {"passes": [p.as_dict() for p in self.passes],
                                       "weights": [round(w, 6) for w in self.weights]}
        if any(p.features for p in self.passes):
            description["features"] = [p.features or "full" for p in self.passes]
        if any(p.routing for p in self.passes):
            description["routing"] = [p.routing.key if p.routing else None for p in self.passes]
        return description


@dataclass
class ImagePlan:
    """Everything a method decided for one image, recorded in its metadata."""

    text_encoder_adapters: dict[str, float]
    steps: list[StepPlan]
    importance: dict[str, float] | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    merged_adapters: tuple[MergedAdapter, ...] = ()

    def describe(self) -> dict[str, Any]:
        description: dict[str, Any] = {
            "text_encoder_adapters": self.text_encoder_adapters,
            "importance": self.importance,
            "schedule": [step.describe() for step in self.steps],
        }
        if self.merged_adapters:
            description["merged_adapters"] = [adapter.describe() for adapter in self.merged_adapters]
        routings = {p.routing.key: p.routing for step in self.steps for p in step.passes if p.routing}
        if routings:
            description["routings"] = describe_routings(list(routings.values()))
        return {**description, **self.notes}


def describe_routings(routings: list[LayerRouting]) -> dict[str, Any]:
    """Every routing of a plan, compactly: the layer and adapter lists once, each routing as adapter indices."""
    layers = sorted({layer for routing in routings for layer in routing.layers})
    adapters = sorted({adapter for routing in routings for adapter in routing.adapters})
    tables = {}
    for routing in routings:
        chosen = routing.as_dict()
        tables[routing.key] = {"counts": routing.counts(),
                               "choice": [adapters.index(chosen[layer]) if layer in chosen else None
                                          for layer in layers]}
    return {"layers": layers, "adapters": adapters, "tables": tables}


@dataclass
class ImageContext:
    """What a method may look at when it prepares an image."""

    loras: list[LoraSpec]  # in set order: character first, then clothing, style, background, object
    lora_scale: float
    prompt: str
    steps: int
    # pooled text embedding v(p) used by the prompt-aware weights: text encoder with every LoRA disabled
    embed_text: Callable[[str], torch.Tensor]
    # adapter id -> {UNet layer name: its weight delta dW = B A (alpha/r applied, LoRA scale not)} (K-LoRA)
    lora_deltas: Callable[[str], dict[str, torch.Tensor]] | None = None

    @property
    def adapter_ids(self) -> list[str]:
        return [lora.id for lora in self.loras]


class CompositionMethod:
    """Base class. Subclasses implement ``prepare``; settings arrive as keyword arguments from the config."""

    registered_name = "method"

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @property
    def name(self) -> str:
        return self.registered_name

    def prepare(self, context: ImageContext) -> ImagePlan:
        raise NotImplementedError

    def combine(
        self, step: StepPlan, predictions: list[tuple[torch.Tensor, torch.Tensor]], guidance_scale: float
    ) -> torch.Tensor:
        """Weighted mean of the passes' (uncond, cond) predictions, then guidance once."""
        uncond = sum(w * u for w, (u, _) in zip(step.weights, predictions))
        cond = sum(w * c for w, (_, c) in zip(step.weights, predictions))
        return uncond + guidance_scale * (cond - uncond)


METHODS: Registry[CompositionMethod] = Registry("method", "harness.methods")


def declared_settings(cls: type[CompositionMethod]) -> list[str]:
    """The settings a method class declares: the named keyword parameters of its ``__init__`` and its bases'."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.name != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                names.append(parameter.name)
    return sorted(set(names))


def build_method(name: str, settings: dict[str, Any]) -> CompositionMethod:
    """``METHODS.get(name)(**settings)``, refusing settings the method does not declare (a typo would be stored
    in the metadata and silently ignored)."""
    cls = METHODS.get(name)
    known = declared_settings(cls)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"method {name!r} has no setting {', '.join(unknown)}; its settings are "
                         f"{', '.join(known) or 'none'}. Fix: correct the name in conf/method/{name}.yaml or the "
                         f"override (method.<setting>=...).")
    return cls(**settings)


def same_step(plan: StepPlan, steps: int) -> list[StepPlan]:
    return [plan] * steps


def one_adapter_steps(adapter_per_step: list[str], scale: float) -> list[StepPlan]:
    """One pass per step with exactly one adapter active (Switch-style schedules)."""
    return [StepPlan((Pass.of({adapter: scale}),), (1.0,)) for adapter in adapter_per_step]


def per_adapter_steps(adapter_ids: list[str], weights: list[float], scale: float, steps: int) -> list[StepPlan]:
    """K passes per step, one adapter each, combined with fixed weights (Composite-style)."""
    plan = StepPlan(tuple(Pass.of({adapter: scale}) for adapter in adapter_ids), tuple(weights))
    return same_step(plan, steps)
