"""Short training runs: the loss goes down, runs resume exactly, the CLI works without surprises."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from export_helpers import write_imagefolder, write_phantoms

from ichrt.export import train as training
from ichrt.export.datasets import DataSpec
from ichrt.export.torchdata import SliceDataset
from ichrt.runtime.cli import main

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def seed_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("seed")
    write_imagefolder(root, n=30, size=64)
    return root


def _config(**changes) -> training.TrainConfig:
    base = {"arch": "resnet18", "image_size": 64, "batch_size": 8, "lr": 2e-3, "workers": 0,
            "device": "cpu", "checkpoint_every": 0, "val_fraction": 0.2, "seed": 5}
    return training.TrainConfig(**{**base, **changes})


def _stages(folder, epochs: int = 2) -> list[training.Stage]:
    return [training.Stage(data=[DataSpec(path=str(folder), format="imagefolder")],
                           epochs=epochs)]


def _fixed_batch_loss(trainer: training.Trainer, batch: dict) -> float:
    trainer.model.train()
    with torch.no_grad():
        logits = trainer.model(batch["image"])
    return float(training.masked_bce(logits, batch["labels"]))


def test_training_lowers_the_loss(seed_folder, tmp_path):
    training.seed_everything(5, torch.device("cpu"))
    trainer = training.Trainer(_config(augment="none"), _stages(seed_folder, epochs=4),
                               tmp_path / "run", progress=False)
    train_store, _ = trainer.stage_data(trainer.stages[0])
    items = [SliceDataset(train_store, trainer.contract)[i] for i in range(16)]
    batch = {k: torch.stack([it[k] for it in items]) for k in ("image", "labels")}
    before = _fixed_batch_loss(trainer, batch)
    last = trainer.run()
    after = _fixed_batch_loss(trainer, batch)
    assert after < 0.7 * before, (before, after)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert len(history) == 4 and history[-1] == json.loads(json.dumps(last))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(history[-1]["auc"]) == set(training.LABELS)  # multi-label head
    assert history[-1]["auc"]["epidural"] is None  # no known subtype label: no AUC, not 0
    assert {"sensitivity", "specificity", "per_source", "val_loss"} <= set(history[-1])


def _weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / training.CHECKPOINT, weights_only=True)["model"]


def test_resume_continues_exactly_and_runs_are_deterministic(seed_folder, tmp_path):
    cfg = _config(head="any")
    training.train(cfg, _stages(seed_folder), tmp_path / "straight", progress=False)
    training.train(_config(head="any", max_steps=5), _stages(seed_folder), tmp_path / "cut",
                   progress=False)
    cut = torch.load(tmp_path / "cut" / training.CHECKPOINT, weights_only=True)
    assert cut["position"]["global_step"] == 5 and cut["position"]["step"] > 0  # mid-epoch
    training.resume_run(tmp_path / "cut", progress=False, max_steps=None)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    run = json.loads((tmp_path / "cut" / training.RUN_JSON).read_text())
    assert run["config"]["head"] == "any"
    assert run["provenance"]["data"]["stage1"]["train"][seed_folder.name]["slices"] > 0


def test_resume_refuses_other_settings(seed_folder, tmp_path):
    training.train(_config(max_steps=1), _stages(seed_folder), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="image_size"):
        training.train(_config(image_size=96), _stages(seed_folder), tmp_path / "r",
                       resume=True, progress=False)
    with pytest.raises(ValueError, match="cannot change"):
        training.resume_run(tmp_path / "r", lr=1.0)


def test_phantom_training_with_workers_and_localization_is_worker_independent(tmp_path):
    write_phantoms(tmp_path / "phantoms", studies=4, size=64, slices=(5, 5))
    stages = [training.Stage([DataSpec(str(tmp_path / "phantoms"))], epochs=1)]
    for workers in (0, 1):
        training.train(_config(max_steps=2, loc_weight=1.0, workers=workers), stages,
                       tmp_path / f"w{workers}", progress=False)
    a, b = _weights(tmp_path / "w0"), _weights(tmp_path / "w1")
    assert all(torch.equal(a[k], b[k]) for k in a)  # augmentation draws do not depend on workers
    state = torch.load(tmp_path / "w1" / training.CHECKPOINT, weights_only=True)
    assert state["history"][-1]["per_source"]["phantoms"]["n"] > 0


def test_two_stage_recipe_is_one_call(seed_folder, tmp_path):
    recipe = tmp_path / "recipe.json"
    spec = {"path": str(seed_folder), "format": "imagefolder"}
    recipe.write_text(json.dumps({"stages": [
        {"name": "pretrain", "epochs": 1, "data": [spec]},
        {"name": "mixed", "epochs": 1, "lr": 5e-4,
         "data": [spec, {**spec, "source": "again"}]}]}))
    stages = training.load_recipe(recipe)
    last = training.train(_config(max_steps=None), stages, tmp_path / "run", progress=False)
    assert last["stage"] == 1 and last["stage_name"] == "mixed"
    assert set(last["per_source"]) == {seed_folder.name, "again"}


def test_cli_train_smoke_and_resume(seed_folder, tmp_path):
    runner = CliRunner()
    run = tmp_path / "cli"
    args = ["train", "--data", f"imagefolder:{seed_folder}", "--out", str(run), "--epochs", "1",
            "--image-size", "64", "--batch-size", "8", "--max-steps", "2", "--device", "cpu",
            "--quiet", "--json"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["global_step"] == 2
    res = runner.invoke(main, ["train", "--out", str(run), "--resume", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "trained" in res.output
    meta = json.loads((run / training.RUN_JSON).read_text())
    assert meta["provenance"]["command"].startswith("ichrt ")


@pytest.mark.parametrize("args,message", [
    (["train", "--out", "x"], "either --data or --recipe"),
    (["train", "--data", "/nonexistent", "--out", "x"], "not found"),
    (["train", "--data", "/tmp", "--out", "x", "--windows", "40"], "LEVEL/WIDTH"),
])
def test_cli_usage_errors(args, message, tmp_path):
    res = CliRunner().invoke(main, [a.replace("x", str(tmp_path / "x")) if a == "x" else a
                                    for a in args])
    assert res.exit_code == 2 and message in res.output


def test_commands_do_not_import_torch_and_name_the_extra_when_missing(tmp_path):
    code = (
        "import sys\n"
        "import ichrt.export.commands\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "sys.modules['torch'] = None\n"
        "from click.testing import CliRunner\n"
        "from ichrt.runtime.cli import main\n"
        f"r = CliRunner().invoke(main, ['train', '--data', {str(tmp_path)!r}, '--out', 'o'])\n"
        "print(r.exit_code, r.output)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("2 ") and "'export' extra" in out
