"""Masked loss, class-balanced sampling and the reproducible epoch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from export_helpers import head_samples

from ichrt.export.torchdata import EpochSampler, SliceStore, balance_weights
from ichrt.export.train import masked_bce

pytestmark = pytest.mark.torch


def test_masked_bce_ignores_nan_targets():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.3, 4.0, -2.0]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, float("nan")]])
    loss = masked_bce(logits, targets)
    known = ~torch.isnan(targets)
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], targets[known])
    assert float(loss.detach()) == pytest.approx(float(want), rel=1e-6)
    loss.backward()
    assert torch.all(logits.grad[~known] == 0) and torch.all(logits.grad[known] != 0)


def test_masked_bce_all_unknown_is_zero_and_pos_weight_counts():
    logits = torch.zeros(2, 3, requires_grad=True)
    assert float(masked_bce(logits, torch.full((2, 3), float("nan")))) == 0.0
    t = torch.tensor([[1.0, 0.0, float("nan")]])
    x = torch.tensor([[0.0, 0.0, 0.0]])
    plain, weighted = masked_bce(x, t), masked_bce(x, t, pos_weight=3.0)
    assert float(weighted) == pytest.approx(float(plain) * 2.0)  # (3 + 1) / (1 + 1)


def _store(sources: list[tuple[str, int, int]]) -> SliceStore:
    """A store with (source, positives, negatives) rows; sampling weights need no pixels."""
    labels, names = [], []
    for name, pos, neg in sources:
        labels += [[v] + [np.nan] * 5 for v in [1.0] * pos + [0.0] * neg]
        names += [name] * (pos + neg)
    n = len(labels)
    return SliceStore(row=np.arange(n), pack=np.zeros(n, np.int64),
                      labels=np.array(labels, np.float32), sources=names,
                      groups=[str(i) for i in range(n)], ids=[str(i) for i in range(n)])


def test_class_balance_within_each_source():
    store = _store([("phantom", 10, 90), ("real", 30, 10)])
    w = balance_weights(store, "class")
    src, y = np.array(store.sources), store.labels[:, 0]
    for name, share in (("phantom", 100 / 140), ("real", 40 / 140)):
        rows = src == name
        assert w[rows & (y == 1)].sum() == pytest.approx(w[rows & (y == 0)].sum())
        assert w[rows].sum() == pytest.approx(share)
    w2 = balance_weights(store, "source")
    assert w2[src == "phantom"].sum() == pytest.approx(0.5)
    assert balance_weights(store, "none") is None


def test_epoch_sampler_is_reproducible_and_skips():
    w = balance_weights(_store([("a", 3, 17)]), "class")
    s = EpochSampler(20, weights=w, seed=(0, 1))
    s.set_epoch(2)
    first = list(s)
    assert first == list(s) and len(first) == 20
    s.set_epoch(3)
    assert list(s) != first
    s.set_epoch(2, skip=8)
    assert list(s) == first[8:] and len(s) == 12
    positives = sum(1 for r, _ in first if r < 3)
    assert positives >= 4  # balanced: about half the draws are the 3 positive rows


def test_store_packs_compactly_and_keeps_regions():
    samples = head_samples(groups=2, per_group=2, size=48)
    store = SliceStore.from_samples(iter(samples))
    assert len(store) == 4 and store.hu(0).dtype == np.int16 and store.shape(3) == (48, 48)
    assert np.max(np.abs(store.hu(0) - samples[0].hu)) <= 0.5
    assert np.array_equal(store.region(0), samples[0].mask)
    assert store.region(1) is None
    sub = store.subset([3, 0])
    assert sub.ids == [samples[3].id, samples[0].id]
    assert np.array_equal(sub.hu(1), store.hu(0))
    both = SliceStore.concat([sub, store])
    assert len(both.packs) == 1  # pixels shared, never copied
    assert np.array_equal(both.labels[:2], sub.labels, equal_nan=True)
    assert np.array_equal(both.hu(5), store.hu(3))


def test_cam_share_loss_rewards_cam_energy_inside_the_region():
    from ichrt.export.train import cam_share_loss
    from ichrt.nets import build_model

    model = build_model("resnet18", 6)
    with torch.no_grad():
        model.head.fc.weight.fill_(1.0)
    region = torch.zeros(2, 64, 64)
    region[:, :32, :32] = 1.0  # top-left quarter = top-left feature cell of a 2x2 map
    inside, outside = torch.zeros(2, 512, 2, 2), torch.zeros(2, 512, 2, 2)
    inside[:, :, 0, 0] = 1.0
    outside[:, :, 1, 1] = 1.0
    use = torch.tensor([True, False])
    assert float(cam_share_loss(model, inside, region, use)) == pytest.approx(0.0, abs=1e-4)
    assert float(cam_share_loss(model, outside, region, use)) == pytest.approx(1.0, abs=1e-4)
    assert float(cam_share_loss(model, inside, region, torch.tensor([False, False]))) == 0.0
