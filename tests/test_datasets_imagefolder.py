"""The ImageFolder loader and the 8-bit -> HU mapping."""

from __future__ import annotations

import numpy as np
import pytest
from export_helpers import write_imagefolder

from ichrt.export.datasets import (
    DataSpec,
    TrainingDataError,
    gray8_to_hu,
    iter_spec,
    load_imagefolder,
)
from ichrt.runtime.contract import DEFAULT_WINDOWS
from ichrt.runtime.pictures import window_rgb8


def test_loads_every_image_with_any_label_only(tmp_path):
    written = write_imagefolder(tmp_path / "seed", n=10)
    samples = load_imagefolder(tmp_path / "seed")
    assert len(samples) == 10
    by_id = {s.id: s for s in samples}
    for path, _ in written:
        s = by_id[f"{path.parent.name}/{path.name}"]
        assert s.labels[0] == (1.0 if path.parent.name == "hemorrhage" else 0.0)
        assert np.isnan(s.labels[1:]).all()  # subtypes unknown, masked out of the loss
        assert s.hu.dtype == np.float32 and s.hu.shape == (64, 64)
        assert s.group == s.id  # each image is its own group
    assert len({s.group for s in samples}) == 10


def test_gray_values_map_back_to_the_brain_window(tmp_path):
    written = write_imagefolder(tmp_path / "seed", n=4)
    samples = {s.id: s for s in load_imagefolder(tmp_path / "seed")}
    for path, clipped in written:
        hu = samples[f"{path.parent.name}/{path.name}"].hu
        # 8-bit quantization of an 80 HU window: half a gray level is 80 / 255 / 2 HU
        assert np.max(np.abs(hu - clipped)) <= 80.0 / 255.0 / 2 + 1e-4
        assert hu.min() >= 0.0 and hu.max() <= 80.0


def test_three_window_pictures_recover_hu_beyond_the_brain_window():
    rng = np.random.default_rng(1)
    hu = rng.uniform(-900.0, 1900.0, (32, 32)).astype(np.float32)
    rgb = window_rgb8(hu, DEFAULT_WINDOWS)
    back = gray8_to_hu(rgb, DEFAULT_WINDOWS)
    # each pixel comes from the narrowest unsaturated window: error <= half its gray level
    step = {w: w / 255.0 for _, w in DEFAULT_WINDOWS}
    brain = (hu > 5) & (hu < 75)
    assert np.max(np.abs(back - hu)[brain]) <= step[80.0] + 1e-3
    bone = (hu > -700) & (hu < 1900) & ~((hu > -20) & (hu < 180))
    assert np.max(np.abs(back - hu)[bone]) <= step[2800.0] + 1e-3


def test_saturated_gray_stays_at_the_window_edge():
    img = np.array([[0, 255, 128]], np.uint8)
    assert gray8_to_hu(img)[0].tolist() == pytest.approx([0.0, 80.0, 128 / 255 * 80])


def test_custom_classes_and_source_name(tmp_path):
    write_imagefolder(tmp_path / "set", n=6)
    spec = DataSpec(path=str(tmp_path / "set"), format="imagefolder", source="jpgs",
                    options={"classes": {"hemorrhage": 1.0}})
    samples = list(iter_spec(spec))
    assert len(samples) == 3 and all(s.labels[0] == 1.0 for s in samples)
    assert {s.source for s in samples} == {"jpgs"}


def test_missing_class_folder_is_named(tmp_path):
    (tmp_path / "hemorrhage").mkdir()
    with pytest.raises(TrainingDataError, match="no_hemorrhage"):
        load_imagefolder(tmp_path)


def test_data_spec_parsing():
    assert DataSpec.parse("imagefolder:/d/x") == DataSpec(path="/d/x", format="imagefolder")
    assert DataSpec.parse("/d/x", "rsna") == DataSpec(path="/d/x", format="rsna")
    assert DataSpec.parse("weird:name", "rsna").path == "weird:name"
    with pytest.raises(TrainingDataError, match="not found"):
        list(iter_spec(DataSpec(path="/nonexistent/folder")))
