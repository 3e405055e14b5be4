"""Fit the study model of :mod:`ichrt.runtime.studymodel` on whole studies.

Input: for each study the calibrated slice logits of ``any`` per series in scan order, and the
study label. The neighbour weight ``r`` is chosen on a grid by the study-level log loss of a
logistic fit ``a * max_i s_i + b`` (Newton on two parameters); ``r = 0`` with ``a = 1, b = 0``
(the maximum over slices) is always a candidate, so the fit never does worse than the maximum on
the data it sees. Pure NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ichrt.calibration.metrics import roc_auc
from ichrt.runtime.studymodel import KIND, neighbour_scores

#: Neighbour weights tried.
R_GRID = tuple(np.round(np.arange(0.0, 0.95, 0.05), 2))


def study_maxima(series: Sequence[Sequence[np.ndarray]], r: float) -> np.ndarray:
    """``max_i s_i`` per study (the largest over its series)."""
    return np.array([max(float(np.max(neighbour_scores(z, r))) for z in st) for st in series])


def _logistic(x: np.ndarray, y: np.ndarray, iters: int = 50, ridge: float = 1e-3
              ) -> tuple[float, float, float]:
    """(a, b, mean log loss) of ``y ~ sigmoid(a x + b)`` by Newton with a small ridge."""
    a, b = 1.0, 0.0
    for _ in range(iters):
        z = a * x + b
        p = 0.5 * (1.0 + np.tanh(0.5 * z))
        g = np.array([np.sum((p - y) * x) + ridge * a, np.sum(p - y)])
        w = p * (1 - p)
        h = np.array([[np.sum(w * x * x) + ridge, np.sum(w * x)], [np.sum(w * x), np.sum(w) + 1e-9]])
        step = np.linalg.solve(h, g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-9:
            break
    a = max(a, 1e-3)
    z = a * x + b
    return float(a), float(b), float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit(series: Sequence[Sequence[np.ndarray]], labels: Sequence[float]) -> dict[str, Any]:
    """The study model (contract ``study_model``) for studies ``series`` with labels ``labels``.

    Raises:
        ValueError: without positive and negative studies.
    """
    y = np.asarray(labels, np.float64)
    if not (y > 0.5).any() or (y > 0.5).all():
        raise ValueError("fitting the study model needs positive and negative studies")
    base = study_maxima(series, 0.0)
    base_loss = float(np.mean(np.logaddexp(0.0, base) - y * base))
    best = {"r": 0.0, "a": 1.0, "b": 0.0, "loss": base_loss}
    for r in R_GRID:
        a, b, loss = _logistic(study_maxima(series, r), y)
        if loss < best["loss"] - 1e-9:
            best = {"r": float(r), "a": a, "b": b, "loss": loss}
    auc_max = roc_auc(y, base)
    auc_fit = roc_auc(y, study_maxima(series, best["r"]))
    return {"kind": KIND, "r": best["r"], "a": best["a"], "b": best["b"],
            "fit": {"studies": int(y.size), "positive": int((y > 0.5).sum()),
                    "log_loss_max": base_loss, "log_loss": best["loss"],
                    "auc_max": auc_max, "auc": auc_fit}}


# -- calibration on whole studies ---------------------------------------------------------------


@dataclass
class ValidationPart:
    """Raw model outputs on one validation source, as calibration needs them.

    ``order`` sorts the slices of a group along the scan axis; ``whole_studies`` says whether a
    group is a whole study (ct-ich patients, phantom studies) or only a scan, image or slice
    (its study-level figures would mean nothing).
    """

    source: str
    logits: np.ndarray
    labels: np.ndarray
    groups: list[str]
    order: np.ndarray
    whole_studies: bool
    real: bool = True
    notes: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.groups)


def study_series(part: ValidationPart, p_any: np.ndarray) -> tuple[list[str], list[list[np.ndarray]],
                                                                    np.ndarray]:
    """(group names, per group [slice logits in scan order], group label) of a part."""
    from ichrt.runtime.studymodel import to_logits

    members: dict[str, list[int]] = {}
    for k, g in enumerate(part.groups):
        members.setdefault(g, []).append(k)
    names, series, labels = [], [], []
    y = part.labels[:, 0]
    for g, idx in members.items():
        idx = sorted(idx, key=lambda k: part.order[k])
        known = y[idx][~np.isnan(y[idx])]
        names.append(g)
        series.append([to_logits(p_any[idx])])
        labels.append(float(known.max()) if known.size else np.nan)
    return names, series, np.asarray(labels)


def study_probability(series: Sequence[Sequence[np.ndarray]], params: dict[str, Any]) -> np.ndarray:
    """p(any) of each study under a fitted study model (as the runtime computes it)."""
    m = study_maxima(series, params["r"])
    z = np.clip(params["a"] * m + params["b"], -30, 30)
    return 1.0 / (1.0 + np.exp(-z))
