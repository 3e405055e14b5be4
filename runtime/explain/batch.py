"""Explain a batch of slices: pick the method, compute maps, land them on the slice pixels.

The one path shared by ``ichrt explain`` and ``ichrt score --explain``: both hold the windowed
tensors, the framing boxes used to make them and (for scoring) the model outputs, and get back one
raw map per slice on its original pixels, ready for :func:`~ichrt.runtime.explain.output.
write_explanation`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ichrt.runtime.explain.base import METHODS, Explainer, ExplainError, to_slice


@dataclass
class SliceExplanation:
    """One slice's raw map on its own pixels (H, W), the method and the seconds it took."""

    heatmap: np.ndarray
    method: str
    seconds: float


def make_explainer(method: str, model, **options: Any) -> Explainer:
    """The explainer of ``method`` for ``model`` (a LoadedModel); ``options`` go to its class.

    ``lesion`` needs a lesion-level model (its ``lesion`` output), ``cam`` GAP + Linear head
    weights in the contract, ``gradcam``/``gradcampp`` the
    ``explain`` extra and the checkpoint beside the model, ``hshap`` nothing but the model
    (options: min_size, threshold, background, radii, angles, use_logits, batch_size).
    """
    if method == "lesion":
        from ichrt.runtime.explain.lesion import LesionExplainer

        return LesionExplainer(model, **options)
    if method == "cam":
        from ichrt.runtime.explain.cam import CamExplainer

        return CamExplainer(model, **options)
    if method in ("gradcam", "gradcampp"):
        from ichrt.runtime.explain.gradcam import GradCamExplainer

        return GradCamExplainer(model, plusplus=method == "gradcampp", **options)
    if method == "hshap":
        from ichrt.runtime.explain.hshap import HShapExplainer

        return HShapExplainer(model, **options)
    raise ExplainError(f"unknown explanation method {method!r}; choose one of {', '.join(METHODS)}")


def explain_slices(
    explainer: Explainer,
    tensors: np.ndarray,
    boxes: np.ndarray,
    shapes: Sequence[tuple[int, int]],
    outputs: Mapping[str, np.ndarray] | None = None,
    label: str = "any",
) -> list[SliceExplanation]:
    """Explain ``tensors`` (N, C, S, S) and map each result onto its slice.

    Args:
        boxes: (N, 4) framing boxes (y0, x0, y1, x1) the tensors were windowed from.
        shapes: (H, W) of each original slice.
        outputs: the model's outputs for ``tensors`` when already computed (rows aligned).
    """
    if not (len(tensors) == len(boxes) == len(shapes)):
        raise ValueError("tensors, boxes and shapes need one entry per slice")
    start = time.perf_counter()
    maps = explainer.maps(tensors, outputs, label)
    share = (time.perf_counter() - start) / max(1, len(tensors))
    result = []
    for raw, box, shape in zip(maps, boxes, shapes):
        t0 = time.perf_counter()
        heatmap = to_slice(raw, box, tuple(shape))
        result.append(SliceExplanation(heatmap, explainer.name, share + time.perf_counter() - t0))
    return result


def time_methods(
    model, tensors: np.ndarray, methods: Sequence[str] = METHODS, label: str = "any"
) -> dict[str, float | str]:
    """Seconds per slice of each method on ``tensors`` (N, C, S, S), for ``ichrt bench``.

    Only the map is timed (inference for ``features`` included, as when explaining on demand);
    a method this model or install cannot run gets the reason instead of a time.
    """
    figures: dict[str, float | str] = {}
    for method in methods:
        try:
            explainer = make_explainer(method, model)
        except ExplainError as exc:
            figures[method] = f"unavailable: {exc}"
            continue
        start = time.perf_counter()
        explainer.maps(tensors, None, label)
        figures[method] = (time.perf_counter() - start) / max(1, len(tensors))
    return figures
