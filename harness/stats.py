"""Small statistics helpers shared by the leaderboard and the paired comparison.

Everything here wraps scipy.stats; the only hand-written piece is Holm's step-down correction (a few
lines; scipy.stats only ships Benjamini-Hochberg). Confidence intervals use a fixed random state so a
table rebuilt from the same rows is byte-identical.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

CONFIDENCE_LEVEL = 0.95
N_RESAMPLES = 2000
RANDOM_STATE = 0
CI_METHOD = "BCa"
# Two paired values closer than this count as a tie (judge scores come in 0.25 steps, so exact ties are real).
TIE_TOLERANCE = 1e-9


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a - b, axis=axis)


def _bootstrap(data: tuple[np.ndarray, ...], statistic, paired: bool) -> tuple[float, float]:
    with warnings.catch_warnings():
        # BCa warns (and returns NaN) on near-degenerate resamples; we fall back to the percentile interval.
        warnings.simplefilter("ignore")
        for method in (CI_METHOD, "percentile"):
            result = stats.bootstrap(
                data,
                statistic,
                paired=paired,
                vectorized=True,
                n_resamples=N_RESAMPLES,
                confidence_level=CONFIDENCE_LEVEL,
                method=method,
                random_state=RANDOM_STATE,
            )
            low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
            if np.isfinite(low) and np.isfinite(high):
                return low, high
    return float("nan"), float("nan")


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95 % bootstrap CI of ``values`` (NaNs must be removed first). NaN CI when n < 2."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if values.size < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(values) == 0:  # every resample has the same mean: the interval is that point
        return mean, mean, mean
    low, high = _bootstrap((values,), _mean, paired=False)
    return mean, low, high


def paired_difference_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its paired 95 % bootstrap CI (units are resampled, pairs kept together)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.size == 0:
        return float("nan"), float("nan"), float("nan")
    diff = a - b
    mean = float(diff.mean())
    if a.size < 2:
        return mean, float("nan"), float("nan")
    if np.ptp(diff) == 0:
        return mean, mean, mean
    low, high = _bootstrap((a, b), _mean_difference, paired=True)
    return mean, low, high


def win_tie_loss(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int]:
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    ties = np.abs(diff) <= TIE_TOLERANCE
    return int(((diff > 0) & ~ties).sum()), int(ties.sum()), int(((diff < 0) & ~ties).sum())


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; 1.0 when every pair ties, NaN with fewer than 2 pairs."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if diff.size < 2:
        return float("nan")
    if np.all(np.abs(diff) <= TIE_TOLERANCE):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-sample / tie warnings: the p-value is still the right one
        return float(stats.wilcoxon(diff, zero_method="wilcox").pvalue)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided sign test on wins vs losses (ties dropped), the usual test for judge verdicts."""
    if wins + losses == 0:
        return float("nan")
    return float(stats.binomtest(wins, wins + losses, 0.5).pvalue)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values; NaNs stay NaN and do not count towards the family size."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return adjusted
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted
