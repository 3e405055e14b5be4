"""Head framing: a square box around the head of each slice, so field of view does not matter.

Models with ``framing="head"`` see the head at the same scale whatever the scanner's field of
view: :func:`head_boxes` finds the head and :func:`ichrt.runtime.windowing.window_batch` crops
and resizes that box. It runs per slice at inference, so it works on a small grid:

1. tissue = HU above -300 (or, on a slice with no air, such as an already windowed 8-bit
   source mapped to HU, above its minimum plus 10% of its range); a grid cell (a block of
   pixels, at most :data:`GRID` cells a side) is tissue when all its pixels are, so a gap of
   one pixel already parts the head from a holder lying close to it;
2. holes (ventricles, sinuses, the inside of a skull ring) are filled;
3. a chamfer distance transform gives each cell its depth inside the tissue; the deepest cell
   (the centre of the largest inscribed disc) lies inside the head, since nothing else in a
   head CT is as thick;
4. an opening of radius :data:`OPENING` times that depth keeps the head and cuts what is
   thin and attached: the curved head holder, burnt-in text, lines and cables;
5. the head's extent is that of the tissue pixels within reach of the opened head, to the
   pixel; a head under a quarter of the image's side is measured again on a finer grid.

The box is that extent grown by ``margin`` on each side and made square. A slice without tissue
gets the centred square of side ``max(H, W)`` (as with no framing). Deterministic; compiled
with Numba (cached on disk like the windowing kernel), about 0.3 ms per 512 x 512 slice.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ichrt.runtime.windowing import centred_boxes

#: Largest side of the working grid (a 512-pixel slice is read in 8 x 8 blocks).
GRID = 64
#: Tissue threshold in HU on slices that contain air.
TISSUE_HU = -300.0
#: Radius of the opening, as a share of the head's inscribed radius.
OPENING = 0.15
#: Heads smaller than 1/REFINE of the image's side are measured again on a finer grid.
REFINE = 4


def head_boxes(hu: np.ndarray, margin: float = 0.05) -> np.ndarray:
    """Square boxes (y0, x0, y1, x1), half-open, around the head of every slice.

    Args:
        hu: (N, H, W) slices in Hounsfield units (any real dtype; air around the head).
        margin: space added on each side, as a share of the head's larger side.

    Returns:
        (N, 4) int32 boxes for :func:`~ichrt.runtime.windowing.window_batch`; they may reach
        outside the image (that part reads as air).
    """
    hu = np.asarray(hu)
    if hu.ndim != 3 or 0 in hu.shape[1:]:
        raise ValueError(f"hu must be (N, H, W) with H, W > 0, got shape {hu.shape}")
    if hu.dtype.kind not in "iuf":
        raise TypeError(f"hu must be integer or float, got dtype {hu.dtype}")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    n, height, width = hu.shape
    hu = np.ascontiguousarray(hu, np.float32)
    found, ok = _extents(hu)
    _refine_small_heads(hu, found, ok)
    boxes = centred_boxes(n, height, width)
    if ok.any():
        y0, x0, y1, x1 = found[ok].T
        side = np.maximum(y1 - y0, x1 - x0) * (1.0 + 2.0 * margin)
        top = np.floor((y0 + y1 - side) / 2.0 + 0.5)
        left = np.floor((x0 + x1 - side) / 2.0 + 0.5)
        side = np.maximum(np.floor(side + 0.5), 1.0)
        boxes[ok] = np.stack([top, left, top + side, left + side], axis=1).astype(np.int32)
    return boxes


def frame_boxes(hu: np.ndarray, framing: str) -> np.ndarray:
    """(N, 4) int64 source boxes of (N, H, W) ``hu`` for a contract's ``framing``.

    ``"head"``: :func:`head_boxes`; ``"none"``: the centred square. The framing choice made in
    one place, for :func:`ichrt.runtime.batches.window_hu` and for training, which jitters
    these boxes (its scale/shift augmentation).
    """
    if framing == "head":
        return np.asarray(head_boxes(hu), np.int64)
    return centred_boxes(len(hu), *np.shape(hu)[1:]).astype(np.int64)


def _extents(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head extents (N, 4) (y0, x0, y1, x1) in pixels, half-open, and whether a slice has one."""
    block = max(1, -(-max(hu.shape[1:]) // GRID))
    found = np.zeros((hu.shape[0], 4), np.int64)
    ok = np.zeros(hu.shape[0], np.bool_)
    _head_extents(hu, block, found, ok)
    return found, ok


def _refine_small_heads(hu: np.ndarray, found: np.ndarray, ok: np.ndarray) -> None:
    """Measure small heads again, in place, on a finer grid around the first estimate.

    A small head spans few grid cells, too few to open it without losing it; a crop of twice
    its size is read at up to four times the resolution.
    """
    height, width = hu.shape[1:]
    side = np.maximum(found[:, 2] - found[:, 0], found[:, 3] - found[:, 1])
    for k in np.flatnonzero(ok & (REFINE * side < max(height, width))):
        pad = side[k] // 2
        top, left = max(0, found[k, 0] - pad), max(0, found[k, 1] - pad)
        bottom, right = min(height, found[k, 2] + pad), min(width, found[k, 3] + pad)
        fine, fine_ok = _extents(np.ascontiguousarray(hu[k : k + 1, top:bottom, left:right]))
        if fine_ok[0]:
            found[k] = fine[0] + (top, left, top, left)


@njit(parallel=True, cache=True, nogil=True)
def _head_extents(hu, block, found, ok):
    """Per slice: the head's pixel extent (y0, x0, y1, x1) into ``found``, ``ok`` if any."""
    n, height, width = hu.shape
    gh = (height + block - 1) // block
    gw = (width + block - 1) // block
    for k in prange(n):
        image = hu[k]
        threshold = _threshold(image)
        tissue = _tissue_grid(image, threshold, block, gh, gw)
        _fill_holes(tissue)
        depth = _chamfer(tissue, 0.0)
        best = depth.argmax()
        deepest = depth.ravel()[best]
        if deepest <= 0.0:
            continue
        radius = max(1.0, OPENING * deepest)
        core = _component(depth >= radius, best // gw, best % gw)
        opened = tissue & (_chamfer(~core, 1e9) <= radius)
        # The opened head's cells and their 8 neighbours, the partly covered cells at its edge.
        near = _chamfer(~opened, 1e9) < 1.5
        ok[k] = _pixel_extent(image, threshold, block, near, found[k])


@njit(cache=True)
def _threshold(image):
    """The tissue threshold: -300 HU, or on a slice without air its minimum + 10% of range."""
    for value in image.ravel():
        if value < -500.0:
            return TISSUE_HU
    low = image.min()
    return low + 0.1 * (image.max() - low)


@njit(cache=True)
def _tissue_grid(image, threshold, block, gh, gw):
    """Grid cells whose pixels are all above ``threshold``."""
    height, width = image.shape
    tissue = np.zeros((gh, gw), np.bool_)
    column_hits = np.empty(width, np.int32)
    for gy in range(gh):
        column_hits[:] = 0
        rows = min(block, height - gy * block)
        for y in range(gy * block, gy * block + rows):
            for x in range(width):
                column_hits[x] += image[y, x] > threshold
        for gx in range(gw):
            cols = min(block, width - gx * block)
            tissue[gy, gx] = column_hits[gx * block : gx * block + cols].sum() == rows * cols
    return tissue


@njit(cache=True)
def _flood_from_border(candidate):  # pragma: no cover - Numba
    """The cells of a bool grid that are 4-connected to the grid's border within ``candidate``."""
    height, width = candidate.shape
    reached = np.zeros((height, width), np.bool_)
    stack = np.empty(height * width, np.int64)
    top = 0
    for y in range(height):
        for x in range(width):
            if (y == 0 or x == 0 or y == height - 1 or x == width - 1) and candidate[y, x]:
                reached[y, x] = True
                stack[top] = y * width + x
                top += 1
    while top:
        top -= 1
        y, x = divmod(stack[top], width)
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            v, u = y + dy, x + dx
            if 0 <= v < height and 0 <= u < width and candidate[v, u] and not reached[v, u]:
                reached[v, u] = True
                stack[top] = v * width + u
                top += 1
    return reached


def border_connected(candidate: np.ndarray) -> np.ndarray:
    """The pixels of a bool (H, W) mask that are 4-connected to the image border within it."""
    return _flood_from_border(np.ascontiguousarray(candidate, dtype=np.bool_))


@njit(cache=True)
def _fill_holes(mask):
    """Set to True, in place, every background cell not 4-connected to the grid's border."""
    outside = _flood_from_border(~mask)
    gh, gw = mask.shape
    for y in range(gh):
        for x in range(gw):
            if not outside[y, x]:
                mask[y, x] = True


@njit(cache=True)
def _chamfer(mask, beyond):
    """Distance in cells (3-4 chamfer) from each ``mask`` cell to the nearest cell outside it.

    Cells beyond the grid are at distance ``beyond``: 0 counts them as outside the mask (a head
    cut by the field of view is no deeper than what is seen of it), a large value as inside.
    """
    gh, gw = mask.shape
    big = 3e9
    d = np.full((gh + 2, gw + 2), 3.0 * beyond)
    for y in range(gh):
        for x in range(gw):
            d[y + 1, x + 1] = big if mask[y, x] else 0.0
    for y in range(1, gh + 1):
        for x in range(1, gw + 1):
            if d[y, x] > 0.0:
                d[y, x] = min(
                    d[y, x],
                    d[y - 1, x] + 3.0,
                    d[y, x - 1] + 3.0,
                    d[y - 1, x - 1] + 4.0,
                    d[y - 1, x + 1] + 4.0,
                )
    for y in range(gh, 0, -1):
        for x in range(gw, 0, -1):
            if d[y, x] > 0.0:
                d[y, x] = min(
                    d[y, x],
                    d[y + 1, x] + 3.0,
                    d[y, x + 1] + 3.0,
                    d[y + 1, x + 1] + 4.0,
                    d[y + 1, x - 1] + 4.0,
                )
    return d[1:-1, 1:-1] / 3.0


@njit(cache=True)
def _component(mask, y0, x0):
    """The 8-connected component of ``mask`` that holds cell (y0, x0)."""
    gh, gw = mask.shape
    seen = np.zeros((gh, gw), np.bool_)
    stack = np.empty(gh * gw, np.int64)
    seen[y0, x0] = True
    stack[0] = y0 * gw + x0
    top = 1
    while top:
        top -= 1
        y, x = divmod(stack[top], gw)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v, u = y + dy, x + dx
                if 0 <= v < gh and 0 <= u < gw and mask[v, u] and not seen[v, u]:
                    seen[v, u] = True
                    stack[top] = v * gw + u
                    top += 1
    return seen


@njit(cache=True)
def _pixel_extent(image, threshold, block, cells, extent):
    """Half-open extent, into ``extent``, of the pixels above ``threshold`` in ``cells``.

    A cell is read only when it could widen the extent found so far (few cells per row).
    """
    height, width = image.shape
    y0, x0, y1, x1 = height, width, 0, 0
    for gy in range(cells.shape[0]):
        ya, yb = gy * block, min(height, (gy + 1) * block)
        for gx in range(cells.shape[1]):
            xa, xb = gx * block, min(width, (gx + 1) * block)
            if not cells[gy, gx] or (ya >= y0 and yb <= y1 and xa >= x0 and xb <= x1):
                continue
            for y in range(ya, yb):
                for x in range(xa, xb):
                    if image[y, x] > threshold:
                        y0, y1 = min(y0, y), max(y1, y + 1)
                        x0, x1 = min(x0, x), max(x1, x + 1)
    extent[0], extent[1], extent[2], extent[3] = y0, x0, y1, x1
    return y1 > y0
