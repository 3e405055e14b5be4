"""Write one slice's explanation: the map (.npy), the PNG overlay and a JSON summary.

``name`` usually comes from a DICOM file (a SOPInstanceUID) and is untrusted: it goes through
:func:`ichrt.runtime.paths.safe_name` and every path through :func:`ichrt.runtime.paths.inside`,
so nothing is written outside ``out_dir``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.explain.base import normalize, otsu_threshold, peak_location, to_slice
from ichrt.runtime.explain.metrics import boxes_to_mask, localization
from ichrt.runtime.explain.overlay import write_overlay
from ichrt.runtime.paths import inside, safe_name


def write_explanation(
    out_dir: str | Path,
    name: str,
    hu: np.ndarray,
    heatmap: np.ndarray,
    method: str,
    boxes: Iterable[Sequence[float]] | None = None,
    mask: np.ndarray | None = None,
    extra: Mapping[str, Any] | None = None,
    frame: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Write ``<safe name>.npy``, ``.png`` and ``.json`` into ``out_dir``; return the summary.

    Args:
        hu: the slice in HU (H, W).
        heatmap: the raw map, either on the slice pixels (H, W) or over the framing box
            ``frame`` (y0, x0, y1, x1) at any resolution (e.g. a CAM kept during scoring).
            The saved map is its positive part scaled to [0, 1] on the slice pixels.
        method: the method that made it (``cam``, ``gradcam``, ``gradcampp``, ``hshap``).
        boxes: ground-truth boxes (y0, x0, y1, x1[, label]) in slice pixels, when known.
        mask: ground-truth lesion mask (H, W) bool, when known (takes precedence over boxes
            for the metrics; both are drawn).
        extra: more JSON-ready entries for the summary, e.g. ``seconds`` (time spent on the
            map), ``probability``, ``label``; they cannot replace the computed entries.

    Summary: method, shape, peak (y, x) and its raw value, the Otsu threshold of the scaled map,
    the area above it (pixels and fraction), the files written and, with ground truth, the
    localization metrics (pointing, energy, iou).
    """
    hu = np.asarray(hu)
    raw = np.asarray(heatmap, np.float32)
    if frame is not None:
        raw = to_slice(raw, frame, hu.shape)
    elif raw.shape != hu.shape:
        raise ValueError(f"heat map {raw.shape} differs from the slice {hu.shape}; pass frame=box")
    scaled = normalize(raw)
    threshold = otsu_threshold(scaled)
    area = int(np.count_nonzero(scaled > threshold))
    peak = peak_location(raw)
    stem = safe_name(name)
    files = {kind: f"{stem}.{kind}" for kind in ("npy", "png", "json")}
    boxes = [tuple(float(v) for v in box[:4]) for box in boxes or ()]
    truth = mask if mask is not None else (boxes_to_mask(boxes, hu.shape) if boxes else None)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(inside(out_dir, files["npy"]), scaled)
    write_overlay(inside(out_dir, files["png"]), hu, scaled, boxes, mask)
    summary: dict[str, Any] = dict(extra or {})
    summary.update({
        "name": stem,
        "method": method,
        "shape": list(hu.shape),
        "peak": list(peak) if peak is not None else None,
        "peak_value": float(raw.max()) if raw.size else 0.0,
        "threshold": threshold,
        "area_px": area,
        "area_fraction": area / scaled.size,
        "files": files,
    })
    if truth is not None:
        summary["localization"] = localization(scaled, truth)
    inside(out_dir, files["json"]).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
