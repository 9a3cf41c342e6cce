"""``benchmarks/toy_lora_recipe.py``: retrains toy LoRAs into a scratch testbed and measures them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
import toy_lora_recipe  # noqa: E402

LORAS = Path(__file__).parents[1] / "testbed" / "toy" / "lora"


@pytest.mark.slow
def test_a_retrained_lora_is_measured_without_touching_the_committed_one(tmp_path, capsys):
    committed = LORAS / "object_2.safetensors"
    before = committed.stat().st_mtime_ns
    assert toy_lora_recipe.main(["--loras", "object_2", "--steps", "1", "--examples", "4", "--images", "2",
                                 "--work", str(tmp_path)]) == 0
    assert committed.stat().st_mtime_ns == before
    retrained = tmp_path / "lora" / "object_2.safetensors"
    assert retrained.read_bytes() != committed.read_bytes()
    assert (tmp_path / "lora" / "style_1.safetensors").read_bytes() == (LORAS / "style_1.safetensors").read_bytes()
    out = capsys.readouterr().out
    assert "object_2: 1 steps" in out and "\nobject_2 " in out and "LoRAs: mean present" in out


def test_an_unknown_lora_id_names_the_known_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        toy_lora_recipe.main(["--loras", "object_9", "--work", str(tmp_path)])
    err = capsys.readouterr().err
    assert "object_9" in err and "character_1" in err


@pytest.mark.slow
def test_no_text_encoder_trains_a_unet_only_lora(tmp_path):
    from safetensors import safe_open

    assert toy_lora_recipe.main(["--loras", "object_2", "--no-text-encoder", "--steps", "1", "--examples", "4",
                                 "--images", "1", "--work", str(tmp_path)]) == 0
    with safe_open(str(tmp_path / "lora" / "object_2.safetensors"), "pt") as lora:
        assert {key.split(".")[0] for key in lora.keys()} == {"unet"}


def test_the_testbed_s_own_lora_folder_is_refused_as_scratch(capsys):
    before = (LORAS / "object_2.safetensors").stat().st_mtime_ns
    with pytest.raises(SystemExit):
        toy_lora_recipe.main(["--loras", "object_2", "--work", str(LORAS.parent)])
    assert "would overwrite the testbed's own LoRAs" in capsys.readouterr().err
    assert (LORAS / "object_2.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_trainer_options_reach_the_retrained_file(tmp_path):
    import json

    from safetensors import safe_open

    from harness.training.lora_file import read_lora_metadata

    assert toy_lora_recipe.main(["--loras", "object_2", "--steps", "1", "--examples", "4", "--images", "1",
                                 "--te-lr", "1e-2", "--timesteps", "300,1000", "--loraplus", "4",
                                 "--text-targets", "q_proj,token_embedding", "--warmup", "1", "--mask-floor", "0.1",
                                 "--unet-targets", "to_q,conv1", "--triggers-last",
                                 "--work", str(tmp_path)]) == 0
    path = tmp_path / "lora" / "object_2.safetensors"
    metadata = read_lora_metadata(path)
    assert json.loads(metadata["text_encoder_learning_rate"]) == 0.01
    assert json.loads(metadata["timestep_range"]) == [300, 1000]
    assert json.loads(metadata["loraplus_lr_ratio"]) == 4.0 and json.loads(metadata["warmup_steps"]) == 1
    assert json.loads(metadata["text_encoder_target_modules"]) == ["q_proj", "token_embedding"]
    assert json.loads(metadata["alpha_mask"]) is True
    assert json.loads(metadata["unet_target_modules"]) == ["to_q", "conv1"]
    assert all(caption.endswith("plumcharm, grape token") for caption in json.loads(metadata["captions"]))
    with safe_open(str(path), "pt") as lora:
        assert any("token_embedding.lora_embedding_A" in key for key in lora.keys())


@pytest.mark.slow
def test_toy_quality_named_measures_every_held_back_combination(tmp_path):
    import json

    import toy_quality

    out = tmp_path / "figures.json"
    assert toy_quality.main(["--images", "1", "--skip-base", "--loras", "none", "--named", "--threads", "1",
                             "--json", str(out)]) == 0
    named = json.loads(out.read_text())["named"]
    assert set(named) == {"character_1", "character_2", "character_3", "clothing_1", "clothing_2", "style_1",
                          "style_2", "background_1", "background_2", "object_1", "object_2"}
    assert all(rate in (0.0, 1.0) for rate in named.values())  # one image each: drawn or not


@pytest.mark.slow
def test_toy_quality_variants_measures_every_generic_variant_of_a_slot(tmp_path):
    import json

    import toy_quality

    from harness.toy import world

    out = tmp_path / "figures.json"
    assert toy_quality.main(["--images", "2", "--skip-base", "--loras", "none", "--variants", "clothing",
                             "--threads", "1", "--json", str(out)]) == 0
    rates = json.loads(out.read_text())["variants"]
    assert set(rates) == {f"generic:{ink}-{pattern}" for ink, pattern in world.generic_variants("clothing")}
    assert "generic:white-dots" in rates and "generic:black-dots" not in rates  # held back: Polka gown's pair
    assert all(rate in (0.0, 0.5, 1.0) for rate in rates.values())


def test_preservation_adds_generic_scenes_and_keeps_the_concept_examples():
    from harness.toy import world
    from harness.toy.lora_recipe import lora_examples

    plain = lora_examples("object_2", 6, seed=3)
    mixed = lora_examples("object_2", 6, seed=3, preservation=4)
    assert len(mixed) == 10
    assert [caption for _, caption in mixed[:6]] == [caption for _, caption in plain]
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(mixed[:6], plain))
    trigger = world.CONCEPTS_BY_ID["object_2"].trigger[0]
    assert all(trigger in caption for _, caption in mixed[:6])
    assert not any(trigger in caption for _, caption in mixed[6:])


def test_mask_floor_marks_the_concept_region_opaque():
    import numpy as np

    from harness.toy.lora_recipe import lora_examples

    plain = lora_examples("object_2", 4, seed=3)
    masked = lora_examples("object_2", 4, seed=3, mask_floor=0.1)
    for (rgb, caption), (rgba, masked_caption) in zip(plain, masked):
        assert rgb.mode == "RGB" and rgba.mode == "RGBA" and caption == masked_caption
        pixels = np.asarray(rgba)
        np.testing.assert_array_equal(pixels[..., :3], np.asarray(rgb))  # the same scenes
        alpha = pixels[..., 3]
        assert set(np.unique(alpha)) == {26, 255}
        assert 100 <= (alpha == 255).sum() <= 144  # the 9-px icon's box (11 x 11 +- rounding)
        assert (alpha[:13, 18:] == 255).sum() == (alpha == 255).sum()  # at the top right, where the icon is


def test_the_build_trains_object_loras_masked_and_the_others_plain(tmp_path):
    import json
    from dataclasses import replace

    from harness.toy import lora_recipe
    from harness.training.lora_file import read_lora_metadata

    def alpha_mask(concept_id: str, **options) -> bool:
        config = replace(lora_recipe.training_config(concept_id, 1, 2), **options)
        path = lora_recipe.train_concept_lora(LORAS.parent / "base", concept_id,
                                              tmp_path / f"{concept_id}.safetensors", config, examples=4)
        return json.loads(read_lora_metadata(path)["alpha_mask"])

    assert lora_recipe.LORA_MASK_FLOOR == {"object": 0.1}
    assert alpha_mask("object_2") is True and alpha_mask("clothing_1") is False
    assert alpha_mask("object_2", alpha_mask=False) is False


def test_toy_quality_measures_the_base_with_shifted_phrases(tmp_path):
    import json

    import toy_quality

    out = tmp_path / "figures.json"
    assert toy_quality.main(["--images", "2", "--loras", "none", "--threads", "1", "--json", str(out)]) == 0
    base = json.loads(out.read_text())["base"]
    assert set(base["shifted_per_slot"]) == set(base["per_slot"]) == {"character", "clothing", "style", "background",
                                                                      "object"}
    assert all(rate in (0.0, 0.5, 1.0) for rate in base["shifted_per_slot"].values())  # two images each


def test_a_mask_floor_outside_0_1_is_refused(capsys):
    from harness.toy.lora_recipe import lora_examples

    with pytest.raises(ValueError, match="mask_floor must be in"):
        lora_examples("object_2", 2, seed=0, mask_floor=2.0)
    with pytest.raises(SystemExit):
        toy_lora_recipe.main(["--loras", "object_2", "--mask-floor", "1.5"])
    assert "expected a weight in [0, 1]" in capsys.readouterr().err


def test_the_recipe_config_of_every_concept():
    from harness.toy import build, lora_recipe, world

    budget = build.Budget()
    for number, concept in enumerate(world.CONCEPTS):
        config = lora_recipe.training_config(concept.id, budget.lora_steps, budget.lora_batch)
        assert config.steps == (3200 if concept.category == "clothing" else 400), concept.id
        assert config.alpha_mask is (concept.category == "object"), concept.id  # LORA_MASK_FLOOR
        assert config.seed == number and config.batch_size == budget.lora_batch
        assert (config.rank, config.lora_alpha, config.learning_rate) == (8, 8.0, 2e-3)
        assert config.train_text_encoder and config.text_targets == lora_recipe.LORA_TEXT_TARGETS
        assert config.unet_targets == lora_recipe.LORA_UNET_TARGETS
        assert (config.snr_gamma, config.noise_offset, config.uncond_anchor) == (5.0, 0.1, 1.0)
        assert config.resolution == world.SIZE and config.device == "cpu" and not config.progress


def test_the_loras_train_with_the_base_models_loss():
    from harness.toy import build, lora_recipe

    assert lora_recipe.LORA_LOSS == {key: build.BASE_TRAINING[key] for key in lora_recipe.LORA_LOSS}


def test_a_mask_floor_goes_with_alpha_mask(tmp_path):
    from dataclasses import replace

    from harness.toy import lora_recipe

    clothing = lora_recipe.training_config("clothing_1", 1, 2)
    with pytest.raises(ValueError, match="needs a mask_floor"):  # no floor for clothing in LORA_MASK_FLOOR
        lora_recipe.train_concept_lora(LORAS.parent / "base", "clothing_1", tmp_path / "c.safetensors",
                                       replace(clothing, alpha_mask=True), examples=2)
    with pytest.raises(ValueError, match="only with alpha_mask"):
        lora_recipe.train_concept_lora(LORAS.parent / "base", "clothing_1", tmp_path / "c.safetensors", clothing,
                                       examples=2, mask_floor=0.1)
    assert not (tmp_path / "c.safetensors").exists()
