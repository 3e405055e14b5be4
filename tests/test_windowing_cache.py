"""Numba's on-disk cache: a second process loads the compiled kernels instead of compiling."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_FIRST_CALLS = """
import json
import numpy as np
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.framing import _head_extents, head_boxes
from ichrt.runtime.windowing import _window_kernel, window_batch

hu = np.full((1, 64, 64), -1000.0, np.float32)
hu[0, 16:48, 16:48] = 40.0
window_batch((hu + 1024).astype(np.int16), ModelContract(), head_boxes(hu), intercepts=-1024)
print(json.dumps({
    name: [sum(f.stats.cache_hits.values()), sum(f.stats.cache_misses.values())]
    for name, f in (("window", _window_kernel), ("framing", _head_extents))
}))
"""


def _first_calls() -> dict[str, list[int]]:
    """Cache (hits, misses) of the windowing and framing kernels in a fresh process.

    The process uses the cache the runtime would use (``NUMBA_CACHE_DIR`` if set, else
    ``__pycache__`` beside the modules), so the check costs a compile only when that cache is
    cold or stale.
    """
    done = subprocess.run(
        [sys.executable, "-c", _FIRST_CALLS],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_second_process_loads_compiled_kernels_from_cache() -> None:
    first = _first_calls()
    assert all(sum(counts) == 1 for counts in first.values()), first  # compiled or loaded
    second = _first_calls()
    assert second == {"window": [1, 0], "framing": [1, 0]}, f"compiled again: {second}"
