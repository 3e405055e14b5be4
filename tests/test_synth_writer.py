"""Phantom datasets on disk: DICOM read back to the same HU (with the RSNA quirk and padding),
labels, masks, boxes, studies, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from ichrt.runtime.dicom import read_slice
from ichrt.runtime.rsna_layout import (
    read_boxes_csv,
    read_labels_csv,
    read_mask_npz,
    read_studies_csv,
)
from ichrt.runtime.synth import PhantomConfig, generate_study, write_dataset
from ichrt.runtime.synth.writer import write_study_dicom

#: RSNA-style ``ID_...`` UIDs are not valid UI values (as in the Kaggle files).
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")

ENCODINGS = {
    "bad_rescale": PhantomConfig(p_bad_rescale=1.0),
    "padding": PhantomConfig(p_bad_rescale=0.0, p_padding=1.0),
    "plain12": PhantomConfig(p_bad_rescale=0.0, p_padding=0.0, p_bits12=1.0),
    "plain16": PhantomConfig(p_bad_rescale=0.0, p_padding=0.0, p_bits12=0.0),
}


@pytest.mark.parametrize("name", sorted(ENCODINGS))
def test_dicom_reads_back_the_same_hu(tmp_path: Path, name: str) -> None:
    for seed in (1, 2):
        study = generate_study(seed, n_slices=2, size=64, positive=seed == 1,
                               config=ENCODINGS[name])
        paths = write_study_dicom(study, tmp_path)
        for k, path in enumerate(paths):
            assert np.array_equal(read_slice(path).hu, study.hu[k]), (name, seed, k)
            ds = pydicom.dcmread(path)
            assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
            assert ds.SOPInstanceUID == study.identity.sop_uids[k]
            assert float(ds.ImagePositionPatient[2]) == pytest.approx(study.positions_z[k], abs=1e-3)
            assert ds.PatientName.family_name == "PHANTOM"
            raw = ds.pixel_array
            if name == "bad_rescale":
                assert (ds.BitsStored, ds.PixelRepresentation) == (12, 0)
                assert float(ds.RescaleIntercept) > -100
                # HU stored as 12-bit two's complement: air (-1000) appears as 3096
                assert np.array_equal(raw, study.hu[k].astype(np.int64) % 4096)
            else:
                assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
                outside = ~study.fov_mask
                if name == "padding":
                    pad = study.identity.padding_hu + 1024
                    assert np.all(raw[outside] == pad)
                    if study.identity.padding_tag:
                        assert ds.PixelPaddingValue == pad
                else:
                    assert ds.BitsStored == (12 if name == "plain12" else 16)
                    assert np.array_equal(raw.astype(np.int64) - 1024, study.hu[k])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    summary = write_dataset(out, studies=5, seed=3, slices=(3, 5), size=64, prevalence=0.4)
    return out, summary


def test_layout_files_and_summary(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    labels = read_labels_csv(out / "stage_2_train.csv")
    files = sorted(p.stem for p in (out / "stage_2_train").glob("*.dcm"))
    assert sorted(labels) == files and len(files) == summary["slices"]
    assert summary["studies"] == 5 and summary["positive_studies"] == 2
    assert summary["positive_slices"] == sum(int(v[0]) for v in labels.values()) > 0
    lines = (out / "stage_2_train.csv").read_text().splitlines()
    assert lines[0] == "ID,Label" and len(lines) == 1 + 6 * len(files)
    assert lines[1].endswith("_epidural,0") or lines[1].endswith("_epidural,1")
    studies = read_studies_csv(out / "studies.csv")
    ids = [i for v in studies.values() for i in v]
    assert sorted(ids) == files and len(studies) == 5


def test_masks_and_boxes_agree_with_labels(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    labels = read_labels_csv(out / "stage_2_train.csv")
    boxes = read_boxes_csv(out / "boxes.csv")
    for image_id, lab in labels.items():
        path = out / "masks" / f"{image_id}.npz"
        assert path.exists() == bool(lab[0])
        if not lab[0]:
            assert image_id not in boxes
            continue
        masks = read_mask_npz(path)
        assert np.array_equal(masks.any(axis=(1, 2)), lab[1:].astype(bool))
        names = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
        for box in boxes[image_id]:
            mask = masks[names.index(box.label)]
            x, y, w, h = int(box.x), int(box.y), int(box.width), int(box.height)
            inside = mask[y:y + h, x:x + w]
            assert inside.any() and inside[0].any() and inside[-1].any()
            assert inside[:, 0].any() and inside[:, -1].any(), "the box is tight"
        assert {b.label for b in boxes[image_id]} == {n for n, v in zip(names, lab[1:]) if v}


def test_dataset_is_deterministic(dataset: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = dataset
    write_dataset(tmp_path, studies=5, seed=3, slices=(3, 5), size=64, prevalence=0.4)
    assert (tmp_path / "stage_2_train.csv").read_bytes() == (out / "stage_2_train.csv").read_bytes()
    one = min((out / "stage_2_train").glob("*.dcm"))
    assert (tmp_path / "stage_2_train" / one.name).read_bytes() == one.read_bytes()


def test_existing_dataset_is_not_overwritten(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    with pytest.raises(FileExistsError, match="stage_2_train"):
        write_dataset(out, studies=1, seed=0, slices=2, size=32)


def test_jpg_image_folder(tmp_path: Path) -> None:
    summary = write_dataset(tmp_path, studies=2, seed=1, slices=2, size=32, prevalence=0.5,
                            jpg=True)
    pos = list((tmp_path / "hemorrhage").glob("ID_*.jpg"))
    neg = list((tmp_path / "no_hemorrhage").glob("ID_*.jpg"))
    assert len(pos) == summary["positive_slices"] and len(pos) + len(neg) == summary["slices"]
