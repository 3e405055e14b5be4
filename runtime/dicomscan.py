"""One pass over a plain DICOM file: the few header values a CT slice needs and where its pixels lie.

pydicom parses every element of a file into Python objects and converts each one again on every
``Dataset.get``; for a 512 x 512 slice that costs more than reading and windowing its pixels.
:func:`scan_header` walks the elements of the common case once, keeps the raw bytes of only the
tags in :data:`WANTED` and returns them decoded as pydicom would (``str``, a list of ``str`` for
multi-valued text, ``int`` for binary integers), with the offset of the native pixel data, so
that the pixels become a NumPy view of the file's bytes without a copy.

The common case is: a Part 10 file ('DICM' at byte 128) in Implicit or Explicit VR Little Endian,
uncompressed pixel data of defined length, ASCII text in the values kept. Anything else (no
preamble, deflated, big endian, compressed, float pixels, non-ASCII text, a damaged element, a
length beyond the file) returns None: the caller then reads the file with pydicom, whose messages
and safety checks handle the unusual and the hostile. Nothing here raises on bad bytes.
"""

from __future__ import annotations

import struct
from typing import Any

#: Header values a slice needs (see :mod:`ichrt.runtime.dicom`), by tag, with the VR used when
#: the file does not say (Implicit VR).  Sequences are only noted as present.
WANTED: dict[int, tuple[str, str]] = {
    0x00041220: ("DirectoryRecordSequence", "SQ"),
    0x00080008: ("ImageType", "CS"),
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080022: ("AcquisitionDate", "DA"),
    0x00080030: ("StudyTime", "TM"),
    0x00080032: ("AcquisitionTime", "TM"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x00100020: ("PatientID", "LO"),
    0x00180050: ("SliceThickness", "DS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00200013: ("InstanceNumber", "IS"),
    0x00200032: ("ImagePositionPatient", "DS"),
    0x00200037: ("ImageOrientationPatient", "DS"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280004: ("PhotometricInterpretation", "CS"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280030: ("PixelSpacing", "DS"),
    0x00280100: ("BitsAllocated", "US"),
    0x00280101: ("BitsStored", "US"),
    0x00280103: ("PixelRepresentation", "US"),
    0x00280120: ("PixelPaddingValue", "US"),
    0x00280121: ("PixelPaddingRangeLimit", "US"),
    0x00281052: ("RescaleIntercept", "DS"),
    0x00281053: ("RescaleSlope", "DS"),
    0x00283000: ("ModalityLUTSequence", "SQ"),
}
#: Keywords :func:`scan_header` may return (and :func:`ichrt.runtime.dicom.header_of` reads).
KEYWORDS: tuple[str, ...] = tuple(name for name, _ in WANTED.values())
_META_WANTED = {0x00020002: "MediaStorageSOPClassUID", 0x00020003: "MediaStorageSOPInstanceUID",
                0x00020010: "TransferSyntaxUID"}
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT = "1.2.840.10008.1.2.1"
_PIXEL_DATA = 0x7FE00010
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
#: Explicit VRs with a 2-byte reserved field and a 4-byte length.
_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"))
_BINARY_INTS = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
#: Nesting of undefined-length sequences beyond which a file is left to pydicom.
_MAX_DEPTH = 16
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class Header(dict):
    """Keyword -> value of the elements kept, plus the file meta values and the pixel location.

    Reads like a pydicom ``Dataset`` for ``get`` and ``in``; ``file_meta`` holds the group 2
    values kept (transfer syntax, media storage SOP class and instance UIDs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.file_meta: dict[str, str] = {}
        #: Byte offset and length of the native PixelData value (None without pixel data).
        self.pixel_offset: int | None = None
        self.pixel_length: int = 0


def scan_header(data: bytes | memoryview) -> Header | None:
    """The header values and pixel location of a plain uncompressed file, or None (see module)."""
    try:
        return _scan(memoryview(data))
    except (struct.error, UnicodeDecodeError, ValueError, IndexError):
        return None


def _scan(data: memoryview) -> Header | None:
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    header = Header()
    pos = _scan_meta(data, 132, header.file_meta)
    syntax = header.file_meta.get("TransferSyntaxUID")
    if pos is None or syntax not in (_IMPLICIT, _EXPLICIT):
        return None
    explicit = syntax == _EXPLICIT
    end = len(data)
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem = _TAG.unpack_from(data, pos)
        tag = group << 16 | elem
        vr, length, value = _element_header(data, pos, explicit)
        if tag == _PIXEL_DATA:
            if length == _UNDEFINED or value + length > end or (explicit and vr not in (b"OW", b"OB")):
                return None  # encapsulated in a native syntax, truncated, or odd: pydicom's turn
            header.pixel_offset, header.pixel_length = value, length
            header["PixelData"] = True
            return header
        if tag > _PIXEL_DATA or group == 0xFFFE:
            return None  # float pixels, or a stray item tag: a damaged or unusual file
        if length == _UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN"):
                return None
            pos = _skip_sequence(data, value, explicit, 0)
            if pos is None:
                return None
            if tag in WANTED:
                header[WANTED[tag][0]] = True
            continue
        if value + length > end:
            return None
        wanted = WANTED.get(tag)
        if wanted is not None:
            name, default_vr = wanted
            if default_vr == "SQ":
                header[name] = True
            else:
                kind = vr.decode("ascii") if explicit else default_vr
                parsed = _value(data[value:value + length], kind)
                if parsed is _UNUSABLE:
                    return None
                header[name] = parsed
        pos = value + length
    return header  # no pixel data: pydicom's path explains what the file is


def _scan_meta(data: memoryview, pos: int, meta: dict[str, str]) -> int | None:
    """Offset after the file meta group (always Explicit VR Little Endian), filling ``meta``."""
    end = len(data)
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(data, pos)
        if group != 0x0002:
            return pos
        _, length, value = _element_header(data, pos, True)
        if length == _UNDEFINED or value + length > end:
            return None
        name = _META_WANTED.get(group << 16 | elem)
        if name is not None:
            text = _text(data[value:value + length])
            if text is None:
                return None
            meta[name] = text.rstrip(" \x00").split("\\")[0]
        pos = value + length
    return None


def _element_header(data: memoryview, pos: int, explicit: bool) -> tuple[bytes, int, int]:
    """(VR as bytes, value length, value offset) of the element starting at ``pos``."""
    if not explicit:
        return b"", _U32.unpack_from(data, pos + 4)[0], pos + 8
    vr = bytes(data[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        return vr, _U32.unpack_from(data, pos + 8)[0], pos + 12
    if not vr.isalpha():
        raise ValueError("not an explicit VR")
    return vr, _U16.unpack_from(data, pos + 6)[0], pos + 8


def _skip_sequence(data: memoryview, pos: int, explicit: bool, depth: int) -> int | None:
    """Offset after an undefined-length sequence whose items start at ``pos``, or None."""
    if depth > _MAX_DEPTH:
        return None
    end = len(data)
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(data, pos)
        tag, length = group << 16 | elem, _U32.unpack_from(data, pos + 4)[0]
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            return None
        if length != _UNDEFINED:
            pos += length
            continue
        pos = _skip_item(data, pos, explicit, depth + 1)
        if pos is None:
            return None
    return None


def _skip_item(data: memoryview, pos: int, explicit: bool, depth: int) -> int | None:
    """Offset after an undefined-length item whose elements start at ``pos``, or None."""
    end = len(data)
    while pos + 8 <= end:
        group, elem = _TAG.unpack_from(data, pos)
        if group << 16 | elem == _ITEM_END:
            return pos + 8
        _, length, value = _element_header(data, pos, explicit)
        if length == _UNDEFINED:
            pos = _skip_sequence(data, value, explicit, depth)
            if pos is None:
                return None
        else:
            pos = value + length
    return None


_UNUSABLE = object()


def _value(raw: memoryview, vr: str) -> Any:
    """A value decoded as pydicom returns it ('' for empty text, None for an empty number);
    :data:`_UNUSABLE` when only pydicom can decode it (non-ASCII text, a VR no CT header uses
    for that tag)."""
    if vr in _BINARY_INTS:
        code = _BINARY_INTS[vr]
        size = struct.calcsize(code)
        if len(raw) % size:
            return _UNUSABLE
        values = struct.unpack(f"<{len(raw) // size}{code}", raw)
        return None if not values else values[0] if len(values) == 1 else list(values)
    if vr in ("OB", "OW", "UN", "SQ", "FL", "FD", "OF", "OD", "AT"):
        return _UNUSABLE
    text = _text(raw)
    if text is None:
        return _UNUSABLE
    text = text.rstrip(" \x00")
    items = text.split("\\")
    return items[0] if len(items) == 1 else items


def _text(raw: memoryview) -> str | None:
    """ASCII text, or None when it holds other bytes (pydicom then applies the character set)."""
    data = bytes(raw)
    return data.decode("ascii") if data.isascii() else None
