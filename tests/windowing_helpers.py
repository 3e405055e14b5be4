"""Synthetic head slices for the windowing and framing tests (no phantom package needed)."""

from __future__ import annotations

import numpy as np

from ichrt.runtime.windowing import window_unit


def synthetic_head(
    shape: tuple[int, int] = (512, 512),
    centre: tuple[float, float] = (250.0, 256.0),
    radii: tuple[float, float] = (170.0, 140.0),
    holder_gap: float | None = 10.0,
    holder_thickness: float = 10.0,
    text: bool = True,
    fov_padding: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A head CT slice in HU and the head's true extent (y0, x0, y1, x1), half-open.

    The head is an ellipse of brain (35 HU, noisy, with a ventricle) inside a skull ring
    (1000 HU). ``holder_gap``: a curved head holder (300 HU,
    ``holder_thickness`` px), an arc wider than the
    head whose lowest point lies that far below it (0 = touching; None = no holder). ``text``: burnt-in
    annotation blocks (3000 HU strokes) in two corners. ``fov_padding``: a value (e.g. -3024)
    written outside the scanner's circular field of view.
    """
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    cy, cx = centre
    ry, rx = radii
    r = np.hypot((yy - cy) / ry, (xx - cx) / rx)
    hu = np.full(shape, -1000.0) + rng.normal(0.0, 8.0, shape)
    hu[r < 1.0] = 1000.0
    brain = r < 0.92
    hu[brain] = 35.0 + rng.normal(0.0, 5.0, int(brain.sum()))
    hu[np.hypot((yy - cy) / (0.2 * ry), (xx - cx) / (0.1 * rx)) < 1.0] = 5.0
    if holder_gap is not None:
        # A circular arc wider than the head, its lowest point ``holder_gap`` below the head.
        lift = 0.5 * ry
        arc = np.hypot(yy - (cy - lift), xx - cx) - (ry + holder_gap + lift)
        hu[(arc >= 0.0) & (arc < holder_thickness) & (yy > cy + 0.1 * ry)] = 300.0
    if text:
        for top, left in ((8, 8), (height - 40, 8)):
            block = hu[top : top + 30, left : left + width // 5]
            strokes = rng.random(block.shape) < 0.45
            strokes[:, ::7] = False
            block[strokes] = 3000.0
    if fov_padding is not None:
        hu[np.hypot(yy - height / 2.0, xx - width / 2.0) > min(height, width) / 2.0] = fov_padding
    inside = np.argwhere(r < 1.0)
    extent = (*inside.min(axis=0), *(inside.max(axis=0) + 1))
    return hu.astype(np.float32), tuple(int(v) for v in extent)


def as_windowed_source(
    hu: np.ndarray, level: float, width: float, background: float | None
) -> np.ndarray:
    """``hu`` as an 8-bit windowed image mapped back to HU, as real-data loaders do.

    Gray 0 maps to ``background`` (e.g. -1000, air) or, when None, to the window's lower edge.
    """
    gray = np.rint(window_unit(hu, level, width) * 255.0)
    mapped = (level - width / 2.0 + gray / 255.0 * width).astype(np.float32)
    if background is not None:
        mapped[gray == 0] = background
    return mapped
