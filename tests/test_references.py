"""The core pinned against independent references: diffusers' own pipeline, a direct open_clip computation,
and the image key against every input that changes an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from metrics_support import CHARACTER_A, write_results
from PIL import Image

from harness.config import metric_config
from harness.lora import AdapterCache, LoraSpec
from harness.methods import METHODS, ImageContext
from harness.metrics.clip_text import ClipText
from harness.paths import PROJECT_ROOT, resolve_path
from harness.pipelines import load_pipeline
from harness.runner import Runner
from harness.sampler import Sampler, SamplingSettings
from harness.store import iter_images
from harness.testbeds import CompositionSet

SETTINGS = SamplingSettings(steps=6, guidance_scale=7.5, height=32, width=32)
PROMPT, NEGATIVE, SEED = "a picture, zqx girl, jvk uniform", "blurry", 11


def _specs(folder: Path) -> list[LoraSpec]:
    return [LoraSpec("character_1", "c", "character", ("zqx girl",), folder / "lora" / "character_1.safetensors"),
            LoraSpec("clothing_1", "u", "clothing", ("jvk uniform",), folder / "lora" / "clothing_1.safetensors")]


def _diffusers_latents(pipe, adapters: dict[str, float]) -> torch.Tensor:
    """diffusers' StableDiffusionPipeline, from the same initial noise, LoRAs set by diffusers itself."""
    if adapters:
        pipe.set_adapters(list(adapters), list(adapters.values()))
    else:
        pipe.disable_lora()
    shape = (1, pipe.unet.config.in_channels, SETTINGS.height // pipe.vae_scale_factor,
             SETTINGS.width // pipe.vae_scale_factor)
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(SEED))
    output = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=SETTINGS.steps,
                  guidance_scale=SETTINGS.guidance_scale, latents=noise, output_type="latent")
    return output.images


@pytest.mark.parametrize("method", ["base", "merge"])
def test_base_and_merge_equal_the_diffusers_pipeline(tiny_testbed_dir, method):
    pipe = load_pipeline(tiny_testbed_dir / "base", device="cpu")
    specs = _specs(tiny_testbed_dir)
    AdapterCache(pipe).ensure(specs)
    sampler = Sampler(pipe)
    context = ImageContext(specs, 0.8, PROMPT, SETTINGS.steps, sampler.embed_without_loras)
    ours, _ = sampler.denoise(METHODS.get(method)(), context, NEGATIVE, SETTINGS, SEED)
    sampler.adapters.forget()
    reference = _diffusers_latents(pipe, {} if method == "base" else {s.id: 0.8 for s in specs})
    assert (ours - reference).abs().max() < 1e-4


@pytest.mark.parametrize("variant", [
    {"text": "prompt", "scale": 100.0, "clamp": True},   # Zhong et al. / CMLoRA form
    {"text": "triggers", "scale": 100.0, "clamp": True},
    {"text": "prompt", "scale": 2.5, "clamp": True},     # Hessel et al.'s CLIPScore weight
    {"text": "prompt", "scale": 100.0, "clamp": False},  # TCLIP: no clamp
])
def test_clip_text_equals_a_direct_open_clip_computation(tmp_path, variant):
    import open_clip

    # the committed toy CLIP and toy images: a trained CLIP gives mismatched pairs negative cosines
    clip = {key: value for key, value in metric_config("clip_text").items() if key in ("model", "pretrained",
                                                                                        "model_config")}
    clip["pretrained"], clip["model_config"] = str(resolve_path(clip["pretrained"])), str(resolve_path(clip["model_config"]))
    toy_images = sorted((PROJECT_ROOT / "results" / "toy" / "images" / "merge").glob("*/seed0.png"))[:6]
    images = {("m", "s"): [np.asarray(Image.open(path).convert("RGB")) for path in toy_images]}
    results = write_results(tmp_path / "r", images, {"s": [CHARACTER_A]}, prompt="a picture, zorblat")
    metric = ClipText(**clip, **variant)
    records = list(iter_images(results))
    rows = {row.image_id: row.value for row in metric.score(records)}
    open_clip.add_model_config(clip["model_config"])
    model, _, preprocess = open_clip.create_model_and_transforms(clip["model"], pretrained=clip["pretrained"])
    tokenizer = open_clip.get_tokenizer(clip["model"])
    model.eval()
    clamped = 0
    for record in records:
        text = record.prompt if variant["text"] == "prompt" else ", ".join(CHARACTER_A["trigger"])
        with torch.no_grad():
            image = model.encode_image(preprocess(Image.open(record.path).convert("RGB")).unsqueeze(0))
            words = model.encode_text(tokenizer([text]))
        cosine = float(torch.nn.functional.cosine_similarity(image, words).item())
        expected = variant["scale"] * cosine
        if variant["clamp"] and expected < 0:
            expected, clamped = 0.0, clamped + 1
        assert rows[record.image_id] == pytest.approx(expected, abs=1e-4)
    if variant["clamp"]:
        assert clamped, "no negative cosine among the images: the clamp was not exercised"


def _key_inputs() -> dict:
    return {"prompt": "a picture, zqx girl", "seed": 0, "lora_scale": 0.8, "method_settings": {"interval": 5},
            "negative_prompt": "blurry", "steps": 20, "guidance_scale": 7.5, "height": 32, "width": 32,
            "scheduler": "dpmsolver++", "dtype": "float32", "batching": "auto", "seed_mode": "per_set",
            "lora_hash": "a" * 64, "model_hash": "b" * 64}


def _key(inputs: dict) -> str:
    """The runner's image key for these inputs, with no model or file on disk."""
    testbed = type("Testbed", (), {})()
    testbed.model = {"scheduler": inputs["scheduler"], "dtype": inputs["dtype"]}
    testbed.sampling = {"steps": inputs["steps"], "guidance_scale": inputs["guidance_scale"],
                        "height": inputs["height"], "width": inputs["width"], "lora_scale": inputs["lora_scale"]}
    testbed.negative_prompt = inputs["negative_prompt"]
    runner = Runner(testbed, METHODS.get("switch")(**inputs["method_settings"]), "switch", Path("/nowhere"),
                    device="cpu", batching=inputs["batching"], seed_mode=inputs["seed_mode"])
    runner._model_identity = {"base": "base", "base_hash": inputs["model_hash"]}
    composition = CompositionSet("n1_x", (LoraSpec("x", "x", "character", ("zqx girl",), Path("x")),))
    return runner.image_key(composition, {"x": inputs["lora_hash"]}, inputs["prompt"], inputs["seed"])


FIELD_VALUES = {
    "prompt": st.text(min_size=1, max_size=20), "seed": st.integers(1, 2**31), "lora_scale": st.floats(0.01, 2),
    "method_settings": st.fixed_dictionaries({"interval": st.integers(1, 4)}),
    "negative_prompt": st.text(min_size=1, max_size=10), "steps": st.integers(1, 19),
    "guidance_scale": st.floats(1, 7), "height": st.sampled_from([64, 512]), "width": st.sampled_from([64, 512]),
    "scheduler": st.sampled_from(["ddim", "euler"]), "dtype": st.sampled_from(["float16", "bfloat16"]),
    "batching": st.sampled_from(["batched", "sequential"]), "seed_mode": st.just("direct"),
    "lora_hash": st.text("0123456789abcdef", min_size=64, max_size=64),
    "model_hash": st.text("0123456789abcdef", min_size=64, max_size=64),
}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(FIELD_VALUES)).flatmap(lambda name: st.tuples(st.just(name), FIELD_VALUES[name])))
def test_the_image_key_changes_with_every_input_that_changes_the_image(change):
    name, value = change
    inputs = _key_inputs()
    if inputs[name] == value:
        return
    changed = {**inputs, name: value}
    assert _key(changed) != _key(inputs), f"the image key ignores {name}"
