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

from ichrt.calibration.temperature import nll
from ichrt.runtime.metrics import roc_auc
from ichrt.runtime.probability import sigmoid
from ichrt.runtime.studymodel import KIND, LOGIT_CLIP, neighbour_scores

#: Neighbour weights tried.
R_GRID = tuple(np.round(np.arange(0.0, 0.95, 0.05), 2))


def study_maxima(series: Sequence[Sequence[np.ndarray]], r: float) -> np.ndarray:
    """``max_i s_i`` per study (the largest over its series)."""
    return np.array([max(float(np.max(neighbour_scores(z, r))) for z in st) for st in series])


def _logistic(x: np.ndarray, y: np.ndarray, iters: int = 100, ridge: float = 1e-3
              ) -> tuple[float, float, float]:
    """(a > 0, b, mean log loss) of ``y ~ sigmoid(a x + b)``.

    Newton's method on the standardized ``x`` with a small ridge and step halving, so that
    saturated maxima (logits near the clip) or nearly separable studies cannot make it diverge.
    """
    mu, sd = float(np.mean(x)), float(np.std(x)) or 1.0
    u = (x - mu) / sd
    w = np.zeros(2)  # slope, intercept on u

    def loss(v: np.ndarray) -> float:
        z = v[0] * u + v[1]
        return float(np.mean(np.logaddexp(0.0, z) - y * z)) + 0.5 * ridge * v[0] ** 2

    current = loss(w)
    for _ in range(iters):
        z = w[0] * u + w[1]
        p = sigmoid(z)
        g = np.array([np.mean((p - y) * u) + ridge * w[0], np.mean(p - y)])
        q = p * (1 - p)
        h = np.array([[np.mean(q * u * u) + ridge, np.mean(q * u)],
                      [np.mean(q * u), np.mean(q) + 1e-9]])
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-6:
            trial = w - t * step
            value = loss(trial)
            if value <= current:
                break
            t *= 0.5
        else:
            break
        w, improvement = trial, current - value
        current = value
        if improvement < 1e-12:
            break
    a, b = max(w[0] / sd, 1e-6), w[1] - w[0] * mu / sd
    return float(a), float(b), nll(a * x + b, y)


def fit(series: Sequence[Sequence[np.ndarray]], labels: Sequence[float]) -> dict[str, Any]:
    """The study model (contract ``study_model``) for studies ``series`` with labels ``labels``.

    The neighbour weight ``r`` is the one of :data:`R_GRID` with the best study-level AUC (ties:
    the lower log loss, then the smaller ``r``). ``a = 1, b = 0``: the study probability stays
    on the scale of the (temperature-calibrated) slice probabilities, so one threshold reads
    both, and slices above it are the ones explained. The fitted ``a, b`` of a logistic fit are
    reported (``fit.logistic``) for reference only.

    Raises:
        ValueError: without positive and negative studies.
    """
    y = np.asarray(labels, np.float64)
    if not (y > 0.5).any() or (y > 0.5).all():
        raise ValueError("fitting the study model needs positive and negative studies")
    best = None
    for r in R_GRID:
        m = study_maxima(series, float(r))
        key = (roc_auc(y, m), -nll(m, y), -float(r))
        if best is None or key > best[0]:
            best = (key, float(r))
    r = best[1]
    m = study_maxima(series, r)
    base = study_maxima(series, 0.0)
    a, b, loss = _logistic(m, y)
    return {"kind": KIND, "r": r, "a": 1.0, "b": 0.0,
            "fit": {"studies": int(y.size), "positive": int((y > 0.5).sum()),
                    "auc_max": roc_auc(y, base), "auc": roc_auc(y, m),
                    "log_loss_max": nll(base, y), "log_loss": nll(m, y),
                    "logistic": {"a": a, "b": b, "log_loss": loss}}}


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
    return sigmoid(np.clip(params["a"] * m + params["b"], -LOGIT_CLIP, LOGIT_CLIP))
