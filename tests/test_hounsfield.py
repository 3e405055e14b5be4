"""Each HU quirk fix of ichrt.runtime.hounsfield on its own, plus their composition."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pydicom.multival import MultiValue
from pydicom.valuerep import DSfloat

from ichrt.runtime.hounsfield import (
    AIR_HU,
    HU_MAX,
    HU_MIN,
    HUParams,
    apply_rescale,
    clamp_hu,
    invert_monochrome1,
    needs_rsna_unwrap,
    pad_to_air,
    padding_mask,
    rescale_parameters,
    stored_to_hu,
    unwrap_12bit,
)

# --------------------------------------------------------------------- rescale parameters


@pytest.mark.parametrize(
    ("slope", "intercept", "expected"),
    [
        (None, None, (1.0, 0.0)),
        (DSfloat("2.5"), DSfloat("-1024"), (2.5, -1024.0)),
        (MultiValue(DSfloat, ["1", "1"]), MultiValue(DSfloat, ["-1024", "-1000"]), (1.0, -1024.0)),
        ([0.5], [-10.0], (0.5, -10.0)),
        ("1\\1", "-1024\\-1024", (1.0, -1024.0)),
        (b"2 ", b"-1000", (2.0, -1000.0)),
        ("", "  ", (1.0, 0.0)),
        ([], [], (1.0, 0.0)),
        (1, None, (1.0, 0.0)),
        (None, -1024, (1.0, -1024.0)),
    ],
)
def test_rescale_parameters_missing_and_multivalued(slope, intercept, expected) -> None:
    assert rescale_parameters(slope, intercept) == expected


@pytest.mark.parametrize(
    ("slope", "intercept", "message"),
    [
        ("abc", 0, "RescaleSlope is not a number"),
        (1, "x1", "RescaleIntercept is not a number"),
        (0, 0, "RescaleSlope is 0"),
        (float("nan"), 0, "RescaleSlope is not finite"),
        (1, float("inf"), "RescaleIntercept is not finite"),
    ],
)
def test_rescale_parameters_reject_unusable_values(slope, intercept, message) -> None:
    with pytest.raises(ValueError, match=message):
        rescale_parameters(slope, intercept)


# --------------------------------------------------------------------- RSNA 2019 bad rescale


@pytest.mark.parametrize(
    ("bits", "representation", "intercept", "expected"),
    [
        (12, 0, 0.0, True),
        (12, 0, 1.0, True),
        (12, 0, -99.0, True),
        (12, 0, -100.0, False),
        (12, 0, -1024.0, False),
        (12, 1, 0.0, False),
        (16, 0, 0.0, False),
        (16, 1, -1024.0, False),
    ],
)
def test_needs_rsna_unwrap_only_for_the_known_case(
    bits, representation, intercept, expected
) -> None:
    assert needs_rsna_unwrap(bits, representation, intercept) is expected


def test_unwrap_12bit_known_values() -> None:
    stored = np.array([0, 40, 1500, 2047, 2048, 3096, 4095], np.int32)
    assert unwrap_12bit(stored).tolist() == [0, 40, 1500, 2047, -2048, -1000, -1]
    assert stored.tolist() == [0, 40, 1500, 2047, 2048, 3096, 4095], "input must be untouched"


def _kaggle_fix(stored: np.ndarray) -> np.ndarray:
    """The public RSNA 2019 fix: x = stored + 1000; x[x >= 4096] -= 4096; intercept -1000."""
    x = stored.astype(np.int32) + 1000
    x[x >= 4096] -= 4096
    return x - 1000


@given(arrays(np.int32, 64, elements=st.integers(0, 4095)))
def test_unwrap_12bit_is_twos_complement_and_matches_kaggle_where_it_is_right(stored) -> None:
    hu = unwrap_12bit(stored)
    assert ((hu - stored) % 4096 == 0).all()
    assert hu.min() >= -2048 and hu.max() <= 2047
    kaggle = _kaggle_fix(stored)
    valid = kaggle >= -1000  # the Kaggle fix is right for every HU from air upwards...
    np.testing.assert_array_equal(hu[valid & (kaggle <= 2047)], kaggle[valid & (kaggle <= 2047)])
    # ...and turns air noise below -1000 HU into bright +2048..+3095 HU; unwrapping keeps it < 0.
    below_air = (stored >= 2048) & (stored < 3096)
    assert (hu[below_air] < -1000).all() and (kaggle[below_air] >= 2048).all()


def test_unwrap_12bit_in_place() -> None:
    values = np.array([3096.0, 10.0], np.float32)
    assert unwrap_12bit(values, out=values) is values
    assert values.tolist() == [-1000.0, 10.0]


# --------------------------------------------------------------------- MONOCHROME1


def test_invert_monochrome1_known_values() -> None:
    assert invert_monochrome1(np.array([0, 1, 4095]), 12, signed=False).tolist() == [4095, 4094, 0]
    assert invert_monochrome1(np.array([-2048, 0, 2047]), 12, signed=True).tolist() == [
        2047,
        -1,
        -2048,
    ]


@given(st.integers(8, 16), st.booleans(), st.data())
def test_invert_monochrome1_is_an_involution_within_range(bits, signed, data) -> None:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    values = data.draw(arrays(np.int32, 16, elements=st.integers(low, high)))
    once = invert_monochrome1(values, bits, signed)
    assert once.min() >= low and once.max() <= high
    np.testing.assert_array_equal(invert_monochrome1(once, bits, signed), values)
    order = np.argsort(values, kind="stable")
    assert (np.diff(once[order]) <= 0).all(), "inversion must reverse the order"


# --------------------------------------------------------------------- padding


def test_padding_mask_single_value_and_range() -> None:
    stored = np.array([-2000, -1999, 0, 5, 10, 11])
    assert padding_mask(stored, None) is None
    assert padding_mask(stored, -2000).tolist() == [True, False, False, False, False, False]
    assert padding_mask(stored, 5, 10).tolist() == [False, False, False, True, True, False]
    assert padding_mask(stored, 10, 5).tolist() == [False, False, False, True, True, False]


def test_pad_to_air_common_values_nan_and_mask() -> None:
    hu = np.array([-3024, -2048, -2000, -1999, -1024, -1000, 40, np.nan, 40], np.float32)
    mask = np.zeros(hu.shape, bool)
    mask[-1] = True
    out = pad_to_air(hu, mask)
    assert out.tolist() == [AIR_HU, AIR_HU, AIR_HU, -1999, -1024, -1000, 40, AIR_HU, AIR_HU]
    assert hu[0] == -3024, "input must be untouched"


@given(arrays(np.float32, 32, elements=st.floats(-40000, 40000, width=32)))
def test_pad_to_air_keeps_everything_above_the_threshold(hu) -> None:
    out = pad_to_air(hu)
    keep = hu > -2000
    np.testing.assert_array_equal(out[keep], hu[keep])
    assert (out[~keep] == AIR_HU).all()


# --------------------------------------------------------------------- rescale and clamp


def test_apply_rescale_float32_and_in_place() -> None:
    stored = np.array([0, 1024, 4095], np.uint16)
    hu = apply_rescale(stored, 1.0, -1024.0)
    assert hu.dtype == np.float32 and hu.tolist() == [-1024.0, 0.0, 3071.0]
    values = stored.astype(np.float32)
    assert apply_rescale(values, 0.5, 10.0, out=values) is values
    assert values.tolist() == [10.0, 522.0, 2057.5]


@given(arrays(np.float32, 32, elements=st.floats(-1e6, 1e6, width=32)))
def test_clamp_hu_range_and_idempotence(hu) -> None:
    out = clamp_hu(hu)
    assert out.min() >= HU_MIN and out.max() <= HU_MAX
    np.testing.assert_array_equal(clamp_hu(out), out)
    inside = (hu >= HU_MIN) & (hu <= HU_MAX)
    np.testing.assert_array_equal(out[inside], hu[inside])


# --------------------------------------------------------------------- composition


def test_stored_to_hu_rsna_case_end_to_end() -> None:
    truth = np.array([[-1000, -1010, 35], [70, 1500, 2047]], np.float32)
    stored = (truth.astype(np.int32) & 0xFFF).astype(np.uint16)  # 12-bit two's complement
    params = HUParams(slope=1.0, intercept=0.0, bits_stored=12, signed=False)
    hu, notes = stored_to_hu(stored, params)
    np.testing.assert_array_equal(hu, truth)
    assert hu.dtype == np.float32 and any("RSNA" in note for note in notes)


def test_stored_to_hu_ordinary_unsigned_is_not_unwrapped() -> None:
    stored = np.array([[0, 1064, 3096]], np.uint16)
    hu, notes = stored_to_hu(stored, HUParams(intercept=-1024.0, bits_stored=12, signed=False))
    assert hu.tolist() == [[-1024.0, 40.0, 2072.0]] and notes == ()


def test_stored_to_hu_monochrome1_inverted_only_without_rescale() -> None:
    stored = np.array([[0, 4095]], np.uint16)
    with_rescale, _ = stored_to_hu(
        stored, HUParams(intercept=-1024.0, bits_stored=12, signed=False, monochrome1=True)
    )
    assert with_rescale.tolist() == [[-1024.0, 3071.0]]
    without, notes = stored_to_hu(
        stored,
        HUParams(has_rescale=False, bits_stored=12, signed=False, monochrome1=True, intercept=0.0),
    )
    assert without.tolist() == [[3071.0, 0.0]]
    assert any("MONOCHROME1" in note for note in notes)


def test_stored_to_hu_padding_value_before_rescale_and_literal_padding_after() -> None:
    stored = np.array([[-2000, -976, 1064, 0]], np.int16)
    params = HUParams(intercept=-1024.0, signed=True, padding_value=0)
    hu, _ = stored_to_hu(stored, params)
    # -2000 stored = -3024 HU, -976 stored = -2000 HU: padding by value; 0 by PixelPaddingValue
    assert hu.tolist() == [[AIR_HU, AIR_HU, 40.0, AIR_HU]]
    assert stored.tolist() == [[-2000, -976, 1064, 0]]
