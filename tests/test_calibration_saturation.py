"""The VPMADDUBSW saturation emulation against a brute-force evaluation of every pair."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.calibration.saturation import layer_saturation, risky_pairs


def brute_force(x, pad, w, stride, pads, layout):
    """Outputs with any adjacent product pair outside int16, evaluating all pairs naively."""
    o_ch, _, kh, kw = w.shape
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])),
                constant_values=pad)
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    order = w if layout == "OIHW" else w.transpose(0, 2, 3, 1)
    flat_w = order.reshape(o_ch, -1).astype(np.int64)
    hits = 0
    for n in range(x.shape[0]):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
                a = (patch if layout == "OIHW" else patch.transpose(1, 2, 0)).ravel()
                k = a.size - a.size % 2
                sums = a[0:k:2] * flat_w[:, 0:k:2] + a[1:k:2] * flat_w[:, 1:k:2]
                hits += int(((sums > 32767) | (sums < -32768)).any(axis=1).sum())
    return hits


@pytest.mark.parametrize("stride,pads", [(1, (1, 1, 1, 1)), (2, (0, 1, 2, 0))])
def test_layer_saturation_matches_brute_force(stride, pads):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 3, 7, 6))
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    outputs, affected = layer_saturation(x, 200, w, (stride, stride), pads)
    expected = max(brute_force(x, 200, w, stride, pads, layout) for layout in ("OIHW", "OHWI"))
    assert affected == expected > 0
    ho = (7 + pads[0] + pads[2] - 3) // stride + 1
    wo = (6 + pads[1] + pads[3] - 3) // stride + 1
    assert outputs == 2 * 4 * ho * wo


def test_seven_bit_weights_have_no_risky_pairs():
    w = np.random.default_rng(0).integers(-64, 64, (8, 4, 3, 3)).astype(np.int8)
    assert all(risky_pairs(w, layout)[0].size == 0 for layout in ("OIHW", "OHWI"))
    outputs, affected = layer_saturation(np.full((1, 4, 5, 5), 255), 0, w)
    assert affected == 0 and outputs == 8 * 3 * 3
