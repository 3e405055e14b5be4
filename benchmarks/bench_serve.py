"""``ichrt serve`` benchmarks with real peers (dcmtk, Orthanc), kept light for CI.

Run with ``pytest benchmarks/bench_serve.py --benchmark-enable -s`` (figures are printed and put
in each benchmark's ``extra_info``).  Nothing here asserts a wall-clock time.

* intake throughput: the same instances sent with storescu, in one association, to dcmtk's own
  ``storescp`` writing to disk and to ``ichrt serve`` (which also fsyncs, checks each instance
  with the runtime's ingest, and records it in SQLite), in one run;
* latency: from the last instance of a 40-slice study acknowledged to its SR stored in Orthanc,
  minus the quiet period (the service's own timestamps, and Orthanc polled over REST);
* memory: the service's resident memory after each round of studies (flat = no growth);
  ``ICHRT_BENCH_SERVE_STUDIES=200`` for the 200 studies of the README's figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from serve_helpers import (
    DCMTK,
    DCMTK_ENV,
    NICE,
    Orthanc,
    ServeProcess,
    free_port,
    needs_peers,
    phantom_studies,
    storescu,
    wait_port,
    wait_until,
    write_config,
)

from ichrt.runtime.serve.state import State

pytestmark = needs_peers()

INTAKE_SLICES = 120
INTAKE_SIZE = 256
LATENCY_SLICES = 40
LATENCY_SIZE = 512
LATENCY_QUIET = 1.0
#: Rounds x studies of the memory benchmark: 3 x 10 in CI; ICHRT_BENCH_SERVE_STUDIES=200 gives
#: 4 rounds of 50 (the figure in the README).
MEMORY_TOTAL = int(os.environ.get("ICHRT_BENCH_SERVE_STUDIES", "30"))
MEMORY_ROUNDS = 3 if MEMORY_TOTAL <= 60 else 4
MEMORY_STUDIES = max(1, MEMORY_TOTAL // MEMORY_ROUNDS)


def _rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def _send_seconds(port: int, files: list[Path], called: str) -> float:
    start = time.perf_counter()
    done = storescu(port, files, called=called, timeout=300)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-2000:]
    return seconds


def test_intake_throughput_vs_storescp(benchmark, tmp_path: Path) -> None:
    studies = phantom_studies(tmp_path / "ph", 3, seed=41, slices=INTAKE_SLICES // 3,
                              size=INTAKE_SIZE)
    files = [f for s in studies for f in s]
    port = free_port()
    out = tmp_path / "storescp"
    out.mkdir()
    scp = subprocess.Popen([*NICE, DCMTK["storescp"], "-aet", "STORESCP", "-od", str(out),
                            str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=DCMTK_ENV)
    try:
        wait_port(port, 20, scp)
        storescu(port, files[:2], called="STORESCP")  # warm the page cache and the tools
        dcmtk_s = _send_seconds(port, files, "STORESCP")
    finally:
        scp.terminate()
        scp.wait(10)
    assert len(list(out.iterdir())) >= len(files)
    pynetdicom_s = _pynetdicom_storescp_seconds(files, tmp_path / "pynetdicom")

    sport = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", sport, quiet_period_s=600)
    service = ServeProcess(cfg, sport, tmp_path / "serve.log").start()
    try:
        storescu(sport, files[:2])
        ichrt_s = benchmark.pedantic(_send_seconds, (sport, files, "ICHRT"), rounds=1,
                                     iterations=1)
        state = State(tmp_path / "spool" / "state.sqlite", readonly=True)
        assert state.count_instances() == len(files)
        state.close()
    finally:
        service.terminate()
    figures = {
        "instances": len(files), "size": INTAKE_SIZE,
        "storescp_instances_per_s": round(len(files) / dcmtk_s, 1),
        "pynetdicom_storescp_instances_per_s": round(len(files) / pynetdicom_s, 1),
        "ichrt_instances_per_s": round(len(files) / ichrt_s, 1),
        "ichrt_vs_storescp": round(dcmtk_s / ichrt_s, 3),
    }
    benchmark.extra_info.update(figures)
    print("\nintake:", json.dumps(figures))


def _pynetdicom_storescp_seconds(files: list[Path], out: Path) -> float:
    """The same send to pynetdicom's own example storescp (writes files, no fsync, no checks):
    the ceiling of a pynetdicom-based SCP on this machine."""
    out.mkdir()
    port = free_port()
    scp = subprocess.Popen([*NICE, sys.executable, "-m", "pynetdicom", "storescp", str(port),
                            "-od", str(out), "-aet", "PYNETDICOM"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: scp.poll() is not None or _listening(port), 30, what="storescp")
        storescu(port, files[:2], called="PYNETDICOM")
        return _send_seconds(port, files, "PYNETDICOM")
    finally:
        scp.terminate()
        scp.wait(10)


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_last_instance_to_sr_in_orthanc(benchmark, tmp_path: Path) -> None:
    (study,) = phantom_studies(tmp_path / "ph", 1, seed=42, slices=LATENCY_SLICES,
                               size=LATENCY_SIZE, prevalence=1.0)
    orthanc = Orthanc(tmp_path / "orthanc").start()
    port = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port, [orthanc.destination],
                       quiet_period_s=LATENCY_QUIET, poll_s=0.05)
    service = ServeProcess(cfg, port, tmp_path / "serve.log").start()
    state = State(tmp_path / "spool" / "state.sqlite", readonly=True)

    def run() -> dict[str, float]:
        assert storescu(port, study).returncode == 0
        acknowledged = time.time()
        wait_until(lambda: orthanc.by_modality().get("SR"), 60, interval=0.02, what="the SR")
        seen = time.time()
        last = max(r["received_at"] for r in _instances(state))
        sr = wait_until(lambda: next((o for o in state.outbox() if o["kind"] == "sr"
                                      and o["sent_at"]), None), 10, what="SR marked sent")
        result = state.results()[0]
        return {
            "slices": len(study), "size": LATENCY_SIZE, "quiet_period_s": LATENCY_QUIET,
            "last_instance_to_sr_sent_minus_quiet_s": round(sr["sent_at"] - last
                                                            - LATENCY_QUIET, 3),
            "ack_to_sr_seen_in_orthanc_minus_quiet_s": round(seen - acknowledged
                                                             - LATENCY_QUIET, 3),
            "scoring_and_results_s": round(result["seconds"], 3),
            "sc_images": len(json.loads(result["document"])["sc_sop_instance_uids"]),
        }

    try:
        figures = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        state.close()
        service.terminate()
        orthanc.stop()
    benchmark.extra_info.update(figures)
    print("\nlatency:", json.dumps(figures))


def _instances(state: State) -> list[dict]:
    with state._lock:  # a read for the benchmark only
        return [dict(r) for r in state._db.execute("SELECT received_at FROM instances")]


def test_memory_over_many_studies(benchmark, tmp_path: Path) -> None:
    rounds = [phantom_studies(tmp_path / f"ph{i}", MEMORY_STUDIES, seed=50 + i, slices=3,
                              size=128) for i in range(MEMORY_ROUNDS)]
    port = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port,
                       quiet_period_s=0.3, max_sc_images=2)
    service = ServeProcess(cfg, port, tmp_path / "serve.log").start()
    state = State(tmp_path / "spool" / "state.sqlite", readonly=True)
    rss: list[int] = []

    def run() -> None:
        for i, studies in enumerate(rounds, start=1):
            files = [f for s in studies for f in s]
            assert storescu(port, files).returncode == 0
            wait_until(lambda n=i * MEMORY_STUDIES: state.summary()["studies"]["scored"] == n,
                       120, what=f"round {i} scored")
            rss.append(_rss_kib(_python_pid(service))["VmRSS"])

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
        peak = _rss_kib(_python_pid(service))["VmHWM"]
    finally:
        state.close()
        service.terminate()
    figures = {
        "studies_per_round": MEMORY_STUDIES, "rss_mib_after_each_round":
        [round(r / 1024, 1) for r in rss], "peak_rss_mib": round(peak / 1024, 1),
        "growth_mib_first_to_last_round": round((rss[-1] - rss[0]) / 1024, 1),
    }
    benchmark.extra_info.update(figures)
    print("\nmemory:", json.dumps(figures))


def _python_pid(service: ServeProcess) -> int:
    """The service's Python process (``nice`` execs it, so it keeps the same pid)."""
    return service.proc.pid
