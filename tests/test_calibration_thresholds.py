"""Thresholds reach the target sensitivity; intervals contain their point estimates."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.calibration.thresholds import (
    choose_thresholds,
    operating_point,
    study_level,
    threshold_for_sensitivity,
)
from ichrt.runtime.metrics import sensitivity_specificity


def constructed(seed: int = 0, studies: int = 60, per_study: int = 10):
    """Studies of slices; positive slices score higher on average, with overlap."""
    rng = np.random.default_rng(seed)
    study = np.repeat(np.arange(studies), per_study)
    y = (rng.random(study.size) < 0.3).astype(float)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.15), 0, 1)
    return y, p, study


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_threshold_is_the_highest_reaching_the_target(target):
    y, p, _ = constructed()
    t = threshold_for_sensitivity(y, p, target)
    sens, _ = sensitivity_specificity(y, p, t)
    assert sens >= target
    higher = np.sort(p[(y == 1) & (p >= t)])
    # the next positive score above t would lose a positive and miss the target
    assert sensitivity_specificity(y, p, np.nextafter(higher[0], 2))[0] < target


def test_threshold_lies_between_scores_and_ignores_nan():
    y = np.array([1, 1, 0, 0, np.nan])
    p = np.array([0.9, 0.6, 0.5, 0.1, 0.55])
    assert threshold_for_sensitivity(y, p, 1.0) == pytest.approx(0.55)  # (0.6 + 0.5) / 2
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_sensitivity(np.zeros(3), np.ones(3), 0.9)


def test_study_level_takes_maxima():
    y = np.array([0, 1, 0, 0, np.nan, np.nan])
    p = np.array([0.1, 0.7, 0.3, 0.2, 0.9, 0.4])
    ys, ps, ids = study_level(y, p, ["a", "a", "b", "b", "c", "c"])
    assert list(ids) == ["a", "b", "c"]
    np.testing.assert_array_equal(ys[:2], [1, 0])
    assert np.isnan(ys[2])
    np.testing.assert_allclose(ps, [0.7, 0.3, 0.9])


@pytest.mark.parametrize("level", ["slice", "study"])
def test_operating_point_intervals_contain_estimates(level):
    y, p, study = constructed(seed=4)
    op = operating_point("any", y, p, study, 0.95, level=level, n_boot=300, seed=1)
    for stats in (op.slice, op.study):
        for interval in (stats.sensitivity, stats.specificity):
            assert interval.low <= interval.estimate <= interval.high
    assert op.slice.specificity.high - op.slice.specificity.low > 0
    reached = op.slice.sensitivity.estimate if level == "slice" else op.study.sensitivity.estimate
    assert reached >= 0.95
    ys, ps, _ = study_level(y, p, study)
    assert op.study.positives == int((ys == 1).sum())
    assert op.study.sensitivity.estimate == sensitivity_specificity(ys, ps, op.threshold)[0]


def test_choose_thresholds_skips_one_class_labels():
    y, p, study = constructed()
    labels = np.stack([y, np.zeros_like(y)], axis=1)
    probs = np.stack([p, p], axis=1)
    points = choose_thresholds(labels, probs, study, ["any", "epidural"],
                               {"any": 0.95, "epidural": 0.9}, n_boot=50)
    assert list(points) == ["any"]
    assert points["any"].to_dict()["slice"]["sensitivity"][0] >= 0.95
