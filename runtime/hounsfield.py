"""Stored pixel values -> Hounsfield units, one small NumPy function per quirk of real archives.

Each fix is pure in the NumPy sense: it returns a new array unless ``out`` is given (pass the
input itself as ``out`` to work in place, as :func:`stored_to_hu` does so that a slice costs one
float32 allocation). pydicom's :func:`~pydicom.pixels.apply_modality_lut` is not used because it
returns float64 and cannot cope with multi-valued or missing rescale attributes.

Order of the fixes (see :func:`stored_to_hu`): stored values -> RSNA 12-bit unwrap -> MONOCHROME1
inversion (only without a rescale) -> slope/intercept -> padding to air -> clamp.

:func:`stored_to_hu` and its steps are the reference; :func:`stored_to_hu_fused` does the same
in one Numba pass (read each stored value once, write its HU once), which the reader uses and the
tests hold to the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit

#: HU of air; padding outside the field of view becomes this.
AIR_HU = -1000.0
#: Nothing real is below air; anything at or below this after rescale is padding
#: (scanners use -2000, -2048, -3024, -3072 or -32768 for pixels outside the reconstruction circle).
PADDING_HU = -2000.0
#: The sane HU range kept after the fixes: the classic 12-bit CT scale. Metal above 3071 HU is
#: clipped (the widest window used, bone 600/2800, ends at 2000 HU).
HU_MIN = -1024.0
HU_MAX = 3071.0
#: RescaleSlope a CT file may carry: 1 in practice (0.5 to 4 are seen); anything outside this
#: range (1e38, negative) is a broken or hostile header, not a CT scale.
SLOPE_RANGE = (1e-3, 1e3)
#: Largest |RescaleIntercept| accepted (CT uses 0, -1000, -1024, -8192 and the like).
MAX_ABS_INTERCEPT = 65536.0
#: Share of pixels that may lie outside :data:`PLAUSIBLE_HU` (metal, odd padding) before a slice
#: is rejected as not CT; and the share that may be padding before it counts as empty.
MAX_IMPLAUSIBLE_FRACTION = 0.05
MAX_PADDING_FRACTION = 0.95
#: HU a CT scanner can produce, padding values included (-32768 stored with intercept -1024).
PLAUSIBLE_HU = (-33792.0, HU_MAX)


class ImplausibleHU(ValueError):
    """Pixel values that no CT scanner produces: the rescale or the pixel data are wrong."""


@dataclass(frozen=True)
class HUParams:
    """What a header says about turning its stored values into HU."""

    slope: float = 1.0
    intercept: float = 0.0
    #: False when the file carried neither RescaleSlope nor RescaleIntercept.
    has_rescale: bool = True
    bits_stored: int = 16
    #: PixelRepresentation == 1.
    signed: bool = True
    monochrome1: bool = False
    #: PixelPaddingValue and PixelPaddingRangeLimit, in stored values.
    padding_value: int | None = None
    padding_limit: int | None = None


def _first_number(value: Any, name: str) -> float | None:
    """The first value of a possibly multi-valued numeric element, or None when empty."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        value = value.split("\\")[0].strip() or None
    elif isinstance(value, Sequence):
        value = value[0] if len(value) else None
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} is not finite: {value!r}")
    return number


def rescale_parameters(slope: Any, intercept: Any) -> tuple[float, float]:
    """(slope, intercept) from RescaleSlope/RescaleIntercept values as files hold them.

    Missing or empty values default to 1 and 0; multi-valued ones (seen in the wild as
    ``-1024\\-1024``) use their first value. Raises ValueError for non-numbers, a zero slope
    (which would erase the image) and values outside :data:`SLOPE_RANGE` /
    :data:`MAX_ABS_INTERCEPT`.
    """
    m = _first_number(slope, "RescaleSlope")
    b = _first_number(intercept, "RescaleIntercept")
    m = 1.0 if m is None else m
    b = 0.0 if b is None else b
    if m == 0.0:
        raise ValueError("RescaleSlope is 0")
    if not SLOPE_RANGE[0] <= m <= SLOPE_RANGE[1]:
        raise ValueError(f"RescaleSlope {m:g} is outside the range CT uses "
                         f"({SLOPE_RANGE[0]:g} to {SLOPE_RANGE[1]:g})")
    if abs(b) > MAX_ABS_INTERCEPT:
        raise ValueError(f"RescaleIntercept {b:g} is outside the range CT uses "
                         f"(|intercept| <= {MAX_ABS_INTERCEPT:g})")
    return m, b


def needs_rsna_unwrap(bits_stored: int, pixel_representation: int, intercept: float) -> bool:
    """True for the RSNA 2019 bad-rescale files.

    These declare 12 unsigned bits and an intercept near 0 while holding HU as 12-bit two's
    complement: air (-1000 HU) is stored as 3096. A genuine unsigned CT has an intercept near
    -1024, hence the Kaggle test ``intercept > -100``.
    """
    return bits_stored == 12 and pixel_representation == 0 and intercept > -100


def _output(
    values: np.ndarray, out: np.ndarray | None, dtype: np.dtype | None = None
) -> np.ndarray:
    """The array a fix writes to: a copy of ``values``, or ``out`` filled with them."""
    if out is None:
        return np.array(values, dtype=dtype or values.dtype, copy=True)
    if out is not values:
        np.copyto(out, values, casting="unsafe")
    return out


def unwrap_12bit(values: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Read 12-bit stored values as two's complement: ``x[x >= 2048] -= 4096``.

    ``values`` must be a signed or float array (the result is negative). This is the sign
    extension the header should have asked for; it equals the Kaggle fix (``x + 1000``, wrap at
    4096, intercept -1000) for every HU >= -1000 and, unlike it, also keeps air noise below -1000
    HU negative instead of turning it into +2048..+3095 HU bright speckles.
    """
    result = _output(values, out)
    result[result >= 2048] -= 4096
    return result


def invert_monochrome1(
    values: np.ndarray, bits_stored: int, signed: bool, out: np.ndarray | None = None
) -> np.ndarray:
    """Mirror stored values within their range so that larger means denser (MONOCHROME2).

    Unsigned: ``(2**bits - 1) - x``; signed: ``-1 - x``. Only for files without a rescale: with
    one, the modality LUT already gives HU and MONOCHROME1 is a display instruction
    (DICOM PS3.3 C.7.6.3.1.2).
    """
    result = _output(values, out)
    top = -1 if signed else (1 << bits_stored) - 1
    np.subtract(top, result, out=result)
    return result


def padding_mask(
    stored: np.ndarray, value: int | None, limit: int | None = None
) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue, or within [value, limit] with PixelPaddingRangeLimit.

    Compares stored values (before rescale), as the standard defines them. None without a value.
    """
    if value is None:
        return None
    if limit is None:
        return stored == value
    low, high = min(value, limit), max(value, limit)
    return (stored >= low) & (stored <= high)


def apply_rescale(
    values: np.ndarray, slope: float, intercept: float, out: np.ndarray | None = None
) -> np.ndarray:
    """``values * slope + intercept`` as float32 (in place when ``out`` is a float32 ``values``)."""
    result = _output(values, out, np.dtype(np.float32))
    if slope != 1.0:
        result *= np.float32(slope)
    if intercept != 0.0:
        result += np.float32(intercept)
    return result


def pad_to_air(
    hu: np.ndarray,
    mask: np.ndarray | None = None,
    threshold: float = PADDING_HU,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Set padding to air: ``mask`` pixels, pixels at or below ``threshold`` HU and NaNs."""
    result = _output(hu, out)
    below = ~(result > threshold)
    if mask is not None:
        below |= mask
    result[below] = AIR_HU
    return result


def clamp_hu(
    hu: np.ndarray, low: float = HU_MIN, high: float = HU_MAX, out: np.ndarray | None = None
) -> np.ndarray:
    """Clip HU to [low, high]."""
    result = _output(hu, out)
    np.clip(result, low, high, out=result)
    return result


def implausible_reason(hu: np.ndarray, padding: np.ndarray | None = None) -> str | None:
    """Why rescaled values (before padding and clamping) cannot be a CT slice, or None.

    Rejected: non-finite values; more than :data:`MAX_IMPLAUSIBLE_FRACTION` of the pixels
    outside :data:`PLAUSIBLE_HU`; more than :data:`MAX_PADDING_FRACTION` of them padding
    (``padding`` mask or at most :data:`PADDING_HU`), which leaves nothing to score.
    """
    n = hu.size
    if n == 0:
        return "empty image"
    low, high = float(hu.min()), float(hu.max())  # (NaN propagates; the full scans only if needed)
    if not (math.isfinite(low) and math.isfinite(high)):
        return verdict(n, low, high, 0, 0)
    outside = 0
    if low < PLAUSIBLE_HU[0] or high > PLAUSIBLE_HU[1]:
        outside = int(np.count_nonzero((hu < PLAUSIBLE_HU[0]) | (hu > PLAUSIBLE_HU[1])))
    pad = 0
    if low <= PADDING_HU or padding is not None:
        below = hu <= PADDING_HU
        pad = int(np.count_nonzero(below | padding if padding is not None else below))
    return verdict(n, low, high, outside, pad)


def verdict(n: int, low: float, high: float, outside: int, padding: int) -> str | None:
    """:func:`implausible_reason` from its counts: ``n`` pixels between ``low`` and ``high``
    (NaN or infinite when some are), ``outside`` of them beyond :data:`PLAUSIBLE_HU`,
    ``padding`` of them padding."""
    if n == 0:
        return "empty image"
    if not (math.isfinite(low) and math.isfinite(high)):
        return "the rescale gives non-finite HU values"
    if outside > MAX_IMPLAUSIBLE_FRACTION * n:
        return (f"{100 * outside / n:.0f}% of the pixels lie outside {PLAUSIBLE_HU[0]:g}.."
                f"{PLAUSIBLE_HU[1]:g} HU (values {low:.4g} to {high:.4g}): "
                "implausible for CT, the rescale or pixel data are wrong")
    if padding > MAX_PADDING_FRACTION * n:
        return ("nearly every pixel is padding (at or below -2000 HU, or PixelPaddingValue): "
                "nothing to score")
    return None


def stored_to_hu(
    stored: np.ndarray, params: HUParams, check: bool = False
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decoded stored values -> (float32 HU, notes on the fixes applied), one allocation.

    ``stored`` is what pydicom decoded (any integer or float dtype, unused high bits already
    masked or sign-extended).  With ``check``, values no CT scanner produces raise
    :class:`ImplausibleHU` (see :func:`implausible_reason`).
    """
    hu = stored.astype(np.float32)
    if params.has_rescale and needs_rsna_unwrap(
        params.bits_stored, int(params.signed), params.intercept
    ):
        unwrap_12bit(hu, out=hu)
    if params.monochrome1 and not params.has_rescale:
        invert_monochrome1(hu, params.bits_stored, params.signed, out=hu)
    mask = padding_mask(stored, params.padding_value, params.padding_limit)
    with np.errstate(over="ignore", invalid="ignore"):
        apply_rescale(hu, params.slope, params.intercept, out=hu)
    if check:
        reason = implausible_reason(hu, mask)
        if reason is not None:
            raise ImplausibleHU(reason)
    pad_to_air(hu, mask, out=hu)
    clamp_hu(hu, out=hu)
    return hu, fix_notes(params)


def fix_notes(params: HUParams) -> tuple[str, ...]:
    """The notes :func:`stored_to_hu` gives for ``params`` (they depend on the header only)."""
    notes = []
    if params.has_rescale and needs_rsna_unwrap(
        params.bits_stored, int(params.signed), params.intercept
    ):
        notes.append("RSNA 12-bit unsigned/intercept quirk: stored values read as two's complement")
    if params.monochrome1 and not params.has_rescale:
        notes.append("MONOCHROME1 without rescale: inverted")
    if not params.has_rescale:
        notes.append("no RescaleSlope/RescaleIntercept: stored values taken as HU")
    return tuple(notes)


#: Stored dtypes :func:`stored_to_hu_fused` runs the Numba kernel for (the CT storage types);
#: others take :func:`stored_to_hu`, which gives the same result.
FUSED_DTYPES = (np.dtype(np.int16), np.dtype(np.uint16))


def correct_unused_bits(stored: np.ndarray, bits_stored: int) -> np.ndarray:
    """Stored values with the bits above ``bits_stored`` ignored, as pydicom decodes native
    pixel data: masked when unsigned, sign-extended when signed (a new array when changed)."""
    bits = stored.dtype.itemsize * 8
    if stored.dtype.kind not in "iu" or not 0 < bits_stored < bits:
        return stored
    shift = bits - bits_stored
    result = np.left_shift(stored, shift)
    np.right_shift(result, shift, out=result)
    return result


def stored_to_hu_fused(
    stored: np.ndarray, params: HUParams, check: bool = False, unused_bits: bool = False,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[str, ...]]:
    """:func:`stored_to_hu` in one Numba pass over the pixels (same result, same notes).

    :func:`stored_to_hu` is the reference, written one NumPy step per quirk for clarity; this
    reads each stored value once and writes its HU once, counting what the plausibility check
    needs on the way. int16 and uint16 only (other dtypes go to the reference).
    ``unused_bits``: ``stored`` holds the bits above ``params.bits_stored`` as on disk; they
    are ignored on the way (:func:`correct_unused_bits`). ``out``: a float32 C-contiguous
    array of ``stored``'s shape to write the HU into (a slot of a batch, saving a copy); used
    by the Numba pass only.
    """
    if stored.dtype not in FUSED_DTYPES or stored.ndim != 2 or not params.slope > 0:
        if unused_bits:
            stored = correct_unused_bits(stored, params.bits_stored)
        return stored_to_hu(stored, params, check)
    mask, sign_bit = -1, 0
    if unused_bits and 0 < params.bits_stored < 16:
        mask = (1 << params.bits_stored) - 1
        sign_bit = 1 << (params.bits_stored - 1) if stored.dtype.kind == "i" else 0
    unwrap = params.has_rescale and needs_rsna_unwrap(
        params.bits_stored, int(params.signed), params.intercept)
    invert = params.monochrome1 and not params.has_rescale
    top = -1 if params.signed else (1 << params.bits_stored) - 1
    slope, intercept = np.float32(params.slope), np.float32(params.intercept)
    if params.padding_value is None:
        pad_low, pad_high = 1, 0  # an empty range: no padding value
    else:
        limit = params.padding_value if params.padding_limit is None else params.padding_limit
        pad_low, pad_high = min(params.padding_value, limit), max(params.padding_value, limit)
    usable = (out is not None and out.shape == stored.shape and out.dtype == np.float32
              and out.flags.c_contiguous and out.flags.writeable)
    hu = out if usable else np.empty(stored.shape, np.float32)
    umin, umax, outside, padding = _stored_to_hu_kernel(
        np.ascontiguousarray(stored), mask, sign_bit, slope, intercept, unwrap, invert, top,
        pad_low, pad_high, hu)
    if check:
        low, high = (float(np.float32(u) * slope + intercept) for u in (umin, umax))
        reason = verdict(hu.size, low, high, outside, padding)
        if reason is not None:
            raise ImplausibleHU(reason)
    return hu, fix_notes(params)


@njit(cache=True, nogil=True)
def _stored_to_hu_kernel(stored, mask, sign_bit, slope, intercept, unwrap, invert, top,
                         pad_low, pad_high, out):  # pragma: no cover - Numba
    """Each step of :func:`stored_to_hu` per pixel, written so that LLVM vectorizes it.

    ``mask`` and ``sign_bit`` drop the unused high bits (-1 and 0: none to drop).
    Returns the smallest and largest value after unwrap and inversion (integers; the rescale
    is increasing, so they give the smallest and largest HU) and the counts
    :func:`implausible_reason` makes. Unwrap and inversion are exact in integers as in float32.
    """
    src = stored.ravel()
    dst = out.ravel()
    wrap = 4096 if unwrap else 0
    sign = -1 if invert else 1
    base = top if invert else 0
    umin = 1 << 40
    umax = -(1 << 40)
    outside = 0
    padding = 0
    for i in range(src.size):
        s = ((np.int64(src[i]) & mask) ^ sign_bit) - sign_bit
        u = base + sign * (s - (wrap if s >= 2048 else 0))
        umin = min(umin, u)
        umax = max(umax, u)
        v = np.float32(u) * slope + intercept
        outside += (v < np.float32(PLAUSIBLE_HU[0])) or (v > np.float32(PLAUSIBLE_HU[1]))
        pad = (v <= np.float32(PADDING_HU)) or (s >= pad_low and s <= pad_high)
        padding += pad
        # (not min/max: Numba's float min/max handle NaN with branches that stop vectorizing)
        v = np.float32(HU_MIN) if v < np.float32(HU_MIN) else v  # noqa: FURB136
        v = np.float32(HU_MAX) if v > np.float32(HU_MAX) else v  # noqa: FURB136
        dst[i] = np.float32(AIR_HU) if pad else v
    return umin, umax, outside, padding
