"""Binary-label metrics in plain NumPy: AUC, sensitivity/specificity, bootstrap intervals.

One implementation for everyone who measures a model: training and the source evaluations
(:mod:`ichrt.export`) and calibration (:mod:`ichrt.calibration`). It lives in the runtime
because both of those depend on the runtime and on nothing of each other; the runtime itself does
not use it. Calibration-only measures (ECE, Brier, reliability bins) are in
:mod:`ichrt.calibration.metrics`.

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


def known_labels(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
    y, p = known_labels(y, p)
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
    y, p = known_labels(y, p)
    pos = y > 0.5
    called = p >= threshold
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    sens = float((called & pos).sum() / n_pos) if n_pos else float("nan")
    spec = float((~called & ~pos).sum() / n_neg) if n_neg else float("nan")
    return sens, spec


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


def sensitivity_specificity_ci(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    n: int = 1000,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
) -> tuple[Interval, Interval]:
    """Sensitivity and specificity at ``threshold``, each with its bootstrap interval.

    Rows with an unknown label are dropped first, with their groups; both statistics come from
    the same resamples (grouped when ``groups`` is given, see :func:`bootstrap_ci`).
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    keep = ~np.isnan(y)
    y, p = y[keep], np.asarray(p, dtype=np.float64).ravel()[keep]
    groups = None if groups is None else np.asarray(groups).ravel()[keep]

    def stat(yy: np.ndarray, pp: np.ndarray) -> np.ndarray:
        return np.array(sensitivity_specificity(yy, pp, threshold))

    ci = bootstrap_ci(stat, y, p, n=n, seed=seed, groups=groups)
    return (Interval(*(float(v[0]) for v in ci)), Interval(*(float(v[1]) for v in ci)))
