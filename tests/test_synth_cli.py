"""``ichrt synth`` command line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from ichrt.runtime.cli import main


def test_synth_writes_a_dataset_and_reports_json(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["synth", "--out", str(tmp_path), "--studies", "3", "--seed", "4", "--slices", "2-3",
            "--size", "32", "--prevalence", "0.34", "--json"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["studies"] == 3 and summary["positive_studies"] == 1
    assert 6 <= summary["slices"] <= 9
    assert len(list((tmp_path / "stage_2_train").glob("*.dcm"))) == summary["slices"]
    again = runner.invoke(main, args)
    assert again.exit_code == 2 and "already" in again.output
    assert runner.invoke(main, [*args, "--overwrite"]).exit_code == 0


def test_synth_rejects_bad_slice_ranges(tmp_path: Path) -> None:
    for bad in ("0", "5-2", "x"):
        result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--slices", bad])
        assert result.exit_code == 2 and "MIN" in result.output


def test_synth_shifted_preset_and_single_slice_count(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--studies", "1",
                                       "--slices", "2", "--size", "32", "--preset", "shifted"])
    assert result.exit_code == 0, result.output
    assert "1 studies" in result.output
    assert json.loads((tmp_path / "synth.json").read_text())["preset"] == "shifted"
