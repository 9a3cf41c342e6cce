"""strength: the recommendation rule on hand-made tables, the scales and prompts parsing, and the in-memory
testbed (one set per prompt, the LoRA as a character with the references)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.identity.strength import (
    LoraFile, parse_scales, read_prompts, recommend, sweep_label, sweep_testbed,
)
from harness.settings import ConfigError


def _table(rows: list[tuple[str, float, float, float, float, float, float]]) -> pd.DataFrame:
    """(checkpoint, scale, identity, ci_low, ci_high, detection, prompt) -> a strength table."""
    frame = pd.DataFrame(rows, columns=["checkpoint", "scale", "identity", "identity_ci_low", "identity_ci_high",
                                        "detection", "prompt"])
    frame["label"] = [f"{c}@{s:g}" for c, s in zip(frame["checkpoint"], frame["scale"])]
    return frame


def test_lowest_strength_within_the_ci_of_the_best():
    table = _table([("final", 0.4, 0.30, 0.25, 0.35, 1.0, 30.0),
                    ("final", 0.6, 0.52, 0.47, 0.57, 1.0, 29.5),  # 0.52 >= 0.50, the best's CI low
                    ("final", 0.8, 0.55, 0.50, 0.60, 1.0, 29.0),
                    ("final", 1.0, 0.56, 0.50, 0.62, 1.0, 28.0)])
    choice = recommend(table)
    assert (choice.label, choice.scale) == ("final@0.6", 0.6)
    assert "within the CI of the best, final@1 0.560 [0.500, 0.620]" in choice.why and "rule:" in choice.why


def test_prompt_following_and_detection_must_hold():
    table = _table([("a", 0.6, 0.52, 0.47, 0.57, 0.5, 29.5),   # detection too low
                    ("a", 0.8, 0.55, 0.50, 0.60, 1.0, 20.0),   # prompt following dropped > 10 %
                    ("a", 1.0, 0.56, 0.50, 0.62, 1.0, 28.0),
                    ("b", 0.4, 0.10, 0.05, 0.15, 1.0, 30.0)])
    assert recommend(table).label == "a@1"
    assert recommend(table, min_detection=0.5, max_prompt_drop=0.5).label == "a@0.6"


def test_fallback_is_said_and_no_face_is_no_recommendation():
    table = _table([("a", 0.5, 0.20, 0.15, 0.25, 0.2, 30.0), ("a", 1.0, 0.50, 0.45, 0.55, 0.3, 29.0)])
    choice = recommend(table)
    assert choice.label == "a@1" and choice.why.startswith("no strength met the rule")
    empty = _table([("a", 1.0, np.nan, np.nan, np.nan, 0.0, 29.0)])
    assert recommend(empty).label is None and "no image had a face" in recommend(empty).line()


def test_parse_scales():
    assert parse_scales("1.0,0.4,0.6") == [0.4, 0.6, 1.0]
    assert parse_scales("0.4,0.5,...,1.0") == [0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    with pytest.raises(ConfigError, match="--scales"):
        parse_scales("low,high")


def test_prompts_get_the_trigger_and_the_testbed_one_set_per_prompt(tmp_path):
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text("# comment\na photo of {trigger} on a beach\n\nportrait, oil painting\nzqx smiling\n")
    prompts = read_prompts(prompts_file, "zqx")
    assert prompts == ["a photo of zqx on a beach", "zqx, portrait, oil painting", "zqx smiling"]
    file = LoraFile(Path("lora.safetensors"), "lora-step000100", 100)
    testbed = sweep_testbed(file, 0.6, prompts, "zqx", tmp_path, {"base": "b"}, {"steps": 2}, [0, 1])
    assert [s.id for s in testbed.sets()] == ["p00", "p01", "p02"]
    assert [testbed.prompt_for(s) for s in testbed.sets()] == prompts
    assert testbed.missing_triggers(testbed.sets()[1], prompts[1]) == []
    lora = testbed.sets()[0].loras[0]
    assert (lora.category, lora.references, testbed.sampling["lora_scale"]) == ("character", tmp_path, 0.6)
    assert sweep_label(file, 0.6) == "lora-step000100@0.6"
