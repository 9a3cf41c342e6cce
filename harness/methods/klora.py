"""K-LoRA (Ouyang et al., CVPR 2025; code github.com/HVision-NKU/K-LoRA, ``klora.py``, ``utils.py``): every
LoRA layer, at every step, uses exactly one LoRA of the set, chosen by its largest weights. Specification:
shared reference ``methods.md``.

For two LoRAs, subject c (the set's first, the character) and s, per layer with ΔW = B·A:

    S_c, S_s = sum of the K largest |ΔW_c|, |ΔW_s| entries (K = 64)
    γ = mean over layers of Σ|ΔW_c| / Σ|ΔW_s|          (computed once per set)
    scale(τ) = α·τ + β   (α = 1.5, β = 0.5),  τ = i / T at step i (the real step fraction)
    the layer uses ΔW_c if S_c / γ > S_s · scale(τ), else ΔW_s (at full LoRA scale, never a blend)

S and γ depend only on the weights, so the choices are known before sampling: the plan is one pass per step
whose ``LayerRouting`` gives each layer its LoRA, recorded in the metadata with the rest of the plan.

N > 2 (our rule, the sources define none): each other LoRA k is brought to the subject's scale with its own
γ_k = mean over layers of Σ|ΔW_1| / Σ|ΔW_k| and scored γ_k · S_k · scale(τ); the subject scores S_1. The largest
score wins the layer; the subject needs to beat every other strictly (as in the two-LoRA rule), and among
the others a tie goes to the earlier in set order. For N = 2 this is exactly the rule above. A layer that a
LoRA does not adapt gives it S = 0; γ_k is averaged over the layers both adapt.

Where we differ from the released code: it counts layer calls to estimate τ (``calls mod 28000``, its SDXL
layer count × 50 steps); we use i / T. Its LoRAs adapt only the attention projections (to_q, to_k, to_v,
to_out.0); the rule here covers every layer the set's LoRAs adapt (the same thing on such LoRAs). Its
chosen ΔW is added at scale 1; here at the testbed's LoRA scale. The prompt is encoded with every LoRA's
text-encoder part at the LoRA scale (as Composite; the released LoRAs have none). Cost: one UNet evaluation
per step, like Merge.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.methods.base import METHODS, CompositionMethod, ImageContext, ImagePlan, LayerRouting, Pass, StepPlan


def top_k_sum(delta: torch.Tensor, k: int) -> float:
    """Sum of the ``k`` largest |entries| of ``delta`` (all of them if it has fewer)."""
    values = delta.abs().flatten()
    return float(values.topk(min(k, values.numel())).values.sum())


def subject_ratios(deltas: list[dict[str, torch.Tensor]]) -> list[float]:
    """γ_k = mean over the layers LoRA 1 and LoRA k both adapt of Σ|ΔW_1| / Σ|ΔW_k| (γ_1 = 1)."""
    ratios = [1.0]
    for other in deltas[1:]:
        shared = [layer for layer in deltas[0] if layer in other and float(other[layer].abs().sum()) > 0]
        if not shared:
            ratios.append(1.0)
            continue
        ratios.append(sum(float(deltas[0][layer].abs().sum()) / float(other[layer].abs().sum())
                          for layer in shared) / len(shared))
    return ratios


def layer_choice(top_sums: list[float], ratios: list[float], scale: float) -> int:
    """Index of the LoRA a layer uses: the subject (0) if S_1 > γ_k S_k scale for every k, else the best other."""
    if len(top_sums) == 1:
        return 0
    others = [ratios[k] * top_sums[k] * scale for k in range(1, len(top_sums))]
    best = max(range(len(others)), key=lambda index: (others[index], -index))
    return 0 if top_sums[0] > others[best] else best + 1


@METHODS.register("klora")
class KLoRA(CompositionMethod):
    """Per layer and step one LoRA: the subject's top-K |ΔW| sum over γ against the other's times α·τ + β.
    Source: Ouyang et al., CVPR 2025 (github.com/HVision-NKU/K-LoRA); N > 2 rule ours (see the module)."""

    def __init__(self, top_k: int = 64, alpha: float = 1.5, beta: float = 0.5, **settings: Any) -> None:
        super().__init__(top_k=top_k, alpha=alpha, beta=beta, **settings)
        self.top_k, self.alpha, self.beta = int(top_k), float(alpha), float(beta)

    def prepare(self, context: ImageContext) -> ImagePlan:
        if context.lora_deltas is None:
            raise ValueError("klora needs the LoRAs' weights: ImageContext.lora_deltas is not set")
        ids = context.adapter_ids
        deltas = [context.lora_deltas(adapter) for adapter in ids]
        layers = sorted(set().union(*deltas))
        top_sums = {layer: [top_k_sum(delta[layer], self.top_k) if layer in delta else 0.0 for delta in deltas]
                    for layer in layers}
        ratios = subject_ratios(deltas)
        adapters = {adapter: context.lora_scale for adapter in ids}
        steps, routings = [], {}
        for step in range(context.steps):
            scale = self.alpha * step / context.steps + self.beta
            chosen = tuple(ids[layer_choice(top_sums[layer], ratios, scale)] for layer in layers)
            routing = routings.setdefault(chosen, LayerRouting(tuple(layers), chosen))
            steps.append(StepPlan((Pass.of(adapters, routing=routing),), (1.0,)))
        return ImagePlan(dict(adapters), steps, notes={"gamma": dict(zip(ids, [round(r, 6) for r in ratios]))})
