"""Operating thresholds chosen for a target sensitivity, with bootstrap confidence intervals.

A triage tool promises a sensitivity ("flags at least 95% of bleeds") and reports the specificity
that comes with it. The threshold is the highest one that reaches the target on the validation
set (so specificity is as high as the promise allows); the sensitivity and specificity it gives
are reported with 95% bootstrap intervals at slice level (resampling whole studies, since the
slices of one study are not independent) and at study level, where a study's probability is the
maximum over its slices, as in the runtime's worklist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ichrt.runtime.metrics import Interval, sensitivity_specificity_ci

LEVELS = ("slice", "study")


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float = 0.95) -> float:
    """The highest threshold whose sensitivity (``p >= t`` called positive) reaches ``target``.

    The threshold is placed halfway between the deciding positive's score and the next lower
    score, so that it classifies the validation set the same way whatever the float rounding of
    a later run. NaN labels are ignored.

    Raises:
        ValueError: when there are no positives or the target is outside (0, 1].
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must lie in (0, 1], got {target}")
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    pos_scores = np.sort(p[y > 0.5])[::-1]
    if pos_scores.size == 0:
        raise ValueError("no positive labels: cannot choose a threshold for a sensitivity")
    k = max(1, math.ceil(target * pos_scores.size - 1e-9))
    deciding = pos_scores[k - 1]
    below = p[p < deciding]
    if below.size == 0:
        return float(deciding)
    return float(0.5 * (deciding + below.max()))


def study_level(
    y: np.ndarray, p: np.ndarray, studies: Sequence | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per study: label (max of known slice labels, NaN if none known), probability (max), id."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    ids, inverse = np.unique(np.asarray(studies), return_inverse=True)
    p_study = np.full(ids.size, -np.inf)
    np.maximum.at(p_study, inverse, p)
    y_study = np.full(ids.size, -np.inf)
    known = ~np.isnan(y)
    np.maximum.at(y_study, inverse[known], y[known])
    y_study[np.isinf(y_study)] = np.nan
    return y_study, p_study, ids


@dataclass(frozen=True)
class LevelStats:
    """Sensitivity and specificity (each with its 95% interval) at one level."""

    sensitivity: Interval
    specificity: Interval
    positives: int
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "sensitivity": list(self.sensitivity),
            "specificity": list(self.specificity),
            "positives": self.positives,
            "negatives": self.negatives,
        }


@dataclass(frozen=True)
class OperatingPoint:
    """A label's chosen threshold and what it gives at slice and study level."""

    label: str
    threshold: float
    target_sensitivity: float
    chosen_at: str
    slice: LevelStats
    study: LevelStats

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["slice"], d["study"] = self.slice.to_dict(), self.study.to_dict()
        return d


def level_stats(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> LevelStats:
    """Sensitivity/specificity at ``threshold`` with bootstrap intervals (grouped if given)."""
    sens, spec = sensitivity_specificity_ci(y, p, threshold, n=n_boot, seed=seed, groups=groups)
    y = np.asarray(y, dtype=np.float64)
    y = y[~np.isnan(y)]
    n_pos = int((y > 0.5).sum())
    return LevelStats(sensitivity=sens, specificity=spec, positives=n_pos,
                      negatives=int(y.size - n_pos))


def operating_point(
    label: str,
    y: np.ndarray,
    p: np.ndarray,
    studies: Sequence | np.ndarray,
    target: float = 0.95,
    level: str = "slice",
    n_boot: int = 1000,
    seed: int = 0,
) -> OperatingPoint:
    """Choose ``label``'s threshold for ``target`` sensitivity at ``level`` and report both levels."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    y_st, p_st, _ = study_level(y, p, studies)
    threshold = (
        threshold_for_sensitivity(y, p, target)
        if level == "slice"
        else threshold_for_sensitivity(y_st, p_st, target)
    )
    return OperatingPoint(
        label=label,
        threshold=threshold,
        target_sensitivity=target,
        chosen_at=level,
        slice=level_stats(y, p, threshold, groups=studies, n_boot=n_boot, seed=seed),
        study=level_stats(y_st, p_st, threshold, n_boot=n_boot, seed=seed),
    )


def choose_thresholds(
    labels_matrix: np.ndarray,
    probs: np.ndarray,
    studies: Sequence | np.ndarray,
    label_names: Sequence[str],
    targets: Mapping[str, float],
    level: str = "slice",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, OperatingPoint]:
    """Operating points for every label named in ``targets`` that has positives and negatives."""
    points: dict[str, OperatingPoint] = {}
    for j, name in enumerate(label_names):
        if name not in targets:
            continue
        y = labels_matrix[:, j]
        known = y[~np.isnan(y)]
        if not (known > 0.5).any() or (known > 0.5).all():
            continue
        points[name] = operating_point(
            name, y, probs[:, j], studies, targets[name], level=level, n_boot=n_boot, seed=seed
        )
    return points
