"""scripts/localization.py on the tiny model, a tiny phantom set and the four real slices."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "localization.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("localization", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    from ichrt.runtime.synth import write_dataset

    out = tmp_path_factory.mktemp("heldout")
    write_dataset(out, studies=2, seed=777, slices=6, size=64, prevalence=1.0)
    return out


def test_cases_read_masks_and_real_boxes(script, phantoms, shared_dir):
    from ichrt.runtime.rsna_layout import read_mask_npz

    cases = script.phantom_cases(phantoms, max_slices=None)
    assert cases and all(c.mask.any() and c.hu.shape == (64, 64) for c in cases)
    first = read_mask_npz(phantoms / "masks" / f"{cases[0].name}.npz").any(axis=0)
    assert np.array_equal(cases[0].mask, first)
    assert len(script.phantom_cases(phantoms, max_slices=2)) == 2
    real = script.realct_cases(shared_dir / "realct")
    assert len(real) == 4 and sum(len(c.boxes) for c in real) == 5
    assert all(c.hu.min() >= -1024 and c.mask.any() for c in real)  # padding became air
    # the gt.csv box x=302.66, y=202.04, 55.99 square lands on rows 202..258, cols 302..358
    box_case = next(c for c in real if c.name.endswith("1700822"))
    assert box_case.mask[230, 330] and not box_case.mask[230, 200]


def test_localization_table_on_the_tiny_model(script, phantoms, shared_dir, tiny_model,
                                              tmp_path, capsys):
    out = tmp_path / "loc.json"
    code = script.main(["--model", str(tiny_model[0]), "--phantoms", str(phantoms),
                        "--realct", str(shared_dir / "realct"), "--threads", "1",
                        "--overlays", str(tmp_path / "overlays"), "--json", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    assert set(document["sets"]) == {"phantom", "realct"}
    for name, result in document["sets"].items():
        methods = result["methods"]
        assert "error" in methods["gradcam"]  # the tiny model has no torch twin
        for method in ("cam", "hshap", "centre"):
            r = methods[method]
            assert r["n"] == result["slices"] > 0
            assert all(0.0 <= r[k] <= 1.0 for k in ("pointing", "energy", "iou"))
            assert r["ms"] >= 0
        pngs = list((tmp_path / "overlays" / name / "cam").glob("*.png"))
        assert len(pngs) == result["slices"]
    table = capsys.readouterr().out
    assert "| realct | hshap | 4 |" in table and "| phantom | gradcam | - | unavailable" in table
