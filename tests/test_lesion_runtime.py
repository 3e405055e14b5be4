"""Lesion-level models in the lean runtime: map output, default explanation, areas, volumes,
and the study model over neighbouring slices (no torch)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from score_helpers import StudySpec, write_study
from tinymodel import make_tiny_model

from ichrt.runtime.aggregate import SliceScore, aggregate_studies
from ichrt.runtime.contract import LABELS, ContractError, ModelContract
from ichrt.runtime.lesion import lesion_area_mm2, lesion_probabilities, study_volume_ml
from ichrt.runtime.scorer import Scorer, write_result
from ichrt.runtime.session import ModelError, load_model
from ichrt.runtime.slices import SliceIdentity
from ichrt.runtime.studymodel import neighbour_scores, study_any, to_logits


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("lesion") / "tiny-lesion.onnx"
    return path, make_tiny_model(path, lesion=True)


def _ident(k: int, series: str = "s1", study: str = "st", spacing=(0.5, 0.5), z=None):
    return SliceIdentity(path=f"/x/{series}-{k}", study_uid=study, series_uid=series,
                         sop_uid=f"{series}.{k}", instance_number=k,
                         position=(0.0, 0.0, 5.0 * k if z is None else z),
                         orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=spacing,
                         slice_thickness=5.0)


def test_lesion_probabilities_are_a_stable_sigmoid():
    p = lesion_probabilities(np.array([[[[-1000.0, 0.0, 1000.0]]]]))
    assert p.shape == (1, 1, 3)
    assert p[0, 0].tolist() == [0.0, 0.5, 1.0]


def test_area_counts_cells_times_their_source_area():
    probs = np.zeros((8, 8), np.float32)
    probs[2:4, 2:5] = 0.9  # 6 cells
    probs[6, 6] = 0.7      # below the cell threshold (0.8): not bleeding
    # box of 64 px side on an 8x8 map: each cell is 8x8 px of 0.5x0.5 mm = 16 mm^2
    assert lesion_area_mm2(probs, (0, 0, 64, 64), (0.5, 0.5)) == pytest.approx(96.0)
    assert lesion_area_mm2(probs, (0, 0, 64, 64), None) is None
    assert lesion_area_mm2(probs, (0, 0, 64, 64), (0.0, 0.5)) is None


def test_study_volume_uses_the_slice_spacing_and_keeps_series_apart():
    idents = [_ident(k) for k in range(4)]  # positions 5 mm apart
    assert study_volume_ml([100.0, 200.0, 0.0, 0.0], idents) == pytest.approx(1.5)
    # a second reconstruction of the same scan is measured alone, not added
    other = [_ident(k, series="s2") for k in range(4)]
    vol = study_volume_ml([100.0, 200.0, 0.0, 0.0, 50.0, 50.0, 0.0, 0.0], idents + other)
    assert vol == pytest.approx(1.5)
    assert study_volume_ml([None, 1.0, 0.0, 0.0], idents) is None


def test_neighbour_scores_and_max_equivalence():
    z = np.array([-5.0, 4.0, -5.0, -5.0])
    assert neighbour_scores(z, 0.0).tolist() == z.tolist()
    s = neighbour_scores(z, 0.5)
    assert s[1] == pytest.approx(0.5 * 4.0 + 0.5 * -5.0)
    assert s[0] == pytest.approx(0.5 * -5.0 + 0.5 * 0.5 * (-5.0 + 4.0))  # itself past the end
    idents = [_ident(k) for k in range(4)]
    p = 1 / (1 + np.exp(-z))
    assert study_any(p, idents, None) == (pytest.approx(p.max()), 1)


def test_study_model_prefers_runs_of_slices_over_a_single_spike():
    params = {"kind": "neighbour-max", "r": 0.6, "a": 1.0, "b": 0.0}
    idents = [_ident(k) for k in range(6)]
    spike = 1 / (1 + np.exp(-np.array([-6, -6, 3.0, -6, -6, -6])))
    run = 1 / (1 + np.exp(-np.array([-6, 2.0, 2.5, 2.0, -6, -6])))
    assert study_any(spike, idents, None)[0] > study_any(run, idents, None)[0]  # max: spike wins
    p_spike, _ = study_any(spike, idents, params)
    p_run, key = study_any(run, idents, params)
    assert p_run > 0.5 > p_spike
    assert key == 2
    # scan order, not input order, defines the neighbours
    shuffled = [3, 0, 5, 1, 4, 2]
    p_shuf, key_shuf = study_any(run[shuffled], [idents[k] for k in shuffled], params)
    assert p_shuf == pytest.approx(p_run) and shuffled[key_shuf] == 2


def test_contract_validates_the_lesion_stride():
    with pytest.raises(ContractError):
        ModelContract(input_size=32, lesion_stride=0)
    c = ModelContract(input_size=32, lesion_stride=4, study_model={"kind": "neighbour-max",
                                                                   "r": 0.5, "a": 2, "b": -1})
    assert ModelContract.from_json(c.to_json()) == c if hasattr(ModelContract, "from_json") \
        else ModelContract.from_dict(json.loads(c.to_json())) == c


def test_runtime_refuses_a_lesion_contract_without_the_output(tmp_path):
    path = tmp_path / "liar.onnx"
    make_tiny_model(path, contract=ModelContract(input_size=32, lesion_stride=4, arch="tiny"))
    with pytest.raises(ModelError, match="lesion"):
        load_model(path, provider="cpu")


def test_scoring_uses_the_lesion_map_and_reports_a_volume(lesion_model, tmp_path):
    path, _ = lesion_model
    write_study(tmp_path / "in", StudySpec("1.2.3.1", (0.0, 0.45, 0.6, 0.45, 0.0)), "bleed")
    write_study(tmp_path / "in", StudySpec("1.2.3.2", (0.0,) * 5), "normal")
    scorer = Scorer(path, threshold=0.5)
    assert scorer.explain == "lesion"
    result = scorer.score(tmp_path / "in")
    by_uid = {s.study_uid: s for s in result.studies}
    bleed, normal = by_uid["1.2.3.1"], by_uid["1.2.3.2"]
    assert bleed.flagged and not normal.flagged
    assert bleed.volume_ml is not None and bleed.volume_ml > 0
    assert normal.volume_ml == pytest.approx(0.0)
    doc = write_result(result, tmp_path / "out")
    rows = {r["study_instance_uid"]: r for r in doc["studies"]}
    assert rows["1.2.3.1"]["volume_ml"] > 0
    explained = [e for e in doc["explanations"] if "error" not in e]
    assert explained and all(e["method"] == "lesion" for e in explained)
    heat = np.load(explained[0]["npy"]) if "npy" in explained[0] else None
    if heat is not None:
        assert heat.shape == (64, 64)


def test_explain_lesion_needs_a_lesion_model(tiny_model):
    with pytest.raises(ValueError, match="lesion-level"):
        Scorer(tiny_model[0], explain="lesion")
    assert Scorer(tiny_model[0]).explain == "cam"


def test_aggregate_with_a_study_model_and_without():
    idents = [_ident(k) for k in range(5)]
    p = np.array([0.01, 0.99, 0.01, 0.01, 0.01])
    slices = [SliceScore(identity=i, probs=np.full(len(LABELS), v, np.float32), box=(0, 0, 8, 8))
              for i, v in zip(idents, p)]
    (plain,) = aggregate_studies(slices, LABELS, 0.5)
    assert plain.flagged and plain.p_any == pytest.approx(0.99)
    (smoothed,) = aggregate_studies(slices, LABELS, 0.5,
                                    {"kind": "neighbour-max", "r": 0.7, "a": 1.0, "b": 0.0})
    assert not smoothed.flagged
    assert smoothed.probs["subdural"] == pytest.approx(0.99)  # subtypes keep the maximum
    z = to_logits(np.array([0.0, 1.0]))
    assert np.all(np.isfinite(z)) and z[0] < -25 and z[1] > 25
