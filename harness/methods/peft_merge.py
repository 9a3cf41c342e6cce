"""Merge baselines from peft: one adapter built from the set's with ``add_weighted_adapter``, then run like Merge.

    W = W0 + merge_type({λ ΔW_k})       one UNet pass per step; the text encoder gets the same merge

``merge_cat`` (``cat``: A's and B's stacked, exactly λ Σ_k ΔW_k at rank Σ r_k) reproduces Merge and is the check
that the machinery is right; ``merge_svd`` (``svd``: Σ λ ΔW_k truncated to ``svd_rank`` by SVD),
``merge_ties`` (``ties_svd``: TIES trim to ``density``, sign election, disjoint mean, then SVD) and
``merge_dare`` (``dare_ties_svd``: DARE random drop to ``density`` with rescaling, TIES sign election, then
SVD; the drop is seeded by ``seed``). ``svd_rank: null`` = the largest rank of the set's LoRAs (peft's default).
Source: peft (Mangrulkar et al.), ``LoraModel.add_weighted_adapter``; TIES (Yadav et al., NeurIPS 2023),
DARE (Yu et al., ICML 2024). Cost: one UNet evaluation per step, plus one merge per set (recorded as
``merge_seconds`` in the first image's plan).
"""

from __future__ import annotations

from typing import Any

from harness.lora import MergedAdapter
from harness.methods.base import METHODS, CompositionMethod, ImageContext, ImagePlan, Pass, StepPlan, same_step


class PeftMerge(CompositionMethod):
    """Shared by the peft merge baselines: which ``combination_type`` each uses is its class attribute."""

    combination_type = "svd"
    default_density: float | None = None  # TIES and DARE prune; ``cat`` and ``svd`` do not

    def __init__(self, density: float | None = None, svd_rank: int | None = None, seed: int = 0,
                 **settings: Any) -> None:
        density = self.default_density if density is None else density
        if density is not None and not 0 < float(density) <= 1:
            raise ValueError(f"density must be in (0, 1], got {density}")
        super().__init__(density=density, svd_rank=svd_rank, seed=seed, **settings)
        self.density = None if density is None else float(density)
        self.svd_rank = None if svd_rank is None else int(svd_rank)
        self.seed = int(seed)

    def prepare(self, context: ImageContext) -> ImagePlan:
        ids = context.adapter_ids
        merged = MergedAdapter(tuple(ids), tuple(context.lora_scale for _ in ids), self.combination_type,
                               self.svd_rank, self.density, self.seed)
        adapter = {merged.name: 1.0}  # the LoRA scale is inside the merge's weights
        return ImagePlan(dict(adapter), same_step(StepPlan((Pass.of(adapter),), (1.0,)), context.steps),
                         merged_adapters=(merged,))


@METHODS.register("merge_cat")
class MergeCat(PeftMerge):
    """peft ``cat``: A's and B's stacked, W = W0 + λ Σ_k ΔW_k exactly (the equality check against Merge)."""

    combination_type = "cat"


@METHODS.register("merge_svd")
class MergeSVD(PeftMerge):
    """peft ``svd``: λ Σ_k ΔW_k truncated to ``svd_rank`` by SVD."""

    combination_type = "svd"


@METHODS.register("merge_ties")
class MergeTIES(PeftMerge):
    """peft ``ties_svd``: TIES (trim to ``density``, elect signs, disjoint mean) of the λ ΔW_k, then SVD."""

    combination_type = "ties_svd"
    default_density = 0.5  # our choice; the YAML says so too


@METHODS.register("merge_dare")
class MergeDARE(PeftMerge):
    """peft ``dare_ties_svd``: DARE drop to ``density`` (seeded), TIES sign election, then SVD."""

    combination_type = "dare_ties_svd"
    default_density = 0.5  # our choice; the YAML says so too
