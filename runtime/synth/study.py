"""A phantom study: a stack of consecutive slices through one head, with per-slice ground truth.

:func:`generate_study` draws a patient (:mod:`.anatomy`), a scanner (:mod:`.physics`), an
identity (:mod:`.identity`) and, for positive studies, hemorrhages (:mod:`.lesions`), then makes
each slice with :func:`generate_slice`: rasterize (:mod:`.render`), drop lesion cross-sections too
small to see, and scan. Masks and labels come from the same rasterization as the pixels, so a
subtype's label is 1 exactly when its mask is non-empty and ``any`` is their union.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichrt.runtime.synth.anatomy import Head, draw_head
from ichrt.runtime.synth.config import PhantomConfig, resolve_config
from ichrt.runtime.synth.identity import StudyIdentity, draw_identity
from ichrt.runtime.synth.lesions import choose_kinds, draw_lesions, z_extent
from ichrt.runtime.synth.physics import Protocol, SliceGeometry, draw_protocol, scan_slice
from ichrt.runtime.synth.render import LESION_DTYPE, render_kernel

N_SUBTYPES = 5
#: Lesion cross-sections smaller than this (mm^2) are removed from a slice (pixels and mask).
MIN_LESION_AREA = 8.0
#: Height (head frame, mm) of the lowest slice of a full-coverage study (foramen magnum region).
_BOTTOM = (-86.0, -60.0)
#: Lowest start of a long stack (upper neck); longer stacks run on above the vertex.
_LOWEST = -100.0


@dataclass
class PhantomSlice:
    """One slice: scanner HU, clean HU, tissue classes and the five subtype masks."""

    hu: np.ndarray
    clean: np.ndarray
    tissue: np.ndarray
    masks: np.ndarray


@dataclass
class PhantomStudy:
    """A generated study. ``hu`` (N, H, W) float32 holds integer HU exactly as its DICOM files
    decode (after the ingest fixes); slices are ordered inferior to superior."""

    hu: np.ndarray
    #: (N, 5, H, W) bool, subtype order LABELS[1:].
    masks: np.ndarray
    #: (N, 6) uint8, LABELS order (any first).
    labels: np.ndarray
    #: table position (mm) of each slice, ascending.
    positions_z: np.ndarray
    study_id: str
    seed: int
    preset: str
    identity: StudyIdentity
    protocol: Protocol
    lesions: np.ndarray
    #: (N, H, W) uint8 tissue classes (see render.TISSUES).
    tissue: np.ndarray

    @property
    def positive(self) -> bool:
        """True when any slice shows a hemorrhage."""
        return bool(self.labels[:, 0].any())

    @property
    def spacing(self) -> float:
        """Pixel spacing (mm)."""
        return self.protocol.spacing

    @property
    def fov_mask(self) -> np.ndarray:
        """(H, W) bool: pixels inside the circular reconstruction field."""
        size = self.protocol.size
        c = np.arange(size) + 0.5 - size / 2.0
        return c[:, None] ** 2 + c[None, :] ** 2 <= self.protocol.fov_radius ** 2


def _active(head: Head, lesions: np.ndarray, zs: float) -> np.ndarray:
    """Lesions that can touch the slice at table position zs (its plane spans a z range)."""
    if lesions.size == 0:
        return lesions
    m = head.rotation
    zc = m[2, 2] * (zs - head.r["cz"])
    spread = 130.0 * (abs(m[2, 0]) + abs(m[2, 1]))
    keep = [k for k, les in enumerate(lesions)
            if z_extent(les)[0] <= zc + spread and z_extent(les)[1] >= zc - spread]
    return lesions[keep]


def _near(head: Head, zs: float) -> tuple[np.ndarray, np.ndarray]:
    """Ventricle capsules and deep nuclei that the slice can cut (saves work per pixel)."""
    m = head.rotation
    zc = m[2, 2] * (zs - head.r["cz"])
    spread = 75.0 * (abs(m[2, 0]) + abs(m[2, 1])) + 1.0
    v = head.vseg
    d = head.deep
    keep_v = (v[:, 12] <= zc + spread) & (v[:, 13] >= zc - spread)
    keep_d = np.abs(d[:, 2] - zc) <= d[:, 5] + spread
    return np.ascontiguousarray(v[keep_v]), np.ascontiguousarray(d[keep_d])


def render_slice(head: Head, lesions: np.ndarray, zs: float, size: int,
                 spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean HU float32, tissue uint8, lesion bits uint8) of the slice at table position zs."""
    hu = np.empty((size, size), np.float32)
    tissue = np.empty((size, size), np.uint8)
    bits = np.empty((size, size), np.uint8)
    vseg, deep = _near(head, zs)
    render_kernel(head.rec.reshape(1), head.tex, head.coef, vseg, deep,
                  np.ascontiguousarray(lesions, LESION_DTYPE), float(zs), float(spacing), hu,
                  tissue, bits)
    return hu, tissue, bits


def _visible(head: Head, lesions: np.ndarray, zs: float, size: int, spacing: float):
    """Render, dropping lesion kinds whose cross-section here is below MIN_LESION_AREA."""
    active = _active(head, lesions, zs)
    min_px = max(3, math.ceil(MIN_LESION_AREA / spacing ** 2))
    while True:
        clean, tissue, bits = render_slice(head, active, zs, size, spacing)
        counts = np.bincount(bits.ravel(), minlength=256) if active.size else None
        tiny = []
        for kind in {int(k) for k in active["kind"]}:
            n = int(counts[np.flatnonzero(np.arange(256) & (1 << kind))].sum())
            if 0 < n < min_px:
                tiny.append(kind)
        if not tiny:
            return clean, tissue, bits
        active = active[~np.isin(active["kind"].astype(int), tiny)]


def head_radius(head: Head) -> float:
    """Distance (mm) from the isocentre that the head's outline can reach."""
    r = head.r
    return float(max(r["B"] + r["t_ap"] + r["s_ap"], r["A"] + r["t_lat"] + r["s_lat"])
                 + math.hypot(r["cx"], r["cy"]) + 6.0)


def geometry(head: Head, proto: Protocol, zs: float,
             fossa_band: float) -> SliceGeometry:
    """Head centre, intracranial ellipse and the petrous band of one slice, in pixels."""
    r = head.r
    m = head.rotation
    sp = proto.spacing
    half = proto.size / 2.0 - 0.5
    z = m[2, 2] * (zs - r["cz"])
    fz = math.sqrt(max(0.04, 1.0 - (z / (r["C"] if z > 0 else r["D"])) ** 2))
    a, b = r["A"] * fz / sp, r["B"] * fz / sp
    q00 = m[0, 0] ** 2 / a ** 2 + m[1, 0] ** 2 / b ** 2
    q01 = -(m[0, 0] * m[0, 1]) / a ** 2 - (m[1, 0] * m[1, 1]) / b ** 2
    q11 = m[0, 1] ** 2 / a ** 2 + m[1, 1] ** 2 / b ** 2
    centre = (r["cx"] / sp + half, r["cy"] / sp + half)
    line = None
    top, bottom = r["z_pc"] + 8.0, r["z_pf"] + 10.0
    if fossa_band > 0.0 and bottom < z < top:
        weight = math.sin(math.pi * (z - bottom) / (top - bottom))
        p = head.to_scanner(np.array([[0.0, r["y_pet"] - 14.0, z]]))[0]
        px, py = p[0] / sp + half, p[1] / sp + half
        nx, ny = m[0, 1], m[0, 0]
        line = (nx, ny, nx * px + ny * py, -fossa_band * weight, max(1.0, 5.0 / sp))
    return SliceGeometry(centre=centre, quad=(q00, q01, q11), fossa_line=line)


def generate_slice(head: Head, lesions: np.ndarray, proto: Protocol, zs: float, index: int,
                   rng: np.random.Generator) -> PhantomSlice:
    """One slice through ``head`` at table position ``zs``: scanner HU with its ground truth."""
    size = proto.size
    out = PhantomSlice(hu=np.empty((size, size), np.float32), clean=np.empty(0),
                       tissue=np.empty(0), masks=np.zeros((N_SUBTYPES, size, size), bool))
    out.clean, out.tissue = _fill_slice(head, lesions, proto, zs, index, rng, out.hu, out.masks)
    return out


def _fill_slice(head: Head, lesions: np.ndarray, proto: Protocol, zs: float, index: int,
                rng: np.random.Generator, hu: np.ndarray,
                masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write a slice's scanner HU into ``hu`` and its subtype masks into ``masks`` (zeroed);
    returns (clean HU, tissue)."""
    clean, tissue, bits = _visible(head, lesions, zs, proto.size, proto.spacing)
    scan_slice(clean, proto, geometry(head, proto, zs, proto.fossa_band), index, rng, out=hu)
    if lesions.size and bits.any():
        for kind in range(N_SUBTYPES):
            np.not_equal(bits & np.uint8(1 << kind), 0, out=masks[kind])
    return clean, tissue


def table_positions(rng: np.random.Generator, head: Head, n_slices: int, spacing: float,
                    focus: float | None = None) -> np.ndarray:
    """Table positions (mm, ascending): from the skull base up (stacks longer than the head
    start lower, in the upper neck, and may end above the vertex), or, when the stack is
    shorter than the head, a random part of it that contains head height ``focus`` if given."""
    r = head.r
    top = r["C"] + r["t_top"] + r["s_top"]
    span = (n_slices - 1) * spacing
    low = rng.uniform(*_BOTTOM)
    if span > top - low:
        low = max(_LOWEST, min(low, top + 3.0 - span))
    elif span < top - low:
        lo, hi = _BOTTOM[0], top - span
        if focus is not None:
            zf = focus / head.rotation[2, 2]
            lo, hi = max(lo, zf - span + 0.3 * spacing), min(hi, zf - 0.3 * spacing)
        low = rng.uniform(lo, max(lo, hi))
    return low + spacing * np.arange(n_slices)


def head_lesions(rng: np.random.Generator, cfg: PhantomConfig, head: Head) -> np.ndarray:
    """Lesions anywhere in the brain's height range (the stack is then placed over them)."""
    r = head.r
    return draw_lesions(rng, cfg, head, choose_kinds(rng, cfg), r["z_pf"] + 14.0, 0.75 * r["C"])


def generate_study(seed: int, n_slices: int | None = None, size: int = 512,
                   positive: bool | None = None,
                   config: PhantomConfig | str | None = None) -> PhantomStudy:
    """A phantom study drawn from ``config`` (a preset name or a config; default ``train``).

    ``positive`` None draws it with the config's prevalence. Deterministic for a given seed,
    size and config. A positive study has at least one positive slice.
    """
    cfg = resolve_config(config)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(24, 41)) if n_slices is None else int(n_slices)
    if n < 1 or size < 16:
        raise ValueError(f"need n_slices >= 1 and size >= 16, got {n} and {size}")
    if positive is None:
        positive = bool(rng.random() < cfg.prevalence)
    identity = draw_identity(rng, cfg, n)
    head = draw_head(rng, cfg, extra_pitch=identity.gantry_tilt)
    proto = draw_protocol(rng, cfg, size, n)
    if cfg.fit_fov:
        proto.fov = max(proto.fov, 2.0 * head_radius(head) + 10.0)
    hu = np.empty((n, size, size), np.float32)
    tissue = np.empty((n, size, size), np.uint8)
    masks = np.zeros((n, N_SUBTYPES, size, size), bool)
    lesions = np.zeros(0, LESION_DTYPE)
    for _ in range(12):
        if positive:
            lesions = head_lesions(rng, cfg, head)
        zs = table_positions(rng, head, n, proto.thickness,
                             float(lesions[0]["cz"]) if positive else None)
        for k, z in enumerate(zs):
            tissue[k] = _fill_slice(head, lesions, proto, float(z), k, rng, hu[k], masks[k])[1]
        if not positive or masks.any():
            break
        head.rec["mls"] = 0.0
    else:
        raise RuntimeError(f"seed {seed}: could not place a visible lesion in {n} slices")
    if identity.bad_rescale:
        np.clip(hu, -1000.0, 2047.0, out=hu)
    sub = masks.any(axis=(2, 3))
    labels = np.concatenate([sub.any(axis=1, keepdims=True), sub], axis=1).astype(np.uint8)
    return PhantomStudy(
        hu=hu, masks=masks, labels=labels, positions_z=zs.astype(np.float64),
        study_id=identity.study_uid, seed=int(seed), preset=cfg.name, identity=identity,
        protocol=proto, lesions=lesions, tissue=tissue,
    )
