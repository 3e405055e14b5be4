"""h-Shap: per-level values against brute-force Shapley values, thresholds, sizes, cycle spinning."""

from __future__ import annotations

import numpy as np
import pytest
from explain_helpers import brute_shapley, compose

from ichrt.runtime.explain.base import ExplainError
from ichrt.runtime.explain.hshap import (
    HShapExplainer,
    box_blur,
    cycle_shifts,
    hierarchical_shapley,
    hshap_map,
    make_background,
    quadrants,
    shapley_weights,
)

SIZE = 16


def _image_game():
    """A non-additive value function of (B, 1, 16, 16) images, an input and a background."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(SIZE, SIZE))

    def value(batch: np.ndarray) -> np.ndarray:
        b = batch[:, 0]
        return np.tanh((b * a).sum(axis=(1, 2)) / 8) + b[:, 3, 2] * b[:, 12, 9] + b.max(axis=(1, 2))

    x = rng.random((1, SIZE, SIZE)) + 0.5
    return value, x, np.zeros_like(x)


def test_shapley_weights_match_brute_force_on_random_games():
    rng = np.random.default_rng(1)
    w = shapley_weights()
    for _ in range(5):
        v = rng.normal(size=16)
        v[0] = rng.normal()

        def game(coalition: frozenset, v: np.ndarray = v) -> float:
            return v[sum(1 << p for p in coalition)]

        np.testing.assert_allclose(v @ w, brute_shapley(game, 4), atol=1e-12)


def test_root_values_match_brute_force_shapley():
    value, x, bg = _image_game()
    result = hierarchical_shapley(value, x, bg, min_size=8, threshold=-np.inf)
    boxes = quadrants((0, 0, SIZE, SIZE))

    def game(coalition: frozenset) -> float:
        return float(value(compose(x, bg, boxes, coalition)[None])[0])

    level1 = [n for n in result.nodes if n.level == 1]
    assert [n.box for n in level1] == boxes
    np.testing.assert_allclose([n.value for n in level1], brute_shapley(game, 4), atol=1e-9)
    assert max(n.level for n in result.nodes) == 1  # 8-pixel children cannot split at min 8


def test_second_level_values_match_brute_force_in_each_child_game():
    # Each explored child plays its own game among its four sub-quadrants, with everything
    # outside the child (the other quadrants too) replaced by the background.
    value, x, bg = _image_game()
    result = hierarchical_shapley(value, x, bg, min_size=4, threshold=-np.inf)
    level2 = [n for n in result.nodes if n.level == 2]
    assert len(level2) == 16
    for parent in quadrants((0, 0, SIZE, SIZE)):
        kids = quadrants(parent)

        def game(coalition: frozenset, kids=kids) -> float:
            return float(value(compose(x, bg, kids, coalition)[None])[0])

        ours = [n.value for n in level2 if n.box in kids]
        np.testing.assert_allclose(ours, brute_shapley(game, 4), atol=1e-9)
    # the sub-games' values add up: each child's four values sum to v(child) - v(empty)
    empty = float(value(bg[None])[0])
    for parent in quadrants((0, 0, SIZE, SIZE)):
        shown = float(value(compose(x, bg, [parent], frozenset({0}))[None])[0])
        total = sum(n.value for n in level2 if n.box in quadrants(parent))
        assert total == pytest.approx(shown - empty)


def test_relevance_threshold_decides_which_children_are_explored():
    value, x, bg = _image_game()
    level1 = [n for n in hierarchical_shapley(value, x, bg, 4, threshold=-np.inf).nodes
              if n.level == 1]
    cut = float(np.median([n.value for n in level1]))
    result = hierarchical_shapley(value, x, bg, min_size=4, threshold=cut)
    explored = {n.box for n in level1 if n.value > cut}
    assert 0 < len(explored) < 4
    level2 = [n for n in result.nodes if n.level == 2]
    assert {b for b in explored for b in quadrants(b)} == {n.box for n in level2}
    # only relevant leaves are painted, with their own value
    for n in level2:
        y0, x0, y1, x1 = n.box
        patch = result.heatmap[y0:y1, x0:x1]
        assert np.allclose(patch, n.value if n.value > cut else 0.0)
    outside = np.ones((SIZE, SIZE), bool)
    for y0, x0, y1, x1 in explored:
        outside[y0:y1, x0:x1] = False
    assert not result.heatmap[outside].any()
    # a threshold above every value explores nothing and paints nothing
    none = hierarchical_shapley(value, x, bg, min_size=4, threshold=1e9)
    assert {n.level for n in none.nodes} == {1} and not none.heatmap.any()


def test_min_size_sets_the_leaf_size_and_the_cost():
    value, x, bg = _image_game()
    deep = hierarchical_shapley(value, x, bg, min_size=2, threshold=-np.inf)
    assert max(n.level for n in deep.nodes) == 3
    assert {n.box[2] - n.box[0] for n in deep.nodes if n.level == 3} == {2}
    assert deep.evaluations == 1 + 15 * (1 + 4 + 16)
    shallow = hierarchical_shapley(value, x, bg, min_size=8, threshold=-np.inf)
    assert shallow.evaluations == 1 + 15
    with pytest.raises(ExplainError, match="min_size"):
        hierarchical_shapley(value, x, bg, min_size=9)


def test_cycle_spinning_shifts_the_grid_and_averages():
    assert cycle_shifts([0, 4], [0, np.pi / 2]) == [(0, 0), (0, 4), (-4, 0)]
    assert len(cycle_shifts(np.linspace(0, 8, 4, endpoint=False),
                            np.linspace(0, 2 * np.pi, 8, endpoint=False))) == 25

    # A game that only looks at one pixel: every shifted partition paints the leaf holding it,
    # so the averaged map peaks at that pixel and is spread less than any single leaf.
    def value(batch: np.ndarray) -> np.ndarray:
        return batch[:, 0, 9, 6]

    x, bg = np.ones((1, SIZE, SIZE)), np.zeros((1, SIZE, SIZE))
    single = hierarchical_shapley(value, x, bg, min_size=4, shift=(-3, 2)).heatmap
    assert single[9, 6] == pytest.approx(1.0) and np.count_nonzero(single) == 16
    ys, xs = np.nonzero(single)
    # pixel (9, 6) sits at (12, 4) of the unshifted grid: leaf [12, 16) x [4, 8), moved by (-3, +2)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (9, 12, 6, 9)
    spun = hshap_map(value, x, bg, 4, radii=[0, 2, 3], angles=[0, np.pi / 2, np.pi, 4.0])
    assert np.unravel_index(np.argmax(spun), spun.shape) == (9, 6)
    assert spun[9, 6] == pytest.approx(1.0)
    assert np.count_nonzero(spun) > 16 and spun.sum() == pytest.approx(16.0)


def test_box_blur_matches_a_direct_mean():
    rng = np.random.default_rng(4)
    x = rng.random((2, 9, 11)).astype(np.float32)
    ours = box_blur(x, 3)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
    direct = np.mean([padded[:, dy:dy + 9, dx:dx + 11] for dy in range(3) for dx in range(3)], 0)
    np.testing.assert_allclose(ours, direct, atol=1e-6)


def test_air_background_is_an_air_slice_through_the_windowing(tiny_model):
    _, contract = tiny_model
    air = make_background("air", np.zeros((3, 32, 32), np.float32), contract)
    expected = (0.0 - np.asarray(contract.mean)) / np.asarray(contract.std)
    np.testing.assert_allclose(air, np.broadcast_to(expected[:, None, None], air.shape), atol=1e-6)
    with pytest.raises(ExplainError, match="background"):
        make_background("noise", air, contract)


def test_hshap_over_onnx_finds_the_blob(tiny_model):
    from ichrt.runtime.session import load_model

    model = load_model(tiny_model[0], provider="cpu", threads=1)
    x = np.full((2, 3, 32, 32), -1.0, np.float32)
    x[0, 0, 20:28, 4:12] = 3.0  # the tiny model's any logit rises with this
    x[1, 0, 2:10, 22:30] = 3.0
    explainer = HShapExplainer(model, min_size=4, background="zero")
    maps = explainer.maps(x)
    assert maps.shape == (2, 32, 32)
    y, xx = np.unravel_index(np.argmax(maps[0]), (32, 32))
    assert 20 <= y < 28 and 4 <= xx < 12
    y, xx = np.unravel_index(np.argmax(maps[1]), (32, 32))
    assert 2 <= y < 10 and 22 <= xx < 30
    logits = HShapExplainer(model, min_size=4, background="zero", use_logits=True).maps(x[:1])
    y, xx = np.unravel_index(np.argmax(logits[0]), (32, 32))
    assert 20 <= y < 28 and 4 <= xx < 12
