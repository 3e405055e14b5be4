"""What every explanation method shares: the explainer interface, framing undo, scaling, Otsu.

Following pytorch-grad-cam's ``BaseCAM``: a method only says how to turn the model-input tensors
(and the model's outputs, when the caller already has them) into maps over the model input square;
bringing a map back onto the original slice pixels, scaling it to [0, 1] and thresholding it live
here, once, for every method.

Geometry: the windowing kernel resamples the source rectangle ``box = (y0, x0, y1, x1)`` of a slice
to the S x S model input, output pixel ``i`` sampling source ``y = y0 + (i + 0.5) * (y1 - y0) / S
- 0.5``.  A method's map of any resolution (h, w) covers that same rectangle, so :func:`to_slice`
inverts the relation (half-pixel centres, as OpenCV's bilinear ``resize``) and lands each map
value on the slice pixel it describes; slice pixels outside the box get 0.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from ichrt.runtime.extras import ExtraNotInstalled

#: The method names accepted by ``ichrt explain --method`` and ``ichrt score --explain``.
METHODS: tuple[str, ...] = ("lesion", "cam", "gradcam", "gradcampp", "hshap")


class ExplainError(RuntimeError):
    """A method cannot explain this model here (no CAM head, missing extra, unmatched weights)."""


class ExplainExtraMissing(ExplainError, ExtraNotInstalled):
    """An optional dependency (an install extra) that the asked-for method needs is missing."""


class Explainer(ABC):
    """One explanation method: model-input tensors in, one map per tensor out.

    Subclasses set :attr:`name` and implement :meth:`maps`; everything after the map (framing
    undo, scaling, thresholds, overlays, metrics) is shared.
    """

    #: The method name (one of :data:`METHODS`).
    name: str = ""

    @abstractmethod
    def maps(
        self,
        tensors: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        label: str = "any",
    ) -> np.ndarray:
        """Maps (N, h, w) float32 over the model input square; larger = more evidence for label.

        Args:
            tensors: the windowed model inputs (N, C, S, S) float32.
            outputs: the model's outputs for ``tensors`` when the caller already ran it (e.g.
                ``features`` during scoring); methods that need them run the model otherwise.
            label: the contract label to explain.
        """


def label_index(labels: Sequence[str], label: str) -> int:
    """Position of ``label`` among the model's labels, with a clear error when unknown."""
    try:
        return list(labels).index(label)
    except ValueError:
        raise ExplainError(f"label {label!r} is not one of the model's labels {list(labels)}") from None


def _axis_weights(n_out: int, start: int, stop: int, n_map: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps along one axis: (inside, i0, i1, w1) for output pixels 0..n_out-1."""
    pos = np.arange(n_out, dtype=np.float64)
    inside = (pos >= start) & (pos < stop)
    u = (pos + 0.5 - start) * (n_map / (stop - start)) - 0.5
    u = np.clip(u, 0.0, n_map - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_map - 1)
    return inside, i0, i1, u - i0


def to_slice(heatmap: np.ndarray, box: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
    """Bring a map (h, w) over the framing ``box`` back onto a slice of ``shape`` (H, W).

    Bilinear with half-pixel centres and edge clamping (OpenCV ``INTER_LINEAR``), separable;
    pixels outside ``box`` are 0.  ``box = (0, 0, H, W)`` is a plain resize to (H, W).
    """
    heatmap = np.asarray(heatmap, np.float32)
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heatmap.shape}")
    y0, x0, y1, x1 = (int(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty framing box {tuple(box)}")
    rows_in, r0, r1, wr = _axis_weights(shape[0], y0, y1, heatmap.shape[0])
    cols_in, c0, c1, wc = _axis_weights(shape[1], x0, x1, heatmap.shape[1])
    wr, wc = wr.astype(np.float32)[:, None], wc.astype(np.float32)[None, :]
    rows = heatmap[r0] * (1 - wr) + heatmap[r1] * wr
    out = rows[:, c0] * (1 - wc) + rows[:, c1] * wc
    out *= rows_in[:, None] & cols_in[None, :]
    return out.astype(np.float32, copy=False)


def normalize(heatmap: np.ndarray) -> np.ndarray:
    """The positive part of a map scaled to [0, 1] (divided by its maximum; all-zero stays zero).

    Zero keeps its meaning (no evidence), unlike a min-max scaling; for the ReLU'd maps of CAM and
    Grad-CAM, whose minimum is 0 in practice, the two coincide.
    """
    pos = np.maximum(np.asarray(heatmap, np.float32), 0.0)
    peak = float(pos.max()) if pos.size else 0.0
    return pos / peak if peak > 0 else pos


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (the histogram split that maximizes between-class variance).

    Same convention as scikit-image's ``threshold_otsu``: the region is ``values > threshold``.
    A constant input returns its value (empty region).
    """
    v = np.asarray(values, np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    counts, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w1 = np.cumsum(counts)
    w2 = np.cumsum(counts[::-1])[::-1]
    m1 = np.cumsum(counts * centres) / np.maximum(w1, 1)
    m2 = (np.cumsum((counts * centres)[::-1]) / np.maximum(w2[::-1], 1))[::-1]
    between = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    return float(centres[int(np.argmax(between))])


def peak_location(heatmap: np.ndarray) -> tuple[int, int] | None:
    """(y, x) of the map's maximum, or None when the map has no positive value.

    On a plateau (h-Shap paints whole squares) the maximal pixel nearest the plateau's centroid is
    taken, so the peak is the middle of the square, not its first corner.
    """
    heatmap = np.asarray(heatmap)
    top = float(heatmap.max()) if heatmap.size else 0.0
    if not top > 0:
        return None
    ys, xs = np.nonzero(heatmap == top)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(ys[k]), int(xs[k])
