"""Plain data types that flow from ingest to the worklist.

files -> :class:`Slice` (HU pixels + identity) -> :class:`Series` (ordered slices of one series)
and :class:`Rejected` for every input that could not become a slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SliceIdentity:
    """Who a slice is: DICOM identifiers and position, no pixels.

    UIDs come from the file and are untrusted: never build paths from them without
    :func:`ichrt.runtime.paths.safe_name` (or an equivalent sanitizer).
    """

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int | None = None
    #: ImagePositionPatient (x, y, z) in mm, when present.
    position: tuple[float, float, float] | None = None
    #: ImageOrientationPatient (6 direction cosines), when present.
    orientation: tuple[float, ...] | None = None
    accession_number: str = ""
    #: PatientID: carried only so that ``--show-phi`` can print it; never logged otherwise.
    patient_id: str = ""
    study_date: str = ""
    study_time: str = ""
    acquisition_date: str = ""
    acquisition_time: str = ""
    modality: str = ""
    #: File modification time (seconds since epoch): the arrival fallback.
    file_mtime: float = 0.0
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] | None = None
    slice_thickness: float | None = None


@dataclass
class Slice:
    """One CT slice in Hounsfield units (float32, rows x columns) with its identity."""

    identity: SliceIdentity
    hu: np.ndarray
    #: Human-readable notes about corrections applied (e.g. "RSNA bad-rescale fixed").
    notes: tuple[str, ...] = ()


@dataclass
class Series:
    """Slices of one series ordered along the scan axis (inferior to superior)."""

    study_uid: str
    series_uid: str
    slices: list[Slice] = field(default_factory=list)
    #: How the order was decided: "position", "instance_number" or "file_order".
    ordered_by: str = "position"


@dataclass(frozen=True)
class Rejected:
    """An input that was not scored, with the reason a person can act on.

    The study fields are filled when the file's header could be read, so that a study whose
    files are all rejected still appears in the worklist (as not scored).
    """

    path: str
    reason: str
    study_uid: str = ""
    accession_number: str = ""
    #: PatientID: only for ``--show-phi``; never logged otherwise.
    patient_id: str = ""
    study_date: str = ""
    study_time: str = ""

    @classmethod
    def of(cls, path: str | Path, reason: str, **study: str) -> Rejected:
        """``study``: any of the study fields above (unknown keys are an error)."""
        return cls(str(path), reason, **study)

    @classmethod
    def duplicate(cls, identity: SliceIdentity, first: str) -> Rejected:
        """A second file with the SOPInstanceUID of ``first``: rejected, but its study is known."""
        return cls(identity.path, f"duplicate SOPInstanceUID (same as {first})",
                   **study_fields(identity))


class FirstCopies:
    """The duplicate rule: the first file with a SOPInstanceUID is read; a later file with the
    same UID is rejected (a copy would count twice in its study, or in a metric)."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}

    def check(self, item: Slice) -> Slice | Rejected:
        """``item``, or its rejection as a duplicate of an earlier file."""
        first = self._first.setdefault(item.identity.sop_uid, item.identity.path)
        if first == item.identity.path:
            return item
        return Rejected.duplicate(item.identity, first)


def study_fields(identity: SliceIdentity) -> dict[str, str]:
    """The study fields of :class:`Rejected` taken from a slice identity."""
    return {"study_uid": identity.study_uid, "accession_number": identity.accession_number,
            "patient_id": identity.patient_id, "study_date": identity.study_date,
            "study_time": identity.study_time}


def scan_order(identities: Sequence[SliceIdentity]) -> tuple[list[int], str]:
    """Indices of one series' slices along the scan axis, and what ordered them.

    By position on the slice normal, else InstanceNumber, else input order (see
    :func:`ichrt.runtime.dicom.group_series`).
    """
    keys = scan_positions(identities)
    if keys is None:
        numbers = [i.instance_number for i in identities]
        if None not in numbers and len(set(numbers)) == len(numbers):
            keys, how = np.asarray(numbers, dtype=np.float64), "instance_number"
        else:
            return list(range(len(identities))), "file_order"
    else:
        how = "position"
    return [int(i) for i in np.argsort(keys, kind="stable")], how


def scan_positions(identities: Sequence[SliceIdentity], tolerance: float = 1e-3
                   ) -> np.ndarray | None:
    """Positions (mm) along the common slice normal, or None if they cannot order the series."""
    positions = [i.position for i in identities]
    orientations = [i.orientation for i in identities]
    if any(p is None for p in positions) or any(o is None for o in orientations):
        return None
    cosines = np.asarray(orientations, dtype=np.float64)
    if np.abs(cosines - cosines[0]).max() > tolerance:
        return None
    normal = np.cross(cosines[0, :3], cosines[0, 3:])
    normal /= np.linalg.norm(normal)
    if normal[2] < 0:  # patient z grows towards the head: ascending = inferior to superior
        normal = -normal
    keys = np.asarray(positions, dtype=np.float64) @ normal
    if len(keys) > 1 and np.diff(np.sort(keys)).min() < tolerance:
        return None
    return keys
