"""Tiny head-like CT DICOM studies built with pydicom, for the score tests.

A slice is air (-1000 HU) with a disc of brain (30 HU, below the tiny model's brain-window
midpoint) and, optionally, a bright blob (90 HU) whose radius drives the tiny model's ``any``
probability up: no blob scores low, a large blob high.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_ID = "PID-SECRET-4242"
PATIENT_NAME = "Doe^Jane^Secret"


def head_slice(size: int = 64, blob: float = 0.0) -> np.ndarray:
    """HU (size x size): a brain disc in air, with a 90 HU blob of radius ``blob`` x size."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    c = (size - 1) / 2
    r2 = (yy - c) ** 2 + (xx - c) ** 2
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r2 <= (0.42 * size) ** 2] = 30.0
    if blob > 0:
        hu[(yy - c * 0.9) ** 2 + (xx - c * 1.1) ** 2 <= (blob * size) ** 2] = 90.0
    return hu


def write_ct(
    path: Path,
    hu: np.ndarray,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance: int,
    study_date: str = "20240101",
    study_time: str = "080000",
    accession: str = "ACC1",
    patient_id: str = PATIENT_ID,
    patient_name: str = PATIENT_NAME,
    extra: dict | None = None,
) -> Path:
    """Write one CT Image Storage file (int16 stored, intercept -1024) and return its path."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.AccessionNumber = accession
    if study_date:
        ds.StudyDate = study_date
    if study_time:
        ds.StudyTime = study_time
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, 5.0 * instance]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.round(hu + 1024).astype(np.int16).tobytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hostile UIDs are written on purpose
        ds.save_as(str(path), enforce_file_format=True)
    return path


@dataclass
class StudySpec:
    """A study to write: its UID, slice count, blob radius per slice, and arrival."""

    study_uid: str
    blobs: tuple[float, ...]
    study_date: str = "20240101"
    study_time: str = "080000"
    accession: str = ""
    size: int = 64


def write_study(folder: Path, spec: StudySpec, name: str) -> list[Path]:
    """Write one study's slices into ``folder/<name>/`` and return the file paths."""
    sub = folder / name
    sub.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    paths = []
    for i, blob in enumerate(spec.blobs, start=1):
        paths.append(write_ct(
            sub / f"slice{i:03d}.dcm", head_slice(spec.size, blob), spec.study_uid, series_uid,
            generate_uid(), i, spec.study_date, spec.study_time,
            accession=spec.accession or f"A-{name}"[:16],
        ))
    return paths


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file written by the scorer."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
