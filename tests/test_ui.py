"""The worklist page (``ichrt ui``) in a real headless browser (Debian Chromium + Selenium).

One server and one browser for the module, over the results of the tiny model on tiny studies
whose files carry a patient name and ID (neither may ever reach a page).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from score_helpers import PATIENT_ID, PATIENT_NAME, StudySpec, write_study

pytest.importorskip("starlette", reason="needs the 'ui' extra")
pytest.importorskip("selenium", reason="needs the 'ui' extra")

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from ui_helpers import chrome, serving

from ichrt.runtime.scorer import Scorer, write_result
from ichrt.runtime.ui.app import Pages, create_app, is_loopback
from ichrt.runtime.ui.sources import (
    Confiner,
    ResultsSource,
    ServeStateSource,
    SliceRow,
)

NEG, MID, POS, HOT = 0.0, 0.3, 0.45, 0.6
TOKEN = "test-token-4242"
#: Text of the files that must never appear on a page.
SECRETS = (PATIENT_NAME, *PATIENT_NAME.split("^"), PATIENT_ID)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model):
    """Inputs, a scorer, and the first results: two flagged studies, two not flagged."""
    root = tmp_path_factory.mktemp("ui")
    inputs = root / "in"
    write_study(inputs, StudySpec("1.2.1", (NEG, NEG, NEG), study_time="0900"), "a_neg_late")
    write_study(inputs, StudySpec("1.2.2", (NEG, POS, MID), study_time="0800"), "b_pos_early")
    write_study(inputs, StudySpec("1.2.3", (NEG, HOT, MID), study_time="1000"), "c_hot_latest")
    write_study(inputs, StudySpec("1.2.4", (MID, NEG), study_time="0700"), "d_mid_earliest")
    scorer = Scorer(tiny_model[0], provider="cpu", threads=1, batch_size=8)
    results = root / "results"
    write_result(scorer.score([inputs]), results)
    return {"root": root, "inputs": inputs, "results": results, "scorer": scorer}


@pytest.fixture(scope="module")
def source(world) -> ResultsSource:
    return ResultsSource(world["results"], [world["inputs"]])


@pytest.fixture(scope="module")
def url(source):
    with serving(create_app(source, poll_s=0.2)) as base:
        yield base


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with chrome(tmp_path_factory.mktemp("chrome-profile")) as driver:
        yield driver


def _rows(browser) -> list[tuple[str, bool]]:
    """(key, flagged) of the worklist's rows, read in one go (the rows are swapped live)."""
    rows = browser.execute_script(
        "return Array.from(document.querySelectorAll('#worklist tbody tr'))"
        ".map(function(r){ return [r.dataset.key, r.dataset.flagged === '1']; });")
    return [(k, f) for k, f in rows]


def _expected(world, source) -> list[str]:
    doc = json.loads((world["results"] / "worklist.json").read_text())
    return [source.keys(s["study_instance_uid"]) for s in doc["studies"]]


def test_worklist_shows_flagged_studies_first(world, source, url, browser) -> None:
    browser.get(url + "/")
    rows = _rows(browser)
    keys = {uid: source.keys(uid) for uid in ("1.2.1", "1.2.2", "1.2.3", "1.2.4")}
    # flagged by p(any) (the hot study first), then the others in arrival order
    assert [k for k, _ in rows] == [keys["1.2.3"], keys["1.2.2"], keys["1.2.4"], keys["1.2.1"]]
    assert [f for _, f in rows] == [True, True, False, False]
    assert [k for k, _ in rows] == _expected(world, source)
    first = browser.find_element(By.CSS_SELECTOR, "#worklist tbody tr")
    assert "BLEED?" in first.text
    assert len(first.find_elements(By.CSS_SELECTOR, "td.sub i")) == 5  # subtype bars
    thumb = first.find_element(By.CSS_SELECTOR, "td.thumb img")
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth > 0", thumb))


def test_a_new_study_appears_without_reload(world, source, url, browser) -> None:
    browser.get(url + "/")
    assert len(_rows(browser)) == 4
    browser.execute_script("window.__noReload = 42;")
    write_study(world["inputs"], StudySpec("1.2.9", (HOT, HOT), study_time="1100"), "e_new")
    write_result(world["scorer"].score([world["inputs"]]), world["results"])
    WebDriverWait(browser, 15).until(lambda d: len(_rows(d)) == 5)
    assert browser.execute_script("return window.__noReload") == 42  # same page, not reloaded
    rows = _rows(browser)
    assert rows[0][1] and source.keys("1.2.9") in [k for k, f in rows if f]
    assert [k for k, _ in rows] == _expected(world, source)


def _slice_state(browser) -> dict:
    return browser.execute_script(
        "var i = document.getElementById('slice'); return {src: i.getAttribute('src'),"
        " preset: i.dataset.preset, overlay: i.dataset.overlay, index: i.dataset.index,"
        " ok: i.complete && i.naturalWidth > 0};")


def test_study_view_changes_window_and_overlay(world, source, url, browser) -> None:
    key = source.keys("1.2.3")
    browser.get(f"{url}/study/{key}")
    wait = WebDriverWait(browser, 10)
    wait.until(lambda d: _slice_state(d)["ok"])
    state = _slice_state(browser)
    assert state["preset"] == "brain" and state["overlay"] == "1"
    assert state["index"] == "1"  # opens at the key slice (instance 2)
    strip = browser.find_elements(By.CSS_SELECTOR, "#strip a")
    assert len(strip) == 3 and "hot" in strip[1].get_attribute("class")
    assert "ichrt" in browser.find_element(By.TAG_NAME, "header").text  # model name and hash
    assert "sha256:" in browser.page_source

    browser.find_element(By.CSS_SELECTOR, "[data-preset=bone]").click()
    wait.until(lambda d: _slice_state(d)["preset"] == "bone" and _slice_state(d)["ok"])
    assert "w=bone" in _slice_state(browser)["src"]
    browser.find_element(By.ID, "overlay").click()
    wait.until(lambda d: _slice_state(d)["overlay"] == "0" and _slice_state(d)["ok"])
    assert "o=0" in _slice_state(browser)["src"]
    strip[0].click()
    wait.until(lambda d: _slice_state(d)["index"] == "0")

    # the pictures themselves differ: windows, and the heat map on the key slice
    base = f"{url}/study/{key}/slice/1.png?"
    brain, bone, plain = (_get(base + q)[1] for q in ("w=brain&o=1", "w=bone&o=1", "w=brain&o=0"))
    assert len({brain, bone, plain}) == 3
    assert brain[:8] == b"\x89PNG\r\n\x1a\n"


def test_pages_never_show_a_patient_name(world, source, url, browser) -> None:
    pages = ["/", "/status", f"/study/{source.keys('1.2.2')}", f"/study/{source.keys('1.2.1')}"]
    for page in pages:
        browser.get(url + page)
        html = browser.page_source
        for secret in SECRETS:
            assert secret not in html, (page, secret)
        # no UID in any link or picture address
        for attr in re.findall(r'(?:href|src)="([^"]*)"', html):
            assert not re.search(r"1\.2\.\d", attr), attr


def test_patient_id_only_when_configured(world, tmp_path) -> None:
    phi = tmp_path / "phi"
    write_result(world["scorer"].score([world["inputs"]]), phi, show_phi=True)
    shown = Pages(ResultsSource(phi, [world["inputs"]], show_patient_id=True), True).worklist()
    hidden = Pages(ResultsSource(phi, [world["inputs"]])).worklist()
    assert PATIENT_ID in shown and PATIENT_ID not in hidden
    for html in (shown, hidden):
        assert not any(part in html for part in PATIENT_NAME.split("^"))


def _get(address: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(address, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_a_token_is_required_when_configured(source, browser) -> None:
    with serving(create_app(source, token=TOKEN, poll_s=0.2)) as base:
        key = source.keys("1.2.3")
        for path in ("/", "/rows", "/status", f"/study/{key}", f"/study/{key}/thumb.png"):
            status, body = _get(base + path)
            assert status == 401 and b"<tr" not in body, path
        assert _get(base + "/", {"X-Ichrt-Token": "wrong"})[0] == 401
        assert _get(base + "/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert _get(base + "/", {"X-Ichrt-Token": TOKEN})[0] == 200
        # first visit with ?token=, then the cookie; the token leaves the address bar
        browser.get(f"{base}/status?token={TOKEN}")
        assert "token" not in browser.current_url and browser.current_url.endswith("/status")
        browser.get(base + "/")
        assert len(_rows(browser)) >= 4
        browser.delete_all_cookies()
        browser.get(base + "/")
        assert "401" in browser.page_source and not _rows(browser)


def test_loopback_and_the_command_makes_a_token(monkeypatch, world) -> None:
    from click.testing import CliRunner

    from ichrt.runtime.cli import main
    from ichrt.runtime.ui import app as app_module

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    served = {}
    monkeypatch.setattr(app_module, "run_server",
                        lambda app, host, port: served.update(app=app, host=host, port=port))
    done = CliRunner().invoke(main, ["ui", "--results", str(world["results"]),
                                     "--host", "0.0.0.0", "--port", "9"])
    assert done.exit_code == 0, done.output
    assert re.search(r"\?token=[\w-]{20,}", done.output) and served["host"] == "0.0.0.0"
    with serving(served["app"]) as base:
        assert _get(base + "/")[0] == 401


def test_without_the_extra_the_command_names_it(tmp_path) -> None:
    import sys

    from test_lean_import import _run_lean

    script = Path(sys.executable).with_name("ichrt")
    done, attempts = _run_lean([str(script), "ui", "--results", str(tmp_path / "r")], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "ichrt[ui]" in done.stderr
    # only the probe for the extra looked for them
    assert {a[1] for a in attempts if a[1].startswith("ichrt")} <= {"ichrt.runtime.ui"}


def test_files_outside_the_given_folders_are_never_read(tmp_path, world) -> None:
    confiner = Confiner([world["inputs"]])
    inside = next(world["inputs"].rglob("*.dcm"))
    assert confiner.resolve(str(inside)) == inside.resolve()
    (tmp_path / "outside.dcm").write_bytes(inside.read_bytes())
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "evil.dcm").symlink_to(tmp_path / "outside.dcm")
    (tmp_path / "root" / "fine.dcm").symlink_to(inside)  # a link to a file inside: fine
    linked = Confiner([tmp_path / "root", world["inputs"]])
    assert linked.resolve(str(tmp_path / "root" / "fine.dcm")) == inside.resolve()
    for bad in ("/etc/passwd", str(world["results"] / "worklist.json"), "../../etc/passwd",
                str(tmp_path / "outside.dcm"), "", "a\x00b"):
        with pytest.raises(PermissionError):
            confiner.resolve(bad)
    with pytest.raises(PermissionError):
        Confiner([tmp_path / "root"]).resolve(str(tmp_path / "root" / "evil.dcm"))
    source = ResultsSource(world["results"], [world["inputs"]])
    with pytest.raises(PermissionError):
        source.read_hu(SliceRow("x", 1, "/etc/passwd", None, False))


def test_the_serve_state_source(tmp_path, world) -> None:
    from ichrt.runtime.serve.state import InstanceRecord, Job, State

    inside = sorted((world["inputs"] / "c_hot_latest").glob("*.dcm"))
    state = State(tmp_path / "state.sqlite")
    for i, path in enumerate(inside):
        state.add_instance(InstanceRecord("1.2.3", "9.9", f"1.2.3.{i}", "ct", str(path), 1,
                                          accession="ACC-HOT"), now=100.0 + i)
    state.add_instance(InstanceRecord("1.2.7", "9.8", "1.2.7.1", "ct", str(inside[0]), 1),
                       now=105.0)
    state.complete_quiet(1.0, now=200.0)
    doc = {"p_any": 0.97, "flagged": True, "n_slices": 3, "n_rejected": 0, "threshold": 0.5,
           "probs": {"any": 0.97, "subdural": 0.9, "epidural": 0.1},
           "key_slice_sop_instance_uid": "1.2.3.1", "volume_ml": 12.5}
    state.record_result(Job("1.2.3", 1, ()), "ab" * 32, "tiny", doc, [], 0.5, now=210.0)
    state.close()
    source = ServeStateSource(tmp_path / "state.sqlite", spool=world["inputs"])
    snap = source.snapshot()
    assert [s.status for s in snap.studies] == ["scored", "scoring"]
    hot = snap.studies[0]
    assert hot.flagged and hot.volume_ml == 12.5 and hot.turnaround_s == pytest.approx(108.0)
    assert snap.model["sha256"] == "ab" * 32 and snap.subtypes == ["epidural", "subdural"]
    assert len(source.slices(hot)) == 3 and source.read_hu(source.slices(hot)[1]).ndim == 2
    html = Pages(source).worklist()
    assert "12.5" in html and "scoring" in html and "1.2.3" not in html
    with sqlite3.connect(tmp_path / "state.sqlite") as db:  # a change is seen
        db.execute("UPDATE studies SET status = 'sent' WHERE study_uid = '1.2.3'")
    time.sleep(0.01)
    assert source.snapshot().studies[0].status == "sent"

    # mounted as `ichrt serve --http-port` would: the service's state, in a thread of its own
    from types import SimpleNamespace

    from ichrt.runtime.ui.app import serve_pages

    config = SimpleNamespace(db_path=tmp_path / "state.sqlite", spool=world["inputs"])
    service = SimpleNamespace(config=config, scorer=world["scorer"], health=lambda: {"busy": 0})
    with pytest.raises(ValueError, match="token"):
        serve_pages(service, host="0.0.0.0")
    server = serve_pages(service)
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, body = _get(base + "/")
        assert status == 200 and b"ACC-HOT" in body and b"1.2.3" not in body
        status, body = _get(base + "/status")
        assert status == 200 and b"contract input_size" in body and b"service busy" in body
    finally:
        server.stop()


def test_hostile_results_are_shown_escaped_and_confined(tmp_path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    uid = "1.2.<script>alert(1)</script>"
    doc = {"model": {"name": "m<b>", "sha256": "ab" * 32}, "labels": ["any", "subdural"],
           "threshold": 0.5, "counts": {"studies": 1},
           "studies": [{"rank": 1, "study_instance_uid": uid, "accession_number": "<img src=x>",
                        "n_slices": 1, "n_rejected": 2, "scored": True, "p_any": 0.9,
                        "p_subdural": "nan", "flagged": True, "key_slice_sop_instance_uid": "9",
                        "arrival": "2024-01-01T08:00:00"}],
           "rejected": [{"path": "/data/DOE^JANE/x.dcm",
                         "reason": "/data/DOE^JANE/x.dcm: not a DICOM file"}],
           "explanations": [{"study_instance_uid": uid, "sop_instance_uid": "9",
                             "folder": "/etc", "files": {"npy": "../passwd"}}]}
    (results / "worklist.json").write_text(json.dumps(doc))
    (results / "slices.csv").write_text(
        "study_instance_uid,series_instance_uid,sop_instance_uid,instance_number,path,p_any,"
        f"above_threshold\n\"{uid}\",s,9,1,/etc/passwd,0.9,True\n")
    source = ResultsSource(results, [tmp_path])
    assert source.slices(source.snapshot().studies[0])[0].heat_map is None
    with serving(create_app(source)) as base:
        status, page = _get(base + "/")
        assert status == 200 and b"<script>alert" not in page and b"<img src=x>" not in page
        key = source.snapshot().studies[0].key
        status, picture = _get(f"{base}/study/{key}/slice/0.png?w=bone&o=1")
        assert status == 200 and picture[:4] == b"\x89PNG" and len(picture) < 2000  # a square
        assert _get(f"{base}/study/{key}/slice/7.png")[0] == 404
        assert _get(f"{base}/study/{key}/slice/0.png?w=lung")[0] == 404
        assert _get(f"{base}/study/nope")[0] == 404
        status, page = _get(base + "/status")
        assert b"not a DICOM file" in page and b"DOE" not in page
    missing = Pages(ResultsSource(tmp_path / "none", [tmp_path])).worklist()
    assert "no results yet" in missing


def test_thumbnail_and_slice_pictures_use_the_runtime_windows() -> None:
    from ichrt.runtime.ui.render import picture

    hu = np.linspace(-1000, 2000, 64 * 64, dtype=np.float32).reshape(64, 64)
    heat = np.zeros((64, 64), np.float32)
    heat[20:30, 20:30] = 1.0
    assert picture(hu, "brain").ndim == 2
    assert picture(hu, "bone", heat).shape == (64, 64, 3)
    assert picture(hu, "brain", heat, size=32).shape == (32, 32, 3)
    assert picture(hu, "brain", np.zeros((8, 8), np.float32)).ndim == 2  # wrong shape: no map
