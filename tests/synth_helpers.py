"""Shared helpers for the phantom generator's tests: small studies and clean slices."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ichrt.runtime.synth.anatomy import Head, draw_head
from ichrt.runtime.synth.config import PhantomConfig
from ichrt.runtime.synth.physics import Protocol, draw_protocol
from ichrt.runtime.synth.study import head_lesions, render_slice

#: Issue 3's HU ranges of the clean (noise-free) tissues, by tissue class name.
TISSUE_RANGES: dict[str, tuple[float, float]] = {
    "gray": (35.0, 45.0), "white": (20.0, 30.0), "csf": (0.0, 15.0), "ventricle": (0.0, 15.0),
    "bone": (700.0, 1800.0), "soft": (20.0, 60.0), "calcification": (100.0, 400.0),
    "deep_gray": (28.0, 43.0), "dura": (45.0, 75.0), "fat": (-130.0, -50.0),
    "edema": (5.0, 21.0), "eye": (5.0, 20.0), "lens": (60.0, 120.0), "holder": (100.0, 500.0),
    "air": (-1000.0, -1000.0),
}


@dataclass
class CleanCase:
    """One head with lesions and a few clean rasterized slices."""

    head: Head
    lesions: np.ndarray
    proto: Protocol
    slices: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]]


def clean_case(seed: int, size: int = 128, heights: tuple[float, ...] = (-45.0, -15.0, 5.0, 30.0),
               config: PhantomConfig | None = None) -> CleanCase:
    """A head with lesions, rasterized (clean HU, tissue, lesion bits) at some heights (mm)."""
    cfg = config or PhantomConfig()
    rng = np.random.default_rng(seed)
    head = draw_head(rng, cfg)
    proto = draw_protocol(rng, cfg, size, len(heights))
    lesions = head_lesions(rng, cfg, head)
    heights = heights + tuple(float(z) for z in lesions["cz"])
    slices = [(z, *render_slice(head, lesions, z, size, proto.spacing)) for z in heights]
    return CleanCase(head, lesions, proto, slices)
