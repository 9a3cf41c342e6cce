"""CMLoRA: schedules and weights by hand, cache off = a hand-written weighted Composite, cache on = counted
shallow passes close to it."""

from pathlib import Path

import pytest
import torch

from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.methods.cmlora import dominant_schedule, refresh_steps
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings

SETTINGS = SamplingSettings(steps=5, guidance_scale=7.5, height=32, width=32)
PROMPT, NEGATIVE, SEED = "a picture, trig x", "blurry", 11


def spec(folder: Path, lora_id: str, category: str) -> LoraSpec:
    return LoraSpec(lora_id, lora_id, category, (f"trig {lora_id}",), folder / "lora" / f"{lora_id}.safetensors")


@pytest.fixture(scope="module")
def loaded(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    # background second in set order: the grouping, not the position, decides when it joins
    specs = [spec(tiny_testbed_dir, "character_1", "character"), spec(tiny_testbed_dir, "background_1", "background"),
             spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    return pipe, specs


def test_refresh_steps_as_specified():
    assert refresh_steps(20, 0) == [0, 2, 4, 6, 7, 10, 13, 16, 17, 19]  # 2 in [0, 7.5), 3 in [7.5, 17.5), 2 after
    assert refresh_steps(6, 1) == [0, 1, 2, 3, 4, 5]
    assert refresh_steps(10, 3) == [0, 3, 6, 9]
    with pytest.raises(ValueError, match="cache_interval"):
        refresh_steps(10, -1)


def test_dominant_rotation_by_hand():
    # H = [0 (character), 2 (style)], background 1 joins after step 0.6 * 10 = 6; refreshes at 0, 2, 4, 6, 8
    categories = ["character", "background", "style"]
    assert dominant_schedule(categories, 10, 2, 0.6) == [0, 0, 2, 2, 0, 0, 2, 0, 2, 2]
    # every step a refresh, no background: plain round robin over the set
    assert dominant_schedule(["character", "style"], 5, 1, 0.6) == [0, 1, 0, 1, 0]


def test_weights_by_hand(loaded):
    pipe, specs = loaded
    plan = METHODS.get("cmlora")(cache=False, cache_interval=2).prepare(
        ImageContext(specs, 0.8, PROMPT, 6, lambda text: torch.zeros(1)))
    # N = 3: c = 2.5, w_non = 3 / 4.5 = 2/3, w_dom = 5/3, sum 3; normalised 5/9 and 2/9
    assert plan.steps[0].weights == pytest.approx((5 / 9, 2 / 9, 2 / 9))
    assert plan.steps[2].weights == pytest.approx((2 / 9, 2 / 9, 5 / 9))
    assert plan.notes["dominant"] == ["character_1", "character_1", "style_1", "style_1", "background_1",
                                      "background_1"]
    assert plan.text_encoder_adapters == {s.id: 0.8 for s in specs}


def hand_weighted_composite(pipe, specs, dominant: list[int]) -> torch.Tensor:
    """An independent loop: the pipeline's own prompt encoding, one UNet call per LoRA, CMLoRA's weights."""
    ids = [s.id for s in specs]
    pipe.set_adapters(ids, [0.8] * len(ids))  # UNet and text encoder
    cond, uncond = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
    text = torch.cat([uncond, cond])
    scheduler = pipe.scheduler
    scheduler.set_timesteps(SETTINGS.steps, device="cpu")
    generator = torch.Generator("cpu").manual_seed(SEED)
    latents = torch.randn((1, 4, 16, 16), generator=generator) * scheduler.init_noise_sigma
    n = len(ids)
    w_non = n / (n - 0.5 + n - 1)
    for step, timestep in enumerate(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, timestep)
        weights = [(n - 0.5) * w_non if k == dominant[step] else w_non for k in range(n)]
        u_sum, c_sum = 0, 0
        for k, adapter in enumerate(ids):
            pipe.unet.set_adapters([adapter], [0.8])
            u, c = pipe.unet(torch.cat([model_input] * 2), timestep, encoder_hidden_states=text).sample.chunk(2)
            u_sum, c_sum = u_sum + weights[k] * u, c_sum + weights[k] * c
        u_bar, c_bar = u_sum / sum(weights), c_sum / sum(weights)
        latents = scheduler.step(u_bar + SETTINGS.guidance_scale * (c_bar - u_bar), timestep, latents).prev_sample
    return latents


@torch.no_grad()
@pytest.mark.parametrize("batching", ["sequential", "auto"])
def test_cache_off_is_exactly_a_weighted_composite(loaded, batching):
    pipe, specs = loaded
    sampler = Sampler(pipe, batching=batching)
    context = ImageContext(specs, 0.8, PROMPT, SETTINGS.steps, sampler.embed_without_loras)
    method = METHODS.get("cmlora")(cache=False, cache_interval=2, background_join=0.6)
    latents, plan = sampler.denoise(method, context, NEGATIVE, SETTINGS, SEED)
    # by hand: refreshes 0, 2, 4; H = [character, style]; background joins after step 3: rotation H + B at step 4
    dominant = [0, 0, 2, 2, 1]
    assert plan.notes["dominant"] == [specs[k].id for k in dominant]
    expected = hand_weighted_composite(pipe, specs, dominant)
    torch.testing.assert_close(latents, expected, atol=1e-4, rtol=1e-4)
    assert sampler.evaluations == {"full": 15}


@torch.no_grad()
def test_cache_on_counts_shallow_passes_and_stays_close(loaded):
    pipe, specs = loaded
    results = {}
    for name, settings in [("off", {"cache": False}), ("on", {"cache": True}),
                           ("at_refresh", {"cache": True, "dominant": "at_refresh"})]:
        sampler = Sampler(pipe)
        context = ImageContext(specs, 0.8, PROMPT, SETTINGS.steps, sampler.embed_without_loras)
        latents, plan = sampler.denoise(METHODS.get("cmlora")(cache_interval=2, **settings), context, NEGATIVE,
                                        SETTINGS, SEED)
        results[name] = (latents, dict(sampler.evaluations), plan.describe())
    # step 0: every LoRA in full; then the dominant in full and the two others shallow
    assert results["on"][1] == {"full": 3 + 4, "shallow": 2 * 4}
    # released timing: the dominant in full only at the refresh steps 2 and 4 (and step 4's dominant, the
    # background, is new there)
    assert results["at_refresh"][1] == {"full": 3 + 2, "shallow": 15 - 5}
    assert results["on"][2]["schedule"][1]["features"] == ["store", "reuse", "reuse"]
    assert "features" not in results["off"][2]["schedule"][1]
    off, on = results["off"][0], results["on"][0]
    difference = ((on - off).norm() / off.norm()).item()
    assert 0 < difference < 0.2, difference  # an approximation, not a different image
