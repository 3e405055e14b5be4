"""Temperature scaling recovers a known miscalibration and ignores unknown labels."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.calibration.metrics import ece
from ichrt.calibration.temperature import (
    T_BOUNDS,
    calibrated_probs,
    fit_temperature,
    fit_temperatures,
    nll,
    sigmoid,
)
from ichrt.runtime.metrics import roc_auc


def miscalibrated(n: int = 20000, factor: float = 3.0, seed: int = 0):
    """Labels drawn from sigmoid(z), and overconfident logits ``factor * z``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < sigmoid(z)).astype(np.float64)
    return factor * z, y


@pytest.mark.parametrize("factor", [3.0, 0.5])
def test_recovers_known_temperature(factor):
    logits, y = miscalibrated(factor=factor)
    t = fit_temperature(logits, y)
    assert t == pytest.approx(factor, rel=0.05)
    before, after = sigmoid(logits), sigmoid(logits / t)
    assert ece(y, after) < 0.02 < ece(y, before)
    assert nll(logits, y, t) < nll(logits, y, 1.0)
    assert roc_auc(y, after) == pytest.approx(roc_auc(y, before))  # ranking untouched


def test_fit_is_the_nll_minimum():
    logits, y = miscalibrated(n=3000, seed=2)
    t = fit_temperature(logits, y)
    assert nll(logits, y, t) < nll(logits, y, t * 1.01)
    assert nll(logits, y, t) < nll(logits, y, t * 0.99)


def test_nan_labels_are_ignored():
    logits, y = miscalibrated(n=4000, seed=1)
    y_nan = y.copy()
    y_nan[::3] = np.nan
    keep = ~np.isnan(y_nan)
    assert fit_temperature(logits, y_nan) == pytest.approx(fit_temperature(logits[keep], y[keep]))


def test_separable_data_stops_at_the_bound_and_one_class_is_refused():
    assert fit_temperature(np.array([-2.0, -1.0, 1.0, 2.0]), np.array([0, 0, 1, 1.0])) == \
        pytest.approx(T_BOUNDS[0])
    with pytest.raises(ValueError, match="both positive and negative"):
        fit_temperature(np.array([1.0, 2.0]), np.array([1.0, np.nan]))


def test_per_label_fit_skips_labels_without_both_classes():
    logits, y = miscalibrated(n=6000)
    z = np.stack([logits, logits / 3.0 * 2.0, logits], axis=1)
    labels = np.stack([y, y, np.zeros_like(y)], axis=1)
    temps = fit_temperatures(z, labels, ["any", "epidural", "subdural"])
    assert set(temps) == {"any", "epidural"}
    assert temps["any"] == pytest.approx(3.0, rel=0.05)
    assert temps["epidural"] == pytest.approx(2.0, rel=0.05)
    probs = calibrated_probs(z, temps, ["any", "epidural", "subdural"])
    np.testing.assert_allclose(probs[:, 2], sigmoid(logits))  # T = 1 where nothing was fitted
