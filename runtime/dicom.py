"""DICOM files -> CT slices in Hounsfield units with their identity, grouped into ordered series.

Headers are read here; pixels are decoded by pydicom's decoder plugins (the ``codecs`` extra adds
pylibjpeg for JPEG, JPEG-LS and JPEG 2000); the HU quirk fixes live in :mod:`.hounsfield`.
Every input ends up either a :class:`Slice` or a :class:`Rejected` with a reason a person can act
on: :func:`read_paths` never raises because of a bad file.

Multi-frame objects (NumberOfFrames > 1, Enhanced CT) are rejected rather than split: a slice is
one file with its own SOP Instance UID, which the worklist names as the key slice, and PACS send
head CT as single-frame images; frames would need per-frame geometry and rescale from functional
groups to be trusted.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
)

from .hounsfield import HUParams, rescale_parameters, stored_to_hu
from .slices import Rejected, Series, Slice, SliceIdentity

PathLike = str | os.PathLike
#: Told to the user whenever a compressed file cannot be decoded for want of a plugin.
CODECS_HINT = 'install the codecs extra: pip install "ichrt[codecs]"'
#: Smallest accepted image side; anything smaller is not a CT slice.
MIN_SIDE = 8
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MULTIFRAME_CT = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
_NOT_DICOM = "not a DICOM file (no 'DICM' marker and no readable DICOM dataset)"


class IngestError(Exception):
    """A file that cannot become a CT slice, with the reason."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class IngestResult:
    """Every input of a read: the slices, in input order, and the rejected files with reasons."""

    slices: list[Slice] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


# ----------------------------------------------------------------------------- files


def iter_files(paths: PathLike | Iterable[PathLike]) -> list[Path]:
    """The input files: a file, a folder (recursively, sorted) or a list of both, in that order.

    Nothing is filtered: hidden files, DICOMDIRs and paths that do not exist are returned too, so
    that reading them rejects them with a reason. A path given twice is one input.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[Path] = []
    seen: set[str] = set()
    for item in map(Path, items):
        for path in _walk(item) if item.is_dir() else [item]:
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def _walk(folder: Path) -> list[Path]:
    """Every non-folder entry below ``folder``, sorted; symlinked folders are followed once."""
    found: list[Path] = []
    visited: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        found.extend(Path(root, name) for name in names)
    return sorted(found)


# ----------------------------------------------------------------------------- one file


def read_slice(path: PathLike) -> Slice:
    """Read one DICOM file into a CT slice in HU; raise :class:`IngestError` with the reason."""
    path = Path(path)
    try:
        mtime = _check_file(path)
        ds = _parse(path)
        return _to_slice(path, ds, mtime)
    except IngestError:
        raise
    except MemoryError:
        raise IngestError(path, "too large to read into memory") from None
    except Exception as exc:  # pydicom raises many kinds of errors on damaged files
        raise IngestError(path, f"corrupt DICOM data ({_describe(exc)})") from exc


def _check_file(path: Path) -> float:
    """The file's mtime, after making sure it is a non-empty regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise IngestError(path, "no such file") from None
    except OSError as exc:
        raise IngestError(path, f"cannot open: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise IngestError(path, "is a folder (symbolic link loop or unreadable folder)")
    if not stat.S_ISREG(info.st_mode):
        raise IngestError(path, "not a regular file")
    if info.st_size == 0:
        raise IngestError(path, "empty file")
    return info.st_mtime


def _parse(path: Path) -> Dataset:
    """The dataset of a file; files without the 'DICM' preamble are kept if they parse as DICOM."""
    try:
        return pydicom.dcmread(path)
    except InvalidDicomError:
        pass
    except OSError as exc:
        raise IngestError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception:  # noqa: BLE001 - forced parsing of junk fails in arbitrary ways
        raise IngestError(path, _NOT_DICOM) from None
    if not any(tag in ds for tag in (0x00080016, 0x00080060, 0x00280010, 0x7FE00010)):
        raise IngestError(path, _NOT_DICOM)
    return ds


def _to_slice(path: Path, ds: Dataset, mtime: float) -> Slice:
    _check_kind(path, ds)
    identity = _identity(path, ds, mtime)
    params, notes = _hu_params(path, ds)
    stored = _decode(path, ds)
    if stored.shape != (identity.rows, identity.columns):
        raise IngestError(
            path,
            f"pixel array shape {stored.shape} does not match Rows x Columns "
            f"({identity.rows} x {identity.columns})",
        )
    hu, fixes = stored_to_hu(stored, params)
    return Slice(identity=identity, hu=hu, notes=notes + fixes)


def _check_kind(path: Path, ds: Dataset) -> None:
    """Reject what is not a single-frame grayscale CT image, saying what it is instead."""
    sop_class = UID(_text(ds.get("SOPClassUID")) or _text(_meta(ds, "MediaStorageSOPClassUID")))
    if sop_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise IngestError(path, "DICOMDIR (an index of a DICOM medium), not an image")
    kind = sop_class.name if sop_class else "unknown SOP class"
    has_pixels = any(keyword in ds for keyword in _PIXEL_KEYWORDS)
    modality = _text(ds.get("Modality")).upper()
    if modality != "CT" and not (not modality and sop_class == CTImageStorage):
        what = f"modality {modality}" if modality else "no Modality"
        image = "" if has_pixels else ", not an image"
        raise IngestError(path, f"{what} ({kind}{image}): only CT is read")
    if sop_class in _MULTIFRAME_CT:
        raise IngestError(
            path, f"{kind} (multi-frame) is not supported: send single-frame CT Image Storage"
        )
    if not has_pixels:
        raise IngestError(path, _missing_pixels(ds, kind))
    if "LOCALIZER" in _texts(ds.get("ImageType")):
        raise IngestError(path, "localizer (scout) image, not an axial slice")
    frames = _int(ds.get("NumberOfFrames"))
    if frames is not None and frames > 1:
        raise IngestError(
            path,
            f"multi-frame object ({frames} frames) is not supported: send single-frame CT images",
        )
    samples = _int(ds.get("SamplesPerPixel"))
    photometric = _text(ds.get("PhotometricInterpretation")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples not in (None, 1):
        raise IngestError(
            path,
            f"photometric interpretation {photometric or 'missing'} "
            f"({samples or '?'} samples per pixel): not a grayscale CT image",
        )
    if "ModalityLUTSequence" in ds and "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        raise IngestError(
            path, "Modality LUT Sequence instead of RescaleSlope/Intercept: not supported"
        )


def _missing_pixels(ds: Dataset, kind: str) -> str:
    rows, columns = _int(ds.get("Rows")), _int(ds.get("Columns"))
    if rows and columns:
        return (
            f"no Pixel Data although the header describes a {rows} x {columns} image (truncated?)"
        )
    return f"no Pixel Data in this {kind} object (file truncated, or a header-only copy)"


def _identity(path: Path, ds: Dataset, mtime: float) -> SliceIdentity:
    uids = {
        "StudyInstanceUID": _text(ds.get("StudyInstanceUID")),
        "SeriesInstanceUID": _text(ds.get("SeriesInstanceUID")),
        "SOPInstanceUID": _text(ds.get("SOPInstanceUID"))
        or _text(_meta(ds, "MediaStorageSOPInstanceUID")),
    }
    missing = [name for name, value in uids.items() if not value]
    if missing:
        raise IngestError(
            path, f"missing {', '.join(missing)}: cannot tell which study/series it is"
        )
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    if min(rows, columns) < MIN_SIDE:
        raise IngestError(path, f"image of {rows} x {columns} pixels: too small for a CT slice")
    return SliceIdentity(
        path=str(path),
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        instance_number=_int(ds.get("InstanceNumber")),
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_orientation(ds.get("ImageOrientationPatient")),
        accession_number=_text(ds.get("AccessionNumber")),
        patient_id=_text(ds.get("PatientID")),
        study_date=_text(ds.get("StudyDate")),
        study_time=_text(ds.get("StudyTime")),
        acquisition_date=_text(ds.get("AcquisitionDate")),
        acquisition_time=_text(ds.get("AcquisitionTime")),
        modality=_text(ds.get("Modality")).upper() or "CT",
        file_mtime=mtime,
        rows=rows,
        columns=columns,
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),
        slice_thickness=(_floats(ds.get("SliceThickness"), 1) or (None,))[0],
    )


def _hu_params(path: Path, ds: Dataset) -> tuple[HUParams, tuple[str, ...]]:
    """The header's rescale, storage and padding attributes, with notes on odd values."""
    try:
        raw_slope, raw_intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        slope, intercept = rescale_parameters(raw_slope, raw_intercept)
    except ValueError as exc:
        raise IngestError(path, f"unusable rescale: {exc}") from None
    notes = tuple(
        f"multi-valued {name}: first value used"
        for name, value in (("RescaleSlope", raw_slope), ("RescaleIntercept", raw_intercept))
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 1
    )
    bits_allocated = _int(ds.get("BitsAllocated")) or 16
    signed = _int(ds.get("PixelRepresentation")) == 1
    params = HUParams(
        slope=slope,
        intercept=intercept,
        has_rescale=raw_slope is not None or raw_intercept is not None,
        bits_stored=_int(ds.get("BitsStored")) or bits_allocated,
        signed=signed,
        monochrome1=_text(ds.get("PhotometricInterpretation")).upper() == "MONOCHROME1",
        padding_value=_stored_int(ds.get("PixelPaddingValue"), bits_allocated, signed),
        padding_limit=_stored_int(ds.get("PixelPaddingRangeLimit"), bits_allocated, signed),
    )
    return params, notes


def _decode(path: Path, ds: Dataset) -> np.ndarray:
    """Stored values of the single frame, decoded by pydicom (codecs come from plugins)."""
    syntax = _transfer_syntax(ds)
    if not syntax.is_transfer_syntax:
        raise IngestError(path, f"unknown transfer syntax {syntax}")
    if syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise IngestError(path, f"transfer syntax {syntax.name} cannot be decoded") from None
        if not decoder.is_available:
            raise IngestError(path, _missing_codec(syntax))
    else:
        _check_native_length(path, ds)
    try:
        return pixel_array(ds, raw=True)
    except Exception as exc:  # damaged pixel data fails in many ways inside the codecs
        if syntax.is_compressed and "missing dependencies" in str(exc):  # no usable plugin
            raise IngestError(path, _missing_codec(syntax)) from exc
        raise IngestError(path, f"missing or corrupt pixel data ({_describe(exc)})") from exc


def _missing_codec(syntax: UID) -> str:
    return (
        f"compressed transfer syntax {syntax.name} needs a decoder that is not installed: "
        + CODECS_HINT
    )


def _check_native_length(path: Path, ds: Dataset) -> None:
    """Uncompressed pixel data must hold Rows x Columns samples: shorter means a cut file."""
    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    bits = {"PixelData": _int(ds.get("BitsAllocated")) or 16, "FloatPixelData": 32}.get(keyword, 64)
    expected = (_int(ds.get("Rows")) or 0) * (_int(ds.get("Columns")) or 0) * bits // 8
    actual = len(ds[keyword].value or b"")
    if actual < expected:
        raise IngestError(
            path, f"pixel data truncated: {actual} of {expected} bytes (file cut short?)"
        )


def _transfer_syntax(ds: Dataset) -> UID:
    """The file's transfer syntax; for files without file meta, the encoding they were read with."""
    syntax = _meta(ds, "TransferSyntaxUID")
    if not syntax:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        syntax = (
            ImplicitVRLittleEndian
            if implicit
            else ExplicitVRLittleEndian
            if little
            else ExplicitVRBigEndian
        )
        ds.file_meta.TransferSyntaxUID = syntax
    return UID(str(syntax))


# ----------------------------------------------------------------------------- header values


def _meta(ds: Dataset, keyword: str) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get(keyword) if meta is not None else None


def _text(value: Any) -> str:
    """A single string value, stripped of the spaces and NULs DICOM pads with."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0] if len(value) else ""
    return str(value).strip(" \x00")


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    items = (
        value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    )
    return [_text(item).upper() for item in items]


def _int(value: Any) -> int | None:
    """An integer value (IS, US), or None when absent or not a number."""
    try:
        text = _text(value)
        return int(float(text)) if text else None
    except (TypeError, ValueError, OverflowError):
        return None


def _floats(value: Any, count: int) -> tuple[float, ...] | None:
    """Exactly ``count`` finite numbers, or None."""
    if value is None:
        return None
    items = (
        value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    )
    try:
        numbers = tuple(float(item) for item in items)
    except (TypeError, ValueError):
        return None
    if len(numbers) != count or not all(np.isfinite(numbers)):
        return None
    return numbers


def _orientation(value: Any) -> tuple[float, ...] | None:
    """ImageOrientationPatient if its row and column vectors are usable (non-zero, not parallel)."""
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    normal = np.cross(cosines[:3], cosines[3:])
    return cosines if np.linalg.norm(normal) > 1e-3 else None


def _stored_int(value: Any, bits_allocated: int, signed: bool) -> int | None:
    """A padding value in the stored values' own range (files mix up US and SS for it)."""
    number = _int(value)
    if number is None:
        return None
    span = 1 << bits_allocated
    if signed and number >= span // 2:
        number -= span
    elif not signed and number < 0:
        number += span
    return number


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- many files


def default_workers() -> int:
    """Reader threads: decoding releases the GIL in NumPy and the codecs, parsing does not."""
    return max(1, min(8, os.cpu_count() or 1))


def read_or_reject(path: PathLike) -> Slice | Rejected:
    """:func:`read_slice`, with any failure turned into a :class:`Rejected`."""
    try:
        return read_slice(path)
    except IngestError as exc:
        return Rejected.of(exc.path, exc.reason)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the batch; the reason names it
        return Rejected.of(path, f"unexpected error ({_describe(exc)})")


def iter_read(files: Sequence[PathLike], workers: int | None = None) -> Iterator[Slice | Rejected]:
    """Read ``files`` on a thread pool, yielding results in input order.

    At most ``2 * workers`` files are in flight: memory stays bounded when the consumer is slower.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(workers, thread_name_prefix="ichrt-ingest") as pool:
        pending: deque = deque()
        for path in files:
            pending.append(pool.submit(read_or_reject, path))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def read_paths(
    paths: PathLike | Iterable[PathLike],
    workers: int | None = None,
    progress: Callable[[int], Any] | None = None,
) -> IngestResult:
    """Read files, folders or a list of them; every file becomes a slice or a rejection.

    ``progress`` is called with 1 after each file (``tqdm.update`` fits). A second file with the
    SOP Instance UID of an earlier one is rejected as a duplicate.
    """
    result = IngestResult()
    first_path: dict[str, str] = {}
    for item in iter_read(iter_files(paths), workers):
        if isinstance(item, Slice):
            first = first_path.setdefault(item.identity.sop_uid, item.identity.path)
            if first == item.identity.path:
                result.slices.append(item)
            else:
                result.rejected.append(
                    Rejected.of(item.identity.path, f"duplicate SOPInstanceUID (same as {first})")
                )
        else:
            result.rejected.append(item)
        if progress is not None:
            progress(1)
    return result


# ----------------------------------------------------------------------------- series


def group_series(slices: Iterable[Slice]) -> list[Series]:
    """Group slices by (study, series), first seen first, each ordered along the scan axis.

    Order: by ImagePositionPatient projected on the slice normal (from ImageOrientationPatient;
    inferior to superior for axial slices, right for tilted gantries); if positions are missing,
    inconsistent or tied, by InstanceNumber; failing that, input order. ``Series.ordered_by``
    says which.
    """
    groups: dict[tuple[str, str], list[Slice]] = {}
    for item in slices:
        groups.setdefault((item.identity.study_uid, item.identity.series_uid), []).append(item)
    return [_ordered_series(study, series, members) for (study, series), members in groups.items()]


def _ordered_series(study_uid: str, series_uid: str, members: list[Slice]) -> Series:
    keys = _scan_positions(members)
    if keys is None:
        numbers = [item.identity.instance_number for item in members]
        if None not in numbers and len(set(numbers)) == len(numbers):
            keys, how = np.asarray(numbers, dtype=np.float64), "instance_number"
        else:
            return Series(study_uid, series_uid, list(members), ordered_by="file_order")
    else:
        how = "position"
    order = np.argsort(keys, kind="stable")
    return Series(study_uid, series_uid, [members[i] for i in order], ordered_by=how)


def _scan_positions(members: list[Slice], tolerance: float = 1e-3) -> np.ndarray | None:
    """Positions along the common slice normal, or None if they cannot order the series."""
    positions = [item.identity.position for item in members]
    orientations = [item.identity.orientation for item in members]
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
