"""Phantom generator speed: slices per second at 512 x 512, alone and with DICOM writing.

Three measurements on the same studies, in the same process:

* ``generate``: :func:`ichrt.runtime.synth.generate_study` (anatomy, lesions, rasterization,
  scanner physics; half of the studies positive);
* ``write``: writing those studies' slices as DICOM files (pydicom), masks and boxes excluded;
* ``dataset``: :func:`ichrt.runtime.synth.write_dataset` end to end (generation, DICOM, masks,
  boxes, labels), the way ``ichrt synth`` runs.

Each entry records wall slices/s (from the fastest round) and CPU ms per slice (process CPU time
of all threads, which a busy shared machine inflates much less than wall time) in
``extra_info``; the ``dataset`` entry also holds its ratio to ``generate`` (the cost of
writing). Goal: >= 100 slices/s for ``generate`` on the 2-core build machine; a summary is
printed at the end.

With ``--benchmark-disable`` (the project default) each runs once on a tiny study and only
checks that slices come out.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ichrt.runtime.synth import generate_study, write_dataset
from ichrt.runtime.synth.writer import write_study_dicom

SIZE = 512
SLICES = 16
STUDIES = 4
#: name -> (wall slices/s, CPU ms per slice), filled as the benchmarks run.
RESULTS: dict[str, tuple[float, float]] = {}
CPU: dict[str, float] = {}


@pytest.fixture(scope="module")
def quick(request: pytest.FixtureRequest) -> bool:
    """True when benchmarks are disabled: one tiny study per measurement."""
    config = request.config
    quick = bool(config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))
    if not quick:
        config.pluginmanager.register(_Summary(), "ichrt-bench-synth-summary")
    return quick


def _shape(quick: bool) -> tuple[int, int, int]:
    """(studies, slices per study, size)."""
    return (1, 2, 64) if quick else (STUDIES, SLICES, SIZE)


def _studies(n: int, slices: int, size: int) -> list:
    return [generate_study(100 + k, n_slices=slices, size=size, positive=k % 2 == 0)
            for k in range(n)]


def _timed(name: str, fn):
    """``fn`` wrapped to keep its smallest process CPU time under ``name``."""
    def run(*args):
        start = time.process_time()
        result = fn(*args)
        spent = time.process_time() - start
        CPU[name] = min(CPU.get(name, spent), spent)
        return result
    return run


def _record(benchmark, name: str, n_slices: int) -> float:
    best = benchmark.stats.stats.min if benchmark.stats else float("nan")
    rate = n_slices / best
    cpu_ms = 1000.0 * CPU.get(name, float("nan")) / n_slices
    RESULTS[name] = (rate, cpu_ms)
    benchmark.extra_info["slices_per_second"] = round(rate, 2)
    benchmark.extra_info["cpu_ms_per_slice"] = round(cpu_ms, 2)
    return rate


def test_generate(benchmark, quick: bool) -> None:
    n, slices, size = _shape(quick)
    generate_study(1, n_slices=1, size=size)  # compile / load the Numba cache outside timing
    studies = benchmark.pedantic(_timed("generate", _studies), args=(n, slices, size),
                                 rounds=1 if quick else 3)
    assert sum(s.hu.shape[0] for s in studies) == n * slices
    if not quick:
        _record(benchmark, "generate", n * slices)


def test_write(benchmark, quick: bool, tmp_path: Path) -> None:
    n, slices, size = _shape(quick)
    studies = _studies(n, slices, size)

    def write() -> int:
        return sum(len(write_study_dicom(s, tmp_path)) for s in studies)

    assert benchmark.pedantic(_timed("write", write), rounds=1 if quick else 3) == n * slices
    if not quick:
        _record(benchmark, "write", n * slices)


def test_dataset(benchmark, quick: bool, tmp_path_factory: pytest.TempPathFactory) -> None:
    n, slices, size = _shape(quick)

    def run() -> dict:
        out = tmp_path_factory.mktemp("bench")
        return write_dataset(out, studies=n, seed=5, slices=slices, size=size, prevalence=0.5)

    summary = benchmark.pedantic(_timed("dataset", run), rounds=1 if quick else 3)
    assert summary["slices"] == n * slices
    if not quick:
        rate = _record(benchmark, "dataset", n * slices)
        if "generate" in RESULTS:
            benchmark.extra_info["ratio_to_generate"] = round(RESULTS["generate"][0] / rate, 3)


class _Summary:
    """Prints slices/s per measurement at the end of a benchmark session."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not RESULTS:
            return
        terminalreporter.write_sep("-", f"phantom generator, {SIZE}x{SIZE} (goal >= 100/s)")
        for name, (rate, cpu_ms) in RESULTS.items():
            terminalreporter.write_line(f"{name:>10}: {rate:8.1f} slices/s "
                                        f"({1000.0 / rate:6.2f} ms/slice wall, "
                                        f"{cpu_ms:6.2f} ms/slice CPU)")
        terminalreporter.write_line(f"measured {time.strftime('%Y-%m-%d %H:%M')}")
