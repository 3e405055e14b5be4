"""Process settings for the CLI: quiet DICOM reading, OpenMP threads that sleep, fewer GC passes.

The ``ichrt`` group applies them before any subcommand runs (see :mod:`ichrt.runtime.cli`), so
every command reads DICOM and shares the CPU the same way.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

#: Allocations between two collections of Python's youngest generation during a CLI run (the
#: default is 700).
GC_YOUNG_THRESHOLD = 50_000


def fewer_gc_passes() -> None:
    """Keep what the imports made out of the cyclic collector and let it run less often.

    A scoring run allocates many small objects that die young (headers, identities, scores);
    with the default thresholds a 1876-slice run made 153 collections, and each pass over
    the heap holds the GIL that the reader threads need: ``ichrt score`` on 60 studies took
    4.70 s instead of 4.96 s with the INT8 model (``benchmarks/bench_overhead.py``). Objects
    still in cycles are collected, only in fewer, larger passes.
    """
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def passive_openmp() -> None:
    """Ask OpenMP (Numba's threading layer here) to sleep, not spin, between parallel calls.

    ONNX Runtime and the readers share the CPU with the windowing kernel; spinning OpenMP
    threads would steal their cores.  Takes effect only before Numba's first parallel call, so
    the CLI calls it first thing; an explicit ``OMP_WAIT_POLICY`` in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


#: Open :func:`quiet_pydicom` blocks; pydicom settings saved when the first one applied them.
_quiet = {"depth": 0, "saved": None}


@contextmanager
def quiet_pydicom() -> Iterator[None]:
    """Within the block, pydicom does not validate values while reading (restored after).

    Its warnings quote the offending element's value on stderr: thousands of lines on real
    archives (RSNA ids in place of UIDs), and a value can hold patient data.  Ingest accepts
    such values either way, so nothing else changes.  pydicom is not imported for this: a run
    whose files all take the one-pass scan never imports it; if it is imported within the
    block, :func:`apply_quiet_pydicom` (called by :mod:`ichrt.runtime.dicomparse` on import)
    applies the setting then.
    """
    _quiet["depth"] += 1
    if "pydicom" in sys.modules:
        apply_quiet_pydicom()
    try:
        yield
    finally:
        _quiet["depth"] -= 1
        saved = _quiet["saved"]
        if _quiet["depth"] == 0 and saved is not None:
            import pydicom.config

            pydicom.config.settings.reading_validation_mode = saved
            _quiet["saved"] = None


def apply_quiet_pydicom() -> None:
    """Apply an open :func:`quiet_pydicom` block's setting now that pydicom is imported."""
    if _quiet["depth"] == 0 or _quiet["saved"] is not None:
        return
    import pydicom.config

    settings = pydicom.config.settings
    _quiet["saved"] = settings.reading_validation_mode
    settings.reading_validation_mode = pydicom.config.IGNORE
