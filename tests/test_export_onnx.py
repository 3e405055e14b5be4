"""ONNX export: checker, I/O convention, contract, parity with torch, and contract refusal."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from export_helpers import write_imagefolder

from ichrt.export import train as training
from ichrt.export.datasets import DataSpec
from ichrt.runtime.cli import main
from ichrt.runtime.contract import LABELS, ContractError
from ichrt.runtime.session import load_model
from ichrt.runtime.synth import generate_study
from ichrt.runtime.torchtwin import TwinError, load_torch_twin
from ichrt.runtime.windowing import window_batch

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(onnx path, run dir): a few steps of resnet18 at 64 px, exported with the CLI."""
    root = tmp_path_factory.mktemp("export")
    write_imagefolder(root / "data", n=16, size=64)
    cfg = training.TrainConfig(arch="resnet18", image_size=64, batch_size=8, device="cpu",
                               max_steps=2, checkpoint_every=0, name="tiny-r18")
    training.train(cfg, [training.Stage([DataSpec(str(root / "data"), "imagefolder")], 1)],
                   root / "run", command="ichrt train (test)", progress=False)
    out = root / "model" / "model.onnx"
    res = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "CAM yes" in res.output
    return out, root / "run"


def _phantom_batch(contract, n: int = 4) -> np.ndarray:
    """Windowed phantom slices (positive study) at the model's input size."""
    hu = generate_study(seed=11, n_slices=n, size=128, positive=True).hu[:n]
    return window_batch(hu, contract)


def test_checker_opset_and_io_convention(exported):
    path, _ = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probs", "logits", "features"]
    model = load_model(path, provider="cpu")
    for n in (1, 5):  # dynamic batch axis
        out = model.run(np.zeros((n, 3, 64, 64), np.float32))
        assert out["probs"].shape == (n, 6) and out["features"].shape == (n, 512, 2, 2)


def test_contract_carries_preprocessing_and_provenance(exported):
    path, _ = exported
    c = load_model(path, provider="cpu").contract
    assert c.labels == LABELS and c.input_size == 64 and c.arch == "resnet18"
    assert c.windows == ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0)) and c.framing == "head"
    assert c.name == "tiny-r18" and c.thresholds == {"any": 0.5}
    assert np.asarray(c.cam_weights).shape == (6, 512) and len(c.cam_bias) == 6
    assert c.provenance["command"] == "ichrt train (test)"
    assert "data" in c.provenance and "git" in c.provenance
    assert {"torch", "onnx", "onnxruntime", "ichrt"} <= set(c.versions)
    assert set(c.metrics["validation"]["auc"]) == set(LABELS)
    labels = json.loads((path.parent / "labels.json").read_text())
    assert labels["labels"] == list(LABELS) and labels["model"] == "model.onnx"
    assert labels["class_mapping"]["data"] == {"hemorrhage": {"any": 1.0},
                                               "no_hemorrhage": {"any": 0.0}}


def test_parity_with_torch_on_phantom_inputs_and_cam_weights(exported):
    path, _ = exported
    loaded = load_model(path, provider="cpu")
    twin, contract = load_torch_twin(path.with_suffix(".pt"), path)
    batch = _phantom_batch(contract)
    got = loaded.run(batch)
    with torch.no_grad():
        logits, feats = twin.forward_all(torch.from_numpy(batch))
    assert np.max(np.abs(got["probs"] - torch.sigmoid(logits).numpy())) <= 1e-4
    assert np.max(np.abs(got["features"] - feats.numpy())) <= 1e-4
    # the runtime's CAM relies on: logits = W @ mean(features) + b
    w, b = np.asarray(contract.cam_weights), np.asarray(contract.cam_bias)
    pooled = got["features"].mean(axis=(2, 3))
    assert np.allclose(pooled @ w.T + b, got["logits"], atol=1e-4)


def test_torch_twin_is_tied_to_its_onnx_graph(exported, tmp_path):
    path, _ = exported
    proto = onnx.load(str(path))
    # metadata-only changes (what calibration writes) keep the twin valid
    proto.doc_string = "changed"
    proto.metadata_props.add(key="extra", value="1")
    relabelled = tmp_path / "relabelled.onnx"
    onnx.save(proto, str(relabelled))
    load_torch_twin(path.with_suffix(".pt"), relabelled)
    # other weights do not
    weight = proto.graph.initializer[0]
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    with pytest.raises(TwinError, match="SHA-256 differs"):
        load_torch_twin(path.with_suffix(".pt"), other)


def test_runtime_refuses_a_model_without_a_valid_contract(exported, tmp_path):
    path, _ = exported
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ContractError, match="bare.onnx"):
        load_model(bare, provider="cpu")
    entry = proto.metadata_props.add()
    entry.key, entry.value = "ichrt.contract", json.dumps({"labels": ["any"], "input_size": 3})
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    with pytest.raises(ContractError, match="broken.onnx"):
        load_model(broken, provider="cpu")


def test_export_best_checkpoint_and_missing_run(exported, tmp_path):
    _, run = exported
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / training.BEST).unlink()
    res = CliRunner().invoke(main, ["export", str(copy), "--out", str(tmp_path / "m.onnx"),
                                    "--which", "best"])
    assert res.exit_code == 1 and "best.pt: checkpoint not found" in res.output
