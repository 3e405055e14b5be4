"""Loading models: contract refusal, I/O convention, providers, session settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from tinymodel import make_tiny_model

from ichrt.runtime import session as session_mod
from ichrt.runtime.contract import METADATA_KEY, ContractError, ModelContract
from ichrt.runtime.session import (
    ModelError,
    ProviderUnavailable,
    default_model_for,
    default_model_path,
    load_model,
    physical_cores,
    resolve_providers,
    session_options,
)


def test_load_tiny_model_reports_identity_and_runs(tiny_model) -> None:
    path, contract = tiny_model
    model = load_model(path, provider="cpu", threads=1)
    assert model.contract == contract
    assert model.sha256 == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    assert model.display_name == f"tiny-test-model (sha256:{model.sha256[:12]})"
    assert model.providers == ["CPUExecutionProvider"]
    x = np.zeros((3, contract.channels, 32, 32), np.float32)
    out = model.run(x)
    assert out["probs"].shape == (3, 6) and out["features"].shape[0] == 3
    np.testing.assert_allclose(out["probs"], 1 / (1 + np.exp(-out["logits"])), rtol=1e-5)
    assert list(model.run(x, ("logits",))) == ["logits"]


def test_model_without_contract_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nocontract.onnx"
    make_tiny_model(path, with_contract=False)
    with pytest.raises(ContractError, match=r"nocontract\.onnx.*no ichrt preprocessing contract"):
        load_model(path, provider="cpu")


def test_model_with_invalid_contract_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    make_tiny_model(path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = prop.value.replace('"framing": "head"', '"framing": "sideways"')
    onnx.save(model, str(path))
    with pytest.raises(ContractError, match=r"bad\.onnx.*framing"):
        load_model(path, provider="cpu")


def test_model_breaking_io_convention_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "renamed.onnx"
    make_tiny_model(path)
    model = onnx.load(str(path))
    model.graph.node[-1].output[0] = "scores"
    model.graph.output[0].name = "scores"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match=r"renamed\.onnx.*missing outputs \['probs'\]"):
        load_model(path, provider="cpu")


def test_model_whose_input_size_contradicts_contract_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "mismatch.onnx"
    make_tiny_model(path)
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 48  # contract says 32
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="does not match the contract"):
        load_model(path, provider="cpu")


def test_not_an_onnx_file_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(ModelError, match=r"junk\.onnx: not a usable ONNX model"):
        load_model(junk, provider="cpu")
    with pytest.raises(ModelError, match=r"absent\.onnx: cannot read"):
        load_model(tmp_path / "absent.onnx", provider="cpu")


def test_default_model_path_missing_is_a_clear_error(monkeypatch, tmp_path: Path) -> None:
    int8, fp32 = tmp_path / "models" / "default-int8.onnx", tmp_path / "models" / "default.onnx"
    monkeypatch.setattr(session_mod, "DEFAULT_MODEL", int8)
    monkeypatch.setattr(session_mod, "DEFAULT_FP32_MODEL", fp32)
    with pytest.raises(ModelError, match="default model is missing.*default-int8"):
        default_model_path()
    with pytest.raises(ModelError, match=r"default model is missing.*default\.onnx"):
        default_model_path(fp32=True)
    (tmp_path / "models").mkdir()
    contract = make_tiny_model(int8)
    fp32_contract = make_tiny_model(fp32, seed=1)
    assert default_model_path() == int8
    assert default_model_path(fp32=True) == fp32
    assert load_model(provider="cpu").contract == contract
    assert load_model(default_model_path(fp32=True), provider="cpu").contract == fp32_contract


def test_the_int8_twin_scores_by_default_and_gradients_get_fp32(monkeypatch, tmp_path) -> None:
    from ichrt.runtime.scorer import Scorer

    int8, fp32 = tmp_path / "default-int8.onnx", tmp_path / "default.onnx"
    make_tiny_model(int8)
    make_tiny_model(fp32, seed=1)
    monkeypatch.setattr(session_mod, "DEFAULT_MODEL", int8)
    monkeypatch.setattr(session_mod, "DEFAULT_FP32_MODEL", fp32)
    for method in (None, "auto", "lesion", "cam", "hshap", "none"):
        assert default_model_for(method) == int8
    for method in ("gradcam", "gradcampp"):
        assert default_model_for(method) == fp32
    assert Scorer(explain="none", provider="cpu", threads=1).model.path == int8
    assert Scorer(fp32, explain="none", provider="cpu", threads=1).model.path == fp32


def test_shipped_scoring_default_is_the_int8_twin_of_the_fp32_model() -> None:
    """default-int8.onnx scores (docs/eval/int8-gate.json); default.onnx + default.pt stay for
    Grad-CAM; the INT8 contract names the FP32 file as its quantization parent."""
    assert session_mod.DEFAULT_MODEL.name == "default-int8.onnx"
    assert session_mod.DEFAULT_FP32_MODEL.name == "default.onnx"
    if not (session_mod.DEFAULT_MODEL.is_file() and session_mod.DEFAULT_FP32_MODEL.is_file()):
        pytest.skip("shipped models not installed")
    assert session_mod.DEFAULT_FP32_MODEL.with_suffix(".pt").is_file()
    int8 = load_model(provider="cpu", threads=1)
    fp32_sha = hashlib.sha256(session_mod.DEFAULT_FP32_MODEL.read_bytes()).hexdigest()
    assert int8.path == session_mod.DEFAULT_MODEL
    # default.onnx -> quantize -> calibrate threshold (INT8's own operating point)
    provenance = int8.contract.provenance
    assert provenance["step"].startswith("ichrt calibrate threshold")
    assert provenance["parent_provenance"]["parent"] == fp32_sha


def test_provider_resolution() -> None:
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ProviderUnavailable, match="unknown provider"):
        resolve_providers("quantum")


def test_missing_gpu_provider_names_the_extra(monkeypatch) -> None:
    monkeypatch.setattr(session_mod.ort, "get_available_providers",
                        lambda: ["CPUExecutionProvider"])
    assert resolve_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailable, match="'gpu' extra"):
        resolve_providers("cuda")
    monkeypatch.setattr(session_mod.ort, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert resolve_providers("auto") == [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_session_options_for_a_shared_edge_box() -> None:
    opts = session_options()
    assert opts.intra_op_num_threads == physical_cores() >= 1
    assert opts.inter_op_num_threads == 1
    assert opts.graph_optimization_level.name == "ORT_ENABLE_ALL"
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(threads=3, spinning=True).get_session_config_entry(
        "session.intra_op.allow_spinning") == "1"
    assert session_options(threads=3).intra_op_num_threads == 3


def test_contract_temperature_and_thresholds_survive_loading(tmp_path: Path) -> None:
    path = tmp_path / "cal.onnx"
    want = ModelContract(input_size=32, name="cal", thresholds={"any": 0.3},
                         temperatures={"any": 2.0})
    make_tiny_model(path, contract=want)
    model = load_model(path, provider="cpu")
    assert model.contract.threshold("any") == 0.3 and model.contract.temperature("any") == 2.0


def test_io_binding_path_gives_the_same_outputs(tiny_model, monkeypatch) -> None:
    # The GPU path (IO binding) also runs on a CPU session, so it can be checked here.
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    x = np.random.default_rng(1).normal(0, 1, (4, 3, 32, 32)).astype(np.float32)
    plain = model.run(x)
    monkeypatch.setattr(session_mod.LoadedModel, "on_gpu", property(lambda self: True))
    bound = model.run(x, ("logits", "features"))
    assert list(bound) == ["logits", "features"]
    np.testing.assert_array_equal(bound["logits"], plain["logits"])
    np.testing.assert_array_equal(bound["features"], plain["features"])
