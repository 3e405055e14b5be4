"""Study aggregation, temperature calibration and arrival times (pure, no model)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from ichrt.runtime.aggregate import (
    SliceScore,
    aggregate_studies,
    arrival_of,
    calibrated_probabilities,
    parse_dicom_datetime,
)
from ichrt.runtime.contract import LABELS, ModelContract
from ichrt.runtime.slices import SliceIdentity


def scored(study: str, sop: str, probs, **ident) -> SliceScore:
    identity = SliceIdentity(path=f"/in/{sop}", study_uid=study, series_uid="se", sop_uid=sop,
                             **ident)
    return SliceScore(identity, np.asarray(probs, np.float32), (0, 0, 8, 8))


def test_study_probability_is_max_over_slices_per_label() -> None:
    slices = [
        scored("s", "1", [0.2, 0.9, 0.1, 0.0, 0.0, 0.0]),
        scored("s", "2", [0.7, 0.1, 0.3, 0.0, 0.0, 0.6]),
        scored("s", "3", [0.4, 0.0, 0.8, 0.0, 0.0, 0.0]),
    ]
    (st,) = aggregate_studies(slices, LABELS, threshold=0.5)
    assert st.probs == pytest.approx(
        {"any": 0.7, "epidural": 0.9, "intraparenchymal": 0.8, "intraventricular": 0.0,
         "subarachnoid": 0.0, "subdural": 0.6})
    assert st.key_slice.sop_uid == "2"  # argmax of any, not of a subtype
    assert st.n_slices == 3 and st.flagged


def test_flag_threshold_is_inclusive_and_key_slice_first_on_ties() -> None:
    slices = [scored("s", "a", [0.5] + [0] * 5), scored("s", "b", [0.5] + [0] * 5)]
    (st,) = aggregate_studies(slices, LABELS, threshold=0.5)
    assert st.flagged and st.key_slice.sop_uid == "a"
    (st,) = aggregate_studies(slices, LABELS, threshold=0.5001)
    assert not st.flagged


def test_studies_grouped_and_in_arrival_order() -> None:
    slices = [
        scored("late", "1", [0.1] * 6, study_date="20240102", study_time="0900"),
        scored("early", "2", [0.2] * 6, study_date="20240101", study_time="2300"),
        scored("late", "3", [0.3] * 6, study_date="20240102", study_time="0900"),
    ]
    studies = aggregate_studies(slices, LABELS, threshold=0.5)
    assert [s.study_uid for s in studies] == ["early", "late"]
    assert studies[1].n_slices == 2 and studies[1].probs["any"] == pytest.approx(0.3)
    assert studies[0].order == 1 and studies[1].order == 0


def test_calibrate_applies_per_label_temperature() -> None:
    contract = ModelContract(temperatures={"any": 2.0, "subdural": 0.5})
    logits = np.array([[2.0, -1.0, 0.0, 3.0, -50.0, 1.0], [800.0, -800.0, 0, 0, 0, -2.0]])
    probs = calibrated_probabilities(logits, contract)
    sig = lambda z: 1 / (1 + np.exp(-z))
    temps = np.array([2.0, 1, 1, 1, 1, 0.5])
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs[0], sig(logits[0] / temps), rtol=1e-6)
    np.testing.assert_allclose(probs[1], [1.0, 0.0, 0.5, 0.5, 0.5, sig(-4.0)], atol=1e-7)


def test_parse_dicom_datetime_forms() -> None:
    assert parse_dicom_datetime("20240301", "134501.25") == datetime(2024, 3, 1, 13, 45, 1, 250000)
    assert parse_dicom_datetime("20240301", "13") == datetime(2024, 3, 1, 13)
    assert parse_dicom_datetime("2024.03.01", "13:45:01") == datetime(2024, 3, 1, 13, 45, 1)
    assert parse_dicom_datetime("20240301", "") == datetime(2024, 3, 1)
    assert parse_dicom_datetime("20240301", "garbage") == datetime(2024, 3, 1)
    assert parse_dicom_datetime("20240301", "256199") == datetime(2024, 3, 1)
    assert parse_dicom_datetime("20241340", "1200") is None
    assert parse_dicom_datetime("", "1200") is None


def test_arrival_falls_back_from_study_to_acquisition_to_file_time() -> None:
    a = SliceIdentity("p", "s", "se", "1", study_date="20240105", study_time="1000",
                      acquisition_date="20240101", file_mtime=10.0)
    b = SliceIdentity("p", "s", "se", "2", study_date="20240104", study_time="1000")
    assert arrival_of([a, b]) == (datetime(2024, 1, 4, 10), "study")
    c = SliceIdentity("p", "s", "se", "3", acquisition_date="20240101", acquisition_time="0700",
                      file_mtime=10.0)
    assert arrival_of([c]) == (datetime(2024, 1, 1, 7), "acquisition")
    d = SliceIdentity("p", "s", "se", "4", file_mtime=2000.0)
    e = SliceIdentity("p", "s", "se", "5", file_mtime=1000.0)
    assert arrival_of([d, e]) == (datetime.fromtimestamp(1000.0), "file")
