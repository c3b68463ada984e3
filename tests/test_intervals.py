"""Confidence intervals: Wilson against hand-computed values, the bootstrap's determinism and coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vlmlab.scoring.intervals import bootstrap_mean, interval, is_binary, wilson


def test_wilson_matches_the_formula_by_hand() -> None:
    # 10/20, z = 1.96: p = 0.5, z^2 = 3.8416, 1 + z^2/n = 1.19208, centre = (0.5 + 0.09604) / 1.19208 = 0.5,
    # half = 1.96 / 1.19208 * sqrt(0.25/20 + 3.8416/1600) = 1.644185 * 0.122070 = 0.200704
    low, high = wilson(10, 20, z=1.96)
    assert low == pytest.approx(0.299296, abs=1e-5) and high == pytest.approx(0.700704, abs=1e-5)
    # 0/20: centre = 0.09604 / 1.19208 = 0.080565 = half -> [0, 0.161130]
    low, high = wilson(0, 20, z=1.96)
    assert low == 0.0 and high == pytest.approx(0.161130, abs=1e-5)
    # 20/20 mirrors 0/20
    low, high = wilson(20, 20, z=1.96)
    assert high == 1.0 and low == pytest.approx(1 - 0.161130, abs=1e-5)
    # the default z is the exact 95 % quantile, within rounding of 1.96
    assert wilson(10, 20) == pytest.approx(wilson(10, 20, z=1.96), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)  # nothing observed: nothing known
    with pytest.raises(ValueError):
        wilson(21, 20)


def test_wilson_narrows_with_n_and_contains_the_estimate() -> None:
    widths = []
    for n in (20, 200, 2000):
        low, high = wilson(0.3 * n, n)
        assert low < 0.3 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # ~ 2 * 1.96 * sqrt(p (1 - p) / n) for large n
    assert widths[2] == pytest.approx(2 * 1.96 * math.sqrt(0.21 / 2000), rel=0.01)


def test_bootstrap_is_deterministic_and_exact_on_constants() -> None:
    assert bootstrap_mean([0.3] * 17) == (0.3, 0.3)
    scores = list(np.random.default_rng(1).uniform(size=60))
    assert bootstrap_mean(scores, seed=0) == bootstrap_mean(scores, seed=0)
    assert bootstrap_mean(scores, seed=0) != bootstrap_mean(scores, seed=1)
    low, high = bootstrap_mean(scores)
    assert low < float(np.mean(scores)) < high
    # close to the normal approximation mean +- 1.96 sd / sqrt(n) for a smooth distribution
    half = 1.96 * float(np.std(scores)) / math.sqrt(len(scores))
    assert (high - low) / 2 == pytest.approx(half, rel=0.15)
    assert bootstrap_mean([]) == (0.0, 1.0)


def test_interval_picks_wilson_for_binary_outcomes_and_the_bootstrap_otherwise() -> None:
    binary = [1.0] * 7 + [0.0] * 13
    assert is_binary(binary) and interval(binary) == wilson(7, 20)
    soft = [1.0, 0.0, 0.3, 0.6, 1.0]
    assert not is_binary(soft) and interval(soft) == bootstrap_mean(soft)


def test_coverage_on_known_distributions() -> None:
    rng = np.random.default_rng(123)
    # Bernoulli(0.3), n = 50: Wilson covers the true p about 95 % of the time
    hits = 0
    for _ in range(1000):
        k = int(rng.binomial(50, 0.3))
        low, high = wilson(k, 50)
        hits += low <= 0.3 <= high
    assert 0.92 <= hits / 1000 <= 0.98
    # Uniform(0, 1) soft scores, n = 80: the bootstrap covers the true mean 0.5 about 95 % of the time
    hits = 0
    trials = 300
    for trial in range(trials):
        low, high = bootstrap_mean(rng.uniform(size=80), resamples=500, seed=trial)
        hits += low <= 0.5 <= high
    assert 0.89 <= hits / trials <= 0.99
