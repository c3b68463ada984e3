"""Statistics over training replicates (seeds) and between two design points.

A sample-level interval (vlmlab.scoring.intervals) covers the test items of one training run; it says
nothing about how another seed of the same design point would have scored. With replicates:

* `seed_interval(scores, n)`: the mean over seeds and its 95 % interval, the Student t-interval over the
  seeds' scores (mean +- t(0.975, k-1) s / sqrt(k), scipy's t quantile). With 3 seeds t is 4.30, so three
  disagreeing seeds give a wide interval, as they should. Seeds that happen to agree give a t-interval of
  almost nothing although the test items are still a sample: where `n` (items per seed) is known the
  interval is widened to hold the Wilson interval of the mean at n items (the uncertainty of one test set,
  however many seeds answered it). A percentile bootstrap over 3 seeds was not chosen: it can never reach
  beyond the lowest and highest seed, and so covers far less than 95 %.
* `paired_comparison(a, b)`: design point A against B on the same test items, rows = seeds, columns =
  items (per-item scores, 0/1 for exact match). The difference of the means; its p-value from the paired
  permutation test over items (scipy.stats.permutation_test, `permutation_type="samples"`: A's and B's
  seed-averaged answers to each item swapped or not; exact, i.e. all 2^n swaps, when n is small); its 95 %
  interval from a bootstrap over seeds and items together (each resample draws the items, and A's and B's
  seeds, with replacement), so that run-to-run variation widens it; and the difference per seed. An effect
  `holds` when the p-value is below 0.05, the interval excludes 0 and, with several seeds, every seed
  shows a difference of the same sign. With one seed it may still hold: `PairedComparison.seeds` says on
  how many seeds it rests, and the readers say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vlmlab.scoring.intervals import wilson

__all__ = ["ALPHA", "PairedComparison", "paired_comparison", "seed_interval"]

ALPHA = 0.05  # two-sided: 95 % intervals, p < 0.05
_BLOCK = 1 << 22  # bootstrap elements drawn per block, to bound memory on large test sets


def seed_interval(scores: Sequence[float], n: int | None = None) -> tuple[float, tuple[float, float]]:
    """(mean, (low, high)) of one score over k >= 2 seeds: the t-interval, widened to the Wilson interval
    of the mean at `n` items where that is wider; clipped to [0, 1] (scores are fractions)."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    k = values.size
    if k < 2:
        raise ValueError(f"seed_interval needs at least 2 seeds, got {k}; one run keeps its sample interval.")
    mean = float(values.mean())
    half = float(stats.t.ppf(1 - ALPHA / 2, k - 1) * values.std(ddof=1) / math.sqrt(k))
    low, high = mean - half, mean + half
    if n:
        items_low, items_high = wilson(min(max(mean, 0.0), 1.0) * n, n)
        low, high = min(low, items_low), max(high, items_high)
    return mean, (max(0.0, low), min(1.0, high))


@dataclass(frozen=True)
class PairedComparison:
    """A against B on the same items: differences are fractions (A - B), `ci` its 95 % interval."""

    difference: float
    ci: tuple[float, float]
    p_value: float
    n: int  # items
    seeds: tuple[int, int]  # replicates of A, of B
    per_seed: tuple[float, ...]  # A - B per seed (paired by position when both have as many seeds)
    exact: bool  # the p-value enumerates every swap (else a seeded Monte Carlo estimate of it)

    @property
    def across_seeds(self) -> bool:
        """Whether several seeds back it and every one of them differs in the direction of the mean."""
        sign = np.sign(self.difference)
        return min(self.seeds) >= 2 and sign != 0 and all(np.sign(d) == sign for d in self.per_seed)

    @property
    def holds(self) -> bool:
        """p < 0.05, the interval excludes 0, and every seed agrees where there are several."""
        significant = self.p_value < ALPHA and not self.ci[0] <= 0.0 <= self.ci[1]
        return significant and (min(self.seeds) < 2 or self.across_seeds)


def _rows(scores: Sequence[Sequence[float]] | Sequence[float], name: str) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    array = array[None, :] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"paired_comparison: {name} must be seeds x items scores, got shape {array.shape}.")
    return array


def paired_comparison(
    a: Sequence[Sequence[float]] | Sequence[float],
    b: Sequence[Sequence[float]] | Sequence[float],
    resamples: int = 9999,
    seed: int = 0,
) -> PairedComparison:
    """A vs B (see the module docstring): `a` and `b` are per-item scores, one row per seed (a single run
    may be one flat list), the same items in the same order on both sides."""
    a, b = _rows(a, "a"), _rows(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"paired_comparison: A scored {a.shape[1]} items and B {b.shape[1]}; a paired test needs the same items."
        )
    n = a.shape[1]
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)  # per item, over seeds
    difference = float(mean_a.mean() - mean_b.mean())
    exact = 2**n <= resamples
    test = stats.permutation_test(
        (mean_a, mean_b),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    if a.shape[0] == b.shape[0]:
        per_seed = tuple(float(x.mean() - y.mean()) for x, y in zip(a, b))
    else:  # unpaired seeds: every seed of A against every seed of B
        per_seed = tuple(float(x.mean() - y.mean()) for x in a for y in b)
    return PairedComparison(
        difference=difference,
        ci=_bootstrap_difference(a, b, seed),
        p_value=float(min(1.0, test.pvalue)),
        n=n,
        seeds=(a.shape[0], b.shape[0]),
        per_seed=per_seed,
        exact=exact,
    )


def _bootstrap_difference(
    a: np.ndarray, b: np.ndarray, seed: int, resamples: int = 2000
) -> tuple[float, float]:
    """Percentile interval of mean(A) - mean(B) resampling items (shared by A and B: paired) and each
    side's seeds with replacement."""
    rng = np.random.default_rng(seed)
    (ka, n), kb = a.shape, b.shape[0]
    differences = np.empty(resamples)
    block = max(1, _BLOCK // (n * (ka + kb)))
    for start in range(0, resamples, block):
        size = min(resamples, start + block) - start
        items = rng.integers(0, n, size=(size, 1, n))
        seeds_a = rng.integers(0, ka, size=(size, ka, 1))
        seeds_b = rng.integers(0, kb, size=(size, kb, 1))
        drawn_a = a[seeds_a, items].mean(axis=(1, 2))
        drawn_b = b[seeds_b, items].mean(axis=(1, 2))
        differences[start : start + size] = drawn_a - drawn_b
    low, high = np.quantile(differences, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)
