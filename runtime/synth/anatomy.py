"""Draw one patient's head: shape, skull, brain, ventricles, calcifications, densities and pose.

Everything here is per study and pure NumPy: a :class:`Head` holds the rasterizer's record
(:data:`~ichrt.runtime.synth.render.HEAD_DTYPE`) and the small arrays it needs (contour Fourier
coefficients, ventricle capsules, deep nuclei, texture tables). Pixels are made by
:mod:`ichrt.runtime.synth.render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ichrt.runtime.synth.config import PhantomConfig
from ichrt.runtime.synth.render import HEAD_DTYPE, N_TEXTURES, T_CALC, T_DEEP, TEX


@dataclass
class Head:
    """One patient's head model, ready for :func:`~ichrt.runtime.synth.render.render_kernel`."""

    #: the rasterizer's record (a 0-d structured array of HEAD_DTYPE).
    rec: np.ndarray
    #: (4, 8) contour Fourier coefficients: shape (rows 0-1), skull thickness (rows 2-3).
    coef: np.ndarray
    #: (n, 14) ventricle capsules (x0, y0, z0, r0, x1, y1, z1, r1, then the bounding box
    #: x_lo, x_hi, y_lo, y_hi, z_lo, z_hi), both sides.
    vseg: np.ndarray
    #: (n, 7) deep nuclei and calcifications (cx, cy, cz, rx, ry, rz, tissue code).
    deep: np.ndarray
    #: (N_TEXTURES, TEX, TEX) float32 smooth random fields (zero mean, unit variance).
    tex: np.ndarray
    #: scanner -> head rotation (3, 3), also stored in ``rec``.
    rotation: np.ndarray

    @property
    def r(self) -> np.void:
        """The record as a scalar (field access: ``head.r["A"]``)."""
        return self.rec[()]

    def to_scanner(self, points: np.ndarray) -> np.ndarray:
        """Head-frame points (n, 3) -> scanner (X right, Y posterior = image down, Z) in mm."""
        r = self.r
        rel = points @ self.rotation  # inverse of scanner -> head (orthonormal)
        return np.stack([rel[:, 0] + r["cx"], r["cy"] - rel[:, 1], rel[:, 2] + r["cz"]], axis=1)


def _u(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    return float(rng.uniform(lo_hi[0], lo_hi[1]))


def textures(rng: np.random.Generator) -> np.ndarray:
    """Periodic smooth noise tables with correlation lengths of about 10, 4, 1.5 and 20 texels."""
    out = np.empty((N_TEXTURES, TEX, TEX), np.float32)
    freq = np.fft.fftfreq(TEX)
    f2 = freq[:, None] ** 2 + freq[None, :] ** 2
    for k, sigma in enumerate((10.0, 4.0, 1.5, 20.0)):
        white = rng.standard_normal((TEX, TEX))
        field = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2.0 * (math.pi * sigma) ** 2 * f2)).real
        field -= field.mean()
        out[k] = field / (field.std() + 1e-12)
    return out


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Scanner -> head rotation for a head turned by yaw (in-plane), pitch and roll (degrees)."""
    a, b, g = np.radians([yaw, pitch, roll])
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(g), 0, math.sin(g)], [0, 1, 0], [-math.sin(g), 0, math.cos(g)]])
    return (rz @ rx @ ry).T


def _densities(rng: np.random.Generator, cfg: PhantomConfig, r: np.void) -> None:
    """Tissue HU within the issue's ranges, with a per-scanner calibration offset."""
    amp = _u(rng, (0.4, 1.0))
    offset = _u(rng, cfg.calibration_offset)
    wm = _u(rng, cfg.white_matter) + offset
    gm = np.clip(wm + _u(rng, cfg.gray_white), *cfg.gray_matter)
    r["tex_amp"] = amp
    r["hu_gm"] = np.clip(gm, 35.0 + amp, 45.0 - amp)
    r["hu_wm"] = np.clip(wm, 20.0 + amp, 30.0 - amp)
    r["hu_deep"] = np.clip(0.5 * (gm + wm) + _u(rng, (1.0, 5.0)), 28.0 + amp, 43.0 - amp)
    r["hu_csf"] = np.clip(_u(rng, cfg.csf) + offset, 0.6 * amp, 15.0 - 0.6 * amp)
    r["hu_table"] = np.clip(_u(rng, cfg.bone), 760.0, 1740.0)
    r["hu_diploe"] = np.clip(r["hu_table"] * _u(rng, (0.5, 0.75)), 790.0, 1700.0)
    r["hu_scalp"] = _u(rng, (25.0, 55.0)) + offset
    r["hu_muscle"] = _u(rng, (38.0, 54.0)) + offset
    r["hu_fat"] = _u(rng, (-110.0, -70.0))
    r["hu_dura"] = _u(rng, (48.0, 72.0))
    r["hu_eye"] = _u(rng, (6.0, 18.0))
    r["hu_lens"] = _u(rng, (70.0, 110.0))
    r["hu_holder"] = _u(rng, (120.0, 450.0))


def _shape(rng: np.random.Generator, cfg: PhantomConfig, r: np.void) -> np.ndarray:
    """Cranial cavity, skull, scalp and the contour's Fourier coefficients."""
    scale = _u(rng, cfg.head_scale)
    r["B"] = 85.0 * scale * _u(rng, (0.95, 1.05))
    r["A"] = r["B"] * _u(rng, cfg.head_aspect)
    r["C"] = 70.0 * scale * _u(rng, (0.92, 1.08))
    r["D"] = 1.35 * r["C"]
    r["yc0"] = _u(rng, (-4.0, 4.0))
    r["yc1"] = _u(rng, (-0.15, 0.0))
    t = _u(rng, cfg.skull_thickness)
    r["t_lat"] = t * _u(rng, (0.55, 0.8))
    r["t_ap"] = t * _u(rng, (0.9, 1.2))
    r["t_top"] = t * _u(rng, (0.9, 1.25))
    s = _u(rng, cfg.scalp_thickness)
    r["s_lat"] = s * _u(rng, (0.8, 1.1))
    r["s_ap"] = s * _u(rng, (0.8, 1.2))
    r["s_top"] = s * _u(rng, (0.9, 1.3))
    r["temporalis"] = _u(rng, (2.0, 8.0))
    r["fat_frac"] = _u(rng, (0.0, 0.3)) if rng.random() < 0.5 else 0.0
    r["frontal_sinus"] = 0.0 if rng.random() < 0.15 else _u(rng, (4.0, 14.0))
    r["fs_z"] = _u(rng, (-22.0, -4.0))
    asym = _u(rng, cfg.asymmetry)
    coef = np.zeros((4, 8))
    for k, weight in enumerate((0.7, 1.0, 0.35, 0.15)):
        coef[0, 2 * k:2 * k + 2] = rng.normal(0.0, asym * weight, 2)
        coef[1, 2 * k:2 * k + 2] = rng.normal(0.0, 0.5 * asym * weight, 2)
        coef[2, 2 * k:2 * k + 2] = rng.normal(0.0, 0.08 * weight, 2)
        coef[3, 2 * k:2 * k + 2] = rng.normal(0.0, 0.04 * weight, 2)
    return coef


def _base(rng: np.random.Generator, r: np.void) -> None:
    """Skull base, fossae, tentorium, face, orbits and sinuses."""
    sc = r["B"] / 85.0
    r["z_af"] = _u(rng, (-28.0, -20.0)) * sc
    r["z_mf"] = _u(rng, (-50.0, -42.0)) * sc
    r["z_pf"] = _u(rng, (-76.0, -66.0)) * sc
    r["y_sph"] = _u(rng, (12.0, 22.0)) * sc
    r["y_ds"] = _u(rng, (-4.0, 2.0))
    r["y_pet"] = r["y_ds"] + _u(rng, (-4.0, 0.0))
    r["k_pet"] = _u(rng, (0.45, 0.7))
    r["z_pc"] = r["z_mf"] + _u(rng, (10.0, 16.0))
    r["z_sella"] = r["z_mf"] + _u(rng, (11.0, 17.0))
    r["t_base"] = _u(rng, (2.5, 4.5))
    r["z_ta"] = _u(rng, (-10.0, -3.0))
    r["y_ta"] = _u(rng, (-22.0, -14.0))
    r["z_tb"] = _u(rng, (-42.0, -32.0))
    r["fm_r"] = _u(rng, (13.0, 17.0))
    r["cm_size"] = _u(rng, (0.5, 1.4))
    r["face_top"] = r["z_af"] + _u(rng, (3.0, 8.0))
    r["oy"] = r["B"] * _u(rng, (0.72, 0.82))
    r["ox"] = _u(rng, (29.0, 35.0)) * sc
    r["oz"] = r["z_af"] - _u(rng, (10.0, 16.0))
    r["globe_r"] = _u(rng, (11.0, 12.5))
    r["sphenoid"] = _u(rng, (0.6, 1.3))
    r["maxillary"] = _u(rng, (0.8, 1.2))


def _brain(rng: np.random.Generator, cfg: PhantomConfig, r: np.void) -> float:
    """Cortex, sulci, fissures and brainstem; returns the atrophy level (0..1)."""
    atrophy = _u(rng, cfg.atrophy)
    r["csf_t"] = 0.5 + 2.6 * atrophy * _u(rng, (0.6, 1.2))
    r["gm_t"] = _u(rng, (2.2, 3.2))
    r["sul_P"] = _u(rng, cfg.sulcal_period)
    r["sul_W"] = r["sul_P"] * _u(rng, (0.3, 0.7))
    r["sul_D"] = _u(rng, (12.0, 22.0))
    r["sul_w"] = 0.3 + 1.7 * atrophy * _u(rng, (0.5, 1.2))
    r["ih_w"] = 0.6 + 2.0 * atrophy * _u(rng, (0.5, 1.2))
    r["xm0"] = _u(rng, (-2.0, 2.0))
    r["xm1"] = _u(rng, (-0.03, 0.03))
    r["z_cc"] = _u(rng, (22.0, 30.0))
    r["x_ins"] = _u(rng, (31.0, 37.0)) * r["A"] / 66.0
    r["y_syl"] = _u(rng, (0.0, 10.0))
    r["w_syl"] = 0.6 + 2.6 * atrophy * _u(rng, (0.5, 1.2))
    r["folia_P"] = _u(rng, (3.5, 5.0))
    r["bs_scale"] = _u(rng, (0.9, 1.1))
    r["vent4"] = _u(rng, (0.8, 1.4)) * (1.0 + 0.4 * atrophy)
    r["sinus_w"] = _u(rng, (2.0, 4.5))
    return atrophy


#: Lateral ventricle centre line (right side): frontal tip, foramen of Monro, body, atrium,
#: occipital tip, temporal horn start and tip; (x, y, z, radius) in mm.
_VENTRICLE = np.array([
    [13.0, 31.0, 6.0, 3.5], [9.5, 13.0, 11.0, 5.0], [13.0, -6.0, 17.0, 4.5],
    [21.0, -28.0, 10.0, 6.0], [16.0, -50.0, 6.0, 2.0], [27.0, -22.0, -6.0, 2.6],
    [30.0, 2.0, -20.0, 1.6],
])
_SEGMENTS = ((0, 1), (1, 2), (2, 3), (3, 4), (3, 5), (5, 6))


def ventricle_points(scale: float, side: float, spread: float) -> np.ndarray:
    """Centre-line points (7, 4) of one lateral ventricle (side +1 right, -1 left)."""
    pts = _VENTRICLE.copy()
    pts[:, 0] *= side * spread
    pts[:, 3] *= scale
    return pts


def _ventricles(rng: np.random.Generator, cfg: PhantomConfig, r: np.void,
                atrophy: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Capsule segments of both lateral ventricles and their centre-line points."""
    base = _u(rng, cfg.ventricle_scale) * (1.0 + 0.35 * atrophy)
    r["w3"] = (1.0 + 1.2 * (base - 0.6) + 1.5 * atrophy) * _u(rng, (0.8, 1.2))
    segs, sides = [], []
    for side in (1.0, -1.0):
        scale = base * _u(rng, (0.85, 1.15))
        pts = ventricle_points(scale, side, 0.85 + 0.15 * scale)
        sides.append(pts)
        segs.extend(np.concatenate([pts[a], pts[b], _capsule_box(pts[a], pts[b])])
                    for a, b in _SEGMENTS)
    return np.array(segs), sides


def _capsule_box(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(x_lo, x_hi, y_lo, y_hi, z_lo, z_hi) of the capsule between points (x, y, z, r)."""
    r = max(p[3], q[3])
    return np.array([v for k in range(3) for v in (min(p[k], q[k]) - r, max(p[k], q[k]) + r)])


def _nuclei(rng: np.random.Generator, cfg: PhantomConfig, sides: list[np.ndarray]) -> np.ndarray:
    """Caudate, lentiform and thalamus on each side, and physiological calcifications."""
    rows = []
    p_pineal, p_choroid, p_basal = cfg.p_calcification
    for pts in sides:
        side = math.copysign(1.0, pts[0, 0])
        horn = abs(pts[1, 0]) + pts[1, 3]
        rows.append([side * (horn + 3.0), 17.0, 8.0, 4.5, 8.0, 9.0, T_DEEP])
        rows.append([side * 24.0, 2.0, -1.0, 6.0, 15.0, 10.0, T_DEEP])
        rows.append([side * 18.5, 0.0, -2.0, 4.0, 9.0, 7.0, T_DEEP])
        rows.append([side * 10.5, -13.0, 2.0, 8.0, 11.5, 9.0, T_DEEP])
        if rng.random() < p_choroid:
            rc = _u(rng, (1.5, 3.5))
            atrium = pts[3]
            rows.append([atrium[0], atrium[1] - 2.0, atrium[2] - 1.0, rc, rc * 1.3, rc, T_CALC])
        if rng.random() < p_basal:
            rc = _u(rng, (1.2, 2.6))
            rows.append([side * 18.5, 0.0, -2.0, rc, rc * 1.5, rc, T_CALC])
    if rng.random() < p_pineal:
        rc = _u(rng, (1.5, 3.8))
        rows.append([0.0, -23.0, _u(rng, (-2.0, 2.0)), rc, rc, rc, T_CALC])
    return np.array(rows, np.float64)


def _pose(rng: np.random.Generator, cfg: PhantomConfig, r: np.void,
          extra_pitch: float) -> np.ndarray:
    """Head position and rotation in the scanner; returns the scanner -> head rotation."""
    yaw = _u(rng, cfg.yaw)
    if rng.random() < cfg.p_large_rotation:
        yaw += float(rng.choice([90.0, 180.0, 270.0]))
    rot = rotation(yaw, _u(rng, cfg.pitch) + extra_pitch, _u(rng, cfg.roll))
    for k, name in enumerate(("m00", "m01", "m02", "m10", "m11", "m12", "m20", "m21", "m22")):
        r[name] = rot[k // 3, k % 3]
    r["cx"] = _u(rng, cfg.shift)
    r["cy"] = _u(rng, cfg.shift) - 8.0
    r["cz"] = 0.0
    return rot


def _holder(rng: np.random.Generator, r: np.void) -> None:
    """A curved head holder under the back of the head (absent in a tenth of studies)."""
    if rng.random() < 0.1:
        r["hold_t"] = 0.0
        r["hold_r"] = 1.0
        r["hold_cos"] = 2.0
        return
    back = r["B"] + r["t_ap"] + r["s_ap"]
    r["hold_r"] = _u(rng, (95.0, 135.0))
    r["hold_t"] = _u(rng, (1.5, 4.0))
    r["hold_cos"] = math.cos(math.radians(_u(rng, (50.0, 85.0))))
    r["hold_x"] = r["cx"] + _u(rng, (-5.0, 5.0))
    r["hold_y"] = r["cy"] + back + _u(rng, (3.0, 25.0)) - r["hold_r"]


def _bounds(r: np.void, coef: np.ndarray) -> None:
    """Early-exit bounds of the rasterizer (conservative)."""
    wobble = 1.0 + np.abs(coef[:2]).sum()
    r["r_bound"] = 1.1 * wobble * max(
        r["B"] + r["t_ap"] * 1.5 + r["s_ap"] + r["frontal_sinus"],
        r["A"] + r["t_lat"] * 1.5 + r["s_lat"] + r["temporalis"],
        r["oy"] + r["globe_r"] + 30.0 + abs(r["yc0"]) + abs(r["yc1"]) * 90.0,
    )
    r["floor_max"] = max(r["z_af"] + 9.0 + 0.22 * (r["B"] - r["y_sph"] - 25.0), r["z_pc"],
                         r["z_sella"], r["z_tb"]) + 4.0


def draw_head(rng: np.random.Generator, cfg: PhantomConfig, extra_pitch: float = 0.0) -> Head:
    """One patient's head drawn from ``cfg``; ``extra_pitch`` (degrees) adds a gantry tilt."""
    rec = np.zeros((), HEAD_DTYPE)
    r = rec[()]
    coef = _shape(rng, cfg, r)
    _base(rng, r)
    atrophy = _brain(rng, cfg, r)
    vseg, sides = _ventricles(rng, cfg, r, atrophy)
    deep = _nuclei(rng, cfg, sides)
    _densities(rng, cfg, r)
    rot = _pose(rng, cfg, r, extra_pitch)
    _holder(rng, r)
    _bounds(r, coef)
    rec[()] = r
    return Head(rec=rec, coef=coef, vseg=vseg, deep=deep, tex=textures(rng), rotation=rot)
