"""Worklist ordering, records and the terminal table (pure, no model)."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from ichrt.runtime.aggregate import SliceScore, StudyScore
from ichrt.runtime.contract import LABELS
from ichrt.runtime.slices import Rejected, SliceIdentity
from ichrt.runtime.worklist import (
    prioritize,
    rejected_records,
    slice_fields,
    slice_record,
    summary_table,
    worklist_fields,
    worklist_records,
)

T0 = datetime(2024, 1, 1, 8, 0)


def study(uid: str, p_any: float, flagged: bool, minutes: int, order: int = 0) -> StudyScore:
    ident = SliceIdentity(path=f"/in/{uid}.dcm", study_uid=uid, series_uid="s", sop_uid=f"{uid}.1",
                          instance_number=3, patient_id="PID-SECRET")
    probs = {label: p_any if label == "any" else p_any / 2 for label in LABELS}
    return StudyScore(uid, f"ACC-{uid}", "PID-SECRET", 10, probs, flagged, ident,
                      T0 + timedelta(minutes=minutes), "study", order)


def test_flagged_first_by_probability_then_arrival_order() -> None:
    studies = [
        study("a", 0.10, False, 5),
        study("b", 0.70, True, 9),
        study("c", 0.95, True, 30),
        study("d", 0.20, False, 1),
        study("e", 0.40, False, 3),
    ]
    ranked = prioritize(studies)
    assert [s.study_uid for s in ranked] == ["c", "b", "d", "e", "a"]


def test_unflagged_high_probability_does_not_jump_the_queue() -> None:
    # Below the threshold a probability is not a priority: arrival order rules.
    ranked = prioritize([study("late", 0.49, False, 50), study("early", 0.01, False, 0)])
    assert [s.study_uid for s in ranked] == ["early", "late"]


def test_ties_keep_arrival_then_input_order() -> None:
    studies = [
        study("x2", 0.8, True, 10, order=1),
        study("x1", 0.8, True, 10, order=0),
        study("x0", 0.8, True, 5, order=2),
        study("n1", 0.1, False, 7, order=4),
        study("n0", 0.1, False, 7, order=3),
    ]
    assert [s.study_uid for s in prioritize(studies)] == ["x0", "x1", "x2", "n0", "n1"]


@given(st.lists(st.tuples(st.floats(0, 1), st.booleans(), st.integers(0, 100)), max_size=40))
def test_prioritize_is_a_permutation_with_flagged_block_first(rows) -> None:
    studies = [study(f"u{i}", p, f, m, order=i) for i, (p, f, m) in enumerate(rows)]
    ranked = prioritize(studies)
    assert sorted(s.study_uid for s in ranked) == sorted(s.study_uid for s in studies)
    flags = [s.flagged for s in ranked]
    assert flags == sorted(flags, reverse=True)
    n_flag = sum(flags)
    p_flag = [s.p_any for s in ranked[:n_flag]]
    assert p_flag == sorted(p_flag, reverse=True)
    arrivals = [(s.arrival, s.order) for s in ranked[n_flag:]]
    assert arrivals == sorted(arrivals)


def test_records_hide_patient_id_unless_asked() -> None:
    ranked = prioritize([study("a", 0.9, True, 0), study("b", 0.1, False, 1)])
    rows = worklist_records(ranked)
    assert [r["rank"] for r in rows] == [1, 2]
    assert all("patient_id" not in r for r in rows)
    assert "PID-SECRET" not in repr(rows)
    assert list(rows[0]) == worklist_fields(LABELS)
    shown = worklist_records(ranked, show_phi=True)
    assert shown[0]["patient_id"] == "PID-SECRET"
    assert list(shown[0]) == worklist_fields(LABELS, show_phi=True)
    assert rows[0]["key_slice_sop_instance_uid"] == "a.1"
    assert rows[0]["p_any"] == 0.9 and rows[0]["flagged"] is True


def test_slice_record_marks_threshold_and_hides_phi() -> None:
    ident = SliceIdentity(path="/in/1.dcm", study_uid="st", series_uid="se", sop_uid="so",
                          patient_id="PID-SECRET")
    probs = np.array([0.6, 0.1, 0.2, 0.3, 0.4, 0.5], np.float32)
    item = SliceScore(ident, probs, (0, 0, 64, 64))
    rec = slice_record(item, LABELS, threshold=0.6)
    assert rec["above_threshold"] is True
    assert slice_record(item, LABELS, threshold=0.61)["above_threshold"] is False
    assert list(rec) == slice_fields(LABELS)
    assert "PID-SECRET" not in repr(rec)
    assert slice_record(item, LABELS, 0.5, show_phi=True)["patient_id"] == "PID-SECRET"


def test_summary_table_counts_and_sanitizes() -> None:
    evil = study("1.2.3\x1b[31m", 0.9, True, 0)
    table = summary_table(prioritize([evil, study("b", 0.1, False, 1)]), threshold=0.5)
    assert "\x1b" not in table
    assert "2 studies, 1 flagged" in table
    assert "PID-SECRET" not in table
    assert "PID-SECRET" in summary_table([evil], 0.5, show_phi=True)
    lines = table.splitlines()
    assert lines[1].split()[0] == "1" and "BLEED?" in lines[1]
    assert "BLEED?" not in lines[2]


def test_rejected_records() -> None:
    assert rejected_records([Rejected.of("/x/y.dcm", "not DICOM")]) == [
        {"path": "/x/y.dcm", "reason": "not DICOM", "study_instance_uid": ""}
    ]
