"""Calibration on whole studies: the study model fit and the study-level threshold that must hold
on every part (real studies and phantom studies) separately."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import make_tiny_model

from ichrt.calibration import studyfit
from ichrt.calibration.fit import calibrate_on_studies
from ichrt.runtime.session import load_model


def _studies(n: int, seed: int, spike_fp: bool = True):
    """Series of slice logits: positives have a run of 3 hot slices, negatives one hot slice."""
    rng = np.random.default_rng(seed)
    series, labels = [], []
    for k in range(n):
        z = rng.normal(-4.0, 1.0, 20)
        if k % 2:
            start = int(rng.integers(2, 15))
            z[start:start + 3] += rng.uniform(4.0, 7.0)
        elif spike_fp:
            z[int(rng.integers(20))] += rng.uniform(4.0, 8.0)
        series.append([z])
        labels.append(float(k % 2))
    return series, np.array(labels)


def test_fit_uses_neighbours_when_single_slices_mislead():
    series, y = _studies(80, 0)
    params = studyfit.fit(series, y)
    assert params["kind"] == "neighbour-max" and params["r"] > 0
    assert params["fit"]["auc"] > params["fit"]["auc_max"]
    assert (params["a"], params["b"]) == (1.0, 0.0)  # the slice probability scale is kept


def test_fit_needs_both_classes():
    series, _ = _studies(6, 1)
    with pytest.raises(ValueError, match="positive and negative"):
        studyfit.fit(series, np.ones(6))


def _part(source: str, n: int, seed: int, whole: bool, real: bool) -> studyfit.ValidationPart:
    series, y = _studies(n, seed)
    logits, labels, groups, order = [], [], [], []
    for g, (s, lab) in enumerate(zip(series, y)):
        z = s[0]
        for i, v in enumerate(z):
            row = np.full(6, -5.0, np.float32)
            row[0] = v
            logits.append(row)
            lab_row = np.full(6, np.nan, np.float32)
            lab_row[0] = float(lab and v > -1.0)  # slice labels: the hot slices of positives
            labels.append(lab_row)
            groups.append(f"{source}{g}")
            order.append(i)
    return studyfit.ValidationPart(source, np.array(logits), np.array(labels), groups,
                                   np.array(order), whole_studies=whole, real=real)


def test_calibrate_on_studies_writes_threshold_study_model_and_provenance(tmp_path):
    parent = tmp_path / "tiny.onnx"
    make_tiny_model(parent, lesion=True)
    parts = [_part("phantom", 40, 1, True, False), _part("ctich", 20, 2, True, True),
             _part("rsna200", 30, 3, False, True)]
    out = tmp_path / "cal.onnx"
    result = calibrate_on_studies(parent, parts, out, target_sensitivity=0.95, n_boot=50)
    c = load_model(out, provider="cpu").contract
    assert c.study_model is not None and c.study_model["kind"] == "neighbour-max"
    assert c.thresholds["any"] == pytest.approx(result.report["threshold_any"])
    # 10 real positive studies < 20: chosen on real and phantom studies pooled
    assert result.report["threshold_chosen_on"] == ["phantom", "ctich"]
    on = {p["source"]: p for p in c.provenance["details"]["calibrated_on"]}
    assert set(on) == {"phantom", "ctich", "rsna200"} and on["ctich"]["real"]
    by = {p["source"]: p for p in result.report["parts"]}
    pos = sum(by[s]["study"]["positives"] for s in ("phantom", "ctich"))
    hit = sum(by[s]["study"]["sensitivity"][0] * by[s]["study"]["positives"]
              for s in ("phantom", "ctich"))
    assert hit / pos >= 0.95  # the target holds on the pooled whole studies
    assert "study" not in by["rsna200"] and "slice" in by["rsna200"]
    assert c.provenance["parent"]  # the parent's hash: lineage kept
