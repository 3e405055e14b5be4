"""The lesion map of lesion-level models: probabilities, areas and study bleed volumes.

A lesion-level model (contract ``lesion_stride`` set) has an ONNX output ``lesion``: one logit per
``stride`` x ``stride`` cell of the model input. Its sigmoid is the default explanation (no torch,
no extra model run) and gives a bleed estimate: cells at or above :data:`LESION_THRESHOLD` times
the source area of one cell (the framing box maps onto the model input) times the pixel spacing
gives an area per slice; areas times the slice spacing add up to a volume per study.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ichrt.runtime.probability import sigmoid
from ichrt.runtime.slices import SliceIdentity, scan_positions

#: Cell probability at which a lesion-map cell counts as bleeding (area and volume). Chosen on
#: held-out data of the shipped model (median relative volume error: ct-ich patients +0.59,
#: phantom studies -0.36 at 0.8; +3.6 and +0.33 at 0.5), see the README's model card.
LESION_THRESHOLD = 0.8


def lesion_probabilities(logits: np.ndarray) -> np.ndarray:
    """Sigmoid of lesion logits (N, 1, h, w) or (N, h, w) -> (N, h, w) float32, overflow-free."""
    z = np.asarray(logits, np.float64)
    if z.ndim == 4:
        z = z[:, 0]
    return sigmoid(z).astype(np.float32)


def lesion_area_mm2(
    probs: np.ndarray, box: Sequence[int], pixel_spacing: Sequence[float] | None,
    threshold: float | None = None,
) -> float | None:
    """Area (mm^2) of the cells at or above ``threshold`` of one slice's map (h, w).

    ``box`` is the (y0, x0, y1, x1) source rectangle that was resized to the model input; None
    without a pixel spacing (the area would have no unit).
    """
    if pixel_spacing is None or len(pixel_spacing) != 2:
        return None
    dy, dx = (float(v) for v in pixel_spacing)
    if not (np.isfinite(dy) and np.isfinite(dx) and dy > 0 and dx > 0):
        return None
    threshold = LESION_THRESHOLD if threshold is None else threshold
    h, w = probs.shape
    y0, x0, y1, x1 = (float(v) for v in box)
    cell_px = ((y1 - y0) / h) * ((x1 - x0) / w)
    return float(np.count_nonzero(probs >= threshold) * cell_px * dy * dx)


def slice_spacing(identities: Sequence[SliceIdentity]) -> float | None:
    """Distance (mm) between neighbouring slices of one series.

    The median step of the positions along the slice normal; else the SliceThickness; else
    None.
    """
    keys = scan_positions(identities) if len(identities) > 1 else None
    if keys is not None:
        step = float(np.median(np.diff(np.sort(keys))))
        if np.isfinite(step) and step > 0:
            return step
    thick = [i.slice_thickness for i in identities if i.slice_thickness]
    if thick:
        t = float(np.median(thick))
        if np.isfinite(t) and t > 0:
            return t
    return None


def study_volume_ml(
    areas_mm2: Sequence[float | None], identities: Sequence[SliceIdentity]
) -> float | None:
    """Estimated bleed volume (mL) of a study: per series, sum of slice areas x slice spacing.

    Series are measured separately and the largest estimate is kept (two reconstructions of one
    scan must not add up). None when no series has both areas and a spacing.
    """
    series: dict[str, list[int]] = {}
    for k, ident in enumerate(identities):
        series.setdefault(ident.series_uid, []).append(k)
    best = None
    for members in series.values():
        areas = [areas_mm2[k] for k in members]
        if any(a is None for a in areas):
            continue
        spacing = slice_spacing([identities[k] for k in members])
        if spacing is None:
            continue
        ml = float(sum(areas)) * spacing / 1000.0
        best = ml if best is None else max(best, ml)
    return best
