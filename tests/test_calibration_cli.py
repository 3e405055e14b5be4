"""``ichrt calibrate threshold|quantize`` and ``ichrt evaluate`` end to end on tiny data."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from ichrt.calibration.model_io import file_sha256
from ichrt.runtime.cli import main
from ichrt.runtime.session import load_model

pytest_plugins = ("calibration_helpers",)


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_threshold_writes_calibrated_model_report_and_picture(tiny_model, labelled_dir, tmp_path):
    path, _ = tiny_model
    parent_sha = file_sha256(path)
    out = tmp_path / "cal.onnx"
    result = run("calibrate", "threshold", path, "--data", labelled_dir, "--out", out,
                 "--target-sensitivity", "0.9", "--bootstrap", "100", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert file_sha256(path) == parent_sha  # the parent is untouched
    contract = load_model(out, provider="cpu").contract
    assert contract.provenance["parent"] == parent_sha
    assert contract.temperatures == report["temperatures"]
    assert contract.threshold("any") == report["thresholds"]["any"]
    point = report["labels"]["any"]["operating_point"]
    assert point["slice"]["sensitivity"][0] >= 0.9
    assert point["slice"]["sensitivity"][1] <= point["slice"]["sensitivity"][0]
    assert contract.metrics["calibration"]["labels"]["any"]["ece_after"] == \
        report["labels"]["any"]["ece_after"]
    assert (tmp_path / "cal.calibration.json").is_file()
    assert (tmp_path / "cal.reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # evaluate on the same data: the calibrated threshold gives the promised sensitivity
    ev = run("evaluate", out, "--data", labelled_dir, "--json")
    assert ev.exit_code == 0, ev.output
    doc = json.loads(ev.stdout)
    any_slice = doc["labels"]["any"]["slice"]
    assert doc["labels"]["any"]["threshold"] == contract.threshold("any")
    assert any_slice["sensitivity"] >= 0.9
    assert any_slice["ece"] <= report["labels"]["any"]["ece_before"] + 1e-9
    assert doc["data"]["slices"] == 48 and doc["data"]["studies"] == 8
    assert doc["model"]["sha256"] == file_sha256(out)


def test_evaluate_table_and_levels(tiny_model, labelled_dir):
    path, _ = tiny_model
    result = run("evaluate", path, "--data", labelled_dir, "--bootstrap", "50")
    assert result.exit_code == 0, result.output
    assert "any" in result.stdout and "study" in result.stdout and "AUC" in result.stdout
    doc = json.loads(run("evaluate", path, "--data", labelled_dir, "--json").stdout)
    a = doc["labels"]["any"]
    assert a["study"]["positives"] + a["study"]["negatives"] == 8
    assert a["slice"]["positives"] + a["slice"]["negatives"] == 48
    assert 0.5 < a["slice"]["auc"] <= 1.0


def test_evaluate_reads_the_phantom_generators_layout(tiny_model, phantom_dir):
    from ichrt.runtime.rsna_layout import read_labels_csv

    path, _ = tiny_model
    doc = json.loads(run("evaluate", path, "--data", phantom_dir, "--json").stdout)
    labels = read_labels_csv(phantom_dir / "stage_2_train.csv")
    assert doc["data"]["slices"] == len(labels) and doc["data"]["studies"] == 3
    any_pos = sum(int(v[0] == 1) for v in labels.values())
    assert doc["labels"]["any"]["slice"]["positives"] == any_pos
    assert doc["labels"]["any"]["study"]["positives"] == 2  # round(0.5 * 3) positive studies


def test_quantize_command_writes_int8_and_report(tiny_model, labelled_dir, heldout_dir,
                                                 tmp_path):
    path, _ = tiny_model
    out = tmp_path / "int8.onnx"
    result = run("calibrate", "quantize", path, "--data", labelled_dir, "--holdout",
                 heldout_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert "minmax/u8s8-rr" in result.stdout and "chosen" in result.stdout
    report = json.loads((tmp_path / "int8.quantize.json").read_text())
    assert report["accepted"] and report["parent"]["sha256"] == file_sha256(path)
    int8 = load_model(out, provider="cpu")
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert int8.run(x)["features"].dtype == np.float32


def test_bad_data_folder_is_a_usage_error(tiny_model, tmp_path):
    path, _ = tiny_model
    result = run("evaluate", path, "--data", tmp_path)
    assert result.exit_code == 2
    assert "labels CSV" in result.output


def test_quantize_without_calibration_files_is_a_usage_error(tiny_model, heldout_dir, tmp_path):
    path, _ = tiny_model
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run("calibrate", "quantize", path, "--data", empty, "--holdout", heldout_dir,
                 "--out", tmp_path / "q.onnx")
    assert result.exit_code == 2 and "no files to calibrate with" in result.output
