"""95 % confidence intervals for accuracies, from per-sample outcomes.

* `wilson(successes, n)`: the Wilson score interval of a proportion, for 0/1 outcomes (exact match,
  multiple choice). Unlike the normal ("Wald") interval it stays inside [0, 1] and is not empty at 0/n or
  n/n.
* `bootstrap_mean(scores)`: the percentile bootstrap of the mean, for soft per-sample scores (VQA soft
  accuracy, ANLS, ...), deterministic for a given seed and vectorised with numpy.
* `interval(scores)`: Wilson when every score is 0 or 1, else the bootstrap.

Intervals are (low, high) fractions in [0, 1]. With no samples at all nothing is known: (0.0, 1.0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Z95", "bootstrap_mean", "interval", "is_binary", "wilson"]

Z95 = 1.959963984540054  # two-sided 95 % normal quantile
_CHUNK = 1 << 22  # resample indices drawn per block (elements), to bound memory on large splits


def wilson(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of `successes` out of `n` 0/1 outcomes:

    centre = (p + z²/2n) / (1 + z²/n),  half = z / (1 + z²/n) * sqrt(p(1 - p)/n + z²/4n²),  p = successes/n.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes must be in [0, n], got {successes} of {n}.")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def bootstrap_mean(
    scores: Sequence[float], resamples: int = 2000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `scores`: `resamples` resamples with replacement (seeded,
    so the same scores always give the same interval), the (1 - confidence)/2 and (1 + confidence)/2
    quantiles of their means, clipped to [min, max] of the scores."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    n = values.size
    if n == 0:
        return 0.0, 1.0
    if resamples < 1:
        raise ValueError(f"bootstrap_mean: resamples must be >= 1, got {resamples}.")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    block = max(1, _CHUNK // n)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        indices = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = values[indices].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    smallest, largest = float(values.min()), float(values.max())
    return min(max(float(low), smallest), largest), min(max(float(high), smallest), largest)


def is_binary(scores: Sequence[float]) -> bool:
    """Every score is exactly 0 or 1 (so the outcomes are successes and failures)."""
    return all(score in (0.0, 1.0) for score in scores)


def interval(scores: Sequence[float], seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean score: Wilson for 0/1 outcomes, else the percentile bootstrap."""
    scores = [float(score) for score in scores]
    if is_binary(scores):
        return wilson(sum(scores), len(scores))
    return bootstrap_mean(scores, seed=seed)
