"""Edges of the statistics and the schedules that a mutation run (docs/testing.md) showed untested: two-value
samples, constant samples, exact ties at the tolerance, one-value Holm families, interval 1, a reserved tail as
long as the run, and the exact texts the prompt-aware weights embed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from harness import stats
from harness.lora import LoraSpec
from harness.methods.importance import EMPTY_PROMPT_IMPORTANCE, prompt_ablation_importance, trigger_similarity
from harness.methods.schedules import switch_schedule, w_switch_schedule


def test_mean_ci_of_two_values_is_an_interval_and_of_a_constant_sample_a_point():
    mean, low, high = stats.mean_ci(np.array([1.0, 3.0]))
    assert mean == 2.0 and np.isfinite(low) and np.isfinite(high) and low <= 2.0 <= high
    assert stats.mean_ci(np.array([4.0, 4.0, 4.0])) == (4.0, 4.0, 4.0)
    assert stats.mean_ci(np.array([7.0]))[0] == 7.0 and np.isnan(stats.mean_ci(np.array([7.0]))[1])


def test_mean_ci_resamples_units_not_pairs():
    """Independent resampling of one sample: the same interval as scipy's unpaired bootstrap, by hand."""
    values = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])
    expected = scipy_stats.bootstrap((values,), np.mean, paired=False, n_resamples=stats.N_RESAMPLES,
                                     confidence_level=0.95, method="BCa", random_state=0).confidence_interval
    _, low, high = stats.mean_ci(values)
    assert (low, high) == pytest.approx((expected.low, expected.high))


def test_paired_difference_ci_edges():
    assert stats.paired_difference_ci(np.array([1.0, 2.0]), np.array([0.0, 1.0])) == (1.0, 1.0, 1.0)
    mean, low, high = stats.paired_difference_ci(np.array([1.0, 3.0]), np.array([0.0, 0.0]))
    assert mean == 2.0 and low <= 2.0 <= high and np.isfinite(low)
    assert np.isnan(stats.paired_difference_ci(np.array([1.0]), np.array([0.0]))[1])


def test_a_difference_at_the_tie_tolerance_is_a_tie():
    tol = stats.TIE_TOLERANCE
    assert stats.win_tie_loss([tol, 0.0, 2.0, 0.0], [0.0, tol, 1.0, 1.0]) == (1, 2, 1)


def test_wilcoxon_needs_two_pairs_and_calls_all_ties_no_difference():
    assert np.isnan(stats.wilcoxon_p([1.0], [0.0]))
    assert np.isfinite(stats.wilcoxon_p([1.0, 2.0], [0.0, 0.5]))
    assert stats.wilcoxon_p([1.0, 2.0], [1.0, 2.0]) == 1.0


def test_holm_of_one_p_value_is_that_p_value():
    assert stats.holm(np.array([0.03])).tolist() == [0.03]
    assert stats.holm(np.array([0.01, 0.04, np.nan])).tolist()[:2] == [0.02, 0.04]


def test_switch_interval_one_rotates_every_step():
    assert switch_schedule(3, 6, 1, "exact") == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError, match="interval must be >= 1, got 0"):
        switch_schedule(3, 6, 0, "exact")


def test_a_reserved_tail_as_long_as_the_run_covers_every_step():
    assert w_switch_schedule([0.5, 0.5], 4, 2, 4, 0, "exact") == [0, 0, 0, 0]
    assert w_switch_schedule([0.5, 0.5], 4, 2, 4, 1, "exact") == [1, 1, 1, 1]


def _lora(lora_id: str, *phrases: str) -> LoraSpec:
    return LoraSpec(lora_id, lora_id, "character", phrases, Path(lora_id))


def test_prompt_ablation_of_an_exactly_five_character_rest_is_not_empty():
    seen: list[str] = []

    def embed(text: str) -> torch.Tensor:
        seen.append(text)
        return torch.tensor([1.0, float(len(text))])

    # "ab cd, zz" without "zz" leaves "ab cd": 5 characters, a real prompt (measured), not "nothing left"
    importance = prompt_ablation_importance("ab cd, zz", [_lora("z", "zz")], embed)
    assert importance[0] != EMPTY_PROMPT_IMPORTANCE and "ab cd" in seen


def test_trigger_similarity_embeds_the_phrases_joined_by_comma():
    seen: list[str] = []

    def embed(text: str) -> torch.Tensor:
        seen.append(text)
        return torch.ones(2)

    trigger_similarity("p", [_lora("a", "red cat", "blue hat")], embed)
    assert seen == ["p", "red cat, blue hat"]
