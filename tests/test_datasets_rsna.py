"""The RSNA 2019 layout loader on phantom data (and the phantom generator's jpg layout)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from export_helpers import write_phantoms

from ichrt.export.datasets import TrainingDataError, load_imagefolder, load_rsna
from ichrt.runtime import rsna_layout
from ichrt.runtime.dicom import read_slice


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantoms")
    summary = write_phantoms(root, studies=4, size=64, slices=(5, 5), jpg=True)
    return root, summary


def test_every_labelled_slice_loads_with_its_labels_and_study(phantoms):
    root, summary = phantoms
    samples = load_rsna(root)
    labels = rsna_layout.read_labels_csv(root / rsna_layout.LABELS_FILE)
    assert len(samples) == summary["slices"] == len(labels) == 20
    for s in samples:
        assert np.array_equal(s.labels, labels[s.id], equal_nan=True)
        assert s.hu.dtype == np.float32 and s.hu.shape == (64, 64)
        assert s.source == root.name
    studies = rsna_layout.read_studies_csv(root / rsna_layout.STUDIES_FILE)
    assert {s.group for s in samples} == set(studies)
    for study, images in studies.items():
        assert {s.id for s in samples if s.group == study} == set(images)
    assert sum(s.labels[0] for s in samples) == summary["positive_slices"] > 0


def test_hu_comes_from_the_runtime_ingest(phantoms):
    root, _ = phantoms
    s = load_rsna(root, limit=1)[0]
    ref = read_slice(root / rsna_layout.IMAGES_DIR / f"{s.id}.dcm").hu
    assert np.array_equal(s.hu, ref)


def test_masks_and_boxes_match_the_labels(phantoms):
    root, _ = phantoms
    for s in load_rsna(root):
        assert s.mask is not None and s.mask.shape == s.hu.shape
        assert bool(s.mask.any()) == bool(s.labels[0] == 1)
        if s.labels[0] == 1:
            assert s.boxes and all(y1 > y0 and x1 > x0 for y0, x0, y1, x1, _ in s.boxes)
            for y0, x0, y1, x1, label in s.boxes:
                assert s.mask[max(y0, 0):y1, max(x0, 0):x1].any()
                assert s.labels[rsna_layout.LABELS.index(label)] == 1
        else:
            assert s.boxes == []


def test_kaggle_layout_without_masks_studies_or_unreadable_files(phantoms, tmp_path):
    root, _ = phantoms
    kaggle = tmp_path / "kaggle"
    shutil.copytree(root / rsna_layout.IMAGES_DIR, kaggle / rsna_layout.IMAGES_DIR)
    shutil.copy(root / rsna_layout.LABELS_FILE, kaggle / rsna_layout.LABELS_FILE)
    first = min((kaggle / rsna_layout.IMAGES_DIR).glob("*.dcm"))
    first.write_bytes(b"not a dicom file")
    rejected = []
    samples = load_rsna(kaggle, rejected=rejected)
    assert len(samples) == 19 and all(s.mask is None and s.boxes == [] for s in samples)
    assert [p for p, _ in rejected] == [str(first)]
    # grouped by the StudyInstanceUID of the files when there is no studies.csv
    assert len({s.group for s in samples}) == 4


def test_missing_layout_is_named(tmp_path):
    with pytest.raises(TrainingDataError, match="labels CSV"):
        load_rsna(tmp_path)


def test_phantom_jpg_layout_loads_as_imagefolder(phantoms):
    root, summary = phantoms
    jpgs = {s.id.split("/")[1].removesuffix(".jpg"): s for s in load_imagefolder(root)}
    dicoms = {s.id: s for s in load_rsna(root)}
    assert len(jpgs) == summary["slices"]
    for image_id, s in jpgs.items():
        ref = dicoms[image_id]
        assert s.labels[0] == ref.labels[0] and np.isnan(s.labels[1:]).all()
        brain = (ref.hu > 10) & (ref.hu < 70)
        # three-window pictures recover brain HU to within JPEG error
        assert np.median(np.abs(s.hu - ref.hu)[brain]) < 4.0
