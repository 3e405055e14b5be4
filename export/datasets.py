"""Loaders that turn a data folder into training samples (HU slices with labels).

Each loader yields :class:`~ichrt.export.samples.Sample` objects one at a time (``iter_*``), so a
large folder can be packed into compact training storage without holding every float32 slice in
memory; ``load_*`` are the list-returning conveniences. :data:`FORMATS` names the loaders that
``ichrt train --data FORMAT:DIR`` can use; :func:`load_spec` resolves a :class:`DataSpec`.

Formats:
- ``rsna``: the RSNA 2019 Kaggle layout (``stage_2_train.csv`` + ``stage_2_train/ID_*.dcm``), also
  written by ``ichrt synth`` (which adds ``masks/ID_*.npz``). DICOM is read with the runtime's own
  ingest (:func:`ichrt.runtime.dicom.read_slice`), so HU corrections match scoring exactly.
- ``imagefolder``: the seed's layout, one folder per class of 8-bit images. Gray values are mapped
  back to the HU range of the window they were made with (see :func:`gray8_to_hu`).
- ``ctich``, ``roboflow``, ``bhsd``, ``rsna200``: the real sources of ``shared/realtrain/``
  (:mod:`ichrt.export.sources`).
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.export.samples import Box, Sample, make_labels
from ichrt.runtime.contract import DEFAULT_WINDOWS, LABELS
from ichrt.runtime.pictures import hu_from_gray8

log = logging.getLogger(__name__)

#: Format name -> "module:function" of a loader ``f(path, **options) -> Iterable[Sample]``.
FORMATS: dict[str, str] = {
    "rsna": "ichrt.export.datasets:iter_rsna",
    "imagefolder": "ichrt.export.datasets:iter_imagefolder",
    # the real, publisher-windowed sources of shared/realtrain/ (see ichrt.export.sources)
    "ctich": "ichrt.export.sources:iter_ctich",
    "roboflow": "ichrt.export.sources:iter_roboflow",
    "bhsd": "ichrt.export.sources:iter_bhsd",
    "rsna200": "ichrt.export.sources:iter_rsna200",
}

#: ImageFolder class folders of the seed and their ``any`` label.
DEFAULT_CLASSES: dict[str, float] = {"hemorrhage": 1.0, "no_hemorrhage": 0.0}

#: The window an 8-bit gray image is assumed to show when none is given (brain 40/80).
BRAIN_WINDOW: tuple[float, float] = (40.0, 80.0)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class TrainingDataError(ValueError):
    """A data folder that does not have the layout its format needs."""


@dataclass(frozen=True)
class DataSpec:
    """One data source of a training stage: a folder, its format, and a source name.

    ``source`` defaults to the folder's name; samples of one source are class-balanced together
    and reported together. ``options`` go to the loader as keyword arguments. ``weight`` scales
    the source's share of the draws in an epoch (1 = its share of the rows).
    """

    path: str
    format: str = "rsna"
    source: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0

    @property
    def source_name(self) -> str:
        return self.source or Path(self.path).resolve().name

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "format": self.format, "source": self.source_name,
             "options": dict(self.options)}
        if self.weight != 1.0:
            d["weight"] = self.weight
        return d

    @classmethod
    def parse(cls, text: str, default_format: str = "rsna") -> DataSpec:
        """Parse ``[FORMAT:]DIR`` as given to ``ichrt train --data``."""
        head, sep, tail = text.partition(":")
        if sep and head in FORMATS:
            return cls(path=tail, format=head)
        return cls(path=text, format=default_format)


def loader(fmt: str) -> Callable[..., Iterable[Sample]]:
    """The loader function registered for a format name."""
    target = FORMATS.get(fmt)
    if target is None:
        raise TrainingDataError(f"unknown data format {fmt!r}; known: {', '.join(sorted(FORMATS))}")
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def iter_spec(spec: DataSpec) -> Iterator[Sample]:
    """Samples of one data spec, with ``source`` set to the spec's source name."""
    path = Path(spec.path)
    if not path.is_dir():
        raise TrainingDataError(f"{path}: data folder not found")
    for sample in loader(spec.format)(path, **dict(spec.options)):
        sample.source = spec.source_name
        yield sample


# -- RSNA 2019 layout -------------------------------------------------------------------------

def _find_one(root: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (root / name).exists():
            return root / name
    raise TrainingDataError(f"{root}: no {what} found (looked for {', '.join(names)})")


def _boxes(boxes: list) -> list[Box]:
    """rsna_layout boxes (x, y, width, height) as half-open pixel boxes (y0, x0, y1, x1, label)."""
    return [(math.floor(b.y), math.floor(b.x), math.ceil(b.y + b.height),
             math.ceil(b.x + b.width), b.label) for b in boxes]


def iter_rsna(
    root: str | Path,
    group_by: str = "study",
    limit: int | None = None,
    rejected: list[tuple[str, str]] | None = None,
) -> Iterator[Sample]:
    """Samples from the RSNA 2019 layout (Kaggle's, or the phantom generator's output).

    Labels come from ``stage_2_train.csv`` (``stage_1_train.csv`` as fallback); slices without a
    label row are skipped and counted. Masks (``masks/ID_*.npz``, union of the subtypes; a slice
    without a file is empty when the folder exists) and boxes (``boxes.csv``, or a BHX-style file
    keyed by SOPInstanceUID) are attached when present.
    Groups: ``"study"`` takes the study of ``studies.csv`` when present, else the file's
    StudyInstanceUID; ``"patient"`` takes PatientID (falling back to the study). Files the
    runtime's ingest rejects are skipped, logged with their reason, and appended to ``rejected``
    as (path, reason).
    """
    from ichrt.runtime import rsna_layout as layout
    from ichrt.runtime.dicom import IngestError, read_slice

    if group_by not in ("study", "patient"):
        raise ValueError(f"group_by must be 'study' or 'patient', got {group_by!r}")
    root = Path(root)
    labels_csv = _find_one(root, (layout.LABELS_FILE, "stage_1_train.csv"), "labels CSV")
    image_dir = _find_one(root, (layout.IMAGES_DIR, "stage_1_train_images",
                                 "stage_2_train_images"), "image folder")
    labels = layout.read_labels_csv(labels_csv)
    study_of = {}
    if (root / layout.STUDIES_FILE).is_file():
        study_of = {image: study for study, images in
                    layout.read_studies_csv(root / layout.STUDIES_FILE).items()
                    for image in images}
    boxes = {}
    if (root / layout.BOXES_FILE).is_file():
        boxes = layout.read_boxes_csv(root / layout.BOXES_FILE)
    has_masks = (root / layout.MASKS_DIR).is_dir()
    files = sorted(image_dir.glob("*.dcm"))
    if not files:
        raise TrainingDataError(f"{image_dir}: no .dcm files")
    unlabeled = bad = count = 0
    for path in files:
        if limit is not None and count >= limit:
            break
        lab = labels.get(path.stem)
        if lab is None:
            unlabeled += 1
            continue
        try:
            sl = read_slice(path)
        except IngestError as exc:
            bad += 1
            log.warning("%s: skipped: %s", path.name, exc.reason)
            if rejected is not None:
                rejected.append((str(path), exc.reason))
            continue
        ident = sl.identity
        group = study_of.get(path.stem) or ident.study_uid
        if group_by == "patient" and ident.patient_id:
            group = ident.patient_id
        mask = None
        if has_masks:  # the generator writes masks of positive slices only: others are empty
            mask_path = root / layout.MASKS_DIR / f"{path.stem}.npz"
            mask = (layout.read_mask_npz(mask_path).any(axis=0) if mask_path.is_file()
                    else np.zeros(sl.hu.shape, bool))
        count += 1
        yield Sample(
            hu=np.asarray(sl.hu, np.float32),
            labels=np.asarray(lab, np.float32),
            mask=mask,
            boxes=_boxes(boxes.get(path.stem) or boxes.get(ident.sop_uid) or []),
            group=group or path.stem,
            source=root.name,
            id=path.stem,
        )
    if unlabeled or bad:
        log.warning("%s: %d slices without labels and %d unreadable files skipped",
                    root, unlabeled, bad)


def load_rsna(root: str | Path, **options: Any) -> list[Sample]:
    """All samples of an RSNA-layout folder (see :func:`iter_rsna`)."""
    return list(iter_rsna(root, **options))


# -- ImageFolder layout (8-bit images) ---------------------------------------------------------

def gray8_to_hu(
    image: np.ndarray,
    windows: tuple[tuple[float, float], ...] = (BRAIN_WINDOW,),
    margin: int = 3,
) -> np.ndarray:
    """Map an 8-bit windowed image back to HU.

    ``image`` is (H, W) or (H, W, C) uint8 with one window (level, width) per channel; a gray
    image uses the first window. Each pixel takes the inverse
    (:func:`~ichrt.runtime.pictures.hu_from_gray8`) of the narrowest window in which it is not
    saturated (``margin`` gray levels from 0 and 255 count as saturated, for JPEG noise),
    so a three-window image of the seed recovers HU from brain level up to bone. Where every
    channel saturates it takes the widest window's edge: what the 8-bit export threw away is not
    invented (a brain-window image cannot tell CSF from air).
    """
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[:, :, None]
    n = min(img.shape[2], len(windows))
    widest_first = sorted(range(n), key=lambda c: windows[c][1], reverse=True)
    hu = np.empty(img.shape[:2], np.float32)
    for i, c in enumerate(widest_first):
        level, width = windows[c]
        v = img[:, :, c]
        value = hu_from_gray8(v, level, width)
        if i == 0:
            hu[:] = value
        else:
            free = (v > margin) & (v < 255 - margin)
            hu[free] = value[free]
    return hu


def _is_gray(img: np.ndarray) -> bool:
    return img.ndim == 2 or bool(
        np.array_equal(img[:, :, 0], img[:, :, 1]) and np.array_equal(img[:, :, 0], img[:, :, 2])
    )


def iter_imagefolder(
    root: str | Path,
    classes: Mapping[str, float] | None = None,
    gray_window: tuple[float, float] = BRAIN_WINDOW,
    color_windows: tuple[tuple[float, float], ...] = DEFAULT_WINDOWS,
    limit: int | None = None,
) -> Iterator[Sample]:
    """Samples from one folder per class of 8-bit images (the seed's ``hemorrhage/`` and
    ``no_hemorrhage/`` by default; ``classes`` maps folder name -> ``any`` label).

    Gray images are mapped back with ``gray_window``; colour images whose channels differ are
    taken as the seed's three-window pictures (``color_windows`` per channel). Only ``any`` is
    known; subtype labels are NaN. Each image is its own group.
    """
    from PIL import Image

    root = Path(root)
    classes = dict(classes or DEFAULT_CLASSES)
    present = {d.name for d in root.iterdir() if d.is_dir()} if root.is_dir() else set()
    missing = [name for name in classes if name not in present]
    if missing:
        raise TrainingDataError(
            f"{root}: missing class folder(s) {missing}; found {sorted(present)}")
    count = 0
    for name, value in classes.items():
        for path in sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in
                           IMAGE_SUFFIXES):
            if limit is not None and count >= limit:
                return
            try:
                with Image.open(path) as im:
                    img = np.asarray(im.convert("L") if im.mode in ("L", "I;16", "P") else
                                     im.convert("RGB"))
            except OSError as exc:
                log.warning("%s: skipped: not a readable image (%s)", path.name, exc)
                continue
            gray = _is_gray(img)
            hu = gray8_to_hu(img[:, :, 0] if gray and img.ndim == 3 else img,
                             (gray_window,) if gray else color_windows)
            rel = path.relative_to(root).as_posix()
            count += 1
            yield Sample(hu=hu, labels=make_labels(value), group=rel, source=root.name, id=rel)


def load_imagefolder(root: str | Path, **options: Any) -> list[Sample]:
    """All samples of an ImageFolder layout (see :func:`iter_imagefolder`)."""
    return list(iter_imagefolder(root, **options))


def class_mapping(spec: DataSpec) -> dict[str, dict[str, float]] | None:
    """The folder -> labels mapping of an ImageFolder spec (saved beside the model), else None."""
    if spec.format != "imagefolder":
        return None
    classes = spec.options.get("classes") or DEFAULT_CLASSES
    return {name: {LABELS[0]: float(v)} for name, v in classes.items()}
