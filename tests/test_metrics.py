"""Shared metrics of ichrt.runtime.metrics against brute force and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichrt.runtime.metrics import (
    average_ranks,
    bootstrap_ci,
    roc_auc,
    sensitivity_specificity,
    sensitivity_specificity_ci,
)


def brute_force_auc(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie), by counting all pairs."""
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


def brute_force_rates(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity by looping over the labelled rows one at a time."""
    tp = fn = tn = fp = 0
    for label, score in zip(y, p):
        if np.isnan(label):
            continue
        if label == 1:
            tp, fn = (tp + 1, fn) if score >= threshold else (tp, fn + 1)
        else:
            tn, fp = (tn + 1, fp) if score < threshold else (tn, fp + 1)
    return (tp / (tp + fn) if tp + fn else float("nan"),
            tn / (tn + fp) if tn + fp else float("nan"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_matches_pair_count_with_ties(pairs):
    y = np.array([a for a, _ in pairs], float)
    p = np.array([b for _, b in pairs], float) / 6.0  # few distinct values: many ties
    if y.min() == y.max():
        assert np.isnan(roc_auc(y, p))
    else:
        assert roc_auc(y, p) == pytest.approx(brute_force_auc(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_auc_matches_pair_count_on_random_data_with_ties_and_unknown_labels(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 300))
    y = rng.integers(0, 2, n).astype(float)
    p = np.round(rng.random(n), int(rng.integers(1, 3)))  # 1-2 decimals: many ties
    y[rng.random(n) < 0.1] = np.nan
    known = ~np.isnan(y)
    assert roc_auc(y, p) == pytest.approx(brute_force_auc(y[known], p[known]), abs=1e-12)


def test_auc_drops_nan_labels_and_handles_extremes():
    y = np.array([0, 1, np.nan, 1, 0])
    p = np.array([0.1, 0.9, 0.99, 0.8, 0.2])
    assert roc_auc(y, p) == 1.0  # counted as a negative, the unlabelled 0.99 would lower it
    assert roc_auc(y, 1 - p) == 0.0
    assert roc_auc(y, np.full(5, 0.5)) == 0.5
    assert np.isnan(roc_auc([1, 1, np.nan], [0.1, 0.2, 0.3]))


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


@pytest.mark.parametrize("seed", range(5))
def test_average_ranks_match_brute_force(seed):
    values = np.random.default_rng(seed).integers(0, 8, 50).astype(float)
    # rank = 1 + number of smaller values + half the other values equal to it
    brute = [1 + (values < v).sum() + 0.5 * ((values == v).sum() - 1) for v in values]
    np.testing.assert_allclose(average_ranks(values), brute)


def test_sensitivity_specificity_counts_ties_at_threshold_as_positive():
    y = np.array([1, 1, 1, 1, 0, 0, 0, np.nan])
    p = np.array([0.9, 0.5, 0.4, 0.1, 0.5, 0.2, 0.1, 0.99])
    sens, spec = sensitivity_specificity(y, p, 0.5)
    assert sens == 0.5 and spec == pytest.approx(2 / 3)
    assert np.isnan(sensitivity_specificity([0, 0], [0.1, 0.9], 0.5)[0])


@pytest.mark.parametrize("seed", range(10))
def test_sensitivity_specificity_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 100))
    y = rng.integers(0, 2, n).astype(float)
    y[rng.random(n) < 0.1] = np.nan
    p = np.round(rng.random(n), 1)
    threshold = float(np.round(rng.random(), 1))  # often equal to some scores
    np.testing.assert_equal(sensitivity_specificity(y, p, threshold),
                            brute_force_rates(y, p, threshold))


def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, 400)
    ci = bootstrap_ci(np.mean, x, n=500, seed=3)
    assert ci.low < ci.estimate < ci.high
    assert ci.high - ci.low == pytest.approx(2 * 1.96 / np.sqrt(400), rel=0.25)
    assert bootstrap_ci(np.mean, x, n=500, seed=3) == ci


def test_grouped_bootstrap_widens_interval_for_correlated_rows():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 30)
    x = np.repeat(rng.normal(0, 1, 20), 30) + rng.normal(0, 0.1, 600)  # rows share their group
    plain = bootstrap_ci(np.mean, x, n=400, seed=0)
    grouped = bootstrap_ci(np.mean, x, n=400, seed=0, groups=groups)
    assert (grouped.high - grouped.low) > 3 * (plain.high - plain.low)


def test_bootstrap_vector_statistic_and_nan_replicates():
    y = np.array([1, 0] * 20, float)
    p = np.linspace(0, 1, 40)
    ci = bootstrap_ci(lambda a, b: np.array(sensitivity_specificity(a, b, 0.5)), y, p, n=200)
    assert ci.estimate.shape == (2,) and np.all(ci.low <= ci.estimate)
    assert np.all(ci.estimate <= ci.high)
    only_pos = bootstrap_ci(roc_auc, np.ones(5), np.arange(5.0), n=20)
    assert np.isnan(only_pos.estimate) and np.isnan(only_pos.low)


def test_sensitivity_specificity_ci_is_the_vector_bootstrap_on_known_rows():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 120).astype(float)
    y[::7] = np.nan
    p = rng.random(120)
    groups = np.repeat(np.arange(30), 4)
    sens, spec = sensitivity_specificity_ci(y, p, 0.5, n=200, seed=4, groups=groups)
    known = ~np.isnan(y)
    ci = bootstrap_ci(lambda a, b: np.array(sensitivity_specificity(a, b, 0.5)),
                      y[known], p[known], n=200, seed=4, groups=groups[known])
    assert tuple(sens) == tuple(float(v[0]) for v in ci)
    assert tuple(spec) == tuple(float(v[1]) for v in ci)
    assert (sens.estimate, spec.estimate) == sensitivity_specificity(y, p, 0.5)
    assert sens.low <= sens.estimate <= sens.high and spec.low <= spec.estimate <= spec.high
