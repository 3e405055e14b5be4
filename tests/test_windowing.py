"""window_batch (Numba kernel) against window_reference (NumPy) and against the specification."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ichrt.runtime.contract import DEFAULT_WINDOWS, ModelContract
from ichrt.runtime.windowing import (
    AIR_HU,
    KERNEL_DTYPES,
    centred_boxes,
    window_batch,
    window_reference,
)

TOLERANCE = 1e-5


def make_contract(size: int = 32, windows=DEFAULT_WINDOWS, mean=None, std=None) -> ModelContract:
    n = len(windows)
    return ModelContract(
        windows=tuple(windows),
        input_size=size,
        mean=tuple(mean or [0.5] * n),
        std=tuple(std or [0.5] * n),
    )


def assert_matches_reference(pixels, contract, **kwargs) -> np.ndarray:
    fast = window_batch(pixels, contract, **kwargs)
    slow = window_reference(pixels, contract, **kwargs)
    assert fast.dtype == np.float32 and fast.flags.c_contiguous
    assert fast.shape == slow.shape
    np.testing.assert_allclose(fast, slow, rtol=0, atol=TOLERANCE)
    return fast


def edge_values(windows) -> np.ndarray:
    """HU values exactly at every window edge and just around them."""
    values = []
    for level, width in windows:
        for edge in (level - width / 2, level + width / 2):
            values += [edge - 1, edge - 0.5, edge, edge + 0.5, edge + 1]
    return np.array(values)


@pytest.mark.parametrize("size", [8, 13, 64])
def test_values_around_window_edges_resized(size) -> None:
    values = edge_values(DEFAULT_WINDOWS)
    side = int(np.ceil(np.sqrt(values.size)))
    pixels = np.resize(values, side * side).reshape(1, side, side).astype(np.float32)
    assert_matches_reference(pixels, make_contract(size))


def test_values_exactly_at_window_edges() -> None:
    """Pixel-exact sampling (box = input size): lower edges map to 0, upper edges to 1."""
    lows_highs = [v for lv, w in DEFAULT_WINDOWS for v in (lv - w / 2, lv + w / 2)]
    pixels = np.array(lows_highs * 11 + [0.0] * 2, np.float32)[:64].reshape(1, 8, 8)
    out = assert_matches_reference(pixels, make_contract(8), boxes=np.array([[0, 0, 8, 8]]))
    for c, (level, width) in enumerate(DEFAULT_WINDOWS):
        unit = out[0, c] * 0.5 + 0.5
        np.testing.assert_allclose(unit[pixels[0] == level - width / 2], 0.0, atol=1e-6)
        np.testing.assert_allclose(unit[pixels[0] == level + width / 2], 1.0, atol=1e-6)


def test_bilinear_sampling_by_hand() -> None:
    """A 2 x 2 image upsampled to 8: sample points and air outside follow the specification."""
    pixels = np.array([[[0.0, 80.0], [80.0, 80.0]]])
    contract = make_contract(8, windows=[(40.0, 80.0)], mean=[0.0], std=[1.0])
    out = window_batch(pixels, contract)[0, 0]
    # Output i samples y = (i + 0.5) * 2 / 8 - 0.5; i = 2 -> 0.125, i = 3 -> 0.375.
    fy, fx = 0.125, 0.375
    top = 0.0 + fx * (1.0 - 0.0)
    expected = top + fy * (1.0 - top)
    assert out[2, 3] == pytest.approx(expected, abs=1e-6)
    # i = 0 samples y = -0.375: it blends row 0 with air above (air windows to 0 here).
    # j = 5 samples x = 0.875 in row 0: 0.875; row 0 weighs 0.625 against the air above.
    assert out[0, 5] == pytest.approx(0.625 * 0.875, abs=1e-6)
    assert out[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert out[7, 7] == pytest.approx(0.625 * 0.625, abs=1e-6)


@pytest.mark.parametrize("shape", [(1, 7, 13), (2, 37, 51), (3, 50, 31), (1, 1, 1), (2, 64, 64)])
@pytest.mark.parametrize("size", [8, 9, 31, 64, 101])
def test_odd_sizes_non_square_upscale_and_downscale(shape, size) -> None:
    rng = np.random.default_rng(sum(shape) + size)
    pixels = rng.uniform(-1100, 2500, shape).astype(np.float32)
    assert_matches_reference(pixels, make_contract(size))


def test_default_box_is_centred_square_with_air_around_short_side() -> None:
    pixels = np.full((1, 20, 40), 60.0, np.float32)
    contract = make_contract(40, windows=[(40.0, 80.0)], mean=[0.0], std=[1.0])
    np.testing.assert_array_equal(centred_boxes(1, 20, 40), [[-10, 0, 30, 40]])
    out = window_batch(pixels, contract)[0, 0]
    np.testing.assert_allclose(out[:10], 0.0, atol=1e-6)  # air above the image
    np.testing.assert_allclose(out[30:], 0.0, atol=1e-6)  # and below it
    np.testing.assert_allclose(out[10:30], 0.75, atol=1e-6)  # 60 HU in the 40/80 window


def test_boxes_partly_and_fully_outside_the_image() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(-1024, 3000, (4, 40, 56)).astype(np.int16)
    boxes = np.array(
        [[-20, -10, 30, 40], [25, 40, 80, 100], [-5, -5, 61, 61], [100, 100, 120, 150]]
    )
    out = assert_matches_reference(pixels, make_contract(24), boxes=boxes)
    contract = make_contract(24)
    air = np.array(
        [(min(max((AIR_HU - (lv - w / 2)) / w, 0), 1) - 0.5) / 0.5 for lv, w in contract.windows]
    )
    np.testing.assert_allclose(out[3], np.broadcast_to(air[:, None, None], out[3].shape), atol=1e-6)


@pytest.mark.parametrize(
    "slope, intercept", [(1.0, -1024.0), (0.5, -1024.0), (2.0, 0.0), (0.5, 0.0)]
)
def test_slope_intercept_match_precomputed_hu(slope, intercept) -> None:
    rng = np.random.default_rng(4)
    raw = rng.integers(0, 4096, (3, 33, 47)).astype(np.int16)
    contract = make_contract(29)
    out = assert_matches_reference(raw, contract, slopes=slope, intercepts=intercept)
    hu = raw.astype(np.float64) * slope + intercept
    np.testing.assert_allclose(out, window_batch(hu, contract), atol=TOLERANCE)


def test_per_slice_slopes_and_intercepts() -> None:
    rng = np.random.default_rng(5)
    raw = rng.integers(0, 4096, (3, 30, 30)).astype(np.uint16)
    slopes, intercepts = np.array([1.0, 0.5, 1.25]), np.array([-1024.0, -1024.0, -2048.0])
    out = assert_matches_reference(raw, make_contract(17), slopes=slopes, intercepts=intercepts)
    for k in range(3):
        hu = raw[k : k + 1] * slopes[k] + intercepts[k]
        np.testing.assert_allclose(out[k : k + 1], window_batch(hu, make_contract(17)), atol=1e-5)


@pytest.mark.parametrize(
    "dtype",
    [
        np.int8,
        np.uint8,
        np.int16,
        np.uint16,
        np.int32,
        np.int64,
        np.uint32,
        np.float16,
        np.float32,
        np.float64,
    ],
)
def test_all_dtypes(dtype) -> None:
    rng = np.random.default_rng(6)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -2000), min(info.max, 3000)) if info else (-2000, 3000)
    pixels = rng.integers(low, high, (2, 21, 26)).astype(dtype)
    contract = make_contract(16)
    out = assert_matches_reference(pixels, contract, slopes=1.0, intercepts=-40.0)
    np.testing.assert_allclose(
        out, window_batch(pixels.astype(np.float64), contract, intercepts=-40.0), atol=1e-5
    )


def test_kernel_dtypes_are_the_documented_ones() -> None:
    assert {d.name for d in KERNEL_DTYPES} == {"int16", "uint16", "int32", "float32", "float64"}


@pytest.mark.parametrize(
    "windows",
    [[(40.0, 80.0)], [(40.0, 80.0), (80.0, 200.0), (600.0, 2800.0), (40.0, 380.0)]],
)
def test_one_and_four_window_contracts(windows) -> None:
    rng = np.random.default_rng(7)
    pixels = rng.uniform(-1100, 2000, (2, 45, 45)).astype(np.float32)
    contract = make_contract(
        20,
        windows,
        mean=[0.1 * i for i in range(len(windows))],
        std=[0.2 + 0.1 * i for i in range(len(windows))],
    )
    out = assert_matches_reference(pixels, contract)
    assert out.shape == (2, len(windows), 20, 20)


def test_out_buffer_is_reused() -> None:
    rng = np.random.default_rng(8)
    contract = make_contract(12)
    buffer = np.full((2, 3, 12, 12), np.nan, np.float32)
    first = rng.uniform(-1000, 1000, (2, 30, 30))
    second = rng.uniform(-1000, 1000, (2, 30, 30))
    assert window_batch(first, contract, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, window_batch(first, contract))
    assert window_batch(second, contract, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, window_batch(second, contract))
    assert window_reference(second, contract, out=buffer) is buffer


@pytest.mark.parametrize(
    "out",
    [
        np.empty((2, 3, 12, 12), np.float64),
        np.empty((2, 3, 12, 13), np.float32),
        np.empty((2, 3, 12, 24), np.float32)[..., ::2],
        np.empty((1, 3, 12, 12), np.float32),
    ],
)
def test_bad_out_buffer_is_refused(out) -> None:
    with pytest.raises(ValueError, match="out must be"):
        window_batch(np.zeros((2, 10, 10)), make_contract(12), out=out)


def test_bad_arguments_are_refused() -> None:
    contract = make_contract(12)
    with pytest.raises(ValueError, match="N, H, W"):
        window_batch(np.zeros((10, 10)), contract)
    with pytest.raises(TypeError, match="dtype"):
        window_batch(np.zeros((1, 10, 10), bool), contract)
    with pytest.raises(ValueError, match="empty"):
        window_batch(np.zeros((1, 10, 10)), contract, boxes=np.array([[5, 0, 5, 10]]))
    with pytest.raises(ValueError, match="boxes"):
        window_batch(np.zeros((2, 10, 10)), contract, boxes=np.array([[0, 0, 10, 10]]))
    with pytest.raises(ValueError, match="slopes"):
        window_batch(np.zeros((2, 10, 10)), contract, slopes=np.ones(3))


def test_empty_batch() -> None:
    out = window_batch(np.zeros((0, 10, 10), np.int16), make_contract(12))
    assert out.shape == (0, 3, 12, 12)


def test_non_contiguous_input() -> None:
    rng = np.random.default_rng(9)
    pixels = rng.uniform(-1000, 2000, (3, 40, 60)).astype(np.float32)[:, ::2, 1::3]
    assert_matches_reference(pixels, make_contract(16))


@st.composite
def batches(draw):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype = draw(st.sampled_from([np.int16, np.uint16, np.int32, np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -3024), min(info.max, 4095)) if info else (-3024.0, 4095.0)
    pixels = rng.uniform(low, high, (n, h, w)).astype(dtype)
    size = draw(st.integers(8, 48))
    y0 = rng.integers(-h, h, n)
    x0 = rng.integers(-w, w, n)
    boxes = np.stack(
        [y0, x0, y0 + rng.integers(1, 2 * h + 2, n), x0 + rng.integers(1, 2 * w + 2, n)], axis=1
    )
    if draw(st.booleans()):
        boxes = None
    windows = draw(
        st.lists(st.tuples(st.floats(-1000, 2000), st.floats(1, 4000)), min_size=1, max_size=4)
    )
    mean = draw(st.lists(st.floats(-1, 1), min_size=len(windows), max_size=len(windows)))
    std = draw(st.lists(st.floats(0.05, 2), min_size=len(windows), max_size=len(windows)))
    slopes = rng.choice([0.5, 1.0, 1.5, 2.0], n)
    intercepts = rng.choice([-1024.0, -1000.0, 0.0, 24.5, -2048.0], n)
    contract = make_contract(size, windows, mean, std)
    return pixels, contract, boxes, slopes, intercepts


@settings(max_examples=60, deadline=None)
@given(batches())
def test_random_inputs_match_reference(batch) -> None:
    pixels, contract, boxes, slopes, intercepts = batch
    assert_matches_reference(pixels, contract, boxes=boxes, slopes=slopes, intercepts=intercepts)
