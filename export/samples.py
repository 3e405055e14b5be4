"""The training sample: one slice in HU with its labels, shared by every loader and the trainer.

Every data source (phantoms, RSNA 2019, ImageFolder jpgs, the real sources of ``sources.py``)
becomes a :class:`Sample`, so splitting, sampling, augmentation and training never need to know
where a slice came from beyond its ``source`` and ``group`` names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ichrt.runtime.contract import LABELS

#: A lesion box in source pixels: (y0, x0, y1, x1, label), half-open like the windowing boxes.
Box = tuple[int, int, int, int, str]


@dataclass
class Sample:
    """One labelled slice.

    Attributes:
        hu: float32 (H, W) Hounsfield units.
        labels: float32 (6,) in :data:`LABELS` order; NaN = unknown, masked out of the loss.
        mask: bool (H, W) union of the hemorrhage masks, or None when the source has none.
        boxes: lesion boxes (y0, x0, y1, x1, label) in pixels, or [].
        group: the unit that must never straddle a train/validation split (patient, study or
            source image).
        source: the data source's name (class balancing and per-source metrics use it).
        id: a stable identifier within the source (a file name, never patient data).
    """

    hu: np.ndarray
    labels: np.ndarray
    mask: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    group: str = ""
    source: str = ""
    id: str = ""


def make_labels(any_label: float = np.nan, **subtypes: float) -> np.ndarray:
    """A (6,) float32 label vector; labels not given are NaN (unknown).

    ``any`` is derived as 1 when a given subtype is 1 and ``any_label`` was not given.
    """
    unknown = set(subtypes) - set(LABELS[1:])
    if unknown:
        raise ValueError(f"unknown subtype labels: {sorted(unknown)}")
    labels = np.full(len(LABELS), np.nan, np.float32)
    labels[0] = any_label
    for name, value in subtypes.items():
        labels[LABELS.index(name)] = value
    if np.isnan(labels[0]) and np.any(labels[1:] == 1):
        labels[0] = 1.0
    return labels


def any_label(sample: Sample) -> float:
    """The ``any`` label of a sample (NaN when unknown)."""
    return float(sample.labels[0])


def summarize(samples: list[Sample]) -> dict[str, dict[str, int]]:
    """Counts per source (see :func:`count_by_source`)."""
    return count_by_source([any_label(s) for s in samples], [s.group for s in samples],
                           [s.source for s in samples])


def count_by_source(
    any_labels: Sequence[float], groups: Sequence[str], sources: Sequence[str]
) -> dict[str, dict[str, int]]:
    """Per source: slices, groups, positive, negative and unknown ``any`` labels.

    Recorded in a run's provenance; holds no identifiers.
    """
    out: dict[str, Counter] = {}
    members: dict[str, set[str]] = {}
    for a, g, src in zip(any_labels, groups, sources):
        counts = out.setdefault(src, Counter())
        counts["slices"] += 1
        counts["unknown" if np.isnan(a) else ("positive" if a >= 0.5 else "negative")] += 1
        members.setdefault(src, set()).add(g)
    return {
        src: {"slices": c["slices"], "groups": len(members[src]), "positive": c["positive"],
              "negative": c["negative"], "unknown": c["unknown"]}
        for src, c in sorted(out.items())
    }
