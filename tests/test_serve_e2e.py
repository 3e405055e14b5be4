"""End to end with real peers: storescu -> ``ichrt serve`` -> a real Orthanc, checked over REST.

* Results: one SR per study (finding, probabilities, key slice reference, model hash, "not for
  diagnostic use"), Secondary Captures of flagged slices, all in new series of the original
  study; a later instance re-scores the study and a new SR supersedes the first.
* Faults: Orthanc down then up (results arrive after retry); ``kill -9`` during intake, scoring
  and sending, then restart: every acknowledged instance is kept, each study version is scored
  once, each result arrives once.
* Load: 8 concurrent associations of 40-slice studies, nothing lost or duplicated.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pydicom
import pytest
from serve_helpers import (
    ICHRT,
    Orthanc,
    ServeProcess,
    free_port,
    peer_marks,
    phantom_studies,
    storescu,
    storescu_async,
    wait_until,
    write_config,
)

from ichrt.runtime.serve.state import State

pytestmark = peer_marks()

QUIET = 0.5


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> list[list[Path]]:
    """4 phantom studies of 6 slices (128 px): 0 and 1 with bleeds, 2 and 3 without."""
    return phantom_studies(tmp_path_factory.mktemp("phantoms"), 4, seed=23, slices=6,
                           prevalence=0.5)


@pytest.fixture(scope="module")
def split_threshold(studies) -> float:
    """A threshold between the shipped model's p(any) of study 0 (bleed) and study 2 (normal),
    so one result is flagged and one not whatever the model's calibration."""
    from ichrt.runtime.scorer import Scorer

    scorer = Scorer(threshold=0.5, explain="none")
    p_bleed = scorer.score(studies[0]).studies[0].p_any
    p_normal = scorer.score(studies[2]).studies[0].p_any
    assert p_bleed > p_normal, (p_bleed, p_normal)
    return (p_bleed + p_normal) / 2


@pytest.fixture
def orthanc(tmp_path: Path):
    server = Orthanc(tmp_path / "orthanc").start()
    yield server
    server.stop()


def _service(tmp_path: Path, destination: str, **serve) -> ServeProcess:
    port = free_port()
    serve.setdefault("quiet_period_s", QUIET)
    cfg = write_config(tmp_path / "ichrt.toml", tmp_path / "spool", port, [destination], **serve)
    return ServeProcess(cfg, port, tmp_path / "serve.log")


def _sop(inst: dict) -> str:
    return inst["MainDicomTags"]["SOPInstanceUID"]


def _content(tags: dict) -> dict[str, object]:
    """SR content items by concept meaning -> value (text, code meaning, number or image)."""
    out: dict[str, object] = {}
    for item in tags.get("ContentSequence", []):
        name = item["ConceptNameCodeSequence"][0]["CodeMeaning"]
        kind = item["ValueType"]
        if kind == "TEXT":
            out[name] = item["TextValue"]
        elif kind == "CODE":
            out[name] = item["ConceptCodeSequence"][0]["CodeMeaning"]
        elif kind == "NUM":
            out[name] = float(item["MeasuredValueSequence"][0]["NumericValue"])
        elif kind == "IMAGE":
            out[name] = item["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]
    return out


def _state(tmp_path: Path) -> State:
    return State(tmp_path / "spool" / "state.sqlite", readonly=True)


def _srs(orthanc: Orthanc) -> list[dict]:
    return orthanc.by_modality().get("SR", [])


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:  # http.server's method name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hook():
    _Hook.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ich", _Hook.received
    server.shutdown()
    server.server_close()


def test_results_reach_orthanc_and_a_late_instance_supersedes(studies, orthanc, hook, tmp_path,
                                                             split_threshold):
    url, posts = hook
    status_port = free_port()
    service = _service(tmp_path, orthanc.destination, threshold=split_threshold, notify_url=url,
                       status_port=status_port).start()
    try:
        for files in (studies[0], studies[2]):
            assert storescu(service.port, files).returncode == 0
        wait_until(lambda: len(_srs(orthanc)) == 2, 60, what="2 SRs in Orthanc")
        state = _state(tmp_path)
        wait_until(lambda: state.summary()["studies"]["sent"] == 2, 30, what="2 studies sent")
        results = {json.loads(r["document"])["study_instance_uid"]: json.loads(r["document"])
                   for r in state.results()}
        by_mod = orthanc.by_modality()
        assert "CT" not in by_mod  # the originals are never sent back
        n_sc = sum(len(d["sc_sop_instance_uids"]) for d in results.values())
        assert len(by_mod.get("OT", [])) == n_sc
        assert sorted(d["flagged"] for d in results.values()) == [False, True]
        for sr in by_mod["SR"]:
            tags = orthanc.tags(sr["ID"])
            doc = results[tags["StudyInstanceUID"]]
            content = _content(tags)
            assert tags["SOPInstanceUID"] == doc["sr_sop_instance_uid"]
            assert tags["SeriesInstanceUID"] not in {pydicom.dcmread(f[0]).SeriesInstanceUID
                                                     for f in studies}
            assert "NOT FOR DIAGNOSTIC USE" in tags["SeriesDescription"]
            assert "NOT FOR DIAGNOSTIC USE" in content["Comment"]
            assert content["Suspected intracranial hemorrhage"] == ("Yes" if doc["flagged"]
                                                                   else "No")
            assert content["Probability of any hemorrhage"] == pytest.approx(doc["p_any"],
                                                                             abs=1e-5)
            assert "Probability of subdural hemorrhage" in content
            assert content["Key slice (highest probability of hemorrhage)"] == \
                doc["key_slice_sop_instance_uid"]
            assert content["Model SHA-256"] == doc["model"]["sha256"]
            assert content["Algorithm Name"] == doc["model"]["name"]
            assert tags["VerificationFlag"] == "UNVERIFIED"
        # the notification: one small JSON document per flagged study, no patient data
        flagged = [d for d in results.values() if d["flagged"]]
        wait_until(lambda: len(posts) == len(flagged), 20, what="the notification")
        assert posts[0]["event"] == "ich_suspected"
        assert posts[0]["study_instance_uid"] == flagged[0]["study_instance_uid"]
        assert posts[0]["sr_sop_instance_uid"] == flagged[0]["sr_sop_instance_uid"]
        assert not {"patient_name", "patient_id"} & set(posts[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/healthz", timeout=10) as r:
            health = json.loads(r.read())
        assert health["ok"] and health["studies"]["sent"] == 2 and health["listening"]
        for sc in by_mod.get("OT", []):
            tags = orthanc.tags(sc["ID"])
            assert tags["BurnedInAnnotation"] == "YES"
            assert tags["StudyInstanceUID"] in results
            assert tags["SOPInstanceUID"] in results[tags["StudyInstanceUID"]][
                "sc_sop_instance_uids"]
            assert "NOT FOR DIAGNOSTIC USE" in tags["ImageComments"]

        # a late instance of study 0: version 2, re-scored, a new SR supersedes the first
        extra = pydicom.dcmread(studies[0][0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = \
            pydicom.uid.generate_uid()
        extra.InstanceNumber = 99
        late = tmp_path / "late.dcm"
        extra.save_as(late, enforce_file_format=True)
        assert storescu(service.port, [late]).returncode == 0
        wait_until(lambda: len(_srs(orthanc)) == 3, 60, what="the superseding SR")
        history = state.results(extra.StudyInstanceUID)
        assert [(r["version"], r["superseded"]) for r in history] == [(1, 1), (2, 0)]
        assert json.loads(history[1]["document"])["n_slices"] == len(studies[0]) + 1
        state.close()
    finally:
        assert service.terminate() == 0


def test_orthanc_down_then_up_with_kill9_while_sending(studies, tmp_path):
    """Results wait (with backoff, errors in the state) while the PACS is down, survive a
    kill -9 of the service, and arrive exactly once when both are back."""
    orthanc = Orthanc(tmp_path / "orthanc")  # ports reserved, not started yet
    service = _service(tmp_path, orthanc.destination).start()
    try:
        assert storescu(service.port, studies[1]).returncode == 0
        state = _state(tmp_path)
        wait_until(lambda: any(o["attempts"] >= 2 for o in state.outbox()), 30,
                   what="failed send attempts")
        status = subprocess.run([ICHRT, "status", "--spool", str(tmp_path / "spool")],
                                capture_output=True, text=True, timeout=60, check=True)
        assert "send error: ORTHANC@" in status.stdout and "pending" in status.stdout
        service.kill()
        orthanc.start()
        service.start()
        wait_until(lambda: state.summary()["studies"]["sent"] == 1, 60, what="study sent")
        outbox = state.outbox()
        assert {o["status"] for o in outbox} == {"sent"}
        sops = [_sop(i) for i in orthanc.instances()]
        assert sorted(sops) == sorted(o["sop_uid"] for o in outbox)
        assert len(state.results()) == 1
        state.close()
    finally:
        service.kill()
        orthanc.stop()


@pytest.mark.slow
def test_kill9_during_intake_and_scoring(studies, orthanc, tmp_path):
    """kill -9 while a study arrives and again while it is scored; after restarts every
    acknowledged instance is there, each version is scored once, each result sent once."""
    files = [f for s in studies[2:] for f in s]  # 12 instances, 2 studies
    service = _service(tmp_path, orthanc.destination, quiet_period_s=2.0).start()
    state = _state(tmp_path)
    try:
        sender = storescu_async(service.port, files)
        wait_until(lambda: state.count_instances() >= 3, 30, interval=0.01,
                   what="first instances stored")
        service.kill()
        sender.wait(30)
        kept = state.count_instances()
        assert kept >= 3
        service.start()
        assert state.count_instances() >= kept  # acknowledged instances survive
        assert storescu(service.port, files).returncode == 0  # the scanner sends again
        assert state.count_instances() == len(files)
        wait_until(lambda: '"event": "study_complete"' in service.text().split(
            '"event": "serve_started"')[-1], 30, interval=0.01, what="a study completed")
        service.kill()  # while scoring (or just before)
        service.start()
        wait_until(lambda: state.summary()["studies"]["sent"] == 2, 60, what="2 studies sent")
        results = state.results()
        versions = Counter((r["study_uid"], r["version"]) for r in results)
        assert max(versions.values()) == 1  # each version scored exactly once
        current = [json.loads(r["document"]) for r in results if not r["superseded"]]
        assert sorted(d["n_slices"] for d in current) == [6, 6]
        outbox = state.outbox()
        assert {o["status"] for o in outbox} <= {"sent", "superseded"}
        sops = Counter(_sop(i) for i in orthanc.instances())
        assert max(sops.values()) == 1
        assert {o["sop_uid"] for o in outbox if o["status"] == "sent"} == set(sops)
        for doc in current:
            assert doc["sr_sop_instance_uid"] in sops
        state.close()
    finally:
        service.kill()


@pytest.mark.slow
def test_load_eight_concurrent_associations(orthanc, tmp_path):
    studies = phantom_studies(tmp_path / "load", 8, seed=31, slices=40, size=64,
                              prevalence=0.25)
    # (a longer quiet period: under load a pause inside an association must not complete a
    # study early; if it did, the later instances would re-score it, which is also checked)
    service = _service(tmp_path, orthanc.destination, max_associations=8,
                       quiet_period_s=2.0).start()
    try:
        senders = [storescu_async(service.port, files) for files in studies]
        outputs = [s.communicate(timeout=120)[0] for s in senders]
        assert [s.returncode for s in senders] == [0] * 8, outputs
        state = _state(tmp_path)
        n = sum(len(s) for s in studies)
        assert state.count_instances() == n
        wait_until(lambda: state.summary()["studies"]["sent"] == 8, 90, what="8 studies sent")
        current = [json.loads(r["document"]) for r in state.results() if not r["superseded"]]
        assert sorted(d["n_slices"] for d in current) == [40] * 8
        assert state.summary()["instances_received"] == n  # nothing stored twice
        sops = Counter(_sop(i) for i in orthanc.instances())
        assert max(sops.values()) == 1
        sent = {o["sop_uid"] for o in state.outbox() if o["status"] == "sent"}
        assert set(sops) == sent
        assert {d["sr_sop_instance_uid"] for d in current} <= {_sop(i) for i in _srs(orthanc)}
        state.close()
    finally:
        assert service.terminate() == 0
