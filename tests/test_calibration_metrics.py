"""Calibration measures of ichrt.calibration.metrics (ECE, Brier) on hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.calibration.metrics import brier, ece, reliability_bins


def test_ece_known_values():
    # bin 0: mean p 0.05, rate 0.5 (2 slices); bin 14: mean p 0.95, rate 1.0 (2 slices)
    assert ece([0, 1, 1, 1], [0.05, 0.05, 0.95, 0.95]) == pytest.approx(0.5 * 0.45 + 0.5 * 0.05)
    assert ece([0, 1], [0.0, 1.0]) == 0.0  # 1.0 falls in the last bin
    assert ece([1] * 5 + [0] * 5, [0.5] * 10) == pytest.approx(0.0)
    assert ece([1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], bins=4) == pytest.approx(0.0)


def test_reliability_bins_drop_unknown_labels_and_leave_empty_bins_nan():
    count, mean_p, rate = reliability_bins([1, 0, np.nan, 1], [0.1, 0.3, 0.9, 0.8], bins=2)
    np.testing.assert_array_equal(count, [2, 1])
    np.testing.assert_allclose(mean_p, [0.2, 0.8])
    np.testing.assert_allclose(rate, [0.5, 1.0])
    assert np.isnan(reliability_bins([1], [0.9], bins=2)[1][0])


def test_brier_known_values():
    assert brier([0, 1], [0.2, 0.6]) == pytest.approx((0.04 + 0.16) / 2)
    assert brier([0, 1, np.nan], [0.0, 1.0, 0.3]) == 0.0
    assert np.isnan(brier([np.nan], [0.5]))
