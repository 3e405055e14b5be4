"""The lesion-level model in training: insertion, hard negatives, appearance, the dense loss,
the tie between map and slice logit, and export parity of the lesion output (torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from export_helpers import head_hu, write_phantoms

from ichrt.export import train as training
from ichrt.export.appearance import AppearanceConfig, appearance
from ichrt.export.datasets import DataSpec
from ichrt.export.insertion import (
    HARD_KINDS,
    DonorBank,
    InsertionConfig,
    hard_negative,
    insert_lesion,
    intracranial,
)
from ichrt.export.models import cam_parameters
from ichrt.export.torchdata import BOXES, MASK, NO_REGION
from ichrt.nets import build_model, topk_pool
from ichrt.runtime.cli import main
from ichrt.runtime.scorer import Scorer
from ichrt.runtime.session import load_model
from ichrt.runtime.synth import generate_study
from ichrt.runtime.windowing import window_batch

pytestmark = pytest.mark.torch


def _normal(seed: int = 0, size: int = 128) -> np.ndarray:
    return head_hu(np.random.default_rng(seed), size, positive=False)[0]


def _bank() -> DonorBank:
    bank = DonorBank()
    rng = np.random.default_rng(3)
    for _ in range(5):
        _, mask = head_hu(rng, 128, positive=True)
        assert bank.add(mask)
    assert not bank.add(np.zeros((8, 8), bool))  # nothing to cut
    return bank


def test_intracranial_is_inside_the_skull_ring():
    hu = _normal()
    inside = intracranial(hu)
    assert inside[64, 64] and not inside[0, 0]
    assert not (inside & (hu > 300)).any()
    assert inside.sum() == pytest.approx(((hu > -100) & (hu < 300)).sum(), rel=0.05)


def test_inserted_lesion_is_blood_inside_the_skull_only():
    hu = _normal()
    rng = np.random.default_rng(0)
    out, mask = insert_lesion(hu, _bank(), rng)
    assert mask.sum() >= 8
    assert (mask <= intracranial(hu)).all()
    assert out[mask].mean() > hu[mask].mean() + 15  # towards acute blood (50-85 HU)
    assert np.array_equal(out[~intracranial(hu)], hu[~intracranial(hu)])
    assert insert_lesion(np.full((64, 64), -1000.0, np.float32), _bank(), rng) is None


def test_insertion_makes_a_negative_positive_with_its_mask():
    cfg = InsertionConfig(_bank(), p_insert=1.0, p_hard=0.0)
    labels = np.zeros(6, np.float32)
    _hu, new, region, kind = cfg.apply(_normal(), labels, None, NO_REGION,
                                      np.random.default_rng(1), mask_kind=MASK)
    assert new[0] == 1.0 and np.isnan(new[1:]).all()
    assert kind == MASK and region is not None and region.any()
    # a positive slice is never given a second, unlabelled lesion
    pos = np.ones(6, np.float32)
    _, same, region2, kind2 = cfg.apply(_normal(), pos, None, BOXES, np.random.default_rng(1))
    assert np.array_equal(same, pos) and region2 is None and kind2 == BOXES


@pytest.mark.parametrize("kind", HARD_KINDS)
def test_hard_negatives_change_pixels_but_never_the_kept_lesion(kind):
    hu = _normal(seed=2)
    keep = np.zeros(hu.shape, bool)
    keep[60:70, 60:70] = True
    changed = False
    for seed in range(6):
        out, got = hard_negative(hu, np.random.default_rng(seed), keep=keep, kinds=(kind,))
        assert got == kind
        assert np.array_equal(out[keep], hu[keep])
        changed |= not np.array_equal(out, hu)
    assert changed


def test_scalp_blood_stays_outside_the_skull():
    hu = _normal(seed=4)
    inside = intracranial(hu)
    for seed in range(5):
        out, _ = hard_negative(hu, np.random.default_rng(seed), kinds=("scalp",))
        diff = out != hu
        assert diff.any() and not (diff & inside).any()


def test_appearance_keeps_shape_and_range():
    x = torch.rand(3, 64, 64)
    cfg = AppearanceConfig(p_gamma=1, p_kernel=1, p_jpeg=1, p_lowres=1, p_text=1)
    y = appearance(x, np.random.default_rng(0), cfg)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert not torch.equal(x, y)


def test_any_logit_is_tied_to_the_lesion_map():
    model = build_model("resnet10seg", 6).eval()
    assert cam_parameters(model) is None  # the any logit is not a linear map of pooled features
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats, lesion, pooled = model.forward_dense(x)
        plain = model.head(feats)
    assert lesion.shape == (2, 1, 16, 16)
    assert torch.allclose(pooled, topk_pool(lesion))
    assert torch.allclose(logits[:, 0], plain[:, 0] + pooled, atol=1e-5)
    assert torch.allclose(logits[:, 1:], plain[:, 1:])


def test_lesion_loss_rewards_the_right_maps():
    n, s = 3, 32
    regions = torch.zeros(n, s, s)
    regions[0, 8:16, 8:16] = 1.0   # mask positive
    regions[2, 4:20, 4:20] = 1.0   # box positive
    kinds = torch.tensor([MASK, MASK, BOXES])
    y = torch.tensor([1.0, 0.0, 1.0])
    target = torch.nn.functional.adaptive_avg_pool2d(regions[:, None], (8, 8))
    good = (target * 16 - 8)
    good[2] = torch.where(target[2] > 0, torch.full_like(target[2], 8.0), -8.0)
    empty = torch.full((n, 1, 8, 8), -8.0)
    loss_good = training.lesion_loss(good, topk_pool(good), regions, kinds, y)
    loss_empty = training.lesion_loss(empty, topk_pool(empty), regions, kinds, y)
    assert loss_good < loss_empty
    # inside a box nothing is said per pixel: lowering the map there only moves the pooled term
    inside_low = good.clone()
    inside_low[2][target[2] > 0] = 0.0
    a = training.lesion_loss(good, topk_pool(good) * 0, regions, kinds, y)
    b = training.lesion_loss(inside_low, topk_pool(good) * 0, regions, kinds, y)
    assert a == pytest.approx(float(b), abs=1e-6)
    # a negative slice wants an empty map
    hot_negative = good.clone()
    hot_negative[1] = 8.0
    assert training.lesion_loss(hot_negative, topk_pool(hot_negative), regions, kinds, y) > \
        loss_good


@pytest.fixture(scope="module")
def dense_export(tmp_path_factory):
    """A resnet10seg trained a few steps at 64 px on phantoms (with masks), exported."""
    root = tmp_path_factory.mktemp("dense")
    write_phantoms(root / "ph", studies=4, size=64, slices=(6, 6))
    cfg = training.TrainConfig(arch="resnet10seg", image_size=64, batch_size=8, device="cpu",
                               max_steps=3, checkpoint_every=0, insert_p=0.5, hard_p=0.5,
                               appearance=True, name="tiny-seg")
    training.train(cfg, [training.Stage([DataSpec(str(root / "ph"), "rsna")], 1)],
                   root / "run", command="ichrt train (test)", progress=False)
    out = root / "model.onnx"
    res = CliRunner().invoke(main, ["export", str(root / "run"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out, root


def test_dense_export_has_the_lesion_output_and_parity(dense_export):
    import onnx

    from ichrt.runtime.torchtwin import load_torch_twin

    path, _ = dense_export
    assert [o.name for o in onnx.load(str(path)).graph.output] == [
        "probs", "logits", "features", "lesion"]
    model = load_model(path, provider="cpu")
    assert model.contract.lesion_stride == 4 and model.contract.cam_weights is None
    hu = generate_study(seed=5, n_slices=3, size=96, positive=True).hu[:3]
    batch = window_batch(hu, model.contract)
    got = model.run(batch, ("logits", "lesion"))
    assert got["lesion"].shape == (3, 1, 16, 16)
    twin, _ = load_torch_twin(path.with_suffix(".pt"), path)
    with torch.no_grad():
        logits, _, lesion, _ = twin.forward_dense(torch.from_numpy(batch))
    assert np.abs(got["lesion"] - lesion.numpy()).max() < 1e-3
    assert np.abs(got["logits"] - logits.numpy()).max() < 1e-3
    assert Scorer(path).explain == "lesion"


def test_gradcam_runs_on_the_dense_twin(dense_export):
    """Grad-CAM stays available on demand: it hooks body.layer4, which forward_dense runs."""
    from ichrt.runtime.explain.gradcam import GradCamExplainer

    path, _ = dense_export
    model = load_model(path, provider="cpu")
    hu = generate_study(seed=6, n_slices=2, size=96, positive=True).hu[:2]
    maps = GradCamExplainer(model).maps(window_batch(hu, model.contract), None, "any")
    assert maps.shape == (2, 64, 64) and np.isfinite(maps).all()
