"""What ``ichrt bench`` measures: latency, end-to-end time, seed-style baseline, memory and start time.

Figures (all on this machine, in one run):

* per-slice latency of the model at batch 1, 8 and 32 (ONNX Runtime on a ready tensor);
* end to end: a 40-slice phantom study from DICOM files to the written worklist, against the pure
  model time of the same 40 slices at the same batch size (the goal is a ratio <= 1.15); the two
  are run in alternation (:func:`interleaved`), as is the seed-style baseline with ichrt, so that
  load drifting on a shared machine does not skew the ratios;
* the seed-style baseline when torch is installed: pydicom read, per-slice NumPy windowing (one
  copy and boolean-mask clip per window), PyTorch eager at batch 1 with the same weights (the
  checkpoint export writes beside the ONNX file), else reported unavailable with the reason;
* explanation time per slice of each method (cam, gradcam, gradcampp, hshap) on the two most
  suspicious slices, or the reason a method is unavailable;
* warm start: wall time of a fresh ``ichrt score`` process on one small study (a first, cold run
  fills the caches), and the peak RSS of ``ichrt score`` on the 40-slice study.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.session import LoadedModel

BATCHES = (1, 8, 32)
STUDY_SLICES = 40
SMALL_STUDY_SLICES = 8
BENCH_SEED = 4242
RSS_TAG = "ichrt-bench-peak-rss-kib="
#: Runs the ``ichrt`` CLI in a fresh interpreter (as the console script does) and reports the
#: process's own peak RSS on exit: VmHWM of /proc/self/status, which starts afresh at exec
#: (ru_maxrss would keep the forking parent's peak across exec).
CLI = (
    "import atexit, sys\n"
    "def _peak():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    f"            print('{RSS_TAG}' + line.split()[1], file=sys.stderr)\n"
    "atexit.register(_peak)\n"
    "from ichrt.runtime.cli import main\n"
    "main()\n"
)


def best_of(fn: Callable[[], Any], repeat: int = 5, min_seconds: float = 0.3) -> float:
    """Median seconds of ``fn()`` over at least ``repeat`` runs (and ``min_seconds``), after one
    warm-up run."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(jobs: dict[str, Callable[[], Any]], rounds: int = 5) -> dict[str, float]:
    """Median seconds of each job, run in alternation after one warm-up each.

    Alternating keeps the ratios between jobs fair when the machine's load drifts during the
    measurement (a shared edge box, or other work on a development machine).
    """
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for fn in jobs.values():
        fn()
    for _ in range(rounds):
        for name, fn in jobs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def random_batch(model: LoadedModel, n: int, seed: int = 0) -> np.ndarray:
    """A ready model tensor (n, C, S, S) of normalized-looking values."""
    c, s = model.contract.channels, model.contract.input_size
    return np.random.default_rng(seed).normal(0, 1, (n, c, s, s)).astype(np.float32)


def latency_ms_per_slice(model: LoadedModel, batch: int) -> float:
    """Pure model time per slice (ms) at ``batch`` slices per call."""
    x = random_batch(model, batch)
    return 1e3 * best_of(lambda: model.run(x, ("logits",))) / batch


def write_phantom_study(folder: Path, n_slices: int, seed: int = BENCH_SEED) -> list[Path]:
    """One positive phantom study of ``n_slices`` 512 x 512 slices; returns its DICOM files."""
    from ichrt.runtime.synth import write_dataset

    write_dataset(folder, studies=1, seed=seed, slices=(n_slices, n_slices), prevalence=1.0)
    return sorted((folder / "stage_2_train").glob("*.dcm"))


def worklist_job(model: LoadedModel, files: Sequence[Path], out: Path,
                 batch_size: int = 16) -> Callable[[], dict[str, Any]]:
    """A call that scores ``files`` and writes the worklist into ``out`` (no explanations)."""
    from ichrt.runtime.scorer import Scorer, write_result

    scorer = Scorer(model, batch_size=batch_size, explain="none")
    return lambda: write_result(scorer.score(files), out)


def pure_model_job(model: LoadedModel, files: Sequence[Path],
                   batch_size: int = 16) -> Callable[[], list]:
    """A call that runs the model alone on the ready tensor of ``files`` (windowed once here)."""
    from ichrt.runtime.batches import window_slices
    from ichrt.runtime.dicom import read_slice

    tensor, _ = window_slices([read_slice(f) for f in files], model.contract)
    chunks = [tensor[i:i + batch_size] for i in range(0, len(tensor), batch_size)]
    return lambda: [model.run(c, ("logits",)) for c in chunks]


def end_to_end(model: LoadedModel, files: Sequence[Path], batch_size: int = 16) -> dict[str, Any]:
    """Seconds from DICOM files to written worklist, and the pure model time of the same slices."""
    with tempfile.TemporaryDirectory(prefix="ichrt-bench-") as out:
        t = interleaved({"e2e": worklist_job(model, files, Path(out), batch_size),
                         "pure": pure_model_job(model, files, batch_size)})
    return {"slices": len(files), "batch_size": batch_size, "seconds": t["e2e"],
            "pure_model_seconds": t["pure"], "ratio": t["e2e"] / t["pure"]}


def seed_baseline(model: LoadedModel, files: Sequence[Path], rounds: int = 2) -> dict[str, Any]:
    """The seed's way (pydicom + per-slice NumPy windowing + PyTorch eager at batch 1), timed in
    alternation with ichrt's files-to-worklist run of the same files."""
    from ichrt.runtime.explain import ExplainError
    from ichrt.runtime.explain.gradcam import load_model_twin

    try:
        net = load_model_twin(model)  # ExplainExtraMissing (an ExplainError) without torch
    except ExplainError as exc:
        return {"available": False, "reason": str(exc)}
    import pydicom
    import torch
    import torch.nn.functional as F

    c = model.contract
    size = c.input_size
    mean = torch.tensor(c.mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(c.std, dtype=torch.float32).view(1, -1, 1, 1)

    def run_all() -> None:
        for path in files:
            ds = pydicom.dcmread(str(path))
            hu = (ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
                  + float(getattr(ds, "RescaleIntercept", 0)))
            channels = []
            for level, width in c.windows:
                low, high = level - width / 2, level + width / 2
                w = hu.copy()
                w[w < low] = low
                w[w > high] = high
                channels.append((w - low) / width)
            x = torch.from_numpy(np.stack(channels))[None]
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            with torch.no_grad():
                torch.sigmoid(net((x - mean) / std))

    with tempfile.TemporaryDirectory(prefix="ichrt-bench-") as out:
        t = interleaved({"seed": run_all, "ichrt": worklist_job(model, files, Path(out))},
                        rounds)
    return {"available": True, "seconds": t["seed"], "ichrt_seconds": t["ichrt"],
            "speedup_of_ichrt": t["seed"] / t["ichrt"]}


def cli_run(model: LoadedModel, study: Path, out: Path) -> tuple[float, float | None]:
    """Wall seconds and peak RSS (MB; None without /proc) of a fresh ``ichrt score`` process."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "score", str(study), "--out",
         str(out), "--model", str(model.path), "--explain", "none", "--json"],
        check=True, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    tagged = [line for line in proc.stderr.splitlines() if line.startswith(RSS_TAG)]
    return seconds, int(tagged[-1][len(RSS_TAG):]) / 1024 if tagged else None


def explain_timings(model: LoadedModel, files: Sequence[Path], n: int = 2) -> dict[str, Any]:
    """Seconds per slice of each explanation method on the ``n`` slices scored most suspicious."""
    from ichrt.runtime.batches import window_slices
    from ichrt.runtime.dicom import read_slice
    from ichrt.runtime.explain.batch import time_methods
    from ichrt.runtime.scorer import Scorer

    scored = Scorer(model, explain="none").score(files).slices
    top = sorted(scored, key=lambda s: -float(s.probs[0]))[:n]
    tensor, _ = window_slices([read_slice(s.identity.path) for s in top], model.contract)
    return time_methods(model, tensor)


def twin_model(model: LoadedModel) -> LoadedModel:
    """The model whose torch twin the seed-style baseline and Grad-CAM timings use: ``model``
    itself when a twin lies beside it, else the shipped FP32 model (the twin of the INT8
    scoring default)."""
    from ichrt.runtime.session import DEFAULT_FP32_MODEL, load_model
    from ichrt.runtime.torchtwin import twin_path

    if twin_path(model.path).is_file() or not DEFAULT_FP32_MODEL.is_file():
        return model
    return load_model(DEFAULT_FP32_MODEL)


def run_bench(model: LoadedModel) -> dict[str, Any]:
    """All the figures, as a JSON-ready dict (the seed-style baseline and the explanation
    timings with :func:`twin_model`)."""
    import onnxruntime

    from ichrt.runtime.session import physical_cores

    report: dict[str, Any] = {
        "model": {"name": model.contract.name, "sha256": model.sha256, "arch": model.contract.arch,
                  "input_size": model.contract.input_size, "providers": model.providers},
        "machine": {"physical_cores": physical_cores(), "onnxruntime": onnxruntime.__version__},
        "latency_ms_per_slice": {str(b): latency_ms_per_slice(model, b) for b in BATCHES},
    }
    with tempfile.TemporaryDirectory(prefix="ichrt-bench-") as tmp:
        tmp = Path(tmp)
        files = write_phantom_study(tmp / "study", STUDY_SLICES)
        small = tmp / "small"
        small.mkdir()
        for f in files[:SMALL_STUDY_SLICES]:
            (small / f.name).write_bytes(f.read_bytes())
        report["end_to_end"] = end_to_end(model, files)
        twin = twin_model(model)
        report["twin_model"] = {"name": twin.contract.name, "sha256": twin.sha256}
        report["explain_s_per_slice"] = explain_timings(twin, files)
        report["cold_start_s"] = cli_run(model, small, tmp / "cold")[0]
        report["warm_start_s"] = cli_run(model, small, tmp / "warm")[0]
        report["peak_rss_mb"] = cli_run(model, files[0].parent, tmp / "full")[1]
        report["seed_baseline"] = seed_baseline(twin, files)
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as a small text table."""
    e2e, seed = r["end_to_end"], r["seed_baseline"]
    lat = r["latency_ms_per_slice"]
    m = r["model"]
    lines = [
        (f"model: {m['name']} (sha256:{m['sha256'][:12]}) {m['arch']} {m['input_size']}px "
         f"on {', '.join(m['providers'])}"),
        "latency ms/slice: " + ", ".join(f"batch {b} {lat[b]:.3f}" for b in lat),
        (f"end to end, {e2e['slices']}-slice study (files -> worklist): {e2e['seconds']:.3f} s; "
         f"pure model {e2e['pure_model_seconds']:.3f} s; ratio {e2e['ratio']:.2f} "
         "(goal <= 1.15)"),
    ]
    if seed["available"]:
        lines.append(f"seed-style baseline: {seed['seconds']:.3f} s against ichrt's "
                     f"{seed['ichrt_seconds']:.3f} s: {seed['speedup_of_ichrt']:.1f}x faster "
                     "(goal >= 2)")
    else:
        lines.append(f"seed-style baseline: unavailable ({seed['reason']})")
    lines.append("explanation s/slice: " + ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} unavailable"
        for k, v in r["explain_s_per_slice"].items()))
    lines.append(f"ichrt score start, {SMALL_STUDY_SLICES}-slice study: cold "
                 f"{r['cold_start_s']:.2f} s, warm {r['warm_start_s']:.2f} s (goal <= 2)")
    rss = r["peak_rss_mb"]
    lines.append(f"peak RSS of ichrt score on the {r['end_to_end']['slices']}-slice study: "
                 + (f"{rss:.0f} MB" if rss is not None else "unknown (no /proc)")
                 + " (goal <= 600)")
    return "\n".join(lines)



# ----------------------------------------------------------------------------- read path


def read_path_ms(files: Sequence[Path], rounds: int = 5) -> dict[str, Any]:
    """Milliseconds per file of three ways to read ``files``, timed in alternation.

    ``bytes``: reading the file; ``pydicom``: ``dcmread`` + ``pixel_array`` (stored values,
    nothing else); ``ichrt``: :func:`ichrt.runtime.dicom.read_slice` (checked header, identity
    and HU pixels).
    """
    import pydicom

    from ichrt.runtime.dicom import read_slice
    from ichrt.runtime.environment import quiet_pydicom

    def read_bytes() -> None:
        for f in files:
            Path(f).read_bytes()

    def read_pydicom() -> None:
        for f in files:
            _ = pydicom.dcmread(f).pixel_array

    def read_ichrt() -> None:
        for f in files:
            read_slice(f)

    with quiet_pydicom():
        t = interleaved({"bytes": read_bytes, "pydicom": read_pydicom, "ichrt": read_ichrt},
                        rounds)
    ms = {name: 1e3 * seconds / len(files) for name, seconds in t.items()}
    return {"files": len(files), "ms_per_file": ms,
            "ichrt_over_pydicom": ms["ichrt"] / ms["pydicom"]}


# ----------------------------------------------------------------------------- overhead


def score_process(folder: Path, model_path: Path, out: Path, batch_size: int = 16
                  ) -> tuple[float, dict[str, Any]]:
    """Wall seconds of a fresh ``ichrt score`` process on ``folder`` (start to written
    worklist, explanations off) and its JSON document."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CLI, "score", str(folder), "--out", str(out),
         "--model", str(model_path), "--explain", "none", "--batch-size", str(batch_size),
         "--json"], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, json.loads(proc.stdout)


def pure_model_seconds_job(model: LoadedModel, n_slices: int, batch_size: int = 16
                           ) -> Callable[[], None]:
    """A call that runs the model alone on ``n_slices`` ready tensors in batches of
    ``batch_size``, fetching what scoring fetches (random tensors: a CNN's time does not depend
    on the values), ``model.streams`` batches at once."""
    from concurrent.futures import ThreadPoolExecutor

    from ichrt.runtime.pipeline import scoring_outputs

    x = random_batch(model, batch_size)
    sizes = [min(batch_size, n_slices - i) for i in range(0, n_slices, batch_size)]
    outputs = scoring_outputs(model.contract)
    if model.streams <= 1:
        return lambda: [model.run(x[:n], outputs) for n in sizes]

    def concurrent() -> None:
        with ThreadPoolExecutor(model.streams) as pool:
            list(pool.map(lambda n: model.run(x[:n], outputs), sizes))

    return concurrent


def score_overhead(folder: Path, models: dict[str, Path], rounds: int = 3,
                   batch_size: int = 16) -> dict[str, Any]:
    """``ichrt score`` on ``folder`` from process start to worklist against the pure model time
    of the same number of slices, per model, all jobs run in alternation (:func:`interleaved`).

    Two pure times: ``pure_model_seconds``, a default session (all physical cores) running one
    batch at a time, the usual way to run a model and the baseline of the goals; and
    ``pure_streams_seconds``, the layout scoring uses (:func:`ichrt.runtime.session.run_layout`,
    on a CPU one single-threaded run per core at once), for the overhead of the pipeline
    itself. Returns per model: slices scored, the medians and the ratios score / pure.
    """
    from ichrt.runtime.session import load_model

    with tempfile.TemporaryDirectory(prefix="ichrt-bench-") as tmp:
        _, doc = score_process(folder, next(iter(models.values())), Path(tmp) / "probe",
                               batch_size)
        n = int(doc["counts"]["scored_slices"])
        jobs: dict[str, Callable[[], Any]] = {}
        for name, path in models.items():
            out = Path(tmp) / name
            jobs[f"{name}:score"] = (lambda p=path, o=out: score_process(folder, p, o,
                                                                          batch_size))
            jobs[f"{name}:pure"] = pure_model_seconds_job(load_model(path), n, batch_size)
            jobs[f"{name}:streams"] = pure_model_seconds_job(
                load_model(path, streams="auto"), n, batch_size)
        t = interleaved(jobs, rounds)
    return {name: {"slices": n, "score_seconds": t[f"{name}:score"],
                   "pure_model_seconds": t[f"{name}:pure"],
                   "pure_streams_seconds": t[f"{name}:streams"],
                   "ratio": t[f"{name}:score"] / t[f"{name}:pure"],
                   "ratio_to_streams": t[f"{name}:score"] / t[f"{name}:streams"]}
            for name in models}
