"""The judge's tolerant answer parsers and rubric prompts (no server)."""

from __future__ import annotations

import json

import pytest

from harness.judge.parsing import ParseError, looks_like_refusal, parse_pairwise, parse_pointwise
from harness.judge.rubrics import PAIRWISE, POINTWISE, POINTWISE_CRITERIA, element_list


def test_pairwise_text_block_with_markdown_takes_the_last_block():
    text = (
        "The answer format is Image 1: Composition Quality: 1/10, Image Quality: 1/10 (quoted).\n"
        "Image 1 misses the hat (-3).\n\n"
        "**Image 1:** Composition Quality: 6.5/10, Image Quality: 7/10\n"
        "**Image 2:** Composition Quality: 8/10, Image Quality: 5.5 / 10\n"
    )
    assert parse_pairwise(text) == {"image_1": {"composition": 6.5, "quality": 7.0},
                                    "image_2": {"composition": 8.0, "quality": 5.5}}


def test_pairwise_json_flat_nested_and_fenced():
    flat = {"analysis": "x", "image_1_composition": 4, "image_1_quality": 5.5,
            "image_2_composition": "7/10", "image_2_quality": 9}
    nested = {"Image 1": {"Composition Quality": 4, "Image Quality": 5.5},
              "Image 2": {"composition": 7, "quality": 9}}
    expected = {"image_1": {"composition": 4.0, "quality": 5.5}, "image_2": {"composition": 7.0, "quality": 9.0}}
    assert parse_pairwise(json.dumps(flat)) == expected
    assert parse_pairwise("Here you go:\n```json\n" + json.dumps(nested) + "\n```") == expected


@pytest.mark.parametrize("text", [
    "Both images look fine.",
    "Image 1: Composition Quality: 8/10, Image Quality: 7/10",  # image 2 missing
    "Image 1: Composition Quality: 12/10, Image Quality: 7/10\nImage 2: Composition Quality: 3/10, Image Quality: 2/10",
    "",
])
def test_pairwise_unreadable_raises(text):
    with pytest.raises(ParseError):
        parse_pairwise(text)


def test_pointwise_json_and_text_fallback():
    answer = {"explanation": "ok", "element integration": 7, "Spatial-Consistency": 6.5,
              "semantic_accuracy": "8", "aesthetic_quality": 9}
    assert parse_pointwise("Sure! " + json.dumps(answer)) == {
        "element_integration": 7.0, "spatial_consistency": 6.5, "semantic_accuracy": 8.0, "aesthetic_quality": 9.0}
    text = "Element integration: 3\nSpatial consistency - 4.5\n**Semantic accuracy**: 5\nAesthetic quality: 6/10"
    assert parse_pointwise(text) == {
        "element_integration": 3.0, "spatial_consistency": 4.5, "semantic_accuracy": 5.0, "aesthetic_quality": 6.0}
    with pytest.raises(ParseError, match="aesthetic_quality"):
        parse_pointwise(json.dumps({key: 5 for key in POINTWISE_CRITERIA[:3]}))
    with pytest.raises(ParseError, match="outside"):
        parse_pointwise(json.dumps({key: -1 for key in POINTWISE_CRITERIA}))


def test_refusal_heuristic():
    assert looks_like_refusal("I'm sorry, but I can't help with evaluating these images.")
    assert looks_like_refusal("I cannot assist with that request.")
    assert not looks_like_refusal("Image 1 is sharper; the hero is missing in Image 2.")
    analysis = "Image 1 shows the hero with a red cape and a top hat; the lighting is flat. " * 4
    assert not looks_like_refusal(analysis + "I'm unable to see a hat in Image 2.")  # a remark, not a refusal


def test_prompts_list_every_element_and_the_answer_format():
    loras = [{"id": "a", "name": "Nezuko", "category": "character", "trigger": ["nezuko", "pink ribbon"]},
             {"id": "b", "name": "Forest", "category": "background", "trigger": ["dark forest"]}]
    assert element_list(loras).splitlines() == [
        "1. Character: Nezuko (key features: nezuko, pink ribbon)",
        "2. Background: Forest (key features: dark forest)",
    ]
    pairwise = PAIRWISE.prompt(loras)
    assert "Nezuko" in pairwise and "dark forest" in pairwise and pairwise.endswith(PAIRWISE.answer_format)
    assert "Deduct 3 points" in pairwise and "same score" in pairwise
    pointwise = POINTWISE.prompt(loras)
    assert all(criterion in pointwise for criterion in POINTWISE_CRITERIA)
    assert set(POINTWISE.schema["required"]) == {"explanation", *POINTWISE_CRITERIA}
