"""HU slices -> model tensor: windows, resize and normalization in one Numba pass.

:func:`window_batch` turns a batch of slices (raw stored values or HU) into the float32 NCHW
tensor a model's :class:`~ichrt.runtime.contract.ModelContract` asks for in a single pass:
each output value is computed once from four source pixels, with no intermediate arrays:

1. stored value -> HU with the slice's RescaleSlope/RescaleIntercept (default 1/0);
2. each window (level L, width W) of the contract -> ``clip((HU - (L - W/2)) / W, 0, 1)``;
3. bilinear resampling of a source box to ``input_size`` squared: output pixel (i, j) samples
   ``y = y0 + (i + 0.5) * (y1 - y0) / S - 0.5`` (x likewise) and blends the four neighbours'
   WINDOWED values; pixels outside the image read as air (-1000 HU);
4. ``(v - mean_c) / std_c``.

:func:`window_reference` computes the same thing in plain NumPy, written for clarity; the tests
hold the kernel to it (max abs difference <= 1e-5).

Numba compilation: the kernel is compiled lazily, once per pixel dtype, for ``int16``,
``uint16``, ``int32``, ``float32`` and ``float64`` (other dtypes are converted first: ``uint8``
and ``int8`` to ``int16``, ``float16`` to ``float32``, other integers to ``float64``). Each
specialization is written to Numba's on-disk cache on its first compile, so a later process
loads it instead of compiling. The cache lives in ``$NUMBA_CACHE_DIR`` when that is set,
otherwise in ``__pycache__`` beside this file, or, where that folder is not writable (a
read-only install), in the user-wide cache (``~/.cache/numba`` on Linux). Set
``NUMBA_CACHE_DIR`` to a writable folder on read-only deployments to keep starts warm.

Threads: the kernel runs on Numba's thread pool (``numba.set_num_threads`` limits it). On a
CPU shared with other busy processes (ONNX Runtime, decoding), OpenMP's spin-waiting can make
a parallel call many times slower than a serial one; ``OMP_WAIT_POLICY=PASSIVE`` in the
environment of the process (set before the first call) avoids that.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ichrt.runtime.contract import ModelContract

#: What pixels outside the image read as: air.
AIR_HU = -1000.0

#: Pixel dtypes the kernel is compiled for (each lazily, on first use, then cached on disk).
KERNEL_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in (np.int16, np.uint16, np.int32, np.float32, np.float64)
)


def centred_boxes(n: int, height: int, width: int) -> np.ndarray:
    """``n`` copies of the centred square box of side ``max(height, width)`` as (y0, x0, y1, x1).

    On a non-square image the box overhangs the short side, which then reads as air, so the
    image keeps its aspect ratio.
    """
    side = max(height, width)
    y0 = (height - side) // 2
    x0 = (width - side) // 2
    return np.tile(np.array([y0, x0, y0 + side, x0 + side], np.int32), (n, 1))


def window_unit(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """One window scaled to [0, 1]: ``clip((hu - (level - width / 2)) / width, 0, 1)``."""
    return np.clip((hu - (level - width / 2.0)) / width, 0.0, 1.0)


def window_batch(
    pixels: np.ndarray,
    contract: ModelContract,
    boxes: np.ndarray | None = None,
    slopes: np.ndarray | float | None = None,
    intercepts: np.ndarray | float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Window, resize and normalize a batch of slices into the model tensor (Numba kernel).

    Args:
        pixels: (N, H, W) stored values (e.g. raw int16) or HU (float32), any numeric dtype.
        contract: the model's contract (windows, input_size, mean, std).
        boxes: (N, 4) integer half-open source boxes (y0, x0, y1, x1), may reach outside the
            image; default :func:`centred_boxes`.
        slopes, intercepts: per-slice (N,) or scalar rescale to HU; default 1 and 0.
        out: optional float32 C-contiguous (N, C, S, S) buffer to fill and return (no
            allocation), e.g. reused across batches.

    Returns:
        float32 (N, C, S, S) with C = number of windows and S = ``contract.input_size``.
    """
    pixels, boxes, slopes, intercepts, out = _checked(
        pixels, contract, boxes, slopes, intercepts, out
    )
    windows = np.asarray(contract.windows, np.float64)
    mean = np.asarray(contract.mean, np.float64)
    std = np.asarray(contract.std, np.float64)
    _window_kernel(
        _kernel_pixels(pixels),
        boxes.astype(np.int64),
        slopes,
        intercepts,
        windows[:, 0] - windows[:, 1] / 2.0,
        1.0 / windows[:, 1],
        1.0 / std,
        -mean / std,
        out,
    )
    return out


def window_reference(
    pixels: np.ndarray,
    contract: ModelContract,
    boxes: np.ndarray | None = None,
    slopes: np.ndarray | float | None = None,
    intercepts: np.ndarray | float | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Plain NumPy twin of :func:`window_batch` (same arguments and result), for clarity."""
    pixels, boxes, slopes, intercepts, out = _checked(
        pixels, contract, boxes, slopes, intercepts, out
    )
    size = contract.input_size
    hu = pixels.astype(np.float64) * slopes[:, None, None] + intercepts[:, None, None]
    for k, (y0, x0, y1, x1) in enumerate(boxes):
        rows, fy = _sample_points(y0, y1, size)
        cols, fx = _sample_points(x0, x1, size)
        rows, fy = rows[:, None], fy[:, None]
        corners = [_take(hu[k], rows + dy, cols + dx) for dy in (0, 1) for dx in (0, 1)]
        weights = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
        for c, (level, width) in enumerate(contract.windows):
            unit = sum(w * window_unit(v, level, width) for w, v in zip(weights, corners))
            out[k, c] = (unit - contract.mean[c]) / contract.std[c]
    return out


def _sample_points(start: int, stop: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Upper-left neighbour index and fractional offset of each output sample along one axis."""
    s = start + (np.arange(size) + 0.5) * ((stop - start) / size) - 0.5
    first = np.floor(s)
    return first.astype(np.int64), s - first


def _take(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image[rows, cols]`` with broadcasting, reading air outside the image."""
    h, w = image.shape
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    return np.where(inside, image[np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)], AIR_HU)


def _checked(
    pixels: np.ndarray,
    contract: ModelContract,
    boxes: np.ndarray | None,
    slopes: np.ndarray | float | None,
    intercepts: np.ndarray | float | None,
    out: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate the arguments shared by both implementations and fill in the defaults."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or 0 in pixels.shape[1:]:
        raise ValueError(f"pixels must be (N, H, W) with H, W > 0, got shape {pixels.shape}")
    if pixels.dtype.kind not in "iuf":
        raise TypeError(f"pixels must be integer or float, got dtype {pixels.dtype}")
    n, h, w = pixels.shape
    if boxes is None:
        boxes = centred_boxes(n, h, w)
    boxes = np.asarray(boxes)
    if boxes.shape != (n, 4) or boxes.dtype.kind not in "iu":
        raise ValueError(f"boxes must be ({n}, 4) integers, got {boxes.shape} {boxes.dtype}")
    empty = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if empty.size:
        raise ValueError(f"box of slice {empty[0]} is empty: {boxes[empty[0]].tolist()}")
    slopes = _per_slice(slopes, 1.0, n, "slopes")
    intercepts = _per_slice(intercepts, 0.0, n, "intercepts")
    shape = (n, contract.channels, contract.input_size, contract.input_size)
    if out is None:
        out = np.empty(shape, np.float32)
    elif (
        not isinstance(out, np.ndarray)
        or out.shape != shape
        or out.dtype != np.float32
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {shape}")
    return pixels, boxes, slopes, intercepts, out


def _per_slice(value: np.ndarray | float | None, default: float, n: int, name: str) -> np.ndarray:
    """A scalar or (N,) rescale parameter as a float64 (N,) array."""
    array = np.asarray(default if value is None else value, np.float64)
    if array.shape not in ((), (n,)):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {array.shape}")
    return np.array(np.broadcast_to(array, (n,)))  # a fresh writable copy: one signature


def _kernel_pixels(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` as a read-only C-contiguous view of a compiled dtype (copying only when needed).

    Read-only always, so that writable and read-only inputs share one compiled specialization.
    """
    dtype = pixels.dtype
    if dtype not in KERNEL_DTYPES:
        if dtype.kind in "iu" and dtype.itemsize == 1:
            dtype = np.dtype(np.int16)
        elif dtype == np.float16:
            dtype = np.dtype(np.float32)
        else:
            dtype = np.dtype(np.float64)
    view = np.ascontiguousarray(pixels, dtype=dtype).view()
    view.flags.writeable = False
    return view


@njit(inline="always", cache=True)
def _hu(pixels, k, row, col, slope, intercept):
    """HU of one stored value; ``row`` or ``col`` -1 marks a pixel outside the image (air)."""
    if row < 0 or col < 0:
        return AIR_HU
    return pixels[k, row, col] * slope + intercept


@njit(inline="always", cache=True)
def _unit(hu, low, inv_width):
    """One window scaled to [0, 1] (the kernel's form of :func:`window_unit`)."""
    return min(max((hu - low) * inv_width, 0.0), 1.0)


@njit(parallel=True, cache=True, fastmath=False, nogil=True)
def _window_kernel(pixels, boxes, slopes, intercepts, lows, inv_widths, scales, offsets, out):
    """The single pass behind :func:`window_batch`; fills ``out`` (N, C, S, S) in place.

    First, per slice, the two source neighbours (-1 when outside) and the blend weight of every
    output row and column. Then, per output row (the parallel loop): the HU of the four
    neighbours of each output pixel into a small row buffer, and per channel a
    branch-free loop that windows, blends and normalizes them (LLVM vectorizes it). A slice
    whose box is exactly S x S samples pixel centres, so it skips the blend.
    """
    n, height, width = pixels.shape
    size = out.shape[2]
    channels = lows.shape[0]
    first = np.empty((2, n, size), np.int64)
    second = np.empty((2, n, size), np.int64)
    frac = np.empty((2, n, size), np.float64)
    exact = np.empty(n, np.bool_)
    for k in prange(n):
        exact[k] = boxes[k, 2] - boxes[k, 0] == size and boxes[k, 3] - boxes[k, 1] == size
        for axis in range(2):
            start = boxes[k, axis]
            limit = height if axis == 0 else width
            step = (boxes[k, axis + 2] - start) / size
            for i in range(size):
                s = start + (i + 0.5) * step - 0.5
                lower = np.floor(s)
                i0 = int(lower)
                i1 = i0 + 1
                first[axis, k, i] = i0 if 0 <= i0 < limit else -1
                second[axis, k, i] = i1 if 0 <= i1 < limit else -1
                frac[axis, k, i] = s - lower

    for task in prange(n * size):
        k = task // size
        i = task - k * size
        slope = slopes[k]
        intercept = intercepts[k]
        r0 = first[0, k, i]
        r1 = second[0, k, i]
        fy = frac[0, k, i]
        cols0 = first[1, k]
        cols1 = second[1, k]
        fx = frac[1, k]
        corner = np.empty((4, size), np.float64)
        if exact[k]:
            for j in range(size):
                corner[0, j] = _hu(pixels, k, r0, cols0[j], slope, intercept)
            for c in range(channels):
                low, inv, scale, offset = lows[c], inv_widths[c], scales[c], offsets[c]
                row = out[k, c, i]
                for j in range(size):
                    row[j] = _unit(corner[0, j], low, inv) * scale + offset
            continue
        for j in range(size):
            corner[0, j] = _hu(pixels, k, r0, cols0[j], slope, intercept)
            corner[1, j] = _hu(pixels, k, r0, cols1[j], slope, intercept)
            corner[2, j] = _hu(pixels, k, r1, cols0[j], slope, intercept)
            corner[3, j] = _hu(pixels, k, r1, cols1[j], slope, intercept)
        for c in range(channels):
            low, inv, scale, offset = lows[c], inv_widths[c], scales[c], offsets[c]
            row = out[k, c, i]
            for j in range(size):
                a = _unit(corner[0, j], low, inv)
                b = _unit(corner[1, j], low, inv)
                top = a + fx[j] * (b - a)
                a = _unit(corner[2, j], low, inv)
                b = _unit(corner[3, j], low, inv)
                bottom = a + fx[j] * (b - a)
                row[j] = (top + fy * (bottom - top)) * scale + offset
