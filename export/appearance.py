"""Appearance augmentation: what other scanners, exports and viewers do to a slice's pixels.

Acts on the windowed tensor (C, S, S) in [0, 1] after the runtime's windowing, geometry and
intensity augmentation: gamma, blur or sharpening kernels, JPEG compression, a low-resolution
round trip (256-px sources, other reconstruction matrices) and burned-in letters. None of these
moves anatomy, so region maps need no change. The slice must keep its answer under all of them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AppearanceConfig:
    """Probabilities and ranges of each appearance change (0 disables one)."""

    p_gamma: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.4)
    p_kernel: float = 0.3
    p_jpeg: float = 0.2
    jpeg_quality: tuple[int, int] = (15, 70)
    p_lowres: float = 0.25
    lowres: tuple[float, float] = (0.35, 0.8)
    p_text: float = 0.25


_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0
_SHARPEN = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])


def _kernel(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    c = x.shape[0]
    w = k.to(x.dtype)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(F.pad(x[None], (1, 1, 1, 1), mode="replicate"), w, groups=c)[0]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    arr = (x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):  # each window channel as its own gray JPEG, as a viewer exports
        buf = io.BytesIO()
        Image.fromarray(arr[c]).save(buf, format="JPEG", quality=int(quality))
        out[c] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    return torch.from_numpy(out.astype(np.float32) / 255.0)


def _text(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    from PIL import Image, ImageDraw

    s = x.shape[-1]
    layer = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(layer)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :/.-"
    for _ in range(int(rng.integers(1, 4))):
        n = int(rng.integers(3, 12))
        text = "".join(letters[int(i)] for i in rng.integers(len(letters), size=n))
        corner_y = 1 if rng.random() < 0.5 else s - 12
        draw.text((int(rng.integers(1, max(2, s // 2))), corner_y + int(rng.integers(-1, 2))),
                  text, fill=255)
    mask = torch.from_numpy(np.asarray(layer, np.float32) / 255.0)
    value = float(rng.uniform(0.7, 1.0))
    return x * (1 - mask) + value * mask


def appearance(x: torch.Tensor, rng: np.random.Generator, cfg: AppearanceConfig) -> torch.Tensor:
    """``x`` (C, S, S) in [0, 1] with the drawn appearance changes, clipped to [0, 1]."""
    if rng.random() < cfg.p_gamma:
        x = x.clamp(0, 1) ** float(rng.uniform(*cfg.gamma))
    if rng.random() < cfg.p_kernel:
        x = _kernel(x, _BLUR if rng.random() < 0.6 else _SHARPEN)
    if rng.random() < cfg.p_lowres:
        s = x.shape[-1]
        small = max(8, round(s * float(rng.uniform(*cfg.lowres))))
        x = F.interpolate(F.interpolate(x[None], size=(small, small), mode="bilinear",
                                        antialias=True, align_corners=False),
                          size=(s, s), mode="bilinear", align_corners=False)[0]
    if rng.random() < cfg.p_jpeg:
        x = _jpeg(x, int(rng.integers(*cfg.jpeg_quality)))
    if rng.random() < cfg.p_text:
        x = _text(x, rng)
    return x.clamp(0.0, 1.0)
