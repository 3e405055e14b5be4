"""Metrics of ichrt.calibration.metrics against brute force and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichrt.calibration.metrics import (
    average_ranks,
    bootstrap_ci,
    brier,
    ece,
    roc_auc,
    sensitivity_specificity,
)


def brute_force_auc(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 1/2 P(tie), by counting all pairs."""
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=60))
def test_auc_matches_pair_count_with_ties(pairs):
    y = np.array([a for a, _ in pairs], float)
    p = np.array([b for _, b in pairs], float) / 6.0  # few distinct values: many ties
    if y.min() == y.max():
        assert np.isnan(roc_auc(y, p))
    else:
        assert roc_auc(y, p) == pytest.approx(brute_force_auc(y, p), abs=1e-12)


def test_auc_drops_nan_labels_and_handles_extremes():
    y = np.array([0, 1, np.nan, 1, 0])
    p = np.array([0.1, 0.9, 0.99, 0.8, 0.2])
    assert roc_auc(y, p) == 1.0  # counted as a negative, the unlabelled 0.99 would lower it
    assert roc_auc(y, 1 - p) == 0.0
    assert roc_auc(y, np.full(5, 0.5)) == 0.5
    assert np.isnan(roc_auc([1, 1, np.nan], [0.1, 0.2, 0.3]))


def test_average_ranks_share_ties():
    np.testing.assert_allclose(average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1, 3.5, 2])


def test_sensitivity_specificity_counts_ties_at_threshold_as_positive():
    y = np.array([1, 1, 1, 1, 0, 0, 0, np.nan])
    p = np.array([0.9, 0.5, 0.4, 0.1, 0.5, 0.2, 0.1, 0.99])
    sens, spec = sensitivity_specificity(y, p, 0.5)
    assert sens == 0.5 and spec == pytest.approx(2 / 3)
    assert np.isnan(sensitivity_specificity([0, 0], [0.1, 0.9], 0.5)[0])


def test_ece_known_values():
    # bin 0: mean p 0.05, rate 0.5 (2 slices); bin 14: mean p 0.95, rate 1.0 (2 slices)
    assert ece([0, 1, 1, 1], [0.05, 0.05, 0.95, 0.95]) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert ece([0, 1], [0.0, 1.0]) == 0.0  # 1.0 falls in the last bin
    assert ece([1] * 5 + [0] * 5, [0.5] * 10) == pytest.approx(0.0)
    assert ece([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], bins=4) == pytest.approx(0.0)


def test_brier_known_values():
    assert brier([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
    assert brier([0, 1, np.nan], [0.0, 1.0, 0.3]) == 0.0
    assert np.isnan(brier([np.nan], [0.5]))


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
