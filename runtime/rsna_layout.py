"""Read and write the files of the RSNA 2019 Kaggle layout, torch-free.

``stage_2_train.csv`` holds one row per image and subtype (``ID_<id>_<subtype>,Label``),
``stage_2_train/ID_<id>.dcm`` the slices. The phantom generator adds ``masks/ID_<id>.npz`` (a
(5, H, W) bool stack in LABELS[1:] order under the key ``masks``), ``boxes.csv`` (one box per
lesion component and slice, BHX-style) and ``studies.csv`` (which images form a study, for
grouped splits). Training, calibration and evaluation read labels through this module.
"""

from __future__ import annotations

import ast
import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ichrt.runtime.contract import LABELS

LABELS_FILE = "stage_2_train.csv"
IMAGES_DIR = "stage_2_train"
MASKS_DIR = "masks"
BOXES_FILE = "boxes.csv"
STUDIES_FILE = "studies.csv"
#: Row order of a Kaggle stage_2_train.csv: the five subtypes, then any.
KAGGLE_ORDER: tuple[str, ...] = (*LABELS[1:], LABELS[0])
BOX_COLUMNS = ("image_id", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "x", "y",
               "width", "height", "labelName", "data", "labelType")
STUDY_COLUMNS = ("study_id", "n_slices", "positive", "subtypes", "image_ids", "preset", "seed",
                 "size", "pixel_spacing", "slice_thickness")


class LayoutError(ValueError):
    """A layout file that cannot be read; the message names the file and the reason."""


def write_labels_csv(path: str | Path, labels: Mapping[str, Sequence[float]]) -> Path:
    """Write ``{image_id: labels in LABELS order}`` as a Kaggle stage_2_train.csv."""
    path = Path(path)
    index = {name: k for k, name in enumerate(LABELS)}
    with path.open("w", newline="") as f:
        f.write("ID,Label\n")
        for image_id, values in labels.items():
            if len(values) != len(LABELS):
                raise ValueError(f"{image_id}: expected {len(LABELS)} labels, got {len(values)}")
            for name in KAGGLE_ORDER:
                f.write(f"{image_id}_{name},{_label_text(values[index[name]])}\n")
    return path


def _label_text(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return ""
    return str(int(value)) if value.is_integer() else repr(value)


def read_labels_csv(path: str | Path) -> dict[str, np.ndarray]:
    """``{image_id: float32 (6,) in LABELS order}``; subtypes without a row (or an empty label)
    are NaN (unknown). Raises :class:`LayoutError` naming the file and line on bad rows."""
    path = Path(path)
    index = {name: k for k, name in enumerate(LABELS)}
    out: dict[str, np.ndarray] = {}
    try:
        f = path.open(newline="")
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read labels ({exc.strerror or exc})") from None
    with f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise LayoutError(f"{path}: not a stage_2_train.csv (header must be 'ID,Label')")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise LayoutError(f"{path}:{line}: expected 'ID_<id>_<subtype>,Label'")
            image_id, _, subtype = row[0].strip().rpartition("_")
            if subtype not in index or not image_id:
                raise LayoutError(f"{path}:{line}: unknown subtype in {row[0]!r}")
            try:
                value = float(row[1]) if row[1].strip() else math.nan
            except ValueError:
                raise LayoutError(f"{path}:{line}: label is not a number: {row[1]!r}") from None
            labels = out.get(image_id)
            if labels is None:
                labels = out[image_id] = np.full(len(LABELS), np.nan, np.float32)
            labels[index[subtype]] = value
    return out


@dataclass(frozen=True)
class Box:
    """A lesion box on one image (pixels: x = column, y = row of the top-left corner)."""

    image_id: str
    x: float
    y: float
    width: float
    height: float
    #: subtype name in LABELS (lower case).
    label: str
    sop_uid: str = ""
    series_uid: str = ""
    study_uid: str = ""


def write_boxes_csv(path: str | Path, boxes: Iterable[Box]) -> Path:
    """Write boxes with BHX's columns (SOPInstanceUID ... data, labelName) plus image_id and
    plain x/y/width/height columns."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BOX_COLUMNS)
        for b in boxes:
            data = {"x": b.x, "y": b.y, "width": b.width, "height": b.height}
            writer.writerow([b.image_id, b.sop_uid, b.series_uid, b.study_uid, b.x, b.y, b.width,
                             b.height, b.label.capitalize(), repr(data), "synthetic"])
    return path


def read_boxes_csv(path: str | Path) -> dict[str, list[Box]]:
    """Boxes by image: this module's boxes.csv (keyed by image_id) or a BHX / realct gt.csv
    (keyed by SOPInstanceUID, box in the ``data`` column)."""
    path = Path(path)
    out: dict[str, list[Box]] = {}
    try:
        f = path.open(newline="")
    except OSError as exc:
        raise LayoutError(f"{path}: cannot read boxes ({exc.strerror or exc})") from None
    with f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            key = row.get("image_id") or row.get("SOPInstanceUID")
            if not key:
                raise LayoutError(f"{path}:{line}: no image_id or SOPInstanceUID")
            try:
                if row.get("x"):
                    x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                else:
                    data = ast.literal_eval(row["data"])
                    x, y, w, h = (float(data[k]) for k in ("x", "y", "width", "height"))
            except (KeyError, ValueError, SyntaxError, TypeError):
                raise LayoutError(f"{path}:{line}: cannot read the box coordinates") from None
            out.setdefault(key, []).append(Box(
                image_id=key, x=x, y=y, width=w, height=h,
                label=(row.get("labelName") or "").strip().lower(),
                sop_uid=row.get("SOPInstanceUID") or "", series_uid=row.get("SeriesInstanceUID") or "",
                study_uid=row.get("StudyInstanceUID") or ""))
    return out


def read_mask_npz(path: str | Path) -> np.ndarray:
    """The (5, H, W) bool subtype masks of one image (LABELS[1:] order)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            masks = np.asarray(data["masks"], bool)
    except (OSError, KeyError, ValueError) as exc:
        raise LayoutError(f"{path}: not a phantom mask file ({exc})") from None
    if masks.ndim != 3 or masks.shape[0] != len(LABELS) - 1:
        raise LayoutError(f"{path}: masks have shape {masks.shape}, expected (5, H, W)")
    return masks


def write_studies_csv(path: str | Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Write one row per study (STUDY_COLUMNS); ``image_ids`` and ``subtypes`` are lists."""
    path = Path(path)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=STUDY_COLUMNS)
        writer.writeheader()
        for row in rows:
            out = dict(row)
            out["image_ids"] = " ".join(row["image_ids"])  # type: ignore[arg-type]
            out["subtypes"] = ";".join(row["subtypes"])  # type: ignore[arg-type]
            writer.writerow(out)
    return path


def read_studies_csv(path: str | Path) -> dict[str, list[str]]:
    """``{study_id: image ids in slice order}`` from a studies.csv (for grouped splits)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            return {row["study_id"]: row["image_ids"].split() for row in csv.DictReader(f)}
    except (OSError, KeyError) as exc:
        raise LayoutError(f"{path}: cannot read studies ({exc})") from None
