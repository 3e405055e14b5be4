"""Hostile files cannot exhaust memory; absurd rescale values are rejected (issue 14, items 3-4).

Memory is measured with tracemalloc, which sees NumPy's and pydicom's buffers: before the fix a
20000 x 20000 RLE header made the reader allocate 800 MB and a deflated 8192 x 8192 file 128 MiB.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hardening_helpers import (
    deflate_bomb,
    deflated_junk,
    rle_bomb,
    rle_expander,
    valid_slice,
    with_rescale,
)

from ichrt.runtime import batches, pipeline
from ichrt.runtime.dicom import IngestLimits, read_or_reject, read_slice
from ichrt.runtime.hounsfield import HUParams, ImplausibleHU, stored_to_hu
from ichrt.runtime.scorer import Scorer
from ichrt.runtime.slices import Rejected, Slice

MiB = 1 << 20


def peak_of(path: Path, limits: IngestLimits | None = None) -> tuple[Slice | Rejected, float]:
    """(result of reading ``path``, peak traced allocation in MiB)."""
    tracemalloc.start()
    try:
        result = read_or_reject(path, limits)
        return result, tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("side", [20000, 65535])
def test_rle_header_bomb_is_rejected_before_decoding(tmp_path, side):
    path = rle_bomb(tmp_path / "bomb.dcm", side, side)
    assert path.stat().st_size < 2048
    result, peak = peak_of(path)
    assert isinstance(result, Rejected)
    assert f"declares {side} x {side} pixels, more than the limit" in result.reason
    assert result.study_uid == "9.1"  # its study stays known (listed as not scored)
    assert peak < 2


def test_deflated_bomb_is_checked_before_it_is_inflated(tmp_path):
    path = deflate_bomb(tmp_path / "bomb.dcm", 2048)  # 8 MiB of pixels in ~8 KB
    result, peak = peak_of(path, IngestLimits(max_pixels=512 * 512))
    assert isinstance(result, Rejected) and "declares 2048 x 2048 pixels" in result.reason
    assert peak < 2  # only the first 256 KiB were inflated


def test_deflated_dataset_larger_than_its_image_needs_is_refused(tmp_path):
    path = deflated_junk(tmp_path / "junk.dcm", 24 * MiB)  # a 64 x 64 slice + 24 MiB of zeros
    assert path.stat().st_size < MiB
    result, peak = peak_of(path)
    assert isinstance(result, Rejected) and "decompression bomb" in result.reason
    assert peak < 12


def test_valid_deflated_and_rle_files_still_read(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless

    reference = read_slice(valid_slice(tmp_path / "v.dcm", 128))
    for name, syntax in (("d.dcm", DeflatedExplicitVRLittleEndian), ("r.dcm", RLELossless)):
        ds = pydicom.dcmread(tmp_path / "v.dcm")
        if syntax.is_compressed:
            ds.compress(syntax)
        else:
            ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(tmp_path / name)
        np.testing.assert_array_equal(read_slice(tmp_path / name).hu, reference.hu)


@pytest.mark.parametrize(("segment_bytes", "message"), [
    (5000, "RLE segment 1 decodes beyond the 64 x 64 image"),
    (4 * MiB, "compressed pixel data of"),
])
def test_rle_segments_longer_than_the_image_are_rejected_not_a_crash(tmp_path, segment_bytes,
                                                                     message):
    # Both crashed pylibjpeg-rle with a Rust panic (a BaseException: a traceback, exit 1), and
    # pydicom's own decoder would have grown each segment 64-fold.
    path = rle_expander(tmp_path / "rle.dcm", 64, segment_bytes)
    result, peak = peak_of(path)
    assert isinstance(result, Rejected), result
    assert message in result.reason
    assert peak < 2 + 5 * segment_bytes / MiB  # the file (2 segments) and its pixel data


def test_a_codec_panic_becomes_a_rejection(tmp_path, monkeypatch):
    from ichrt.runtime import dicom, dicomparse

    class PanicException(BaseException):  # what pyo3 raises for a Rust panic
        pass

    def panic(*args, **kwargs):
        raise PanicException("index out of bounds")

    monkeypatch.setattr(dicomparse, "pixel_array", panic)
    monkeypatch.setattr(dicom, "scan_header", lambda data: None)  # decode through pydicom
    result = read_or_reject(valid_slice(tmp_path / "p.dcm"))
    assert isinstance(result, Rejected) and "the decoder failed (PanicException" in result.reason


def test_file_larger_than_any_slice_is_refused_unread(tmp_path):
    path = valid_slice(tmp_path / "big.dcm")
    with open(path, "ab") as fh:
        fh.truncate(path.stat().st_size + 20 * MiB)  # sparse: costs no disk
    result, peak = peak_of(path, IngestLimits(max_pixels=128 * 128))
    assert isinstance(result, Rejected) and "larger than any CT slice" in result.reason
    assert peak < 1


@pytest.mark.parametrize(("slope", "intercept", "message"), [
    (1e38, -1024, "RescaleSlope 1e+38 is outside the range"),
    (-1, -1024, "RescaleSlope -1 is outside the range"),
    (1, 1e9, "RescaleIntercept 1e+09 is outside the range"),
    (1, 5000, "implausible for CT"),        # every pixel above 3071 HU
    (1, -9000, "nearly every pixel is padding"),
])
def test_absurd_rescale_values_are_rejected_with_a_reason(tmp_path, slope, intercept, message):
    result = read_or_reject(with_rescale(tmp_path / "r.dcm", slope, intercept))
    assert isinstance(result, Rejected) and message in result.reason, result


def test_plausible_rescale_values_still_read(tmp_path):
    for slope, intercept in ((1, -1024), (0.5, -1024), (2, -1024)):
        assert isinstance(read_or_reject(with_rescale(tmp_path / "ok.dcm", slope, intercept)),
                          Slice)


def test_stored_to_hu_check_is_opt_in():
    stored = np.full((16, 16), 30000, np.int16)
    hu, _ = stored_to_hu(stored, HUParams(intercept=0.0))  # clamped as before
    assert hu.max() == 3071
    with pytest.raises(ImplausibleHU, match="outside"):
        stored_to_hu(stored, HUParams(intercept=0.0), check=True)


def test_large_images_make_small_batches(tiny_model, tmp_path, monkeypatch):
    for i in range(7):
        valid_slice(tmp_path / f"{i}.dcm", 64)
    calls: list[int] = []
    original = pipeline.infer_batch

    def counting(model, tensor, *args, **kwargs):
        calls.append(len(tensor))
        return original(model, tensor, *args, **kwargs)

    monkeypatch.setattr(pipeline, "infer_batch", counting)
    monkeypatch.setattr(batches, "BATCH_PIXELS", 3 * 64 * 64)
    result = Scorer(tiny_model[0], provider="cpu", batch_size=16).score([tmp_path])
    assert len(result.slices) == 7 and calls == [3, 3, 1]


def test_real_rle_encodings_of_phantom_slices_are_read(tmp_path):
    """pydicom's RLE encoder pads odd segments with one byte: that byte is no run (the check
    counted it once and refused valid files)."""
    import pydicom
    from pydicom.uid import RLELossless

    from ichrt.runtime.synth import generate_study

    hu = generate_study(seed=3, n_slices=6, size=96, positive=True).hu
    refused = []
    for k, image in enumerate(hu):
        src = valid_slice(tmp_path / f"v{k}.dcm", 96)
        ds = pydicom.dcmread(src)
        ds.PixelData = np.clip(np.rint(image) + 1024, 0, 4095).astype(np.uint16).tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 12, 11
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.compress(RLELossless)
        ds.save_as(tmp_path / f"r{k}.dcm")
        got = read_or_reject(tmp_path / f"r{k}.dcm")
        if isinstance(got, Rejected):
            refused.append(got.reason)
    assert not refused
