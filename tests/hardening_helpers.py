"""Hostile DICOM files for the hardening tests: decompression bombs, absurd rescale values.

Each builder starts from a valid tiny CT slice (:func:`score_helpers.write_ct`) and changes what
an attacker or a broken device would change, so that the file is otherwise well formed.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, RLELossless, generate_uid
from score_helpers import head_slice, write_ct


def valid_slice(path: Path, size: int = 64, study: str = "9.1", **extra) -> Path:
    """A valid CT slice (brain disc in air) with fresh series/SOP UIDs."""
    return write_ct(path, head_slice(size), study, generate_uid(), generate_uid(), 1,
                    extra=extra or None)


def _save(ds: pydicom.Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(str(path), enforce_file_format=True)
    return path


def rle_bomb(path: Path, rows: int, columns: int, runs: int = 4) -> Path:
    """An RLE Lossless file declaring ``rows`` x ``columns`` 16-bit pixels in a few hundred bytes.

    Each of its two segments is ``runs`` replicate runs (2 bytes that expand to 128), so the
    file stays tiny whatever it declares.
    """
    ds = pydicom.dcmread(valid_slice(path))
    segment = b"\x81\x00" * runs
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.Rows, ds.Columns = rows, columns
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return _save(ds, path)


def rle_expander(path: Path, size: int = 64, segment_bytes: int = 1 << 20) -> Path:
    """An RLE file of a small image whose segments are ``segment_bytes`` of replicate runs
    (each 2 bytes expand to 128): a bomb for decoders that trust the segment, not the header."""
    ds = pydicom.dcmread(valid_slice(path, size))
    segment = b"\x81\x00" * (segment_bytes // 2)
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = RLELossless
    return _save(ds, path)


def deflate_bomb(path: Path, side: int) -> Path:
    """A Deflated Explicit VR Little Endian file of a ``side`` x ``side`` all-air slice.

    Zeros deflate about 1000:1, so 8192 x 8192 pixels (128 MiB) fit in about 130 KB.
    """
    ds = pydicom.dcmread(valid_slice(path))
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save(ds, path)


def deflated_junk(path: Path, inflated_bytes: int) -> Path:
    """A valid small slice whose deflated stream carries ``inflated_bytes`` more of padding."""
    ds = pydicom.dcmread(valid_slice(path))
    ds.add_new(0x00291010, "OB", bytes(inflated_bytes))  # a private element full of zeros
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return _save(ds, path)


def with_rescale(path: Path, slope: float, intercept: float = -1024.0) -> Path:
    """A valid slice whose RescaleSlope/Intercept are replaced."""
    ds = pydicom.dcmread(valid_slice(path))
    ds.RescaleSlope = f"{slope:.6g}"[:16]
    ds.RescaleIntercept = f"{intercept:.6g}"[:16]
    return _save(ds, path)
