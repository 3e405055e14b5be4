"""Reading speed: the plain read path, and a compressed series by decoder, serially and in parallel.

Run with ``pytest benchmarks/bench_read.py --benchmark-enable`` (a few minutes). On a positive
512 x 512 phantom head series of :data:`SLICES` slices (``ichrt.runtime.synth``), written plain
and transcoded to JPEG Lossless SV1 (1.2.840.10008.1.2.4.70) by dcmtk's ``dcmcjpeg``:

* ``test_plain_read_path``: ms per file of reading the bytes, of pydicom (``dcmread`` +
  ``pixel_array``) and of ichrt's ``read_slice``, in alternation
  (:func:`ichrt.runtime.benchmark.read_path_ms`);
* ``test_jpeg_lossless_decoders``: ms per slice of ``read_slice`` on the JPEG series with each
  installed decoding plugin first (wall, in alternation) and the CPU ms of the decode alone;
* ``test_decoders_by_syntax``: CPU ms per slice of each plugin on JPEG Lossless SV1 and process
  14, JPEG-LS, JPEG 2000 and RLE, for three pixel formats (uint16 as the phantom is written,
  int16 holding HU, 12 bits stored): the figures behind ``dicomparse.PREFERRED_PLUGINS``;
* ``test_parallel_decode``: ``iter_read`` of the JPEG series with one reader (decoding on its
  thread) against two (each decoding in its own worker process), once and three times over,
  with the CPU time of the reading process and of the workers, and what starting a worker costs;
* ``test_scoring_readers``: the whole scoring pipeline with the shipped INT8 and FP32 models,
  1 reader against 2, on the JPEG and on the plain series (what ``pipeline.reader_threads`` is
  based on).

Figures go to each entry's ``extra_info`` and a table is printed at the end. Wall times come
from medians of alternating rounds (the CPU is shared); nothing asserts a time. With
``--benchmark-disable`` (the project's default) each part runs once on :data:`QUICK_SLICES`
slices and only checks that decoders, readers and paths agree. Without dcmcjpeg the compressed
parts skip on a developer's machine and fail in CI (``CI`` set; scripts/test.sh installs dcmtk).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ichrt.runtime import dicomparse
from ichrt.runtime.benchmark import interleaved, read_path_ms
from ichrt.runtime.dicom import iter_read, read_slice

#: The tests' helpers (compressed series, the tiny model), also when this file runs on its own.
TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from codec_helpers import jpeg_lossless, needs_dcmcjpeg, phantom_series

SLICES = 240
QUICK_SLICES = 4
#: Slices of each pixel format in ``test_decoders_by_syntax``.
SYNTAX_SLICES = 24
ROUNDS = 5
JPEG_SV1 = "1.2.840.10008.1.2.4.70"
SYNTAXES = {"jpeg-sv1": JPEG_SV1, "jpeg-p14": "1.2.840.10008.1.2.4.57",
            "jpeg-ls": "1.2.840.10008.1.2.4.80", "j2k": "1.2.840.10008.1.2.4.90",
            "rle": "1.2.840.10008.1.2.5"}
#: Figures for the summary: (part, label) -> text.
RESULTS: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def quick(request: pytest.FixtureRequest) -> bool:
    """True when benchmarks are disabled: run each part once on a few slices."""
    config = request.config
    quick = bool(config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))
    if not quick:
        request.config.pluginmanager.register(_Summary(), "ichrt-bench-read-summary")
    return quick


@pytest.fixture(scope="module")
def plain_series(quick: bool, tmp_path_factory) -> list[Path]:
    return phantom_series(tmp_path_factory.mktemp("plain"), QUICK_SLICES if quick else SLICES)


@pytest.fixture(scope="module")
def jpeg_series(plain_series: list[Path], tmp_path_factory) -> list[Path]:
    return jpeg_lossless(plain_series, tmp_path_factory.mktemp("jpeg"))


def _rounds(quick: bool) -> int:
    return 1 if quick else ROUNDS


def timed(jobs: dict[Any, Callable[[], Any]], quick: bool) -> tuple[dict[Any, float], dict]:
    """(median seconds, last result) of each job: in alternating rounds, or once when quick."""
    results: dict[Any, Any] = {}

    def keep(key: Any, job: Callable[[], Any]) -> Callable[[], None]:
        return lambda: results.__setitem__(key, job())

    if quick:
        times = {}
        for key, job in jobs.items():
            start = time.perf_counter()
            results[key] = job()
            times[key] = time.perf_counter() - start
        return times, results
    return interleaved({k: keep(k, job) for k, job in jobs.items()}, ROUNDS), results


@contextmanager
def plugin_first(syntax: str, plugin: str) -> Iterator[None]:
    """``plugin`` tried first for ``syntax`` within the block."""
    saved = dicomparse.PREFERRED_PLUGINS.get(syntax)
    dicomparse.PREFERRED_PLUGINS[syntax] = (plugin,)
    try:
        yield
    finally:
        if saved is None:
            del dicomparse.PREFERRED_PLUGINS[syntax]
        else:
            dicomparse.PREFERRED_PLUGINS[syntax] = saved


def decode_cpu_ms(frames: list[tuple[bytes, str, dict]], plugin: str, rounds: int) -> float:
    """CPU ms per frame of ``plugin`` alone (the fastest round; CPU time, so load matters less)."""
    from pydicom.pixels import get_decoder

    best = float("inf")
    for _ in range(max(1, rounds)):
        start = time.thread_time()
        for src, syntax, options in frames:
            get_decoder(syntax).as_array(src, raw=True, decoding_plugin=plugin, **options)
        best = min(best, time.thread_time() - start)
    return 1e3 * best / len(frames)


def frames_of(files: list[Path]) -> list[tuple[bytes, str, dict]]:
    import pydicom
    from pydicom.pixels import as_pixel_options

    frames = []
    for path in files:
        ds = pydicom.dcmread(path)
        frames.append((ds.PixelData, str(ds.file_meta.TransferSyntaxUID), as_pixel_options(ds)))
    return frames


# ----------------------------------------------------------------------------- plain files


def test_plain_read_path(benchmark, quick: bool, plain_series: list[Path]) -> None:
    benchmark.group = "read path"
    result = benchmark.pedantic(lambda: read_path_ms(plain_series, rounds=_rounds(quick)),
                                rounds=1, warmup_rounds=0)
    assert result["files"] == len(plain_series)
    assert all(ms > 0 for ms in result["ms_per_file"].values())
    ms = {k: round(v, 3) for k, v in result["ms_per_file"].items()}
    benchmark.extra_info.update(files=len(plain_series), ms_per_file=ms,
                                ichrt_over_pydicom=round(result["ichrt_over_pydicom"], 3))
    RESULTS["plain", "ms/file"] = (
        f"bytes {ms['bytes']}, pydicom {ms['pydicom']}, ichrt {ms['ichrt']} "
        f"(ichrt/pydicom {result['ichrt_over_pydicom']:.2f})")


# ----------------------------------------------------------------------------- decoders


@needs_dcmcjpeg()
def test_jpeg_lossless_decoders(benchmark, quick: bool, jpeg_series: list[Path],
                                plain_series: list[Path]) -> None:
    plugins = dicomparse.plugins_for(JPEG_SV1)
    assert plugins, "no JPEG Lossless decoder installed (the codecs extra)"

    def reader(plugin: str) -> Callable[[], list]:
        def run() -> list:
            with plugin_first(JPEG_SV1, plugin):
                return [read_slice(f) for f in jpeg_series]
        return run

    benchmark.group = "jpeg lossless decoders"
    times, results = benchmark.pedantic(
        lambda: timed({p: reader(p) for p in plugins}, quick), rounds=1)
    plain = [read_slice(f).hu for f in plain_series]
    for plugin in plugins:  # lossless: every decoder gives the plain slices back
        for hu, decoded in zip(plain, results[plugin]):
            np.testing.assert_array_equal(decoded.hu, hu, err_msg=plugin)
    frames = frames_of(jpeg_series)
    info = {p: {"read_ms_per_slice": round(1e3 * times[p] / len(jpeg_series), 2),
                "decode_cpu_ms": round(decode_cpu_ms(frames, p, _rounds(quick)), 2)}
            for p in plugins}
    benchmark.extra_info.update(slices=len(jpeg_series), plugins=info, chosen=plugins[0])
    RESULTS["jpeg", "read_slice ms/slice"] = ", ".join(
        f"{p} {v['read_ms_per_slice']} (decode {v['decode_cpu_ms']} CPU ms)"
        for p, v in info.items()) + f"; chosen: {plugins[0]}"


@pytest.fixture(scope="module")
def variants(quick: bool, plain_series: list[Path], tmp_path_factory) -> dict[str, list[Path]]:
    """Native files of each pixel format: ``u16`` (as written), ``s16`` (HU, signed), ``u12``."""
    import pydicom

    folder = tmp_path_factory.mktemp("variants")
    chosen = plain_series[len(plain_series) // 3:][:2 if quick else SYNTAX_SLICES]
    out: dict[str, list[Path]] = {}
    for kind in ("u16", "s16", "u12"):
        (folder / kind).mkdir()
        out[kind] = []
        for path in chosen:
            ds = pydicom.dcmread(path)
            stored = ds.pixel_array.astype(np.int32)
            if kind == "s16":
                ds.PixelRepresentation, ds.RescaleIntercept = 1, 0
                ds.PixelData = (stored - 1024).astype("<i2").tobytes()
            elif kind == "u12":
                ds.BitsStored, ds.HighBit = 12, 11
                ds.PixelData = np.clip(stored, 0, 4095).astype("<u2").tobytes()
            target = folder / kind / path.name
            ds.save_as(target, enforce_file_format=True)
            out[kind].append(target)
    return out


def encode(files: list[Path], syntax: str, folder: Path) -> list[Path]:
    """``files`` in ``syntax``: JPEG Lossless by dcmcjpeg (+e1 for SV1, +el for process 14),
    the others by pydicom's encoders."""
    import subprocess

    import pydicom
    from codec_helpers import DCMCJPEG

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for path in files:
        target = folder / path.name
        if syntax == JPEG_SV1:
            subprocess.run([DCMCJPEG, str(path), str(target)], check=True)
        elif syntax == SYNTAXES["jpeg-p14"]:
            subprocess.run([DCMCJPEG, "+el", "+sv", "6", str(path), str(target)], check=True)
        else:
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(target)
        out.append(target)
    return out


@needs_dcmcjpeg()
@pytest.mark.parametrize("name", SYNTAXES)
def test_decoders_by_syntax(benchmark, quick: bool, variants: dict[str, list[Path]],
                            tmp_path, name: str) -> None:
    from pydicom.pixels import get_encoder

    syntax = SYNTAXES[name]
    if syntax not in (JPEG_SV1, SYNTAXES["jpeg-p14"]) and not get_encoder(syntax).is_available:
        pytest.skip(f"no {name} encoder installed")
    plugins = dicomparse.plugins_for(syntax)
    assert plugins, f"no {name} decoder installed"
    benchmark.group = "decoders by syntax"

    def measure() -> dict[str, dict[str, float]]:
        figures: dict[str, dict[str, float]] = {}
        for kind, files in variants.items():
            frames = frames_of(encode(files, syntax, tmp_path / kind))
            reference = [dicomparse.decode_frame(*frame) for frame in frames]
            for plugin in plugins:
                from pydicom.pixels import get_decoder

                for (src, uid, options), expected in zip(frames, reference):
                    got = get_decoder(uid).as_array(src, raw=True, decoding_plugin=plugin,
                                                    **options)[0]
                    np.testing.assert_array_equal(got, expected, err_msg=f"{plugin} {kind}")
                figures.setdefault(plugin, {})[kind] = round(
                    decode_cpu_ms(frames, plugin, _rounds(quick)), 2)
        return figures

    figures = benchmark.pedantic(measure, rounds=1)
    benchmark.extra_info.update(decode_cpu_ms=figures, order=list(plugins))
    RESULTS["syntax", name] = "; ".join(
        f"{p} " + "/".join(f"{v:.1f}" for v in figures[p].values()) for p in plugins)


# ----------------------------------------------------------------------------- parallel


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


@needs_dcmcjpeg()
@pytest.mark.parametrize("copies", [1, 3])
def test_parallel_decode(benchmark, quick: bool, jpeg_series: list[Path], copies: int) -> None:
    files = jpeg_series * copies
    cpu: dict[int, list[tuple[float, float]]] = {1: [], 2: []}

    def reading(workers: int) -> Callable[[], list]:
        def run() -> list:
            own, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
            out = list(iter_read(files, workers))
            cpu[workers].append((_cpu(resource.RUSAGE_SELF) - own,
                                 _cpu(resource.RUSAGE_CHILDREN) - children))
            return out
        return run

    benchmark.group = "parallel decode"
    times, results = benchmark.pedantic(
        lambda: timed({1: reading(1), 2: reading(2)}, quick), rounds=1)
    serial, parallel = results[1], results[2]
    assert [s.identity for s in serial] == [s.identity for s in parallel]
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.hu, b.hu)
    if quick:
        return
    n = len(files)
    info: dict[str, Any] = {"slices": n, "worker_start_s": round(_worker_start(files[0]), 3)}
    for workers in (1, 2):
        own = statistics.median(c[0] for c in cpu[workers])
        children = statistics.median(c[1] for c in cpu[workers])
        info[f"readers_{workers}"] = {"ms_per_slice": round(1e3 * times[workers] / n, 2),
                                      "cpu_ms_per_slice_reader": round(1e3 * own / n, 2),
                                      "cpu_ms_per_slice_workers": round(1e3 * children / n, 2)}
    info["speedup"] = round(times[1] / times[2], 2)
    benchmark.extra_info.update(info)
    RESULTS["parallel", f"{n} slices"] = (
        f"1 reader {info['readers_1']['ms_per_slice']} ms/slice, 2 readers + workers "
        f"{info['readers_2']['ms_per_slice']} ({info['speedup']}x; CPU "
        f"{info['readers_2']['cpu_ms_per_slice_reader']} + "
        f"{info['readers_2']['cpu_ms_per_slice_workers']} ms/slice against "
        f"{info['readers_1']['cpu_ms_per_slice_reader']}); a worker starts in "
        f"{info['worker_start_s']} s")


def _worker_start(path: Path) -> float:
    """Seconds from a new worker to its first decoded frame, less a later frame's time."""
    frame = frames_of([path])[0]
    worker = dicomparse.FrameWorker()
    try:
        start = time.perf_counter()
        worker.run(path, dicomparse.decode_frame, *frame)
        first = time.perf_counter() - start
        start = time.perf_counter()
        worker.run(path, dicomparse.decode_frame, *frame)
        return first - (time.perf_counter() - start)
    finally:
        worker.close()


# ----------------------------------------------------------------------------- scoring


@pytest.fixture(scope="module", params=["int8", "fp32"])
def scoring_model(request, tmp_path_factory):
    from ichrt.runtime.session import ModelError, default_model_path, load_model

    try:
        return request.param, load_model(default_model_path(fp32=request.param == "fp32"))
    except ModelError:
        from tinymodel import make_tiny_model

        path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
        make_tiny_model(path)
        return "tiny", load_model(path)


@needs_dcmcjpeg()
def test_scoring_readers(benchmark, quick: bool, scoring_model, jpeg_series: list[Path],
                         plain_series: list[Path]) -> None:
    from ichrt.runtime.pipeline import run_pipeline

    name, model = scoring_model
    series = {"jpeg": jpeg_series, "plain": plain_series}
    jobs = {(kind, readers): (lambda f=files, r=readers: run_pipeline(
        f, model, batch_size=16, keep_cam=False, workers=r))
        for kind, files in series.items() for readers in (1, 2)}
    benchmark.group = "scoring readers"
    times, results = benchmark.pedantic(lambda: timed(jobs, quick), rounds=1)
    for (kind, readers), out in results.items():
        assert len(out.slices) == len(series[kind]) and not out.rejected
    info = {f"{kind}_readers_{readers}": round(1e3 * t / len(series[kind]), 2)
            for (kind, readers), t in times.items()}
    benchmark.extra_info.update(model=name, ms_per_slice=info)
    RESULTS["scoring", name] = ", ".join(f"{k} {v}" for k, v in info.items()) + " ms/slice"


class _Summary:
    """Prints the figures at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        write = terminalreporter.write_line
        write("")
        write(f"reading, {SLICES}-slice 512x512 phantom series (plain; JPEG Lossless SV1 by "
              "dcmcjpeg); decoders by syntax: CPU ms/slice for uint16/int16/12-bit")
        for (part, label), text in RESULTS.items():
            write(f"  {part} {label}: {text}")
