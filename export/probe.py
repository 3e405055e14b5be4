"""Source probe: can a model's features tell which data source a slice came from?

In the real training sets the source all but predicts the label, and each source has its own
window, resolution and framing, so a model can score well by recognizing the source. The probe
fits a multinomial logistic regression (NumPy, no scikit-learn) from pooled features to source
names, cross-validated over groups (a patient or source image never in the training and test
fold at once), and compares its accuracy with what no features can beat: the majority class,
and chance for balanced accuracy.

Read it per subset (:func:`probe_sources`):

- ``all``: every slice. Above baseline is expected whenever the label is readable from the
  features and prevalence differs between sources, so this alone proves little.
- ``balanced``: per source, as many positive as negative slices (sources with one class drop
  out). The label no longer says anything about the source; accuracy here is what the features
  carry about the source itself.
- ``positive`` / ``negative``: one class only, the same question among bleeds and among normals.

Features usually come from :func:`model_features` (global average of the ONNX ``features``
output through the runtime's own preprocessing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ichrt.export.samples import Sample


@dataclass(frozen=True)
class ProbeResult:
    """Cross-validated source prediction on one subset of the slices.

    Attributes:
        subset: ``all``, ``balanced``, ``positive`` or ``negative``.
        n: slices in the subset.
        classes: the source names present.
        accuracy: share of slices whose source the probe predicts right.
        majority: accuracy of always predicting the training folds' most frequent source.
        balanced_accuracy: mean over sources of the per-source recall.
        chance: balanced accuracy of a blind guess, 1 / number of sources.
    """

    subset: str
    n: int
    classes: tuple[str, ...]
    accuracy: float
    majority: float
    balanced_accuracy: float
    chance: float

    @property
    def excess(self) -> float:
        """Balanced accuracy above chance (0 = the features say nothing about the source)."""
        return self.balanced_accuracy - self.chance

    def to_dict(self) -> dict:
        return {**asdict(self), "classes": list(self.classes), "excess": self.excess}


def _top_eigenvalue(xb: np.ndarray, iters: int = 50) -> float:
    """Largest eigenvalue of ``xb.T @ xb`` by power iteration (deterministic start)."""
    v = np.ones(xb.shape[1]) / np.sqrt(xb.shape[1])
    value = 0.0
    for _ in range(iters):
        u = xb.T @ (xb @ v)
        value = float(np.linalg.norm(u))
        if value == 0.0:
            break
        v = u / value
    return value


def fit_softmax(
    x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2, iters: int = 500,
    tol: float = 1e-5,
) -> np.ndarray:
    """Weights (K + 1, C) of an L2-regularized multinomial logistic regression (last row: bias).

    Accelerated gradient descent (FISTA momentum) with the step 1 / L, where L bounds the
    Hessian of the mean cross-entropy (0.5 * lambda_max(X'X) / n, from power iteration with a
    20% margin) plus ``l2``; the bias is not regularized. Stops early when no gradient entry
    exceeds ``tol``. Deterministic.
    """
    n = len(x)
    xb = np.hstack([x, np.ones((n, 1))])
    onehot = np.eye(n_classes)[y]
    step = 1.0 / (0.6 * _top_eigenvalue(xb) / n + l2)
    reg = np.full((xb.shape[1], 1), l2)
    reg[-1] = 0.0
    w = np.zeros((xb.shape[1], n_classes))
    v, t = w.copy(), 1.0
    for _ in range(iters):
        grad = xb.T @ (_softmax(xb @ v) - onehot) / n + reg * v
        if np.abs(grad).max() < tol:
            return v
        w_next = v - step * grad
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        v = w_next + (t - 1.0) / t_next * (w_next - w)
        w, t = w_next, t_next
    return w


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def predict_softmax(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class indices predicted by :func:`fit_softmax` weights."""
    return np.argmax(x @ w[:-1] + w[-1], axis=1)


def group_folds(groups: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per row; all rows of a group share a fold (groups ordered by a seeded hash)."""
    names = sorted(set(groups), key=lambda g: hashlib.sha256(f"{seed}\x00{g}".encode()).digest())
    fold_of = {g: i % folds for i, g in enumerate(names)}
    return np.array([fold_of[g] for g in groups], np.int64)


def cross_validated(
    features: np.ndarray,
    targets: Sequence[str],
    groups: Sequence[str],
    subset: str = "all",
    folds: int = 5,
    l2: float = 1e-2,
    seed: int = 0,
) -> ProbeResult:
    """Grouped k-fold accuracy of predicting ``targets`` from ``features`` (standardized on each
    training fold)."""
    x = np.asarray(features, np.float64)
    if x.ndim != 2 or len(x) != len(targets) or len(x) != len(groups):
        raise ValueError(f"features must be (N, K) with N = {len(targets)} targets and groups, "
                         f"got {x.shape}")
    classes = tuple(sorted(set(targets)))
    y = np.array([classes.index(t) for t in targets])
    fold = group_folds(list(groups), folds, seed)
    pred = np.empty_like(y)
    majority = np.empty_like(y)
    for k in range(folds):
        test, train = fold == k, fold != k
        if not test.any():
            continue
        if not train.any():
            raise ValueError(f"fold {k} holds every group; need at least 2 groups")
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-8
        w = fit_softmax((x[train] - mean) / std, y[train], len(classes), l2)
        pred[test] = predict_softmax(w, (x[test] - mean) / std)
        majority[test] = np.bincount(y[train], minlength=len(classes)).argmax()
    hit = pred == y
    recall = [hit[y == c].mean() for c in range(len(classes))]
    return ProbeResult(subset=subset, n=len(y), classes=classes, accuracy=float(hit.mean()),
                       majority=float((majority == y).mean()),
                       balanced_accuracy=float(np.mean(recall)), chance=1.0 / len(classes))


def label_balanced(sources: Sequence[str], labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Row indices with, per source, equally many positive and negative rows (drawn without
    replacement, seeded); sources lacking either class are left out; unknown labels are too."""
    labels = np.asarray(labels, np.float64)
    src = np.asarray(sources)
    rng = np.random.default_rng(seed)
    keep = []
    for s in sorted(set(sources)):
        pos = np.flatnonzero((src == s) & (labels >= 0.5))
        neg = np.flatnonzero((src == s) & (labels < 0.5))
        n = min(len(pos), len(neg))
        if n:
            keep += [rng.choice(pos, n, replace=False), rng.choice(neg, n, replace=False)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


def probe_sources(
    features: np.ndarray,
    sources: Sequence[str],
    groups: Sequence[str],
    labels: np.ndarray | None = None,
    folds: int = 5,
    seed: int = 0,
) -> list[ProbeResult]:
    """Source-prediction results on ``all`` slices and, given ``any`` labels, on the
    ``balanced``, ``positive`` and ``negative`` subsets (a subset with fewer than two sources or
    fewer than ``folds`` groups is skipped). Groups are scoped by source."""
    x = np.asarray(features)
    src = list(sources)
    keys = [f"{s}\x00{g}" for s, g in zip(src, groups)]
    subsets = {"all": np.arange(len(src))}
    if labels is not None:
        a = np.asarray(labels, np.float64)
        subsets["balanced"] = label_balanced(src, a, seed)
        subsets["positive"] = np.flatnonzero(a >= 0.5)
        subsets["negative"] = np.flatnonzero(a < 0.5)
    results = []
    for name, idx in subsets.items():
        if len({src[i] for i in idx}) < 2 or len({keys[i] for i in idx}) < folds:
            continue
        results.append(cross_validated(x[idx], [src[i] for i in idx], [keys[i] for i in idx],
                                       name, folds, seed=seed))
    return results


def model_features(
    model: str | Path, samples: Sequence[Sample], batch_size: int = 16, provider: str = "cpu"
) -> np.ndarray:
    """(N, K) global average of the model's ``features`` output for each sample, preprocessed
    exactly as scoring does (the contract's windows, framing and size)."""
    from ichrt.runtime.batches import window_hu
    from ichrt.runtime.session import load_model

    loaded = load_model(model, provider=provider)
    out = []
    for start in range(0, len(samples), batch_size):
        tensor, _ = window_hu([s.hu for s in samples[start:start + batch_size]], loaded.contract)
        feats = loaded.run(tensor, outputs=("features",))["features"]
        out.append(feats.mean(axis=(2, 3)))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
