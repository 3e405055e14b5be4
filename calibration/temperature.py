"""Per-label temperature scaling: ``p = sigmoid(logit / T)`` fitted by minimizing the NLL.

Temperature scaling keeps the ranking (AUC is unchanged) and only fixes how confident the model
claims to be. For one label the negative log-likelihood is convex in ``beta = 1/T`` (it is a
logistic regression with one weight and no bias), so its minimum is the single root of the
monotone gradient; a Newton iteration safeguarded by bisection finds it to machine precision
within a bounded temperature range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ichrt.runtime.probability import sigmoid, tempered_sigmoid

#: Temperatures are searched in this range; a fit at a bound means the model is degenerate.
T_BOUNDS: tuple[float, float] = (0.05, 20.0)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary negative log-likelihood of ``sigmoid(logits / T)`` over known labels."""
    z, y = _known(logits, y)
    if z.size == 0:
        return float("nan")
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def _known(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"logits and labels differ in length: {z.size} != {y.size}")
    keep = ~np.isnan(y) & np.isfinite(z)
    return z[keep], y[keep]


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-10
) -> float:
    """The temperature that minimizes the NLL of one label (NaN labels ignored).

    Raises:
        ValueError: when the known labels do not hold both classes (the NLL would then be
            minimized at a bound, which calibrates nothing).
    """
    z, y = _known(logits, y)
    n_pos = int((y > 0.5).sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError("temperature fitting needs both positive and negative labels")
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]  # bracket on beta = 1/T

    def grad_hess(beta: float) -> tuple[float, float]:
        s = sigmoid(beta * z)
        return float(np.sum((s - y) * z)), float(np.sum(s * (1.0 - s) * z * z))

    if grad_hess(lo)[0] >= 0.0:
        return 1.0 / lo
    if grad_hess(hi)[0] <= 0.0:
        return 1.0 / hi
    beta = min(max(1.0, lo), hi)
    for _ in range(200):
        g, h = grad_hess(beta)
        if g > 0.0:
            hi = beta
        else:
            lo = beta
        step = beta - g / h if h > 0.0 else np.nan
        beta = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= tol * beta:
            break
    return float(1.0 / beta)


def fit_temperatures(
    logits: np.ndarray, labels_matrix: np.ndarray, label_names: Sequence[str]
) -> dict[str, float]:
    """Fit one temperature per label column; labels without both classes are left out (T = 1)."""
    logits = np.asarray(logits, dtype=np.float64)
    labels_matrix = np.asarray(labels_matrix, dtype=np.float64)
    if logits.shape != labels_matrix.shape or logits.shape[1] != len(label_names):
        raise ValueError(
            f"logits {logits.shape}, labels {labels_matrix.shape} and {len(label_names)} names "
            "do not match"
        )
    temps: dict[str, float] = {}
    for j, name in enumerate(label_names):
        try:
            temps[name] = fit_temperature(logits[:, j], labels_matrix[:, j])
        except ValueError:
            continue
    return temps


def calibrated_probs(
    logits: np.ndarray, temperatures: Mapping[str, float], label_names: Sequence[str]
) -> np.ndarray:
    """``sigmoid(logits / T)`` per label column (T = 1 for labels without a temperature)."""
    return tempered_sigmoid(logits, [float(temperatures.get(name, 1.0)) for name in label_names])
