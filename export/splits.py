"""Grouped train/validation splits: a patient, study or source image is never on both sides.

Groups are stratified by (source, group label): within each stratum they are ordered by a hash
of (seed, source, group) and the first ``round(fraction * n)`` go to validation. The assignment of
a group therefore depends only on the seed and on its stratum, not on which other data are loaded
with it, so a multi-stage recipe that loads the same source in two stages gets the same split in
both and never trains on a stage-one validation group.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def _rank(seed: int, source: str, group: str) -> str:
    return hashlib.sha256(f"{seed}\x00{source}\x00{group}".encode()).hexdigest()


def group_labels(groups: Sequence[str], any_labels: np.ndarray) -> dict[str, str]:
    """Stratum label of each group: ``pos`` if any slice is positive, ``neg`` if every known slice
    is negative, ``unknown`` when no slice has a known ``any`` label."""
    out: dict[str, str] = {}
    for g, a in zip(groups, np.asarray(any_labels, np.float32)):
        prev = out.get(g, "unknown")
        if np.isnan(a):
            out[g] = prev
        elif a >= 0.5:
            out[g] = "pos"
        elif prev == "unknown":
            out[g] = "neg"
    return out


def grouped_split(
    groups: Sequence[str],
    sources: Sequence[str],
    any_labels: np.ndarray,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation) of a grouped, stratified split.

    Group names are scoped by source (two sources may reuse a name without being merged). Each
    stratum with at least two groups gives at least one group to validation when
    ``val_fraction > 0``; a stratum with one group stays in training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
    keys = [f"{s}\x00{g}" for s, g in zip(sources, groups)]
    labels = group_labels(keys, any_labels)
    strata: dict[tuple[str, str], list[str]] = defaultdict(list)
    source_of = dict(zip(keys, sources))
    for key, lab in labels.items():
        strata[(source_of[key], lab)].append(key)
    val_keys: set[str] = set()
    for (source, _), members in strata.items():
        n_val = round(val_fraction * len(members))
        if val_fraction > 0 and len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        members.sort(key=lambda k: _rank(seed, source, k))
        val_keys.update(members[:n_val])
    is_val = np.array([k in val_keys for k in keys], bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def leaked_groups(
    groups: Sequence[str], sources: Sequence[str], train: np.ndarray, val: np.ndarray
) -> set[str]:
    """Groups (``source/group``) that appear on both sides of a split (empty when none leak)."""
    names = [f"{s}/{g}" for s, g in zip(sources, groups)]
    return {names[i] for i in train} & {names[i] for i in val}
