"""The study decision: from per-slice ``any`` outputs of one study to one study probability.

The maximum over slices lets a single false-positive slice (skull base, beam hardening, a
calcification) flag a whole study. A real bleed usually shows on neighbouring slices too, so the
study model scores each slice together with its neighbours along the scan axis before taking the
maximum (a light sequence model, as the RSNA 2019 winners' second stage, small enough to live in
the contract as a few numbers and run in NumPy in the lean runtime):

    z_i  = logit of the calibrated slice p(any), slices of one series in scan order
    s_i  = (1 - r) * z_i + r * mean(z_{i-1}, z_{i+1})   (z_i itself past the ends)
    study logit = a * max_i s_i + b,   key slice = argmax_i s_i

``r``, ``a`` and ``b`` are fitted on whole studies (:func:`ichrt.calibration.studyfit.fit`);
``r = 0, a = 1, b = 0`` is exactly the maximum over slices. Several series of one study: the
largest study logit counts. Pure functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ichrt.runtime.probability import sigmoid
from ichrt.runtime.slices import SliceIdentity, scan_order

KIND = "neighbour-max"
#: Logits are clipped here so a probability of exactly 0 or 1 stays finite.
LOGIT_CLIP = 30.0


def to_logits(p: np.ndarray) -> np.ndarray:
    """Logits of probabilities, clipped to +-:data:`LOGIT_CLIP`."""
    p = np.clip(np.asarray(p, np.float64), 1e-13, 1 - 1e-13)
    return np.clip(np.log(p) - np.log1p(-p), -LOGIT_CLIP, LOGIT_CLIP)


def neighbour_scores(z: np.ndarray, r: float) -> np.ndarray:
    """``(1 - r) * z_i + r * mean of the neighbours`` for one series in scan order."""
    z = np.asarray(z, np.float64)
    if z.size < 2 or r == 0:
        return z.copy()
    left = np.concatenate([z[:1], z[:-1]])    # past the ends the slice stands in for itself
    right = np.concatenate([z[1:], z[-1:]])
    return (1.0 - r) * z + r * 0.5 * (left + right)


def check(params: Mapping[str, Any]) -> dict[str, float]:
    """Validated (r, a, b) of a contract's ``study_model``; ValueError when malformed."""
    if params.get("kind") != KIND:
        raise ValueError(f"study_model kind must be {KIND!r}, got {params.get('kind')!r}")
    out = {k: float(params[k]) for k in ("r", "a", "b")}
    if not (0.0 <= out["r"] < 1.0 and out["a"] > 0 and np.isfinite(out["b"])):
        raise ValueError(f"study_model out of range: {out}")
    return out


def study_any(
    p_any: Sequence[float], identities: Sequence[SliceIdentity], params: Mapping[str, Any] | None
) -> tuple[float, int]:
    """(study p(any), index of the key slice) of one study's slices (any order).

    With ``params`` None this is the maximum over slices (first on ties).
    """
    p = np.asarray(p_any, np.float64)
    if params is None:
        k = int(np.argmax(p))
        return float(p[k]), k
    prm = check(params)
    series: dict[str, list[int]] = {}
    for k, ident in enumerate(identities):
        series.setdefault(ident.series_uid, []).append(k)
    best, key = -np.inf, 0
    for members in series.values():
        order, _ = scan_order([identities[k] for k in members])
        idx = [members[i] for i in order]
        s = neighbour_scores(to_logits(p[idx]), prm["r"])
        j = int(np.argmax(s))
        if s[j] > best:
            best, key = float(s[j]), idx[j]
    z = prm["a"] * best + prm["b"]
    return float(sigmoid(np.clip(z, -LOGIT_CLIP, LOGIT_CLIP))), key
