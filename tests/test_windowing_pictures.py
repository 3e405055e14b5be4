"""8-bit windowed pictures and the zlib-only PNG writer."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ichrt.runtime.contract import DEFAULT_WINDOWS
from ichrt.runtime.pictures import encode_png, window_gray8, window_rgb8, write_png


def decode_png(data: bytes) -> np.ndarray:
    """A minimal decoder for what encode_png writes (8-bit gray/RGB, filter 0), checking CRCs."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    channels = {0: 1, 2: 3}[colour]
    assert depth == 8
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()
    image = rows[:, 1:].reshape(height, width, channels)
    return image[..., 0] if channels == 1 else image


def test_gray8_maps_window_edges_to_0_and_255() -> None:
    hu = np.array([[-1000.0, 0.0, 40.0, 80.0, 3000.0, 20.0]])
    np.testing.assert_array_equal(window_gray8(hu, 40, 80), [[0, 0, 128, 255, 255, 64]])
    assert window_gray8(hu, 40, 80).dtype == np.uint8


def test_rgb8_has_one_window_per_channel() -> None:
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 2500, (7, 9)).astype(np.float32)
    rgb = window_rgb8(hu)
    assert rgb.shape == (7, 9, 3) and rgb.dtype == np.uint8
    for c, (level, width) in enumerate(DEFAULT_WINDOWS):
        np.testing.assert_array_equal(rgb[..., c], window_gray8(hu, level, width))
    with pytest.raises(ValueError, match="3 windows"):
        window_rgb8(hu, windows=[(40, 80)])
    with pytest.raises(ValueError, match="width"):
        window_gray8(hu, 40, 0)


@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (64, 33), (5, 7, 3), (31, 64, 3)])
def test_png_round_trip(shape, tmp_path) -> None:
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(image)), image)
    path = write_png(tmp_path / "picture.png", image)
    assert path.read_bytes() == encode_png(image)
    with Image.open(path) as opened:  # an independent decoder
        assert opened.mode == ("L" if len(shape) == 2 else "RGB")
        np.testing.assert_array_equal(np.asarray(opened), image)


@pytest.mark.parametrize(
    "image",
    [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros((0, 4), np.uint8)],
)
def test_png_refuses_what_it_cannot_write(image) -> None:
    with pytest.raises(ValueError, match="uint8"):
        encode_png(image)
