"""DICOM files -> CT slices in Hounsfield units with their identity, grouped into ordered series.

Each file is read once. Plain uncompressed little-endian files (what scanners and PACS send) are
scanned in one pass by :mod:`.dicomscan`, their pixels a view of the file's bytes; everything
else goes to :mod:`.dicomparse` (pydicom, with the codecs extra's decoders), imported only then.
Both give the same :class:`~.dicomscan.Header` values, checked here by the same functions; the HU
quirk fixes live in :mod:`.hounsfield`. Every input ends up either a :class:`Slice` or a :class:`Rejected` with a reason a person can act
on: :func:`read_paths` never raises because of a bad file.

Hostile files cannot exhaust memory (:class:`IngestLimits`): a file larger than any CT slice
could be is refused before it is read; the declared Rows x Columns x frames is checked against
``max_pixels`` (default 4096 x 4096) before any pixel is decoded; a deflated dataset is inflated
in bounded steps, never beyond what its declared image needs; compressed pixel data larger than
the image they encode are refused, and so are RLE segments whose runs would decode beyond the
image (see :mod:`.dicomparse`); and values no CT produces (absurd rescale, implausible HU) are rejected.

Multi-frame objects (NumberOfFrames > 1, Enhanced CT) are rejected rather than split: a slice is
one file with its own SOP Instance UID, which the worklist names as the key slice, and PACS send
head CT as single-frame images; frames would need per-frame geometry and rescale from functional
groups to be trusted.
"""

from __future__ import annotations

import math
import os
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .dicomscan import Header, scan_header
from .hounsfield import HUParams, ImplausibleHU, rescale_parameters, stored_to_hu_fused
from .slices import (
    FirstCopies,
    Rejected,
    Series,
    Slice,
    SliceIdentity,
    scan_order,
    study_fields,
)

PathLike = str | os.PathLike
#: ``hu_buffer(shape)``: a float32 (rows, columns) array to write a slice's HU into (a slot of
#: a batch, so that batching copies nothing), or None for a new array.
HUBuffer = Callable[[tuple[int, int]], "np.ndarray | None"]
#: Told to the user whenever a compressed file cannot be decoded for want of a plugin.
CODECS_HINT = 'install the codecs extra: pip install "ichrt[codecs]"'
#: Smallest accepted image side; anything smaller is not a CT slice.
MIN_SIDE = 8
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Enhanced CT and Legacy Converted Enhanced CT Image Storage (multi-frame).
_MULTIFRAME_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
_DICOMDIR = "1.2.840.10008.1.3.10"
#: Default largest image: Rows x Columns x frames (CT slices are 512 x 512, a few 1024 x 1024).
MAX_PIXELS = 4096 * 4096
#: What a file may hold besides its pixels (header, private tags, overlays).
HEADER_ALLOWANCE = 16 << 20


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one input file may make the reader allocate.

    ``max_pixels`` bounds the declared Rows x Columns x frames x samples; the byte limits follow
    from it (8 bytes a pixel covers every CT pixel format, plus :data:`HEADER_ALLOWANCE`).
    """

    max_pixels: int = MAX_PIXELS

    def __post_init__(self) -> None:
        if self.max_pixels < MIN_SIDE * MIN_SIDE:
            raise ValueError(f"max_pixels must be at least {MIN_SIDE * MIN_SIDE}")

    @property
    def max_file_bytes(self) -> int:
        """Largest file read at all (and largest inflated deflated dataset)."""
        return self.max_pixels * 8 + HEADER_ALLOWANCE


class IngestError(Exception):
    """A file that cannot become a CT slice, with the reason (and its study, when known)."""

    def __init__(self, path: PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        #: :class:`Rejected`'s study fields, when the header could be read.
        self.study: dict[str, str] = {}

    def within(self, header: Mapping[str, Any] | None) -> IngestError:
        """This error, with the study fields of ``header`` (a :class:`Header` or pydicom
        dataset; if readable and not known yet)."""
        if header is not None and not self.study:
            self.study = _study_of(header)
        return self


@dataclass
class IngestResult:
    """Every input of a read: the slices, in input order, and the rejected files with reasons."""

    slices: list[Slice] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


# ----------------------------------------------------------------------------- files


def iter_files(
    paths: PathLike | Iterable[PathLike], skip: Iterable[PathLike] = ()
) -> list[Path]:
    """The input files: a file, a folder (recursively, sorted) or a list of both, in that order.

    Nothing is filtered: hidden files, DICOMDIRs and paths that do not exist are returned too, so
    that reading them rejects them with a reason. A path given twice is one input.  ``skip``:
    files and folders (compared by real path) left out, e.g. the output folder of the run.
    """
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    skipped = {os.path.realpath(p) for p in skip}
    files: list[Path] = []
    seen: set[str] = set()
    for item in map(Path, items):
        if _is_skipped(item, skipped):
            continue
        for path in _walk(item, skipped) if item.is_dir() else [item]:
            key = os.path.abspath(path)
            if key not in seen:
                seen.add(key)
                files.append(path)
    return files


def _is_skipped(path: Path, skipped: set[str]) -> bool:
    """True when ``path`` is, or lies inside, one of the ``skipped`` real paths."""
    if not skipped:
        return False
    real = Path(os.path.realpath(path))
    return any(str(p) in skipped for p in (real, *real.parents))


def _skips(root: str, name: str, skipped: set[str]) -> bool:
    """True for a file whose real path is skipped (resolved only when its name matches one)."""
    return any(os.path.basename(p) == name for p in skipped) and (
        os.path.realpath(os.path.join(root, name)) in skipped)


def _walk(folder: Path, skipped: set[str] = frozenset()) -> list[Path]:
    """Every non-folder entry below ``folder``, sorted; symlinked folders are followed once."""
    found: list[Path] = []
    visited: set[str] = set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        if skipped:
            dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) not in skipped]
            names = [n for n in names if not _skips(root, n, skipped)]
        found.extend(Path(root, name) for name in names)
    return sorted(found)


# ----------------------------------------------------------------------------- one file


def read_slice(path: PathLike, limits: IngestLimits | None = None,
               hu_buffer: HUBuffer | None = None) -> Slice:
    """Read one DICOM file into a CT slice in HU; raise :class:`IngestError` with the reason.

    The file is read once. Plain uncompressed little-endian files (what scanners and PACS send)
    take the fast path: :func:`~ichrt.runtime.dicomscan.scan_header` keeps only the header values
    a slice needs and the pixels are a view of the file's bytes. Everything else (compressed,
    deflated, big endian, no preamble, damaged) is parsed by pydicom. Both paths check the same
    :class:`~ichrt.runtime.dicomscan.Header` values with the same functions.
    ``hu_buffer(shape)`` may give the array to write the HU into (see :data:`HUBuffer`).
    """
    path = Path(path)
    limits = limits or IngestLimits()
    header: Header | None = None
    try:
        mtime = _check_file(path, limits)
        data = _read_bytes(path, limits)
        scanned = scan_header(data)
        if scanned is not None and scanned.pixel_offset is not None:
            header = scanned
            dtype = _native_dtype(scanned)
            if dtype is not None:
                return _to_slice(path, scanned, mtime, limits,
                                 lambda: _native_pixels(path, scanned, data, dtype), True,
                                 hu_buffer)
        from . import dicomparse  # pydicom: imported only when such a file comes

        ds = dicomparse.parse(path, data, limits)
        header = dicomparse.header_of(ds)
        return _to_slice(path, header, mtime, limits,
                         lambda: dicomparse.decode(path, ds, header), hu_buffer=hu_buffer)
    except IngestError as exc:
        raise exc.within(header) from None
    except MemoryError:
        raise IngestError(path, "too large to read into memory").within(header) from None
    except Exception as exc:  # pydicom raises many kinds of errors on damaged files
        raise IngestError(path, f"corrupt DICOM data ({describe(exc)})").within(header) from exc


def _read_bytes(path: Path, limits: IngestLimits) -> bytes:
    """The whole file (its size was checked; refused if it grew beyond the limit since).

    ``read(n)`` allocates ``n`` bytes up front, so the file's current size is asked for, not
    the limit.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > limits.max_file_bytes:
                raise IngestError(
                    path, f"file larger than {mib(limits.max_file_bytes)} while read")
            return fh.read(size)
    except OSError as exc:
        raise IngestError(path, f"cannot read: {exc.strerror or exc}") from None


def _native_dtype(header: Header) -> np.dtype | None:
    """The NumPy dtype of native single-sample pixels (8, 16 or 32 bits), or None: pydicom's."""
    bits = header_int(header.get("BitsAllocated"))
    if bits not in (8, 16, 32) or header_int(header.get("SamplesPerPixel")) not in (None, 1):
        return None
    signed = header_int(header.get("PixelRepresentation")) == 1
    return np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")


def _native_pixels(path: Path, header: Header, data: bytes, dtype: np.dtype) -> np.ndarray:
    """Stored values of a native image: a read-only view of ``data``, the unused high bits as
    stored (pydicom masks or sign-extends them; :func:`stored_to_hu_fused` does on the way)."""
    check_native_length(path, header, header.pixel_length)
    rows, columns = header_int(header.get("Rows")) or 0, header_int(header.get("Columns")) or 0
    return np.frombuffer(data, dtype, rows * columns, header.pixel_offset).reshape(rows, columns)


def _check_file(path: Path, limits: IngestLimits) -> float:
    """The file's mtime, after making sure it is a non-empty regular file of a sane size."""
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
    if info.st_size > limits.max_file_bytes:
        raise IngestError(
            path, f"file of {mib(info.st_size)} is larger than any CT slice within the image "
            f"limit ({limits.max_pixels} pixels) can be")
    return info.st_mtime


def check_declared_size(path: Path, header: Mapping[str, Any], limits: IngestLimits) -> None:
    """Refuse an image whose declared Rows x Columns x frames x samples exceed the limit."""
    rows, columns = header_int(header.get("Rows")) or 0, header_int(header.get("Columns")) or 0
    frames = max(1, header_int(header.get("NumberOfFrames")) or 1)
    samples = max(1, header_int(header.get("SamplesPerPixel")) or 1)
    if rows * columns * frames * samples > limits.max_pixels:
        what = f"{rows} x {columns}" + (f" x {frames} frames" if frames > 1 else "")
        what += f" x {samples} samples" if samples > 1 else ""
        raise IngestError(
            path, f"declares {what} pixels, more than the limit of {limits.max_pixels} "
            "(a decompression bomb, or not a CT slice; raise --max-pixels if genuine)")


def pixel_bytes(header: Mapping[str, Any]) -> int:
    """Bytes the declared image occupies once decoded."""
    rows, columns = header_int(header.get("Rows")) or 0, header_int(header.get("Columns")) or 0
    frames = max(1, header_int(header.get("NumberOfFrames")) or 1)
    samples = max(1, header_int(header.get("SamplesPerPixel")) or 1)
    bits = max(8, min(64, header_int(header.get("BitsAllocated")) or 16))
    return rows * columns * frames * samples * ((bits + 7) // 8)


def _to_slice(path: Path, header: Header, mtime: float, limits: IngestLimits,
              decode: Callable[[], np.ndarray], raw_bits: bool = False,
              hu_buffer: HUBuffer | None = None) -> Slice:
    """The slice of a file whose header values are ``header``; ``decode()`` gives its stored
    values (called only once the header passed every check), with the unused high bits as on
    disk when ``raw_bits`` (they are then ignored while converting to HU)."""
    check_declared_size(path, header, limits)
    _check_kind(path, header)
    identity = _identity(path, header, mtime)
    params, notes = _hu_params(path, header)
    stored = decode()
    if stored.shape != (identity.rows, identity.columns):
        raise IngestError(
            path,
            f"pixel array shape {stored.shape} does not match Rows x Columns "
            f"({identity.rows} x {identity.columns})",
        )
    try:
        out = hu_buffer(stored.shape) if hu_buffer is not None else None
        hu, fixes = stored_to_hu_fused(stored, params, check=True, unused_bits=raw_bits,
                                       out=out)
    except ImplausibleHU as exc:
        raise IngestError(path, f"implausible for CT: {exc}") from None
    return Slice(identity=identity, hu=hu, notes=notes + fixes)


def _check_kind(path: Path, header: Mapping[str, Any]) -> None:
    """Reject what is not a single-frame grayscale CT image, saying what it is instead."""
    sop_class = _text(header.get("SOPClassUID")) or _text(_meta(header, "MediaStorageSOPClassUID"))
    if sop_class == _DICOMDIR or "DirectoryRecordSequence" in header:
        raise IngestError(path, "DICOMDIR (an index of a DICOM medium), not an image")
    has_pixels = any(keyword in header for keyword in PIXEL_KEYWORDS)
    modality = _text(header.get("Modality")).upper()
    if modality != "CT" and not (not modality and sop_class == _CT_IMAGE):
        what = f"modality {modality}" if modality else "no Modality"
        image = "" if has_pixels else ", not an image"
        raise IngestError(path, f"{what} ({_sop_class_name(sop_class)}{image}): only CT is read")
    if sop_class in _MULTIFRAME_CT:
        raise IngestError(
            path, f"{_sop_class_name(sop_class)} (multi-frame) is not supported: send "
            "single-frame CT Image Storage")
    if not has_pixels:
        raise IngestError(path, _missing_pixels(header, _sop_class_name(sop_class)))
    if "LOCALIZER" in _texts(header.get("ImageType")):
        raise IngestError(path, "localizer (scout) image, not an axial slice")
    frames = header_int(header.get("NumberOfFrames"))
    if frames is not None and frames > 1:
        raise IngestError(
            path,
            f"multi-frame object ({frames} frames) is not supported: send single-frame CT images",
        )
    samples = header_int(header.get("SamplesPerPixel"))
    photometric = _text(header.get("PhotometricInterpretation")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2") or samples not in (None, 1):
        raise IngestError(
            path,
            f"photometric interpretation {photometric or 'missing'} "
            f"({samples or '?'} samples per pixel): not a grayscale CT image",
        )
    if ("ModalityLUTSequence" in header and "RescaleSlope" not in header
            and "RescaleIntercept" not in header):
        raise IngestError(
            path, "Modality LUT Sequence instead of RescaleSlope/Intercept: not supported"
        )


def _sop_class_name(uid: str) -> str:
    """The SOP class's name for a message (pydicom's UID dictionary, imported only then)."""
    if not uid:
        return "unknown SOP class"
    from pydicom.uid import UID

    return UID(uid).name


def _missing_pixels(header: Mapping[str, Any], kind: str) -> str:
    rows, columns = header_int(header.get("Rows")), header_int(header.get("Columns"))
    if rows and columns:
        return (
            f"no Pixel Data although the header describes a {rows} x {columns} image (truncated?)"
        )
    return f"no Pixel Data in this {kind} object (file truncated, or a header-only copy)"


def _identity(path: Path, header: Mapping[str, Any], mtime: float) -> SliceIdentity:
    uids = {
        "StudyInstanceUID": _text(header.get("StudyInstanceUID")),
        "SeriesInstanceUID": _text(header.get("SeriesInstanceUID")),
        "SOPInstanceUID": _text(header.get("SOPInstanceUID"))
        or _text(_meta(header, "MediaStorageSOPInstanceUID")),
    }
    missing = [name for name, value in uids.items() if not value]
    if missing:
        raise IngestError(
            path, f"missing {', '.join(missing)}: cannot tell which study/series it is"
        )
    rows, columns = header_int(header.get("Rows")) or 0, header_int(header.get("Columns")) or 0
    if min(rows, columns) < MIN_SIDE:
        raise IngestError(path, f"image of {rows} x {columns} pixels: too small for a CT slice")
    return SliceIdentity(
        path=str(path),
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        sop_uid=uids["SOPInstanceUID"],
        instance_number=header_int(header.get("InstanceNumber")),
        position=_floats(header.get("ImagePositionPatient"), 3),
        orientation=_orientation(header.get("ImageOrientationPatient")),
        accession_number=_text(header.get("AccessionNumber")),
        patient_id=_text(header.get("PatientID")),
        study_date=_text(header.get("StudyDate")),
        study_time=_text(header.get("StudyTime")),
        acquisition_date=_text(header.get("AcquisitionDate")),
        acquisition_time=_text(header.get("AcquisitionTime")),
        modality=_text(header.get("Modality")).upper() or "CT",
        file_mtime=mtime,
        rows=rows,
        columns=columns,
        pixel_spacing=_floats(header.get("PixelSpacing"), 2),
        slice_thickness=(_floats(header.get("SliceThickness"), 1) or (None,))[0],
    )


def _hu_params(path: Path, header: Mapping[str, Any]) -> tuple[HUParams, tuple[str, ...]]:
    """The header's rescale, storage and padding attributes, with notes on odd values."""
    try:
        raw_slope, raw_intercept = header.get("RescaleSlope"), header.get("RescaleIntercept")
        slope, intercept = rescale_parameters(raw_slope, raw_intercept)
    except ValueError as exc:
        raise IngestError(path, f"unusable rescale: {exc}") from None
    notes = tuple(
        f"multi-valued {name}: first value used"
        for name, value in (("RescaleSlope", raw_slope), ("RescaleIntercept", raw_intercept))
        if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) > 1
    )
    bits_allocated = header_int(header.get("BitsAllocated")) or 16
    signed = header_int(header.get("PixelRepresentation")) == 1
    params = HUParams(
        slope=slope,
        intercept=intercept,
        has_rescale=raw_slope is not None or raw_intercept is not None,
        bits_stored=header_int(header.get("BitsStored")) or bits_allocated,
        signed=signed,
        monochrome1=_text(header.get("PhotometricInterpretation")).upper() == "MONOCHROME1",
        padding_value=_stored_int(header.get("PixelPaddingValue"), bits_allocated, signed),
        padding_limit=_stored_int(header.get("PixelPaddingRangeLimit"), bits_allocated, signed),
    )
    return params, notes


def check_native_length(path: Path, header: Mapping[str, Any], actual: int) -> None:
    """Uncompressed pixel data (``actual`` bytes) must hold Rows x Columns samples: shorter
    means a cut file."""
    keyword = next(k for k in PIXEL_KEYWORDS if k in header)
    bits = {"PixelData": header_int(header.get("BitsAllocated")) or 16,
            "FloatPixelData": 32}.get(keyword, 64)
    expected = (header_int(header.get("Rows")) or 0) * (header_int(header.get("Columns")) or 0) * bits // 8
    if actual < expected:
        raise IngestError(
            path, f"pixel data truncated: {actual} of {expected} bytes (file cut short?)"
        )


def _meta(ds: Mapping[str, Any], keyword: str) -> Any:
    meta = getattr(ds, "file_meta", None)
    return meta.get(keyword) if meta is not None else None


def _text(value: Any) -> str:
    """A single string value, stripped of the spaces and NULs DICOM pads with."""
    if type(value) is str:  # the common case, without the slow abstract Sequence check
        return value.strip(" \x00")
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
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


def header_int(value: Any) -> int | None:
    """An integer value (IS, US), or None when absent or not a number."""
    if type(value) is int:
        return value
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
    if len(numbers) != count or not all(math.isfinite(n) for n in numbers):
        return None
    return numbers


def _orientation(value: Any) -> tuple[float, ...] | None:
    """ImageOrientationPatient if its row and column vectors are usable (non-zero, not parallel)."""
    cosines = _floats(value, 6)
    if cosines is None:
        return None
    (a, b, c), (d, e, f) = cosines[:3], cosines[3:]
    normal = (b * f - c * e, c * d - a * f, a * e - b * d)
    return cosines if math.hypot(*normal) > 1e-3 else None


def _stored_int(value: Any, bits_allocated: int, signed: bool) -> int | None:
    """A padding value in the stored values' own range (files mix up US and SS for it)."""
    number = header_int(value)
    if number is None:
        return None
    span = 1 << bits_allocated
    if signed and number >= span // 2:
        number -= span
    elif not signed and number < 0:
        number += span
    return number


def _study_of(header: Mapping[str, Any]) -> dict[str, str]:
    """:class:`Rejected`'s study fields from a (possibly damaged) header; {} without a study."""
    try:
        uid = _text(header.get("StudyInstanceUID"))
        if not uid:
            return {}
        return {"study_uid": uid, "accession_number": _text(header.get("AccessionNumber")),
                "patient_id": _text(header.get("PatientID")),
                "study_date": _text(header.get("StudyDate")), "study_time": _text(header.get("StudyTime"))}
    except Exception:  # noqa: BLE001 - damaged elements fail on access; the study stays unknown
        return {}


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- many files


#: Set in each reader thread of :func:`iter_read` when it runs several: ``frame_workers``, a dict
#: whose ``"workers"`` collects the readers' :class:`~ichrt.runtime.dicomparse.FrameWorker`
#: processes (each started by its reader's first compressed frame) for iter_read to close.
reader_context = threading.local()


def default_workers() -> int:
    """Readers when the CPU is theirs (``ichrt ingest``, a GPU running the model): one per core
    available to this process but one, up to 8.

    A plain slice costs a reader ~0.35 ms, partly outside the GIL; a compressed one ~2 ms on its
    reader (parsing, under the GIL) plus 3-5 ms of decoding (JPEG Lossless, gdcm) in the
    reader's worker process (:class:`~ichrt.runtime.dicomparse.FrameWorker`; the codecs hold
    the GIL), which takes ~0.4 s to start. The core left over keeps the reading process's
    parsing (and the model's feed) off the workers' cores: on 2 cores, 2 readers with their
    workers read a 240-slice JPEG Lossless series at 0.79x the speed of one reader decoding on
    its thread, and 720 slices at 1.02x (``benchmarks/bench_read.py``), so 2 cores get one.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus - 1))


def read_or_reject(path: PathLike, limits: IngestLimits | None = None,
                   hu_buffer: HUBuffer | None = None) -> Slice | Rejected:
    """:func:`read_slice`, with any failure turned into a :class:`Rejected`."""
    try:
        return read_slice(path, limits, hu_buffer)
    except IngestError as exc:
        return Rejected.of(exc.path, exc.reason, **exc.study)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the batch; the reason names it
        return Rejected.of(path, f"unexpected error ({describe(exc)})")


def _read_prepared(i: int, path: PathLike, limits: IngestLimits | None,
                   buffer: HUBuffer | None,
                   prepare: Callable[[int, Slice], Slice | Rejected] | None) -> Slice | Rejected:
    """:func:`read_or_reject`, then ``prepare(i, slice)`` (see :func:`iter_read`)."""
    item = read_or_reject(path, limits, buffer)
    if prepare is None or not isinstance(item, Slice):
        return item
    try:
        return prepare(i, item)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the batch; the reason names it
        return Rejected.of(path, f"unexpected error preparing the slice ({describe(exc)})",
                           **study_fields(item.identity))


def iter_read(
    files: Sequence[PathLike], workers: int | None = None, limits: IngestLimits | None = None,
    hu_buffers: Callable[[int], HUBuffer] | None = None,
    prepare: Callable[[int, Slice], Slice | Rejected] | None = None,
) -> Iterator[Slice | Rejected]:
    """Read ``files`` on ``workers`` reader threads, yielding results in input order.

    ``hu_buffers(i)``: where file ``i`` may write its HU (see :class:`HUBuffer`).
    ``prepare(i, slice)``: run on the reader thread right after file ``i`` is read, while its
    pixels are in the cache (batching windows it there); an error in it rejects the file.

    At most ``2 * workers`` files are in flight: memory stays bounded when the consumer is slower.
    With more than one reader, each decodes its compressed frames in a worker process of its own
    (:class:`~ichrt.runtime.dicomparse.FrameWorker`, started by its first compressed frame, ended
    here); plain files never leave the reader threads. A file whose decoder crashes its worker is
    rejected with the reason; the others are read as usual.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    offer: dict[str, list] | None = {"workers": []} if workers > 1 else None

    def enter() -> None:
        reader_context.frame_workers = offer

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="ichrt-ingest",
                                initializer=enter) as pool:
            pending: deque = deque()
            for i, path in enumerate(files):
                buffer = hu_buffers(i) if hu_buffers is not None else None
                pending.append(pool.submit(_read_prepared, i, path, limits, buffer, prepare))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        for worker in offer["workers"] if offer is not None else ():
            worker.close()


def read_paths(
    paths: PathLike | Iterable[PathLike],
    workers: int | None = None,
    progress: Callable[[int], Any] | None = None,
    limits: IngestLimits | None = None,
) -> IngestResult:
    """Read files, folders or a list of them; every file becomes a slice or a rejection.

    ``progress`` is called with 1 after each file (``tqdm.update`` fits). A second file with the
    SOP Instance UID of an earlier one is rejected as a duplicate.
    """
    result = IngestResult()
    copies = FirstCopies()
    for item in iter_read(iter_files(paths), workers, limits):
        item = copies.check(item) if isinstance(item, Slice) else item
        if isinstance(item, Slice):
            result.slices.append(item)
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
    order, how = scan_order([item.identity for item in members])
    return Series(study_uid, series_uid, [members[i] for i in order], ordered_by=how)


