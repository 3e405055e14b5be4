"""Bounding boxes of the connected components of a mask (BHX draws one box per bleed)."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def _component_boxes(mask):
    """(n, 4) int64 boxes (x0, y0, x1, y1 inclusive) of 8-connected components, scan order."""
    rows, cols = mask.shape
    seen = np.zeros((rows, cols), np.bool_)
    stack = np.empty((rows * cols, 2), np.int64)
    boxes = []
    for i in range(rows):
        for j in range(cols):
            if not mask[i, j] or seen[i, j]:
                continue
            seen[i, j] = True
            top = 0
            stack[0, 0], stack[0, 1] = i, j
            top = 1
            x0, y0, x1, y1 = j, i, j, i
            while top > 0:
                top -= 1
                y, x = stack[top, 0], stack[top, 1]
                x0, x1, y0, y1 = min(x0, x), max(x1, x), min(y0, y), max(y1, y)
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < rows and 0 <= xx < cols and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            stack[top, 0], stack[top, 1] = yy, xx
                            top += 1
            boxes.append((x0, y0, x1, y1))
    out = np.empty((len(boxes), 4), np.int64)
    for k in range(len(boxes)):
        out[k, 0], out[k, 1], out[k, 2], out[k, 3] = boxes[k]
    return out


def component_boxes(mask: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(x, y, width, height) in pixels of each 8-connected component of a 2-D bool mask."""
    if not mask.any():
        return []
    found = _component_boxes(np.ascontiguousarray(mask, dtype=np.bool_))
    return [(int(x0), int(y0), int(x1 - x0 + 1), int(y1 - y0 + 1)) for x0, y0, x1, y1 in found]
