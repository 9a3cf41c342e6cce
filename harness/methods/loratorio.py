"""LoRAtorio (Foteinopoulou et al., arXiv 2508.11624): per-patch spatial weights from each LoRA's distance to
the base model. No public code was released; this is our implementation of the paper's description (shared
reference ``methods.md``), and the choices it leaves open are settings whose defaults are ours.

Per step, K+1 passes on [uncond, cond]: the base model ε_0 (no LoRA) and each LoRA alone ε_k. With the latent
cut into P×P patches p:

    s_{k,p} = cos(ε_k(x,c)[p], ε_0(x,c)[p])           (flattened over channels and the patch's pixels)
    Ω_{k,p} = softmin_k(s_{k,p} / T)                   (the LoRA that moves furthest from the base wins the patch)
    c̄ = Σ_k Ω_k ⊙ ε_k(x,c)
    ū = λ ε_0(x,∅) + (1 − λ) ū_LoRA,   ū_LoRA = mean_k ε_k(x,∅) (``uncond: mean``) or Σ_k Ω_k ⊙ ε_k(x,∅)
    ε = ū + s (c̄ − ū)

Dynamic variant (``top_k``): per step only the k LoRAs least similar to the base (mean of s_{k,p} over patches)
take part in Ω and ū_LoRA. Open choices and our defaults: ``patch_size`` P = 2 latent pixels, ``temperature`` T =
0.05, ``base_uncond`` λ = 0.5 (the paper's), ``uncond: mean``, ``top_k: null`` (all K). Cost: K + 1 UNet
evaluations per step.

To check it by eye: after an image, ``weight_maps`` holds Ω per step (K × rows × columns of patches), and
``weight_map_picture`` draws them (``benchmarks/loratorio_weight_maps.py`` does both for one toy image).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from harness.methods.base import METHODS, CompositionMethod, ImageContext, ImagePlan, Pass, StepPlan, same_step

UNCOND = ("mean", "weighted")


def patch_similarity(candidates: torch.Tensor, base: torch.Tensor, patch_size: int) -> torch.Tensor:
    """s[k, i, j]: cosine between ``candidates[k]`` and ``base`` over the channels and pixels of patch (i, j).

    ``candidates`` is [K, C, H, W], ``base`` [1, C, H, W]; H and W need not be multiples of the patch size (edge
    patches are smaller)."""
    dot = (candidates * base).sum(dim=1, keepdim=True)
    squared_candidates = candidates.pow(2).sum(dim=1, keepdim=True)
    squared_base = base.pow(2).sum(dim=1, keepdim=True).expand_as(squared_candidates)

    def patch_sum(values: torch.Tensor) -> torch.Tensor:  # a mean per patch: the count cancels in the cosine
        return F.avg_pool2d(values, patch_size, stride=patch_size, ceil_mode=True)[:, 0]

    norms = (patch_sum(squared_candidates) * patch_sum(squared_base)).sqrt().clamp_min(1e-12)
    return patch_sum(dot) / norms


def spread_patches(weights: torch.Tensor, height: int, width: int, patch_size: int) -> torch.Tensor:
    """[K, rows, columns] patch weights -> [K, 1, H, W] pixel weights (each patch's value over its pixels)."""
    pixels = weights.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    return pixels[:, None, :height, :width]


@METHODS.register("loratorio")
class LoRAtorio(CompositionMethod):
    """K+1 passes per step (base + each LoRA); per-patch SoftMin over the LoRAs' cosine to the base prediction
    weights the conditional predictions; the unconditional is re-centred on the base model's.
    Source: Foteinopoulou et al., arXiv 2508.11624 (no released code; open choices are ours, see the module)."""

    def __init__(self, patch_size: int = 2, temperature: float = 0.05, base_uncond: float = 0.5,
                 uncond: str = "mean", top_k: int | None = None, **settings: Any) -> None:
        if uncond not in UNCOND:
            raise ValueError(f"uncond must be one of {UNCOND}, got {uncond!r}")
        if int(patch_size) < 1 or float(temperature) <= 0:
            raise ValueError("patch_size must be >= 1 and temperature > 0")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be null (every LoRA) or >= 1, got {top_k}")
        super().__init__(patch_size=patch_size, temperature=temperature, base_uncond=base_uncond, uncond=uncond,
                         top_k=top_k, **settings)
        self.patch_size, self.temperature, self.base_uncond = int(patch_size), float(temperature), float(base_uncond)
        self.uncond, self.top_k = uncond, None if top_k is None else int(top_k)
        self.weight_maps: list[torch.Tensor] = []  # the last image's Ω per step: [K, rows, columns]
        self._notes: dict[str, Any] = {}

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        passes = (Pass(),) + tuple(Pass.of({adapter: context.lora_scale}) for adapter in ids)
        self.weight_maps = []
        # weights are decided per patch while sampling; their per-step means land in the notes
        self._notes = {"spatial_weights": "per patch at run time; mean_patch_weights = mean of Omega per step",
                       "mean_patch_weights": []}
        return ImagePlan({adapter: context.lora_scale for adapter in ids},
                         same_step(StepPlan(passes, ()), context.steps), notes=self._notes)

    def patch_weights(self, cond: torch.Tensor, base_cond: torch.Tensor) -> torch.Tensor:
        """Ω [K, rows, columns]: SoftMin over the LoRAs of s / T, LoRAs outside the top k (if set) at 0."""
        similarity = patch_similarity(cond, base_cond, self.patch_size)
        logits = -similarity / self.temperature
        if self.top_k is not None and self.top_k < len(cond):
            kept = similarity.mean(dim=(1, 2)).topk(self.top_k, largest=False).indices
            dropped = torch.ones(len(cond), dtype=torch.bool, device=cond.device)
            dropped[kept] = False
            logits[dropped] = float("-inf")
        return torch.softmax(logits, dim=0)

    def combine(self, step: StepPlan, predictions: list[tuple[torch.Tensor, torch.Tensor]],
                guidance_scale: float) -> torch.Tensor:
        (base_uncond, base_cond), loras = predictions[0], predictions[1:]
        uncond = torch.cat([u for u, _ in loras])  # [K, C, H, W]
        cond = torch.cat([c for _, c in loras])
        omega = self.patch_weights(cond, base_cond)
        pixels = spread_patches(omega, cond.shape[-2], cond.shape[-1], self.patch_size).to(cond.dtype)
        cond_mix = (pixels * cond).sum(dim=0, keepdim=True)
        if self.uncond == "weighted":
            lora_uncond = (pixels * uncond).sum(dim=0, keepdim=True)
        else:
            kept = omega.flatten(1).sum(dim=1) > 0
            lora_uncond = uncond[kept].mean(dim=0, keepdim=True)
        uncond_mix = self.base_uncond * base_uncond + (1 - self.base_uncond) * lora_uncond
        self.weight_maps.append(omega.detach().float().cpu())
        self._notes.setdefault("mean_patch_weights", []).append(
            [round(value, 4) for value in omega.flatten(1).mean(dim=1).tolist()])
        return uncond_mix + guidance_scale * (cond_mix - uncond_mix)


def weight_map_picture(weight_maps: list[torch.Tensor], names: list[str], cell: int = 48,
                       every: int = 1) -> Any:
    """A PIL picture of Ω: one row per step shown (every ``every``-th), one column per LoRA; black = 0, white = 1."""
    from PIL import Image, ImageDraw

    shown = weight_maps[::every]
    label_width, header = 40, 16
    picture = Image.new("L", (label_width + cell * len(names), header + cell * len(shown)), 255)
    draw = ImageDraw.Draw(picture)
    for column, name in enumerate(names):
        draw.text((label_width + column * cell + 2, 2), name[:8], fill=0)
    for row, omega in enumerate(shown):
        draw.text((2, header + row * cell + cell // 2 - 5), f"t{row * every}", fill=0)
        for column in range(len(names)):
            tile = Image.fromarray((omega[column].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
            picture.paste(tile.resize((cell - 2, cell - 2), Image.NEAREST),
                          (label_width + column * cell + 1, header + row * cell + 1))
    return picture
