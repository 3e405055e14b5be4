"""Loaders for the real, publisher-windowed head-CT images of ``shared/realtrain/``.

Four public sources (``ctich``, ``roboflow``, ``bhsd``, ``rsna200``; licences and credit in that
folder's README) become :class:`~ichrt.export.samples.Sample` objects like every other training
source: a slice in HU, six labels in :data:`~ichrt.runtime.contract.LABELS` order (NaN where the
source does not say), a hemorrhage mask or lesion boxes where given, and a group that a split
must never cut. Their 8-bit gray is mapped back to HU by :class:`GrayWindow` (background to air,
saturated pixels to :data:`BONE_HU`); the windows of Roboflow and BHSD are estimated by
:func:`estimate_window`.

Each source's layout, labels, orientation, groups and window, how the windows were estimated and
how accurate that is, and what identifies each source in the image: ``docs/sources.md``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.export.samples import Box, Sample, make_labels
from ichrt.runtime.contract import SUBTYPES
from ichrt.runtime.framing import border_connected
from ichrt.runtime.pictures import hu_from_gray8

#: HU given to the background outside the head.
AIR_HU = -1000.0
#: HU given to saturated (gray 255) pixels: dense bone (why: docs/sources.md).
BONE_HU = 1000.0
#: Roboflow: slices of one series whose numbers differ by at most this belong to one scan.
SCAN_GAP = 30
#: Brain parenchyma statistics in HU (median over ct-ich slices of :func:`tissue_stats`).
BRAIN_MODE_HU = 38.8
BRAIN_IQR_HU = 9.9

#: ct-ich ``labels.csv`` column -> label name.
CTICH_COLUMNS: dict[str, str] = {
    "Epidural": "epidural",
    "Intraparenchymal": "intraparenchymal",
    "Intraventricular": "intraventricular",
    "Subarachnoid": "subarachnoid",
    "Subdural": "subdural",
}
#: Roboflow class abbreviation (``data.yaml`` names) -> label name.
ROBOFLOW_CLASSES: dict[str, str] = {
    "EDH": "epidural",
    "IPH": "intraparenchymal",
    "IVH": "intraventricular",
    "SAH": "subarachnoid",
    "SDH": "subdural",
}
#: BHSD mask colour (R, G, B channels on/off) -> label name.
BHSD_COLOURS: dict[tuple[int, int, int], str] = {
    (1, 0, 0): "epidural",
    (0, 0, 1): "intraparenchymal",
    (1, 1, 0): "intraventricular",
    (0, 1, 1): "subarachnoid",
    (0, 1, 0): "subdural",
}
#: BHSD slices stored upside down (posterior up), found by inspecting every slice.
BHSD_UPSIDE_DOWN = frozenset({
    "158019", "159015", "159019", "161021", "162015", "162018", "163012", "165022", "168037",
    "173006", "177017", "177021", "185018", "195020", "196016", "204016", "205011", "205014",
    "205015", "208007", "208010", "208015", "209007", "210018", "210021", "212014", "214010",
    "214018", "216016", "217027"
})
#: RSNA 2019 folder -> labels.
RSNA_FOLDERS: dict[str, np.ndarray] = {
    "normal": make_labels(0.0, **{name: 0.0 for name in SUBTYPES}),
    "intraparenchymal": make_labels(1.0, intraparenchymal=1.0),
    "unlabeled": make_labels(),
}


class SourceError(ValueError):
    """A source folder or file without the layout or content its loader needs."""


@dataclass(frozen=True)
class GrayWindow:
    """How a source's 8-bit gray maps back to HU.

    Attributes:
        level, width: the publisher's window in HU.
        air_max: gray values up to this, connected to the border, are the background (air).
        bone_min: gray values from this up are saturated bone.
    """

    level: float
    width: float
    air_max: int = 0
    bone_min: int = 255

    @property
    def low(self) -> float:
        """The HU of gray 0."""
        return self.level - self.width / 2.0

    def gray_of(self, hu: float) -> float:
        """The gray value (unrounded) that a HU value takes in this window."""
        return (hu - self.low) / self.width * 255.0

    def to_hu(self, gray: np.ndarray, bone_hu: float = BONE_HU) -> np.ndarray:
        """float32 HU of a uint8 (H, W) image (the mapping: docs/sources.md)."""
        gray = np.asarray(gray)
        if gray.dtype != np.uint8 or gray.ndim != 2:
            raise ValueError(f"expected a uint8 (H, W) image, got {gray.dtype} {gray.shape}")
        hu = hu_from_gray8(gray, self.low + self.width / 2.0, self.width)
        hu[gray >= self.bone_min] = bone_hu
        hu[border_connected(gray <= self.air_max)] = AIR_HU
        return hu


@dataclass(frozen=True)
class Entry:
    """One image of a source before decoding: its files and what the source says about it.

    ``yolo`` holds normalized YOLO boxes (label, cx, cy, w, h) in the stored image's frame;
    ``turn`` (quarter turns counter-clockwise) and then ``flip`` (top to bottom) bring the
    stored image to the common orientation, anterior up.
    """

    id: str
    group: str
    labels: np.ndarray
    image: Path
    mask: Path | None = None
    yolo: tuple[tuple[str, float, float, float, float], ...] = ()
    turn: int = 0
    flip: bool = False


@dataclass(frozen=True)
class Source:
    """A real data source: its gray mapping, how to list its images and how to read its masks."""

    name: str
    window: GrayWindow
    entries: Callable[..., list[Entry]]
    read_mask: Callable[[Path], np.ndarray] | None = None


# -- file reading ------------------------------------------------------------------------------

def read_gray(path: Path) -> np.ndarray:
    """A uint8 (H, W) image; an RGB file must be gray (equal channels)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB") if im.mode not in ("L", "RGB") else im)
    except OSError as exc:
        raise SourceError(f"{path}: not a readable image ({exc})") from exc
    if arr.ndim == 3:
        if not (np.array_equal(arr[..., 0], arr[..., 1]) and
                np.array_equal(arr[..., 0], arr[..., 2])):
            raise SourceError(f"{path}: colour image where a gray CT slice was expected")
        arr = arr[..., 0]
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_binary_mask(path: Path) -> np.ndarray:
    """A bool (H, W) mask from a gray PNG (nonzero = lesion)."""
    return read_gray(path) > 0


def bhsd_subtype_masks(rgb: np.ndarray, where: str = "mask") -> np.ndarray:
    """bool (5, H, W) per-subtype masks (SUBTYPES order) of a BHSD colour-coded mask.

    Each channel is on at >= 128, which absorbs anti-aliased edges toward black; a pixel whose
    on/off pattern is not one of :data:`BHSD_COLOURS` (e.g. magenta, white) is an error naming
    ``where``.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SourceError(f"{where}: expected an RGB mask, got shape {rgb.shape}")
    on = rgb >= 128
    code = on[..., 0].astype(np.uint8) * 4 + on[..., 1] * 2 + on[..., 2]
    masks = np.zeros((len(SUBTYPES),) + rgb.shape[:2], bool)
    known = code == 0
    for (r, g, b), name in BHSD_COLOURS.items():
        hit = code == r * 4 + g * 2 + b
        masks[SUBTYPES.index(name)] = hit
        known |= hit
    if not known.all():
        bad = sorted({tuple(int(v) for v in px) for px in rgb[~known][:1000]})[:5]
        raise SourceError(f"{where}: {int((~known).sum())} mask pixels of unknown colour, e.g. {bad}")
    return masks


def read_rgb(path: Path) -> np.ndarray:
    """A uint8 (H, W, 3) image (e.g. a colour-coded mask)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise SourceError(f"{path}: not a readable mask image ({exc})") from exc


def read_bhsd_mask(path: Path) -> np.ndarray:
    """The union hemorrhage mask of a BHSD colour-coded mask file."""
    return bhsd_subtype_masks(read_rgb(path), str(path)).any(axis=0)


# -- listing each source -----------------------------------------------------------------------

def _need_dir(path: Path) -> Path:
    if not path.is_dir():
        raise SourceError(f"{path}: folder not found")
    return path


def ctich_entries(root: Path) -> list[Entry]:
    """ct-ich slices from ``labels.csv`` (sorted by patient and slice)."""
    table = Path(root) / "labels.csv"
    try:
        with open(table, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise SourceError(f"{table}: cannot read ({exc.strerror or exc})") from exc
    needed = {"index", "PatientNumber", "SliceNumber", "No_Hemorrhage", *CTICH_COLUMNS}
    missing = needed - set(rows[0] if rows else ())
    if missing:
        raise SourceError(f"{table}: missing columns {sorted(missing)}")
    entries = []
    for line, row in enumerate(rows, start=2):
        try:
            subtypes = {name: float(row[col]) for col, name in CTICH_COLUMNS.items()}
            positive = 1.0 - float(row["No_Hemorrhage"])
            order = (int(row["PatientNumber"]), int(row["SliceNumber"]))
        except ValueError as exc:
            raise SourceError(f"{table}, line {line}: not a number ({exc})") from exc
        if positive != max(subtypes.values()):
            raise SourceError(f"{table}, line {line}: No_Hemorrhage contradicts the subtypes")
        index = row["index"]
        entries.append((order, Entry(
            id=index, group=row["PatientNumber"], labels=make_labels(positive, **subtypes),
            image=root / "image" / f"{index}.png", mask=root / "mask" / f"{index}.png", turn=1,
        )))
    return [e for _, e in sorted(entries, key=lambda item: item[0])]


def _yolo_names(data_yaml: Path) -> list[str]:
    """The class names of a YOLO ``data.yaml`` (the one-line ``names: [...]`` form)."""
    try:
        text = data_yaml.read_text()
    except OSError as exc:
        raise SourceError(f"{data_yaml}: cannot read ({exc.strerror or exc})") from exc
    found = re.search(r"^names:\s*\[(.*?)\]", text, re.MULTILINE)
    if not found:
        raise SourceError(f"{data_yaml}: no 'names: [...]' line")
    return [n.strip().strip("'\"") for n in found.group(1).split(",") if n.strip()]


def _read_yolo(path: Path, names: list[str]) -> tuple[tuple[str, float, float, float, float], ...]:
    """Boxes (label, cx, cy, w, h) of a YOLO label file; a missing file means no box (YOLO)."""
    if not path.exists():
        return ()
    boxes = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            cls, coords = int(parts[0]), [float(v) for v in parts[1:]]
        except ValueError as exc:
            raise SourceError(f"{path}, line {line_no}: not a YOLO box ({exc})") from exc
        if len(coords) != 4 or not 0 <= cls < len(names):
            raise SourceError(f"{path}, line {line_no}: expected 'class cx cy w h' with a class "
                              f"below {len(names)}")
        if not all(-1e-3 <= v <= 1 + 1e-3 for v in coords):
            raise SourceError(f"{path}, line {line_no}: coordinates outside [0, 1]")
        boxes.append((ROBOFLOW_CLASSES[names[cls]], *coords))
    return tuple(boxes)


def scan_groups(names: list[str], gap: int) -> dict[str, str]:
    """Source-image name -> scan group: ``<series>_<slice>`` names whose slice numbers lie within
    ``gap`` of each other in one series form one group; other names are their own group."""
    series: dict[str, list[tuple[int, str]]] = {}
    out = {}
    for name in names:
        found = re.fullmatch(r"(.+)_(\d+)", name)
        if found:
            series.setdefault(found.group(1), []).append((int(found.group(2)), name))
        else:
            out[name] = name
    for prefix, members in series.items():
        members.sort()
        start = previous = members[0][0]
        for number, name in members:
            if number - previous > gap:
                start = number
            out[name] = f"{prefix}_{start}"
            previous = number
    return out


def roboflow_entries(
    root: Path, group_by: str = "scan", dedupe: bool = False, scan_gap: int = SCAN_GAP
) -> list[Entry]:
    """Roboflow images of ``train/``, ``valid/`` and ``test/`` with their YOLO boxes.

    ``group_by``: ``"scan"`` (default, neighbouring slices of a series together) or ``"image"``
    (the source image, the name before ``_jpg.rf.``). ``dedupe`` keeps one file per source image.
    """
    if group_by not in ("scan", "image"):
        raise ValueError(f"group_by must be 'scan' or 'image', got {group_by!r}")
    names = _yolo_names(Path(root) / "data.yaml")
    unknown = [n for n in names if n not in ROBOFLOW_CLASSES]
    if unknown:
        raise SourceError(f"{root / 'data.yaml'}: unknown classes {unknown}")
    files = []
    for split in ("train", "valid", "test"):
        images = _need_dir(Path(root) / split / "images")
        files += sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SourceError(f"{root}: no images in train/, valid/ or test/")
    source_name = {p: p.name.split("_jpg.rf.")[0] for p in files}
    groups = (scan_groups(sorted(set(source_name.values())), scan_gap) if group_by == "scan"
              else {n: n for n in source_name.values()})
    entries, seen = [], set()
    for path in files:
        name = source_name[path]
        if dedupe and name in seen:
            continue
        seen.add(name)
        yolo = _read_yolo(path.parent.parent / "labels" / f"{path.stem}.txt", names)
        present = {box[0] for box in yolo}
        labels = make_labels(float(bool(yolo)),
                             **{s: float(s in present) for s in SUBTYPES})
        entries.append(Entry(id=f"{path.parent.parent.name}/{path.stem}", group=groups[name],
                             labels=labels, image=path, yolo=yolo))
    return entries


def bhsd_entries(root: Path) -> list[Entry]:
    """BHSD slices; labels from the colours present in each mask."""
    images = _need_dir(Path(root) / "image")
    entries = []
    for path in sorted(images.glob("*.png")):
        mask = Path(root) / "mask" / path.name
        if not mask.exists():
            raise SourceError(f"{path}: no mask file {mask}")
        present = bhsd_subtype_masks(read_rgb(mask), str(mask)).any(axis=(1, 2))
        labels = make_labels(float(present.any()),
                             **{s: float(v) for s, v in zip(SUBTYPES, present)})
        case = re.fullmatch(r"(\d{3})\d{3}", path.stem)
        entries.append(Entry(id=path.stem, group=case.group(1) if case else path.stem,
                             labels=labels, image=path, mask=mask,
                             flip=path.stem in BHSD_UPSIDE_DOWN))
    if not entries:
        raise SourceError(f"{images}: no PNG images")
    return entries


def rsna200_entries(root: Path, unlabeled: bool = False) -> list[Entry]:
    """RSNA 2019 slices by folder (``unlabeled/`` only when asked; its labels are all NaN)."""
    entries = []
    for folder, labels in RSNA_FOLDERS.items():
        if folder == "unlabeled" and not unlabeled:
            continue
        for path in sorted(_need_dir(Path(root) / folder).glob("*.png")):
            entries.append(Entry(id=path.stem, group=path.stem, labels=labels, image=path))
    return entries


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source("ctich", GrayWindow(40.0, 120.0), ctich_entries, read_binary_mask),
        # Roboflow and BHSD windows are estimates (see docs/sources.md).
        Source("roboflow", GrayWindow(40.0, 120.0, air_max=8, bone_min=250), roboflow_entries),
        Source("bhsd", GrayWindow(127.5, 255.0), bhsd_entries, read_bhsd_mask),
        Source("rsna200", GrayWindow(40.0, 80.0), rsna200_entries),
    )
}


# -- decoding ----------------------------------------------------------------------------------

def _pixel_boxes(entry: Entry, height: int, width: int) -> list[Box]:
    """The entry's YOLO boxes in pixels of the stored image, half-open and clipped."""
    out = []
    for label, cx, cy, w, h in entry.yolo:
        y0 = max(0, int(np.floor((cy - h / 2) * height)))
        x0 = max(0, int(np.floor((cx - w / 2) * width)))
        y1 = min(height, int(np.ceil((cy + h / 2) * height)))
        x1 = min(width, int(np.ceil((cx + w / 2) * width)))
        out.append((y0, x0, y1, x1, label))
    return out


def orient_box(box: Box, shape: tuple[int, int], turn: int, flip: bool) -> Box:
    """A box of an image of ``shape`` after ``np.rot90(k=turn)`` and then a top-bottom flip."""
    y0, x0, y1, x1, label = box
    h, w = shape
    for _ in range(turn % 4):
        y0, x0, y1, x1 = w - x1, y0, w - x0, y1
        h, w = w, h
    if flip:
        y0, y1 = h - y1, h - y0
    return (y0, x0, y1, x1, label)


def orient(image: np.ndarray, turn: int, flip: bool) -> np.ndarray:
    """``image`` turned ``turn`` quarters counter-clockwise, then flipped top to bottom."""
    out = np.rot90(image, k=turn) if turn % 4 else image
    return np.ascontiguousarray(out[::-1] if flip else out)


def _resize(hu: np.ndarray, mask: np.ndarray | None, boxes: list[Box], size: int):
    """Resize a slice to ``size`` x ``size`` (bilinear, antialiased when shrinking), its mask
    (nearest) and its boxes (scaled outward)."""
    from PIL import Image

    h, w = hu.shape
    hu = np.asarray(Image.fromarray(hu, mode="F").resize((size, size), Image.BILINEAR))
    if mask is not None:
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
            (size, size), Image.NEAREST)) > 0
    sy, sx = size / h, size / w
    boxes = [(int(np.floor(y0 * sy)), int(np.floor(x0 * sx)), int(np.ceil(y1 * sy)),
              int(np.ceil(x1 * sx)), label) for y0, x0, y1, x1, label in boxes]
    return np.ascontiguousarray(hu, np.float32), mask, boxes


def read_sample(
    source: Source | str, entry: Entry, size: int | None = None, bone_hu: float = BONE_HU
) -> Sample:
    """Decode one entry into a :class:`Sample` (HU, oriented anterior-up, optionally resized)."""
    src = SOURCES[source] if isinstance(source, str) else source
    gray = read_gray(entry.image)
    hu = orient(src.window.to_hu(gray, bone_hu), entry.turn, entry.flip)
    mask = None
    if entry.mask is not None and src.read_mask is not None:
        mask = src.read_mask(entry.mask)
        if mask.shape != gray.shape:
            raise SourceError(f"{entry.mask}: mask shape {mask.shape} differs from the image's "
                              f"{gray.shape}")
        mask = orient(mask, entry.turn, entry.flip)
    boxes = [orient_box(b, gray.shape, entry.turn, entry.flip)
             for b in _pixel_boxes(entry, *gray.shape)]
    if size is not None:
        hu, mask, boxes = _resize(hu, mask, boxes, size)
    return Sample(hu=hu, labels=entry.labels.copy(), mask=mask, boxes=boxes, group=entry.group,
                  source=src.name, id=entry.id)


def source(name: str) -> Source:
    """The registered source called ``name``."""
    try:
        return SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; known: {', '.join(SOURCES)}") from None


def list_entries(name: str, root: str | Path, **options: Any) -> list[Entry]:
    """The entries of source ``name`` under ``root`` (cheap: reads labels, not images)."""
    return source(name).entries(Path(root), **options)


def iter_source(
    name: str,
    root: str | Path,
    size: int | None = None,
    limit: int | None = None,
    bone_hu: float = BONE_HU,
    **options: Any,
) -> Iterator[Sample]:
    """Samples of source ``name`` one at a time (``options`` go to its entry lister).

    ``size`` resizes every slice to ``size`` x ``size`` (a full ct-ich at 512 is ~2 GB of
    float32); ``limit`` stops after that many samples.
    """
    src = source(name)
    for entry in list_entries(name, root, **options)[:limit]:
        yield read_sample(src, entry, size, bone_hu)


def load_source(name: str, root: str | Path, **options: Any) -> list[Sample]:
    """All samples of source ``name`` (see :func:`iter_source`)."""
    return list(iter_source(name, root, **options))


def iter_ctich(root: str | Path, **options: Any) -> Iterator[Sample]:
    """ct-ich samples (see :func:`iter_source`)."""
    return iter_source("ctich", root, **options)


def iter_roboflow(root: str | Path, **options: Any) -> Iterator[Sample]:
    """Roboflow samples; options ``group_by``, ``dedupe``, ``scan_gap`` (see
    :func:`roboflow_entries`)."""
    return iter_source("roboflow", root, **options)


def iter_bhsd(root: str | Path, **options: Any) -> Iterator[Sample]:
    """BHSD samples (see :func:`iter_source`)."""
    return iter_source("bhsd", root, **options)


def iter_rsna200(root: str | Path, **options: Any) -> Iterator[Sample]:
    """RSNA 2019 samples; option ``unlabeled`` (see :func:`rsna200_entries`)."""
    return iter_source("rsna200", root, **options)


def load_ctich(root: str | Path, **options: Any) -> list[Sample]:
    """All ct-ich samples."""
    return load_source("ctich", root, **options)


def load_roboflow(root: str | Path, **options: Any) -> list[Sample]:
    """All Roboflow samples."""
    return load_source("roboflow", root, **options)


def load_bhsd(root: str | Path, **options: Any) -> list[Sample]:
    """All BHSD samples."""
    return load_source("bhsd", root, **options)


def load_rsna200(root: str | Path, **options: Any) -> list[Sample]:
    """All RSNA 2019 samples (``unlabeled=True`` adds the unlabeled folder)."""
    return load_source("rsna200", root, **options)


# -- window estimation -------------------------------------------------------------------------

def _erode(mask: np.ndarray, steps: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(steps):
        core = out.copy()
        core[1:] &= out[:-1]
        core[:-1] &= out[1:]
        core[:, 1:] &= out[:, :-1]
        core[:, :-1] &= out[:, 1:]
        core[[0, -1], :] = False
        core[:, [0, -1]] = False
        out = core
    return out


def tissue_stats(gray: np.ndarray, bone_min: int = 250, min_pixels: int = 2000
                 ) -> tuple[float, float] | None:
    """(mode, interquartile range) of the gray values enclosed by the skull, or None.

    The skull is gray >= ``bone_min``; what it encloses (not connected to the border), eroded by
    4 pixels away from bone, is brain, CSF and lesions, where brain dominates. The mode comes from
    the histogram of gray 1..bone_min-1 smoothed over 5 levels. None when fewer than
    ``min_pixels`` are enclosed (skull base, vertex, open skull).
    """
    gray = np.asarray(gray)
    skull = gray >= bone_min
    inside = _erode(~skull & ~border_connected(~skull), 4)
    values = gray[inside]
    values = values[(values > 0) & (values < bone_min)]
    if values.size < min_pixels:
        return None
    hist = np.convolve(np.bincount(values, minlength=256), np.ones(5) / 5.0, mode="same")
    mode = float(np.argmax(hist[5:bone_min]) + 5)
    q1, q3 = np.percentile(values, [25, 75])
    return mode, float(q3 - q1)


def estimate_window(grays: list[np.ndarray], bone_min: int = 250) -> tuple[float, float]:
    """(level, width) in HU of the window that made a set of 8-bit slices of one source.

    Uses the medians of :func:`tissue_stats` over the slices and the brain constants
    :data:`BRAIN_MODE_HU` and :data:`BRAIN_IQR_HU` (docs/sources.md gives its accuracy).
    """
    stats = [s for s in (tissue_stats(g, bone_min) for g in grays) if s is not None]
    if not stats:
        raise ValueError("no slice shows enough brain enclosed by skull to estimate a window")
    mode, iqr = np.median(np.asarray(stats), axis=0)
    width = 255.0 * BRAIN_IQR_HU / max(float(iqr), 1.0)
    level = BRAIN_MODE_HU - width * (float(mode) / 255.0 - 0.5)
    return level, width
