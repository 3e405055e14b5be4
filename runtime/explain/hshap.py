"""h-Shap: hierarchical exact Shapley values over ONNX Runtime, without torch.

Teneggi, Luster, Sulam, "Fast Hierarchical Games for Image Explanations" (IEEE TPAMI 2022).  The
model-input square is split into four quadrants; the four are the players of a game whose value
for a coalition is the model's output on the image that shows the coalition's quadrants and the
reference background everywhere else.  Exact Shapley values of the four come from the game's 16
coalitions (one weighted sum, :func:`shapley_weights`).  Children whose value exceeds the relevance
threshold are split again, their own game played among their four sub-quadrants (everything
outside them still background), until a child would be smaller than ``min_size``; the relevant
leaves are painted with their Shapley value.

Cycle spinning (the seed tutorial): the partition grid is shifted cyclically by
``(-int(r sin a), int(r cos a))`` for every radius ``r`` and angle ``a`` (radius 0 once) and the
maps are averaged, which removes the blockiness of a single quadtree.  The model always sees the
image in its own geometry; only the partition moves.

Differences from the reference implementation (h-shap 0.1.x, which needs torch and does not import
with NumPy 2): a leaf is painted with its own Shapley value rather than the product of the values
along its path (same leaves for a threshold of 0; the value keeps the model output's units), the
empty coalition, identical in every game, is evaluated once, and a slice without any relevant
quadrant gives an empty map instead of an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import cos, factorial, sin

import numpy as np

from ichrt.runtime.explain.base import Explainer, ExplainError, label_index

#: A game's value for a batch of composed images (B, C, H, W) -> (B,).
ValueFn = Callable[[np.ndarray], np.ndarray]
Box = tuple[int, int, int, int]
#: Background kinds: a box blur of the slice itself, the normalized zero, or an all-air slice.
BACKGROUNDS = ("blur", "zero", "air")
PLAYERS = 4


def shapley_weights(players: int = PLAYERS) -> np.ndarray:
    """W (2**p, p) such that ``phi = v @ W`` for a game ``v`` given on all coalitions.

    Coalition ``s`` is a bitmask (bit ``i`` set = player ``i`` present);
    ``phi_i = sum_{S not containing i} |S|! (p - |S| - 1)! / p! * (v(S + i) - v(S))``.
    """
    w = np.zeros((2**players, players))
    for s in range(2**players):
        size = s.bit_count()
        for i in range(players):
            if s >> i & 1:  # s = S + i: enters with the weight of S = s - i
                w[s, i] += factorial(size - 1) * factorial(players - size) / factorial(players)
            else:
                w[s, i] -= factorial(size) * factorial(players - size - 1) / factorial(players)
    return w


_W = shapley_weights()
#: For each non-empty coalition (1..15), which of the 4 players it holds.
_MEMBERS = np.array([[s >> i & 1 for i in range(PLAYERS)] for s in range(2**PLAYERS)], bool)


def quadrants(box: Box) -> list[Box]:
    """The four children of ``box`` (y0, x0, y1, x1): top-left, top-right, bottom-left, bottom-right."""
    y0, x0, y1, x1 = box
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    return [(y0, x0, ym, xm), (y0, xm, ym, x1), (ym, x0, y1, xm), (ym, xm, y1, x1)]


def can_split(box: Box, min_size: int) -> bool:
    """True when every child of ``box`` would be at least ``min_size`` on each side."""
    y0, x0, y1, x1 = box
    return min(y1 - y0, x1 - x0) // 2 >= min_size


@dataclass(frozen=True)
class Node:
    """One player of one game: its level (1 = a quadrant of the whole image), box and value."""

    level: int
    box: Box
    value: float


@dataclass
class HShapResult:
    """The map (H, W) over the model input, every player's value, and the model calls spent."""

    heatmap: np.ndarray
    nodes: list[Node] = field(default_factory=list)
    evaluations: int = 0


def _region(box: Box, shape: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[box[0]:box[2], box[1]:box[3]] = True
    return np.roll(mask, shift, axis=(0, 1)) if any(shift) else mask


def hierarchical_shapley(
    value: ValueFn,
    x: np.ndarray,
    background: np.ndarray,
    min_size: int,
    threshold: float = 0.0,
    shift: tuple[int, int] = (0, 0),
    batch_size: int = 32,
) -> HShapResult:
    """h-Shap of one input ``x`` (C, H, W) against ``background`` (C, H, W) for one partition.

    Args:
        value: the game's value function (batched).
        min_size: the smallest feature side in pixels; a node is split while its children are
            at least this large.
        threshold: children whose Shapley value exceeds it are relevant (explored, painted).
        shift: (dy, dx) cyclic shift of the partition grid (cycle spinning).
        batch_size: composed images per ``value`` call.
    """
    shape = x.shape[-2:]
    root: Box = (0, 0, shape[0], shape[1])
    if min_size < 1 or not can_split(root, min_size):
        raise ExplainError(f"min_size {min_size} leaves no quadrant to explain in a {shape} input")
    result = HShapResult(np.zeros(shape, np.float32))
    v_empty = float(value(background[None])[0])
    result.evaluations = 1
    frontier, level = [root], 1
    while frontier:
        children = [quadrants(box) for box in frontier]
        regions = [[_region(c, shape, shift) for c in kids] for kids in children]
        values = np.full((len(frontier), 2**PLAYERS), v_empty)
        jobs = [(n, s) for n in range(len(frontier)) for s in range(1, 2**PLAYERS)]
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            batch = np.stack([
                np.where(np.logical_or.reduce([regions[n][i] for i in np.flatnonzero(_MEMBERS[s])]),
                         x, background)
                for n, s in chunk
            ])
            for (n, s), v in zip(chunk, np.asarray(value(batch), np.float64)):
                values[n, s] = v
        result.evaluations += len(jobs)
        phi = values @ _W
        frontier = []
        for n, kids in enumerate(children):
            for i, box in enumerate(kids):
                result.nodes.append(Node(level, box, float(phi[n, i])))
                if not phi[n, i] > threshold:
                    continue
                if can_split(box, min_size):
                    frontier.append(box)
                else:
                    result.heatmap[regions[n][i]] = phi[n, i]
        level += 1
    return result


def cycle_shifts(radii: Sequence[float], angles: Sequence[float]) -> list[tuple[int, int]]:
    """Partition shifts (dy, dx) of cycle spinning, as in the seed: radius 0 counted once."""
    shifts = [(0, 0)] if any(r == 0 for r in radii) else []
    shifts += [(-int(r * sin(a)), int(r * cos(a))) for r in radii if r != 0 for a in angles]
    return shifts


def hshap_map(
    value: ValueFn,
    x: np.ndarray,
    background: np.ndarray,
    min_size: int,
    threshold: float = 0.0,
    radii: Sequence[float] = (0.0,),
    angles: Sequence[float] = (0.0,),
    batch_size: int = 32,
) -> np.ndarray:
    """The h-Shap map (H, W) of ``x``, averaged over the cycle-spinning shifts."""
    shifts = cycle_shifts(radii, angles)
    if not shifts:
        raise ExplainError("cycle spinning needs at least one radius")
    total = np.zeros(x.shape[-2:], np.float32)
    for shift in shifts:
        total += hierarchical_shapley(
            value, x, background, min_size, threshold, shift, batch_size).heatmap
    return total / len(shifts)


def box_blur(x: np.ndarray, size: int) -> np.ndarray:
    """Separable mean filter of side ``size`` over the last two axes, edges replicated."""
    out = np.asarray(x, np.float32)
    lo, hi = size // 2, size - 1 - size // 2
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (lo + 1, hi)
        c = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis, dtype=np.float64)
        n = out.shape[axis]
        out = ((np.take(c, np.arange(size, size + n), axis=axis)
                - np.take(c, np.arange(0, n), axis=axis)) / size).astype(np.float32)
    return out


def make_background(kind: str, x: np.ndarray, contract) -> np.ndarray:
    """The reference tensor (C, S, S) that replaces absent quadrants.

    ``blur``: the slice itself under a box blur of side S/8 (keeps the head, removes what is
    small, such as most bleeds); ``zero``: the normalized zero (every channel at its mean);
    ``air``: an all-air (-1000 HU) slice through the model's own windowing.
    """
    if kind == "blur":
        return box_blur(x, max(3, x.shape[-1] // 8))
    if kind == "zero":
        return np.zeros_like(x, np.float32)
    if kind == "air":
        from ichrt.runtime.windowing import window_reference

        s = contract.input_size
        return window_reference(np.full((1, s, s), -1000.0, np.float32), contract)[0]
    raise ExplainError(f"unknown h-Shap background {kind!r}; choose one of {', '.join(BACKGROUNDS)}")


class HShapExplainer(Explainer):
    """h-Shap of one label over an ONNX Runtime model (value = calibrated probability or logit).

    Defaults follow the seed tutorial scaled to the model input: leaves of S/16 pixels (32 px at
    512), relevance threshold 0; cycle spinning is off unless radii are given (the seed's are
    ``cycle_defaults(S)``), because it multiplies the cost by 25.
    """

    name = "hshap"

    def __init__(
        self,
        model,
        min_size: int | None = None,
        threshold: float = 0.0,
        background: str = "blur",
        radii: Sequence[float] = (0.0,),
        angles: Sequence[float] = (0.0,),
        use_logits: bool = False,
        batch_size: int = 32,
    ) -> None:
        if background not in BACKGROUNDS:
            raise ExplainError(
                f"unknown h-Shap background {background!r}; choose one of {', '.join(BACKGROUNDS)}")
        self.model = model
        self.min_size = min_size or max(1, model.contract.input_size // 16)
        self.threshold = threshold
        self.background = background
        self.radii, self.angles = tuple(radii), tuple(angles)
        self.use_logits = use_logits
        self.batch_size = batch_size

    def value_fn(self, label: str) -> ValueFn:
        """The game's value: the model's calibrated probability (or logit / T) of ``label``."""
        from ichrt.runtime.aggregate import calibrated_probabilities

        contract = self.model.contract
        idx = label_index(contract.labels, label)

        def value(batch: np.ndarray) -> np.ndarray:
            logits = self.model.run(batch, ("logits",))["logits"]
            if self.use_logits:
                return logits[:, idx] / contract.temperature(label)
            return calibrated_probabilities(logits, contract)[:, idx]

        return value

    def maps(
        self,
        tensors: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        label: str = "any",
    ) -> np.ndarray:
        value = self.value_fn(label)
        tensors = np.asarray(tensors, np.float32)
        out = np.zeros((len(tensors), *tensors.shape[-2:]), np.float32)
        for n, x in enumerate(tensors):
            background = make_background(self.background, x, self.model.contract)
            out[n] = hshap_map(value, x, background, self.min_size, self.threshold,
                               self.radii, self.angles, self.batch_size)
        return out


def cycle_defaults(input_size: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The seed tutorial's cycle spinning scaled to the input: 4 radii in [0, S/8), 8 angles."""
    s = input_size / 8
    return (tuple(np.linspace(0, s, 4, endpoint=False)),
            tuple(np.linspace(0, 2 * np.pi, 8, endpoint=False)))
