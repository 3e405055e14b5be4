"""The pydicom path of :func:`ichrt.runtime.dicom.read_slice`: what the one-pass scan declines.

Files that are compressed, deflated, big endian, without a preamble or damaged are parsed by
pydicom and decoded by its plugins (the ``codecs`` extra adds pylibjpeg for JPEG, JPEG-LS and
JPEG 2000), with the bounds of :class:`~ichrt.runtime.dicom.IngestLimits`: a deflated dataset is
inflated in bounded steps, compressed pixel data larger than the image they encode are refused,
and so are RLE segments whose runs would decode beyond the image. pydicom is imported only when
such a file comes (importing it costs about 0.3 s of a run's start).

Compressed frames are decoded by the fastest installed plugin for their transfer syntax
(:data:`PREFERRED_PLUGINS`, measured), the next one if it fails. No codec binding releases the
GIL, so when :func:`~ichrt.runtime.dicom.iter_read` runs several readers each gets a
:class:`FrameWorker`: the reader parses its file, sends the compressed frame to its worker process
and converts the stored values it gets back to HU, while the other readers go on.
"""

from __future__ import annotations

import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import threading
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import as_pixel_options, get_decoder, pixel_array
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .dicom import (
    CODECS_HINT,
    PIXEL_KEYWORDS,
    IngestError,
    IngestLimits,
    check_declared_size,
    check_native_length,
    describe,
    header_int,
    mib,
    pixel_bytes,
    reader_context,
)
from .dicomscan import KEYWORDS, Header
from .environment import apply_quiet_pydicom

_NOT_DICOM = "not a DICOM file (no 'DICM' marker and no readable DICOM dataset)"
#: Inflated bytes of a deflated dataset read before its header is checked, and what its
#: header may add to the declared image once inflated.
_DEFLATE_PEEK = 256 << 10
_DEFLATE_HEADER_ALLOWANCE = 4 << 20
_DEFLATED_MARK = DeflatedExplicitVRLittleEndian.encode("ascii")

apply_quiet_pydicom()  # the CLI asked for it before pydicom was imported


def header_of(ds: Dataset) -> Header:
    """The :class:`~ichrt.runtime.dicomscan.Header` values of a pydicom dataset (each element
    converted once); sequences are only noted as present."""
    header = Header()
    for keyword in KEYWORDS:
        if keyword in ds:
            header[keyword] = True if keyword.endswith("Sequence") else ds.get(keyword)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        for keyword in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID"):
            value = meta.get(keyword)
            if value is not None:
                header.file_meta[keyword] = str(value)
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if keyword is not None:
        header[keyword] = True
        header.pixel_length = len(ds[keyword].value or b"")
    return header


def parse(path: Path, data: bytes, limits: IngestLimits) -> Dataset:
    """The dataset of a file; files without the 'DICM' preamble are kept if they parse as DICOM."""
    if data[128:132] == b"DICM" and _DEFLATED_MARK in data[:4096]:
        return _parse_deflated(path, data, limits)
    return _parse_file(path, _buffer(data, path))


def _parse_file(path: Path, reader: DicomBytesIO) -> Dataset:
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
                check_declared_size(path, header, limits)
            except IngestError as exc:
                raise exc.within(header) from None
            budget = min(budget, pixel_bytes(header) + _DEFLATE_HEADER_ALLOWANCE)
        data += inflater.decompress(inflater.unconsumed_tail, max(1, budget + 1 - len(data)))
    if len(data) > budget or (inflater.unconsumed_tail and not inflater.eof):
        raise IngestError(
            path, f"deflated dataset expands to more than {mib(budget)}, beyond what its image "
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


def decode(path: Path, ds: Dataset, header: Header) -> np.ndarray:
    """Stored values of the single frame, decoded by pydicom (codecs come from plugins); a
    compressed frame by the fastest plugin installed, in the reader thread's
    :class:`FrameWorker` when ``iter_read`` runs several readers."""
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
        check_native_length(path, header, header.pixel_length)
    try:
        if not syntax.is_compressed:
            return pixel_array(ds, raw=True)
        keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
        src, options = ds[keyword].value, as_pixel_options(ds, pixel_keyword=keyword)
        offer = getattr(reader_context, "frame_workers", None)
        if offer is not None:
            return FrameWorker.of_thread(offer).run(path, decode_frame, src, str(syntax), options)
        return decode_frame(src, syntax, options)
    except IngestError:
        raise
    except Exception as exc:  # damaged pixel data fails in many ways inside the codecs
        if syntax.is_compressed and "missing dependencies" in str(exc):  # no usable plugin
            raise IngestError(path, _missing_codec(syntax)) from exc
        raise IngestError(path, f"missing or corrupt pixel data ({describe(exc)})") from exc
    except BaseException as exc:  # a codec's native panic (pyo3 PanicException) is no Exception
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        raise IngestError(path, _decoder_failed(describe(exc))) from None


def _decoder_failed(description: str) -> str:
    return f"corrupt pixel data, the decoder failed ({description})"


# ----------------------------------------------------------------------------- compressed frames

#: Decoding plugins per compressed transfer syntax, the fastest first; installed plugins not named
#: come after them, and syntaxes not named keep pydicom's own order. CPU ms to decode a 512 x 512
#: CT slice stored as uint16 / int16 / 12 bits (``benchmarks/bench_read.py``, 2-core x86):
#:
#: ===================== =========== =========== ============== ============== ===========
#: syntax                gdcm        pyjpegls    pylibjpeg      pillow         pydicom
#: ===================== =========== =========== ============== ============== ===========
#: JPEG Lossless SV1     2.8/4.7/2.9 -           7.6/7.7/7.6    -              -
#: JPEG Lossless (P14)   3.1/5.2/3.2 -           8.3/8.2/8.4    -              -
#: JPEG-LS Lossless      4.0/5.8/4.0 3.2/3.2/3.1 11.1/11.1/10.6 -              -
#: JPEG 2000 Lossless    2.0/4.1/2.3 -           10.3/10.4/10.4 10.7/10.7/10.7 -
#: RLE Lossless          -           -           0.4/0.4/0.5    -              4.4/4.5/4.6
#: ===================== =========== =========== ============== ============== ===========
#:
#: All decode these files to the same values; none releases the GIL (hence :class:`FrameWorker`).
PREFERRED_PLUGINS: dict[str, tuple[str, ...]] = {
    JPEGLosslessSV1: ("gdcm", "pylibjpeg"),
    JPEGLossless: ("gdcm", "pylibjpeg"),
    JPEGLSLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEGLSNearLossless: ("pyjpegls", "gdcm", "pylibjpeg"),
    JPEG2000Lossless: ("gdcm", "pylibjpeg", "pillow"),
    JPEG2000: ("gdcm", "pylibjpeg", "pillow"),
    RLELossless: ("pylibjpeg", "pydicom"),
}


def plugins_for(syntax: str) -> tuple[str, ...]:
    """The installed decoding plugins of a compressed ``syntax`` in the order they are tried
    (empty: none installed; pydicom's order for syntaxes :data:`PREFERRED_PLUGINS` lacks)."""
    available = get_decoder(syntax).available_plugins
    preferred = [name for name in PREFERRED_PLUGINS.get(syntax, ()) if name in available]
    return (*preferred, *(name for name in available if name not in preferred))


def decode_frame(src: bytes, syntax: str, options: dict[str, Any]) -> np.ndarray:
    """Stored values of one compressed frame (``src``: the encapsulated pixel data; ``options``:
    pydicom's decoding options of its dataset), by the first of :func:`plugins_for` that
    decodes it. Runs in a reader thread or in its :class:`FrameWorker`."""
    decoder = get_decoder(syntax)
    plugins = plugins_for(syntax) if syntax in PREFERRED_PLUGINS else ()
    if not plugins:  # pydicom's order, or its message naming the missing plugins
        return decoder.as_array(src, raw=True, **options)[0]
    failures = []
    for name in plugins:
        try:
            return decoder.as_array(src, raw=True, decoding_plugin=name, **options)[0]
        except Exception as exc:  # noqa: BLE001 - the next plugin may decode it
            failures.append(f"{name}: {_plugin_message(exc, name)}")
    raise RuntimeError(
        "Unable to decode as exceptions were raised by all available plugins: "
        + "; ".join(failures))


def _plugin_message(exc: Exception, name: str) -> str:
    """The plugin's own message, without pydicom's wrapping for a single plugin, object
    addresses (a reason must read the same every time) or gdcm's empty buffer."""
    text = str(exc)
    mark = f"{name}: "
    text = text.split(mark, 1)[1] if text.startswith("Unable to decode") and mark in text else text
    if name == "gdcm" and "'NoneType' object has no attribute 'encode'" in text:
        return "cannot decode the frame"  # pydicom's gdcm plugin got no image back
    return _ADDRESS.sub("", text)


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


class FrameWorker:
    """A worker process decoding the compressed frames of one reader thread of ``iter_read``.

    The codecs hold the GIL (neither gdcm's SWIG bindings nor pylibjpeg's Cython ones release
    it), so reader threads would decode one frame at a time. Each reader instead sends its frame
    to its own worker and waits with the GIL free; parsing and the HU conversion stay on the
    reader. The worker is a fresh interpreter (``python -c``, stdin/stdout pipes), started by the
    reader's first compressed frame: plain files never start one, and nothing of the reading
    process is forked or re-imported (its ``__main__`` included). A worker that dies (a codec's
    segmentation fault or abort) was decoding exactly one frame: that file is rejected with the
    reason, and the reader's next compressed frame starts a new worker. Where no worker can start
    (or import ichrt), the reader decodes its frames itself.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._unusable = False

    @classmethod
    def of_thread(cls, offer: dict[str, Any]) -> FrameWorker:
        """The worker of the calling reader thread (made on first use and added to
        ``offer["workers"]``, which ``iter_read`` closes)."""
        worker = getattr(reader_context, "frame_worker", None)
        if worker is None:
            worker = reader_context.frame_worker = cls()
            with _WORKERS_LOCK:
                offer.setdefault("workers", []).append(worker)
        return worker

    def run(self, path: Path, function: Any, *args: Any) -> Any:
        """``function(*args)`` in the worker (here when no process can be started)."""
        proc = self._started()
        if proc is None:
            return function(*args)
        message = pickle.dumps((function, args), protocol=5)
        try:
            proc.stdin.write(len(message).to_bytes(8, "little") + message)
            proc.stdin.flush()
            head = proc.stdout.read(8)
            reply = proc.stdout.read(int.from_bytes(head, "little")) if len(head) == 8 else b""
            status, value = pickle.loads(reply) if reply else (None, None)
        except (OSError, ValueError, pickle.UnpicklingError, EOFError):
            status, value = None, None
        if status is None:  # the worker died on this frame
            raise IngestError(path, f"corrupt pixel data, the decoder crashed ({self._end()})")
        if status == "panic":
            raise IngestError(path, _decoder_failed(value))
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _stop(proc)

    def _started(self) -> subprocess.Popen | None:
        """The running worker, started now if need be (and ready: it has imported the codecs);
        None where no worker can run (no interpreter to start, or one that cannot import
        ichrt): the reader then decodes itself, as with one reader."""
        if self._proc is None and not self._unusable:
            code = (f"import sys; sys.path[:0] = {[p for p in sys.path if p]!r}; "
                    "from ichrt.runtime.dicomparse import serve_frames; serve_frames()")
            try:
                proc = subprocess.Popen([sys.executable or "python3", "-c", code],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            except OSError:
                self._unusable = True
                return None
            if proc.stdout.read(len(_READY)) != _READY:
                _stop(proc)
                self._unusable = True
                return None
            self._proc = proc
        return self._proc

    def _end(self) -> str:
        """How the dead worker ended (it is then forgotten; the next frame starts another)."""
        proc, self._proc = self._proc, None
        code = _stop(proc)
        if code is not None and code < 0:
            try:
                return f"its worker process was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"its worker process was killed by signal {-code}"
        return f"its worker process ended with exit code {code}"


_WORKERS_LOCK = threading.Lock()
#: What a worker writes once it has imported the codecs.
_READY = b"R"


def _stop(proc: subprocess.Popen) -> int | None:
    """End a worker (EOF on its input ends its loop) and return its exit status."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def serve_frames() -> None:
    """The loop of a :class:`FrameWorker` process: ``(function, args)`` in on stdin, ``("ok",
    result)`` or ``("error", exception)`` out on the original stdout (whatever the codecs print
    goes to stderr), until stdin closes. Ctrl-C is the reading process's to handle (it closes
    the workers), and warnings stay quiet: the reader's rejections say what matters."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    out.write(_READY)
    out.flush()
    stdin = sys.stdin.buffer
    while len(head := stdin.read(8)) == 8:
        function, args = pickle.loads(stdin.read(int.from_bytes(head, "little")))
        try:
            reply = ("ok", function(*args))
        except Exception as exc:  # noqa: BLE001 - the reader turns it into the file's reason
            reply = ("error", exc)
        except BaseException as exc:  # a codec's native panic (pyo3 PanicException)
            if isinstance(exc, SystemExit):
                raise
            reply = ("panic", describe(exc))
        try:
            data = pickle.dumps(reply, protocol=5)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: its description does
            data = pickle.dumps(("error", RuntimeError(describe(reply[1]))), protocol=5)
        out.write(len(data).to_bytes(8, "little") + data)
        out.flush()


def _check_compressed_length(path: Path, ds: Dataset, syntax: UID) -> None:
    """Compressed pixel data much larger than the image they encode are refused: no codec
    needs that, and decoders that trust their input could expand them far beyond the image."""
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    raw = pixel_bytes(ds)
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


def _check_rle_segments(path: Path, ds: Dataset) -> None:
    """Each RLE segment must decode to exactly Rows x Columns bytes; counted from the run
    headers, stopping as soon as a segment overshoots (no decoding, no allocation)."""
    rows, columns = header_int(ds.get("Rows")) or 0, header_int(ds.get("Columns")) or 0
    size = rows * columns
    samples = max(1, header_int(ds.get("SamplesPerPixel")) or 1)
    expected = samples * ((header_int(ds.get("BitsAllocated")) or 16) + 7) // 8
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
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
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
