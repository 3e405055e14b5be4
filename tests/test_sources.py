"""Loaders of the real training images (export/sources.py), on the real files in shared/."""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from ichrt.export import sources as S
from ichrt.export.splits import grouped_split, leaked_groups
from ichrt.runtime.contract import LABELS, SUBTYPES
from ichrt.runtime.framing import head_boxes
from ichrt.runtime.windowing import centred_boxes


@pytest.fixture(scope="module")
def realtrain(shared_dir: Path) -> Path:
    return shared_dir / "realtrain"


def _entries(realtrain: Path, name: str, **options) -> list[S.Entry]:
    return S.list_entries(name, realtrain / name, **options)


def _labels(entries: list[S.Entry]) -> np.ndarray:
    return np.stack([e.labels for e in entries])


# -- counts, labels, groups --------------------------------------------------------------------

def test_ctich_counts_and_labels_by_column_name(realtrain: Path) -> None:
    entries = _entries(realtrain, "ctich")
    labels = _labels(entries)
    assert len(entries) == 1852
    assert int(labels[:, 0].sum()) == 208
    assert len({e.group for e in entries}) == 50
    assert not np.isnan(labels).any()
    # Every row, read independently of the loader: column -> label position.
    columns = {"Epidural": 1, "Intraparenchymal": 2, "Intraventricular": 3, "Subarachnoid": 4,
               "Subdural": 5}
    by_id = {e.id: e for e in entries}
    with open(realtrain / "ctich" / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            e = by_id[row["index"]]
            assert e.group == row["PatientNumber"]
            assert e.labels[0] == 1 - int(row["No_Hemorrhage"])
            for col, pos in columns.items():
                assert e.labels[pos] == int(row[col]), (row["index"], col)
    per_subtype = dict(zip(SUBTYPES, labels[:, 1:].sum(axis=0).astype(int)))
    assert per_subtype == {"epidural": 118, "intraparenchymal": 30, "intraventricular": 15,
                           "subarachnoid": 4, "subdural": 56}


def test_ctich_masks_present_exactly_where_labelled(realtrain: Path) -> None:
    entries = _entries(realtrain, "ctich")
    has_mask = np.array([S.read_binary_mask(e.mask).any() for e in entries])
    np.testing.assert_array_equal(has_mask, _labels(entries)[:, 0] == 1)


def test_roboflow_counts_groups_and_copies(realtrain: Path) -> None:
    entries = _entries(realtrain, "roboflow", group_by="image")
    assert len(entries) == 833
    assert len({e.group for e in entries}) == 355
    assert sum(not e.yolo for e in entries) == 231
    labels = _labels(entries)
    assert not np.isnan(labels).any()
    np.testing.assert_array_equal(labels[:, 0], [float(bool(e.yolo)) for e in entries])
    np.testing.assert_array_equal(labels[:, 0], labels[:, 1:].max(axis=1))
    # Copies of one source image are pixel-identical with identical labels (what dedupe assumes).
    copies = defaultdict(list)
    for e in entries:
        copies[e.group].append(e)
    triples = [v for v in copies.values() if len(v) == 3][:8]
    assert len(triples) == 8
    for members in triples:
        first = S.read_gray(members[0].image)
        for other in members[1:]:
            np.testing.assert_array_equal(S.read_gray(other.image), first)
            assert other.yolo == members[0].yolo
    deduped = _entries(realtrain, "roboflow", dedupe=True, group_by="image")
    assert len(deduped) == 355 and len({e.group for e in deduped}) == 355


def test_roboflow_scan_groups_merge_whole_source_images(realtrain: Path) -> None:
    by_image = _entries(realtrain, "roboflow", group_by="image")
    by_scan = _entries(realtrain, "roboflow")
    scan_of = defaultdict(set)
    for a, b in zip(by_image, by_scan):
        assert a.id == b.id
        scan_of[a.group].add(b.group)
    assert all(len(v) == 1 for v in scan_of.values())
    assert len({e.group for e in by_scan}) == 41


def test_scan_groups_by_slice_number_gap() -> None:
    names = ["7_3", "7_5", "7_40", "7_41", "12_3", "odd-name"]
    groups = S.scan_groups(names, gap=30)
    assert groups["7_3"] == groups["7_5"] != groups["7_40"] == groups["7_41"]
    assert groups["12_3"] not in (groups["7_3"], groups["7_40"])
    assert groups["odd-name"] == "odd-name"


def test_roboflow_yolo_box_to_pixels(realtrain: Path) -> None:
    # File content: "0 0.79453125 0.64921875 0.05390625 0.14453125" (class 0 = EDH), 640 x 640.
    entry = next(e for e in _entries(realtrain, "roboflow")
                 if e.id == "train/100_15_jpg.rf.65d517514fd6dbc1acbd82421459cb3d")
    sample = S.read_sample("roboflow", entry)
    assert sample.hu.shape == (640, 640)
    assert sample.boxes == [(369, 491, 462, 526, "epidural")]
    expected = np.zeros(6, np.float32)
    expected[[0, 1]] = 1
    np.testing.assert_array_equal(sample.labels, expected)
    assert sample.mask is None


def test_bhsd_counts_labels_and_masks(realtrain: Path) -> None:
    entries = _entries(realtrain, "bhsd")
    labels = _labels(entries)
    assert len(entries) == 72 and labels[:, 0].all()
    assert len({e.group for e in entries}) == 45
    assert dict(zip(SUBTYPES, labels[:, 1:].sum(axis=0).astype(int))) == {
        "epidural": 9, "intraparenchymal": 29, "intraventricular": 34, "subarachnoid": 29,
        "subdural": 27}
    assert sum(e.flip for e in entries) == len(S.BHSD_UPSIDE_DOWN) == 30
    for e in entries[::9]:
        rgb = S.read_rgb(e.mask)
        sample = S.read_sample("bhsd", e)
        np.testing.assert_array_equal(sample.mask, S.orient(rgb.max(axis=2) > 0, 0, e.flip))


def test_bhsd_colour_decoding_with_tolerance() -> None:
    palette = {"epidural": (255, 0, 0), "intraparenchymal": (0, 0, 255),
               "intraventricular": (255, 255, 0), "subarachnoid": (0, 255, 255),
               "subdural": (0, 255, 0)}
    rgb = np.zeros((2, 8, 3), np.uint8)
    for i, colour in enumerate(palette.values()):
        rgb[0, i] = colour
        rgb[1, i] = (np.array(colour) * 0.7).astype(np.uint8)  # anti-aliased toward black
    rgb[1, 6] = (90, 0, 0)  # faint edge: background
    masks = S.bhsd_subtype_masks(rgb)
    for i, name in enumerate(palette):
        k = SUBTYPES.index(name)
        assert masks[k, 0, i] and masks[k, 1, i]
        assert masks[k].sum() == 2
    assert not masks[:, :, 5:].any()
    rgb[0, 7] = (255, 0, 255)  # magenta is not a BHSD colour
    with pytest.raises(S.SourceError, match="unknown colour"):
        S.bhsd_subtype_masks(rgb, "x.png")


def test_rsna200_labels_by_folder(realtrain: Path) -> None:
    entries = _entries(realtrain, "rsna200", unlabeled=True)
    folders = Counter(e.image.parent.name for e in entries)
    assert folders == {"normal": 100, "intraparenchymal": 100, "unlabeled": 100}
    assert len(_entries(realtrain, "rsna200")) == 200
    for e in entries:
        folder = e.image.parent.name
        if folder == "normal":
            np.testing.assert_array_equal(e.labels, np.zeros(6))
        elif folder == "intraparenchymal":
            assert e.labels[0] == 1 and e.labels[LABELS.index("intraparenchymal")] == 1
            assert np.isnan(np.delete(e.labels, [0, 2])).all()
        else:
            assert np.isnan(e.labels).all()
    assert len({e.group for e in entries}) == 300


# -- gray -> HU --------------------------------------------------------------------------------

def test_gray_window_mapping() -> None:
    window = S.GrayWindow(40.0, 120.0)
    gray = np.zeros((7, 7), np.uint8)
    gray[1:6, 1:6] = 255  # skull ring ...
    gray[2:5, 2:5] = 128  # ... around tissue ...
    gray[3, 3] = 0  # ... around a dark pixel inside the head
    hu = window.to_hu(gray)
    assert hu.dtype == np.float32
    assert hu[0, 0] == S.AIR_HU and hu[6, 3] == S.AIR_HU
    assert hu[1, 1] == S.BONE_HU and window.to_hu(gray, bone_hu=700.0)[1, 1] == 700.0
    assert hu[2, 2] == pytest.approx(-20.0 + 128 * 120 / 255, abs=1e-4)
    assert hu[3, 3] == -20.0  # clipped inside the head: the window's lower edge, not air
    assert window.gray_of(40.0) == pytest.approx(127.5)
    with pytest.raises(ValueError, match="uint8"):
        window.to_hu(gray.astype(np.int16))


def test_ctich_gray_levels_sit_on_the_integer_hu_comb_of_40_120(realtrain: Path) -> None:
    window = S.SOURCES["ctich"].window
    used = set()
    for e in _entries(realtrain, "ctich")[::150]:
        used |= set(np.unique(S.read_gray(e.image)).tolist())
    # The export script floors (HU + 20) * 255 / 120: exactly one gray level per integer HU.
    assert used == {math.floor(window.gray_of(h)) for h in range(-20, 101)}


def test_loaded_ctich_slice_maps_known_gray_and_air(realtrain: Path) -> None:
    entry = next(e for e in _entries(realtrain, "ctich") if e.labels[0] == 1)
    gray = S.read_gray(entry.image)
    sample = S.read_sample("ctich", entry)
    turned = np.rot90(gray)  # ct-ich is stored face-right; loaded anterior-up
    assert sample.hu.shape == turned.shape
    mid = turned == 125
    assert mid.any()
    np.testing.assert_allclose(sample.hu[mid], -20.0 + 125 * 120 / 255, atol=1e-4)
    assert sample.hu[0, 0] == S.AIR_HU and sample.hu[-1, -1] == S.AIR_HU
    assert (sample.hu[turned == 255] == S.BONE_HU).all()
    assert sample.mask.shape == turned.shape and sample.mask.any()
    assert sample.group == entry.group and sample.source == "ctich"


@pytest.mark.parametrize("name", ["ctich", "roboflow", "bhsd", "rsna200"])
def test_head_boxes_find_the_head_on_every_source(realtrain: Path, name: str) -> None:
    samples = S.load_source(name, realtrain / name, limit=400)[::40]
    for s in samples:
        h, w = s.hu.shape
        assert s.hu.dtype == np.float32
        assert s.hu.min() == S.AIR_HU and (s.hu > -1000).any()
        if (s.hu > -1000).mean() < 0.05:
            continue  # a sliver of neck or vertex, not a head to frame
        box = head_boxes(s.hu[None])[0]
        assert not np.array_equal(box, centred_boxes(1, h, w)[0])  # not the no-head fallback
        y0, x0, y1, x1 = box
        if s.mask is not None and s.mask.any():
            ys, xs = np.nonzero(s.mask)
            assert y0 <= ys.min() and ys.max() < y1 and x0 <= xs.min() and xs.max() < x1


# -- geometry, options, errors -----------------------------------------------------------------

@pytest.mark.parametrize("turn", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_orient_box_follows_orient(turn: int, flip: bool) -> None:
    shape = (7, 11)
    box = (1, 2, 4, 9, "subdural")
    raster = np.zeros(shape, bool)
    raster[1:4, 2:9] = True
    y0, x0, y1, x1, label = S.orient_box(box, shape, turn, flip)
    turned = S.orient(raster, turn, flip)
    expected = np.zeros(turned.shape, bool)
    expected[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(turned, expected)
    assert label == "subdural"


def test_size_and_limit_keep_geometry_consistent(realtrain: Path) -> None:
    it = S.iter_ctich(realtrain / "ctich", size=64, limit=3)
    assert not isinstance(it, list)
    samples = list(it)
    assert len(samples) == 3 and all(s.hu.shape == (64, 64) for s in samples)
    assert all(s.mask.shape == (64, 64) and s.mask.dtype == bool for s in samples)
    robo = S.load_roboflow(realtrain / "roboflow", size=160, limit=1)[0]
    full = S.load_roboflow(realtrain / "roboflow", limit=1)[0]
    assert robo.hu.shape == (160, 160)
    for (a, b, c, d, lab), (a2, b2, c2, d2, lab2) in zip(full.boxes, robo.boxes):
        assert lab == lab2
        assert a2 == a // 4 and b2 == b // 4 and c2 == -(-c // 4) and d2 == -(-d // 4)


def test_errors_name_the_file(tmp_path: Path, realtrain: Path) -> None:
    with pytest.raises(S.SourceError, match="unknown source"):
        S.list_entries("kaggle", tmp_path)
    with pytest.raises(S.SourceError, match="labels.csv"):
        S.list_entries("ctich", tmp_path)
    with pytest.raises(S.SourceError, match="normal"):
        S.list_entries("rsna200", tmp_path)
    root = tmp_path / "robo"
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir()
    for split in ("valid", "test"):
        (root / split / "images").mkdir(parents=True)
    (root / "data.yaml").write_text("nc: 5\nnames: ['EDH', 'IPH', 'IVH', 'SAH', 'SDH']\n")
    src = next((realtrain / "roboflow" / "train" / "images").glob("*.jpg"))
    (root / "train" / "images" / "a_1_jpg.rf.x.jpg").write_bytes(src.read_bytes())
    (root / "train" / "labels" / "a_1_jpg.rf.x.txt").write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(S.SourceError, match=r"a_1_jpg\.rf\.x\.txt, line 1"):
        S.list_entries("roboflow", root)


# -- windows and splits ------------------------------------------------------------------------

def _estimate(realtrain: Path, name: str, step: int, **options) -> tuple[float, float]:
    return S.estimate_window([S.read_gray(e.image)
                              for e in _entries(realtrain, name, **options)[::step]])


def test_window_estimator_recovers_the_known_rsna_window(realtrain: Path) -> None:
    level, width = _estimate(realtrain, "rsna200", 1)
    assert abs(level - 40.0) <= 12.0 and abs(width - 80.0) <= 0.2 * 80.0


def test_ctich_brain_constants_match_the_files(realtrain: Path) -> None:
    window = S.SOURCES["ctich"].window
    stats = [S.tissue_stats(S.read_gray(e.image)) for e in _entries(realtrain, "ctich")[::6]]
    mode, iqr = np.median([s for s in stats if s is not None], axis=0)
    assert window.low + mode * window.width / 255 == pytest.approx(S.BRAIN_MODE_HU, abs=1.5)
    assert iqr * window.width / 255 == pytest.approx(S.BRAIN_IQR_HU, abs=0.6)


@pytest.mark.parametrize("name, step, options, level_tol, width_tol", [
    ("roboflow", 2, {"dedupe": True}, 5.0, 0.1),
    ("bhsd", 1, {}, 5.0, 0.15),
])
def test_adopted_windows_agree_with_the_estimator(
    realtrain: Path, name: str, step: int, options: dict, level_tol: float, width_tol: float
) -> None:
    level, width = _estimate(realtrain, name, step, **options)
    adopted = S.SOURCES[name].window
    assert abs(level - adopted.level) <= level_tol
    assert abs(width - adopted.width) <= width_tol * adopted.width


@pytest.mark.parametrize("name, options", [
    ("ctich", {}), ("roboflow", {}), ("roboflow", {"group_by": "image"}), ("bhsd", {}),
    ("rsna200", {}),
])
def test_grouped_splits_never_leak(realtrain: Path, name: str, options: dict) -> None:
    entries = _entries(realtrain, name, **options)
    groups = [e.group for e in entries]
    sources = [name] * len(entries)
    for seed in range(3):
        train, val = grouped_split(groups, sources, _labels(entries)[:, 0], 0.2, seed)
        assert len(train) and len(val) and len(train) + len(val) == len(entries)
        assert not leaked_groups(groups, sources, train, val)
        if name == "ctich":  # patients are disjoint
            assert not {groups[i] for i in train} & {groups[i] for i in val}
        if name == "roboflow":  # no source image (and its copies) on both sides, either grouping
            image = [e.id.split("/")[1].split("_jpg.rf.")[0] for e in entries]
            assert not {image[i] for i in train} & {image[i] for i in val}
