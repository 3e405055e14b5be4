"""Pictures for the page: a slice in a window preset, the heat map over it, thumbnails.

Built from the runtime's own picture code (:func:`~ichrt.runtime.pictures.window_gray8`,
:func:`~ichrt.runtime.pictures.encode_png`) and overlay colours (:mod:`ichrt.runtime.explain.
overlay`: jet blend, white Otsu contour), so the page shows what ``ichrt score`` wrote.
"""

from __future__ import annotations

import numpy as np

from ichrt.runtime.explain.metrics import threshold_region
from ichrt.runtime.explain.overlay import CONTOUR_RGB, MAX_ALPHA, jet, outline
from ichrt.runtime.pictures import encode_png, window_gray8

#: Window presets (level, width) in HU.
PRESETS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}
DEFAULT_PRESET = "brain"
#: Side of a worklist thumbnail in pixels.
THUMB_SIZE = 96
#: Largest side of a slice picture in the study view.
VIEW_SIZE = 512


def picture(hu: np.ndarray, preset: str = DEFAULT_PRESET, heat: np.ndarray | None = None,
            size: int | None = None) -> np.ndarray:
    """uint8 picture of ``hu`` in the preset's window: gray, or RGB with ``heat`` blended in.

    ``size`` shrinks (never enlarges) the picture to at most that many pixels a side.
    """
    level, width = PRESETS[preset]
    hu = np.asarray(hu, np.float32)
    if heat is not None and heat.shape != hu.shape:
        heat = None
    step = max(1, -(-max(hu.shape) // size)) if size else 1
    if step > 1:
        hu = _shrink(hu, step)
        heat = _shrink(heat, step) if heat is not None else None
    gray = window_gray8(hu, level, width)
    if heat is None:
        return gray
    alpha = MAX_ALPHA * heat[..., None]
    base = gray.astype(np.float32)[..., None] / 255.0
    rgb = np.rint(255.0 * ((1.0 - alpha) * base + alpha * jet(heat))).astype(np.uint8)
    rgb[outline(threshold_region(heat), max(1, min(hu.shape) // 256))] = CONTOUR_RGB
    return rgb


def _shrink(image: np.ndarray, step: int) -> np.ndarray:
    """Mean over ``step`` x ``step`` blocks (edges cropped)."""
    h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
    blocks = image[:h, :w].reshape(h // step, step, w // step, step)
    return blocks.mean(axis=(1, 3), dtype=np.float32)


def png(hu: np.ndarray, preset: str = DEFAULT_PRESET, heat: np.ndarray | None = None,
        size: int | None = None) -> bytes:
    """PNG bytes of :func:`picture`."""
    return encode_png(picture(hu, preset, heat, size))


def placeholder(size: int = THUMB_SIZE) -> bytes:
    """A dark square PNG for a slice that cannot be shown."""
    return encode_png(np.full((size, size), 24, np.uint8))
