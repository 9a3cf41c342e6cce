"""The plan contract's optional parts: deep-feature reuse, per-layer routing, base passes in a batch, the
evaluation count, and old plans recorded exactly as before."""

from pathlib import Path

import pytest
import torch
from tqdm import tqdm

from harness.deepcache import recording_deep_feature, skipping_deep_blocks
from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext, LayerRouting, Pass, StepPlan
from harness.pipelines import load_pipeline
from harness.runner import RunSummary, select_sets
from harness.sampler import Sampler, SamplingSettings
from harness.store import iter_images
from tests.engine_support import make_runner, tiny_testbed

SETTINGS = SamplingSettings(steps=4, guidance_scale=7.5, height=32, width=32)


def spec(folder: Path, lora_id: str, category: str = "character") -> LoraSpec:
    return LoraSpec(lora_id, lora_id, category, (f"trig {lora_id}",), folder / "lora" / f"{lora_id}.safetensors")


@pytest.fixture(scope="module")
def loaded(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [spec(tiny_testbed_dir, "character_1"), spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    return pipe, specs


def toy_layout_unet() -> torch.nn.Module:
    """A random UNet shaped like the toy world's (no attention in the outer blocks, three levels)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=8).eval()


@pytest.mark.parametrize("layout", ["tiny", "toy"])
def test_shallow_pass_on_fresh_features_equals_the_full_pass(loaded, layout):
    unet = loaded[0].unet if layout == "tiny" else toy_layout_unet()
    width = unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 7, width, generator=generator)
    with torch.no_grad():
        with recording_deep_feature(unet) as recorded:
            full = unet(sample, 500, encoder_hidden_states=text).sample
        with skipping_deep_blocks(unet, recorded.feature):
            shallow = unet(sample, 500, encoder_hidden_states=text).sample
        with skipping_deep_blocks(unet, torch.zeros_like(recorded.feature)):
            zeroed = unet(sample, 500, encoder_hidden_states=text).sample
        again = unet(sample, 500, encoder_hidden_states=text).sample  # the blocks' own forward is back
    assert recorded.feature.shape[0] == 2
    torch.testing.assert_close(shallow, full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(again, full, atol=1e-6, rtol=1e-6)
    assert (zeroed - full).abs().max() > 1e-3  # the shallow path really reads the given feature


def test_routing_every_layer_equals_weights_fused_by_hand(tiny_testbed_dir):
    """A pass routing layer i to adapter a_i gives W_i + scale * B_i A_i (alpha/r) per layer, fused here by hand."""
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [spec(tiny_testbed_dir, "character_1"), spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    from peft.tuners.lora import LoraLayer

    layers = sorted(name for name, module in pipe.unet.named_modules() if isinstance(module, LoraLayer))
    chosen = tuple(specs[index % 2].id for index in range(len(layers)))  # alternate the two LoRAs
    routing = LayerRouting(tuple(layers), chosen)
    sampler = Sampler(pipe, batching="sequential")
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.cat([sampler.encode("blurry"), sampler.encode("a picture")])
    with torch.no_grad():
        step = StepPlan((Pass.of({s.id: 0.8 for s in specs}, routing=routing),), (1.0,))
        routed = sampler.predict(step, latents, torch.tensor(500), text)[0]
        only_first = sampler.predict(StepPlan((Pass.of({specs[0].id: 0.8}),), (1.0,)), latents, torch.tensor(500),
                                     text)[0]
        # a routing after another one (K-LoRA's next step: only the layers that change are touched) is the
        # same as that routing applied afresh
        swapped = LayerRouting(tuple(layers), tuple(specs[(index + 1) % 2].id for index in range(len(layers))))
        swap_step = StepPlan((Pass.of({s.id: 0.8 for s in specs}, routing=swapped),), (1.0,))
        sampler.predict(step, latents, torch.tensor(500), text)
        after_routed = sampler.predict(swap_step, latents, torch.tensor(500), text)[0][1]
        fresh = Sampler(pipe, batching="sequential").predict(swap_step, latents, torch.tensor(500), text)[0][1]
        torch.testing.assert_close(after_routed, fresh)
        assert (after_routed - routed[1]).abs().max() > 1e-4
        modules = dict(pipe.unet.named_modules())
        for layer, adapter in zip(layers, chosen):
            module = modules[layer]
            delta = module.lora_B[adapter].weight @ module.lora_A[adapter].weight
            module.base_layer.weight += 0.8 * delta * module.lora_alpha[adapter] / module.r[adapter]
        sampler.adapters.set_unet({})  # LoRA layers off: only the hand-fused weights act
        fused = sampler._unet(torch.cat([latents, latents]), torch.tensor(500), text).chunk(2)
    for got, expected in zip(routed, fused):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert (routed[1] - only_first[1]).abs().max() > 1e-4


def test_base_pass_batches_with_lora_passes(loaded):
    """LoRAtorio's step: a pass with no adapter next to one-adapter passes, batched = sequential."""
    pipe, specs = loaded
    step = StepPlan((Pass(),) + tuple(Pass.of({s.id: 0.8}) for s in specs), ())
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    results = {}
    for batching in ("batched", "sequential"):
        sampler = Sampler(pipe, batching=batching)
        text = torch.cat([sampler.encode("blurry"), sampler.encode("a picture")])
        with torch.no_grad():
            results[batching] = sampler.predict(step, latents, torch.tensor(300), text)
        assert sampler.evaluations == {"full": 3} and sampler.batched_failed is None
    for (bu, bc), (su, sc) in zip(results["batched"], results["sequential"]):
        torch.testing.assert_close(bu, su, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bc, sc, atol=1e-5, rtol=1e-5)
    sampler = Sampler(pipe, batching="sequential")
    sampler.adapters.set_unet({})
    text = torch.cat([sampler.encode("blurry"), sampler.encode("a picture")])
    with torch.no_grad():
        base = sampler._unet(torch.cat([latents, latents]), torch.tensor(300), text).chunk(2)
    torch.testing.assert_close(results["batched"][0][1], base[1], atol=1e-5, rtol=1e-5)


def test_reusing_features_nobody_stored_is_an_error(loaded):
    pipe, specs = loaded
    sampler = Sampler(pipe, batching="sequential")
    text = torch.cat([sampler.encode("blurry"), sampler.encode("a picture")])
    step = StepPlan((Pass.of({specs[0].id: 0.8}, features="reuse"),), (1.0,))
    with pytest.raises(ValueError, match="no earlier pass"):
        sampler.predict(step, torch.zeros(1, 4, 16, 16), torch.tensor(10), text)
    with pytest.raises(ValueError, match="features"):
        Pass.of({specs[0].id: 0.8}, features="sometimes")


def test_existing_methods_record_the_same_plan_as_before(loaded):
    """Old plans gain no key: results recorded before the optional parts existed stay comparable."""
    pipe, specs = loaded
    sampler = Sampler(pipe)
    context = ImageContext(specs, 0.8, "a picture", SETTINGS.steps, sampler.embed_without_loras)
    for name in ("base", "merge", "switch", "composite", "w_switch", "w_composite"):
        described = METHODS.get(name)().prepare(context).describe()
        notes = {"raw_importance", "degenerate", "degenerate_weights"}  # notes about this image, not plan parts
        assert set(described) - notes == {"text_encoder_adapters", "importance", "schedule"} | (
            {"timing"} if "switch" in name else set()), name
        assert all(set(step) == {"passes", "weights"} for step in described["schedule"]), name


def test_runner_records_unet_evaluations(tiny_testbed_dir, tmp_path):
    testbed = tiny_testbed(tiny_testbed_dir)
    sets = select_sets(testbed.sets(), n=[3], limit=1)
    for method, expected in [("composite", {"full": 18, "shallow": 0}), ("merge", {"full": 6, "shallow": 0}),
                             ("cmlora", {"full": 3 + 5, "shallow": 2 * 5})]:
        runner = make_runner(testbed, tmp_path / method, method)
        with tqdm(disable=True) as progress:
            runner.run_set(sets[0], [0], RunSummary(), progress)
        record = next(iter_images(tmp_path / method)).metadata
        assert record["unet_evaluations"] == expected, method
