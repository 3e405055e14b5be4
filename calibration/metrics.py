"""Calibration measures of predicted probabilities: reliability bins, ECE and Brier score.

What only calibration reports (how far probabilities are from observed rates). The metrics
that training and calibration share (AUC, sensitivity/specificity, bootstrap intervals) are in
:mod:`ichrt.runtime.metrics`; labels follow its rules (0/1, NaN = unknown and dropped first).
"""

from __future__ import annotations

import numpy as np

from ichrt.runtime.metrics import known_labels


def bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability on [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def reliability_bins(
    y: np.ndarray, p: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: count, mean predicted probability and observed positive rate (NaN when empty)."""
    y, p = known_labels(y, p)
    idx = bin_index(p, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=bins) / count
        rate = np.bincount(idx, weights=y, minlength=bins) / count
    return count, mean_p, rate


def ece(y: np.ndarray, p: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of positive-class probabilities over equal-width bins.

    ``sum_b n_b / N * |observed rate_b - mean probability_b|``; the binary (per-label) form used
    for multi-label outputs. NaN on an empty set.
    """
    count, mean_p, rate = reliability_bins(y, p, bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    filled = count > 0
    return float(np.sum(count[filled] * np.abs(rate[filled] - mean_p[filled])) / total)


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Brier score: mean squared difference between probability and label (NaN on an empty set)."""
    y, p = known_labels(y, p)
    if y.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))
