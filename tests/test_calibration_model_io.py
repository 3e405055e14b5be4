"""A derived model is a new file with an updated contract and its parent's hash; the parent stays."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.calibration.model_io import (
    derive_contract,
    file_sha256,
    load_onnx,
    model_contract,
    write_model,
)
from ichrt.runtime.session import load_model


def test_metadata_round_trip_keeps_parent_untouched(tiny_model, tmp_path):
    parent_path, parent = tiny_model
    parent_sha = file_sha256(parent_path)
    parent_bytes = parent_path.read_bytes()
    contract = derive_contract(
        parent, parent_sha, "test step", details={"k": 1},
        temperatures={"any": 2.5}, thresholds={"any": 0.125, "subdural": 0.3},
        metrics={"calibration": {"ece": 0.01}},
    )
    out = tmp_path / "derived.onnx"
    out_sha = write_model(load_onnx(parent_path), contract, out, parent_path=parent_path)

    assert parent_path.read_bytes() == parent_bytes
    assert out_sha == file_sha256(out) != parent_sha
    loaded = load_model(out, provider="cpu")
    c = loaded.contract
    assert c.temperature("any") == 2.5 and c.threshold("any") == 0.125
    assert c.threshold("subdural") == 0.3
    assert c.provenance["parent"] == parent_sha
    assert c.provenance["step"] == "test step" and c.provenance["details"] == {"k": 1}
    assert c.provenance["parent_provenance"] == parent.provenance
    assert c.metrics == {"calibration": {"ece": 0.01}}
    assert c.cam_weights == parent.cam_weights and c.windows == parent.windows
    # the same weights: identical raw outputs
    x = np.random.default_rng(0).normal(0, 1, (2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.run(x)["logits"],
                                  load_model(parent_path, provider="cpu").run(x)["logits"])


def test_lineage_nests_and_other_metadata_survives(tiny_model, tmp_path):
    parent_path, parent = tiny_model
    model = load_onnx(parent_path)
    extra = model.metadata_props.add()
    extra.key, extra.value = "producer.note", "kept"
    first = derive_contract(parent, "a" * 64, "first")
    write_model(model, first, tmp_path / "one.onnx")
    second = derive_contract(model_contract(load_onnx(tmp_path / "one.onnx")), "b" * 64, "second")
    write_model(load_onnx(tmp_path / "one.onnx"), second, tmp_path / "two.onnx")
    reloaded = load_onnx(tmp_path / "two.onnx")
    props = {p.key: p.value for p in reloaded.metadata_props}
    assert props["producer.note"] == "kept"
    prov = model_contract(reloaded).provenance
    assert prov["parent"] == "b" * 64 and prov["parent_provenance"]["parent"] == "a" * 64


def test_refuses_to_overwrite_the_parent(tiny_model):
    parent_path, parent = tiny_model
    before = parent_path.read_bytes()
    with pytest.raises(ValueError, match="overwrite the parent"):
        write_model(load_onnx(parent_path), parent, parent_path, parent_path=parent_path)
    assert parent_path.read_bytes() == before


def test_unreadable_model_is_named(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.onnx"):
        load_onnx(bad)
