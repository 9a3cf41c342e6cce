"""peft merge baselines: merge_cat reproduces Merge's images; svd and TIES merges against an independent
computation of their deltas; DARE is seeded."""

from pathlib import Path

import numpy as np
import pytest
import torch

from harness.lora import AdapterCache, LoraSpec, MergedAdapter, adapter_deltas, build_merged_adapter
from harness.methods import METHODS, ImageContext
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings

SETTINGS = SamplingSettings(steps=5, guidance_scale=7.5, height=32, width=32)


def specs_of(folder: Path) -> list[LoraSpec]:
    return [LoraSpec(i, i, c, (f"trig {i}",), folder / "lora" / f"{i}.safetensors")
            for i, c in [("character_1", "character"), ("clothing_1", "clothing"), ("style_1", "style")]]


@pytest.fixture(scope="module")
def loaded(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = specs_of(tiny_testbed_dir)
    AdapterCache(pipe).ensure(specs)
    return pipe, specs


@torch.no_grad()
def test_merge_cat_reproduces_merge_images(loaded):
    pipe, specs = loaded
    images = {}
    for name in ("merge", "merge_cat", "merge_svd"):
        sampler = Sampler(pipe)
        context = ImageContext(specs, 0.8, "a picture, trig x", SETTINGS.steps, sampler.embed_without_loras)
        image, plan = sampler.generate(METHODS.get(name)(), context, "blurry", SETTINGS, 4)
        images[name] = np.asarray(image, dtype=np.int16)
        if name != "merge":
            assert plan.describe()["merged_adapters"][0]["sources"] == [s.id for s in specs]
            assert sampler.evaluations == {"full": SETTINGS.steps}
    assert np.abs(images["merge_cat"] - images["merge"]).max() <= 1  # float rounding of uint8 pixels at most
    assert np.abs(images["merge_svd"] - images["merge"]).max() > 1  # rank 4 < 12: the truncation shows


def weighted_sum(pipe, specs, layer: str) -> torch.Tensor:
    return sum(0.8 * adapter_deltas(pipe.unet, s.id)[layer] for s in specs)


def test_svd_merge_is_the_best_rank_r_approximation(loaded):
    pipe, specs = loaded
    recipe = MergedAdapter(tuple(s.id for s in specs), (0.8,) * 3, "svd", svd_rank=3)
    build_merged_adapter(pipe, recipe)
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    merged = adapter_deltas(pipe.unet, recipe.name)[layer]
    u, s, vh = torch.linalg.svd(weighted_sum(pipe, specs, layer))
    torch.testing.assert_close(merged, u[:, :3] @ torch.diag(s[:3]) @ vh[:3], atol=1e-5, rtol=1e-4)
    assert "text_encoder" in {part for part, names in pipe.get_list_adapters().items() if recipe.name in names}
    pipe.delete_adapters(recipe.name)


def test_ties_merge_matches_a_hand_written_ties(loaded):
    pipe, specs = loaded
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # 32 x 32: rank 32 keeps it whole
    recipe = MergedAdapter(tuple(s.id for s in specs), (0.8,) * 3, "ties_svd", svd_rank=32, density=0.5)
    build_merged_adapter(pipe, recipe)
    merged = adapter_deltas(pipe.unet, recipe.name)[layer]
    deltas = [adapter_deltas(pipe.unet, s.id)[layer] for s in specs]
    trimmed = []
    for delta in deltas:  # keep the int(0.5 * numel) largest magnitudes of each delta
        keep = int(0.5 * delta.numel())
        threshold = delta.abs().flatten().sort(descending=True).values[keep - 1]
        trimmed.append(torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta)))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(dim=0) >= 0, 1.0, -1.0)  # elected sign: of the total
    agree = (torch.sign(stacked) == sign) & (stacked != 0)
    expected = (0.8 * stacked * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    torch.testing.assert_close(merged, expected, atol=1e-5, rtol=1e-4)
    pipe.delete_adapters(recipe.name)


def test_dare_drop_is_seeded(loaded):
    pipe, specs = loaded
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    built = {}
    for seed in (0, 0, 1):
        recipe = MergedAdapter(tuple(s.id for s in specs), (0.8,) * 3, "dare_ties_svd", density=0.5, seed=seed)
        build_merged_adapter(pipe, recipe)
        built.setdefault(seed, []).append(adapter_deltas(pipe.unet, recipe.name)[layer])
        pipe.delete_adapters(recipe.name)
    torch.testing.assert_close(built[0][0], built[0][1])
    assert (built[0][0] - built[1][0]).abs().max() > 1e-4


def test_merge_settings_and_recipe_names():
    first = MergedAdapter(("a", "b"), (0.8, 0.8), "svd")
    assert first.name == MergedAdapter(("a", "b"), (0.8, 0.8), "svd").name != MergedAdapter(("a", "b"), (0.8, 0.8),
                                                                                              "svd", seed=1).name
    with pytest.raises(ValueError, match="combination_type"):
        MergedAdapter(("a",), (1.0,), "linear")
    with pytest.raises(ValueError, match="density"):
        METHODS.get("merge_ties")(density=0)
    # TIES and DARE prune: without a density they use the YAML's 0.5, and record it (same image key)
    assert METHODS.get("merge_ties")().settings["density"] == METHODS.get("merge_dare")().settings["density"] == 0.5
    assert METHODS.get("merge_svd")().settings["density"] is None
