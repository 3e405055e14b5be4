"""Localization metrics on hand-made maps and masks."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.runtime.explain.metrics import (
    boxes_to_mask,
    energy_share,
    localization,
    otsu_iou,
    pointing_hit,
)


def _mask() -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    return mask


def test_boxes_to_mask_rounds_outwards_and_clips():
    mask = boxes_to_mask([(2.2, 3.0, 4.5, 5.0, "subdural"), (18, 18, 25, 30)], (20, 20))
    assert mask[2:5, 3:5].all() and mask.sum() == 3 * 2 + 2 * 2
    assert not boxes_to_mask([(5, 5, 5, 9)], (20, 20)).any()  # empty box


def test_pointing_game_hits_and_misses():
    mask = _mask()
    m = np.zeros((20, 20))
    m[7, 7] = 1.0
    assert pointing_hit(m, mask)
    m[15, 15] = 2.0
    assert not pointing_hit(m, mask)
    assert not pointing_hit(np.zeros((20, 20)), mask)  # no evidence anywhere is a miss
    plateau = np.zeros((20, 20))
    plateau[4:11, 4:11] = 1.0  # its middle (7, 7) is in the mask, its corner (4, 4) is not
    assert pointing_hit(plateau, mask)


def test_energy_share_counts_only_positive_mass():
    mask = _mask()
    m = np.zeros((20, 20))
    m[5:10, 5:10] = 1.0  # 25 inside
    m[0, 0:25 // 5] = 5.0  # 25 outside
    m[19, :] = -100.0  # negative evidence does not count
    assert energy_share(m, mask) == pytest.approx(0.5)
    assert energy_share(np.zeros((20, 20)), mask) == 0.0


def test_otsu_iou_of_a_map_shaped_like_the_mask():
    mask = _mask()
    m = np.where(mask, 0.9, 0.05)
    assert otsu_iou(m, mask) == pytest.approx(1.0)
    shifted = np.roll(m, 5, axis=1)  # same size, 5 px to the right: no overlap
    assert otsu_iou(shifted, mask) == 0.0
    half = np.roll(m, 2, axis=1)  # overlap 5x3 of union 5x7
    assert otsu_iou(half, mask) == pytest.approx(15 / 35)


def test_localization_bundles_all_three():
    mask = _mask()
    m = np.where(mask, 1.0, 0.0)
    assert localization(m, mask) == {"pointing": 1.0, "energy": 1.0, "iou": 1.0}
    with pytest.raises(ValueError, match="differ in shape"):
        localization(m[:10], mask)
