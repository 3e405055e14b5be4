"""``ichrt bench`` pieces on the tiny model (figures are checked for sense, never for speed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from score_helpers import StudySpec, write_study
from tinymodel import make_tiny_model

from ichrt.runtime.benchmark import (
    cli_run,
    end_to_end,
    explain_timings,
    format_report,
    latency_ms_per_slice,
    seed_baseline,
)
from ichrt.runtime.cli import main
from ichrt.runtime.session import load_model


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("bench")
    return write_study(root, StudySpec("6.1", (0.0, 0.6, 0.45, 0.0, 0.0, 0.0)), "s")


def test_latency_and_end_to_end_figures(tiny_model, study: list[Path]) -> None:
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    assert latency_ms_per_slice(model, 8) > 0
    e2e = end_to_end(model, study, batch_size=4)
    assert e2e["slices"] == 6 and e2e["batch_size"] == 4
    assert e2e["seconds"] > 0 and e2e["pure_model_seconds"] > 0
    assert e2e["ratio"] == pytest.approx(e2e["seconds"] / e2e["pure_model_seconds"])


def test_explain_timings_name_unavailable_methods(tiny_model, study: list[Path]) -> None:
    times = explain_timings(load_model(tiny_model[0], provider="cpu"), study)
    assert isinstance(times["cam"], float) and isinstance(times["hshap"], float)
    assert "checkpoint" in times["gradcam"]  # the tiny model has no torch twin


def test_seed_baseline_unavailable_without_checkpoint(tiny_model, study: list[Path]) -> None:
    base = seed_baseline(load_model(tiny_model[0], provider="cpu"), study)
    assert base == {"available": False, "reason": base["reason"]}
    assert "checkpoint" in base["reason"]


@pytest.mark.torch
def test_seed_baseline_runs_on_the_torch_twin(tmp_path: Path, study: list[Path]) -> None:
    from explain_helpers import export_twin

    path, _, _ = export_twin(tmp_path, "resnet18", size=32)
    base = seed_baseline(load_model(path, provider="cpu"), study[:2], rounds=1)
    assert base["available"] is True and base["seconds"] > 0 and base["ichrt_seconds"] > 0
    assert base["speedup_of_ichrt"] == pytest.approx(base["seconds"] / base["ichrt_seconds"])


def test_cli_run_reports_time_and_own_peak_rss(tiny_model, study: list[Path],
                                               tmp_path: Path) -> None:
    seconds, rss = cli_run(load_model(tiny_model[0]), study[0].parent, tmp_path / "o")
    assert seconds > 0 and 50 < rss < 2000
    assert (tmp_path / "o" / "worklist.csv").is_file()


def test_format_report_states_goals() -> None:
    report = {
        "model": {"name": "m", "sha256": "ab" * 32, "arch": "resnet18", "input_size": 224,
                  "providers": ["CPUExecutionProvider"]},
        "latency_ms_per_slice": {"1": 30.0, "8": 20.0, "32": 19.0},
        "end_to_end": {"slices": 40, "seconds": 1.0, "pure_model_seconds": 0.9, "ratio": 1.11},
        "seed_baseline": {"available": True, "seconds": 3.0, "ichrt_seconds": 1.0,
                          "speedup_of_ichrt": 3.0},
        "explain_s_per_slice": {"cam": 0.001, "gradcam": "unavailable: no torch"},
        "cold_start_s": 3.0, "warm_start_s": 1.5, "peak_rss_mb": 300.0,
    }
    text = format_report(report)
    for piece in ("batch 32 19.000", "ratio 1.11 (goal <= 1.15)", "3.0x faster (goal >= 2)",
                  "cam 0.001, gradcam unavailable", "warm 1.50 s (goal <= 2)",
                  "300 MB (goal <= 600)"):
        assert piece in text


def test_bench_refuses_a_model_without_contract(tmp_path: Path) -> None:
    bad = tmp_path / "bare.onnx"
    make_tiny_model(bad, with_contract=False)
    res = CliRunner().invoke(main, ["bench", "--model", str(bad)])
    assert res.exit_code == 1 and "contract" in res.stderr
