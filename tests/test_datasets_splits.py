"""Grouped, stratified train/validation splits: no group ever on both sides."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ichrt.export.splits import group_labels, grouped_split, leaked_groups


def _data(n_groups: int, per_group: int, pos_every: int = 3, source: str = "a"):
    groups = [f"p{g}" for g in range(n_groups) for _ in range(per_group)]
    labels = np.array([1.0 if g % pos_every == 0 and k == 0 else 0.0
                       for g in range(n_groups) for k in range(per_group)], np.float32)
    return groups, [source] * len(groups), labels


def test_no_group_on_both_sides_and_every_row_placed():
    groups, sources, labels = _data(40, 5)
    train, val = grouped_split(groups, sources, labels, 0.25, seed=3)
    assert leaked_groups(groups, sources, train, val) == set()
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(groups)))
    assert len({groups[i] for i in val}) == 10  # 25% of 40 groups, by group not by slice


def test_stratified_by_group_label():
    groups, sources, labels = _data(30, 4, pos_every=5)  # 6 positive groups, 24 negative
    train, val = grouped_split(groups, sources, labels, 0.5, seed=0)
    val_pos = {groups[i] for i in val if labels[i] == 1}
    train_pos = {groups[i] for i in train if labels[i] == 1}
    assert len(val_pos) == 3 and len(train_pos) == 3


def test_assignment_is_stable_when_another_source_is_added():
    g1, s1, y1 = _data(20, 3, source="phantom")
    g2, s2, y2 = _data(12, 2, source="real")
    _, val_alone = grouped_split(g1, s1, y1, 0.2, seed=1)
    _, val_mixed = grouped_split(g1 + g2, s1 + s2, np.concatenate([y1, y2]), 0.2, seed=1)
    assert {g1[i] for i in val_alone} == {(g1 + g2)[i] for i in val_mixed if i < len(g1)}
    # same group name in two sources: two groups, not one
    assert any(i >= len(g1) for i in val_mixed)


def test_small_strata_and_unknown_labels():
    groups = ["a", "a", "b", "c"]
    labels = np.array([np.nan, np.nan, 1.0, 0.0], np.float32)
    assert group_labels(groups, labels) == {"a": "unknown", "b": "pos", "c": "neg"}
    train, val = grouped_split(groups, ["s"] * 4, labels, 0.5, seed=0)
    assert len(val) == 0  # every stratum has a single group: it stays in training
    train, val = grouped_split(groups, ["s"] * 4, labels, 0.0, seed=0)
    assert len(val) == 0 and len(train) == 4


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(0, 2), st.sampled_from([0.0, 1.0])),
                min_size=1, max_size=60),
       st.floats(0.0, 0.9), st.integers(0, 5))
def test_never_leaks(rows, fraction, seed):
    groups = [f"g{g}" for g, _, _ in rows]
    sources = [f"s{s}" for _, s, _ in rows]
    labels = np.array([y for _, _, y in rows], np.float32)
    train, val = grouped_split(groups, sources, labels, fraction, seed)
    assert leaked_groups(groups, sources, train, val) == set()
    assert len(train) + len(val) == len(rows)
