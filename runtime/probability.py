"""Logits to probabilities: one stable sigmoid, with and without per-label temperatures.

Scoring (:mod:`ichrt.runtime.aggregate`), the study model, the lesion map and calibration's fits
all turn logits into probabilities through these, so a calibrated model means the same thing
wherever it is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function in float64, overflow-free (``exp`` of non-positive numbers only)."""
    z = np.asarray(x, np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tempered_sigmoid(logits: np.ndarray, temperatures: Sequence[float] | np.ndarray) -> np.ndarray:
    """``sigmoid(logits / T)`` (N, labels) float64, one temperature per label column."""
    t = np.asarray(temperatures, np.float64)
    return sigmoid(np.asarray(logits, np.float64) / t)
