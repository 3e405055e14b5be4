"""CI's smoke training of the shipped recipe: a few steps on a few real and phantom images."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from export_helpers import write_phantoms

from ichrt.export import train as training
from ichrt.runtime.cli import main

pytestmark = pytest.mark.torch


def test_recipe_smoke_on_real_and_phantom_images(shared_dir, tmp_path):
    phantoms = tmp_path / "phantoms"
    write_phantoms(phantoms, studies=4, size=64)
    real = shared_dir / "realtrain"
    small = {"limit": 24, "size": 64}
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"stages": [
        {"name": "pretrain-phantoms", "epochs": 1,
         "data": [{"path": str(phantoms), "format": "rsna", "source": "phantom"}]},
        {"name": "real-and-phantoms", "epochs": 1, "data": [
            {"path": str(phantoms), "format": "rsna", "source": "phantom"},
            {"path": str(real / "ctich"), "format": "ctich", "source": "ctich",
             "options": small},
            {"path": str(real / "rsna200"), "format": "rsna200", "source": "rsna200",
             "options": small}]}]}))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, [
        "train", "--recipe", str(recipe), "--out", str(run), "--arch", "resnet10",
        "--image-size", "64", "--batch-size", "8", "--max-steps", "6", "--device", "cpu",
        "--augment-preset", "ichrt.export.realaug:MIXED", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["global_step"] == 6
    meta = json.loads((run / training.RUN_JSON).read_text())
    trained_on = meta["provenance"]["data"]["real-and-phantoms"]["train"]
    assert {"phantom", "ctich", "rsna200"} <= set(trained_on)
    assert trained_on["ctich"]["slices"] > 0 and trained_on["rsna200"]["slices"] > 0
