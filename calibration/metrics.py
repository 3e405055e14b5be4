"""Classification metrics for binary labels, in plain NumPy (shared by training and calibration).

Every metric takes ``y`` (labels 0/1, NaN = unknown) and ``p`` (scores or probabilities) as 1-D
arrays of equal length. Unknown labels are dropped first, so a partly labelled set (a source that
gives only ``any``) can be scored without special cases. A metric that needs both classes returns
NaN when one is absent, never a misleading 0 or 1.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


def _known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y, p)`` as float64 1-D arrays with NaN labels removed."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} != {p.size}")
    keep = ~np.isnan(y)
    return y[keep], p[keep]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    values = np.asarray(values).ravel()
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    # start index of each run of equal values, and the mean rank of that run
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], values.size]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def roc_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half); NaN if a class is absent."""
    y, p = _known(y, p)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(p)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sensitivity_specificity(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity when ``p >= threshold`` is called positive.

    Each is NaN when its class (positives, negatives) is absent.
    """
    y, p = _known(y, p)
    pos = y > 0.5
    called = p >= threshold
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    sens = float((called & pos).sum() / n_pos) if n_pos else float("nan")
    spec = float((~called & ~pos).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


def bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    """Equal-width bin of each probability on [0, 1] (1.0 falls in the last bin)."""
    return np.clip((np.asarray(p, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)


def reliability_bins(
    y: np.ndarray, p: np.ndarray, bins: int = 15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: count, mean predicted probability and observed positive rate (NaN when empty)."""
    y, p = _known(y, p)
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
    y, p = _known(y, p)
    if y.size == 0:
        return float("nan")
    return float(np.mean((p - y) ** 2))


class Interval(NamedTuple):
    """A point estimate with its bootstrap confidence interval (floats, or arrays for vectors)."""

    estimate: float | np.ndarray
    low: float | np.ndarray
    high: float | np.ndarray


def _group_members(groups: Sequence | np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct group."""
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    splits = np.flatnonzero(np.diff(inverse[order])) + 1
    return np.split(order, splits)


def bootstrap_ci(
    stat_fn: Callable[..., float | Sequence[float] | np.ndarray],
    *arrays: np.ndarray,
    n: int = 1000,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``stat_fn(*arrays)``.

    Rows are resampled with replacement; with ``groups`` whole groups (e.g. the slices of one
    study) are resampled together, so correlated rows do not narrow the interval. ``stat_fn`` may
    return a scalar or a 1-D vector (intervals are then per element). Replicates where the
    statistic is NaN (a resample without positives) are left out of the percentiles.
    """
    if not arrays:
        raise ValueError("bootstrap_ci needs at least one array")
    arrays = tuple(np.asarray(a) for a in arrays)
    size = len(arrays[0])
    if any(len(a) != size for a in arrays):
        raise ValueError("bootstrap_ci: arrays differ in length")
    estimate = np.asarray(stat_fn(*arrays), dtype=np.float64)
    rng = np.random.default_rng(seed)
    members = _group_members(groups) if groups is not None else None
    if members is not None and len(groups) != size:
        raise ValueError("bootstrap_ci: groups differ in length from the arrays")
    reps = np.empty((n,) + estimate.shape, dtype=np.float64)
    for i in range(n):
        if members is None:
            idx = rng.integers(0, size, size)
        else:
            picked = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in picked])
        reps[i] = stat_fn(*(a[idx] for a in arrays))
    tail = (1.0 - level) / 2.0 * 100.0
    with warnings.catch_warnings():  # an all-NaN element (never both classes) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(reps, [tail, 100.0 - tail], axis=0)
    if estimate.ndim == 0:
        return Interval(float(estimate), float(low), float(high))
    return Interval(estimate, low, high)
