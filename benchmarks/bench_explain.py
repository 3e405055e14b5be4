"""Explanation benchmarks: time per slice of cam, gradcam, gradcampp and hshap.

Run with ``pytest benchmarks/bench_explain.py --benchmark-enable``.  The model is a randomly
initialized ResNet-18 at 128 px exported through ``ichrt export`` with its torch twin (Grad-CAM
needs one; the shipped model's figures scale with its input size), the input two phantom slices
with bleeds.  Each benchmark records, in ``extra_info``, its time per slice and its ratio to the
pure ONNX Runtime inference time of the same slices measured in the same process; nothing
asserts a wall-clock time.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ichrt.runtime.explain.base import METHODS
from ichrt.runtime.explain.batch import explain_slices, make_explainer
from ichrt.runtime.session import LoadedModel, load_model

pytestmark = pytest.mark.torch
SLICES = 2
#: The tests' helpers (the exported twin), also when this file runs on its own.
TESTS = Path(__file__).resolve().parents[1] / "tests"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[LoadedModel, np.ndarray, np.ndarray]:
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from explain_helpers import export_twin

    from ichrt.runtime.batches import window_hu
    from ichrt.runtime.synth import generate_study

    path, _, contract = export_twin(tmp_path_factory.mktemp("bench"), "resnet18", size=128)
    study = generate_study(seed=4242, n_slices=24, size=256, positive=True)
    hot = np.flatnonzero(study.labels[:, 0])[:SLICES]
    hu = study.hu[hot]
    return load_model(path), *window_hu(hu, contract)


def _model_seconds(model: LoadedModel, tensors: np.ndarray, repeat: int = 5) -> float:
    """Best-of-``repeat`` pure inference time per slice (the baseline of the ratios)."""
    model.run(tensors)
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        model.run(tensors)
        best = min(best, time.perf_counter() - start)
    return best / len(tensors)


def test_lesion_map_time_per_slice(benchmark) -> None:
    """The shipped lesion-level model's own map: the default explanation, against its inference."""
    from ichrt.runtime.batches import window_hu
    from ichrt.runtime.synth import generate_study

    model = load_model(None)
    study = generate_study(seed=4242, n_slices=24, size=256, positive=True)
    hu = study.hu[np.flatnonzero(study.labels[:, 0])[:SLICES]]
    tensors, boxes = window_hu(hu, model.contract)
    explainer = make_explainer("lesion", model)
    found = benchmark(explain_slices, explainer, tensors, boxes, [(256, 256)] * len(tensors))
    assert all(f.heatmap.shape == (256, 256) and f.method == "lesion" for f in found)
    base = _model_seconds(model, tensors)
    per_slice = benchmark.stats.stats.mean / len(tensors) if benchmark.stats else None
    benchmark.extra_info.update(method="lesion", model_ms_per_slice=1000 * base,
                                ratio_to_inference=None if per_slice is None else per_slice / base)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "lesion"])  # lesion: above
def test_explain_time_per_slice(benchmark, setup, method: str) -> None:
    model, tensors, boxes = setup
    explainer = make_explainer(method, model)
    shapes = [(256, 256)] * len(tensors)
    found = benchmark(explain_slices, explainer, tensors, boxes, shapes)
    assert len(found) == len(tensors) and all(f.heatmap.shape == (256, 256) for f in found)
    assert all(f.heatmap.max() > 0 for f in found)
    per_slice = benchmark.stats.stats.mean / len(tensors) if benchmark.stats else None
    base = _model_seconds(model, tensors)
    benchmark.extra_info.update(
        method=method, slices=len(tensors), input_size=model.contract.input_size,
        model_ms_per_slice=1000 * base,
        ms_per_slice=None if per_slice is None else 1000 * per_slice,
        ratio_to_inference=None if per_slice is None else per_slice / base,
    )
