"""Intake with real peers: dcmtk's echoscu/storescu as the scanner, ``ichrt serve`` as a process.

Good phantom slices and the pydicom corpus's CT are stored (durably, hash-named) and scored; an
unknown calling AE is refused; non-CT, mislabelled and truncated instances get a failure status
with a reason while the rest of the same association is stored; SIGTERM stops the service cleanly.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
from serve_helpers import (
    ICHRT,
    ServeProcess,
    echoscu,
    free_port,
    peer_marks,
    phantom_studies,
    storescu,
    storescu_async,
    wait_until,
    write_config,
)

from ichrt.runtime.serve.spool import uid_key
from ichrt.runtime.serve.state import State

pytestmark = peer_marks()


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[list[Path]]:
    return phantom_studies(tmp_path_factory.mktemp("phantoms"), 2, seed=11, slices=5)


def _variant(src: Path, out: Path, **changes) -> Path:
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in changes.items():
        if key == "syntax":
            if value == pydicom.uid.DeflatedExplicitVRLittleEndian:
                ds.file_meta.TransferSyntaxUID = value
            else:
                ds.compress(value)
        elif key == "truncate":
            ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        elif key == "SOPClassUID":
            ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = value
        else:
            setattr(ds, key, value)
    ds.save_as(out, enforce_file_format=True)
    return out


def test_intake_bad_peers_and_clean_shutdown(studies, tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port, log_level="debug",
                       allowed_calling_aets=["SCANNER"], quiet_period_s=0.5)
    service = ServeProcess(cfg, port, tmp_path / "serve.log").start()
    try:
        assert echoscu(port).returncode == 0
        assert echoscu(port, aet="INTRUDER").returncode != 0
        refused = storescu(port, studies[0][:1], aet="INTRUDER")
        assert refused.returncode != 0

        good = studies[0]
        ct_small = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
        bad = [
            _variant(good[0], tmp_path / "mr.dcm", SOPClassUID="1.2.840.10008.5.1.4.1.1.4",
                     Modality="MR"),
            _variant(good[0], tmp_path / "mislabelled.dcm", Modality="MR"),
            _variant(good[0], tmp_path / "truncated.dcm", truncate=True),
        ]
        order = [good[0], bad[0], good[1], bad[1], good[2], bad[2], *good[3:], ct_small]
        done = storescu(port, order, extra=["-nh"])
        assert "Association Release" in done.stderr or done.returncode in (0, 1), done.stderr
        # compressed and deflated transfer syntaxes, sent as they are (storescu's -x options;
        # decoders from pydicom and the codecs extra)
        other = studies[1]
        encoded = {
            "-xv": _variant(other[0], tmp_path / "j2k.dcm", syntax=pydicom.uid.JPEG2000Lossless),
            "-xd": _variant(other[1], tmp_path / "deflated.dcm",
                            syntax=pydicom.uid.DeflatedExplicitVRLittleEndian),
        }
        assert storescu(port, other).returncode == 0
        for option, path in encoded.items():
            sent = storescu(port, [path], extra=[option])
            assert sent.returncode == 0 and "Failed" not in sent.stderr, sent.stderr
        stored_syntaxes = {str(pydicom.dcmread(p).file_meta.TransferSyntaxUID)
                           for p in (tmp_path / "spool" / "studies").glob("*/*.dcm")}
        assert {pydicom.uid.JPEG2000Lossless,
                pydicom.uid.DeflatedExplicitVRLittleEndian} <= stored_syntaxes

        # a file cut short in transit (pynetdicom sends the bytes as they are), then a good one,
        # in one association: the first is refused, the second stored; the cut copy never
        # replaces the good instance stored earlier under the same UID
        cut = tmp_path / "cut.dcm"
        cut.write_bytes(good[0].read_bytes()[:-5000])
        late = _variant(good[0], tmp_path / "late.dcm")
        assert [s.Status for s in _pynetdicom_send(port, [cut, late])] == [0xC000, 0x0000]

        state = State(tmp_path / "spool" / "state.sqlite", readonly=True)
        expected = len(good) + len(studies[1]) + len(encoded) + 2
        assert state.count_instances() == expected
        assert state.count_instances(pydicom.dcmread(good[0]).StudyInstanceUID) == len(good) + 1
        events = service.events()
        refusals = [e for e in events if e["event"] == "store_refused"]
        assert [e["status"] for e in refusals] == ["0x0122", "0xA900", "0xC000", "0xC000"]
        assert "not CT Image Storage" in refusals[0]["reason"]
        assert "only CT" in refusals[1]["reason"]
        assert "truncated" in refusals[2]["reason"]
        assert any(e["event"] == "association_rejected" and e["calling_aet"] == "INTRUDER"
                   for e in events)

        # durably in hash-named folders, byte-identical pixels
        spool = tmp_path / "spool"
        src = pydicom.dcmread(good[1])
        folder = spool / "studies" / uid_key(src.StudyInstanceUID)
        stored = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
        assert len(stored) == len(good) + 1
        for original in (src, pydicom.dcmread(good[0])):  # good[0]: not replaced by the cut copy
            match = [d for d in stored if d.SOPInstanceUID == original.SOPInstanceUID]
            assert match and match[0].PixelData == original.PixelData

        wait_until(lambda: state.summary()["studies"]["scored"] == 3, 60, what="3 studies scored")
        assert not list((spool / "tmp").iterdir())  # no half-written file left behind
        results = [r for r in state.results() if not r["superseded"]]
        assert sorted(json.loads(r["document"])["n_slices"] for r in results) == sorted([len(good) + 1, len(other) + len(encoded), 1])
        state.close()

        status = subprocess.run([ICHRT, "status", "--config", str(cfg), "--json"],
                                capture_output=True, text=True, timeout=60, check=True)
        assert json.loads(status.stdout)["studies"]["scored"] == 3
    finally:
        code = service.terminate()
    assert code == 0
    text = service.text()
    assert '"event": "serve_stopped"' in text
    names = {str(pydicom.dcmread(p).get("PatientName", "")) for p in good + [ct_small]}
    for name in filter(None, names):
        assert name not in text, "a patient name reached the log"


def _pynetdicom_send(port: int, files: list[Path]) -> list:
    """C-STORE ``files`` byte for byte in one association (pynetdicom as the SCU)."""
    from pynetdicom import AE

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2",
                             ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="ICHRT")
    assert assoc.is_established
    try:
        return [assoc.send_c_store(f) for f in files]
    finally:
        assoc.release()


def test_sigterm_lets_the_current_association_finish(tmp_path: Path) -> None:
    studies = phantom_studies(tmp_path / "ph", 3, seed=12, slices=8)
    files = [f for s in studies for f in s]
    port = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port, quiet_period_s=60)
    service = ServeProcess(cfg, port, tmp_path / "serve.log").start()
    state = State(tmp_path / "spool" / "state.sqlite", readonly=True)
    try:
        sender = storescu_async(port, files)
        wait_until(lambda: state.count_instances() >= 2, 30, interval=0.01,
                   what="first instances stored")
        service.proc.send_signal(signal.SIGTERM)
        output = sender.communicate(timeout=60)[0]
        assert sender.returncode == 0, output  # the association was not cut
        assert service.proc.wait(60) == 0
        assert state.count_instances() == len(files)
        assert state.summary()["studies"]["receiving"] == 3  # kept for the next start
    finally:
        state.close()
        service.kill()


def _corpus() -> list[Path]:
    """pydicom's own test files and the pydicom-data package (as in test_dicom.py)."""
    import data_store
    from pydicom.data import get_testdata_files

    package = Path(data_store.__file__).parent / "data"
    files = {Path(f) for f in get_testdata_files() if Path(f).is_file()}
    files |= {p for p in package.rglob("*") if p.is_file()}
    return sorted(files)


@pytest.mark.slow
def test_pydicom_corpus_every_request_is_stored_or_refused(tmp_path: Path) -> None:
    """The whole corpus through storescu: each C-STORE the service gets is stored or refused
    with a reason, the CT slices ichrt reads are stored, and the service keeps answering."""
    files = _corpus()
    port = free_port()
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port, quiet_period_s=600,
                       log_level="debug")
    service = ServeProcess(cfg, port, tmp_path / "serve.log").start()
    try:
        done = storescu(port, files, extra=["-nh", "-v", "+sd"], timeout=300)
        # (storescu sends some requests it cannot encode, which never arrive: count answers)
        requests = done.stderr.count("Received Store Response")
        assert requests > 50, done.stderr[-2000:]
        events = service.events()
        stored = [e for e in events if e["event"] == "stored"]
        refused = [e for e in events if e["event"] == "store_refused"]
        assert len(stored) + len(refused) == requests
        assert all(e["reason"] and e["status"].startswith("0x") for e in refused)
        assert not [e for e in events if e["event"] == "store_error"]
        assert len(stored) >= 5  # CT_small and the other CT slices of the corpus
        assert echoscu(port).returncode == 0
    finally:
        assert service.terminate() == 0
