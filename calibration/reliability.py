"""Reliability diagrams as PNG, drawn with NumPy (no matplotlib, so the lean install can draw).

One panel per label: observed positive rate against mean predicted probability in 15 equal-width
bins, before temperature scaling (orange) and after (blue), with the diagonal of perfect
calibration (grey). Each point's square grows with its bin's share of slices. The title gives the
label and ``ECE before > after``. Text uses a built-in 5x7 pixel font (upper case, digits and a
few signs), so nothing beyond NumPy and the runtime's PNG writer is needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichrt.calibration.metrics import ece, reliability_bins

BEFORE = (230, 120, 20)
AFTER = (30, 90, 200)
GREY = (170, 170, 170)
BLACK = (0, 0, 0)
PLOT = 300  # side of a plot area, pixels
MARGIN = 44
TOP = 40
SCALE = 2  # font scale

#: 5x7 glyphs, one 5-bit row per entry (top row first).
_FONT: dict[str, tuple[int, ...]] = {
    "A": (0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "B": (0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E),
    "C": (0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E), "D": (0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E),
    "E": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F), "F": (0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10),
    "H": (0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11), "I": (0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "L": (0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F), "M": (0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11),
    "N": (0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x11), "O": (0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E),
    "P": (0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10), "R": (0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11),
    "S": (0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E), "T": (0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04),
    "U": (0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E), "V": (0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04),
    "Y": (0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04),
    "0": (0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E), "1": (0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E),
    "2": (0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F), "3": (0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E),
    "4": (0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02), "5": (0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E),
    "6": (0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E), "7": (0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08),
    "8": (0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E), "9": (0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C),
    ".": (0, 0, 0, 0, 0, 0x0C, 0x0C), "-": (0, 0, 0, 0x1F, 0, 0, 0),
    ">": (0x10, 0x08, 0x04, 0x02, 0x04, 0x08, 0x10), "=": (0, 0, 0x1F, 0, 0x1F, 0, 0),
    ":": (0, 0x0C, 0x0C, 0, 0x0C, 0x0C, 0), " ": (0, 0, 0, 0, 0, 0, 0),
}


@dataclass
class ReliabilityCurve:
    """One curve of a panel: labels and probabilities of one label, drawn in ``color``."""

    y: np.ndarray
    p: np.ndarray
    color: tuple[int, int, int]


def text(canvas: np.ndarray, s: str, y: int, x: int, color=BLACK, scale: int = SCALE) -> int:
    """Draw ``s`` (upper-cased; unknown characters as blanks) with its top-left at (y, x).

    Returns the x just after the text.
    """
    for ch in s.upper():
        rows = _FONT.get(ch, _FONT[" "])
        bits = np.array([[(r >> (4 - c)) & 1 for c in range(5)] for r in rows], bool)
        block = np.kron(bits, np.ones((scale, scale), bool))
        h, w = block.shape
        region = canvas[y:y + h, x:x + w]
        region[block[:region.shape[0], :region.shape[1]]] = color
        x += 6 * scale
    return x


def _line(canvas: np.ndarray, p0: tuple[float, float], p1: tuple[float, float], color,
          width: int = 2, dash: int = 0) -> None:
    """A line from p0 to p1 ((y, x) pixels), optionally dashed every ``dash`` pixels."""
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    t = np.linspace(0.0, 1.0, n)
    if dash:
        t = t[(np.arange(n) // dash) % 2 == 0]
    ys = np.rint(p0[0] + t * (p1[0] - p0[0])).astype(int)
    xs = np.rint(p0[1] + t * (p1[1] - p0[1])).astype(int)
    for dy in range(width):
        for dx in range(width):
            yy = np.clip(ys + dy - width // 2, 0, canvas.shape[0] - 1)
            xx = np.clip(xs + dx - width // 2, 0, canvas.shape[1] - 1)
            canvas[yy, xx] = color


def _square(canvas: np.ndarray, y: float, x: float, half: int, color) -> None:
    y0, x0 = max(int(y) - half, 0), max(int(x) - half, 0)
    canvas[y0:int(y) + half + 1, x0:int(x) + half + 1] = color


def draw_panel(title: str, curves: Sequence[ReliabilityCurve], bins: int = 15) -> np.ndarray:
    """One reliability panel as (H, W, 3) uint8."""
    h, w = TOP + PLOT + MARGIN, MARGIN + PLOT + 12
    canvas = np.full((h, w, 3), 255, np.uint8)
    oy, ox = TOP + PLOT, MARGIN  # pixel of (p=0, rate=0)

    def px(p: float, rate: float) -> tuple[float, float]:
        return oy - rate * PLOT, ox + p * PLOT

    for q in (0.25, 0.5, 0.75):
        _line(canvas, px(q, 0), px(q, 1), (235, 235, 235), width=1)
        _line(canvas, px(0, q), px(1, q), (235, 235, 235), width=1)
    _line(canvas, px(0, 0), px(1, 1), GREY, width=2, dash=6)
    for a, b in (((0, 0), (1, 0)), ((0, 0), (0, 1)), ((1, 0), (1, 1)), ((0, 1), (1, 1))):
        _line(canvas, px(*a), px(*b), BLACK, width=1)
    for s in curves:
        count, mean_p, rate = reliability_bins(s.y, s.p, bins)
        filled = count > 0
        points = [px(p, r) for p, r in zip(mean_p[filled], rate[filled])]
        for a, b in itertools.pairwise(points):
            _line(canvas, a, b, s.color, width=2)
        share = count[filled] / max(count.sum(), 1)
        for (y, x), sh in zip(points, share):
            _square(canvas, y, x, 2 + round(6 * float(np.sqrt(sh))), s.color)
    text(canvas, title, 6, MARGIN)
    eces = [ece(s.y, s.p, bins) for s in curves]
    x = text(canvas, "ECE ", 22, MARGIN, scale=1)
    for i, (s, e) in enumerate(zip(curves, eces)):
        x = text(canvas, ("" if i == 0 else " > ") + f"{e:.3f}", 22, x, s.color, scale=1)
    for tick, label in ((0.0, "0"), (0.5, "0.5"), (1.0, "1")):
        text(canvas, label, oy + 6, int(ox + tick * PLOT) - 6, scale=1)
        text(canvas, label, int(oy - tick * PLOT) - 3, 6, scale=1)
    text(canvas, "PREDICTED", oy + 22, ox + PLOT // 2 - 27, scale=1)
    return canvas


def reliability_picture(
    panels: Sequence[tuple[str, Sequence[ReliabilityCurve]]], bins: int = 15, columns: int = 3
) -> np.ndarray:
    """Panels on a grid (``columns`` wide) with a legend row at the bottom."""
    drawn = [draw_panel(title, curves, bins) for title, curves in panels]
    if not drawn:
        raise ValueError("a reliability picture needs at least one panel")
    ph, pw = drawn[0].shape[:2]
    cols = min(columns, len(drawn))
    rows = -(-len(drawn) // cols)
    canvas = np.full((rows * ph + 30, cols * pw, 3), 255, np.uint8)
    for i, panel in enumerate(drawn):
        r, c = divmod(i, cols)
        canvas[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = panel
    y = rows * ph + 8
    x = MARGIN
    for name, color in (("BEFORE", BEFORE), ("AFTER", AFTER)):
        _square(canvas, y + 6, x + 6, 6, color)
        x = text(canvas, name, y, x + 18, color) + 24
    text(canvas, "OBSERVED RATE VS PREDICTED", y, x + 12, GREY)
    return canvas


def write_reliability_png(
    path: str | Path,
    label_names: Sequence[str],
    labels: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    bins: int = 15,
) -> Path:
    """Write before/after reliability panels of ``label_names`` (columns of the arrays) to PNG."""
    from ichrt.runtime.pictures import write_png

    panels = []
    for j, name in enumerate(label_names):
        y = labels[:, j]
        if np.isnan(y).all():
            continue
        panels.append((name, [ReliabilityCurve(y, before[:, j], BEFORE),
                              ReliabilityCurve(y, after[:, j], AFTER)]))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_png(path, reliability_picture(panels, bins))
