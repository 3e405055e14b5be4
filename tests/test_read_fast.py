"""The fast read path (one scan of the header, fused stored -> HU) against the reference path.

The reference is what ichrt did before: pydicom parses the file and decodes the pixels, and
:func:`~ichrt.runtime.hounsfield.stored_to_hu` applies the fixes one NumPy step at a time. Every
file must give the same slice (identity, HU to the bit, notes) or the same rejection either way.
"""

from __future__ import annotations

import itertools
import zlib
from pathlib import Path

import numpy as np
import pytest
from dicom_helpers import ct_dataset, head_hu, truncate, write_ct, write_dataset
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ichrt.runtime import dicom
from ichrt.runtime.dicom import read_or_reject
from ichrt.runtime.dicomscan import scan_header
from ichrt.runtime.hounsfield import (
    HUParams,
    ImplausibleHU,
    correct_unused_bits,
    stored_to_hu,
    stored_to_hu_fused,
)
from ichrt.runtime.slices import Slice

PLAIN = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def reference_read(path: Path, monkeypatch: pytest.MonkeyPatch):
    """``read_or_reject`` with the scan disabled: pydicom parses and decodes."""
    with monkeypatch.context() as m:
        m.setattr(dicom, "scan_header", lambda data: None)
        return read_or_reject(path)


def assert_same(path: Path, monkeypatch: pytest.MonkeyPatch) -> Slice | object:
    fast, slow = read_or_reject(path), reference_read(path, monkeypatch)
    assert type(fast) is type(slow), (path, fast, slow)
    if isinstance(fast, Slice):
        assert fast.identity == slow.identity
        assert fast.notes == slow.notes
        assert fast.hu.dtype == slow.hu.dtype == np.float32
        np.testing.assert_array_equal(fast.hu, slow.hu)
    else:
        assert fast == slow
    return fast


def undefined_length_sequence() -> dict:
    """A nested sequence that pydicom writes with undefined lengths (delimiters) throughout."""
    inner = Dataset()
    inner.CodeValue = "X"
    inner.is_undefined_length_sequence_item = True
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ProcedureCodeSequence = [inner]
    item.is_undefined_length_sequence_item = True
    return {"ReferencedImageSequence": [item]}


VARIANTS = {
    "plain": {},
    "rsna_12bit": {"bits_stored": 12, "intercept": 0.0},
    "signed_12bit_on_disk": {"stored": (np.arange(64 * 64).reshape(64, 64) % 5000 - 1000
                                        ).astype(np.int16) & 0xFFF,
                             "pixel_representation": 1, "bits_stored": 12, "intercept": 0.0},
    "unsigned_12bit_high_bits_set": {"stored": (np.arange(64 * 64).reshape(64, 64) % 4000
                                                ).astype(np.uint16) | 0xF000,
                                     "bits_stored": 12},
    "signed": {"pixel_representation": 1, "intercept": 0.0},
    "monochrome1_no_rescale": {"photometric": "MONOCHROME1", "slope": None, "intercept": None},
    "multivalued_rescale": {"slope": [1, 1], "intercept": ["-1024", "-1024"]},
    "padding_range": {"pixel_representation": 1, "intercept": 0.0, "padding_value": -2000,
                      "padding_limit": -1500},
    "slope_half": {"slope": 0.5, "intercept": -1000.0},
    "eight_bit": {"bits_allocated": 8, "slope": 10.0, "intercept": -1024.0},
    "thirty_two_bit": {"bits_allocated": 32, "pixel_representation": 1, "intercept": 0.0},
    "non_square": {"rows": 48, "columns": 80},
    "sequences": {"extra": undefined_length_sequence()},
    "no_position": {"position": None, "orientation": None, "instance_number": None},
    "missing_uid": {"series_uid": None},
    "localizer": {"image_type": ("ORIGINAL", "PRIMARY", "LOCALIZER")},
    "mr": {"modality": "MR"},
    "multiframe": {"frames": 2},
    "implausible": {"slope": 900.0, "intercept": 0.0},
    "no_pixels": {"pixel_data": False},
    "rgb": {"photometric": "RGB", "samples_per_pixel": 3},
}


@pytest.mark.parametrize("syntax", PLAIN, ids=["explicit", "implicit"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_fast_path_gives_the_reference_result(tmp_path, monkeypatch, syntax, variant):
    kwargs = dict(VARIANTS[variant])
    if variant == "rgb":
        kwargs["stored"] = np.zeros((64, 64, 3), np.uint16)
    if variant == "non_square":
        kwargs["hu"] = head_hu(48, 80)
    path = write_ct(tmp_path / "f.dcm", syntax=syntax, **kwargs)
    assert_same(path, monkeypatch)


@pytest.mark.parametrize("syntax", PLAIN, ids=["explicit", "implicit"])
def test_plain_files_take_the_fast_path(tmp_path, syntax):
    path = write_ct(tmp_path / "f.dcm", syntax=syntax, extra=undefined_length_sequence())
    header = scan_header(path.read_bytes())
    assert header is not None and header.pixel_offset is not None
    assert header["StudyInstanceUID"] == ct_dataset()["StudyInstanceUID"].value
    assert header["ImagePositionPatient"] == ["0.0", "0.0", "0.0"]
    assert header["Rows"] == 64 and header["PixelData"] is True


def test_unusual_files_are_left_to_pydicom(tmp_path, monkeypatch):
    """The scan declines what it does not handle; the result is pydicom's, unchanged."""
    files = {
        "big_endian": write_ct(tmp_path / "be.dcm", syntax=ExplicitVRBigEndian),
        "no_preamble": write_ct(tmp_path / "np.dcm", preamble=False),
        "truncated": truncate(write_ct(tmp_path / "tr.dcm"), 3000),
        "latin1_patient_id": write_dataset(
            tmp_path / "l1.dcm", ct_dataset(extra={"SpecificCharacterSet": "ISO_IR 100",
                                                   "PatientID": "M\u00fcller-7"})),
    }
    for name, path in files.items():
        assert scan_header(path.read_bytes()) is None, name
        assert_same(path, monkeypatch)


def test_garbage_never_raises():
    rng = np.random.default_rng(0)
    good = bytearray(b"\0" * 128 + b"DICM")
    for n in range(300):
        junk = bytes(good) + rng.integers(0, 256, int(rng.integers(0, 400)), np.uint8).tobytes()
        scan_header(junk)
        scan_header(zlib.compress(junk)[: n % 50])


def test_pydicom_data_corpus_reads_the_same_either_way(monkeypatch):
    import data_store  # PyPI's pydicom-data (the dev extra)

    corpus = sorted(p for p in (Path(data_store.__file__).parent / "data").rglob("*")
                    if p.is_file())
    results = [assert_same(path, monkeypatch) for path in corpus]
    assert sum(isinstance(r, Slice) for r in results) >= 5  # some CT in it reads


def test_fused_stored_to_hu_equals_the_reference():
    rng = np.random.default_rng(7)
    cases = itertools.product(
        (np.int16, np.uint16), (1.0, 0.5, 1.7), (0.0, -1024.0, -1000.5), (12, 16),
        (False, True), (False, True), (None, (-2000, None), (3000, 3100)))
    for dtype, slope, intercept, bits, mono1, has_rescale, padding in cases:
        info = np.iinfo(dtype)
        stored = rng.integers(max(info.min, -3000), min(info.max, 5000), (37, 53)).astype(dtype)
        stored[:3] = info.min  # some padding-like values
        value, limit = padding or (None, None)
        params = HUParams(slope=slope, intercept=intercept, has_rescale=has_rescale,
                          bits_stored=bits, signed=dtype == np.int16, monochrome1=mono1,
                          padding_value=value, padding_limit=limit)
        try:
            want = stored_to_hu(stored, params, check=True)
        except ImplausibleHU as exc:
            with pytest.raises(ImplausibleHU) as got:
                stored_to_hu_fused(stored, params, check=True)
            assert str(got.value) == str(exc)
            continue
        got = stored_to_hu_fused(stored, params, check=True)
        assert got[1] == want[1]
        np.testing.assert_array_equal(got[0], want[0])


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8])
def test_fused_ignores_unused_high_bits_as_pydicom_does(dtype):
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype)
    raw = rng.integers(info.min, info.max, (40, 40), endpoint=True).astype(dtype)
    bits = 7 if info.bits == 8 else 12
    params = HUParams(slope=1.0, intercept=-1024.0 if info.min == 0 else 0.0, bits_stored=bits,
                      signed=info.min < 0)
    want = stored_to_hu(correct_unused_bits(raw, bits), params)
    got = stored_to_hu_fused(raw, params, unused_bits=True)
    np.testing.assert_array_equal(got[0], want[0])
    corrected = correct_unused_bits(raw, bits)
    assert corrected.min() >= (-(1 << (bits - 1)) if info.min < 0 else 0)
    assert corrected.max() < (1 << (bits - 1) if info.min < 0 else 1 << bits)


def test_fused_rejects_what_the_reference_rejects():
    stored = np.full((32, 32), -2000, np.int16)  # all padding
    params = HUParams(intercept=0.0, padding_value=-2000)
    for fn in (stored_to_hu, stored_to_hu_fused):
        with pytest.raises(ImplausibleHU, match="nearly every pixel is padding"):
            fn(stored, params, check=True)
    stored = np.full((32, 32), 30000, np.int16)
    for fn in (stored_to_hu, stored_to_hu_fused):
        with pytest.raises(ImplausibleHU, match="outside"):
            fn(stored, HUParams(slope=1.0, intercept=0.0), check=True)


def run_fresh(code: str) -> str:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_plain_files_are_read_without_importing_pydicom(tmp_path):
    for i in range(3):
        write_ct(tmp_path / f"{i}.dcm", sop_uid=f"1.2.3.{i}",
                 syntax=PLAIN[i % 2])
    out = run_fresh(
        "import sys\n"
        "from ichrt.runtime.dicom import read_paths\n"
        f"r = read_paths({str(tmp_path)!r})\n"
        "print(len(r.slices), len(r.rejected), 'pydicom' in sys.modules)\n")
    assert out == "3 0 False"


def test_quiet_pydicom_applies_when_pydicom_comes_later():
    out = run_fresh(
        "import sys\n"
        "from ichrt.runtime.environment import quiet_pydicom\n"
        "with quiet_pydicom():\n"
        "    assert 'pydicom' not in sys.modules\n"
        "    import ichrt.runtime.dicomparse\n"
        "    import pydicom.config as c\n"
        "    inside = c.settings.reading_validation_mode == c.IGNORE\n"
        "print(inside, c.settings.reading_validation_mode == c.IGNORE)\n")
    assert out == "True False"


def test_cli_runs_with_fewer_gc_passes():
    out = run_fresh(
        "import gc\n"
        "from ichrt.runtime.environment import GC_YOUNG_THRESHOLD, fewer_gc_passes\n"
        "before = gc.get_threshold()\n"
        "fewer_gc_passes()\n"
        "after = gc.get_threshold()\n"
        "print(after[0] == GC_YOUNG_THRESHOLD, after[1:] == before[1:], gc.get_freeze_count() > 0)\n")
    assert out == "True True True"
