"""The scoring API end to end on tiny DICOM studies and the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from score_helpers import StudySpec, head_slice, read_csv, write_ct, write_study
from tinymodel import make_tiny_model

from ichrt.runtime.aggregate import SliceScore
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.scorer import ModelInfo, Scorer, ScoreResult, score, write_result
from ichrt.runtime.session import load_model
from ichrt.runtime.slices import SliceIdentity

# Blob radius -> tiny-model p(any): 0 -> ~0.12, 0.3 -> ~0.33, 0.45 -> ~0.63, 0.6 -> ~0.72.
NEG, MID, POS, HOT = 0.0, 0.3, 0.45, 0.6


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """Four studies with known arrival and strength, plus two junk files."""
    root = tmp_path_factory.mktemp("studies")
    write_study(root, StudySpec("1.2.1", (NEG, NEG, NEG), study_time="0900"), "a_neg_late")
    write_study(root, StudySpec("1.2.2", (NEG, POS, MID), study_time="0800"), "b_pos_early")
    write_study(root, StudySpec("1.2.3", (NEG, HOT), study_time="1000"), "c_hot_latest")
    write_study(root, StudySpec("1.2.4", (MID, NEG), study_time="0700"), "d_mid_earliest")
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a dicom file")
    good = root / "b_pos_early" / "slice001.dcm"
    (root / "junk" / "truncated.dcm").write_bytes(good.read_bytes()[:400])
    return root


@pytest.fixture(scope="module")
def scorer(tiny_model) -> Scorer:
    return Scorer(tiny_model[0], provider="cpu", threads=1, batch_size=4)


def test_every_input_is_scored_or_rejected(scorer: Scorer, studies: Path) -> None:
    result = scorer.score([studies])
    assert result.n_inputs == 12
    assert len(result.slices) == 10 and len(result.rejected) == 2
    assert sorted(Path(r.path).name for r in result.rejected) == ["notes.txt", "truncated.dcm"]
    assert all(r.reason for r in result.rejected)
    accounted = {s.identity.path for s in result.slices} | {r.path for r in result.rejected}
    assert len(accounted) == 12
    assert [s.identity.path for s in result.slices] == sorted(s.identity.path for s in result.slices)


def test_worklist_order_and_key_slices(scorer: Scorer, studies: Path) -> None:
    result = scorer.score([studies])
    assert [s.study_uid for s in result.studies] == ["1.2.3", "1.2.2", "1.2.4", "1.2.1"]
    assert [s.flagged for s in result.studies] == [True, True, False, False]
    by_uid = {s.study_uid: s for s in result.studies}
    assert by_uid["1.2.2"].key_slice.instance_number == 2
    assert by_uid["1.2.3"].key_slice.instance_number == 2
    assert by_uid["1.2.2"].n_slices == 3
    assert by_uid["1.2.1"].arrival.hour == 9 and by_uid["1.2.1"].arrival_source == "study"
    slice_any = {(s.identity.study_uid, s.identity.instance_number): s.probs[0]
                 for s in result.slices}
    assert by_uid["1.2.2"].p_any == max(slice_any[("1.2.2", i)] for i in (1, 2, 3))


def test_results_do_not_depend_on_batch_size(tiny_model, studies: Path) -> None:
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    runs = [Scorer(model, batch_size=b).score([studies]) for b in (1, 3, 64)]
    for other in runs[1:]:
        assert [s.identity.sop_uid for s in other.slices] == [
            s.identity.sop_uid for s in runs[0].slices]
        np.testing.assert_allclose(np.stack([s.probs for s in other.slices]),
                                   np.stack([s.probs for s in runs[0].slices]), rtol=0, atol=1e-6)


def test_mixed_slice_sizes_share_a_batch(tiny_model, tmp_path: Path) -> None:
    write_study(tmp_path, StudySpec("9.1", (POS, NEG), size=64), "big")
    write_study(tmp_path, StudySpec("9.2", (POS, NEG), size=48), "small")
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    together = Scorer(model, batch_size=8).score([tmp_path])
    alone = Scorer(model, batch_size=1).score([tmp_path])
    assert [s.identity.sop_uid for s in together.slices] == [
        s.identity.sop_uid for s in alone.slices]
    np.testing.assert_allclose(np.stack([s.probs for s in together.slices]),
                               np.stack([s.probs for s in alone.slices]), atol=1e-6)
    assert [s.box[2] - s.box[0] for s in together.slices] == [s.box[2] - s.box[0]
                                                             for s in alone.slices]


def test_cam_kept_only_at_threshold(scorer: Scorer, studies: Path, tiny_model) -> None:
    result = scorer.score([studies])
    for s in result.slices:
        above = s.probs[0] >= result.threshold
        assert (s.cam is not None) == above
        if above:
            assert s.cam.shape == (8, 8) and s.cam.max() > 0
    quiet = Scorer(tiny_model[0], provider="cpu", explain="none").score([studies])
    assert all(s.cam is None for s in quiet.slices)


def test_threshold_default_is_the_contract_and_can_be_overridden(tmp_path: Path,
                                                                 studies: Path) -> None:
    path = tmp_path / "t.onnx"
    make_tiny_model(path, ModelContract(input_size=32, name="t", thresholds={"any": 0.3}))
    default = Scorer(path, provider="cpu")
    assert default.threshold == 0.3
    flagged = {s.study_uid for s in default.score([studies]).flagged}
    assert flagged == {"1.2.2", "1.2.3", "1.2.4"}  # MID (~0.33) counts at 0.3
    strict = Scorer(path, provider="cpu", threshold=0.7)
    assert {s.study_uid for s in strict.score([studies]).flagged} == {"1.2.3"}


def test_temperature_from_the_contract_is_applied(tmp_path: Path, studies: Path) -> None:
    plain, hot = tmp_path / "plain.onnx", tmp_path / "temp.onnx"
    make_tiny_model(plain, ModelContract(input_size=32, name="plain"))
    make_tiny_model(hot, ModelContract(input_size=32, name="hot", temperatures={"any": 2.0}))
    p1 = np.stack([s.probs for s in score(studies, plain, provider="cpu").slices])
    p2 = np.stack([s.probs for s in score([studies], hot, provider="cpu").slices])
    logit = np.log(p1[:, 0] / (1 - p1[:, 0]))
    np.testing.assert_allclose(p2[:, 0], 1 / (1 + np.exp(-logit / 2)), atol=1e-5)
    np.testing.assert_array_equal(p2[:, 1:], p1[:, 1:])


def test_bad_options_are_refused(tiny_model) -> None:
    with pytest.raises(ValueError, match="explain"):
        Scorer(tiny_model[0], explain="magic")
    with pytest.raises(ValueError, match="threshold"):
        Scorer(tiny_model[0], threshold=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        Scorer(tiny_model[0], batch_size=0)


def test_write_result_files(scorer: Scorer, studies: Path, tmp_path: Path) -> None:
    result = scorer.score([studies])
    out = tmp_path / "out"
    doc = write_result(result, out)
    rows = read_csv(out / "worklist.csv")
    assert [r["study_instance_uid"] for r in rows] == ["1.2.3", "1.2.2", "1.2.4", "1.2.1"]
    assert rows[0]["rank"] == "1" and rows[0]["flagged"] == "True"
    assert len(read_csv(out / "slices.csv")) == 10
    rejected = read_csv(out / "rejected.csv")
    assert {Path(r["path"]).name for r in rejected} == {"notes.txt", "truncated.dcm"}
    assert json.loads((out / "worklist.json").read_text()) == doc
    assert doc["counts"] == {"inputs": 12, "scored_slices": 10, "rejected": 2, "studies": 4,
                             "flagged": 2, "not_scored_studies": 0}
    hot = sum(s.probs[0] >= result.threshold for s in result.slices)
    pngs = sorted((out / "explanations").rglob("*.png"))
    assert len(pngs) == len(doc["explanations"]) == hot == 2
    for entry in doc["explanations"]:
        assert entry["method"] == "cam" and entry["probability"] >= result.threshold


def test_hostile_uids_never_leave_the_output_folder(tiny_model, tmp_path: Path) -> None:
    src = write_ct(tmp_path / "src.dcm", head_slice(64, HOT), "1.2", "1.3", "1.4", 1)
    evil = ["../../etc", "/abs/olute", "a\x00b/..", "9" * 3000]
    model = load_model(tiny_model[0], provider="cpu")
    slices = [
        SliceScore(SliceIdentity(str(src), study_uid=uid, series_uid=uid, sop_uid=uid + "/../x"),
                   np.array([0.9, 0, 0, 0, 0, 0], np.float32), (0, 0, 64, 64),
                   np.ones((8, 8), np.float32))
        for uid in evil
    ]
    result = ScoreResult([], slices, [], ModelInfo.of(model), model.contract.labels, 0.5, "cam", 4)
    out = tmp_path / "deep" / "out"
    write_result(result, out)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != src]
    assert written and all(out.resolve() in p.resolve().parents for p in written)
    assert len(list((out / "explanations").rglob("*.png"))) == 4
    assert all(len(p.name) < 80 for p in written)


def test_a_copied_file_is_rejected_as_duplicate(tiny_model, tmp_path: Path) -> None:
    (first,) = write_study(tmp_path, StudySpec("8.1", (POS,)), "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.dcm").write_bytes(first.read_bytes())
    result = Scorer(tiny_model[0], provider="cpu").score([tmp_path])
    assert len(result.slices) == 1 and result.studies[0].n_slices == 1
    (rej,) = result.rejected
    assert rej.path.endswith("copy.dcm") and "duplicate SOPInstanceUID" in rej.reason


@pytest.mark.parametrize("method", ["cam", "hshap"])  # maps kept in scoring / made on re-read
def test_explanation_of_a_vanished_file_is_an_error_entry(tiny_model, tmp_path: Path,
                                                          method: str) -> None:
    files = write_study(tmp_path / "in", StudySpec("8.2", (HOT, HOT)), "s")
    scorer = Scorer(tiny_model[0], provider="cpu", explain=method)
    result = scorer.score([tmp_path / "in"])
    assert len(result.flagged) == 1
    files[0].unlink()
    doc = write_result(result, tmp_path / "out", explainer=scorer.explainer)
    errors = [e for e in doc["explanations"] if "error" in e]
    assert len(doc["explanations"]) == 2 and len(errors) == 1
    assert errors[0]["sop_instance_uid"] == result.slices[0].identity.sop_uid
    assert "cannot re-read" in errors[0]["error"]
    assert len(list((tmp_path / "out" / "explanations").rglob("*.png"))) == 1


def test_binary_any_only_model(tmp_path: Path, studies: Path) -> None:
    path = tmp_path / "binary.onnx"
    make_tiny_model(path, ModelContract(labels=("any",), input_size=32, name="binary"))
    result = Scorer(path, provider="cpu").score([studies])
    assert result.labels == ("any",)
    assert all(s.probs.shape == (1,) for s in result.slices)
    assert [s.study_uid for s in result.flagged] == ["1.2.3", "1.2.2"]
    doc = write_result(result, tmp_path / "out")
    assert set(doc["studies"][0]) >= {"p_any", "flagged"}
    assert not any(k.startswith("p_sub") for k in doc["studies"][0])


def test_concurrent_runs_give_the_same_results_in_input_order(tiny_model, studies: Path) -> None:
    """Scoring's CPU layout (one single-threaded run per core at once) changes no result."""
    one = Scorer(load_model(tiny_model[0], provider="cpu", threads=1), batch_size=2).score(
        [studies])
    model = load_model(tiny_model[0], provider="cpu", threads=1, streams=3)
    assert model.streams == 3
    many = Scorer(model, batch_size=2).score([studies])
    assert [s.identity.path for s in many.slices] == [s.identity.path for s in one.slices]
    np.testing.assert_allclose(np.stack([s.probs for s in many.slices]),
                               np.stack([s.probs for s in one.slices]), atol=1e-6)


def test_run_layout_on_a_cpu() -> None:
    from ichrt.runtime.session import physical_cores, run_layout

    cpu = ["CPUExecutionProvider"]
    assert run_layout(cpu, None, "auto") == (1, physical_cores())
    assert run_layout(cpu, 3, "auto") == (3, 1)  # threads given: one run at a time
    assert run_layout(["CUDAExecutionProvider", *cpu], None, "auto") == (None, 1)
    assert run_layout(cpu, None, 2) == (None, 2)
    assert Scorer(explain="none", provider="cpu").model.streams == physical_cores()
    assert Scorer(explain="none", provider="cpu", threads=2).model.streams == 1
