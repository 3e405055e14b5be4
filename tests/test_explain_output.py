"""write_explanation: .npy map, PNG overlay and JSON summary, with untrusted names."""

from __future__ import annotations

import json

import numpy as np
import pytest
from explain_helpers import read_png
from score_helpers import head_slice

from ichrt.runtime.explain.output import write_explanation
from ichrt.runtime.explain.overlay import CONTOUR_RGB, TRUTH_RGB, jet, outline


def _gaussian(shape, centre, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2))


def test_write_explanation_writes_three_files_and_a_summary(tmp_path):
    hu = head_slice(64, blob=0.12)
    heatmap = 3.0 * _gaussian(hu.shape, (28, 35), 4.0)  # raw units, peak 3
    boxes = [(22, 29, 35, 42, "intraparenchymal")]
    summary = write_explanation(tmp_path, "ID_0fe31b044", hu, heatmap, "hshap", boxes=boxes,
                                extra={"seconds": 0.25, "probability": 0.9, "method": "x"})
    stem = summary["name"]
    assert stem.startswith("ID_0fe31b044")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{stem}.{k}" for k in ("json", "npy", "png")]
    saved = np.load(tmp_path / f"{stem}.npy")
    assert saved.shape == hu.shape and saved.dtype == np.float32
    np.testing.assert_allclose(saved, heatmap / 3.0, atol=1e-6)
    on_disk = json.loads((tmp_path / f"{stem}.json").read_text())
    assert on_disk == summary
    assert summary["method"] == "hshap"  # extra cannot replace computed entries
    assert summary["seconds"] == 0.25 and summary["probability"] == 0.9
    assert summary["peak"] == [28, 35] and summary["peak_value"] == pytest.approx(3.0)
    assert 0 < summary["threshold"] < 1
    assert summary["area_px"] == int((saved > summary["threshold"]).sum()) > 0
    assert summary["localization"]["pointing"] == 1.0
    assert 0 < summary["localization"]["energy"] < 1 and 0 < summary["localization"]["iou"] <= 1


def test_overlay_shows_slice_map_contour_and_truth(tmp_path):
    hu = head_slice(64, blob=0.12)
    heatmap = _gaussian(hu.shape, (28, 35), 4.0)
    mask = np.zeros(hu.shape, bool)
    mask[24:33, 31:40] = True
    summary = write_explanation(tmp_path, "s", hu, heatmap, "cam", mask=mask,
                                boxes=[(5, 5, 15, 15)])
    rgb = read_png(tmp_path / summary["files"]["png"])
    assert rgb.shape == (64, 64, 3)
    assert (rgb[0, 0] == 0).all()  # air, no heat: black in the brain window
    green = np.all(rgb == TRUTH_RGB, axis=-1)
    assert green[outline(mask)].mean() > 0.8 and green[5, 5:15].all()
    white = np.all(rgb == CONTOUR_RGB, axis=-1)
    assert white.any() and not white[28, 35]  # the contour surrounds the peak
    assert rgb[28, 35, 0] > rgb[28, 35, 2]  # peak is red-ish (jet at 1)
    np.testing.assert_allclose(jet(np.array([0.0, 0.5, 1.0])),
                               [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])


def test_untrusted_names_stay_inside_the_output_folder(tmp_path):
    out = tmp_path / "out"
    hu = head_slice(32)
    for name in ("../../escape", "/etc/passwd", "a/b\\c\x00d", "..", ""):
        summary = write_explanation(out, name, hu, np.zeros_like(hu), "cam")
        assert "/" not in summary["name"] and not summary["name"].startswith(".")
        assert summary["peak"] is None and summary["area_px"] == 0
    assert {p.parent for p in out.rglob("*")} == {out}
    assert not (tmp_path / "escape.json").exists()


def test_a_feature_resolution_map_goes_through_its_frame(tmp_path):
    hu = head_slice(64)
    cam = np.zeros((4, 4), np.float32)
    cam[1, 2] = 1.0
    summary = write_explanation(tmp_path, "f", hu, cam, "cam", frame=(8, 8, 40, 40))
    saved = np.load(tmp_path / summary["files"]["npy"])
    assert saved.shape == (64, 64)
    assert not saved[40:].any() and not saved[:, 40:].any()
    assert summary["peak"] == [19, 27]  # cell (1, 2) covers rows 16..23, cols 24..31
    with pytest.raises(ValueError, match="frame"):
        write_explanation(tmp_path, "g", hu, cam, "cam")
