"""Switch and W-Switch schedules against hand-written tables, in both timings; prompt-aware weights."""

import pytest
import torch

from harness.lora import LoraSpec
from harness.methods.importance import paw_weights, prompt_ablation_importance, ptw_weights
from harness.methods.schedules import switch_schedule, w_switch_schedule, weighted_blocks


def test_switch_exact_rotates_every_interval():
    assert switch_schedule(3, 10, 2, "exact") == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1]


def test_switch_reference_gives_first_lora_one_extra_step():
    # released code: LoRA0 on steps 0..tau (tau+1 steps), then tau steps each, cyclically
    assert switch_schedule(3, 12, 3, "reference") == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0]


def test_switch_rejects_unknown_timing():
    with pytest.raises(ValueError, match="timing"):
        switch_schedule(2, 4, 2, "late")


def test_weighted_blocks_use_pythons_round():
    # w/max*tau: 1.0*5=5, 0.5*5=2.5 -> 2 (banker's rounding, as released), 0.01*5 -> max(1, 0)
    assert weighted_blocks([0.6, 0.3, 0.006], 5) == [5, 2, 1]


def test_w_switch_exact_blocks_and_reserved_character_tail():
    weights = [0.5, 0.25, 0.25]  # blocks: 4, 2, 2 with interval 4
    schedule = w_switch_schedule(weights, 14, 4, reserved_steps=3, reserved_adapter=0, timing="exact")
    assert schedule == [0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0]
    schedule = w_switch_schedule([0.2, 0.8], 10, 4, reserved_steps=2, reserved_adapter=0, timing="exact")
    assert schedule == [0, 1, 1, 1, 1, 0, 1, 1, 0, 0]


def test_w_switch_reference_shifts_by_one_step():
    exact = w_switch_schedule([0.2, 0.8], 10, 4, 2, 0, "exact")
    reference = w_switch_schedule([0.2, 0.8], 10, 4, 2, 0, "reference")
    assert reference == [exact[0]] + exact[:-1]
    assert reference[-2:] == [1, 0]  # only one of the two reserved steps takes effect


def _lora(lora_id, *trigger):
    return LoraSpec(lora_id, lora_id, "character" if lora_id == "a" else "style", tuple(trigger), None)


def _embedder(table):
    return lambda text: torch.tensor(table[text], dtype=torch.float64)


def test_paw_hand_computed():
    table = {"x, red cat, ink": [1.0, 0.0], "x, ink": [1.0, 1.0], "x, red cat": [1.0, 0.0]}
    loras = [_lora("a", "red cat"), _lora("b", "ink")]
    importance = prompt_ablation_importance("x, red cat, ink", loras, _embedder(table))
    assert importance == pytest.approx([1 - 2 ** -0.5, 0.0])
    # floor 0.05 then normalise
    assert paw_weights("x, red cat, ink", loras, _embedder(table)) == pytest.approx(
        [0.2929 / 0.3429, 0.05 / 0.3429], rel=1e-3)


def test_paw_short_remainder_gets_importance_two():
    table = {"red cat": [1.0, 0.0], "": [0.0, 1.0]}
    assert prompt_ablation_importance("red cat", [_lora("a", "red cat")], _embedder(table)) == [2.0]


def test_ptw_hand_computed():
    table = {"p": [1.0, 0.0], "red cat": [1.0, 1.0], "ink": [1.0, 0.0]}
    weights = ptw_weights("p", [_lora("a", "red cat"), _lora("b", "ink")], _embedder(table))
    s = 2 ** -0.5
    assert weights == pytest.approx([s / (s + 1), 1 / (s + 1)])
