"""Small data for the training/export tests: simple head-like samples, ImageFolder trees and
tiny phantom folders in the RSNA layout (through the project's phantom generator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ichrt.export.samples import Sample, make_labels


def head_hu(rng: np.random.Generator, size: int = 64, positive: bool = False
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(HU, lesion mask or None): an elliptic brain (30 HU) in a skull ring, in air; positives
    carry a 75 HU blob."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    cy, cx = size / 2 + rng.normal(0, 1.5), size / 2 + rng.normal(0, 1.5)
    r = np.hypot((yy - cy) / 0.8, (xx - cx) / 0.7) / (size / 2)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 0.9] = 1000.0
    brain = r < 0.8
    hu[brain] = 30.0 + rng.normal(0, 4, int(brain.sum()))
    mask = None
    if positive:
        by, bx = cy + rng.uniform(-6, 6), cx + rng.uniform(-6, 6)
        mask = np.hypot(yy - by, xx - bx) < size * rng.uniform(0.06, 0.12)
        hu[mask] = 75.0
    return hu, mask


def head_samples(groups: int = 8, per_group: int = 4, seed: int = 0, source: str = "heads",
                 size: int = 64) -> list[Sample]:
    """Samples in ``groups`` groups; even groups hold positives on every other slice."""
    rng = np.random.default_rng(seed)
    out = []
    for g in range(groups):
        for k in range(per_group):
            pos = g % 2 == 0 and k % 2 == 0
            hu, mask = head_hu(rng, size, pos)
            labels = make_labels(float(pos), intraparenchymal=float(pos), epidural=0.0)
            out.append(Sample(hu=hu, labels=labels, mask=mask, group=f"g{g}", source=source,
                              id=f"{g}_{k}"))
    return out


def write_imagefolder(root: Path, n: int = 12, size: int = 64, seed: int = 0,
                      suffix: str = ".png") -> list[tuple[Path, np.ndarray]]:
    """A hemorrhage/ + no_hemorrhage/ tree of 8-bit brain-window (40/80) images.

    Returns (path, HU clipped to the window) per image, alternating positive and negative.
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = []
    for cls in ("hemorrhage", "no_hemorrhage"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pos = i % 2 == 0
        hu, _ = head_hu(rng, size, pos)
        gray = np.clip(np.rint(hu / 80.0 * 255.0), 0, 255).astype(np.uint8)
        path = root / ("hemorrhage" if pos else "no_hemorrhage") / f"img{i:03d}{suffix}"
        Image.fromarray(gray).save(path)
        written.append((path, np.clip(hu, 0.0, 80.0)))
    return written


def write_phantoms(root: Path, studies: int = 4, size: int = 64, slices: tuple[int, int] = (6, 6),
                   seed: int = 0, jpg: bool = False) -> dict:
    """A tiny phantom data set in the RSNA 2019 layout (``ichrt.runtime.synth``), half of its
    studies positive; with ``jpg`` also the seed's hemorrhage/ no_hemorrhage/ jpgs."""
    from ichrt.runtime.synth import write_dataset

    return write_dataset(root, studies, seed, slices=slices, size=size, prevalence=0.5,
                         jpg=jpg, overwrite=True)
