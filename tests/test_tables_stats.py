"""The statistics helpers behind leaderboards and comparisons."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import harness  # noqa: F401
from harness import stats


def holm_by_definition(p: list[float]) -> list[float]:
    """Holm's adjusted p_(i) = max_{j<=i} min(1, (m - j + 1) p_(j)), written the slow obvious way."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_definition(seed: int) -> None:
    p = np.random.default_rng(seed).uniform(0, 0.3, 7).tolist()
    assert stats.holm(np.array(p)) == pytest.approx(holm_by_definition(p))


def test_holm_ignores_nan_in_family_size() -> None:
    got = stats.holm(np.array([0.01, np.nan, 0.02]))
    assert np.isnan(got[1])
    assert got[[0, 2]] == pytest.approx(holm_by_definition([0.01, 0.02]))


def test_mean_ci_covers_mean_and_is_deterministic() -> None:
    values = np.random.default_rng(1).normal(3.0, 1.0, 40)
    mean, low, high = stats.mean_ci(values)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert stats.mean_ci(values) == (mean, low, high)


def test_mean_ci_edge_cases() -> None:
    assert np.isnan(stats.mean_ci(np.array([]))[0])
    single = stats.mean_ci(np.array([2.0]))
    assert single[0] == 2.0 and np.isnan(single[1])
    assert stats.mean_ci(np.array([1.5, 1.5, 1.5])) == (1.5, 1.5, 1.5)


def test_paired_ci_uses_pairing() -> None:
    # Large between-unit spread, tiny paired shift: only a paired interval excludes 0.
    rng = np.random.default_rng(2)
    base = rng.normal(0, 10, 30)
    a, b = base + 0.5 + rng.normal(0, 0.05, 30), base
    diff, low, high = stats.paired_difference_ci(a, b)
    assert 0 < low < diff < high
    assert diff == pytest.approx(0.5, abs=0.05)


def test_wilcoxon_and_sign_test() -> None:
    a = np.arange(10.0)
    assert stats.wilcoxon_p(a, a) == 1.0
    assert np.isnan(stats.wilcoxon_p(a[:1], a[:1]))
    assert stats.wilcoxon_p(a + 1, a) < 0.01
    assert stats.win_tie_loss([2, 1, 1], [1, 1, 2]) == (1, 1, 1)
    assert stats.sign_test_p(10, 0) < 0.01 and stats.sign_test_p(5, 5) == 1.0
    assert np.isnan(stats.sign_test_p(0, 0))


def test_all_pairs_of_holm_are_monotone_in_raw_p() -> None:
    p = np.array([0.04, 0.001, 0.03, 0.2])
    adjusted = stats.holm(p)
    for i, j in itertools.permutations(range(len(p)), 2):
        if p[i] <= p[j]:
            assert adjusted[i] <= adjusted[j]
    assert (adjusted >= p).all()
