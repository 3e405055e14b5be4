"""``ichrt score`` through click's CliRunner: exit codes, outputs, PHI hiding, help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from score_helpers import (
    PATIENT_ID,
    PATIENT_NAME,
    StudySpec,
    head_slice,
    read_csv,
    write_ct,
    write_study,
)
from tinymodel import make_tiny_model

from ichrt.runtime.cli import main

NAME_PARTS = [PATIENT_NAME, *PATIENT_NAME.split("^")]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    write_study(root, StudySpec("7.1", (0.0, 0.6), study_time="0900"), "pos")
    write_study(root, StudySpec("7.2", (0.0, 0.0), study_time="0800"), "neg")
    return root


@pytest.fixture(scope="module")
def with_junk(tmp_path_factory, clean: Path) -> Path:
    junk = tmp_path_factory.mktemp("junk")
    (junk / "readme.txt").write_text("hello")
    return junk


def run(*args: str) -> object:
    return CliRunner().invoke(main, ["score", *args], catch_exceptions=False)


def outputs_text(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in out.rglob("*")
                     if p.is_file() and p.suffix in {".csv", ".json"})


def test_all_scored_exits_0_and_writes_worklist(tiny_model, clean: Path, tmp_path: Path) -> None:
    res = run(str(clean), "--out", str(tmp_path), "--model", str(tiny_model[0]),
              "--provider", "cpu", "--threads", "1", "--batch-size", "3")
    assert res.exit_code == 0, res.output
    rows = read_csv(tmp_path / "worklist.csv")
    assert [r["study_instance_uid"] for r in rows] == ["7.1", "7.2"]
    assert "tiny-test-model (sha256:" in res.stdout
    assert "2 studies, 1 flagged" in res.stdout
    assert "tiny-test-model (sha256:" in res.stderr  # the model line goes to stderr too
    assert read_csv(tmp_path / "rejected.csv") == []


def test_some_rejected_exits_3_and_still_writes(tiny_model, clean: Path, with_junk: Path,
                                                tmp_path: Path) -> None:
    res = run(str(clean), str(with_junk), "--out", str(tmp_path), "--model", str(tiny_model[0]))
    assert res.exit_code == 3, res.output
    assert "1 of 5 input files rejected" in res.stdout
    assert len(read_csv(tmp_path / "worklist.csv")) == 2
    (row,) = read_csv(tmp_path / "rejected.csv")
    assert row["path"].endswith("readme.txt") and row["reason"]


def test_json_output_is_pure_json(tiny_model, clean: Path, tmp_path: Path) -> None:
    res = run(str(clean), "--out", str(tmp_path), "--model", str(tiny_model[0]), "--json",
              "--threshold", "0.9")
    assert res.exit_code == 0
    doc = json.loads(res.stdout)
    assert doc["threshold"] == 0.9 and doc["counts"]["flagged"] == 0
    assert [s["study_instance_uid"] for s in doc["studies"]] == ["7.2", "7.1"]  # arrival order
    assert doc["model"]["sha256"] and doc["outputs"]["worklist.csv"].endswith("worklist.csv")


@pytest.mark.parametrize("args, message", [
    ([], "give PATH"),
    (["{clean}"], "--out DIR is required"),
    (["{clean}", "--out", "{out}", "--batch-size", "0"], "batch-size"),
    (["{clean}", "--out", "{out}", "--threshold", "2"], "threshold"),
    (["{clean}", "--out", "{out}", "--explain", "magic"], "explain"),
    (["/no/such/path", "--out", "{out}"], "does not exist"),
    (["{clean}", "--demo"], "not both"),
    (["{empty}", "--out", "{out}"], "no input files"),
])
def test_usage_errors_exit_2(tiny_model, clean: Path, tmp_path: Path, args, message) -> None:
    (tmp_path / "empty").mkdir()
    fill = {"clean": str(clean), "out": str(tmp_path / "o"), "empty": str(tmp_path / "empty")}
    res = run(*[a.format(**fill) for a in args], "--model", str(tiny_model[0]))
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_unavailable_provider_is_a_usage_error(tiny_model, clean: Path, tmp_path: Path,
                                               monkeypatch) -> None:
    from ichrt.runtime import session

    monkeypatch.setattr(session.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    res = run(str(clean), "--out", str(tmp_path), "--model", str(tiny_model[0]),
              "--provider", "cuda")
    assert res.exit_code == 2 and "'gpu' extra" in res.output


def test_model_without_contract_exits_1(clean: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bare.onnx"
    make_tiny_model(bad, with_contract=False)
    res = run(str(clean), "--out", str(tmp_path / "o"), "--model", str(bad))
    assert res.exit_code == 1
    assert "bare.onnx" in res.stderr and "contract" in res.stderr
    assert not (tmp_path / "o").exists()


def test_phi_hidden_unless_asked(tiny_model, clean: Path, tmp_path: Path) -> None:
    hidden, shown = tmp_path / "hidden", tmp_path / "shown"
    for extra in ([], ["--json"]):
        res = run(str(clean), "--out", str(hidden), "--model", str(tiny_model[0]), *extra)
        for secret in [PATIENT_ID, *NAME_PARTS]:
            assert secret not in res.stdout and secret not in res.stderr
    text = outputs_text(hidden)
    assert text and PATIENT_ID not in text
    assert not any(part in text for part in NAME_PARTS)
    res = run(str(clean), "--out", str(shown), "--model", str(tiny_model[0]), "--show-phi")
    assert PATIENT_ID in res.stdout
    rows = read_csv(shown / "worklist.csv")
    assert {r["patient_id"] for r in rows} == {PATIENT_ID}
    text = outputs_text(shown) + res.stdout
    assert not any(part in text for part in NAME_PARTS)  # names never, even with --show-phi


def test_help_documents_every_option_and_exit_codes() -> None:
    res = CliRunner().invoke(main, ["score", "--help"])
    assert res.exit_code == 0
    for option in ("--out", "--model", "--batch-size", "--provider", "--threads", "--threshold",
                   "--json", "--show-phi", "--explain", "--demo"):
        assert option in res.output
    for code in ("0  every input", "1  runtime error", "2  usage error", "3  some inputs"):
        assert code in res.output


def test_demo_scores_phantoms_with_positives(tiny_model, tmp_path: Path) -> None:
    res = run("--demo", "--model", str(tiny_model[0]), "--json", "--threshold", "0.0",
              "--explain", "none")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["counts"]["studies"] == 6 and doc["counts"]["rejected"] == 0
    assert doc["counts"]["scored_slices"] >= 6 * 16
    assert "outputs" not in doc  # nothing written without --out
    truth = doc["demo_truth"]
    assert set(truth) == {s["study_instance_uid"] for s in doc["studies"]}
    assert sum(bool(found) for found in truth.values()) == 3  # prevalence 0.5 of 6


def test_explain_hshap_writes_maps_for_flagged_slices_only(tiny_model, clean: Path,
                                                            tmp_path: Path) -> None:
    res = run(str(clean), "--out", str(tmp_path), "--model", str(tiny_model[0]),
              "--explain", "hshap", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    hot = [r for r in read_csv(tmp_path / "slices.csv") if r["above_threshold"] == "True"]
    assert len(hot) == 1 and len(doc["explanations"]) == 1
    (entry,) = doc["explanations"]
    assert entry["method"] == "hshap" and entry["sop_instance_uid"] == hot[0]["sop_instance_uid"]
    assert len(list((tmp_path / "explanations").rglob("*.png"))) == 1


def test_unavailable_explainer_is_a_usage_error_before_scoring(tiny_model, clean: Path,
                                                               tmp_path: Path) -> None:
    # The tiny model has no torch checkpoint beside it, so Grad-CAM cannot run.
    res = run(str(clean), "--out", str(tmp_path / "o"), "--model", str(tiny_model[0]),
              "--explain", "gradcam")
    assert res.exit_code == 2 and "checkpoint" in res.output
    assert not (tmp_path / "o").exists()


def test_real_process_stderr_has_no_validation_noise_or_phi(tiny_model, tmp_path: Path) -> None:
    # RSNA 2019 files carry ids such as ID_0fe31b044 in place of UIDs; pydicom's validation
    # warnings would quote each one on stderr (checked in a subprocess, where warnings print as
    # they would for a user, not into pytest's recorder).
    study = tmp_path / "in"
    study.mkdir()
    for i in (1, 2):
        write_ct(study / f"{i}.dcm", head_slice(64, 0.6), "ID_5tudy0001", "ID_5eries001",
                 f"ID_0fe31b04{i}", i)
    proc = subprocess.run(
        [sys.executable, "-W", "always", "-c", "from ichrt.runtime.cli import main; main()",
         "score", str(study), "--out", str(tmp_path / "out"), "--model", str(tiny_model[0])],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ID_5tudy0001" in proc.stdout
    assert "Invalid value" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    everything = proc.stdout + proc.stderr + outputs_text(tmp_path / "out")
    for secret in [PATIENT_ID, *NAME_PARTS]:
        assert secret not in everything


def test_cli_restores_pydicom_validation_mode(tiny_model, clean: Path, tmp_path: Path) -> None:
    import pydicom.config

    before = pydicom.config.settings.reading_validation_mode
    run(str(clean), "--out", str(tmp_path), "--model", str(tiny_model[0]))
    assert pydicom.config.settings.reading_validation_mode == before
