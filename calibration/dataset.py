"""Labelled DICOM slices on disk: the RSNA 2019 layout that Kaggle and ``ichrt synth`` write.

``DIR/stage_2_train.csv`` (``ID_<image>_<label>,Label`` rows) and
``DIR/stage_2_train/ID_<image>.dcm``, read through :mod:`ichrt.runtime.rsna_layout`. A
slice's labels are found by its file name (``ID_<image>``), falling back to its SOPInstanceUID
(RSNA files carry the id there too). Studies come from the StudyInstanceUID of each file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.contract import LABELS
from ichrt.runtime.rsna_layout import IMAGES_DIR, LABELS_FILE
from ichrt.runtime.slices import SliceIdentity

#: The layout's labels file and image folder, then the names Kaggle's stage 1 used.
LABEL_FILES = (LABELS_FILE, "stage_1_train.csv")
IMAGE_DIRS = (IMAGES_DIR, "stage_1_train_images", "stage_2_train_images")


class DatasetError(ValueError):
    """A data folder that is not in a layout calibration can read."""


@dataclass
class LabelledSet:
    """The DICOM files of a data folder and the labels known for them."""

    root: Path
    #: Files with a label row, sorted.
    files: list[Path]
    #: image id (``ID_...``) -> (6,) float32 labels in :data:`LABELS` order (NaN = unknown).
    labels: dict[str, np.ndarray]
    #: DICOM files in the image folder without a label row (not evaluated).
    unlabelled: int = 0
    label_names: tuple[str, ...] = field(default=LABELS)

    def labels_of(self, identities: Sequence[SliceIdentity]) -> np.ndarray:
        """(N, 6) float32 labels of scored slices, NaN where a slice has no label row."""
        out = np.full((len(identities), len(self.label_names)), np.nan, np.float32)
        for i, ident in enumerate(identities):
            row = self.labels.get(Path(ident.path).stem)
            if row is None:
                row = self.labels.get(ident.sop_uid)
            if row is not None:
                out[i] = row
        return out

    def summary(self, scored: Sequence[SliceIdentity], studies: Sequence[str],
                rejected: int) -> dict[str, Any]:
        """What a report says about the data a run read."""
        return {"root": str(self.root), "slices": len(scored), "studies": len(set(studies)),
                "rejected": rejected, "unlabelled": self.unlabelled}


def _find(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise DatasetError(f"{root}: no {what} found (looked for {', '.join(names)})")


def open_labelled(root: str | Path) -> LabelledSet:
    """Index an RSNA-layout folder (labels CSV + image folder of ``.dcm`` files).

    Raises:
        DatasetError: the folder lacks the labels CSV, the image folder, or labelled files.
    """
    from ichrt.runtime.rsna_layout import LayoutError, read_labels_csv

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    csv_path = _find(root, LABEL_FILES, "labels CSV")
    image_dir = _find(root, IMAGE_DIRS, "image folder")
    try:
        labels = read_labels_csv(csv_path)
    except LayoutError as exc:
        raise DatasetError(str(exc)) from exc
    all_files = sorted(image_dir.rglob("*.dcm"))
    files = [p for p in all_files if p.stem in labels]
    if not files:
        raise DatasetError(f"{image_dir}: no .dcm file has a row in {csv_path.name}")
    return LabelledSet(root=root, files=files, labels=labels, unlabelled=len(all_files) - len(files))


def study_of(path: Path) -> str:
    """A file's StudyInstanceUID from its header only (the file name when unreadable)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "")) or path.stem
    except Exception:  # noqa: BLE001 - unreadable here is rejected with its reason at decode time
        return path.stem


def split_by_study(
    files: Sequence[Path], fraction: float, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split files into two disjoint sets of whole studies, about ``fraction`` of studies first.

    Both sides get at least one study when there are two or more.
    """
    studies = [study_of(p) for p in files]
    unique = sorted(set(studies))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_first = round(fraction * len(unique))
    if len(unique) >= 2:
        n_first = min(max(n_first, 1), len(unique) - 1)
    first = {unique[i] for i in order[:n_first]}
    a = [p for p, s in zip(files, studies) if s in first]
    b = [p for p, s in zip(files, studies) if s not in first]
    return a, b
