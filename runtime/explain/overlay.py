"""PNG overlays a reader can check: slice in the brain window, heat map, Otsu contour, ground truth.

Colours: the map blends in with a jet colour scale, opacity growing with the map value (zero stays
plain gray); the Otsu contour of the map is white; ground-truth boxes and mask outlines are green.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ichrt.runtime.explain.metrics import boxes_to_mask, threshold_region

#: Brain window (level, width) in HU of the background picture.
BRAIN_WINDOW = (40.0, 80.0)
CONTOUR_RGB = (255, 255, 255)
TRUTH_RGB = (0, 255, 0)
#: Largest opacity of the heat map (at value 1).
MAX_ALPHA = 0.6


def jet(values: np.ndarray) -> np.ndarray:
    """Jet colour scale: values in [0, 1] (any shape) -> float32 RGB in [0, 1] (shape + (3,))."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], np.float32)  # red, green, blue peaks at 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` on its border (4-neighbourhood), thickened inwards to ``width`` pixels."""
    inner = np.asarray(mask, bool)
    for _ in range(width):
        p = np.pad(inner, 1)
        inner = inner & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return np.asarray(mask, bool) & ~inner


def overlay_rgb(
    hu: np.ndarray,
    heatmap: np.ndarray,
    boxes: Iterable[Sequence[float]] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The overlay picture (H, W, 3) uint8 of a slice ``hu`` and its [0, 1] ``heatmap``."""
    from ichrt.runtime.pictures import window_gray8

    hu, heatmap = np.asarray(hu), np.asarray(heatmap, np.float32)
    if hu.shape != heatmap.shape:
        raise ValueError(f"slice {hu.shape} and heat map {heatmap.shape} differ in shape")
    gray = window_gray8(hu, *BRAIN_WINDOW).astype(np.float32)[..., None] / 255.0
    alpha = MAX_ALPHA * np.clip(heatmap, 0.0, 1.0)[..., None]
    rgb = np.rint(255.0 * ((1.0 - alpha) * gray + alpha * jet(heatmap))).astype(np.uint8)
    width = max(1, min(hu.shape) // 256)
    rgb[outline(threshold_region(heatmap), width)] = CONTOUR_RGB
    for box in boxes or ():
        rgb[outline(boxes_to_mask([box], hu.shape), width)] = TRUTH_RGB
    if mask is not None:
        rgb[outline(mask, width)] = TRUTH_RGB
    return rgb


def write_overlay(
    path: str | Path,
    hu: np.ndarray,
    heatmap: np.ndarray,
    boxes: Iterable[Sequence[float]] | None = None,
    mask: np.ndarray | None = None,
) -> Path:
    """Write :func:`overlay_rgb` as a PNG file; returns its path."""
    from ichrt.runtime.pictures import write_png

    path = Path(path)
    write_png(path, overlay_rgb(hu, heatmap, boxes, mask))
    return path
