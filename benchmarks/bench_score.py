"""Scoring benchmarks: model latency per batch size and end to end against pure model time.

Run with ``pytest benchmarks/bench_score.py --benchmark-enable``.  Uses the shipped default model
when it is installed, else the tiny test model (figures then say little about real speed; the
model used is recorded in each benchmark's ``extra_info``).  Nothing here asserts a wall-clock
time: the end-to-end benchmark records its ratio to the pure model time of the same slices,
measured in the same process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ichrt.runtime.benchmark import (
    STUDY_SLICES,
    end_to_end,
    random_batch,
    worklist_job,
    write_phantom_study,
)
from ichrt.runtime.session import LoadedModel, ModelError, default_model_path, load_model

#: The tests' helpers (the tiny model), also when this file runs on its own.
TESTS = Path(__file__).resolve().parents[1] / "tests"


@pytest.fixture(scope="module")
def bench_model(tmp_path_factory) -> LoadedModel:
    try:
        return load_model(default_model_path())
    except ModelError:
        if str(TESTS) not in sys.path:
            sys.path.insert(0, str(TESTS))
        from tinymodel import make_tiny_model

        path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
        make_tiny_model(path)
        return load_model(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> list[Path]:
    return write_phantom_study(tmp_path_factory.mktemp("study"), STUDY_SLICES)


@pytest.mark.parametrize("batch", [1, 8, 32])
def test_model_latency(benchmark, bench_model: LoadedModel, batch: int) -> None:
    x = random_batch(bench_model, batch)
    out = benchmark(bench_model.run, x, ("logits",))
    assert out["logits"].shape == (batch, len(bench_model.contract.labels))
    benchmark.extra_info.update(model=bench_model.display_name, batch=batch)


def test_end_to_end_vs_pure_model(benchmark, bench_model: LoadedModel, study: list[Path],
                                  tmp_path: Path) -> None:
    doc = benchmark(worklist_job(bench_model, study, tmp_path))
    assert doc["counts"]["scored_slices"] == STUDY_SLICES and doc["counts"]["studies"] == 1
    figures = end_to_end(bench_model, study)
    benchmark.extra_info.update(model=bench_model.display_name, **figures)
