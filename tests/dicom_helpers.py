"""Build CT DICOM files for the ingest tests: every header quirk is a parameter.

``write_ct(path, ...)`` writes one slice (uncompressed, big endian, RLE or JPEG 2000 through
pydicom's encoders, with or without the 'DICM' preamble); ``write_series(folder, n, ...)`` writes
a series with controllable positions, orientation, instance numbers and file-name order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

STUDY_UID = "1.2.826.0.1.3680043.8.498.10001"
SERIES_UID = "1.2.826.0.1.3680043.8.498.10001.1"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
PATIENT_NAME = "Secret^Patient"
PATIENT_ID = "PID-0042-SECRET"
_UNSET: Any = object()


def head_hu(rows: int = 64, columns: int = 64, brain: float = 35.0) -> np.ndarray:
    """A head-like slice in HU: air, a 1000 HU skull ring, brain of ``brain`` HU, a 70 HU bleed."""
    yy, xx = np.mgrid[:rows, :columns].astype(np.float32)
    r = np.hypot((yy - (rows - 1) / 2) / (rows / 2), (xx - (columns - 1) / 2) / (columns / 2))
    hu = np.full((rows, columns), -1000.0, np.float32)
    hu[r < 0.85] = 1000.0
    hu[r < 0.75] = brain
    hu[np.hypot(yy - rows * 0.35, xx - columns * 0.6) < min(rows, columns) * 0.08] = 70.0
    return hu


def _first(value: Any, default: float) -> float:
    if value is None:
        return default
    return (
        float(value[0])
        if isinstance(value, Sequence) and not isinstance(value, str)
        else float(value)
    )


def stored_values(
    hu: np.ndarray, slope: Any, intercept: Any, bits_allocated: int, bits_stored: int, signed: bool
) -> np.ndarray:
    """Stored values that rescale back to ``hu``, clipped to what the storage can hold."""
    raw = np.rint((hu - _first(intercept, 0.0)) / (_first(slope, 1.0) or 1.0))
    low, high = (
        (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1)
        if signed
        else (0, (1 << bits_stored) - 1)
    )
    dtype = (
        {8: np.int8, 16: np.int16, 32: np.int32}[bits_allocated]
        if signed
        else {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits_allocated]
    )
    return np.clip(raw, low, high).astype(dtype)


def ct_dataset(
    hu: np.ndarray | None = None,
    *,
    stored: np.ndarray | None = None,
    rows: int = 64,
    columns: int = 64,
    slope: Any = 1.0,
    intercept: Any = -1024.0,
    bits_allocated: int = 16,
    bits_stored: int | None = None,
    pixel_representation: int = 0,
    photometric: str = "MONOCHROME2",
    samples_per_pixel: int = 1,
    modality: str | None = "CT",
    sop_class: str = CTImageStorage,
    study_uid: str | None = STUDY_UID,
    series_uid: str | None = SERIES_UID,
    sop_uid: str | None = "1.2.826.0.1.3680043.8.498.10001.1.1",
    instance_number: int | None = 1,
    position: Sequence[float] | None = (0.0, 0.0, 0.0),
    orientation: Sequence[float] | None = AXIAL,
    padding_value: int | None = None,
    padding_limit: int | None = None,
    frames: int | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    pixel_data: bool = True,
    extra: dict[str, Any] | None = None,
) -> Dataset:
    """A CT Image dataset (no file meta). ``slope``/``intercept`` None omit the element; a list
    makes it multi-valued. ``stored`` overrides the stored values computed from ``hu``."""
    bits_stored = bits_stored or bits_allocated
    if stored is None:
        hu = head_hu(rows, columns) if hu is None else hu
        stored = stored_values(
            hu, slope, intercept, bits_allocated, bits_stored, pixel_representation == 1
        )
    ds = Dataset()
    ds.SOPClassUID = sop_class
    for keyword, value in (
        ("SOPInstanceUID", sop_uid),
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("Modality", modality),
        ("InstanceNumber", instance_number),
        ("ImagePositionPatient", position),
        ("ImageOrientationPatient", orientation),
        ("RescaleSlope", slope),
        ("RescaleIntercept", intercept),
        ("PixelPaddingValue", padding_value),
        ("PixelPaddingRangeLimit", padding_limit),
        ("NumberOfFrames", frames),
    ):
        if value is not None:
            setattr(ds, keyword, list(value) if isinstance(value, (tuple, list)) else value)
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.AccessionNumber = "ACC-7"
    ds.StudyDate, ds.StudyTime = "20240301", "101500"
    ds.AcquisitionDate, ds.AcquisitionTime = "20240301", "101612.5"
    ds.ImageType = list(image_type)
    ds.PixelSpacing = [0.45, 0.45]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = stored.shape[-2:] if stored.ndim >= 2 else (rows, columns)
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = pixel_representation
    if pixel_data:
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    return ds


def write_dataset(
    path: Path, ds: Dataset, syntax: str = ExplicitVRLittleEndian, preamble: bool = True
) -> Path:
    """Write ``ds`` in ``syntax``: compressed ones through pydicom's encoders (RLE, JPEG 2000)."""
    syntax = UID(syntax)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    elif syntax == ExplicitVRBigEndian and "PixelData" in ds:
        dtype = np.dtype(f"{'i' if ds.PixelRepresentation else 'u'}{ds.BitsAllocated // 8}")
        ds.PixelData = np.frombuffer(ds.PixelData, dtype).astype(dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = syntax
    if preamble:
        ds.preamble = b"\0" * 128
        dcmwrite(path, ds, enforce_file_format=True)
    else:
        del ds.file_meta
        dcmwrite(
            path,
            ds,
            implicit_vr=syntax == ImplicitVRLittleEndian,
            little_endian=syntax != ExplicitVRBigEndian,
        )
    return path


def write_ct(
    path: Path, *, syntax: str = ExplicitVRLittleEndian, preamble: bool = True, **kwargs: Any
) -> Path:
    """Write one CT slice built by :func:`ct_dataset` (``kwargs``) and return its path."""
    return write_dataset(path, ct_dataset(**kwargs), syntax=syntax, preamble=preamble)


def truncate(path: Path, keep: int) -> Path:
    """Cut ``path`` to its first ``keep`` bytes (negative: drop that many from the end)."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])
    return Path(path)


def normal_of(orientation: Sequence[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    return normal / np.linalg.norm(normal)


def write_series(
    folder: Path,
    n: int = 6,
    *,
    spacing: float = 5.0,
    orientation: Sequence[float] = AXIAL,
    origin: Sequence[float] = (-100.0, -110.0, 20.0),
    reverse_positions: bool = False,
    positions: bool = True,
    instance_numbers: Sequence[int | None] | None = None,
    name_order: Sequence[int] | None = None,
    series_uid: str = SERIES_UID,
    size: int = 32,
    **kwargs: Any,
) -> list[Path]:
    """Write ``n`` slices; slice k (k = 0 inferior .. n-1 superior) has brain HU ``10 + k``.

    ``reverse_positions`` numbers instances from the top down; ``name_order[k]`` is the file
    name index of slice k (to shuffle files against anatomy). Returns paths in slice order k.
    """
    normal = normal_of(orientation)
    numbers = (
        list(instance_numbers)
        if instance_numbers is not None
        else [(n - k if reverse_positions else k + 1) for k in range(n)]
    )
    names = list(name_order) if name_order is not None else list(range(n))
    paths = []
    for k in range(n):
        position = tuple(np.asarray(origin) + k * spacing * normal) if positions else None
        paths.append(
            write_ct(
                Path(folder) / f"im{names[k]:04d}.dcm",
                hu=head_hu(size, size, brain=10.0 + k),
                series_uid=series_uid,
                sop_uid=f"{series_uid}.{k + 1}",
                instance_number=numbers[k],
                position=position,
                orientation=orientation,
                **kwargs,
            )
        )
    return paths


def brain_value(hu: np.ndarray) -> float:
    """The brain HU of a :func:`head_hu` slice (its centre pixel)."""
    return float(hu[hu.shape[0] // 2, hu.shape[1] // 2])
