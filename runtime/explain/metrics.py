"""Localization metrics of a heat map against a ground-truth lesion mask (pure NumPy).

* **pointing game**: the map's peak (:func:`~ichrt.runtime.explain.base.peak_location`) lies
  inside the mask; a map without any positive value misses.
* **energy share**: the share of the map's positive mass that falls inside the mask.
* **IoU**: intersection over union of the Otsu-thresholded map (``map > otsu``) with the mask.

Boxes (radiologist rectangles, e.g. BHX) become a mask with :func:`boxes_to_mask`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ichrt.runtime.explain.base import otsu_threshold, peak_location


def boxes_to_mask(boxes: Iterable[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Bool mask (H, W) of the union of boxes ``(y0, x0, y1, x1[, label])`` in pixels.

    Fractional edges are rounded outwards (a pixel touched by a box is in it); boxes are clipped
    to the slice.
    """
    mask = np.zeros(shape, bool)
    for box in boxes:
        y0, x0, y1, x1 = (float(v) for v in box[:4])
        r0, c0 = max(0, int(np.floor(y0))), max(0, int(np.floor(x0)))
        r1, c1 = min(shape[0], int(np.ceil(y1))), min(shape[1], int(np.ceil(x1)))
        if r1 > r0 and c1 > c0:
            mask[r0:r1, c0:c1] = True
    return mask


def _check(heatmap: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heatmap, mask = np.asarray(heatmap, np.float64), np.asarray(mask, bool)
    if heatmap.shape != mask.shape:
        raise ValueError(f"heat map {heatmap.shape} and mask {mask.shape} differ in shape")
    return heatmap, mask


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray) -> bool:
    """True when the map's peak lies inside the mask."""
    heatmap, mask = _check(heatmap, mask)
    peak = peak_location(heatmap)
    return peak is not None and bool(mask[peak])


def energy_share(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Positive map mass inside the mask / all positive map mass (0 for an empty map)."""
    heatmap, mask = _check(heatmap, mask)
    pos = np.maximum(heatmap, 0.0)
    total = float(pos.sum())
    return float(pos[mask].sum()) / total if total > 0 else 0.0


def threshold_region(heatmap: np.ndarray) -> np.ndarray:
    """The map's Otsu region ``map > otsu_threshold(map)`` (empty for a constant map)."""
    heatmap = np.asarray(heatmap)
    return heatmap > otsu_threshold(heatmap)


def otsu_iou(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """IoU of the Otsu-thresholded map with the mask (0 when both are empty)."""
    heatmap, mask = _check(heatmap, mask)
    region = threshold_region(heatmap)
    union = int(np.count_nonzero(region | mask))
    return int(np.count_nonzero(region & mask)) / union if union else 0.0


def localization(heatmap: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """All three metrics: ``pointing`` (0/1), ``energy``, ``iou``."""
    return {
        "pointing": float(pointing_hit(heatmap, mask)),
        "energy": energy_share(heatmap, mask),
        "iou": otsu_iou(heatmap, mask),
    }
