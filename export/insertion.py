"""Lesion insertion and hard negatives in HU, against source shortcuts and extracranial false alarms.

Two augmentations that act on a slice in Hounsfield units before windowing (pure NumPy):

* :func:`insert_lesion` pastes a real bleed shape (a ct-ich or BHSD mask, or a phantom lesion,
  from a :class:`DonorBank` of training slices) into a *normal* slice of any source, blended
  towards acute-blood density inside the skull only, and returns its mask. Every source then has
  positives and negatives that differ only by the lesion, so the label can no longer be read off
  the source's look.
* :func:`hard_negative` adds what real scans show and phantoms lack, none of which is an
  intracranial bleed and none of which changes the label: blood and swelling outside the skull
  (scalp and subgaleal hematomas), skull defects after craniotomy and fractures, calcifications
  (pineal, choroid plexus, falx), beam-hardening streaks, and objects around the head (ice packs,
  tubes, head holders).

The intracranial region is estimated without any library: a pixel is inside the skull when bone
lies on both sides of it along its row and along its column (:func:`intracranial`).
Every draw comes from the caller's ``numpy.random.Generator``, so an epoch stays reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: HU above which a pixel counts as bone (the loaders map saturated gray to 700-1300 HU).
BONE_HU = 300.0
#: HU of acute blood drawn for an inserted lesion.
BLOOD_HU = (50.0, 85.0)
#: Kinds of hard negatives, in the order of :func:`hard_negative`'s draws.
HARD_KINDS = ("scalp", "defect", "fracture", "calcification", "streaks", "object")


def intracranial(hu: np.ndarray) -> np.ndarray:
    """bool (H, W): not bone, with bone on both sides along its row and along its column."""
    bone = hu > BONE_HU
    if not bone.any():
        return np.zeros(hu.shape, bool)
    acc = np.logical_or.accumulate
    rows = acc(bone, axis=1) & acc(bone[:, ::-1], axis=1)[:, ::-1]
    cols = acc(bone, axis=0) & acc(bone[::-1], axis=0)[::-1]
    return rows & cols & ~bone


def _soft(mask: np.ndarray) -> np.ndarray:
    """A 3x3 box blur of a bool mask (soft lesion edges), float32."""
    m = np.pad(mask.astype(np.float32), 1)
    h, w = mask.shape
    return sum(m[dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3)) / 9.0


def _disk(shape: tuple[int, int], cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return ((yy - cy) / max(ry, 0.5)) ** 2 + ((xx - cx) / max(rx, 0.5)) ** 2 <= 1.0


def _line(shape: tuple[int, int], cy: float, cx: float, angle: float, width: float,
          length: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    dy, dx = np.sin(angle), np.cos(angle)
    along = (yy - cy) * dy + (xx - cx) * dx
    across = np.abs(-(yy - cy) * dx + (xx - cx) * dy)
    return (across <= width / 2.0) & (np.abs(along) <= length / 2.0)


def _head_geometry(hu: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """(centre y, centre x, head mask) of the pixels denser than -300 HU, or None (no head)."""
    head = hu > -300.0
    if head.sum() < 64:
        return None
    ys, xs = np.nonzero(head)
    return float(ys.mean()), float(xs.mean()), head


def _ray_radii(hu: np.ndarray, cy: float, cx: float, angle: float) -> tuple[float, float]:
    """Outermost head radius and outermost bone radius along a ray from (cy, cx)."""
    h, w = hu.shape
    r = np.arange(0, int(np.hypot(h, w)), dtype=np.float32)
    ys = np.rint(cy + r * np.sin(angle)).astype(np.int64)
    xs = np.rint(cx + r * np.cos(angle)).astype(np.int64)
    ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
    v = np.full(r.shape, -1000.0, np.float32)
    v[ok] = hu[ys[ok], xs[ok]]
    head = np.nonzero(v > -300.0)[0]
    bone = np.nonzero(v > BONE_HU)[0]
    return (float(r[head[-1]]) if head.size else 0.0, float(r[bone[-1]]) if bone.size else 0.0)


# -- lesion insertion --------------------------------------------------------------------------

@dataclass
class DonorBank:
    """Bleed shapes cut from masked training slices: bool crops and the side of their slice."""

    masks: list[np.ndarray] = field(default_factory=list)
    sides: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)

    def add(self, mask: np.ndarray, margin: int = 1, min_pixels: int = 12) -> bool:
        """Cut the bounding box of ``mask`` (one slice's lesion); False when it is too small."""
        if mask is None or int(mask.sum()) < min_pixels:
            return False
        ys, xs = np.nonzero(mask)
        y0, x0 = max(int(ys.min()) - margin, 0), max(int(xs.min()) - margin, 0)
        crop = mask[y0:int(ys.max()) + margin + 1, x0:int(xs.max()) + margin + 1]
        self.masks.append(np.ascontiguousarray(crop, bool))
        self.sides.append(int(max(mask.shape)))
        return True


def _resize_nearest(mask: np.ndarray, factor: float) -> np.ndarray:
    h, w = mask.shape
    nh, nw = max(1, round(h * factor)), max(1, round(w * factor))
    ys = np.minimum((np.arange(nh) + 0.5) / factor, h - 1).astype(np.int64)
    xs = np.minimum((np.arange(nw) + 0.5) / factor, w - 1).astype(np.int64)
    return mask[ys][:, xs]


def insert_lesion(
    hu: np.ndarray, bank: DonorBank, rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.4), strength: tuple[float, float] = (0.65, 1.0),
) -> tuple[np.ndarray, np.ndarray] | None:
    """Paste a donor bleed into ``hu`` inside the skull; (new HU, lesion mask) or None.

    The donor shape is scaled to this slice's size (times ``scale``), flipped and turned at
    random, centred on brain tissue, cut to intracranial soft tissue and blended towards a drawn
    acute-blood density (soft edges, texture noise). None when the slice has no skull interior
    with enough brain or the pasted lesion would be tiny.
    """
    if not len(bank):
        return None
    hu = np.asarray(hu, np.float32)
    inside = intracranial(hu)
    brain = inside & (hu > 10.0) & (hu < 60.0)
    ys, xs = np.nonzero(brain)
    if ys.size < 200:
        return None
    k = int(rng.integers(len(bank)))
    shape = bank.masks[k]
    factor = max(hu.shape) / bank.sides[k] * float(rng.uniform(*scale))
    shape = _resize_nearest(shape, factor)
    shape = np.rot90(shape, int(rng.integers(4)))
    if rng.random() < 0.5:
        shape = shape[:, ::-1]
    j = int(rng.integers(ys.size))
    sh, sw = shape.shape
    y0, x0 = ys[j] - sh // 2, xs[j] - sw // 2
    mask = np.zeros(hu.shape, bool)
    ty0, tx0 = max(y0, 0), max(x0, 0)
    ty1, tx1 = min(y0 + sh, hu.shape[0]), min(x0 + sw, hu.shape[1])
    if ty1 <= ty0 or tx1 <= tx0:
        return None
    mask[ty0:ty1, tx0:tx1] = shape[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]
    allowed = inside & (hu > -5.0) & (hu < 90.0)
    mask &= allowed
    if mask.sum() < 8:
        return None
    alpha = _soft(mask) * allowed * float(rng.uniform(*strength))  # soft edges, never on bone
    target = float(rng.uniform(*BLOOD_HU))
    texture = rng.normal(0.0, 3.0, hu.shape).astype(np.float32)
    out = hu + alpha * (target - hu + texture)
    return out.astype(np.float32), mask


# -- hard negatives ----------------------------------------------------------------------------

def hard_negative(
    hu: np.ndarray, rng: np.random.Generator, keep: np.ndarray | None = None,
    kinds: tuple[str, ...] = HARD_KINDS,
) -> tuple[np.ndarray, str]:
    """One drawn hard negative added to ``hu``; (new HU, kind). Labels do not change.

    ``keep`` (bool, optional) marks pixels that must stay as they are (a lesion's mask).
    Returns ``hu`` unchanged with kind ``""`` when the slice has no head to work on.
    """
    hu = np.asarray(hu, np.float32)
    geo = _head_geometry(hu)
    if geo is None:
        return hu, ""
    cy, cx, head = geo
    kind = kinds[int(rng.integers(len(kinds)))]
    side = float(max(hu.shape))
    out = hu.copy()
    if kind in ("scalp", "defect", "object"):
        angle = float(rng.uniform(0, 2 * np.pi))
        r_head, r_bone = _ray_radii(hu, cy, cx, angle)
        yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1]]
        radius = np.hypot(yy - cy, xx - cx)
        theta = np.arctan2(yy - cy, xx - cx)
        dtheta = np.abs((theta - angle + np.pi) % (2 * np.pi) - np.pi)
        if kind == "scalp":  # a crescent of blood or swelling bulging outside the skull
            span = float(rng.uniform(0.2, 0.8))
            thick = side * float(rng.uniform(0.01, 0.06))
            region = ((dtheta < span / 2) & (radius > max(r_bone, 1.0) + 1.0)
                      & (radius < r_head + thick * (1.0 - (dtheta / (span / 2)) ** 2)))
            out[region] = float(rng.uniform(30.0, 85.0)) + rng.normal(0, 4.0, int(region.sum()))
        elif kind == "defect":  # craniotomy: bone of a sector replaced by soft tissue (and air)
            span = float(rng.uniform(0.3, 1.0))
            region = (dtheta < span / 2) & (hu > BONE_HU) & (radius > 0.6 * r_bone)
            out[region] = float(rng.uniform(10.0, 45.0))
            if rng.random() < 0.3:  # a little post-operative air under the flap
                bubble = _disk(hu.shape, cy + 0.8 * r_bone * np.sin(angle),
                               cx + 0.8 * r_bone * np.cos(angle), side * 0.015, side * 0.02)
                out[bubble & (hu < BONE_HU)] = -800.0
        else:  # an object beside the head: ice pack, gel pad, tube or holder
            dist = r_head + side * float(rng.uniform(0.01, 0.08))
            oy, ox = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
            ry, rx = side * rng.uniform(0.02, 0.08, 2)
            region = _disk(hu.shape, oy, ox, ry, rx) & ~head
            if rng.random() < 0.4:  # a tube: a dense wall around a hollow
                region &= ~_disk(hu.shape, oy, ox, 0.6 * ry, 0.6 * rx)
                out[region] = float(rng.uniform(60.0, 300.0))
            else:
                out[region] = float(rng.uniform(-120.0, 80.0)) + rng.normal(0, 5.0,
                                                                           int(region.sum()))
    elif kind == "fracture":  # a thin lucent line through the skull
        angle = float(rng.uniform(0, 2 * np.pi))
        r_head, r_bone = _ray_radii(hu, cy, cx, angle)
        line = _line(hu.shape, cy + r_bone * np.sin(angle), cx + r_bone * np.cos(angle),
                     angle + float(rng.uniform(-0.4, 0.4)), float(rng.uniform(1.0, 2.5)),
                     side * float(rng.uniform(0.03, 0.1)))
        out[line & (hu > BONE_HU)] = float(rng.uniform(20.0, 60.0))
    else:
        inside = intracranial(hu)
        ys, xs = np.nonzero(inside & (hu > 0) & (hu < 80))
        if ys.size < 50:
            return hu, ""
        if kind == "calcification":  # pineal / choroid plexus / falx: small dense dots
            for _ in range(int(rng.integers(1, 4))):
                if rng.random() < 0.5:  # near the midline, like the pineal gland
                    py = cy + rng.normal(0, side * 0.03)
                    px = cx + rng.normal(0, side * 0.02)
                else:
                    j = int(rng.integers(ys.size))
                    py, px = ys[j], xs[j]
                r = side * float(rng.uniform(0.003, 0.012))
                out[_disk(hu.shape, py, px, r, r * rng.uniform(0.6, 1.4)) & inside] = float(
                    rng.uniform(120.0, 700.0))
        else:  # beam-hardening / motion streaks across the brain
            j = int(rng.integers(ys.size))
            for _ in range(int(rng.integers(2, 6))):
                line = _line(hu.shape, ys[j], xs[j], float(rng.uniform(0, np.pi)),
                             float(rng.uniform(1.0, 4.0)), side * float(rng.uniform(0.2, 0.6)))
                sign = -1.0 if rng.random() < 0.7 else 1.0
                out[line & inside] += sign * float(rng.uniform(10.0, 45.0))
    if keep is not None:
        out[keep] = hu[keep]
    return out, kind


@dataclass
class InsertionConfig:
    """How often :func:`insert_lesion` (into negatives) and :func:`hard_negative` (any slice) run.

    Picklable, so loader workers receive it with its donor bank.
    """

    bank: DonorBank = field(default_factory=DonorBank)
    p_insert: float = 0.35
    p_hard: float = 0.4

    def apply(
        self, hu: np.ndarray, labels: np.ndarray, region: np.ndarray | None, kind: int,
        rng: np.random.Generator, mask_kind: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, int]:
        """(HU, labels, region, region kind) after the drawn insertion and hard negative.

        An inserted lesion makes the slice positive for ``any`` with unknown subtypes (its
        position, not its donor, decides the subtype) and its mask the slice's region.
        """
        if labels[0] == 0 and self.p_insert > 0 and rng.random() < self.p_insert:
            got = insert_lesion(hu, self.bank, rng)
            if got is not None:
                hu, region = got
                labels = np.full_like(labels, np.nan)
                labels[0] = 1.0
                kind = mask_kind
        if self.p_hard > 0 and rng.random() < self.p_hard:
            hu, _ = hard_negative(hu, rng, keep=region)
        return hu, labels, region, kind
