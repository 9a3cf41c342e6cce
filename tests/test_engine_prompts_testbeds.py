"""Trigger removal, prompt assembly and ComposLoRA set generation."""

from harness.prompts import remove_phrases, tidy_prompt
from harness.paths import CONF_DIR
from harness.testbeds import load_testbed
from omegaconf import OmegaConf


def test_remove_phrases_whole_words_case_insensitive_and_tidy():
    prompt = "RAW photo, School Uniform, white shirt, red tie, schoolgirl"
    assert remove_phrases(prompt, ["school uniform", "white shirt"]) == "RAW photo, red tie, schoolgirl"
    assert remove_phrases("a, b, c", ["a", "c"]) == "b"
    assert tidy_prompt(" , a, , ,b  c ,") == "a, b c"


def _composlora(style):
    config = OmegaConf.load(CONF_DIR / "testbed" / f"composlora_{style}.yaml")
    return load_testbed(OmegaConf.to_container(config, resolve=True))


def test_composlora_set_counts_per_n():
    for style in ("anime", "reality"):
        testbed = _composlora(style)
        counts = {n: sum(1 for s in testbed.sets() if s.n == n) for n in (2, 3, 4, 5)}
        assert counts == {2: 24, 3: 72, 4: 96, 5: 48}
        assert all(s.loras[0].category == "character" for s in testbed.sets())
        assert len({s.id for s in testbed.sets()}) == 240


def test_composlora_prompt_is_base_plus_triggers_in_set_order():
    testbed = _composlora("anime")
    composition = next(s for s in testbed.sets() if s.id == "n3_character_1+clothing_2+object_1")
    assert testbed.prompt_for(composition) == (
        "masterpiece, best quality, kamado nezuko, black hair, pink eyes, forehead, zero suit, blue gloves, "
        "high heels, two-handed burger, holding a huge burger with both hands")
    assert testbed.missing_triggers(composition, testbed.prompt_for(composition)) == []


def test_custom_testbed_with_two_characters_and_fill(tmp_path):
    loras = [{"id": f"c{i}", "category": "character", "trigger": [f"person{i}"]} for i in range(3)]
    loras.append({"id": "s1", "category": "style", "trigger": ["ink"]})
    testbed = load_testbed({"name": "custom", "loras": loras, "always": ["character", "character"], "n": [2, 3],
                            "lora_dir": str(tmp_path), "prompt": "photo", "prompt_template": "{prompt}, {triggers}, {fill}",
                            "fill": {"style": "plain style"}})
    ids = [s.id for s in testbed.sets()]
    assert ids == ["n2_c0+c1", "n2_c0+c2", "n2_c1+c2", "n3_c0+c1+s1", "n3_c0+c2+s1", "n3_c1+c2+s1"]
    assert testbed.prompt_for(testbed.sets()[0]) == "photo, person0, person1, plain style"
    assert testbed.prompt_for(testbed.sets()[3]) == "photo, person0, person1, ink"


def test_single_lora_sets_and_explicit_sets(tmp_path):
    loras = [{"id": "a", "category": "character", "trigger": ["x"]}, {"id": "b", "category": "object", "trigger": ["y"]}]
    testbed = load_testbed({"name": "t", "loras": loras, "n": [1], "lora_dir": str(tmp_path), "always": ["character"]})
    assert [s.id for s in testbed.sets()] == ["n1_a", "n1_b"]
    explicit = load_testbed({"name": "t", "loras": loras, "sets": [["b", "a"]], "lora_dir": str(tmp_path)})
    assert [s.id for s in explicit.sets()] == ["n2_b+a"]
