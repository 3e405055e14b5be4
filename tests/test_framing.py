"""head_boxes: square boxes around the head, not around the holder, text or padding."""

from __future__ import annotations

import numpy as np
import pytest
from windowing_helpers import as_windowed_source, synthetic_head

from ichrt.runtime.framing import GRID, head_boxes
from ichrt.runtime.windowing import centred_boxes

MARGIN = 0.05


def assert_frames(
    box: np.ndarray,
    extent: tuple[int, int, int, int],
    shape: tuple[int, int],
    margin: float = MARGIN,
) -> None:
    """The box is square, holds the whole head and is at most one grid block wider than the
    head's larger side grown by the margin."""
    y0, x0, y1, x1 = (int(v) for v in box)
    hy0, hx0, hy1, hx1 = extent
    block = -(-max(shape) // GRID)
    assert y1 - y0 == x1 - x0, f"box {box} is not square"
    assert y0 <= hy0 and x0 <= hx0 and y1 >= hy1 and x1 >= hx1, f"box {box} cuts head {extent}"
    side = max(hy1 - hy0, hx1 - hx0)
    assert y1 - y0 <= side * (1 + 2 * margin) + 2 * block, f"box {box} too large for {extent}"


@pytest.mark.parametrize(
    "shape, centre, radii, holder_gap, thickness",
    [
        ((512, 512), (250, 256), (170, 140), 10.0, 10.0),
        ((512, 512), (230, 280), (150, 125), 0.0, 14.0),  # thick holder touching the head
        ((512, 512), (200, 256), (150, 125), 3.0, 20.0),  # very thick holder, near
        ((512, 512), (300, 200), (120, 100), 25.0, 10.0),  # off-centre, far holder
        ((400, 512), (190, 256), (150, 130), 8.0, 10.0),  # non-square image
        ((640, 640), (330, 320), (230, 190), 12.0, 12.0),  # larger matrix
        ((512, 512), (256, 256), (24, 20), None, 0.0),  # tiny head, no holder
        ((512, 512), (200, 256), (30, 26), 4.0, 8.0),  # tiny head on a holder
        ((256, 256), (128, 128), (100, 80), 6.0, 5.0),
    ],
)
def test_box_frames_head_not_holder_or_text(shape, centre, radii, holder_gap, thickness) -> None:
    hu, extent = synthetic_head(
        shape, centre, radii, holder_gap=holder_gap, holder_thickness=thickness
    )
    box = head_boxes(hu[None], margin=MARGIN)[0]
    assert_frames(box, extent, shape)


def test_padding_outside_field_of_view_is_air() -> None:
    hu, extent = synthetic_head(fov_padding=-3024.0)
    assert_frames(head_boxes(hu[None])[0], extent, hu.shape)


@pytest.mark.parametrize("background", [-1000.0, None])
@pytest.mark.parametrize("level, width", [(40.0, 120.0), (40.0, 80.0), (50.0, 400.0)])
def test_windowed_8bit_sources(level, width, background) -> None:
    """8-bit images windowed by their publisher and mapped back to HU (air or window floor)."""
    hu, extent = synthetic_head(holder_gap=8.0)
    source = as_windowed_source(hu, level, width, background)
    assert_frames(head_boxes(source[None])[0], extent, hu.shape)


@pytest.mark.parametrize("fill", [-1000.0, -3024.0, 0.0])
def test_empty_slice_falls_back_to_centred_square(fill) -> None:
    hu = np.full((2, 400, 512), fill, np.float32)
    np.testing.assert_array_equal(head_boxes(hu), centred_boxes(2, 400, 512))
    np.testing.assert_array_equal(head_boxes(hu)[0], [-56, 0, 456, 512])


def test_batch_slices_are_independent_and_deterministic() -> None:
    a, _ = synthetic_head(centre=(200, 230), radii=(150, 120), seed=1)
    b, _ = synthetic_head(centre=(280, 290), radii=(90, 80), seed=2)
    empty = np.full_like(a, -1000.0)
    batch = np.stack([a, b, empty])
    boxes = head_boxes(batch)
    assert boxes.shape == (3, 4) and boxes.dtype == np.int32
    for k in range(3):
        np.testing.assert_array_equal(boxes[k], head_boxes(batch[k : k + 1])[0])
    np.testing.assert_array_equal(boxes, head_boxes(batch))
    assert not np.array_equal(boxes[0], boxes[1])


def test_margin_grows_the_box() -> None:
    hu, extent = synthetic_head()
    tight = head_boxes(hu[None], margin=0.0)[0]
    loose = head_boxes(hu[None], margin=0.2)[0]
    assert_frames(loose, extent, hu.shape, margin=0.2)
    assert loose[2] - loose[0] > tight[2] - tight[0]
    block = -(-max(hu.shape) // GRID)
    y0, x0, y1, x1 = tight
    hy0, hx0, hy1, hx1 = extent
    # Without margin the box may fall inside the head by less than one grid block.
    assert y0 <= hy0 + block and x0 <= hx0 + block and y1 >= hy1 - block and x1 >= hx1 - block


def test_integer_input_matches_float() -> None:
    hu, _ = synthetic_head()
    np.testing.assert_array_equal(
        head_boxes(np.rint(hu).astype(np.int16)[None]), head_boxes(np.rint(hu)[None])
    )


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="N, H, W"):
        head_boxes(np.zeros((8, 8)))
    with pytest.raises(TypeError, match="dtype"):
        head_boxes(np.zeros((1, 8, 8), bool))
    with pytest.raises(ValueError, match="margin"):
        head_boxes(np.zeros((1, 8, 8)), margin=-0.1)
