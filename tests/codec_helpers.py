"""Compressed CT series for the decoding tests and benchmarks: JPEG Lossless through dcmtk.

``jpeg_lossless(files, out)`` transcodes DICOM files with dcmtk's ``dcmcjpeg`` (its default, +e1:
JPEG Lossless, Non-Hierarchical, First-Order Prediction, Selection Value 1, transfer syntax
1.2.840.10008.1.2.4.70, what CT archives commonly store); ``needs_dcmcjpeg()`` skips a test
without dcmtk on a developer's machine and fails it in CI (``CI`` set), where scripts/test.sh
installs dcmtk, as :func:`serve_helpers.needs_peers` does for the network peers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ichrt.runtime.dicomparse import decode_frame

#: Transfer syntax ``dcmcjpeg`` writes by default.
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
DCMCJPEG = shutil.which("dcmcjpeg")
#: Rows of the image that :func:`crash_on_marked_rows` decodes by crashing its process.
CRASH_ROWS = 40


def needs_dcmcjpeg():
    """Skip without dcmtk's dcmcjpeg on a developer's machine; fail in CI instead."""
    import pytest

    reason = "dcmcjpeg not installed (apt-get install dcmtk; scripts/test.sh does it)"
    return pytest.mark.skipif(DCMCJPEG is None and not os.environ.get("CI"), reason=reason)


def jpeg_lossless(files: Sequence[Path], out: Path, jobs: int = 2) -> list[Path]:
    """``files`` transcoded to JPEG Lossless SV1 by ``dcmcjpeg`` into ``out`` (same names)."""
    if DCMCJPEG is None:
        raise RuntimeError("dcmcjpeg not installed (apt-get install dcmtk)")
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / Path(f).name for f in files]

    def one(pair: tuple[Path, Path]) -> None:
        subprocess.run([DCMCJPEG, str(pair[0]), str(pair[1])], check=True,
                       capture_output=True, timeout=120)

    with ThreadPoolExecutor(max(1, jobs)) as pool:
        list(pool.map(one, zip(files, targets)))
    return targets


def phantom_series(folder: Path, slices: int, seed: int = 15) -> list[Path]:
    """A positive 512 x 512 phantom head series of ``slices`` plain files."""
    from ichrt.runtime.benchmark import write_phantom_study

    return write_phantom_study(folder, slices, seed)


def crash_on_marked_rows(src: bytes, syntax: str, options: dict[str, Any]) -> Any:
    """:func:`ichrt.runtime.dicomparse.decode_frame`, except that a frame of
    :data:`CRASH_ROWS` rows kills its process with SIGSEGV, as a codec's bug would."""
    if int(options.get("rows", 0)) == CRASH_ROWS:
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_frame(src, syntax, options)


class PanicException(BaseException):
    """What pyo3 raises for a Rust panic (pylibjpeg-rle): no :class:`Exception`."""


def panic_on_marked_rows(src: bytes, syntax: str, options: dict[str, Any]) -> Any:
    """:func:`ichrt.runtime.dicomparse.decode_frame`, except that a frame of
    :data:`CRASH_ROWS` rows raises :class:`PanicException`, as pylibjpeg-rle does."""
    if int(options.get("rows", 0)) == CRASH_ROWS:
        raise PanicException("index out of bounds")
    return decode_frame(src, syntax, options)
