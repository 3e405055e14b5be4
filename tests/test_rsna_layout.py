"""RSNA 2019 layout files: labels, boxes (ours and BHX/realct), masks, studies."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ichrt.runtime.contract import LABELS
from ichrt.runtime.rsna_layout import (
    Box,
    LayoutError,
    read_boxes_csv,
    read_labels_csv,
    read_mask_npz,
    read_studies_csv,
    write_boxes_csv,
    write_labels_csv,
    write_studies_csv,
)


def test_labels_round_trip_in_kaggle_row_order(tmp_path: Path) -> None:
    labels = {"ID_000aaa111": [1, 0, 1, 0, 0, 0], "ID_000bbb222": [0, 0, 0, 0, 0, 0]}
    path = write_labels_csv(tmp_path / "stage_2_train.csv", labels)
    lines = path.read_text().splitlines()
    assert lines[:3] == ["ID,Label", "ID_000aaa111_epidural,0", "ID_000aaa111_intraparenchymal,1"]
    assert lines[6] == "ID_000aaa111_any,1"
    back = read_labels_csv(path)
    assert set(back) == set(labels)
    for key, values in labels.items():
        assert back[key].dtype == np.float32
        assert np.array_equal(back[key], np.asarray(values, np.float32))


def test_missing_subtypes_are_nan_and_duplicates_keep_the_last(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text("ID,Label\nID_1_any,1\nID_1_subdural,1\nID_1_subdural,0\nID_1_epidural,\n")
    back = read_labels_csv(path)["ID_1"]
    assert back[LABELS.index("any")] == 1 and back[LABELS.index("subdural")] == 0
    assert math.isnan(back[LABELS.index("epidural")]) and math.isnan(back[LABELS.index("subarachnoid")])


@pytest.mark.parametrize("text, where", [
    ("id,label\n", "header"),
    ("ID,Label\nID_1_nosuchtype,1\n", ":2"),
    ("ID,Label\nID_1_any,yes\n", ":2"),
    ("ID,Label\nID_1_any\n", ":2"),
])
def test_bad_label_files_name_the_file_and_line(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(LayoutError, match="bad.csv") as err:
        read_labels_csv(path)
    assert where in str(err.value)
    with pytest.raises(LayoutError, match="cannot read"):
        read_labels_csv(tmp_path / "absent.csv")


def test_boxes_round_trip(tmp_path: Path) -> None:
    boxes = [Box("ID_a", 3, 4, 5, 6, "subdural", "1.2.3", "1.2", "1"),
             Box("ID_a", 10, 11, 2, 2, "epidural"), Box("ID_b", 0, 0, 1, 1, "subarachnoid")]
    back = read_boxes_csv(write_boxes_csv(tmp_path / "boxes.csv", boxes))
    assert [b.label for b in back["ID_a"]] == ["subdural", "epidural"]
    assert back["ID_a"][0] == boxes[0] and back["ID_b"][0].width == 1


def test_reads_the_bhx_boxes_of_the_real_slices(shared_dir: Path) -> None:
    boxes = read_boxes_csv(shared_dir / "realct" / "gt.csv")
    assert len(boxes) == 4 and sum(len(v) for v in boxes.values()) == 5
    first = boxes["1.2.276.0.7230010.3.1.4.296485376.1.1521713007.1700822"]
    assert {b.label for b in first} == {"intraparenchymal", "subarachnoid"}
    assert first[0].x == pytest.approx(302.6561) and first[0].width == pytest.approx(55.98734)


def test_masks_and_studies(tmp_path: Path) -> None:
    masks = np.zeros((5, 8, 8), bool)
    masks[4, 2:4, 2:5] = True
    np.savez_compressed(tmp_path / "ID_x.npz", masks=masks)
    assert np.array_equal(read_mask_npz(tmp_path / "ID_x.npz"), masks)
    np.savez_compressed(tmp_path / "ID_y.npz", masks=masks[:2])
    with pytest.raises(LayoutError, match="expected"):
        read_mask_npz(tmp_path / "ID_y.npz")
    rows = [{"study_id": "S1", "n_slices": 2, "positive": 1, "subtypes": ["subdural"],
             "image_ids": ["ID_a", "ID_b"], "preset": "train", "seed": 1, "size": 64,
             "pixel_spacing": 0.5, "slice_thickness": 5.0}]
    path = write_studies_csv(tmp_path / "studies.csv", rows)
    assert read_studies_csv(path) == {"S1": ["ID_a", "ID_b"]}
