"""Fuzzing ingest with mutated valid CT files (issue 14): no traceback, every file scored or
rejected with a reason, memory bounded.

Valid slices in several transfer syntaxes are mutated (truncation, byte flips, header values,
declared sizes, transfer syntax swapped without re-encoding, pixel data replaced) and read with a
small image limit; tracemalloc bounds what one file may allocate.  Bounded for CI: 60 examples,
a few seconds.
"""

from __future__ import annotations

import io
import random
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import write_ct
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from ichrt.runtime.dicom import IngestLimits, read_or_reject
from ichrt.runtime.hounsfield import HU_MAX, HU_MIN
from ichrt.runtime.scorer import Scorer
from ichrt.runtime.slices import Rejected, Slice

SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
            DeflatedExplicitVRLittleEndian, RLELossless]
LIMITS = IngestLimits(max_pixels=256 * 256)
#: What one mutated file may make the reader allocate (it is < 100 KB, its image <= 256 x 256).
PEAK_LIMIT = 16 << 20

US_TAGS = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
           "SamplesPerPixel"]
TEXT_TAGS = {
    "RescaleSlope": ["1e38", "-1", "0", "1e-9", "nan", "inf", "abc", "", "2", "1\\2"],
    "RescaleIntercept": ["-1024", "1e9", "-1e9", "nan", "5000", "", "x"],
    "NumberOfFrames": ["0", "2", "99999", "-1", "x"],
    "PhotometricInterpretation": ["MONOCHROME1", "RGB", "PALETTE COLOR", ""],
    "Modality": ["CT", "MR", "SR", ""],
    "StudyInstanceUID": ["", "=1+1", "1.2." + "9" * 60],
    "SOPInstanceUID": ["", "1.2.3"],
    "PixelPaddingValue": ["-2000", "0", "70000"],
}
OTHER_SYNTAXES = [*SYNTAXES, JPEG2000Lossless, "1.2.840.10008.1.2.4.50", "1.2.3.4", "junk"]


def _base(syntax: str, tmp: Path) -> bytes:
    return write_ct(tmp / f"{syntax}.dcm", syntax=syntax).read_bytes()


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("bases")
    found = {syntax: _base(syntax, tmp) for syntax in SYNTAXES}
    for i, data in enumerate(found.values()):  # one-time imports and compiled kernels load
        (tmp / f"warm{i}.dcm").write_bytes(data)  # here, not charged to the first mutant
        assert isinstance(read_or_reject(tmp / f"warm{i}.dcm", LIMITS), Slice)
    return found


def header_op() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("us"), st.sampled_from(US_TAGS),
                  st.sampled_from([0, 1, 7, 8, 12, 16, 32, 255, 256, 4097, 65535])),
        st.sampled_from([("text", k, v) for k, vs in TEXT_TAGS.items() for v in vs]),
        st.tuples(st.just("syntax"), st.sampled_from(OTHER_SYNTAXES)),
        st.tuples(st.just("pixels"), st.sampled_from([0, 1, 7, 100, 8192, 70000])),
    )


def byte_op() -> st.SearchStrategy:
    return st.one_of(
        st.tuples(st.just("cut"), st.floats(0.0, 1.0)),
        st.tuples(st.just("flip"), st.floats(0.0, 1.0), st.integers(0, 255)),
    )


def mutate(data: bytes, header_ops: list, byte_ops: list) -> bytes:
    """Apply header changes (re-saved by pydicom, as a broken writer would) then raw damage."""
    if header_ops:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
            for op in header_ops:
                if op[0] in ("us", "text"):
                    setattr(ds, op[1], op[2])
                elif op[0] == "syntax":
                    ds.file_meta.TransferSyntaxUID = op[1]
                else:
                    ds.PixelData = random.Random(op[1]).randbytes(op[1])
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.save_as(buffer, enforce_file_format=True)
            data = buffer.getvalue()
        except Exception:  # noqa: BLE001, S110 - pydicom refused to write it: fuzz the raw bytes
            pass
    data = bytearray(data)
    for op in byte_ops:
        if op[0] == "cut":
            del data[int(op[1] * len(data)):]
        elif data:
            data[min(len(data) - 1, 128 + int(op[1] * max(0, len(data) - 128)))] = op[2]
    return bytes(data)


def check_one(path: Path) -> Slice | Rejected:
    """Read ``path`` under tracemalloc and check the result is a sane slice or a reason."""
    tracemalloc.start()
    try:
        result = read_or_reject(path, LIMITS)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"{peak} bytes for one file"
    if isinstance(result, Rejected):
        assert result.path == str(path) and result.reason.strip()
        assert "unexpected error" not in result.reason, result.reason  # a bug, not a bad file
    else:
        assert isinstance(result, Slice)
        hu = result.hu
        assert hu.dtype == np.float32 and hu.shape == (result.identity.rows, result.identity.columns)
        assert np.isfinite(hu).all() and HU_MIN <= hu.min() and hu.max() <= HU_MAX
    return result


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(syntax=st.sampled_from(SYNTAXES), header_ops=st.lists(header_op(), max_size=3),
       byte_ops=st.lists(byte_op(), max_size=3))
def test_mutated_files_are_read_or_rejected_with_bounded_memory(bases, tmp_path, syntax,
                                                                header_ops, byte_ops):
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(mutate(bases[syntax], header_ops, byte_ops))
    check_one(path)


def test_scoring_a_folder_of_mutants_accounts_for_every_file(tiny_model, bases, tmp_path):
    rng = random.Random(14)
    folder = tmp_path / "mutants"
    folder.mkdir()
    for i in range(24):
        syntax = rng.choice(SYNTAXES)
        header = [rng.choice([("text", k, rng.choice(v)) for k, v in TEXT_TAGS.items()])
                  for _ in range(rng.randint(0, 2))]
        damage = [("cut", rng.uniform(0.3, 1.0))] if rng.random() < 0.3 else []
        (folder / f"m{i:02d}.dcm").write_bytes(mutate(bases[syntax], header, damage))
    result = Scorer(tiny_model[0], provider="cpu", max_pixels=LIMITS.max_pixels).score([folder])
    assert result.n_inputs == 24 == len(result.slices) + len(result.rejected)
    assert all(r.reason.strip() and "unexpected error" not in r.reason for r in result.rejected)
    assert all(np.isfinite(s.probs).all() for s in result.slices)
