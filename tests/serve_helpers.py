"""Real DICOM peers for the edge service's tests: dcmtk tools, Orthanc, and ``ichrt serve``.

Everything listens on loopback ports picked free at start; every process is started and stopped
by the test that needs it (Orthanc with its own temporary JSON config and storage folder, never
the Debian service).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ICHRT = str(Path(sys.executable).with_name("ichrt"))
NICE = ["nice", "-n", "19"] if shutil.which("nice") else []
ORTHANC = shutil.which("Orthanc") or shutil.which("orthanc")


def _dcmtk(tool: str) -> str | None:
    """dcmtk's ``tool``, not pynetdicom's console script of the same name in the venv."""
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                           if p and Path(p).resolve() != Path(venv_bin).resolve())
    found = shutil.which(tool, path=path + os.pathsep + "/usr/bin")
    return found if found and "python" not in Path(found).read_bytes()[:64].decode(
        "latin-1") else None


DCMTK = {tool: _dcmtk(tool) for tool in ("storescu", "echoscu", "storescp")}
#: dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set: with delayed ACKs every
#: C-STORE then waits ~40 ms (20 instances/s on loopback), whoever the peer is.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
ORTHANC_AET = "ORTHANC"
STARTED = '"event": "serve_started"'


def missing_peers() -> str | None:
    """Why the real-peer tests cannot run here (None when they can)."""
    missing = [t for t, p in DCMTK.items() if p is None] + ([] if ORTHANC else ["Orthanc"])
    if missing:
        return (f"{', '.join(missing)} not installed (apt-get install dcmtk orthanc; "
                "scripts/test.sh does it)")
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout} s (last: {value!r})")
        time.sleep(interval)


# -- dcmtk -------------------------------------------------------------------------------------

def storescu(port: int, files: Sequence[Path | str], aet: str = "SCANNER", called: str = "ICHRT",
             timeout: float = 120.0, extra: Sequence[str] = ()) -> subprocess.CompletedProcess:
    """Send ``files`` in one association with dcmtk's storescu (continues after failures)."""
    cmd = [*NICE, DCMTK["storescu"], "-aet", aet, "-aec", called, "-nh", *extra,
           "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=DCMTK_ENV)


def storescu_async(port: int, files: Sequence[Path | str], aet: str = "SCANNER",
                   called: str = "ICHRT") -> subprocess.Popen:
    cmd = [*NICE, DCMTK["storescu"], "-aet", aet, "-aec", called, "-nh",
           "127.0.0.1", str(port), *map(str, files)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=DCMTK_ENV)


def echoscu(port: int, aet: str = "SCANNER", called: str = "ICHRT") -> subprocess.CompletedProcess:
    cmd = [*NICE, DCMTK["echoscu"], "-aet", aet, "-aec", called, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                          env=DCMTK_ENV)


# -- Orthanc -----------------------------------------------------------------------------------

class Orthanc:
    """A private Orthanc on loopback ports with a temporary config and storage folder."""

    def __init__(self, folder: Path, dicom_port: int | None = None,
                 http_port: int | None = None) -> None:
        self.folder = Path(folder)
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.proc: subprocess.Popen | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config = self.folder / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "ichrt-test", "StorageDirectory": str(self.folder / "db"),
            "IndexDirectory": str(self.folder / "db"), "StorageCompression": False,
            "HttpPort": self.http_port, "HttpServerEnabled": True,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": True, "DicomAet": ORTHANC_AET, "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
            "DicomCheckModalityHost": False, "Plugins": [], "HttpThreadsCount": 4,
            "ConcurrentJobs": 1, "OverwriteInstances": False, "StableAge": 3600,
            "SaveJobs": False, "HttpDescribeErrors": True,
        }))

    @property
    def destination(self) -> str:
        return f"{ORTHANC_AET}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - the child's stdout
        self.proc = subprocess.Popen([*NICE, ORTHANC, str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_port(self.http_port, 30, self.proc)
        wait_until(lambda: self._alive(), 30, what="Orthanc REST API")
        return self

    def _alive(self) -> bool:
        try:
            return "Version" in self.get("/system")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def instances(self) -> list[dict[str, Any]]:
        """Every stored instance with its main tags (expanded)."""
        return self.get("/instances?expand")

    def tags(self, orthanc_id: str) -> dict[str, Any]:
        return self.get(f"/instances/{orthanc_id}/simplified-tags")

    def by_modality(self) -> dict[str, list[dict[str, Any]]]:
        """Instances grouped by their series' modality (SR, OT, CT...)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for inst in self.instances():
            series = self.get(f"/series/{inst['ParentSeries']}")
            out.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(inst)
        return out


# -- ichrt serve -------------------------------------------------------------------------------

def write_config(path: Path, spool: Path, port: int, destinations: Sequence[str] = (),
                 notify_url: str = "", **serve: Any) -> Path:
    lines = ["[serve]", 'ae_title = "ICHRT"', 'host = "127.0.0.1"', f"port = {port}",
             f'spool = "{spool}"']
    for key, value in serve.items():
        lines.append(f"{key} = {json.dumps(value)}")
    for dest in destinations:
        aet, _, rest = dest.partition("@")
        host, _, dport = rest.rpartition(":")
        lines += ["", "[[destinations]]", f'ae_title = "{aet}"', f'host = "{host}"',
                  f"port = {dport}"]
    lines += ["", "[retry]", "max_attempts = 50", "base_s = 0.3", "max_s = 1.0"]
    if notify_url:
        lines += ["", "[notify]", f'url = "{notify_url}"', "timeout_s = 5"]
    path.write_text("\n".join(lines) + "\n")
    return path


class ServeProcess:
    """``ichrt serve --config FILE`` as a child process (logs in ``log``)."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config, self.port, self.log = config, port, log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> ServeProcess:
        offset = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")  # noqa: SIM115 - the child's stdout
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([*NICE, ICHRT, "serve", "--config", str(self.config)],
                                     stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
        wait_until(lambda: self.proc.poll() is not None or STARTED in self.text()[offset:],
                   timeout, what="ichrt serve start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"ichrt serve exited {self.proc.returncode}:\n{self.text()[-3000:]}")
        # (no TCP probe: an idle connection would hold an association slot until it times out;
        # the service logs serve_started only once it listens)
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def kill(self) -> None:
        """kill -9."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


# -- phantoms ----------------------------------------------------------------------------------

def phantom_studies(out: Path, studies: int, seed: int, slices: int | tuple[int, int] = 8,
                    size: int = 128, prevalence: float = 0.5) -> list[list[Path]]:
    """``ichrt synth`` studies; returns each study's files (instance order), the studies with
    a bleed first."""
    from ichrt.runtime.synth import write_dataset

    write_dataset(out, studies, seed, slices=slices, size=size, prevalence=prevalence)
    with open(out / "studies.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda row: -int(row["positive"]))
    return [_study_files(out, row) for row in rows]


def _study_files(out: Path, row: dict[str, str]) -> list[Path]:
    key = next(k for k in row if "image" in k.lower())
    ids = row[key].replace(";", " ").split()
    return [out / "stage_2_train" / f"{i}.dcm" for i in ids]


def needs_peers():
    """Skip without dcmtk and Orthanc on a developer's machine; in CI (``CI`` set), where
    scripts/test.sh installs them, a missing peer fails instead of skipping."""
    import pytest

    reason = missing_peers()
    return pytest.mark.skipif(reason is not None and not os.environ.get("CI"), reason=str(reason))


def peer_marks() -> list:
    """Marks of the tests that talk to real peers with phantom studies (their RSNA-style
    "ID_..." UIDs, as the RSNA 2019 data carry, are written on purpose)."""
    import pytest

    return [needs_peers(), pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]
