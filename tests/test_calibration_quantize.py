"""INT8 quantization: features survive, the accuracy gate accepts faithful and rejects broken."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from ichrt.calibration.dataset import open_labelled
from ichrt.calibration.model_io import file_sha256
from ichrt.calibration.quantize import (
    QuantizationRejected,
    QuantSpec,
    accuracy_gate,
    choose,
    head_node_names,
    prepare_model,
    quantize,
    run_quantization,
)
from ichrt.calibration.reader import SliceCalibrationReader
from ichrt.calibration.saturation import saturated_outputs, saturation_pairs
from ichrt.runtime.session import load_model

pytest_plugins = ("calibration_helpers",)


def test_accuracy_gate_boundaries():
    assert accuracy_gate(0.90, 0.895)
    assert accuracy_gate(0.90, 0.93)
    assert not accuracy_gate(0.90, 0.8949)
    assert not accuracy_gate(0.90, float("nan"))


@pytest.mark.parametrize("fmt", ["u8s8", "u8s8-rr"])
def test_features_survive_quantization(tiny_model, labelled_dir, tmp_path, fmt):
    path, contract = tiny_model
    files = open_labelled(labelled_dir).files
    reader = SliceCalibrationReader.from_files(files, contract, batch_size=8)
    prepared = prepare_model(path, tmp_path / "prep.onnx")
    out = quantize(prepared, reader, tmp_path / "q.onnx", QuantSpec("minmax", fmt))
    q = onnx.load(str(out))
    assert {o.name for o in q.graph.output} == {"probs", "logits", "features"}
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)
    # the head after ``features`` stays float: no quantize node on its path
    head = set(head_node_names(q))
    assert {n.op_type for n in q.graph.node if n.name in head} >= {"Gemm", "Sigmoid"}
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in q.graph.node
                                                        if n.name in head}
    ref, int8 = load_model(path, provider="cpu"), load_model(out, provider="cpu")
    reader.rewind()
    x = np.concatenate([b["image"] for b in iter(reader.get_next, None)])
    a, b = ref.run(x), int8.run(x)
    assert b["features"].shape == a["features"].shape and b["features"].dtype == np.float32
    assert np.corrcoef(a["features"].ravel(), b["features"].ravel())[0, 1] > 0.99
    assert np.abs(a["probs"] - b["probs"]).max() < 0.05
    risk, hits = saturation_pairs(out), saturated_outputs(out, x)
    if fmt == "u8s8-rr":  # 7-bit weights can never overflow the int16 pair sum
        assert risk == 0.0 and hits["affected"] == 0
    else:  # 8-bit weights: some pairs can, and some outputs do on these slices
        assert risk > 0.0 and hits["outputs"] == x.shape[0] * 4 * 8 * 8


def test_gate_accepts_faithful_model_and_writes_contract(tiny_model, labelled_dir,
                                                         heldout_dir, tmp_path):
    path, contract = tiny_model
    reader = SliceCalibrationReader.from_files(open_labelled(labelled_dir).files, contract)
    heldout = open_labelled(heldout_dir)
    out = tmp_path / "int8.onnx"
    report = run_quantization(path, reader, heldout, heldout.files, out,
                              [QuantSpec("minmax", "u8s8-rr"), QuantSpec("percentile", "u8s8")])
    assert report.chosen == "minmax/u8s8-rr"  # both pass; the saturation-safe one wins
    assert all(c.accepted and c.auc_drop <= 0.005 for c in report.candidates)
    assert report.reference["auc_any"] > 0.7
    assert all(c.cam_correlation > 0.95 for c in report.candidates)
    written = load_model(out, provider="cpu").contract
    assert written.provenance["parent"] == file_sha256(path)
    assert written.name == f"{contract.name}-int8"
    assert written.cam_weights == contract.cam_weights
    assert written.metrics["int8"]["auc_drop"] == report.candidates[0].auc_drop
    assert report.out["sha256"] == file_sha256(out)


def test_gate_rejects_a_model_calibrated_on_unrepresentative_data(tiny_model,
                                                                  heldout_dir, tmp_path):
    path, _ = tiny_model
    # ranges from tensors 1000x too large: real inputs all round to the same few levels
    rng = np.random.default_rng(0)
    wild = [rng.normal(0, 1000, (8, 3, 32, 32)).astype(np.float32) for _ in range(2)]
    heldout = open_labelled(heldout_dir)
    out = tmp_path / "broken.onnx"
    with pytest.raises(QuantizationRejected, match="AUC") as info:
        run_quantization(path, SliceCalibrationReader(wild), heldout, heldout.files, out)
    report = info.value.report
    assert report.chosen is None and not out.exists()
    assert report.candidates[0].auc_drop > 0.005


def test_choose_prefers_saturation_safe_then_fast():
    from ichrt.calibration.quantize import CandidateResult

    def cand(fmt, ms, ok=True, dp=0.01, method="minmax"):
        return CandidateResult(QuantSpec(method, fmt), 0.9, 0.0, dp, ms, 1.0, 1.0, 1.0,
                               0.0, 0.0, ok)

    assert choose([cand("u8s8", 1.0), cand("u8s8-rr", 2.0), cand("u8u8", 1.5)]).spec.fmt == \
        "u8u8"
    assert choose([cand("u8s8", 1.0), cand("u8s8-rr", 2.0, ok=False)]).spec.fmt == "u8s8"
    assert choose([cand("u8s8", 1.0, ok=False)]) is None
    # as fast within timing noise: the smaller probability change wins (as for the shipped model)
    picked = choose([cand("u8s8-rr", 1.086, dp=0.25, method="entropy"),
                     cand("u8s8-rr", 1.107, dp=0.065)])
    assert picked.spec.method == "minmax"
    assert choose([cand("u8s8-rr", 1.0, dp=0.25), cand("u8u8", 3.0, dp=0.01)]).spec.fmt == \
        "u8s8-rr"


def test_quantize_model_from_folders_reports_rejected_files_and_stages(
        tiny_model, labelled_dir, heldout_dir, tmp_path):
    """The library call behind ``ichrt calibrate quantize``: any DICOM folder calibrates."""
    import contextlib
    import shutil

    from ichrt.calibration.quantize import quantize_model

    path, _ = tiny_model
    data = tmp_path / "dicoms"
    data.mkdir()
    for f in sorted((labelled_dir / "stage_2_train").glob("*.dcm"))[:12]:
        shutil.copy(f, data / f.name)
    (data / "junk.dcm").write_bytes(b"not a DICOM file")
    stages, notes = [], []

    @contextlib.contextmanager
    def bar(description):
        stages.append(description)
        yield lambda done, total: None

    out = tmp_path / "int8.onnx"
    report = quantize_model(path, data, out, holdout_dir=heldout_dir, note=notes.append, bar=bar)
    assert stages == ["calibration slices", "held-out slices"]
    assert report.calibration["slices"] == 12 and report.files_rejected == 1
    assert report.calibration["rejected"][0]["path"].endswith("junk.dcm")
    assert report.chosen == "minmax/u8s8-rr" and out.is_file()
    assert any("12 slices (1 files rejected)" in n for n in notes)


def test_quantize_model_without_files_is_a_dataset_error(tiny_model, heldout_dir, tmp_path):
    from ichrt.calibration.dataset import DatasetError
    from ichrt.calibration.quantize import quantize_model

    path, _ = tiny_model
    with pytest.raises(DatasetError, match="no files to calibrate with"):
        quantize_model(path, tmp_path, tmp_path / "q.onnx", holdout_dir=heldout_dir)
    with pytest.raises(DatasetError):  # no holdout: the data folder must be labelled
        quantize_model(path, tmp_path, tmp_path / "q.onnx")
