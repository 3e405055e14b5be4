"""The source probe (export/probe.py) on synthetic features, and feature extraction over ONNX."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.export import probe as P
from ichrt.export.samples import Sample


def _dataset(seed: int = 0, per_source: int = 120):
    """Three sources with different prevalence; 20 groups per source of ``per_source`` rows."""
    rng = np.random.default_rng(seed)
    sources, groups, labels = [], [], []
    for s, prevalence in zip(("a", "b", "c"), (0.1, 0.5, 0.9)):
        for i in range(per_source):
            sources.append(s)
            groups.append(f"g{i % 20}")
            labels.append(float(rng.random() < prevalence))
    return np.array(sources), groups, np.array(labels), rng


def _by_subset(results: list[P.ProbeResult]) -> dict[str, P.ProbeResult]:
    return {r.subset: r for r in results}


def test_separable_sources_are_read_far_above_baseline() -> None:
    sources, groups, labels, rng = _dataset()
    centres = {"a": 0.0, "b": 3.0, "c": 6.0}
    feats = rng.normal(0, 1, (len(sources), 8))
    feats[:, 0] += [centres[s] for s in sources]
    res = _by_subset(P.probe_sources(feats, sources, groups, labels))
    assert set(res) == {"all", "balanced", "positive", "negative"}
    assert res["all"].balanced_accuracy > 0.9 and res["all"].accuracy > res["all"].majority + 0.4
    assert res["balanced"].excess > 0.5


def test_uninformative_features_stay_at_baseline() -> None:
    sources, groups, labels, rng = _dataset(seed=1)
    feats = rng.normal(0, 1, (len(sources), 8))
    for r in P.probe_sources(feats, sources, groups, labels):
        assert r.accuracy <= r.majority + 0.1, r
        assert r.excess < 0.12, r


def test_balanced_subset_removes_what_the_label_gives_away() -> None:
    # Features carry only the label; the sources differ only in prevalence.
    sources, groups, labels, rng = _dataset(seed=2, per_source=300)
    feats = rng.normal(0, 1, (len(sources), 4))
    feats[:, 0] += 4.0 * labels
    res = _by_subset(P.probe_sources(feats, sources, groups, labels))
    assert res["all"].excess > 0.15
    assert res["balanced"].excess < 0.08


def test_label_balanced_subset_and_group_folds() -> None:
    sources = np.array(["a"] * 10 + ["b"] * 6 + ["c"] * 4)
    labels = np.array([1] * 3 + [0] * 7 + [1] * 4 + [0] * 2 + [1] * 4, float)
    idx = P.label_balanced(sources, labels, seed=3)
    picked = list(zip(sources[idx], labels[idx]))
    assert picked.count(("a", 1.0)) == picked.count(("a", 0.0)) == 3
    assert picked.count(("b", 1.0)) == picked.count(("b", 0.0)) == 2
    assert "c" not in sources[idx]  # no negatives: cannot be balanced
    groups = [f"g{i % 7}" for i in range(40)]
    folds = P.group_folds(groups, 5, seed=1)
    for g in set(groups):
        assert len({folds[i] for i, h in enumerate(groups) if h == g}) == 1
    assert set(folds) == set(range(5))


def test_fit_softmax_learns_a_linear_rule() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (300, 3))
    y = np.argmax(x @ np.array([[2.0, -1.0, 0.0], [0.0, 1.5, -1.5], [1.0, 0.0, 0.0]]) + 0.5, axis=1)
    w = P.fit_softmax(x, y, 3, l2=1e-4, iters=2000)
    assert (P.predict_softmax(w, x) == y).mean() > 0.95


def test_probe_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="features must be"):
        P.cross_validated(np.zeros((3, 2)), ["a", "b"], ["g", "h"])


def test_model_features_pool_the_onnx_feature_map(tiny_model) -> None:
    path, _ = tiny_model
    air = np.full((48, 48), -1000.0, np.float32)
    dim, bright = air.copy(), air.copy()
    dim[8:40, 8:40] = 20.0
    bright[8:40, 8:40] = 70.0
    samples = [Sample(hu=h, labels=np.zeros(6, np.float32)) for h in (dim, bright, dim)]
    feats = P.model_features(path, samples, batch_size=2)
    assert feats.shape == (3, 4) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[0], feats[2], rtol=1e-6)
    assert feats[1, 0] > feats[0, 0]  # feature 0 of the tiny model follows the brain window
