"""Training augmentation, split where the physics is: HU side, framing box, tensor side.

1. HU side (before windowing): scanner calibration (a slope/intercept jitter that the runtime's
   windowing kernel applies in its own pass), quantum noise, and pluggable ``hu_hooks`` (e.g. a
   source-specific clip that mimics 8-bit windowed sources; see :data:`HuHook`).
2. Framing: the head box of :func:`ichrt.runtime.framing.head_boxes` is jittered in scale and
   position, which is the scale/shift augmentation (field of view, head size, off-centre heads).
3. Tensor side (after the runtime's windowing): flips, rotation, contrast, brightness and noise on
   the windowed [0, 1] values, then the contract's normalization again.

Every random draw comes from a ``numpy.random.Generator`` seeded per sample by the sampler, so an
augmented epoch is reproducible whatever the number of loader workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

#: ``hook(hu float32 (H, W), source name, rng) -> hu``: a HU-side augmentation. Hooks must be
#: picklable (module-level functions or callable instances) for loader workers.
HuHook = Callable[[np.ndarray, str, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentations (each drawn uniformly); a 0 or (1, 1) range disables."""

    #: Side of the framing box relative to the head box (< 1 zooms in).
    box_scale: tuple[float, float] = (0.85, 1.15)
    #: Maximum shift of the framing box, as a fraction of its side.
    box_shift: float = 0.06
    #: HU = slope * stored + intercept with slope and intercept drawn from these ranges.
    hu_slope: tuple[float, float] = (0.97, 1.03)
    hu_intercept: tuple[float, float] = (-6.0, 6.0)
    #: Standard deviation of added Gaussian HU noise.
    hu_noise: tuple[float, float] = (0.0, 6.0)
    hflip: float = 0.5
    vflip: float = 0.0
    #: Maximum rotation in degrees (either way).
    rotate: float = 15.0
    #: Gain of windowed values around 0.5, and an additive brightness shift.
    contrast: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.03
    #: Standard deviation of Gaussian noise on windowed [0, 1] values.
    noise: float = 0.01
    hu_hooks: tuple[HuHook, ...] = ()

    def with_hooks(self, *hooks: HuHook) -> AugmentConfig:
        """A copy with more HU-side hooks appended."""
        return replace(self, hu_hooks=self.hu_hooks + tuple(hooks))


#: Named presets for ``ichrt train --augment-preset``. ``strong`` adds upside-down and
#: arbitrary-angle heads and wider scanner variation, for mixed real sources.
PRESETS: dict[str, AugmentConfig] = {
    "default": AugmentConfig(),
    "strong": AugmentConfig(box_scale=(0.75, 1.25), box_shift=0.1, hu_slope=(0.94, 1.06),
                            hu_intercept=(-12.0, 12.0), hu_noise=(0.0, 10.0), vflip=0.5,
                            rotate=30.0, contrast=(0.8, 1.2), brightness=0.06, noise=0.02),
}


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    lo, hi = bounds
    return float(lo) if hi <= lo else float(rng.uniform(lo, hi))


def jitter_box(box: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A square (y0, x0, y1, x1) box scaled and shifted around ``box``'s centre.

    May extend past the image: the windowing kernel reads outside pixels as air.
    """
    y0, x0, y1, x1 = (float(v) for v in box)
    side = max(y1 - y0, x1 - x0) * _uniform(rng, cfg.box_scale)
    cy = (y0 + y1) / 2.0 + rng.uniform(-cfg.box_shift, cfg.box_shift) * side
    cx = (x0 + x1) / 2.0 + rng.uniform(-cfg.box_shift, cfg.box_shift) * side
    side = max(side, 2.0)
    ny0, nx0 = round(cy - side / 2.0), round(cx - side / 2.0)
    s = round(side)
    return np.array([ny0, nx0, ny0 + s, nx0 + s], np.int64)


def hu_calibration(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float]:
    """(slope, intercept) of a simulated scanner calibration, for the windowing kernel."""
    return _uniform(rng, cfg.hu_slope), _uniform(rng, cfg.hu_intercept)


def hu_side(
    stored: np.ndarray, source: str, rng: np.random.Generator, cfg: AugmentConfig
) -> np.ndarray:
    """Noise and hooks on the stored HU; returns ``stored`` itself when neither applies."""
    sigma = _uniform(rng, cfg.hu_noise)
    if sigma <= 0 and not cfg.hu_hooks:
        return stored
    hu = stored.astype(np.float32)
    if sigma > 0:
        hu += rng.normal(0.0, sigma, hu.shape).astype(np.float32)
    for hook in cfg.hu_hooks:
        hu = np.asarray(hook(hu, source, rng), np.float32)
    return hu


@dataclass(frozen=True)
class TensorParams:
    """The tensor-side draws for one sample."""

    hflip: bool
    vflip: bool
    angle: float
    gain: float
    shift: float
    noise: float

    @classmethod
    def draw(cls, rng: np.random.Generator, cfg: AugmentConfig) -> TensorParams:
        return cls(
            hflip=bool(rng.random() < cfg.hflip),
            vflip=bool(rng.random() < cfg.vflip),
            angle=float(rng.uniform(-cfg.rotate, cfg.rotate)) if cfg.rotate > 0 else 0.0,
            gain=_uniform(rng, cfg.contrast),
            shift=float(rng.uniform(-cfg.brightness, cfg.brightness)) if cfg.brightness else 0.0,
            noise=cfg.noise,
        )


def geometric(images: torch.Tensor, p: TensorParams) -> torch.Tensor:  # noqa: F821
    """Flip and rotate (K, S, S) maps about their centre, zero outside (bilinear).

    Callers pass windowed values (air = 0) and region maps, so zero is the right fill.
    """
    import torch
    import torch.nn.functional as F

    x = images
    if p.hflip:
        x = torch.flip(x, dims=[-1])
    if p.vflip:
        x = torch.flip(x, dims=[-2])
    if p.angle:
        a = math.radians(p.angle)
        theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]],
                             dtype=x.dtype)[None]
        grid = F.affine_grid(theta, [1, *x.shape], align_corners=False)
        x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    return x


def intensity(windowed: torch.Tensor, p: TensorParams, gen: torch.Generator) -> torch.Tensor:  # noqa: F821
    """Contrast, brightness and noise on windowed values, clipped back to [0, 1]."""
    import torch

    x = (windowed - 0.5) * p.gain + 0.5 + p.shift
    if p.noise > 0:
        x = x + p.noise * torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return x.clamp_(0.0, 1.0)
