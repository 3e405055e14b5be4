"""The edge service's parts without a network: config, spool, state machine, result UIDs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ichrt.runtime.serve import ServeExtraMissing, require
from ichrt.runtime.serve.config import ConfigError, Destination, Retry, load_config
from ichrt.runtime.serve.spool import Spool, uid_key, write_durably
from ichrt.runtime.serve.state import InstanceRecord, Job, Outgoing, State

# the phantoms carry RSNA-style "ID_..." UIDs, as the RSNA 2019 data do
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ichrt.toml"
    path.write_text(text)
    return path


def test_config_file_and_flags_override(tmp_path: Path) -> None:
    path = _toml(tmp_path, """
[serve]
ae_title = "EDGE1"
port = 4000
spool = "spool"
allowed_calling_aets = ["CT1", "PACS"]
max_associations = 3
quiet_period_s = 2

[[destinations]]
ae_title = "PACS"
host = "10.1.2.3"
port = 104

[notify]
url = "http://127.0.0.1:9/hook"

[retry]
max_attempts = 4
""")
    cfg = load_config(path)
    assert (cfg.ae_title, cfg.port, cfg.max_associations, cfg.quiet_period_s) == ("EDGE1", 4000, 3,
                                                                                 2.0)
    assert cfg.spool == tmp_path / "spool"  # relative to the config file
    assert cfg.allowed_calling_aets == ("CT1", "PACS")
    assert [d.key for d in cfg.destinations] == ["PACS@10.1.2.3:104"]
    assert cfg.notify.enabled and cfg.retry.max_attempts == 4
    flags = load_config(path, port=5000, ae_title="EDGE2", spool=tmp_path / "other",
                        destinations=["A@h1:1", "B@[::1]:2"], quiet_period_s=None)
    assert (flags.port, flags.ae_title, flags.spool) == (5000, "EDGE2", tmp_path / "other")
    assert [d.key for d in flags.destinations] == ["A@h1:1", "B@::1:2"]
    assert flags.quiet_period_s == 2.0  # a flag not given keeps the file's value


@pytest.mark.parametrize("text, message", [
    ("[serve]\nport = 70000\n", "port"),
    ("[serve]\nae_title = \"WAY-TOO-LONG-AE-TITLE\"\n", "AE title"),
    ("[serve]\nbogus = 1\n", "unknown key"),
    ("[servr]\n", "unknown table"),
    ("[serve\n", "not valid TOML"),
    ("[[destinations]]\nae_title = \"X\"\nhost = \"h\"\n", "bad setting"),
])
def test_config_errors_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_toml(tmp_path, text))


def test_destination_parse() -> None:
    assert Destination.parse("ORTHANC@127.0.0.1:4242") == Destination("ORTHANC", "127.0.0.1", 4242)
    for bad in ("ORTHANC@host", "@h:1", "A@h:x", "A@h:0"):
        with pytest.raises(ConfigError):
            Destination.parse(bad)


def test_retry_backoff_grows_to_a_cap() -> None:
    r = Retry(max_attempts=5, base_s=1.0, max_s=5.0)
    assert [r.delay(n) for n in (1, 2, 3, 4, 5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_spool_names_are_hashes_and_writes_are_atomic(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    hostile = "../../etc/passwd"
    path = spool.instance_path(hostile, "1.2", "1.2.3")
    assert path.parent.parent == spool.studies and ".." not in path.parts
    assert path.parent.name == uid_key(hostile) and len(path.stem) == 24
    write_durably(path, [b"abc", b"def"], spool.temporary())
    assert path.read_bytes() == b"abcdef" and not list(spool.tmp.iterdir())
    (spool.tmp / "x.part").write_bytes(b"half")  # a crash mid-write
    assert spool.clear_tmp() == 1


def _rec(study: str, sop: str) -> InstanceRecord:
    return InstanceRecord(study, study + ".1", sop, "1.2.840.10008.5.1.4.1.1.2",
                          f"/spool/{sop}.dcm", 10, "CT1")


def test_state_lifecycle_versions_and_outbox(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    assert state.add_instance(_rec("S", "a"), now=100.0)
    assert not state.add_instance(_rec("S", "a"), now=101.0)  # a resend: not a new instance
    assert state.add_instance(_rec("S", "b"), now=102.0)
    assert state.complete_quiet(5.0, now=106.0) == []  # still arriving
    assert state.complete_quiet(5.0, now=107.5) == ["S"]
    job = state.next_job()
    assert job == Job("S", 1, ("/spool/a.dcm", "/spool/b.dcm"))
    out = [Outgoing("PACS@h:1", "sr", "9.1", "/r/sr.dcm"), Outgoing("PACS@h:1", "sc", "9.2")]
    rid, current = state.record_result(job, "sha", "m", {"p_any": 0.9, "flagged": True}, out, 0.1)
    assert current and state.studies()[0]["status"] == "scored"
    assert state.next_job() is None
    # exactly once per version: recording the same version again adds nothing
    again, current2 = state.record_result(job, "sha", "m", {"p_any": 0.9}, out, 0.1)
    assert (again, current2) == (rid, False) and len(state.results()) == 1
    first, second = state.due(now=1e12)
    state.mark_sent(first)
    state.mark_failed(second, "peer down", retry_at=2e12)
    assert state.due(now=1e12) == [] and state.studies()[0]["status"] == "scored"
    (second,) = state.due(now=3e12)
    state.mark_failed(second, "peer down", retry_at=None)  # gave up
    study = state.studies()[0]
    assert study["status"] == "failed" and "peer down" in study["error"]
    assert state.summary()["outbox"] == {"pending": 0, "sent": 1, "failed": 1, "superseded": 0}
    assert state.retry_failed() == 1 and state.studies()[0]["status"] == "scored"
    (second,) = state.due(now=4e12)
    state.mark_sent(second)
    assert state.studies()[0]["status"] == "sent"
    # a later instance starts version 2; its result supersedes version 1's
    assert state.add_instance(_rec("S", "c"), now=200.0)
    assert state.studies()[0]["status"] == "receiving" and state.studies()[0]["version"] == 2
    state.complete_quiet(5.0, now=300.0)
    job2 = state.next_job()
    assert job2.version == 2 and len(job2.paths) == 3
    state.record_result(job2, "sha", "m", {"p_any": 0.1, "flagged": False},
                        [Outgoing("PACS@h:1", "sr", "9.3")], 0.1)
    results = state.results("S")
    assert [r["superseded"] for r in results] == [1, 0]
    state.close()


def test_failed_scoring_can_be_queued_again(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    state.add_instance(_rec("S", "a"), now=1.0)
    state.complete_quiet(0.0, now=2.0)
    job = state.next_job()
    state.fail_study(job, "scoring failed: boom")
    assert state.studies()[0]["status"] == "failed" and state.next_job() is None
    assert state.retry_failed() == 1
    assert state.next_job() == job and state.studies()[0]["error"] is None


def test_result_of_a_superseded_version_is_kept_but_not_sent(tmp_path: Path) -> None:
    state = State(tmp_path / "state.sqlite")
    state.add_instance(_rec("S", "a"), now=1.0)
    state.complete_quiet(0.0, now=2.0)
    job = state.next_job()
    state.add_instance(_rec("S", "b"), now=3.0)  # arrives while version 1 is being scored
    _, current = state.record_result(job, "sha", "m", {"flagged": False},
                                       [Outgoing("P@h:1", "sr", "1")], 0.1)
    assert not current and state.outbox() == []
    assert state.results()[0]["superseded"] == 1
    assert state.studies()[0]["status"] == "receiving"


def test_result_uids_are_deterministic() -> None:
    from ichrt.runtime.serve.results import result_uids

    a = result_uids("1.2.3", 1, "ab" * 32, 2)
    assert a == result_uids("1.2.3", 1, "ab" * 32, 2)
    assert a.sr_instance.startswith("2.25.") and len(a.sr_instance) <= 64
    others = {result_uids("1.2.3", 2, "ab" * 32, 2).sr_instance,
              result_uids("1.2.3", 1, "cd" * 32, 2).sr_instance,
              result_uids("1.2.4", 1, "ab" * 32, 2).sr_instance}
    assert a.sr_instance not in others and len(others) == 3
    assert len({a.sr_series, a.sc_series, *a.sc_instances}) == 4


def test_missing_extra_names_it() -> None:
    with pytest.raises(ServeExtraMissing, match=r"ichrt\[serve\]"):
        require("pynetdicom_not_installed_here")


def test_serve_modules_do_not_import_network_libraries_at_import() -> None:
    code = ("import sys, ichrt.runtime.serve.service, ichrt.runtime.commands.serve; "
            "print(sorted(m for m in ('pynetdicom', 'highdicom') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert json.loads(done.stdout.strip().replace("'", '"')) == []


def test_status_command_reads_the_state(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ichrt.runtime.cli import main

    runner = CliRunner()
    missing = runner.invoke(main, ["status", "--spool", str(tmp_path)])
    assert missing.exit_code == 1 and "no state database" in missing.output
    state = State(tmp_path / "state.sqlite")
    state.add_instance(_rec("S", "a"))
    state.close()
    done = runner.invoke(main, ["status", "--spool", str(tmp_path), "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.output)
    assert doc["studies"]["receiving"] == 1 and doc["instances"] == 1
    text = runner.invoke(main, ["status", "--spool", str(tmp_path), "--studies", "5"])
    assert "receiving 1" in text.output
    assert f"{uid_key('S')}  receiving  v1     1 instances" in text.output
    listed = json.loads(runner.invoke(main, ["status", "--spool", str(tmp_path), "--json",
                                             "--studies", "5"]).output)["recent_studies"]
    assert [s["study"] for s in listed] == [uid_key("S")]


def test_serve_command_usage_errors(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ichrt.runtime.cli import main

    runner = CliRunner()
    bad_dest = runner.invoke(main, ["serve", "--spool", str(tmp_path), "--destination", "nope"])
    assert bad_dest.exit_code == 2 and "AET@HOST:PORT" in bad_dest.output
    bad_file = runner.invoke(main, ["serve", "--config", str(_toml(tmp_path, "[serve]\nx = 1\n"))])
    assert bad_file.exit_code == 2 and "unknown key" in bad_file.output


def test_sr_and_sc_content_without_a_network(tmp_path: Path) -> None:
    """The SR carries the finding, probabilities, volume, key slice and model; the SC is an RGB
    picture in its own series of the same study, with the annotation burned in."""
    import numpy as np
    import pydicom
    from serve_helpers import phantom_studies

    from ichrt.runtime.serve.results import Finding, build_sc, build_sr, result_uids

    (files,) = phantom_studies(tmp_path / "ph", 1, seed=3, slices=2, size=64, prevalence=1.0)
    ref = pydicom.dcmread(files[0], stop_before_pixels=True)
    uids = result_uids(ref.StudyInstanceUID, 2, "ab" * 32, 1)
    finding = Finding(ref.StudyInstanceUID, 2, True, {"any": 0.97, "subdural": 0.9}, 0.5,
                      ref.SOPInstanceUID, 2, "model-x", "ichrt 0.1.0", "ab" * 32, 12.5)
    sr = build_sr(finding, ref, uids)
    assert (sr.StudyInstanceUID, sr.SOPInstanceUID) == (ref.StudyInstanceUID, uids.sr_instance)
    assert sr.SeriesInstanceUID == uids.sr_series != ref.SeriesInstanceUID
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in sr.ContentSequence}
    assert items["Suspected intracranial hemorrhage"].ConceptCodeSequence[0].CodeValue == \
        "373066001"
    volume = items["Volume"].MeasuredValueSequence[0]
    assert float(volume.NumericValue) == 12.5
    assert volume.MeasurementUnitsCodeSequence[0].CodeValue == "mL"
    assert float(items["Probability of subdural hemorrhage"].MeasuredValueSequence[0]
                 .NumericValue) == pytest.approx(0.9)
    assert items["Key slice (highest probability of hemorrhage)"].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == ref.SOPInstanceUID
    assert items["Model SHA-256"].TextValue == "ab" * 32
    assert "PatientName" not in sr or str(sr.PatientName) == str(ref.get("PatientName", ""))
    no_volume = build_sr(Finding(**{**finding.__dict__, "volume_ml": None}), ref, uids)
    assert "Volume" not in {i.ConceptNameCodeSequence[0].CodeMeaning
                            for i in no_volume.ContentSequence}

    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[10:20, 10:20] = (255, 0, 0)
    sc = build_sc(ref, rgb, uids, 0, 0.97)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert (sc.StudyInstanceUID, sc.SeriesInstanceUID) == (ref.StudyInstanceUID, uids.sc_series)
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert np.array_equal(sc.pixel_array, rgb)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == ref.SOPInstanceUID


def test_burned_label_marks_the_picture() -> None:
    import numpy as np

    from ichrt.runtime.serve.results import LABEL_RGB, burn_label

    picture = np.full((512, 512, 3), 90, np.uint8)
    marked = burn_label(picture)
    strip = marked[:18]
    assert (strip == LABEL_RGB).all(axis=-1).sum() > 500  # the letters (scale 2)
    assert np.array_equal(marked[18:], picture[18:]) and picture.max() == 90  # copy
    assert np.array_equal(burn_label(picture[:40, :40]), picture[:40, :40])  # too small: as is


def test_start_up_recovery_indexes_orphans_and_clears_tmp(tmp_path: Path) -> None:
    """A crash after the rename but before the commit leaves a spooled file the state does not
    know: start-up indexes it (a junk file there is removed); tmp/ is emptied."""
    import shutil

    import pydicom
    from serve_helpers import phantom_studies

    from ichrt.runtime.serve.config import load_config
    from ichrt.runtime.serve.service import Service

    (files,) = phantom_studies(tmp_path / "ph", 1, seed=4, slices=2, size=32, prevalence=0.0)
    cfg = load_config(None, spool=tmp_path / "spool")
    service = Service(cfg)
    service.spool = Spool(cfg.spool)
    service.state = State(cfg.db_path)
    ds = pydicom.dcmread(files[0])
    orphan = service.spool.instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                         ds.SOPInstanceUID)
    orphan.parent.mkdir(parents=True)
    shutil.copyfile(files[0], orphan)
    junk = orphan.with_name("junk.dcm")
    junk.write_bytes(b"not dicom")
    (service.spool.tmp / "half.part").write_bytes(b"half")
    service.recover()
    assert service.state.count_instances(ds.StudyInstanceUID) == 1
    assert not junk.exists() and not list(service.spool.tmp.iterdir())
    service.recover()  # idempotent
    assert service.state.count_instances() == 1
    service.state.close()


def test_serve_mounts_the_worklist_page_on_http_port(tmp_path: Path, tiny_model) -> None:
    """``http_port`` serves the worklist page over the service's own state (ichrt[ui])."""
    import urllib.error
    import urllib.request

    from serve_helpers import free_port

    from ichrt.runtime.scorer import Scorer
    from ichrt.runtime.serve.service import Service

    port = free_port()
    cfg = load_config(None, spool=tmp_path / "spool", port=0, http_port=port,
                      http_token="s3cret", http_host="127.0.0.1")
    service = Service(cfg, scorer=Scorer(tiny_model[0])).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert refused.value.code == 401
        req = urllib.request.Request(f"http://127.0.0.1:{port}/",
                                     headers={"X-Ichrt-Token": "s3cret"})
        page = urllib.request.urlopen(req, timeout=10).read().decode()
        assert "tiny-test-model" in page
    finally:
        service.stop(drain_s=0)
    assert service.ui is None


def test_serve_refuses_a_public_page_without_a_token(tmp_path: Path, tiny_model) -> None:
    from ichrt.runtime.scorer import Scorer
    from ichrt.runtime.serve.service import Service

    cfg = load_config(None, spool=tmp_path / "spool", port=0, http_port=1,
                      http_host="0.0.0.0")
    service = Service(cfg, scorer=Scorer(tiny_model[0]))
    with pytest.raises(ValueError, match="token"):
        service.start()
    service.stop(drain_s=0)
