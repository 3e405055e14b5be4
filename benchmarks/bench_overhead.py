"""Overhead: ``ichrt score`` from process start to worklist against the pure model time.

Issue 15's measure: 60 phantom studies of 512 x 512 slices (``ichrt synth`` seed 3, about 1900
slices), ``ichrt score --explain none`` in a fresh process, from its start to the written
worklist, against ONNX Runtime alone on the same number of ready tensors (batch 16, the outputs
scoring fetches, one batch at a time on a default session), for the shipped FP32 model and its
INT8 twin; also against the pure model in scoring's own layout (on a CPU one single-threaded
run per core at once, :func:`ichrt.runtime.session.run_layout`). All jobs run in alternation
(:func:`ichrt.runtime.benchmark.interleaved`) so that load drifting on a shared machine does not
skew the ratios. Goals (against the default session): FP32 <= 1.25x, INT8 <= 1.6x.

``ICHRT_BENCH_STUDIES`` may name a folder of studies to use instead of generating them.
With ``--benchmark-disable`` (this project's default, as in the test suite) it scores 2 small
studies once, checking only that every slice is scored and the figures make sense.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ichrt.runtime.benchmark import score_overhead
from ichrt.runtime.session import DEFAULT_FP32_MODEL, DEFAULT_MODEL
from ichrt.runtime.synth import write_dataset

STUDIES, SEED, ROUNDS = 60, 3, 3
GOALS = {"fp32": 1.25, "int8": 1.6}


@pytest.fixture(scope="module")
def quick(request: pytest.FixtureRequest) -> bool:
    config = request.config
    return bool(config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))


@pytest.fixture(scope="module")
def studies(quick: bool, tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("ICHRT_BENCH_STUDIES")
    if given and not quick:
        return Path(given)
    out = tmp_path_factory.mktemp("overhead")
    if quick:
        write_dataset(out, studies=2, seed=SEED, slices=(6, 6), size=128)
    else:
        write_dataset(out, studies=STUDIES, seed=SEED, size=512)
    return out / "stage_2_train"


def test_score_overhead_against_pure_model(benchmark, quick: bool, studies: Path) -> None:
    models = {"fp32": DEFAULT_FP32_MODEL, "int8": DEFAULT_MODEL}
    figures = benchmark.pedantic(score_overhead, args=(studies, models),
                                 kwargs={"rounds": 1 if quick else ROUNDS}, rounds=1,
                                 iterations=1)
    n = len(list(studies.glob("*.dcm")))
    for name, row in figures.items():
        assert row["slices"] == n
        assert row["score_seconds"] > 0 and row["pure_model_seconds"] > 0
        assert row["pure_streams_seconds"] > 0
        benchmark.extra_info[name] = {**row, "goal": GOALS[name]}
    if not quick:
        print("\nscore from process start to worklist / pure model time, "
              f"{n} slices of {STUDIES} studies:")
        for name, row in figures.items():
            print(f"  {name}: {row['score_seconds']:.2f} s / {row['pure_model_seconds']:.2f} s"
                  f" = {row['ratio']:.2f}x (goal <= {GOALS[name]}); against the pure model in "
                  f"scoring's layout ({row['pure_streams_seconds']:.2f} s) "
                  f"{row['ratio_to_streams']:.2f}x")
