"""The phantom generator: tissue HU ranges, label/mask truth, determinism, presets."""

from __future__ import annotations

import numpy as np
import pytest
from synth_helpers import TISSUE_RANGES, clean_case

from ichrt.runtime.synth import PRESETS, PhantomConfig, generate_study
from ichrt.runtime.synth.lesions import HU_RANGES
from ichrt.runtime.synth.render import T_BLOOD, T_GM, T_WM, TISSUES


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_clean_tissues_stay_in_their_hu_ranges(seed: int) -> None:
    case = clean_case(seed)
    seen = set()
    for _, clean, tissue, bits in case.slices:
        for name, (lo, hi) in TISSUE_RANGES.items():
            values = clean[tissue == TISSUES[name]]
            if values.size:
                seen.add(name)
                assert lo - 0.01 <= values.min() and values.max() <= hi + 0.01, name
        blood = tissue == T_BLOOD
        assert np.array_equal(blood, bits > 0), "blood pixels are exactly the lesion pixels"
        for kind, (lo, hi) in HU_RANGES.items():
            values = clean[(bits & (1 << kind)) > 0]
            if values.size:
                assert lo - 0.01 <= values.min() and values.max() <= hi + 0.01, kind
    assert {"gray", "white", "csf", "bone", "soft", "air"} <= seen


def test_gray_matter_is_denser_than_white_matter() -> None:
    for seed in range(6):
        case = clean_case(seed, heights=(10.0,))
        _, clean, tissue, _ = case.slices[0]
        assert clean[tissue == T_GM].mean() > clean[tissue == T_WM].mean() + 3.0


@pytest.fixture(scope="module")
def positives() -> list:
    return [generate_study(seed, n_slices=6, size=64, positive=True) for seed in range(8)]


def test_labels_match_masks_and_any_is_the_union(positives: list) -> None:
    for study in positives:
        sub = study.masks.any(axis=(2, 3))
        assert np.array_equal(study.labels[:, 1:], sub.astype(np.uint8))
        assert np.array_equal(study.labels[:, 0], sub.any(axis=1).astype(np.uint8))
        assert study.labels.dtype == np.uint8 and study.labels.shape == (6, 6)
        assert study.positive, "a positive study has at least one positive slice"


def test_lesion_masks_are_blood_and_noisy_lesions_stay_bright(positives: list) -> None:
    for study in positives:
        union = study.masks.any(axis=1)
        assert np.all(study.tissue[union] == T_BLOOD)
        brain = (study.tissue == T_WM)
        if union.sum() > 20 and brain.sum() > 20:
            assert study.hu[union].mean() > study.hu[brain].mean()


def test_negative_studies_have_no_lesion() -> None:
    study = generate_study(4, n_slices=5, size=64, positive=False)
    assert not study.masks.any() and not study.labels.any() and not study.positive
    assert not np.any(study.tissue == T_BLOOD)


def test_scanned_slices_are_integer_hu_with_air_outside_the_field() -> None:
    study = generate_study(5, n_slices=4, size=96, positive=False)
    assert study.hu.dtype == np.float32 and study.hu.shape == (4, 96, 96)
    assert np.array_equal(study.hu, np.round(study.hu))
    assert study.hu.min() >= -1024 and study.hu.max() <= 3071
    assert np.all(study.hu[:, ~study.fov_mask] == -1000.0)
    spacing = np.diff(study.positions_z)
    assert np.allclose(spacing, study.protocol.thickness)


def test_noise_is_added_with_the_drawn_sigma() -> None:
    case = clean_case(7, size=128, heights=(20.0,))
    from ichrt.runtime.synth.physics import scan_slice
    from ichrt.runtime.synth.study import geometry

    z, clean, tissue, _ = case.slices[0]
    proto = case.proto
    proto.motion, proto.rings, proto.n_streaks, proto.cupping = set(), [], (0, 0), 0.0
    hu = scan_slice(clean, proto, geometry(case.head, proto, z, 0.0), 0, np.random.default_rng(0))
    wm = tissue == T_WM
    core = wm & np.roll(wm, 2, 0) & np.roll(wm, -2, 0) & np.roll(wm, 2, 1) & np.roll(wm, -2, 1)
    residual = (hu - clean)[core]
    assert abs(residual.mean()) < 2.0
    assert 0.5 * proto.noise < residual.std() < 2.0 * proto.noise + 1.0


def test_same_seed_same_study_and_other_seed_differs() -> None:
    a = generate_study(11, n_slices=4, size=64)
    b = generate_study(11, n_slices=4, size=64)
    c = generate_study(12, n_slices=4, size=64)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.masks, b.masks)
    assert a.identity.image_ids == b.identity.image_ids and a.study_id == b.study_id
    assert not np.array_equal(a.hu, c.hu) and a.study_id != c.study_id


def test_presets_differ_and_shifted_is_outside_the_training_ranges() -> None:
    train, shifted = PRESETS["train"], PRESETS["shifted"]
    assert train.name == "train" and shifted.name == "shifted"
    assert shifted.noise_sigma[0] >= train.noise_sigma[1]
    assert shifted.kernel_blur[0] >= train.kernel_blur[1]
    assert all(hi <= train.fov[0][0] or lo >= train.fov[0][1] for lo, hi in shifted.fov)
    assert {t for t, _ in shifted.slice_thickness}.isdisjoint({t for t, _ in train.slice_thickness})
    a = generate_study(3, n_slices=2, size=64, config="train")
    b = generate_study(3, n_slices=2, size=64, config="shifted")
    assert b.protocol.noise > a.protocol.noise and b.preset == "shifted"
    with pytest.raises(ValueError, match="unknown phantom preset"):
        PhantomConfig.preset("nope")


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        generate_study(1, n_slices=0, size=64)
