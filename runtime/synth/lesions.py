"""Draw hemorrhages for a positive study: where, how big, how dense, and their mass effect.

Each lesion is a :data:`~ichrt.runtime.synth.render.LESION_DTYPE` record in the head frame, so it
spans consecutive slices of the study. Sizes and densities go down to subtle cases (thin subdural,
a few sulci of subarachnoid blood, faint contrast) so that no HU threshold solves the task.
Densities stay inside the issue's ranges: epidural 50-90, subdural 50-80, subarachnoid 40-70,
intraparenchymal 50-90 (edema rim below white matter), intraventricular 50-80 HU.
"""

from __future__ import annotations

import math

import numpy as np

from ichrt.runtime.contract import LABELS
from ichrt.runtime.synth.anatomy import Head
from ichrt.runtime.synth.config import PhantomConfig
from ichrt.runtime.synth.render import (
    EPIDURAL,
    INTRAPARENCHYMAL,
    INTRAVENTRICULAR,
    LESION_DTYPE,
    SUBARACHNOID,
    SUBDURAL,
)

SUBTYPES: tuple[str, ...] = tuple(LABELS[1:])
#: HU range of each kind (LABELS[1:] order).
HU_RANGES: dict[int, tuple[float, float]] = {
    EPIDURAL: (50.0, 90.0), INTRAPARENCHYMAL: (50.0, 90.0), INTRAVENTRICULAR: (50.0, 80.0),
    SUBARACHNOID: (40.0, 70.0), SUBDURAL: (50.0, 80.0),
}
#: Edema rim HU (below white matter).
EDEMA_HU = (8.0, 19.0)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _density(rng: np.random.Generator, cfg: PhantomConfig, kind: int) -> tuple[float, float]:
    """(mean HU, heterogeneity amplitude) inside the kind's range, scaled by lesion contrast."""
    lo, hi = HU_RANGES[kind]
    contrast = _u(rng, *cfg.lesion_contrast)
    var = _u(rng, 0.5, 5.0)
    mean = lo + var + (hi - lo - 2.0 * var) * min(1.0, contrast) * rng.random()
    return mean, var


def choose_kinds(rng: np.random.Generator, cfg: PhantomConfig) -> list[int]:
    """Distinct lesion kinds of a positive study (at least one)."""
    weights = np.asarray(cfg.subtype_weights, np.float64)
    kinds = [int(rng.choice(len(weights), p=weights / weights.sum()))]
    while len(kinds) < len(weights) and rng.random() < cfg.p_extra_subtype:
        rest = weights.copy()
        rest[kinds] = 0.0
        kinds.append(int(rng.choice(len(weights), p=rest / rest.sum())))
    return kinds


def _extra_axial(rng: np.random.Generator, cfg: PhantomConfig, head: Head, kind: int,
                 z_lo: float, z_hi: float, rec: np.void) -> None:
    r = head.r
    size = _u(rng, *cfg.lesion_size)
    theta = math.radians(_u(rng, 25.0, 155.0)) * (1.0 if rng.random() < 0.5 else -1.0)
    rec["ux"], rec["uy"] = math.sin(theta), math.cos(theta)
    rec["cz"] = _u(rng, max(z_lo, -14.0), max(min(z_hi, 0.72 * r["C"]), max(z_lo, -14.0) + 1.0))
    if kind == EPIDURAL:
        rec["half_arc"] = _u(rng, 14.0, 34.0) * size
        rec["z_half"] = _u(rng, 12.0, 26.0) * size
        rec["thick"] = max(2.5, _u(rng, 6.0, 22.0) * size)
        rec["profile"] = _u(rng, 0.8, 1.2)
    else:
        rec["half_arc"] = _u(rng, 35.0, 95.0) * max(size, 0.5)
        rec["z_half"] = _u(rng, 22.0, 55.0) * max(size, 0.5)
        rec["thick"] = max(1.5, _u(rng, 3.0, 17.0) * size)
        rec["profile"] = _u(rng, 0.25, 0.6)
    rec["half_arc"] = max(rec["half_arc"], 9.0)
    rec["z_half"] = max(rec["z_half"], 9.0)
    if rec["thick"] > 8.0:
        _mass_effect(head, -math.copysign(min(0.5 * rec["thick"], 11.0), rec["ux"]),
                     rec["uy"] * 40.0, rec["cz"])


def _mass_effect(head: Head, shift: float, y: float, z: float) -> None:
    """Midline shift (mm, + towards image right) centred near (y, z); the larger one wins."""
    r = head.rec
    if abs(shift) > abs(float(r["mls"])):
        r["mls"], r["mls_y"], r["mls_z"] = shift, y, z


def _parenchymal(rng: np.random.Generator, cfg: PhantomConfig, head: Head, z_lo: float,
                 z_hi: float, rec: np.void) -> None:
    r = head.r
    size = _u(rng, *cfg.lesion_size)
    site = rng.choice(["deep", "lobar", "lobar", "cerebellum", "pons"], p=[0.4, 0.2, 0.2, 0.12, 0.08])
    side = 1.0 if rng.random() < 0.5 else -1.0
    if site == "deep":
        centre = (side * _u(rng, 12.0, 27.0), _u(rng, -16.0, 12.0), _u(rng, -8.0, 12.0))
    elif site == "cerebellum":
        centre = (side * _u(rng, 10.0, 30.0), _u(rng, -62.0, -45.0), r["z_pf"] + _u(rng, 18.0, 28.0))
    elif site == "pons":
        centre = (0.0, r["y_ds"] - 15.0, r["z_sella"] - _u(rng, 8.0, 16.0))
        size = min(size, 0.6)
    else:
        angle = rng.uniform(-math.pi, math.pi)
        zc = _u(rng, -5.0, 0.6 * r["C"])
        depth = _u(rng, 14.0, 30.0)
        fz = math.sqrt(max(0.2, 1.0 - (zc / r["C"]) ** 2))
        centre = ((r["A"] * fz - depth) * math.sin(angle), (r["B"] * fz - depth) * math.cos(angle), zc)
    rad = max(3.0, _u(rng, 5.0, 22.0) * size)
    rec["cx"], rec["cy"], rec["cz"] = centre
    rec["rx"], rec["ry"], rec["rz"] = (rad * _u(rng, 0.7, 1.3) for _ in range(3))
    rec["irregular"] = _u(rng, 0.1, 0.5)
    rec["rim"] = _u(rng, 0.05, 0.6) if rng.random() < 0.8 else 0.0
    rec["rim_hu"] = _u(rng, *EDEMA_HU)
    if rad > 14.0 and site in ("deep", "lobar"):
        _mass_effect(head, -side * min(0.4 * rad, 10.0), centre[1], centre[2])


def _ventricular(rng: np.random.Generator, cfg: PhantomConfig, head: Head, rec: np.void) -> None:
    """Blood layering in the dependent (posterior, lowest in the scanner) parts, or a cast."""
    side = rng.choice([-1.0, 0.0, 1.0])
    cast = rng.random() < 0.35
    if cast:
        rec["cx"], rec["cy"], rec["cz"] = side * 14.0, _u(rng, -30.0, 10.0), _u(rng, -5.0, 15.0)
        rec["rx"], rec["ry"], rec["rz"] = (26.0 if side == 0.0 else 14.0), _u(rng, 15.0, 40.0), 35.0
    else:
        rec["cx"], rec["cy"], rec["cz"] = side * 20.0, -36.0, 8.0
        rec["rx"], rec["ry"], rec["rz"] = (40.0 if side == 0.0 else 16.0), 30.0, 22.0
    rec["cast"] = 1.0 if cast else 0.0
    # lowest (most posterior in the scanner) point of the occipital horns and atria
    pts = np.concatenate([head.vseg[:, :3], head.vseg[:, 4:7]])
    if side != 0.0:
        pts = pts[np.sign(pts[:, 0]) == side]
    radius = float(head.vseg[:, 3].max())
    deepest = head.to_scanner(pts)[:, 1].max() + 0.6 * radius
    rec["level"] = deepest - _u(rng, 2.0, 6.0 + 2.0 * radius)


def _subarachnoid(rng: np.random.Generator, cfg: PhantomConfig, head: Head, z_lo: float,
                  z_hi: float, rec: np.void) -> None:
    r = head.r
    size = _u(rng, *cfg.lesion_size)
    site = rng.choice(["convexity", "sylvian", "basal", "interhemispheric"], p=[0.4, 0.25, 0.2, 0.15])
    side = 1.0 if rng.random() < 0.5 else -1.0
    if site == "convexity":
        angle = rng.uniform(-math.pi, math.pi)
        zc = _u(rng, max(z_lo, -10.0), max(min(z_hi, 0.75 * r["C"]), max(z_lo, -10.0) + 1.0))
        fz = math.sqrt(max(0.2, 1.0 - (zc / r["C"]) ** 2))
        centre = ((r["A"] * fz - 6.0) * math.sin(angle), (r["B"] * fz - 6.0) * math.cos(angle), zc)
        radii = (_u(rng, 10.0, 38.0) * size,) * 3
    elif site == "sylvian":
        centre = (side * (r["x_ins"] + 10.0), r["y_syl"] + 4.0, _u(rng, -20.0, 5.0))
        radii = (_u(rng, 12.0, 24.0) * size, _u(rng, 10.0, 20.0) * size, _u(rng, 12.0, 24.0) * size)
    elif site == "basal":
        centre = (0.0, r["y_ds"] - 2.0, r["z_sella"] + 6.0)
        radii = (_u(rng, 15.0, 30.0) * size, _u(rng, 15.0, 30.0) * size, _u(rng, 8.0, 18.0) * size)
    else:
        centre = (0.0, _u(rng, -40.0, 40.0), _u(rng, 10.0, 0.7 * r["C"]))
        radii = (6.0, _u(rng, 15.0, 40.0) * size, _u(rng, 10.0, 25.0) * size)
    rec["cx"], rec["cy"], rec["cz"] = centre
    rec["rx"], rec["ry"], rec["rz"] = (max(6.0, 1.3 * v) for v in radii)
    rec["irregular"] = _u(rng, 0.3, 0.8)


def draw_lesions(rng: np.random.Generator, cfg: PhantomConfig, head: Head, kinds: list[int],
                 z_lo: float, z_hi: float) -> np.ndarray:
    """Lesion records for ``kinds`` with centres between head heights z_lo and z_hi (mm).

    May set the head's midline shift (mass effect of large lesions).
    """
    out = np.zeros(len(kinds), LESION_DTYPE)
    for rec, kind in zip(out, kinds):
        rec["kind"] = kind
        rec["hu"], rec["hu_var"] = _density(rng, cfg, kind)
        rec["tex_u"], rec["tex_v"] = rng.uniform(0.0, 256.0, 2)
        if kind in (EPIDURAL, SUBDURAL):
            _extra_axial(rng, cfg, head, kind, z_lo, z_hi, rec)
        elif kind == INTRAPARENCHYMAL:
            _parenchymal(rng, cfg, head, z_lo, z_hi, rec)
        elif kind == INTRAVENTRICULAR:
            _ventricular(rng, cfg, head, rec)
        else:
            _subarachnoid(rng, cfg, head, z_lo, z_hi, rec)
    return out


def z_extent(les: np.void) -> tuple[float, float]:
    """Head-frame height range a lesion can touch (for skipping it on other slices)."""
    kind = int(les["kind"])
    if kind in (EPIDURAL, SUBDURAL):
        half = les["z_half"]
    else:
        half = les["rz"] * (2.0 + les["rim"])
    return les["cz"] - half, les["cz"] + half
