"""LoRAtorio: patch cosines and SoftMin weights by hand on small tensors, the combination formula, the dynamic
top-k, and K+1 passes per step on the tiny pipeline."""

import math
from pathlib import Path

import pytest
import torch

from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.methods.loratorio import weight_map_picture
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings


def test_weights_and_combination_by_hand():
    """One channel pair per pixel, patch 1x1: cosines are read off the vectors, the SoftMin computed with math."""
    # 2 channels, 1x2 latent. Base cond: pixel 0 = (1, 0), pixel 1 = (0, 1).
    base_cond = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    lora_1 = torch.tensor([[[[1.0, 1.0]], [[0.0, 1.0]]]])  # pixel 0 (1,0): cos 1; pixel 1 (1,1): cos 1/sqrt2
    lora_2 = torch.tensor([[[[0.0, 0.0]], [[2.0, 3.0]]]])  # pixel 0 (0,2): cos 0; pixel 1 (0,3): cos 1
    u0, u1, u2 = torch.full_like(base_cond, 0.1), torch.full_like(base_cond, 0.3), torch.full_like(base_cond, 0.7)
    method = METHODS.get("loratorio")(patch_size=1, temperature=0.5, base_uncond=0.5)
    omega = method.patch_weights(torch.cat([lora_1, lora_2]), base_cond)
    expected = []
    for s1, s2 in [(1.0, 0.0), (1 / math.sqrt(2), 1.0)]:  # softmin over (s1, s2) / T
        e1, e2 = math.exp(-s1 / 0.5), math.exp(-s2 / 0.5)
        expected.append((e1 / (e1 + e2), e2 / (e1 + e2)))
    assert omega[:, 0, 0].tolist() == pytest.approx(list(expected[0]), abs=1e-6)
    assert omega[:, 0, 1].tolist() == pytest.approx(list(expected[1]), abs=1e-6)

    noise = method.combine(None, [(u0, base_cond), (u1, lora_1), (u2, lora_2)], guidance_scale=3.0)
    for pixel, (w1, w2) in enumerate(expected):
        c_bar = w1 * lora_1[0, :, 0, pixel] + w2 * lora_2[0, :, 0, pixel]
        u_bar = 0.5 * 0.1 + 0.5 * (0.3 + 0.7) / 2  # re-centred: half base, half the LoRAs' mean
        torch.testing.assert_close(noise[0, :, 0, pixel], u_bar + 3.0 * (c_bar - u_bar))
    assert method.weight_maps[-1].shape == (2, 1, 2)


def test_patch_cosine_matches_a_loop_over_patches():
    """Patches of 2x2 on a 5x6 latent (edge patches smaller) against F.cosine_similarity on each slice."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 5, 6, generator=generator)
    candidates = torch.randn(3, 4, 5, 6, generator=generator)
    method = METHODS.get("loratorio")(patch_size=2, temperature=0.1)
    omega = method.patch_weights(candidates, base)
    assert omega.shape == (3, 3, 3)
    for row in range(3):
        for column in range(3):
            window = (slice(None), slice(None), slice(2 * row, 2 * row + 2), slice(2 * column, 2 * column + 2))
            cosines = torch.stack([torch.nn.functional.cosine_similarity(
                candidates[k][window[1:]].flatten(), base[0][window[1:]].flatten(), dim=0) for k in range(3)])
            torch.testing.assert_close(omega[:, row, column], torch.softmax(-cosines / 0.1, dim=0))


def test_dynamic_top_k_keeps_the_loras_least_like_the_base():
    base = torch.ones(1, 2, 2, 2)
    near, middle, far = torch.ones(1, 2, 2, 2), torch.ones(1, 2, 2, 2), -torch.ones(1, 2, 2, 2)
    middle[:, 0] = -1.0  # cos 0 everywhere; near: cos 1; far: cos -1
    method = METHODS.get("loratorio")(patch_size=2, temperature=1.0, top_k=2)
    omega = method.patch_weights(torch.cat([near, middle, far]), base)
    assert omega[0].abs().max() == 0  # the LoRA most like the base is dropped
    e_middle, e_far = math.exp(0.0), math.exp(1.0)
    assert omega[2, 0, 0].item() == pytest.approx(e_far / (e_middle + e_far))
    u = [torch.full((1, 2, 2, 2), value) for value in (0.0, 1.0, 2.0, 4.0)]
    noise = method.combine(None, [(u[0], base), (u[1], near), (u[2], middle), (u[3], far)], guidance_scale=0.0)
    torch.testing.assert_close(noise, torch.full((1, 2, 2, 2), 0.5 * 0.0 + 0.5 * (2.0 + 4.0) / 2))  # kept only


def test_settings_are_checked():
    with pytest.raises(ValueError, match="uncond"):
        METHODS.get("loratorio")(uncond="median")
    with pytest.raises(ValueError, match="top_k"):
        METHODS.get("loratorio")(top_k=0)


def spec(folder: Path, lora_id: str, category: str) -> LoraSpec:
    return LoraSpec(lora_id, lora_id, category, (f"trig {lora_id}",), folder / "lora" / f"{lora_id}.safetensors")


@torch.no_grad()
def test_runs_k_plus_one_passes_batched_as_sequential(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [spec(tiny_testbed_dir, "character_1", "character"), spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    settings = SamplingSettings(steps=4, guidance_scale=7.5, height=32, width=32)
    results = {}
    for batching in ("batched", "sequential"):
        sampler = Sampler(pipe, batching=batching)
        method = METHODS.get("loratorio")()
        context = ImageContext(specs, 0.8, "a picture", settings.steps, sampler.embed_without_loras)
        latents, plan = sampler.denoise(method, context, "blurry", settings, 5)
        assert sampler.evaluations == {"full": (len(specs) + 1) * settings.steps}
        assert sampler.batched_failed is None
        results[batching] = latents, plan.describe(), method.weight_maps
    torch.testing.assert_close(results["batched"][0], results["sequential"][0], atol=1e-4, rtol=1e-4)
    described, maps = results["batched"][1], results["batched"][2]
    assert described["schedule"][0]["passes"][0] == {}  # the base model's pass
    assert len(described["mean_patch_weights"]) == settings.steps
    assert all(sum(means) == pytest.approx(1.0, abs=1e-3) for means in described["mean_patch_weights"])
    assert len(maps) == settings.steps and maps[0].shape == (2, 8, 8)  # 16x16 latent, 2x2 patches
    picture = weight_map_picture(maps, [s.id for s in specs], cell=20)
    assert picture.size == (40 + 2 * 20, 16 + settings.steps * 20)
