"""Labelled DICOM data in the RSNA 2019 layout for the calibration tests.

``phantom_dir`` holds the project's phantoms (``ichrt.runtime.synth.write_dataset``): realistic
input for the data path. The tiny test model cannot tell their bleeds apart, so the tests that need
a model that discriminates (thresholds, the INT8 gate) use ``labelled_dir``, whose slices are the
score tests' head phantoms (a 30 HU brain disc in air) with a 90 HU blob whose
radius drives the tiny model's ``any`` logit up. Positives get a blob, negatives none; a share of
labels is flipped so that AUC is high but not 1 and thresholds and calibration have work to do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import generate_uid
from score_helpers import head_slice, write_ct

from ichrt.runtime.contract import LABELS


def write_labelled_dir(
    root: Path, studies: int = 8, slices: int = 6, size: int = 64, seed: int = 0,
    flip: float = 0.1, prevalence: float = 0.4,
) -> dict[str, np.ndarray]:
    """Write ``root/stage_2_train.csv`` + ``root/stage_2_train/ID_*.dcm``; return the labels."""
    from ichrt.runtime.rsna_layout import write_labels_csv

    rng = np.random.default_rng(seed)
    image_dir = root / "stage_2_train"
    image_dir.mkdir(parents=True, exist_ok=True)
    labels: dict[str, np.ndarray] = {}
    for s in range(studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        for i in range(slices):
            bleed = rng.random() < prevalence
            blob = float(rng.uniform(0.05, 0.16)) if bleed else 0.0
            hu = head_slice(size, blob) + rng.normal(0, 4, (size, size)).astype(np.float32)
            image_id = f"ID_{rng.integers(0, 16**9):09x}"
            write_ct(image_dir / f"{image_id}.dcm", hu, study_uid, series_uid, generate_uid(),
                     i + 1, accession=f"A{s}")
            row = np.zeros(len(LABELS), np.float32)
            if bleed != (rng.random() < flip):
                row[0] = 1.0
                row[1 + rng.integers(0, len(LABELS) - 1)] = 1.0
            labels[image_id] = row
    write_labels_csv(root / "stage_2_train.csv", labels)
    return labels


@pytest.fixture(scope="session")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small labelled RSNA-layout folder (8 studies x 6 slices)."""
    root = tmp_path_factory.mktemp("calib-data")
    write_labelled_dir(root)
    return root


@pytest.fixture(scope="session")
def heldout_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another labelled folder from a different seed (the INT8 gate's held-out data)."""
    root = tmp_path_factory.mktemp("calib-heldout")
    write_labelled_dir(root, studies=10, seed=1)
    return root


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small phantom studies (5-6 slices of 96 x 96) from the runtime's generator."""
    from ichrt.runtime.synth import write_dataset

    root = tmp_path_factory.mktemp("calib-phantoms")
    write_dataset(root, studies=3, seed=11, slices=(5, 6), size=96, prevalence=0.5)
    return root
