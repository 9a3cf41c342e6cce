"""CMLoRA: Cached Multi-LoRA composition (Zou et al., ICLR 2025; code github.com/Yqcca/CMLoRA,
``LoRA_Cache/pipelines/stable_diffusion/pipeline_offline.py``). Specification: shared reference ``methods.md``.

A weighted Composite whose *dominant* LoRA rotates. Group H (character, clothing, style, object, in set
order) rotates first; the background joins the rotation after step ``background_join``·T. At each refresh
step the next LoRA of the rotation becomes dominant. Per step, with N LoRAs, c = N − 0.5:

    w_dom = c · w_non,   w_non = N / (c + N − 1)        (so Σ w = N)
    ū = Σ w_k ε_k(x, ∅) / Σ w_k,   c̄ = Σ w_k ε_k(x, c) / Σ w_k,   ε = ū + s (c̄ − ū)

(the released code takes the plain mean of w_k ε_k over N; with Σ w = N that is the same number).
Refresh steps (``cache_interval``): 1 = every step, c ≥ 2 = every c-th step, 0 = non-uniform (every 2nd step in
[0, 0.375T), every 3rd in [0.375T, 0.875T), every 2nd in [0.875T, T)).

``cache: true`` (the speed-up, an approximation): step 0 runs every LoRA in full; afterwards the dominant LoRA
runs in full and keeps its deep UNet features, the others run only the shallow path on the features of their
last full pass (``harness.deepcache``). ``dominant: at_refresh`` runs the dominant LoRA in full only at the
refresh step that made it dominant, as the released code does. ``cache: false`` is exactly the weighted
Composite above (tested). Cost: N UNet evaluations per step; with the cache, 1 full + (N − 1) shallow.
"""

from __future__ import annotations

from typing import Any

from harness.methods.base import FULL, METHODS, REUSE, STORE, CompositionMethod, ImageContext, ImagePlan, Pass, StepPlan

DOMINANT = ("full", "at_refresh")


def refresh_steps(steps: int, cache_interval: int) -> list[int]:
    """The steps at which the dominant LoRA changes (and, with ``at_refresh``, its features are refreshed)."""
    if cache_interval < 0:
        raise ValueError(f"cache_interval must be 0 (non-uniform), 1 or more, got {cache_interval}")
    if cache_interval == 0:  # the released code's non-uniform schedule
        first, second = int(0.375 * steps), int(0.875 * steps)
        return sorted(set(range(0, first, 2)) | set(range(first, second, 3)) | set(range(second, steps, 2)))
    return list(range(0, steps, cache_interval))


def dominant_weights(count: int) -> tuple[float, float]:
    """(w_dom, w_non) for ``count`` LoRAs: c = N − 0.5, w_non = N / (c + N − 1), w_dom = c · w_non."""
    coefficient = count - 0.5
    non_dominant = count / (coefficient + count - 1)
    return coefficient * non_dominant, non_dominant


def dominant_schedule(categories: list[str], steps: int, cache_interval: int, background_join: float) -> list[int]:
    """Index (in set order) of the dominant LoRA at every step.

    The rotation is group H (every category but background, set order) until step ``background_join``·T, then
    H followed by the background LoRAs (the released code's ``i <= 120`` at T = 200 keeps H only up to and
    including step 0.6·T). The r-th refresh step makes entry (r − 1) of the rotation in force dominant."""
    high = [index for index, category in enumerate(categories) if category != "background"]
    low = [index for index, category in enumerate(categories) if category == "background"]
    if not high:
        high, low = low, []
    refreshes = set(refresh_steps(steps, cache_interval))
    schedule, refreshed = [], 0
    for step in range(steps):
        refreshed += step in refreshes
        rotation = high + low if low and step > background_join * steps else high
        schedule.append(rotation[(refreshed - 1) % len(rotation)])
    return schedule


@METHODS.register("cmlora")
class CMLoRA(CompositionMethod):
    """Weighted Composite with a rotating dominant LoRA (w_dom = (N − 0.5) w_non, Σ w = N), background joining
    the rotation after 0.6·T, optional DeepCache-style feature cache for the non-dominant LoRAs.
    Source: Zou et al., ICLR 2025 (github.com/Yqcca/CMLoRA); see this module's docstring."""

    def __init__(self, cache_interval: int = 2, cache: bool = True, background_join: float = 0.6,
                 dominant: str = "full", **settings: Any) -> None:
        if dominant not in DOMINANT:
            raise ValueError(f"dominant must be one of {DOMINANT}, got {dominant!r}")
        refresh_steps(1, int(cache_interval))  # validates
        super().__init__(cache_interval=cache_interval, cache=cache, background_join=background_join,
                         dominant=dominant, **settings)
        self.cache_interval, self.cache = int(cache_interval), bool(cache)
        self.background_join, self.dominant = float(background_join), dominant

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        scale = context.lora_scale
        schedule = dominant_schedule([lora.category for lora in context.loras], context.steps,
                                     self.cache_interval, self.background_join)
        refreshes = set(refresh_steps(context.steps, self.cache_interval))
        dominant_weight, other_weight = dominant_weights(len(ids))
        total = dominant_weight + (len(ids) - 1) * other_weight
        steps = []
        for step, dominant in enumerate(schedule):
            weights = tuple((dominant_weight if k == dominant else other_weight) / total for k in range(len(ids)))
            passes = tuple(Pass.of({adapter: scale}, self._features(step, k == dominant, step in refreshes))
                           for k, adapter in enumerate(ids))
            steps.append(StepPlan(passes, weights))
        return ImagePlan({adapter: scale for adapter in ids}, steps,
                         notes={"dominant": [ids[k] for k in schedule],
                                "refresh_steps": sorted(refreshes)})

    def _features(self, step: int, dominant: bool, refresh: bool) -> str:
        if not self.cache:
            return FULL
        if step == 0 or (dominant and (self.dominant == "full" or refresh)):
            return STORE
        return REUSE
