"""Shared explanation geometry and scaling: framing undo, normalization, Otsu, peak."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.explain.base import normalize, otsu_threshold, peak_location, to_slice


def _cell_centres(start: int, stop: int, n: int) -> np.ndarray:
    """Source coordinate of each of n map cells spread over [start, stop) (half-pixel centres)."""
    return start + (np.arange(n) + 0.5) * (stop - start) / n - 0.5


@pytest.mark.parametrize("box,h,w", [((0, 0, 40, 40), 5, 5), ((-10, 4, 50, 64), 7, 12),
                                     ((12, -6, 30, 20), 3, 4)])
def test_to_slice_inverts_the_framing_geometry(box, h, w):
    # A map whose cells hold their own source row (a linear function) comes back as the row
    # index at every slice pixel between the first and last cell centres; outside the box is 0.
    shape = (40, 64)
    rows = _cell_centres(box[0], box[2], h)
    cols = _cell_centres(box[1], box[3], w)
    out_rows = to_slice(np.repeat(rows[:, None], w, 1) + 1000, box, shape)
    out_cols = to_slice(np.repeat(cols[None, :], h, 0) + 1000, box, shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    in_box = (yy >= box[0]) & (yy < box[2]) & (xx >= box[1]) & (xx < box[3])
    interior = in_box & (yy >= rows[0]) & (yy <= rows[-1]) & (xx >= cols[0]) & (xx <= cols[-1])
    assert interior.sum() > 20
    np.testing.assert_allclose(out_rows[interior], yy[interior] + 1000, atol=1e-3)
    np.testing.assert_allclose(out_cols[interior], xx[interior] + 1000, atol=1e-3)
    assert not out_rows[~in_box].any() and (out_rows[in_box] > 0).all()


def test_to_slice_lands_the_tensor_back_on_the_slice():
    # Window a ramp slice through a framing box with the runtime's own windowing, bring the
    # tensor's brain channel back with to_slice: the slice's windowed values reappear.
    from ichrt.runtime.windowing import window_reference, window_unit

    contract = ModelContract(input_size=24, mean=(0, 0, 0), std=(1, 1, 1), framing="none")
    yy, xx = np.mgrid[:50, :70].astype(np.float32)
    hu = (5 + 0.5 * yy + 0.3 * xx).astype(np.float32)  # 5..50 HU: linear inside the window
    box = np.array([[4, 10, 46, 52]])
    tensor = window_reference(hu[None], contract, boxes=box)[0, 0]
    back = to_slice(tensor, box[0], hu.shape)
    expected = window_unit(hu, *contract.windows[0])
    interior = np.zeros(hu.shape, bool)
    interior[6:44, 12:50] = True
    np.testing.assert_allclose(back[interior], expected[interior], atol=1e-5)


@pytest.mark.torch
def test_to_slice_matches_opencv_resize():
    import cv2

    rng = np.random.default_rng(1)
    heatmap = rng.random((7, 7)).astype(np.float32)
    ours = to_slice(heatmap, (0, 0, 96, 96), (96, 96))
    np.testing.assert_allclose(ours, cv2.resize(heatmap, (96, 96)), atol=1e-5)


def test_normalize_keeps_zero_and_scales_the_positive_part():
    m = np.array([[-2.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(normalize(m), [[0, 0], [0.25, 1.0]])
    assert not normalize(np.zeros((3, 3))).any()
    assert not normalize(-np.ones((3, 3))).any()


def test_otsu_splits_two_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 5000), rng.normal(0.8, 0.05, 500)])
    t = otsu_threshold(values)
    assert (values[5000:] > t).all() and (values[:5000] <= t).mean() > 0.99
    assert otsu_threshold(np.full(10, 0.3)) == 0.3


def test_otsu_matches_the_textbook_definition():
    # Exhaustive search of the between-class variance over the histogram bin centres.
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.random(300) * 0.5, 0.6 + rng.random(100) * 0.4])
    counts, edges = np.histogram(values, bins=256, range=(values.min(), values.max()))
    centres = (edges[:-1] + edges[1:]) / 2
    best, best_t = -1.0, None
    for k in range(255):
        w1, w2 = counts[: k + 1].sum(), counts[k + 1:].sum()
        m1 = (counts[: k + 1] * centres[: k + 1]).sum() / w1
        m2 = (counts[k + 1:] * centres[k + 1:]).sum() / w2
        if w1 * w2 * (m1 - m2) ** 2 > best:
            best, best_t = w1 * w2 * (m1 - m2) ** 2, centres[k]
    assert otsu_threshold(values) == pytest.approx(best_t)


def test_peak_location_takes_the_middle_of_a_plateau():
    m = np.zeros((20, 20))
    m[4:9, 10:15] = 2.0
    m[0, 0] = 1.0
    assert peak_location(m) == (6, 12)
    assert peak_location(np.zeros((4, 4))) is None
