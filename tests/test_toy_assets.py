"""The committed toy testbed: pipeline and LoRAs load through diffusers' SD1.5 path; the oracle is exact on
clean renders; the oracle metric produces the documented rows."""

from __future__ import annotations

import json
from pathlib import Path

import harness  # noqa: F401
import numpy as np
import pytest
import torch
from PIL import Image

from harness.toy import world

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "testbed/toy"


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY / "base", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def oracle():
    from harness.toy.oracle import Oracle

    return Oracle.load(TOY / "oracle")


def _image(pipe, prompt: str) -> np.ndarray:
    return pipe(prompt, num_inference_steps=4, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(0)).images[0]


def test_pipeline_loads_and_generates(pipe):
    assert type(pipe.unet).__name__ == "UNet2DConditionModel" and type(pipe.tokenizer).__name__.startswith("CLIPTokenizer")
    assert _image(pipe, "a picture, red circle figure").shape == (32, 32, 3)


def test_committed_base_is_the_builds_model(pipe):
    """The committed base has the architecture and context the build trains (a stale base would not)."""
    from harness.toy import base_model

    assert pipe.tokenizer.model_max_length == base_model.PROMPT_TOKENS
    assert pipe.unet.config.attention_head_dim == base_model.UNET_HEADS
    def as_json(config) -> str:  # a saved config reads lists where the built one has tuples
        return json.dumps({key: value for key, value in config.items() if not key.startswith("_")}, sort_keys=True)

    assert as_json(base_model.build_unet().config) == as_json(pipe.unet.config)


@pytest.mark.slow
def test_every_lora_loads_and_changes_the_image(pipe):
    prompt = "a picture, red circle figure"
    before = _image(pipe, prompt)
    for concept in world.CONCEPTS:
        pipe.load_lora_weights(str(TOY / "lora" / f"{concept.id}.safetensors"), adapter_name=concept.id)
    try:
        for concept in world.CONCEPTS[:3]:
            pipe.set_adapters([concept.id], [1.0])
            assert np.abs(_image(pipe, prompt) - before).max() > 1e-3, concept.id
    finally:
        pipe.unload_lora_weights()


def test_committed_loras_were_trained_with_the_recipe():
    """Every option that shapes a committed LoRA's weights (the file's training record) is the recipe's."""
    from safetensors import safe_open

    from harness.toy import build, lora_recipe

    budget = build.Budget()
    for concept in world.CONCEPTS:
        metadata = safe_open(TOY / "lora" / f"{concept.id}.safetensors", "pt").metadata()
        config = lora_recipe.training_config(concept.id, budget.lora_steps, budget.lora_batch)
        assert int(metadata["steps"]) == lora_recipe.lora_steps(concept.id, budget.lora_steps), concept.id
        assert {key: json.loads(metadata[key]) for key in config.record()} == config.record(), concept.id
        assert json.loads(metadata["base_model"])["base"] == "testbed/toy/base", concept.id


def test_references_exist_for_every_concept():
    for concept in world.CONCEPTS:
        files = sorted((TOY / "references" / concept.id).glob("*.png"))
        assert files and Image.open(files[0]).size == (world.SIZE, world.SIZE)


@pytest.mark.parametrize("category", world.CATEGORIES)
def test_oracle_recognises_clean_renders(oracle, category):
    from harness.toy.oracle import sample_any_spec

    rng = np.random.default_rng(123)
    specs = [sample_any_spec(rng) for _ in range(96)]
    specs += [world.concept_spec(c.id, rng) for c in world.CONCEPTS]
    predictions = oracle.predict(np.stack([world.render(spec, rng) for spec in specs]))
    accuracy = np.mean([p[category].label == s.labels()[category] for p, s in zip(predictions, specs)])
    assert accuracy >= 0.9, (category, accuracy)


@pytest.mark.parametrize("category", ["clothing", "style", "background"])
def test_oracle_reads_patterns_at_any_phase(oracle, category):
    """A pattern that starts elsewhere is the same pattern (oracle version 2 read checks shifted by 2 px as
    dots, and dots as bars)."""
    from harness.toy.oracle import sample_any_spec

    rng = np.random.default_rng(321)
    specs = [sample_any_spec(rng) for _ in range(96)]
    predictions = oracle.predict(np.stack([world.render(spec, rng, any_phase=True) for spec in specs]))
    accuracy = np.mean([p[category].label == s.labels()[category] for p, s in zip(predictions, specs)])
    assert accuracy >= 0.9, (category, accuracy)


def test_oracle_metric_rows(tmp_path, oracle):
    from harness.toy.oracle_metric import ToyOracleMetric
    from harness.store import ImageRecord

    rng = np.random.default_rng(5)
    spec = world.with_concept(world.concept_spec("character_1", rng), "object_1")
    path = tmp_path / "seed0.png"
    Image.fromarray(world.render(spec, rng)).save(path)
    loras = [{"id": "character_1", "category": "character", "trigger": ["zorblat"]},
             {"id": "object_1", "category": "object", "trigger": ["tanghoop"]}]
    fill = [world.slot_phrase(c, spec.slot(c)) for c in ("clothing", "style", "background")]
    prompt = ", ".join(["a picture", "zorblat", "tanghoop", *fill])
    record = ImageRecord("single/x/seed0", path, "k", "toy", "merge", "merge", "mk", "n2_x", 2, 0, prompt, "", loras)
    metric = ToyOracleMetric(oracle_dir=str(TOY / "oracle"))
    rows = {row.sub_metric: row for row in metric.score([record])}
    assert set(rows) == {"present:character", "present:object", "all_present", "kept:clothing", "kept:style",
                         "kept:background", "all_kept"}
    assert rows["all_present"].value == 1.0 and rows["all_kept"].value == 1.0
    # a LoRA that is not a toy concept is reported missing, not as 0
    record.loras = [{"id": "character_9", "category": "character", "trigger": []}]
    row = next(r for r in metric.score([record]) if r.sub_metric == "present:character")
    assert row.value is None and row.status == "unavailable"
