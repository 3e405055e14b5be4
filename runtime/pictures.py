"""8-bit windowed pictures of HU slices and a small PNG writer (zlib only, no PIL).

Pictures are for people (overlays, galleries, reports): the model itself reads float tensors
from :mod:`ichrt.runtime.windowing`, whose window formula these share.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichrt.runtime.contract import DEFAULT_WINDOWS
from ichrt.runtime.windowing import window_unit

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: PNG colour type by the number of channels: gray, RGB.
_COLOUR_TYPES = {1: 0, 3: 2}


def window_gray8(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """One window of ``hu`` as uint8 gray: level - width/2 -> 0, level + width/2 -> 255."""
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width!r}")
    unit = window_unit(np.asarray(hu, np.float32), level, width)
    return np.rint(unit * 255.0).astype(np.uint8)


def hu_from_gray8(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """float32 HU that the gray values of one window stand for: the linear inverse of
    :func:`window_gray8` (0 -> level - width/2, 255 -> level + width/2; what saturated is lost)."""
    if not width > 0:
        raise ValueError(f"window width must be > 0, got {width!r}")
    low = np.float32(level - width / 2.0)
    return low + np.asarray(gray).astype(np.float32) * np.float32(width / 255.0)


def window_rgb8(
    hu: np.ndarray, windows: Sequence[tuple[float, float]] = DEFAULT_WINDOWS
) -> np.ndarray:
    """The seed's three-window picture: (H, W, 3) uint8, one (level, width) window per channel.

    With the default windows red is brain (40/80), green subdural (80/200), blue bone (600/2800).
    """
    if len(windows) != 3:
        raise ValueError(f"an RGB picture needs exactly 3 windows, got {len(windows)}")
    return np.stack([window_gray8(hu, level, width) for level, width in windows], axis=-1)


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 (H, W) gray or (H, W, 3) RGB image (8 bits, no filtering)."""
    image = np.asarray(image)
    channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else 0
    if image.dtype != np.uint8 or channels not in _COLOUR_TYPES or 0 in image.shape:
        raise ValueError(
            f"PNG needs a non-empty uint8 (H, W) or (H, W, 3) array, "
            f"got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)),
            _chunk(b"IEND", b""),
        ]
    )


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 (H, W) or (H, W, 3)) to ``path`` as PNG; returns the path."""
    path = Path(path)
    path.write_bytes(encode_png(image))
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
