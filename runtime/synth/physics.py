"""The scanner: field of view, reconstruction kernel, quantum noise and artefacts.

A slice's clean HU (from :mod:`~ichrt.runtime.synth.render`) becomes a CT image in three Numba
passes: quantum noise is added and the sum goes through the reconstruction kernel (a separable
point-spread function, Gaussian for soft kernels, with an edge-enhancing negative lobe for sharp
ones), so that the kernel shapes both edges and the noise grain as it does on a real scanner;
then beam hardening (cupping), streaks, the dark band between the petrous bones, rings and the
circular reconstruction field are added and the result is rounded to integer HU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from ichrt.runtime.synth.config import PhantomConfig

#: Reference pixel size (mm) of the config's pixel-denominated ranges (512 matrix, 230 mm FOV).
REF_SPACING = 0.45
HU_LOW, HU_HIGH = -1024.0, 3071.0


@dataclass
class Protocol:
    """One study's acquisition and reconstruction settings."""

    size: int
    fov: float
    thickness: float
    #: kernel point-spread sigma (mm) and edge enhancement (0 = soft).
    blur: float
    sharpen: float
    noise: float
    #: extra noise in the middle of the head (photon starvation), fraction.
    centre_noise: float
    cupping: float
    fossa_band: float
    n_streaks: tuple[int, int]
    streak_amplitude: tuple[float, float]
    #: (radius px, amplitude HU, width px) of ring artefacts.
    rings: list[tuple[float, float, float]] = field(default_factory=list)
    #: slice indices blurred by patient motion.
    motion: set[int] = field(default_factory=set)
    #: radius (px) of the circular reconstruction field; pixels outside are air.
    fov_radius: float = 0.0
    seed: int = 0

    @property
    def spacing(self) -> float:
        """Pixel spacing (mm)."""
        return self.fov / self.size


def draw_protocol(rng: np.random.Generator, cfg: PhantomConfig, size: int,
                  n_slices: int) -> Protocol:
    """Scanner settings of one study."""
    fov_range = cfg.fov[int(rng.integers(len(cfg.fov)))]
    thick, weights = zip(*cfg.slice_thickness)
    w = np.asarray(weights, np.float64)
    sharp = rng.random() < cfg.p_sharp_kernel
    rings = []
    if rng.random() < cfg.p_ring:
        for _ in range(int(rng.integers(1, 4))):
            rings.append((float(rng.uniform(0.02, 0.45) * size), float(rng.choice([-1, 1]) *
                          rng.uniform(4.0, 15.0)), float(rng.uniform(0.6, 1.6))))
    motion: set[int] = set()
    if rng.random() < cfg.p_motion:
        start = int(rng.integers(n_slices))
        motion = set(range(start, min(n_slices, start + int(rng.integers(1, 5)))))
    return Protocol(
        size=size,
        fov=float(rng.uniform(*fov_range)),
        thickness=float(rng.choice(thick, p=w / w.sum())),
        blur=float(rng.uniform(*cfg.kernel_blur)) * REF_SPACING,
        sharpen=float(rng.uniform(*cfg.kernel_sharpen)) if sharp else 0.0,
        noise=float(np.exp(rng.uniform(*np.log(cfg.noise_sigma)))),
        centre_noise=float(rng.uniform(0.0, 0.4)),
        cupping=float(rng.uniform(*cfg.beam_hardening)),
        fossa_band=float(rng.uniform(*cfg.posterior_fossa_band)),
        n_streaks=cfg.streaks if rng.random() < cfg.p_streaks else (0, 0),
        streak_amplitude=cfg.streak_amplitude,
        rings=rings,
        motion=motion,
        fov_radius=0.5 * size * float(rng.uniform(0.97, 1.0)),
        seed=int(rng.integers(2**62)),
    )


def kernel_1d(sigma_px: float, sharpen: float) -> np.ndarray:
    """Separable reconstruction kernel (sums to 1): Gaussian, minus a wider one when sharp.

    Edge enhancement fades out when the point spread is narrower than a pixel (coarse
    matrices): its undershoot lives at the scale of the point spread, not of the pixel.
    """
    sharpen *= min(1.0, max(0.0, (sigma_px - 0.3) / 0.5))
    sigma_px = max(sigma_px, 0.25)
    wide = 2.5 * sigma_px
    radius = math.ceil(2.5 * wide if sharpen > 0.0 else 3.0 * sigma_px)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g1 = np.exp(-0.5 * (x / sigma_px) ** 2)
    g1 /= g1.sum()
    if sharpen <= 0.0:
        return g1.astype(np.float32)
    g2 = np.exp(-0.5 * (x / wide) ** 2)
    g2 /= g2.sum()
    return ((1.0 + sharpen) * g1 - sharpen * g2).astype(np.float32)


_jit = nb.njit(cache=True, fastmath=True, nogil=True, parallel=True)


@nb.njit(cache=True, inline="always")
def _uniform2(seed, i, j):
    """Two uniforms in [0, 1) from a counter-based hash (splitmix64) of (seed, i, j)."""
    z = np.uint64(seed) + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(j) * np.uint64(
        0xD1B54A32D192ED03)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    a = (z >> np.uint64(40)) * (1.0 / 16777216.0)
    b = ((z >> np.uint64(8)) & np.uint64(0xFFFFFF)) * (1.0 / 16777216.0)
    return a, b


@_jit
def _add_noise(clean, seed, sigma, centre, cx, cy, q00, q01, q11, out):
    """out = clean + sigma(x) * unit noise; sigma grows towards the middle of the head ellipse
    (quadratic form q in pixels around (cx, cy)) and is lower in air."""
    rows, cols = clean.shape
    unit = math.sqrt(6.0)
    for i in nb.prange(rows):
        dy = i - cy
        for j in range(cols):
            dx = j - cx
            q = q00 * dx * dx + 2.0 * q01 * dx * dy + q11 * dy * dy
            s = sigma * (1.0 + centre * (1.0 - q)) if q < 1.0 else 0.7 * sigma
            a, b = _uniform2(seed, i, j)
            out[i, j] = clean[i, j] + s * unit * (a + b - 1.0)


@_jit
def _filter_rows(src, k, out):
    """Convolve each row with ``k`` (edges replicated); inner loops run over contiguous pixels."""
    rows, cols = src.shape
    r = k.shape[0] // 2
    for i in nb.prange(rows):
        line = np.empty(cols + 2 * r, np.float32)
        line[r:r + cols] = src[i]
        line[:r] = src[i, 0]
        line[r + cols:] = src[i, cols - 1]
        acc = np.zeros(cols, np.float32)
        for t in range(2 * r + 1):
            w = k[t]
            for j in range(cols):
                acc[j] += w * line[j + t]
        out[i] = acc


@_jit
def _filter_cols(src, k, out):
    """Convolve each column with ``k`` (edges replicated), row by row for contiguous access."""
    rows, cols = src.shape
    r = k.shape[0] // 2
    for i in nb.prange(rows):
        acc = np.zeros(cols, np.float32)
        for t in range(2 * r + 1):
            w = k[t]
            ii = min(max(i + t - r, 0), rows - 1)
            for j in range(cols):
                acc[j] += w * src[ii, j]
        out[i] = acc


@_jit
def _finish(img, lines, ring, cup, cx, cy, q00, q01, q11, fov_r, low, high):
    """Add cupping, streak lines (see :func:`streak_lines`) and rings; air outside the
    reconstruction circle; clip and round to integer HU (in place)."""
    rows, cols = img.shape
    nl = lines.shape[0]
    nr = ring.shape[0]
    for i in nb.prange(rows):
        yc = i + 0.5 - rows / 2.0
        dy = i - cy
        for j in range(cols):
            xc = j + 0.5 - cols / 2.0
            rad = math.sqrt(xc * xc + yc * yc)
            if rad > fov_r:
                img[i, j] = -1000.0
                continue
            v = img[i, j]
            dx = j - cx
            q = q00 * dx * dx + 2.0 * q01 * dx * dy + q11 * dy * dy
            if q < 1.0:
                v += cup * q * q
            for m in range(nl):
                d = abs(lines[m, 0] * j + lines[m, 1] * i - lines[m, 2]) / lines[m, 4]
                if d < 3.0:
                    along = (-lines[m, 1] * j + lines[m, 0] * i - lines[m, 5]) / lines[m, 6]
                    v += lines[m, 3] * math.exp(-d * d - along * along)
            k = int(2.0 * rad)
            if k < nr:
                v += ring[k]
            v = min(max(v, low), high)
            img[i, j] = math.floor(v + 0.5)


@dataclass
class SliceGeometry:
    """Where the head is in one slice (pixels), for noise, cupping and the petrous band."""

    #: centre (x, y) px and the quadratic form of the intracranial ellipse (1 on its rim).
    centre: tuple[float, float]
    quad: tuple[float, float, float]
    #: (nx, ny, offset, amplitude, width) of the dark band between the petrous bones, or None.
    fossa_line: tuple[float, float, float, float, float] | None


def ring_profile(rings: list[tuple[float, float, float]], size: int) -> np.ndarray:
    """Ring artefact HU as a function of radius (2 samples per pixel)."""
    if not rings:
        return np.zeros(0, np.float32)
    r = np.arange(int(size * 1.5)) / 2.0
    prof = np.zeros_like(r)
    for radius, amp, width in rings:
        prof += amp * np.exp(-(((r - radius) / width) ** 2))
    return prof.astype(np.float32)


def streak_lines(rng: np.random.Generator, proto: Protocol, geom: SliceGeometry,
                 motion: bool) -> np.ndarray:
    """Streaks from points near the skull (more with motion), plus the petrous band: rows of
    (nx, ny, offset, amplitude, width, source along the line, fade length), pixels."""
    lo, hi = proto.n_streaks
    n = int(rng.integers(lo, hi + 1)) + (4 if motion else 0)
    cx, cy = geom.centre
    radius = 70.0 / proto.spacing
    rows = []
    for _ in range(n):
        ang = rng.uniform(0.0, math.pi)
        nx, ny = math.cos(ang), math.sin(ang)
        at = rng.uniform(0.0, 2.0 * math.pi)
        px, py = cx + radius * math.cos(at), cy + radius * math.sin(at)
        amp = float(rng.uniform(*proto.streak_amplitude)) * float(rng.choice([-1.0, 1.0]))
        width = float(rng.uniform(1.5, 4.0))
        fade = float(rng.uniform(0.5, 1.5)) * proto.size
        rows.append((nx, ny, nx * px + ny * py, amp, width, -ny * px + nx * py, fade))
    if geom.fossa_line is not None:
        rows.append((*geom.fossa_line, 0.0, 1e9))
    return np.asarray(rows, np.float64).reshape(-1, 7)


def scan_slice(clean: np.ndarray, proto: Protocol, geom: SliceGeometry, index: int,
               rng: np.random.Generator, out: np.ndarray | None = None) -> np.ndarray:
    """Clean HU (H, W) float32 -> the scanner's integer-valued HU image (float32, in ``out``
    when given)."""
    motion = index in proto.motion
    if motion:
        clean = _motion(clean, rng, proto)
    size = clean.shape[0]
    k = kernel_1d(proto.blur / proto.spacing, proto.sharpen)
    gain = float(np.sum(k.astype(np.float64) ** 2))
    sigma_in = proto.noise / gain
    cx, cy = geom.centre
    q00, q01, q11 = geom.quad
    noisy = np.empty_like(clean)
    rows = np.empty_like(clean)
    out = np.empty_like(clean) if out is None else out
    seed = (proto.seed + 0x9E3779B97F4A7C15 * (index + 1)) % 2**63
    _add_noise(clean, seed, sigma_in, proto.centre_noise, cx, cy, q00, q01, q11, noisy)
    _filter_rows(noisy, k, rows)
    _filter_cols(rows, k, out)
    lines = streak_lines(rng, proto, geom, motion)
    _finish(out, lines, ring_profile(proto.rings, size), proto.cupping, cx, cy, q00, q01, q11,
            proto.fov_radius, HU_LOW, HU_HIGH)
    return out


def _motion(clean: np.ndarray, rng: np.random.Generator, proto: Protocol) -> np.ndarray:
    """Patient motion during the rotation: a blend of the slice with a shifted copy (ghost)."""
    shift_mm = rng.uniform(1.5, 6.0)
    ang = rng.uniform(0.0, 2.0 * math.pi)
    dy = round(shift_mm * math.sin(ang) / proto.spacing)
    dx = round(shift_mm * math.cos(ang) / proto.spacing)
    w = rng.uniform(0.2, 0.45)
    ghost = np.roll(clean, (dy, dx), axis=(0, 1))
    return ((1.0 - w) * clean + w * ghost).astype(np.float32)
