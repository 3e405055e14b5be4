"""Rasterize one axial slice of a phantom head: clean HU, tissue classes and lesion masks.

The head is a procedural 3-D model in a head frame (mm; x to the image's right, y anterior,
z superior, origin in the middle of the cranial cavity) evaluated pixel by pixel in one Numba
kernel, so that consecutive slices cut one consistent anatomy and a lesion spans consecutive
slices. Per-study numbers travel in a NumPy record (:data:`HEAD_DTYPE`), lesions in an array of
:data:`LESION_DTYPE` records, smooth random fields in periodic texture tables.

All pixel code lives in this one module on purpose: Numba's on-disk cache checks only the source
file of a cached function, so helpers spread over several files could go stale silently.

Tissue classes (:data:`TISSUES`) are returned beside the HU so that tests can check HU ranges per
tissue and the lesion masks (one bit per subtype, LABELS[1:] order).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

#: Tissue class codes of the label map.
TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "soft": 2, "bone": 3, "csf": 4, "gray": 5, "white": 6, "deep_gray": 7,
    "dura": 8, "calcification": 9, "eye": 10, "lens": 11, "holder": 12, "blood": 13,
    "edema": 14, "ventricle": 15,
}
T_AIR, T_FAT, T_SOFT, T_BONE, T_CSF, T_GM, T_WM, T_DEEP = 0, 1, 2, 3, 4, 5, 6, 7
T_DURA, T_CALC, T_EYE, T_LENS, T_HOLDER, T_BLOOD, T_EDEMA, T_VENT = 8, 9, 10, 11, 12, 13, 14, 15

#: Lesion kinds, in LABELS[1:] order; lesion bit = 1 << kind.
EPIDURAL, INTRAPARENCHYMAL, INTRAVENTRICULAR, SUBARACHNOID, SUBDURAL = 0, 1, 2, 3, 4

_HEAD_FIELDS = (
    # pose: head centre in scanner mm and the scanner -> head rotation (row major)
    "cx", "cy", "cz", "m00", "m01", "m02", "m10", "m11", "m12", "m20", "m21", "m22",
    # cranial cavity (inner table) semi-axes, decay below the origin, AP centre drift with height
    "A", "B", "C", "D", "yc0", "yc1",
    # skull (outer table = cavity + thickness) and scalp (outer surface = skull + thickness)
    "t_lat", "t_ap", "t_top", "s_lat", "s_ap", "s_top", "temporalis", "fat_frac",
    "frontal_sinus", "fs_z",
    # skull base and posterior fossa
    "z_af", "z_mf", "z_pf", "y_sph", "y_pet", "k_pet", "z_pc", "t_base", "z_sella", "y_ds",
    "z_ta", "y_ta", "z_tb", "fm_r", "cm_size",
    # face, orbits and sinuses
    "face_top", "oy", "ox", "oz", "globe_r", "sphenoid", "maxillary",
    # brain
    "csf_t", "gm_t", "sul_P", "sul_W", "sul_D", "sul_w", "ih_w", "xm0", "xm1", "z_cc",
    "x_ins", "y_syl", "w_syl", "folia_P", "bs_scale",
    "mls", "mls_y", "mls_z", "w3", "vent4", "sinus_w",
    # densities (HU)
    "hu_gm", "hu_wm", "hu_deep", "hu_csf", "hu_table", "hu_diploe", "hu_scalp", "hu_fat",
    "hu_muscle", "hu_dura", "hu_eye", "hu_lens", "hu_holder", "tex_amp",
    # head holder (scanner frame)
    "hold_x", "hold_y", "hold_r", "hold_t", "hold_cos",
    # bounds for early exits: highest point of the cranial floor, radius enclosing the head
    "floor_max", "r_bound",
)
#: Per-study numbers of the rasterizer (one record per study).
HEAD_DTYPE = np.dtype([(name, np.float64) for name in _HEAD_FIELDS])

_LESION_FIELDS = (
    "kind", "cx", "cy", "cz",  # centre (head frame)
    "ux", "uy",  # direction of an extra-axial lesion from the cavity centre (unit, xy)
    "half_arc", "z_half", "thick", "profile",  # extent along the inner table, max thickness
    "rx", "ry", "rz", "irregular",  # blob / envelope radii and boundary irregularity
    "hu", "hu_var", "rim", "rim_hu",  # densities, edema rim width (mm)
    "level", "cast", "tex_u", "tex_v",  # IVH fluid level (scanner Y, mm), cast (fill), texture offset
)
#: One record per lesion.
LESION_DTYPE = np.dtype([(name, np.float64) for name in _LESION_FIELDS])

#: Texture tables: (N_TEXTURES, TEX, TEX) zero-mean unit-variance periodic noise.
TEX = 256
TEX_SMOOTH, TEX_MEDIUM, TEX_FINE, TEX_COARSE = 0, 1, 2, 3
N_TEXTURES = 4

_jit = nb.njit(cache=True, fastmath=True, nogil=True)


@_jit
def _tex(tex, k, u, v):
    """Bilinear periodic lookup of texture ``k`` at texel coordinates (u, v)."""
    fu = math.floor(u)
    fv = math.floor(v)
    au = u - fu
    av = v - fv
    iu = int(fu) & (TEX - 1)
    iv = int(fv) & (TEX - 1)
    iu1 = (iu + 1) & (TEX - 1)
    iv1 = (iv + 1) & (TEX - 1)
    top = tex[k, iu, iv] * (1.0 - av) + tex[k, iu, iv1] * av
    bottom = tex[k, iu1, iv] * (1.0 - av) + tex[k, iu1, iv1] * av
    return top * (1.0 - au) + bottom * au


@_jit
def _clip1(v):
    """Clip a unit-variance texture value to [-1, 1] (at 2 sigma)."""
    v = 0.5 * v
    return -1.0 if v < -1.0 else (min(v, 1.0))


@_jit
def _sig(t):
    return 1.0 / (1.0 + math.exp(-t))


@_jit
def _shrink(z, top, bottom):
    """Cross-section factor of an egg-shaped layer at height z (1 at z = 0, 0 at its ends)."""
    q = z / top if z > 0.0 else z / bottom
    q = 1.0 - q * q
    return math.sqrt(q) if q > 0.0 else 0.0


@_jit
def _fourier(coef, row, zn, c, s):
    """sum_k (a_k + b_k zn) cos(k theta) + (c_k + d_k zn) sin(k theta) from cos/sin of theta."""
    ck, sk = c, s
    total = 0.0
    for k in range(4):
        total += (coef[row, 2 * k] + coef[row + 1, 2 * k] * zn) * ck
        total += (coef[row, 2 * k + 1] + coef[row + 1, 2 * k + 1] * zn) * sk
        ck, sk = ck * c - sk * s, sk * c + ck * s
    return total


@_jit
def _floor_z(h, tex, x, y):
    """Height of the cranial floor under (x, y): anterior fossa (orbital roofs), middle and
    posterior fossae as bowls, petrous crests, sphenoid body and clivus, foramen magnum."""
    ax = abs(x)
    ridge = h.y_sph + 0.1 * ax + 0.004 * ax * ax + 4.0 * _tex(tex, TEX_SMOOTH, ax * 0.1, 60.0)
    wa = _sig((y - ridge) / 2.0)
    dp = y - (h.y_pet - h.k_pet * ax)
    wp = _sig(-dp / 2.0)
    roof = math.exp(-((ax - 22.0) / 11.0) ** 2 - ((y - h.oy + 22.0) / 18.0) ** 2)
    z_af = h.z_af - 7.0 * math.exp(-(x / 6.0) ** 2) + 9.0 * roof + 0.22 * (y - h.y_sph - 25.0)
    z_mf = h.z_mf + 10.0 * ((ax - 33.0) / 22.0) ** 2 + 8.0 * ((y - h.y_sph + 26.0) / 22.0) ** 2
    y_fm = _brainstem_y(h, h.z_pf)
    z_pf = min(h.z_pf + 22.0 * ((x / 56.0) ** 2 + ((y - y_fm + 16.0) / 52.0) ** 2), h.z_tb - 3.0)
    floor = wa * z_af + (1.0 - wa) * (wp * z_pf + (1.0 - wp) * min(z_mf, h.z_pc))
    floor += 3.5 * _clip1(_tex(tex, TEX_SMOOTH, x * 0.12 + 30.0, y * 0.12))
    # petrous ridges: raised crests along the middle / posterior fossa border
    lateral = _sig((ax - 12.0) / 2.0) * _sig((58.0 - ax) / 3.0)
    crest = h.z_pc - 0.09 * dp * dp - 0.06 * ax
    if lateral > 0.05:
        floor = max(floor, crest - 60.0 * (1.0 - lateral))
    # sphenoid body, dorsum sellae and clivus in the midline
    if ax < 16.0 and wa < 0.9:
        mid = math.exp(-(x / 9.0) ** 2)
        if y > h.y_ds:
            clivus = h.z_sella - 6.0 * math.exp(-((y - h.y_ds - 7.0) / 4.5) ** 2)
        else:
            clivus = h.z_sella - 2.0 * (h.y_ds - y)
        floor = max(floor, clivus - 40.0 * (1.0 - mid))
    # foramen magnum: the cavity continues down the spinal canal
    if x * x + (y - y_fm) ** 2 < h.fm_r * h.fm_r:
        floor = min(floor, -1.0e9)
    return floor


@_jit
def _tent_z(h, x, y):
    """Height of the tentorium over (x, y) (apex at the incisura, sloping down to its rim)."""
    q = math.sqrt((x / 50.0) ** 2 + ((y - h.y_ta) / (h.B - 6.0 + h.y_ta)) ** 2)
    q = min(q, 1.3)
    return h.z_ta - (h.z_ta - h.z_tb) * q


@_jit
def _brainstem_y(h, z):
    """AP centre of the brainstem at height z: behind the clivus, below the midbrain."""
    yc = h.y_ds - 3.0 - 12.0 * h.bs_scale
    if z < h.z_sella:
        yc -= (h.z_sella - z) / 2.0
    return yc


@_jit
def _brainstem_r(h, z):
    """(rx, ry) of the brainstem at height z: medulla, pons, midbrain."""
    s = h.bs_scale
    if z < h.z_pf + 12.0:
        return 8.5 * s, 7.5 * s
    if z < h.z_sella - 2.0:
        t = min(1.0, (z - h.z_pf - 12.0) / 6.0)
        return (8.5 + 6.5 * t) * s, (7.5 + 4.5 * t) * s
    return 13.0 * s, 11.0 * s


@_jit
def _segment_inside(px, py, pz, seg):
    """Is the point inside the tapered capsule (x0, y0, z0, r0, x1, y1, z1, r1, then its
    bounding box x_lo, x_hi, y_lo, y_hi, z_lo, z_hi)?"""
    if px < seg[8] or px > seg[9] or py < seg[10] or py > seg[11] or pz < seg[12] or pz > seg[13]:
        return False
    ax, ay, az, r0 = seg[0], seg[1], seg[2], seg[3]
    bx, by, bz, r1 = seg[4], seg[5], seg[6], seg[7]
    dx, dy, dz = bx - ax, by - ay, bz - az
    ll = dx * dx + dy * dy + dz * dz
    t = ((px - ax) * dx + (py - ay) * dy + (pz - az) * dz) / ll
    t = 0.0 if t < 0.0 else (min(t, 1.0))
    qx = px - ax - t * dx
    qy = py - ay - t * dy
    qz = pz - az - t * dz
    r = r0 + t * (r1 - r0)
    return qx * qx + qy * qy + qz * qz < r * r


@_jit
def _ellipsoid_q(px, py, pz, e):
    """Normalized squared radius of a point in the axis-aligned ellipsoid (cx, cy, cz, rx, ry, rz)."""
    if abs(px - e[0]) > e[3] or abs(py - e[1]) > e[4] or abs(pz - e[2]) > e[5]:
        return 2.0
    return ((px - e[0]) / e[3]) ** 2 + ((py - e[1]) / e[4]) ** 2 + ((pz - e[2]) / e[5]) ** 2


@_jit
def _sulcus(h, tex, d, phase, depth, period):
    """Tissue from the distance to the nearest line of one sulcal family: 0 none, CSF or GM."""
    k = math.floor(phase + 0.5)
    dist = abs(phase - k) * period
    deep = depth * (0.35 + 0.65 * _sig(3.0 * _tex(tex, TEX_SMOOTH, k * 7.31, depth * 3.7)))
    if d >= deep + 0.7 * h.gm_t:
        return 0
    width = (h.sul_w * math.sqrt(max(0.0, 1.0 - d / deep)) + 0.12) if d < deep else 0.0
    if dist < width:
        return T_CSF
    if dist < width + h.gm_t:
        return T_GM
    return 0


@_jit
def _cortex(h, tex, d, s_coord, z, depth):
    """Tissue at depth d (mm) below the brain surface with surface coordinate s: CSF/GM/WM.

    Sulci (up to ``depth`` mm deep; 0 = none) are lines of two families (deep primaries,
    shallow branches between them) whose course wanders along the surface and wiggles with
    depth, lined by cortex."""
    if d < 0.0:
        return T_CSF
    if depth <= 0.0 or d >= depth + h.gm_t:
        return T_GM if d < h.gm_t else T_WM
    period = h.sul_P
    wander = h.sul_W * _tex(tex, TEX_SMOOTH, s_coord * 0.2, z * 0.12)
    wiggle = 3.5 * _tex(tex, TEX_MEDIUM, s_coord * 0.25 + 17.0, d * 0.3 + z * 0.15)
    phase = (s_coord + wander + wiggle) / period
    t = _sulcus(h, tex, d, phase, depth, period)
    if t == 0 and _tex(tex, TEX_SMOOTH, s_coord * 0.15 + 120.0, z * 0.1) > 1.0:
        t = _sulcus(h, tex, d, phase + 0.5, 0.5 * depth, period)
    if t != 0:
        return t
    return T_GM if d < h.gm_t else T_WM


@_jit
def _extra_axial(h, les, nles, c, s, r_in, d_in, z):
    """(index of the EDH/SDH holding the pixel or -1, thickness pushing the brain in)."""
    hit = -1
    push = 0.0
    for m in range(nles):
        kind = int(les[m].kind)
        if kind != EPIDURAL and kind != SUBDURAL:
            continue
        dot = c * les[m].ux + s * les[m].uy
        if dot < 0.0:
            continue
        cross = c * les[m].uy - s * les[m].ux
        arc = math.atan2(cross, dot) * r_in
        u2 = (arc / les[m].half_arc) ** 2 + ((z - les[m].cz) / les[m].z_half) ** 2
        if u2 >= 1.0:
            continue
        thick = les[m].thick * (1.0 - u2) ** les[m].profile
        push = max(push, thick)
        if d_in < thick:
            hit = m
    return hit, push


@_jit
def _blob_q(les, tex, x, y, z):
    """Irregular normalized radius of a blob lesion (1 on its boundary)."""
    lx = (x - les.cx) / les.rx
    ly = (y - les.cy) / les.ry
    lz = (z - les.cz) / les.rz
    q = math.sqrt(lx * lx + ly * ly + lz * lz)
    if q > 2.2:
        return q
    wob = _tex(tex, TEX_MEDIUM, les.tex_u + 9.0 * lx + 4.0 * lz, les.tex_v + 9.0 * ly - 3.0 * lz)
    return q * (1.0 + les.irregular * 0.5 * wob)


@_jit
def _blood_hu(les, tex, x, y, z):
    return les.hu + les.hu_var * _clip1(_tex(tex, TEX_FINE, les.tex_u + x * 0.6, les.tex_v + y * 0.6 + z))


@_jit
def _deep(h, vseg, deep, xd, y, z, tissue):
    """Ventricles, deep gray nuclei and calcifications (priority over cortex / white matter)."""
    for e in range(deep.shape[0]):
        if deep[e, 6] == T_CALC and _ellipsoid_q(xd, y, z, deep[e]) < 1.0:
            return T_CALC
    ax = abs(xd)
    # septum pellucidum between the frontal horns
    if ax > 0.9:
        for g in range(vseg.shape[0]):
            if _segment_inside(xd, y, z, vseg[g]):
                return T_VENT
    # third ventricle: a midline slit
    if ax < h.w3 and -20.0 < y < 10.0 and ((y + 5.0) / 15.0) ** 2 + ((z + 4.0) / 11.0) ** 2 < 1.0:
        return T_VENT
    for e in range(deep.shape[0]):
        if deep[e, 6] == T_DEEP and _ellipsoid_q(xd, y, z, deep[e]) < 1.0:
            return T_DEEP
    return tissue


@_jit
def _posterior_fossa(h, tex, x, y, z, dc, floor, tent):
    """Brainstem, cisterns, fourth ventricle and cerebellum below the tentorium."""
    yb = _brainstem_y(h, z)
    rx, ry = _brainstem_r(h, z)
    q = (x / rx) ** 2 + ((y - yb) / ry) ** 2
    if q < 1.0:
        return T_WM if z < h.z_sella + 2.0 else T_DEEP
    cistern = 1.0 + (3.0 + 2.0 * h.csf_t) / rx
    front = y > yb - 0.4 * ry if z < h.z_sella - 6.0 else y < yb + 0.45 * ry
    if q < cistern * cistern and front:
        return T_CSF
    # fourth ventricle behind the pons / medulla
    if h.z_pf + 8.0 < z < h.z_sella - 4.0:
        v4 = (x / (5.0 * h.vent4)) ** 2 + ((y - (yb - ry - 4.0)) / (3.5 * h.vent4)) ** 2
        if v4 < 1.0:
            return T_VENT
    # cisterna magna
    y_fm = _brainstem_y(h, h.z_pf)
    cm = (x / (11.0 * h.cm_size)) ** 2 + ((y - y_fm + 30.0) / (13.0 * h.cm_size)) ** 2
    if cm + ((z - h.z_pf - 4.0) / (9.0 * h.cm_size)) ** 2 < 1.0:
        return T_CSF
    d = min(dc, (tent - z) * 0.9 - 0.3, (z - floor) * 0.9 - 0.6)
    if d < 0.0:
        return T_CSF
    # folia: thin fissures near the surface, roughly parallel to it
    phase = (d + 2.5 * _tex(tex, TEX_MEDIUM, x * 0.12, y * 0.12 + z * 0.2)) / h.folia_P
    frac = abs(phase - math.floor(phase + 0.5))
    if d < 6.0 and frac < 0.06 and _tex(tex, TEX_SMOOTH, x * 0.3, y * 0.3) > -0.3:
        return T_CSF
    if d > 14.0 and abs(x) > 8.0:
        return T_WM
    return T_GM


@_jit
def _intracranial(h, tex, vseg, deep, les, nles, x, y, z, yr, c, s, r_in, d_in, floor):
    """(tissue, lesion bits, lesion index) of a pixel inside the cranial cavity."""
    hit, push = _extra_axial(h, les, nles, c, s, r_in, d_in, z)
    if hit >= 0:
        return T_BLOOD, 1 << int(les[hit].kind), hit
    # convexity depth below the cortex surface (extra-axial CSF first)
    csf_t = h.csf_t * (1.0 - min(1.0, push / 3.0))
    dc = d_in - push * 0.85 - csf_t
    ax = abs(x)
    dp = y - (h.y_pet - h.k_pet * ax)
    tent = _tent_z(h, x, y)
    if dp < 0.0 and z < tent:
        incisura = (x / 15.0) ** 2 + ((y - h.y_ta) / 24.0) ** 2 < 1.0
        if z > tent - 0.7 and not incisura:
            return T_DURA, 0, -1
        return _posterior_fossa(h, tex, x, y, z, dc, floor, tent), 0, -1
    # midline shift (mass effect) moves the deep structures and the lower falx
    xd = x
    if h.mls != 0.0:
        xd = x - h.mls * math.exp(-((y - h.mls_y) ** 2 + (z - h.mls_z) ** 2) / 3200.0)
    # falx and interhemispheric fissure
    xm = h.xm0 + h.xm1 * y
    z_falx = h.z_cc - 1.3 * max(0.0, abs(y - 2.0) - 38.0)
    falx = z > z_falx
    if not falx:
        xm = xd - x + xm
    dm = abs(x - xm)
    if falx and (dm < 0.45 or dm < h.sinus_w * (1.0 - d_in / 6.0)):
        return T_DURA, 0, -1
    # surfaces: convexity, cranial floor / tentorium, medial
    d = dc
    s_coord = 0.0
    depth = h.sul_D
    d_floor = (z - floor) * 0.9 - 0.4
    if dp < 6.0:
        d_floor = min(d_floor, (z - tent) * 0.9 - 0.4)
    if d_floor < d:
        d = d_floor
        depth = 0.0
    if falx:
        d_med = dm - h.ih_w
        if d_med < d:
            d = d_med
            s_coord = y + 0.5 * z
            depth = 0.5 * h.sul_D
    if depth == h.sul_D and d < depth + h.gm_t:
        s_coord = math.atan2(x, yr) * (h.A + h.B) * 0.5
    tissue = _cortex(h, tex, d, s_coord, z, depth)
    # sylvian fissure and insula
    if -32.0 < z < 12.0 and tissue != T_CSF:
        x_ins = h.x_ins + 3.0 * ((y - h.y_syl - 3.0) / 16.0) ** 2
        x_min = x_ins if z > -16.0 else 16.0
        if ax > x_min - h.gm_t:
            wave = 3.0 * _tex(tex, TEX_MEDIUM, ax * 0.25 + 50.0, z * 0.15 + (30.0 if x > 0 else 0.0))
            y_syl = h.y_syl + 0.3 * (ax - h.x_ins) - 0.15 * z + wave
            dy = abs(y - y_syl)
            w_syl = h.w_syl * (0.6 + 0.5 * _sig(2.0 * _tex(tex, TEX_SMOOTH, ax * 0.2, z * 0.2 + 9.0)))
            if ax > x_min and dy < w_syl:
                tissue = T_CSF
            elif ax > x_min and dy < w_syl + h.gm_t:
                tissue = T_GM
            elif z > -16.0 and abs(y - h.y_syl - 3.0) < 18.0 and ax < x_ins + 0.6 * h.w_syl:
                tissue = T_CSF if ax > x_ins else T_GM
    # suprasellar cistern
    if h.z_sella < z < h.z_sella + 14.0:
        q = (xd / 13.0) ** 2 + ((y - h.y_ds - 10.0) / 10.0) ** 2
        if q < 1.0:
            tissue = T_WM if abs(y - h.y_ds - 14.0) < 1.2 and abs(xd) < 7.0 else T_CSF
    # deep structures
    if -38.0 < z < 48.0 and abs(xd) < 42.0 and -68.0 < y < 50.0 and tissue != T_DURA:
        tissue = _deep(h, vseg, deep, xd, y, z, tissue)
    # midbrain column above the tentorial incisura; ambient and quadrigeminal cisterns at its
    # sides and back, the interpeduncular notch in front
    if h.z_sella - 2.0 < z < h.z_ta + 4.0:
        yb = _brainstem_y(h, z)
        rx, ry = _brainstem_r(h, z)
        q = (xd / rx) ** 2 + ((y - yb) / ry) ** 2
        notch = abs(xd) < 2.5 and y > yb + 0.55 * ry
        if q < 1.0 and not notch:
            tissue = T_DEEP
        else:
            gap = 1.0 + (1.5 + 1.5 * h.csf_t + 1.2 * _tex(tex, TEX_MEDIUM, xd * 0.3, y * 0.3)) / rx
            if q < gap * gap and (y < yb + 0.45 * ry or notch):
                tissue = T_CSF
    return tissue, 0, -1


@_jit
def _skull_base(h, tex, x, y, z, floor):
    """Bone, sinuses, orbits and deep soft tissue below the cranial floor (on coordinates warped
    by a few mm so that no outline is a perfect ellipse or line)."""
    depth = floor - z
    wx = 1.6 * _tex(tex, TEX_MEDIUM, y * 0.25 + 31.0, z * 0.2)
    wy = 1.6 * _tex(tex, TEX_MEDIUM, x * 0.25 + 77.0, z * 0.2 + 13.0)
    x += wx
    y += wy
    ax = abs(x)
    # orbits: globe, lens, optic nerve and fat in a bony cone
    ex = ax - h.ox
    ey = y - h.oy
    ez = z - h.oz
    g = ex * ex + ey * ey + ez * ez
    if g < h.globe_r * h.globe_r:
        lens = (ex / 4.5) ** 2 + ((ey - 0.78 * h.globe_r) / 1.8) ** 2 + (ez / 4.5) ** 2
        return T_LENS if lens < 1.0 else T_EYE
    if -40.0 < ey < 0.6 * h.globe_r:
        # orbit: medial wall parallel to the midline, lateral wall diverging forwards
        t = min(1.0, 1.0 + ey / 40.0)
        medial = h.ox - h.globe_r - 2.0
        lateral = medial + 4.0 + (2.0 * h.globe_r + 2.0) * math.sqrt(t)
        half_z = 4.0 + (h.globe_r + 2.0) * math.sqrt(t)
        centre_x = 0.5 * (medial + lateral)
        q = ((ax - centre_x) / (0.5 * (lateral - medial))) ** 2 + ((z - h.oz) / half_z) ** 2
        if q < 1.0:
            nerve = (ax - centre_x) ** 2 + (z - h.oz) ** 2 < 5.0 and ey < -h.globe_r
            return T_SOFT if nerve else T_FAT
        if q < 1.35:
            return T_BONE
    honey = _tex(tex, TEX_FINE, x * 0.9, y * 0.9 + z * 0.6)
    # sphenoid sinus under the sella
    q = (x / (13.0 * h.sphenoid)) ** 2 + ((y - h.y_ds - 14.0) / (11.0 * h.sphenoid)) ** 2
    q += ((z - h.z_sella + 16.0) / (10.0 * h.sphenoid)) ** 2
    if q < 1.0:
        return T_BONE if q > 0.82 or ax < 0.8 else T_AIR
    # ethmoid cells between the orbits
    if ax < 11.0 and h.oy - 32.0 < y < h.oy + 4.0 and h.z_af - 30.0 < z < h.z_af - 3.0:
        return T_AIR if honey > -0.3 else T_BONE
    # maxillary sinuses and nasal cavity
    q = ((ax - 24.0) / (12.0 * h.maxillary)) ** 2 + ((y - h.oy + 6.0) / (15.0 * h.maxillary)) ** 2
    q += ((z - h.oz + 30.0) / (17.0 * h.maxillary)) ** 2
    if q < 1.0:
        return T_BONE if q > 0.85 else T_AIR
    if h.oy - 42.0 < y < h.oy + 22.0 and z < h.oz - 4.0:
        # nasal cavity: pear-shaped, wider low and back; septum and scrolled turbinates
        width = 5.0 + 9.0 * min(1.0, (h.oz - 4.0 - z) / 25.0) * (1.0 - max(0.0, y - h.oy) / 30.0)
        if ax < width:
            if abs(x - 1.2 * math.sin(y * 0.15)) < 0.9:
                return T_BONE
            scroll = _tex(tex, TEX_FINE, y * 0.3 + (40.0 if x > 0 else 0.0), z * 0.5)
            return T_SOFT if ax > 0.4 * width and scroll > 0.0 else T_AIR
        if ax < width + 1.5:
            return T_BONE
    # nasopharynx
    q = (x / 11.0) ** 2 + ((y - h.oy + 48.0) / 8.0) ** 2 + ((z - h.oz + 34.0) / 14.0) ** 2
    if q < 1.0:
        return T_AIR
    # mastoid air cells lateral to the petrous bone
    q = ((ax - 0.82 * h.A) / 9.0) ** 2 + ((y - h.y_pet + h.k_pet * 50.0 + 6.0) / 13.0) ** 2
    q += ((z - h.z_pc + 12.0) / 12.0) ** 2
    if q < 1.0:
        return T_AIR if honey > 0.1 else T_BONE
    # bone plate under the floor: normal distance from the floor's slope (walls where it steps)
    gx = _floor_z(h, tex, x + 0.7, y) - floor
    gy = _floor_z(h, tex, x, y + 0.7) - floor
    plate = h.t_base * (0.55 if y > h.y_sph + 6.0 else 1.0)
    if depth * depth < plate * plate * (1.0 + (gx * gx + gy * gy) / 0.49):
        return T_BONE
    dp = y - (h.y_pet - h.k_pet * ax)
    if 12.0 < ax < 56.0 and abs(dp) < 8.0 and depth < 16.0:
        return T_BONE
    return T_FAT if _tex(tex, TEX_MEDIUM, x * 0.3 + 70.0, y * 0.3 + z * 0.2) > 1.6 else T_SOFT


@_jit
def _tissue_hu(h, tex, tissue, x, y, z, bone_frac):
    """Clean HU of a tissue class at a head-frame point (texture modulated, within its range)."""
    smooth = _clip1(_tex(tex, TEX_COARSE, x * 0.35, y * 0.35 + z * 0.13))
    if tissue == T_GM:
        return h.hu_gm + h.tex_amp * smooth
    if tissue == T_WM:
        return h.hu_wm + h.tex_amp * smooth
    if tissue == T_CSF or tissue == T_VENT:
        return h.hu_csf + 0.6 * h.tex_amp * smooth
    if tissue == T_DEEP:
        return h.hu_deep + h.tex_amp * smooth
    if tissue == T_BONE:
        fine = _clip1(_tex(tex, TEX_FINE, x * 1.3 + 11.0, y * 1.3 + z * 0.7))
        if bone_frac > 0.0:
            return h.hu_diploe + 90.0 * fine
        return h.hu_table + 60.0 * fine
    if tissue == T_SOFT:
        return h.hu_muscle + 3.0 * smooth
    if tissue == T_FAT:
        return h.hu_fat + 8.0 * smooth
    if tissue == T_DURA:
        return h.hu_dura
    if tissue == T_EYE:
        return h.hu_eye
    if tissue == T_LENS:
        return h.hu_lens
    if tissue == T_HOLDER:
        return h.hu_holder
    if tissue == T_CALC:
        return 250.0 + 140.0 * _clip1(_tex(tex, TEX_FINE, x * 2.0, y * 2.0 + z))
    return -1000.0


@_jit
def _intracranial_pixel(h, tex, vseg, deep, les, x, y, z, yr, c, s, r_in, d_in, floor, ys_):
    """(tissue, lesion bits, HU) inside the cranial cavity, lesions included."""
    nles = les.shape[0]
    tissue, lbits, hit = _intracranial(h, tex, vseg, deep, les, nles, x, y, z, yr, c, s, r_in,
                                       d_in, floor)
    if tissue == T_BLOOD:
        value = _blood_hu(les[hit], tex, x, y, z)
    else:
        value = _tissue_hu(h, tex, tissue, x, y, z, 0.0)
    for m in range(nles):
        kind = int(les[m].kind)
        if kind == INTRAPARENCHYMAL:
            q = _blob_q(les[m], tex, x, y, z)
            if q < 1.0:
                tissue = T_BLOOD
                lbits |= 1 << kind
                value = _blood_hu(les[m], tex, x, y, z)
            elif q < 1.0 + les[m].rim and (tissue == T_GM or tissue == T_WM or tissue == T_DEEP):
                tissue = T_EDEMA
                value = les[m].rim_hu + 1.5 * _clip1(_tex(tex, TEX_MEDIUM, x, y + z))
        elif kind == INTRAVENTRICULAR and tissue == T_VENT:
            q = _ellipsoid_q(x, y, z, (les[m].cx, les[m].cy, les[m].cz, les[m].rx, les[m].ry,
                                       les[m].rz))
            if q < 1.0 and (les[m].cast > 0.0 or ys_ > les[m].level):
                tissue = T_BLOOD
                lbits |= 1 << kind
                value = _blood_hu(les[m], tex, x, y, z)
        elif kind == SUBARACHNOID and tissue == T_CSF and _blob_q(les[m], tex, x, y, z) < 1.0:
            tissue = T_BLOOD
            lbits |= 1 << kind
            value = _blood_hu(les[m], tex, x, y, z)
    return tissue, lbits, value


@_jit
def _outside_head(h, xs_, ys_):
    """Head holder (a curved shell below the head, scanner frame) or air."""
    hx = xs_ - h.hold_x
    hy = ys_ - h.hold_y
    rr = math.sqrt(hx * hx + hy * hy) + 1e-6
    if abs(rr - h.hold_r) < 0.5 * h.hold_t and hy / rr > h.hold_cos:
        return T_HOLDER
    return T_AIR


@_jit
def _in_face(h, x, y, z):
    """Face and nose below the forehead (outside the skull ellipsoid)."""
    if z > h.face_top:
        return False
    taper = min(1.0, (h.face_top - z) / 12.0)
    fa = (h.ox + h.globe_r + 13.0) * math.sqrt(taper)
    fb = h.globe_r + 22.0
    if (x / fa) ** 2 + ((y - h.oy + 14.0) / fb) ** 2 < 1.0:
        return True
    if h.oz - 48.0 < z < h.oz + 4.0:
        nx = 5.0 + 0.16 * (h.oz + 4.0 - z)
        return (x / nx) ** 2 + ((y - h.oy - h.globe_r - 8.0) / 13.0) ** 2 < 1.0
    return False


@_jit
def _pixel(h, tex, coef, vseg, deep, les, x, y, z, xs_, ys_):
    """(tissue, lesion bits, clean HU) of one head-frame point."""
    yr = y - (h.yc0 + h.yc1 * z)
    r = math.sqrt(x * x + yr * yr) + 1e-6
    if r > h.r_bound:
        t = _outside_head(h, xs_, ys_)
        return t, 0, (h.hu_holder if t == T_HOLDER else -1000.0)
    c = x / r
    s = yr / r
    zn = z / h.C
    e = 1.0 + _fourier(coef, 0, zn, c, s)
    bump = max(0.0, 1.0 - ((z + 10.0) / 50.0) ** 2)
    temporal = h.temporalis * bump * bump * c * c
    f_sc = _shrink(z, h.C + h.t_top + h.s_top, h.D + 25.0)
    a_sc = (h.A + h.t_lat + h.s_lat + temporal) * f_sc * e
    b_sc = (h.B + h.t_ap + h.s_ap) * f_sc * e
    inside_scalp = f_sc > 0.0 and (x / a_sc) ** 2 + (yr / b_sc) ** 2 < 1.0
    if not inside_scalp and not _in_face(h, x, y, z):
        t = _outside_head(h, xs_, ys_)
        return t, 0, (h.hu_holder if t == T_HOLDER else -1000.0)
    f_in = _shrink(z, h.C, h.D)
    r_in = 0.0
    d_in = -1.0
    if f_in > 0.0:
        a_in = h.A * f_in * e
        b_in = h.B * f_in * e
        r_in = 1.0 / math.sqrt((c / a_in) ** 2 + (s / b_in) ** 2)
        slope = 0.0
        if z > 0.0:
            slope = 0.5 * (h.A + h.B) * z / (h.C * h.C * max(f_in, 0.08))
        d_in = (r_in - r) / math.sqrt(1.0 + slope * slope)
    floor = _floor_z(h, tex, x, y) if z < h.floor_max else -1.0e9
    if d_in > 0.0 and z > floor:
        return _intracranial_pixel(h, tex, vseg, deep, les, x, y, z, yr, c, s, r_in, d_in,
                                   floor, ys_)
    if z <= floor:
        t = _skull_base(h, tex, x, y, z, floor)
        return t, 0, _tissue_hu(h, tex, t, x, y, z, 0.0)
    if not inside_scalp:
        return T_SOFT, 0, h.hu_scalp
    # vault: outer table, diploe, frontal sinus; then scalp with its fat layer
    thick = 1.0 + _fourier(coef, 2, zn, c, s)
    sinus = h.frontal_sinus * math.exp(-((z - h.fs_z) / 11.0) ** 2 - (x / 20.0) ** 2)
    sinus *= max(0.0, s) ** 6
    f_sk = _shrink(z, h.C + h.t_top, h.D + 12.0)
    a_sk = (h.A + h.t_lat * thick) * f_sk * e
    b_sk = (h.B + h.t_ap * thick + sinus) * f_sk * e
    r_sk = 1.0 / math.sqrt((c / a_sk) ** 2 + (s / b_sk) ** 2) if f_sk > 0.0 else 0.0
    if r < r_sk:
        span = r_sk - max(r_in, 0.0)
        frac = (r - r_in) / span if span > 0.0 else 0.0
        if sinus > 2.0 and 0.22 < frac < 0.8 and _tex(tex, TEX_FINE, x * 0.5, z * 0.5) > -0.6:
            return T_AIR, 0, -1000.0
        diploe = 1.0 if span > 3.5 and 0.3 < frac < 0.7 else 0.0
        return T_BONE, 0, _tissue_hu(h, tex, T_BONE, x, y, z, diploe)
    r_sc = 1.0 / math.sqrt((c / a_sc) ** 2 + (s / b_sc) ** 2)
    depth = (r_sc - r) / max(r_sc - r_sk, 0.5)
    if 0.3 < depth < 0.3 + h.fat_frac:
        return T_FAT, 0, _tissue_hu(h, tex, T_FAT, x, y, z, 0.0)
    return T_SOFT, 0, h.hu_scalp


@_jit
def _point(h, tex, coef, vseg, deep, les, zs, spacing, rows, cols, i, j):
    """(tissue, bits, HU) of pixel (i, j) of the slice at table position zs."""
    ys_ = (i + 0.5 - rows / 2.0) * spacing
    xs_ = (j + 0.5 - cols / 2.0) * spacing
    dx = xs_ - h.cx
    dy = -(ys_ - h.cy)
    dz = zs - h.cz
    x = h.m00 * dx + h.m01 * dy + h.m02 * dz
    y = h.m10 * dx + h.m11 * dy + h.m12 * dz
    z = h.m20 * dx + h.m21 * dy + h.m22 * dz
    return _pixel(h, tex, coef, vseg, deep, les, x, y, z, xs_, ys_)


@nb.njit(cache=True, fastmath=True, nogil=True, parallel=True)
def render_kernel(head, tex, coef, vseg, deep, les, zs, spacing, hu, tissue, bits):
    """Fill ``hu`` (float32), ``tissue`` (uint8) and ``bits`` (uint8) for the slice at table
    position ``zs`` (mm) with square pixels of ``spacing`` mm; ``head`` is a 1-element array of
    HEAD_DTYPE (records cannot cross Numba's parallel boundary by value).

    Adaptive: pixels with even row and column are evaluated first; every other pixel whose
    surrounding evaluated pixels all share one tissue class and lesion bits takes them and
    their bilinearly interpolated HU (tissue densities vary smoothly), the rest are evaluated.
    """
    rows, cols = hu.shape
    for i2 in nb.prange((rows + 1) // 2):
        h = head[0]
        i = 2 * i2
        for j in range(0, cols, 2):
            t, b, v = _point(h, tex, coef, vseg, deep, les, zs, spacing, rows, cols, i, j)
            hu[i, j] = v
            tissue[i, j] = t
            bits[i, j] = b
    for i in nb.prange(rows):
        h = head[0]
        i0 = i - (i & 1)
        i1 = i0 + 2 if i & 1 else i0
        for j in range(cols):
            if (i & 1) == 0 and (j & 1) == 0:
                continue
            j0 = j - (j & 1)
            j1 = j0 + 2 if j & 1 else j0
            if i1 < rows and j1 < cols:
                t = tissue[i0, j0]
                b = bits[i0, j0]
                if (tissue[i0, j1] == t and tissue[i1, j0] == t and tissue[i1, j1] == t
                        and bits[i0, j1] == b and bits[i1, j0] == b and bits[i1, j1] == b):
                    fi = 0.5 * (i - i0)
                    fj = 0.5 * (j - j0)
                    top = hu[i0, j0] * (1.0 - fj) + hu[i0, j1] * fj
                    bottom = hu[i1, j0] * (1.0 - fj) + hu[i1, j1] * fj
                    hu[i, j] = top * (1.0 - fi) + bottom * fi
                    tissue[i, j] = t
                    bits[i, j] = b
                    continue
            t, b, v = _point(h, tex, coef, vseg, deep, les, zs, spacing, rows, cols, i, j)
            hu[i, j] = v
            tissue[i, j] = t
            bits[i, j] = b
