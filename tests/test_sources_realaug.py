"""The 8-bit re-export hook against source shortcuts (export/realaug.py)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ichrt.export import sources as S
from ichrt.export.realaug import WindowedExport, export_window


def _head(size: int = 64) -> np.ndarray:
    """Air around a skull ring (1200 HU) holding fat (-100), brain (35) and blood (65)."""
    y, x = np.mgrid[:size, :size]
    r = np.hypot(y - size / 2, x - size / 2)
    hu = np.full((size, size), -1000.0, np.float32)
    hu[r < 28] = 1200.0
    hu[r < 25] = 35.0
    hu[(r < 25) & (x > 40)] = 65.0
    hu[(r < 8) & (x < 30)] = -100.0
    return hu


def test_export_window_keeps_air_bone_and_the_window() -> None:
    hu = _head()
    out = export_window(hu, 0.0, 80.0, bone_hu=900.0)
    step = 80.0 / 255.0
    assert out[0, 0] == S.AIR_HU
    assert out[32, 5] == 900.0  # skull
    assert out[32, 26] == 0.0  # fat inside the head: the window's lower edge, not air
    assert 35.0 - step <= out[32, 32] <= 35.0
    assert 65.0 - step <= out[32, 50] <= 65.0
    with pytest.raises(ValueError, match="high > low"):
        export_window(hu, 80.0, 80.0, 1000.0)


def test_reexporting_a_loaded_slice_at_its_own_window_changes_nothing(shared_dir: Path) -> None:
    root = shared_dir / "realtrain" / "ctich"
    entry = next(e for e in S.list_entries("ctich", root) if e.labels[0] == 1)
    hu = S.read_sample("ctich", entry).hu
    window = S.SOURCES["ctich"].window
    again = export_window(hu, window.low, window.low + window.width, S.BONE_HU)
    np.testing.assert_array_equal(again, hu)


def test_hook_default_windows_are_the_sources() -> None:
    assert set(WindowedExport().windows) == {(-20.0, 100.0), (0.0, 80.0), (0.0, 255.0)}


def test_hook_applies_by_source_and_probability() -> None:
    hu = _head()
    never = WindowedExport(p_real=0.0, p_other=0.0)
    assert never(hu, "ctich", np.random.default_rng(0)) is hu
    assert never(hu, "phantom", np.random.default_rng(0)) is hu
    always = WindowedExport(p_real=1.0, p_other=1.0, jitter=0.0, bone_hu=(800.0, 800.0))
    real = always(hu, "bhsd", np.random.default_rng(0))
    soft = real[(real > S.AIR_HU) & (real != 800.0)]
    assert soft.min() >= 0.0 and soft.max() <= 80.0  # the common window
    lows = set()
    for seed in range(20):
        out = always(hu, "phantom", np.random.default_rng(seed))
        lows.add(float(out[32, 26]))  # fat reads as the chosen window's lower edge
    assert lows == {-20.0, 0.0}
    a = always(hu, "phantom", np.random.default_rng(5))
    np.testing.assert_array_equal(a, always(hu, "phantom", np.random.default_rng(5)))
    assert pickle.loads(pickle.dumps(always)) == always
