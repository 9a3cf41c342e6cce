"""The denoising loop on the tiny pipeline: method equivalences, batching, LoRA formats and bad LoRAs."""

from pathlib import Path

import pytest
import torch

from harness.lora import AdapterCache, LoraError, LoraSpec, load_adapter
from harness.methods import METHODS, ImageContext
from harness.methods import builtin
from harness.pipelines import load_pipeline
from harness.sampler import Sampler, SamplingSettings
from harness.tiny import write_random_lora

SETTINGS = SamplingSettings(steps=5, guidance_scale=7.5, height=32, width=32)


def spec(folder: Path, lora_id: str, category: str = "character", path: Path | None = None) -> LoraSpec:
    return LoraSpec(lora_id, lora_id, category, (f"trig {lora_id}",), path or folder / "lora" / f"{lora_id}.safetensors")


@pytest.fixture(scope="module")
def loaded(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [spec(tiny_testbed_dir, "character_1"), spec(tiny_testbed_dir, "clothing_1", "clothing"),
             spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    return pipe, specs


def denoise(pipe, method, specs, batching="auto", prompt="a picture, trig x", seed=3):
    sampler = Sampler(pipe, batching=batching)
    context = ImageContext(specs, 0.8, prompt, SETTINGS.steps, sampler.embed_without_loras)
    latents, plan = sampler.denoise(method, context, "blurry", SETTINGS, seed)
    return latents, plan, sampler


def test_batched_composite_equals_sequential(loaded):
    pipe, specs = loaded
    sampler = Sampler(pipe, batching="batched")
    context = ImageContext(specs, 0.8, "a picture", SETTINGS.steps, sampler.embed_without_loras)
    step = METHODS.get("composite")().prepare(context).steps[0]
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = torch.cat([sampler.encode("blurry"), sampler.encode("a picture")])
    batched = sampler.predict(step, latents, torch.tensor(500), text)
    sequential = Sampler(pipe, batching="sequential").predict(step, latents, torch.tensor(500), text)
    for (bu, bc), (su, sc) in zip(batched, sequential):  # every pass's own prediction, within 1e-5
        torch.testing.assert_close(bu, su, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bc, sc, atol=1e-5, rtol=1e-5)
    assert (batched[0][1] - batched[1][1]).abs().max() > 1e-4  # the adapters differ: routing is per sample
    whole_batched, _, used = denoise(pipe, METHODS.get("composite")(), specs, "batched")
    whole_sequential, _, _ = denoise(pipe, METHODS.get("composite")(), specs, "sequential")
    assert used.batched_failed is None
    torch.testing.assert_close(whole_batched, whole_sequential, atol=1e-4, rtol=1e-4)


def test_w_composite_with_equal_weights_equals_composite(loaded, monkeypatch):
    pipe, specs = loaded
    monkeypatch.setattr(builtin, "trigger_similarity", lambda prompt, loras, embed: [1 / len(loras)] * len(loras))
    weighted, plan, _ = denoise(pipe, METHODS.get("w_composite")(), specs)
    plain, _, _ = denoise(pipe, METHODS.get("composite")(), specs)
    assert plan.importance == pytest.approx({s.id: 1 / 3 for s in specs})
    torch.testing.assert_close(weighted, plain, atol=1e-5, rtol=1e-5)


def test_w_composite_weights_change_the_image(loaded, monkeypatch):
    pipe, specs = loaded
    monkeypatch.setattr(builtin, "trigger_similarity", lambda prompt, loras, embed: [0.9, 0.05, 0.05])
    skewed, _, _ = denoise(pipe, METHODS.get("w_composite")(), specs)
    plain, _, _ = denoise(pipe, METHODS.get("composite")(), specs)
    assert (skewed - plain).abs().max() > 1e-3


def test_merge_equals_fused_weights(tiny_testbed_dir):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = [spec(tiny_testbed_dir, "character_1"), spec(tiny_testbed_dir, "style_1", "style")]
    AdapterCache(pipe).ensure(specs)
    merged, _, _ = denoise(pipe, METHODS.get("merge")(), specs)
    base_before, _, _ = denoise(pipe, METHODS.get("base")(), specs)
    pipe.set_adapters([s.id for s in specs], [0.8, 0.8])
    pipe.fuse_lora(components=["unet", "text_encoder"], adapter_names=[s.id for s in specs])
    pipe.unload_lora_weights()  # keeps the fused weights, drops the adapters
    fused, _, _ = denoise(pipe, METHODS.get("base")(), [])
    torch.testing.assert_close(merged, fused, atol=1e-4, rtol=1e-4)
    assert (merged - base_before).abs().max() > 1e-3  # the LoRAs did something


def test_switch_plan_and_text_encoder_state(loaded):
    pipe, specs = loaded
    _, plan, _ = denoise(pipe, METHODS.get("switch")(interval=2, timing="exact"), specs)
    active = [list(step["passes"][0]) for step in plan.describe()["schedule"]]
    assert active == [["character_1"], ["character_1"], ["clothing_1"], ["clothing_1"], ["style_1"]]
    assert plan.text_encoder_adapters == {"character_1": 0.8}
    _, composite_plan, _ = denoise(pipe, METHODS.get("composite")(), specs)
    assert composite_plan.text_encoder_adapters == {s.id: 0.8 for s in specs}


def test_w_switch_records_importance_and_reserved_tail(loaded):
    pipe, specs = loaded
    _, plan, _ = denoise(pipe, METHODS.get("w_switch")(interval=2, timing="exact", reserved_steps=2), specs)
    assert set(plan.importance) == {s.id for s in specs}
    assert sum(plan.importance.values()) == pytest.approx(1.0)
    assert [list(step["passes"][0]) for step in plan.describe()["schedule"]][-2:] == [["character_1"]] * 2


def test_prompt_aware_weights_ignore_text_encoder_loras(loaded):
    pipe, specs = loaded
    sampler = Sampler(pipe)
    before = sampler.embed_without_loras("a picture, trig x")
    sampler.adapters.set_text_encoder({s.id: 0.8 for s in specs})
    assert (sampler.encode("a picture, trig x").mean(dim=1)[0] - before).abs().max() > 1e-4
    torch.testing.assert_close(sampler.embed_without_loras("a picture, trig x"), before)


@pytest.mark.parametrize("lora_format", ["diffusers", "peft", "kohya"])
def test_each_lora_format_loads_with_the_same_effect(tiny_testbed_dir, tmp_path, lora_format):
    """The same random weights written in three formats give the same image."""
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    reference = write_random_lora(tiny_testbed_dir / "base", tmp_path / "ref.safetensors", seed=7)
    candidate = write_random_lora(tiny_testbed_dir / "base", tmp_path / "c.safetensors", seed=7, lora_format=lora_format)
    load_adapter(pipe, spec(tmp_path, "ref", path=reference))
    load_adapter(pipe, spec(tmp_path, "cand", path=candidate))
    with_reference, _, _ = denoise(pipe, METHODS.get("single")(), [spec(tmp_path, "ref", path=reference)])
    with_candidate, _, _ = denoise(pipe, METHODS.get("single")(), [spec(tmp_path, "cand", path=candidate)])
    torch.testing.assert_close(with_candidate, with_reference, atol=1e-4, rtol=1e-4)


def test_missing_lora_file_names_id_path_and_fix(tiny_testbed_dir, tmp_path):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    with pytest.raises(LoraError, match=r"'ghost'.*file not found.*Fix"):
        load_adapter(pipe, spec(tmp_path, "ghost"))


def test_corrupt_lora_file(tiny_testbed_dir, tmp_path):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(LoraError, match=r"'broken'.*cannot read.*corrupt"):
        load_adapter(pipe, spec(tmp_path, "broken", path=broken))


def test_lora_for_another_base_model(tiny_testbed_dir, tmp_path, capsys, caplog):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    wrong = tmp_path / "wrong.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_testbed_dir / "lora" / "character_1.safetensors"))
    save_file({k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k else v for k, v in state.items()}, str(wrong))
    with pytest.raises(LoraError, match=r"'wrong'.*(does not fit|could not be loaded)"):
        load_adapter(pipe, spec(tmp_path, "wrong", path=wrong))
    assert "wrong" not in pipe.get_list_adapters().get("unet", [])
    # one line says it (the error above), not one log line per mismatched tensor from diffusers
    captured = capsys.readouterr()
    assert "size mismatch" not in captured.out + captured.err and "size mismatch" not in caplog.text


def test_lora_matching_no_layer_is_an_error(tiny_testbed_dir, tmp_path):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    from safetensors.torch import save_file

    stray = tmp_path / "stray.safetensors"
    save_file({"unet.nowhere.to_q.lora_A.weight": torch.zeros(4, 8), "unet.nowhere.to_q.lora_B.weight": torch.zeros(8, 4)},
              str(stray))
    with pytest.raises(LoraError, match="stray"):
        load_adapter(pipe, spec(tmp_path, "stray", path=stray))


def test_importance_as_left_uses_the_text_encoder_state_it_finds(loaded):
    pipe, specs = loaded
    method = METHODS.get("w_composite")(importance_text_encoder="as_left")
    sampler = Sampler(pipe)
    assert sampler.importance_embedder(method) == sampler.embed_as_left
    assert Sampler(pipe).importance_embedder(METHODS.get("w_composite")()) is not None
    sampler.adapters.set_text_encoder({s.id: 0.8 for s in specs})
    left = sampler.embed_as_left("a picture, trig x")
    clean = sampler.embed_without_loras("a picture, trig x")
    assert (left - clean).abs().max() > 1e-4
    with pytest.raises(ValueError, match="importance_text_encoder"):
        METHODS.get("w_switch")(importance_text_encoder="sometimes")
