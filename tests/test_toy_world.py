"""The toy world: deterministic renders, captions and triggers, manifest and set structure (no models)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from harness.toy import world

ROOT = Path(__file__).resolve().parents[1]


def test_render_is_deterministic_and_sized():
    spec = world.sample_generic_spec(np.random.default_rng(3))
    first = world.render(spec, np.random.default_rng(7))
    second = world.render(spec, np.random.default_rng(7))
    assert first.shape == (world.SIZE, world.SIZE, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, second)


def test_any_phase_shifts_the_patterns_only():
    spec = world.SceneSpec(character=("red", "square"), clothing=("white", "checks"), style=("natural", "smooth"),
                           background=("gray", "plain"), object=("black", "ball"))
    plain = world.render(spec, np.random.default_rng(7))
    np.testing.assert_array_equal(plain, world.render(spec, np.random.default_rng(7), any_phase=False))

    def ink_patterns(any_phase: bool) -> set[bytes]:
        """The white ink inside the figure, cut out at the figure's box: where the pattern sits on it."""
        patterns = set()
        for seed in range(12):
            image, regions = world.render_with_regions(spec, np.random.default_rng(seed), any_phase=any_phase)
            rows, columns = np.flatnonzero(regions["clothing"].any(1)), np.flatnonzero(regions["clothing"].any(0))
            box = (slice(rows[0], rows[-1] + 1), slice(columns[0], columns[-1] + 1))
            patterns.add((image[box].astype(int).min(-1) > 200).tobytes())
        return patterns

    assert len(ink_patterns(False)) == 1  # the world's fixed phase: the same checks on every figure
    assert len(ink_patterns(True)) > 3


def test_every_slot_changes_the_image():
    rng = np.random.default_rng(0)
    spec = world.sample_generic_spec(rng)
    reference = world.render(spec, np.random.default_rng(1)).astype(int)
    for category in world.CATEGORIES:
        other = next(v for v in world.generic_variants(category) if v != spec.slot(category)
                     and not (category == "clothing" and v[1] == "plain" and spec.slot(category)[1] == "plain"))
        changed = world.render(spec.replace(**{category: other}), np.random.default_rng(1)).astype(int)
        assert np.abs(changed - reference).sum() > 0, category


def test_regions_cover_what_each_slot_changes():
    spec = world.sample_generic_spec(np.random.default_rng(4)).replace(style=("natural", "smooth"))
    image, regions = world.render_with_regions(spec, np.random.default_rng(9))
    np.testing.assert_array_equal(image, world.render(spec, np.random.default_rng(9)))  # same rng use
    assert set(regions) == set(world.CATEGORIES) and regions["style"].all()
    np.testing.assert_array_equal(regions["background"], ~(regions["character"] | regions["object"]))
    # a new variant changes pixels inside the region only (for the character: its colour; a shape is a new region)
    for category in ("character", "clothing", "object"):
        for other in world.generic_variants(category):
            if category == "character" and other[1] != spec.character[1]:
                continue
            changed = world.render(spec.replace(**{category: other}), np.random.default_rng(9)).astype(int)
            moved = np.abs(changed - image.astype(int)).sum(axis=2) > 0
            assert not (moved & ~regions[category]).any(), (category, other)


def test_object_shapes_are_legible_at_the_icon_size():
    # at 7 px a ball and a cross differed by 4 pixels and the base model drew one blob for every shape
    import itertools

    yy, xx = np.mgrid[0:16, 0:16].astype(float)
    masks = {shape: world._shape_mask(shape, world.OBJECT_SIZE, yy, xx, 8, 8) for shape in world.OBJECT_SHAPES}
    for first, second in itertools.combinations(world.OBJECT_SHAPES, 2):
        assert (masks[first] ^ masks[second]).sum() >= 12, (first, second)


@pytest.mark.parametrize("offset", [0, 1])
def test_clothing_patterns_survive_the_vae_downsampling(offset):
    # the VAE pools 2x2 pixels into one latent; a period-4 pattern at an odd offset pooled to flat grey
    import itertools

    yy, xx = np.mgrid[0:16, 0:16].astype(float) + offset
    pooled = {pattern: world.clothing_mask(pattern, yy, xx).astype(float).reshape(8, 2, 8, 2).mean(axis=(1, 3))
              for pattern in world.CLOTHING_PATTERNS}
    for pattern in world.CLOTHING_PATTERNS[1:]:
        assert pooled[pattern].max() - pooled[pattern].min() >= 0.75, pattern
    for first, second in itertools.combinations(world.CLOTHING_PATTERNS, 2):
        assert np.abs(pooled[first] - pooled[second]).sum() >= 8, (first, second)


def test_held_back_combinations_never_in_generic_scenes():
    rng = np.random.default_rng(0)
    labels = Counter(label for _ in range(2000) for label in world.sample_generic_spec(rng).labels().values())
    assert not any(label in world.CONCEPTS_BY_ID for label in labels)
    for concept in world.CONCEPTS:
        assert concept.value not in world.generic_variants(concept.category)
        # a new combination of attributes the base model does see, each with other partners
        first, second = concept.value
        variants = world.generic_variants(concept.category)
        assert any(v[0] == first for v in variants) and any(v[1] == second for v in variants)


def test_captions_round_trip_and_triggers_are_unseen():
    rng = np.random.default_rng(1)
    generic_words = set()
    for _ in range(300):
        spec = world.sample_generic_spec(rng)
        text = world.caption(spec)
        assert text.startswith(world.BASE_PROMPT)
        assert world.parse_prompt(text) == spec.labels()
        generic_words |= set(world.caption(spec, rng, drop_slot=0.3).replace(",", " ").split())
    for concept in world.CONCEPTS:
        assert concept.trigger[0] not in generic_words  # the rare token is never named in base training
        assert len(concept.trigger) >= 2
        text = world.caption(world.concept_spec(concept.id, rng), concepts=(concept.id,))
        assert all(phrase in text for phrase in concept.trigger)
        assert concept.category not in world.parse_prompt(text)  # its slot is named only by the triggers


def test_manifest_matches_composlora_format():
    manifest = world.manifest()
    anime = json.loads((ROOT / "testbed/composlora/anime_lora_info.json").read_text())
    assert list(manifest) == list(anime) == list(world.CATEGORIES)
    for category, entries in manifest.items():
        assert [e["id"] for e in entries] == [f"{category}_{i + 1}" for i in range(len(entries))]
        for entry, reference in zip(entries, anime[category]):
            assert set(entry) == set(reference)
            assert all(isinstance(phrase, str) and phrase for phrase in entry["trigger"])
    assert [len(manifest[c]) for c in world.CATEGORIES] == [len(anime[c]) for c in world.CATEGORIES] == [3, 2, 2, 2, 2]
    committed = ROOT / "testbed/toy/lora_info.json"
    assert json.loads(committed.read_text()) == manifest


def test_testbed_config_gives_composlora_set_counts():
    from harness.testbeds import load_testbed

    config = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/testbed/toy.yaml"), resolve=True)
    testbed = load_testbed(config)
    counts = Counter(s.n for s in testbed.sets())
    assert [counts[n] for n in (2, 3, 4, 5)] == [24, 72, 96, 48]
    for composition in testbed.sets()[:20]:
        prompt = testbed.prompt_for(composition)
        present = {lora.category for lora in composition.loras}
        assert set(world.parse_prompt(prompt)) == set(config["fill"]) - present  # fill phrases parse back


def test_every_toy_prompt_fits_the_base_model_context():
    from harness.prompts import truncation_report
    from harness.testbeds import load_testbed
    from harness.toy.base_model import PROMPT_TOKENS
    from harness.toy.tokenizer import build_toy_tokenizer

    tokenizer = build_toy_tokenizer(world.vocabulary(), model_max_length=PROMPT_TOKENS)
    testbed = load_testbed(OmegaConf.to_container(OmegaConf.load(ROOT / "conf/testbed/toy.yaml"), resolve=True))
    prompts = [testbed.prompt_for(composition) for composition in testbed.sets()]
    prompts += [world.caption(world.concept_spec(c.id, np.random.default_rng(0)), concepts=(c.id,)) for c in world.CONCEPTS]
    assert all(truncation_report(tokenizer, prompt) is None for prompt in prompts)
    too_long = ", ".join(prompts[-1:] * 3)  # the check above can fail: a prompt three times as long does not fit
    assert truncation_report(tokenizer, too_long)["limit"] == PROMPT_TOKENS


def test_toy_tokenizer_has_one_token_per_word(tmp_path):
    from harness.toy.tokenizer import build_toy_tokenizer

    tokenizer = build_toy_tokenizer(world.vocabulary(), tmp_path)
    assert all(len(tokenizer.tokenize(word)) == 1 for word in world.vocabulary())
    assert tokenizer.model_max_length == 77
    assert len(tokenizer.tokenize("qqzx")) >= 1  # unknown words still tokenize (letters)


@pytest.mark.parametrize("category", world.CATEGORIES)
def test_variant_labels(category):
    for variant in world.generic_variants(category):
        assert world.variant_label(category, variant).startswith("generic:")


def test_oracle_augmentation_keeps_range_and_changes_pixels():
    import torch

    from harness.toy.base_model import to_model_range
    from harness.toy.oracle import augment

    rng = np.random.default_rng(0)
    images = to_model_range(np.stack([world.render(world.sample_generic_spec(rng), rng) for _ in range(8)]))
    augmented = augment(images, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and augmented.min() >= -1 and augmented.max() <= 1
    assert 0.01 < (augmented - images).abs().mean() < 0.2  # changed, but the scene is still the scene
    again = augment(images, torch.Generator().manual_seed(0))
    assert torch.equal(augmented, again)


def test_oracle_from_another_version_is_refused_with_the_fix(tmp_path):
    import json

    from harness.toy.oracle import HEADS, ORACLE_VERSION, Oracle, SlotNet, head_classes, save_oracles

    save_oracles([SlotNet()], tmp_path)
    assert len(Oracle.load(tmp_path).members) == 1
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("version")  # what a version-1 oracle (whole-image branch only) wrote
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--phases oracle --force"):
        Oracle.load(tmp_path)
    config["version"] = ORACLE_VERSION
    config["world_version"] = world.WORLD_VERSION - 1  # trained on renders of an older world (7-px icons)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="--phases oracle --force"):
        Oracle.load(tmp_path)
    assert config["heads"] == [[c, i, list(head_classes(c, i))] for c, i in HEADS]


def test_base_training_options_each_change_the_trained_unet():
    import torch

    from harness.toy import base_model
    from harness.toy.tokenizer import build_toy_tokenizer

    torch.set_num_threads(1)
    pool = base_model.render_pool(8, seed=0)
    vae = base_model.build_vae().eval()
    tokenizer = build_toy_tokenizer(world.vocabulary())
    options = {"plain": {}, "again": {}, "ema": {"ema": True}, "offset": {"noise_offset": 0.1},
               "min_snr": {"snr_gamma": 5.0}, "phrases": {"phrase_shuffle": True, "phrase_repeat": 0.5},
               "phrase_offset": {"phrase_offset": 4}, "regions": {"region_weights": {"object": 4.0}},
               "dots_oversampled": {"attribute_weights": {("clothing", "dots"): 3.0}}}
    weights = {}
    for name, extra in options.items():
        unet, _ = base_model.train_unet(pool, vae, tokenizer, steps=2, batch_size=4, seed=0, log=lambda _: None, **extra)
        weights[name] = unet.conv_in.weight.detach().clone()
    assert torch.equal(weights["plain"], weights["again"])  # seeded: the differences below come from the options
    for name in ("ema", "offset", "min_snr", "phrases", "phrase_offset", "regions", "dots_oversampled"):
        assert not torch.equal(weights["plain"], weights[name]), name
    assert base_model.build_unet(attention_at_16=True).down_blocks[0].attentions  # the pilot option really adds it
    assert not hasattr(base_model.build_unet().down_blocks[0], "attentions")


def test_region_weights_raise_the_loss_weight_on_the_slot_regions_only():
    import torch

    from harness.toy import base_model

    pool = base_model.render_pool(6, seed=0)
    rng = np.random.default_rng(0)  # replay render_pool: all specs first, then the renders in order
    specs = [world.sample_generic_spec(rng) for _ in range(6)]
    image, regions = world.render_with_regions(specs[0], rng)
    assert specs == pool.specs and torch.equal(base_model.to_model_range(image[None]), pool.images[:1])
    assert pool.regions.shape == (6, len(world.CATEGORIES), world.SIZE, world.SIZE)
    for number, category in enumerate(world.CATEGORIES):  # the pool's regions are the render's own
        assert torch.equal(pool.regions[0, number], torch.from_numpy(regions[category]))
    assert regions["object"].any() and not regions["object"].all()
    weights = base_model.region_pixel_weights(pool, {"object": 4.0, "clothing": 2.0}, world.SIZE)
    icon = pool.regions[:, world.CATEGORIES.index("object")]
    figure = pool.regions[:, world.CATEGORIES.index("clothing")]
    expected = 1.0 + 3.0 * icon.float() + 1.0 * figure.float()
    assert torch.equal(weights[:, 0], expected)
    latent = base_model.region_pixel_weights(pool, {"object": 4.0}, world.SIZE // 2)
    assert latent.shape == (6, 1, world.SIZE // 2, world.SIZE // 2)
    assert torch.allclose(latent.mean((1, 2, 3)), 1.0 + 3.0 * icon.float().mean((1, 2)))  # area averaging
    assert torch.equal(base_model.region_pixel_weights(pool, {}, 16), torch.ones(6, 1, 16, 16))
    for bad in ({"hat": 2.0}, {"object": 0.0}):
        with pytest.raises(ValueError, match="region_weights"):
            base_model.region_pixel_weights(pool, bad, 16)


def test_attribute_weights_draw_the_weighted_scenes_that_many_times_as_often():
    from harness.toy import base_model

    pool = base_model.render_pool(200, seed=0)
    dots = np.array(["dots" in spec.clothing for spec in pool.specs])
    black = np.array([spec.clothing[0] == "black" for spec in pool.specs])
    assert 0 < dots.sum() < len(dots) and (dots & ~black).any()
    odds = base_model.scene_sampling_weights(pool, {("clothing", "dots"): 3.0})
    assert odds.sum() == pytest.approx(1.0)
    assert np.allclose(odds[dots], 3 * odds[~dots][0]) and np.allclose(odds[~dots], odds[~dots][0])
    both = base_model.scene_sampling_weights(pool, {("clothing", "dots"): 3.0, ("clothing", "white"): 2.0})
    white_dots, plain = dots & ~black, ~dots & black  # weights multiply: 6, 2, 1
    assert np.allclose(both[white_dots], 6 * both[plain][0])
    assert np.allclose(both[~dots & ~black], 2 * both[plain][0])
    for bad in ({("clothing", "spirals"): 2.0}, {("hat", "dots"): 2.0}, {("clothing", "dots"): 0.0}):
        with pytest.raises(ValueError, match="attribute_weights"):
            base_model.scene_sampling_weights(pool, bad)


def test_caption_augmentation_moves_phrases_and_keeps_their_words():
    from harness.toy.base_model import augment_caption

    rng = np.random.default_rng(0)
    caption = world.caption(world.sample_generic_spec(rng))
    first, *phrases = caption.split(", ")
    assert augment_caption(caption, rng, shuffle=False, repeat=0.0) == caption
    assert augment_caption("", rng, shuffle=True, repeat=1.0) == ""  # the CFG's empty caption stays empty
    doubled = augment_caption(caption, rng, shuffle=False, repeat=1.0).split(", ")
    assert doubled == [first] + [copy for phrase in phrases for copy in (phrase, phrase)]
    orders = set()
    for _ in range(20):
        shuffled = augment_caption(caption, rng, shuffle=True, repeat=0.0).split(", ")
        assert shuffled[0] == first and sorted(shuffled[1:]) == sorted(phrases)
        orders.add(tuple(shuffled))
    assert len(orders) > 5
    assert world.parse_prompt(", ".join(shuffled)) == world.parse_prompt(caption)  # the same scene


def test_caption_offset_moves_the_whole_caption_and_keeps_its_order():
    from harness.toy.base_model import augment_caption
    from harness.toy.tokenizer import build_toy_tokenizer

    tokenizer = build_toy_tokenizer(world.vocabulary())
    rng = np.random.default_rng(0)
    caption = world.caption(world.sample_generic_spec(rng))
    tokens = tokenizer.tokenize(caption)
    shifts = set()
    for _ in range(60):
        moved = tokenizer.tokenize(augment_caption(caption, rng, shuffle=False, repeat=0.0, offset=3))
        shift = len(moved) - len(tokens)
        assert moved[shift:] == tokens and set(moved[:shift]) <= {",</w>"}  # only leading commas added
        shifts.add(shift)
    assert shifts == {0, 1, 2, 3}
    assert world.parse_prompt(augment_caption(caption, rng, False, 0.0, offset=3)) == world.parse_prompt(caption)
    assert augment_caption("", rng, shuffle=False, repeat=0.0, offset=3) == ""  # CFG's empty caption stays empty
    with pytest.raises(ValueError, match="offset must be >= 0"):
        augment_caption(caption, rng, shuffle=False, repeat=0.0, offset=-1)
    with pytest.raises(ValueError, match="repeat a probability"):
        augment_caption(caption, rng, shuffle=False, repeat=1.5)


def test_triggers_last_moves_only_the_trigger_phrases():
    spec = world.concept_spec("character_1", np.random.default_rng(3))
    usual = world.caption(spec, concepts=("character_1",))
    last = world.caption(spec, concepts=("character_1",), triggers_last=True)
    trigger = ", ".join(world.CONCEPTS_BY_ID["character_1"].trigger)
    assert usual.startswith(f"a picture, {trigger}, ") and last.endswith(f", {trigger}")
    assert sorted(usual.split(", ")) == sorted(last.split(", "))
    assert world.parse_prompt(usual) == world.parse_prompt(last)


def test_base_pool_can_show_held_back_concepts_that_its_captions_never_name(monkeypatch):
    import torch

    from harness.toy import base_model
    from harness.toy.tokenizer import build_toy_tokenizer

    plain, shown = base_model.render_pool(200, seed=0), base_model.render_pool(200, seed=0, unnamed_held_back=0.3)
    assert base_model.render_pool(200, seed=0, unnamed_held_back=0.0).specs == plain.specs
    unnamed = [i for i, categories in enumerate(shown.unnamed) if categories]
    assert 30 < len(unnamed) < 90
    for i in unnamed:
        (category,) = shown.omitted(i)
        assert world.variant_label(category, shown.specs[i].slot(category)) in world.CONCEPTS_BY_ID
    assert {shown.omitted(i)[0] for i in unnamed} == set(world.CATEGORIES)
    others = [i for i in range(200) if i not in unnamed]
    assert all(plain.specs[i] == shown.specs[i] for i in others)
    assert torch.equal(plain.images[others], shown.images[others])  # the rest of the pool is the plain pool's
    with pytest.raises(ValueError, match="unnamed_held_back"):
        base_model.render_pool(4, seed=0, unnamed_held_back=1.5)
    with pytest.raises(ValueError, match="unnamed_held_back"):  # a negative share is not read as "off"
        base_model.render_pool(4, seed=0, unnamed_held_back=-0.1)

    captions: list[str] = []  # what base training really feeds the text encoder
    encode = base_model.encode_captions
    monkeypatch.setattr(base_model, "encode_captions", lambda tok, texts: (captions.extend(texts), encode(tok, texts))[1])
    torch.set_num_threads(1)
    small = base_model.Pool(shown.images[unnamed[:4]], [shown.specs[i] for i in unnamed[:4]],
                            [shown.unnamed[i] for i in unnamed[:4]])
    base_model.train_unet(small, base_model.build_vae().eval(), build_toy_tokenizer(world.vocabulary()), steps=3,
                          batch_size=8, seed=0, drop_slot=0.0, drop_caption=0.0, log=lambda _: None)
    assert len(captions) == 24
    for text in captions:  # four slots named, never the held-back one
        labels = world.parse_prompt(text)
        assert len(labels) == 4 and all(label.startswith("generic:") for label in labels.values()), text
