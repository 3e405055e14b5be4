"""``ichrt explain``: flagged slices only by default, exit codes, and a torch-free runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from score_helpers import head_slice, write_ct

from ichrt.runtime.cli import main

BLOBS = (0.0, 0.04, 0.12, 0.2, 0.0, 0.25)
#: p(any) of the tiny model: about 0.12 without a blob, 0.15 at 0.12, 0.21 at 0.2, 0.25 at 0.25.
THRESHOLD = 0.18


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    """One study of six slices, some with a bright blob the tiny model flags."""
    folder = tmp_path_factory.mktemp("dicom")
    for i, blob in enumerate(BLOBS, start=1):
        write_ct(folder / f"{i:03d}.dcm", head_slice(64, blob), "1.2.3", "1.2.3.4",
                 f"1.2.3.4.{i}", i)
    return folder


def _expected(series: Path, model: Path) -> dict[str, float]:
    """SOP UID -> p(any) from the scoring API (an independent path to the same numbers)."""
    from ichrt.runtime.scorer import score

    result = score([series], model, provider="cpu", threads=1, explain="none")
    return {s.identity.sop_uid: float(s.probs[0]) for s in result.slices}


def _run(*args: str):
    return CliRunner().invoke(main, ["explain", *args], catch_exceptions=False)


def test_only_flagged_slices_are_explained(series, tiny_model, tmp_path):
    path, _ = tiny_model
    probs = _expected(series, path)
    flagged = {uid for uid, p in probs.items() if p >= THRESHOLD}
    assert 0 < len(flagged) < len(probs)
    out = tmp_path / "out"
    result = _run(str(series), "--model", str(path), "--out", str(out), "--method", "cam",
                  "--threads", "1", "--threshold", str(THRESHOLD))
    assert result.exit_code == 0, result.output
    document = json.loads((out / "explanations.json").read_text())
    explained = {s["sop_instance_uid"]: s for s in document["explained"]}
    assert set(explained) == flagged
    assert len(list(out.glob("*.png"))) == len(flagged) == len(list(out.glob("*.npy")))
    for uid, s in explained.items():
        assert s["probability"] == pytest.approx(probs[uid], abs=1e-5)
        assert (out / s["files"]["png"]).is_file() and s["seconds"] >= 0
    assert f"{len(flagged)} slices explained of {len(probs)}" in result.output


def test_all_slices_and_json(series, tiny_model, tmp_path):
    path, _ = tiny_model
    result = _run(str(series), "--model", str(path), "--out", str(tmp_path), "--method",
                  "hshap", "--all-slices", "--json", "--min-size", "4", "--threads", "1")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    assert len(document["explained"]) == len(BLOBS) and document["threshold"] is None
    assert {s["method"] for s in document["explained"]} == {"hshap"}
    assert len(list(tmp_path.glob("*.png"))) == len(BLOBS)


def test_rejected_inputs_give_exit_3(series, tiny_model, tmp_path):
    path, _ = tiny_model
    junk = tmp_path / "in"
    junk.mkdir()
    (junk / "notes.txt").write_text("not a DICOM file")
    result = _run(str(series), str(junk), "--model", str(path), "--out", str(tmp_path / "o"),
                  "--json")
    assert result.exit_code == 3
    rejected = json.loads(result.stdout)["rejected"]
    assert [Path(r["path"]).name for r in rejected] == ["notes.txt"] and rejected[0]["reason"]


def test_unavailable_methods_are_usage_errors(series, tiny_model, tmp_path, monkeypatch):
    import onnx

    path, contract = tiny_model
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    result = _run(str(series), "--model", str(path), "--out", str(tmp_path), "--method",
                  "gradcam")
    assert result.exit_code == 2 and "'explain' extra" in result.output
    headless = tmp_path / "headless.onnx"
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        entry.value = contract.with_updates(cam_weights=None, cam_bias=None).to_json()
    onnx.save(proto, str(headless))
    result = _run(str(series), "--model", str(headless), "--out", str(tmp_path), "--method",
                  "cam")
    assert result.exit_code == 2 and "cam_weights" in result.output
    result = _run(str(series), "--model", str(path), "--out", str(tmp_path), "--label", "x")
    assert result.exit_code == 2


def test_explaining_with_cam_and_hshap_never_imports_torch(tiny_model, tmp_path):
    code = f"""
import sys
import numpy as np
from ichrt.runtime.explain import cam_maps, explain_slices, make_explainer, write_explanation
from ichrt.runtime.session import load_model
model = load_model({str(tiny_model[0])!r}, provider="cpu", threads=1)
x = np.random.default_rng(0).normal(size=(1, 3, 32, 32)).astype(np.float32)
cam_maps(model.run(x)["features"], model.contract)
for method in ("cam", "hshap"):
    found = explain_slices(make_explainer(method, model), x, np.array([[0, 0, 64, 64]]), [(64, 64)])
    write_explanation({str(tmp_path)!r}, method, np.zeros((64, 64)), found[0].heatmap, method)
heavy = [m for m in ("torch", "pytorch_grad_cam", "cv2", "PIL") if m in sys.modules]
print(heavy)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stderr
    assert len(list(tmp_path.glob("*.png"))) == 2
    assert np.load(next(tmp_path.glob("*.npy"))).shape == (64, 64)
