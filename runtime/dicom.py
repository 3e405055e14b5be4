"""DICOM files -> CT slices in Hounsfield units with their identity, grouped into ordered series.

Headers are read here; pixels are decoded by pydicom's decoder plugins (the ``codecs`` extra adds
pylibjpeg for JPEG, JPEG-LS and JPEG 2000); the HU quirk fixes live in :mod:`.hounsfield`.
Every input ends up either a :class:`Slice` or a :class:`Rejected` with a reason a person can act
on: :func:`read_paths` never raises because of a bad file.

Hostile files cannot exhaust memory (:class:`IngestLimits`): a file larger than any CT slice
could be is refused before it is read; the declared Rows x Columns x frames is checked against
``max_pixels`` (default 4096 x 4096) before any pixel is decoded; a deflated dataset is inflated
in bounded steps, never beyond what its declared image needs; compressed pixel data larger than
the image they encode are refused, and so are RLE segments whose runs would decode beyond the
image (measured without decoding: pydicom's RLE decoder grows a segment as far as its runs say,
pylibjpeg-rle panics); and values no CT produces (absurd rescale, implausible HU) are rejected.

Multi-frame objects (NumberOfFrames > 1, Enhanced CT) are rejected rather than split: a slice is
one file with its own SOP Instance UID, which the worklist names as the key slice, and PACS send
head CT as single-frame images; frames would need per-frame geometry and rescale from functional
groups to be trusted.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedCTImageStorage,
    MediaStorageDirectoryStorage,
    RLELossless,
)

from .hounsfield import HUParams, ImplausibleHU, rescale_parameters, stored_to_hu
from .slices import Rejected, Series, Slice, SliceIdentity, scan_order

PathLike = str | os.PathLike
#: Told to the user whenever a compressed file cannot be decoded for want of a plugin.
CODECS_HINT = 'install the codecs extra: pip install "ichrt[codecs]"'
#: Smallest accepted image side; anything smaller is not a CT slice.
MIN_SIDE = 8
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MULTIFRAME_CT = (EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
_NOT_DICOM = "not a DICOM file (no 'DICM' marker and no readable DICOM dataset)"
#: Default largest image: Rows x Columns x frames (CT slices are 512 x 512, a few 1024 x 1024).
MAX_PIXELS = 4096 * 4096
#: What a file may hold besides its pixels (header, private tags, overlays).
HEADER_ALLOWANCE = 16 << 20
#: Inflated bytes of a deflated dataset read before its header is checked, and what its
#: header may add to the declared image once inflated.
_DEFLATE_PEEK = 256 << 10
_DEFLATE_HEADER_ALLOWANCE = 4 << 20
_DEFLATED_MARK = DeflatedExplicitVRLittleEndian.encode("ascii")


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

    def within(self, ds: Dataset | None) -> IngestError:
        """This error, with the study fields of ``ds`` (if readable and not known yet)."""
        if ds is not None and not self.study:
            self.study = _study_of(ds)
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


def read_slice(path: PathLike, limits: IngestLimits | None = None) -> Slice:
    """Read one DICOM file into a CT slice in HU; raise :class:`IngestError` with the reason."""
    path = Path(path)
    limits = limits or IngestLimits()
    ds: Dataset | None = None
    try:
        mtime = _check_file(path, limits)
        ds = _parse(path, limits)
        return _to_slice(path, ds, mtime, limits)
    except IngestError as exc:
        raise exc.within(ds) from None
    except MemoryError:
        raise IngestError(path, "too large to read into memory").within(ds) from None
    except Exception as exc:  # pydicom raises many kinds of errors on damaged files
        raise IngestError(path, f"corrupt DICOM data ({_describe(exc)})").within(ds) from exc


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
            path, f"file of {_mib(info.st_size)} is larger than any CT slice within the image "
            f"limit ({limits.max_pixels} pixels) can be")
    return info.st_mtime


def _parse(path: Path, limits: IngestLimits) -> Dataset:
    """The dataset of a file; files without the 'DICM' preamble are kept if they parse as DICOM."""
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after parsing
    except OSError as exc:
        raise IngestError(path, f"cannot read: {exc.strerror or exc}") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limits.max_file_bytes:  # (it grew since it was checked)
            raise IngestError(path, f"file larger than {_mib(limits.max_file_bytes)} while read")
        head = fh.read(4096)
        if head[128:132] == b"DICM" and _DEFLATED_MARK in head:
            fh.seek(0)
            return _parse_deflated(path, fh.read(size), limits)
        return _parse_file(path, _CappedReader(fh, size))


def _parse_file(path: Path, reader: _CappedReader) -> Dataset:
    try:
        reader.seek(0)
        return pydicom.dcmread(reader)
    except InvalidDicomError:
        pass
    except OSError as exc:
        raise IngestError(path, f"cannot read: {exc.strerror or exc}") from None
    try:
        reader.seek(0)
        ds = pydicom.dcmread(reader, force=True)
    except Exception:  # noqa: BLE001 - forced parsing of junk fails in arbitrary ways
        raise IngestError(path, _NOT_DICOM) from None
    if not any(tag in ds for tag in (0x00080016, 0x00080060, 0x00280010, 0x7FE00010)):
        raise IngestError(path, _NOT_DICOM)
    return ds


class _CappedReader:
    """A binary file whose ``read(n)`` never asks for more than the file holds.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading: a damaged element length of
    2 GB in a 1 KB file would make every value read allocate 2 GB.
    """

    def __init__(self, fh: Any, size: int) -> None:
        self._fh = fh
        self._size = size
        self.name = fh.name

    def read(self, n: int | None = -1) -> bytes:
        left = max(0, self._size - self._fh.tell())
        return self._fh.read(left if n is None or n < 0 or n > left else n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _buffer(data: bytes, path: Path) -> DicomBytesIO:
    """``data`` as a file pydicom can parse; named, as pydicom's messages quote the name."""
    buffer = DicomBytesIO(data)
    buffer.name = str(path)
    return buffer


def _parse_deflated(path: Path, raw: bytes, limits: IngestLimits) -> Dataset:
    """A Deflated Explicit VR Little Endian file, inflated in bounded steps.

    pydicom inflates the whole dataset at once, whatever it expands to (130 KB of zeros become
    128 MiB); here the first :data:`_DEFLATE_PEEK` bytes are inflated, the declared image checked
    against the limit, and the rest inflated only up to what that image needs.
    """
    fh = _buffer(raw, path)
    preamble = read_preamble(fh, False)
    meta = _read_file_meta_info(fh)
    zipped = raw[fh.tell():]
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    data = inflater.decompress(zipped, _DEFLATE_PEEK)
    budget = limits.max_file_bytes
    if not inflater.eof:
        header = _partial_header(data)
        if header is not None:
            try:
                _check_declared_size(path, header, limits)
            except IngestError as exc:
                raise exc.within(header) from None
            budget = min(budget, _pixel_bytes(header) + _DEFLATE_HEADER_ALLOWANCE)
        data += inflater.decompress(inflater.unconsumed_tail, max(1, budget + 1 - len(data)))
    if len(data) > budget or (inflater.unconsumed_tail and not inflater.eof):
        raise IngestError(
            path, f"deflated dataset expands to more than {_mib(budget)}, beyond what its image "
            "needs (a decompression bomb?)")
    if not inflater.eof:
        raise IngestError(path, "deflated dataset truncated (file cut short?)")
    ds = read_dataset(_buffer(data, path), is_implicit_VR=False, is_little_endian=True)
    return FileDataset(str(path), ds, preamble=preamble, file_meta=meta,
                       is_implicit_VR=False, is_little_endian=True)


def _partial_header(data: bytes) -> Dataset | None:
    """The elements before the pixel data of a partly inflated dataset, or None."""
    try:
        return read_dataset(DicomBytesIO(data), is_implicit_VR=False, is_little_endian=True,
                            stop_when=lambda tag, vr, length: tag >= 0x7FE00000)
    except Exception:  # noqa: BLE001 - a header longer than the peek: the global bound applies
        return None


def _check_declared_size(path: Path, ds: Dataset, limits: IngestLimits) -> None:
    """Refuse an image whose declared Rows x Columns x frames x samples exceed the limit."""
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    frames = max(1, _int(ds.get("NumberOfFrames")) or 1)
    samples = max(1, _int(ds.get("SamplesPerPixel")) or 1)
    if rows * columns * frames * samples > limits.max_pixels:
        what = f"{rows} x {columns}" + (f" x {frames} frames" if frames > 1 else "")
        what += f" x {samples} samples" if samples > 1 else ""
        raise IngestError(
            path, f"declares {what} pixels, more than the limit of {limits.max_pixels} "
            "(a decompression bomb, or not a CT slice; raise --max-pixels if genuine)")


def _pixel_bytes(ds: Dataset) -> int:
    """Bytes the declared image occupies once decoded."""
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    frames = max(1, _int(ds.get("NumberOfFrames")) or 1)
    samples = max(1, _int(ds.get("SamplesPerPixel")) or 1)
    bits = max(8, min(64, _int(ds.get("BitsAllocated")) or 16))
    return rows * columns * frames * samples * ((bits + 7) // 8)


def _to_slice(path: Path, ds: Dataset, mtime: float, limits: IngestLimits) -> Slice:
    _check_declared_size(path, ds, limits)
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
    try:
        hu, fixes = stored_to_hu(stored, params, check=True)
    except ImplausibleHU as exc:
        raise IngestError(path, f"implausible for CT: {exc}") from None
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
        _check_compressed_length(path, ds, syntax)
        if syntax == RLELossless:
            _check_rle_segments(path, ds)
    else:
        _check_native_length(path, ds)
    try:
        return pixel_array(ds, raw=True)
    except Exception as exc:  # damaged pixel data fails in many ways inside the codecs
        if syntax.is_compressed and "missing dependencies" in str(exc):  # no usable plugin
            raise IngestError(path, _missing_codec(syntax)) from exc
        raise IngestError(path, f"missing or corrupt pixel data ({_describe(exc)})") from exc
    except BaseException as exc:  # a codec's native panic (pyo3 PanicException) is no Exception
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise IngestError(path, f"corrupt pixel data, the decoder failed ({_describe(exc)})") from None


def _check_compressed_length(path: Path, ds: Dataset, syntax: UID) -> None:
    """Compressed pixel data much larger than the image they encode are refused: no codec
    needs that, and decoders that trust their input could expand them far beyond the image."""
    keyword = next(k for k in _PIXEL_KEYWORDS if k in ds)
    raw = _pixel_bytes(ds)
    allowed = raw + raw // 64 + 4096 if syntax == RLELossless else 2 * raw + 65536
    actual = len(ds[keyword].value or b"")
    if actual > allowed:
        raise IngestError(
            path, f"compressed pixel data of {actual} bytes for an image of {raw} bytes "
            f"({syntax.name}): corrupt or hostile")


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


def _check_rle_segments(path: Path, ds: Dataset) -> None:
    """Each RLE segment must decode to exactly Rows x Columns bytes; counted from the run
    headers, stopping as soon as a segment overshoots (no decoding, no allocation)."""
    rows, columns = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    size = rows * columns
    samples = max(1, _int(ds.get("SamplesPerPixel")) or 1)
    expected = samples * ((_int(ds.get("BitsAllocated")) or 16) + 7) // 8
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    if len(frame) < 64:
        raise IngestError(path, "RLE pixel data shorter than its 64-byte header")
    count, *offsets = struct.unpack("<16L", frame[:64])
    if count != expected or count > 15:
        raise IngestError(path, f"RLE data has {count} segments, the image needs {expected}")
    ends = [*offsets[1:count], len(frame)]
    for i, (start, end) in enumerate(zip(offsets[:count], ends), start=1):
        if not 64 <= start <= end <= len(frame):
            raise IngestError(path, f"RLE segment {i} lies outside the pixel data")
        decoded = _rle_length(frame, start, end, size + RLE_SLACK)
        if decoded > size + RLE_SLACK:
            raise IngestError(path, f"RLE segment {i} decodes beyond the {rows} x {columns} "
                              "image (corrupt or hostile)")


#: Bytes an RLE segment may decode to past its image: encoders pad each segment to an even
#: length and some end a segment with a run that overshoots by less than one run (decoders drop
#: the excess); a hostile segment overshoots by far more.
RLE_SLACK = 256


def _rle_length(data: bytes, pos: int, end: int, limit: int) -> int:
    """Bytes the complete PackBits runs in ``data[pos:end]`` decode to, counting stops past
    ``limit`` (a run cut by the segment's end, such as a padding byte, does not count)."""
    total = 0
    while pos < end and total <= limit:
        header = data[pos]
        if header < 128:  # literal run of header + 1 bytes
            if pos + header + 2 > end:
                break
            total += header + 1
            pos += header + 2
        elif header > 128:  # the next byte repeated 257 - header times
            if pos + 2 > end:
                break
            total += 257 - header
            pos += 2
        else:
            pos += 1
    return total


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


def _study_of(ds: Dataset) -> dict[str, str]:
    """:class:`Rejected`'s study fields from a (possibly damaged) header; {} without a study."""
    try:
        uid = _text(ds.get("StudyInstanceUID"))
        if not uid:
            return {}
        return {"study_uid": uid, "accession_number": _text(ds.get("AccessionNumber")),
                "patient_id": _text(ds.get("PatientID")),
                "study_date": _text(ds.get("StudyDate")), "study_time": _text(ds.get("StudyTime"))}
    except Exception:  # noqa: BLE001 - damaged elements fail on access; the study stays unknown
        return {}


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 240 else text[:237] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------- many files


def default_workers() -> int:
    """Reader threads: decoding releases the GIL in NumPy and the codecs, parsing does not."""
    return max(1, min(8, os.cpu_count() or 1))


def read_or_reject(path: PathLike, limits: IngestLimits | None = None) -> Slice | Rejected:
    """:func:`read_slice`, with any failure turned into a :class:`Rejected`."""
    try:
        return read_slice(path, limits)
    except IngestError as exc:
        return Rejected.of(exc.path, exc.reason, **exc.study)
    except Exception as exc:  # noqa: BLE001 - a bug must not stop the batch; the reason names it
        return Rejected.of(path, f"unexpected error ({_describe(exc)})")


def iter_read(
    files: Sequence[PathLike], workers: int | None = None, limits: IngestLimits | None = None
) -> Iterator[Slice | Rejected]:
    """Read ``files`` on a thread pool, yielding results in input order.

    At most ``2 * workers`` files are in flight: memory stays bounded when the consumer is slower.
    """
    workers = default_workers() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(workers, thread_name_prefix="ichrt-ingest") as pool:
        pending: deque = deque()
        for path in files:
            pending.append(pool.submit(read_or_reject, path, limits))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


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
    first_path: dict[str, str] = {}
    for item in iter_read(iter_files(paths), workers, limits):
        if isinstance(item, Slice):
            first = first_path.setdefault(item.identity.sop_uid, item.identity.path)
            if first == item.identity.path:
                result.slices.append(item)
            else:
                result.rejected.append(Rejected.duplicate(item.identity, first))
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


