"""Process settings for the CLI: quiet DICOM reading and OpenMP threads that sleep.

The ``ichrt`` group applies both before any subcommand runs (see :mod:`ichrt.runtime.cli`), so
every command reads DICOM and shares the CPU the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def passive_openmp() -> None:
    """Ask OpenMP (Numba's threading layer here) to sleep, not spin, between parallel calls.

    ONNX Runtime and the readers share the CPU with the windowing kernel; spinning OpenMP
    threads would steal their cores.  Takes effect only before Numba's first parallel call, so
    the CLI calls it first thing; an explicit ``OMP_WAIT_POLICY`` in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Within the block, pydicom does not validate values while reading (restored after).

    Its warnings quote the offending element's value on stderr: thousands of lines on real
    archives (RSNA ids in place of UIDs), and a value can hold patient data.  Ingest accepts
    such values either way, so nothing else changes.
    """
    import pydicom.config

    settings = pydicom.config.settings
    before = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode = before
