"""CAM from the ONNX features equals pytorch-grad-cam's Grad-CAM for GAP + Linear heads."""

from __future__ import annotations

import numpy as np
import pytest

from ichrt.runtime.contract import LABELS, ModelContract
from ichrt.runtime.explain.base import to_slice
from ichrt.runtime.explain.cam import CamUnavailable, cam_maps


def _contract(weights: np.ndarray) -> ModelContract:
    return ModelContract(cam_weights=tuple(map(tuple, weights.tolist())),
                         cam_bias=tuple(0.0 for _ in LABELS))


def test_cam_cells_are_shares_of_the_logit():
    # With non-negative features and weights nothing is cut by the ReLU, so the map sums to
    # logit - bias = w . mean_hw(features).
    rng = np.random.default_rng(0)
    features = rng.random((3, 5, 4, 6)).astype(np.float32)
    weights = rng.random((len(LABELS), 5)).astype(np.float32)
    maps = cam_maps(features, _contract(weights), label="subdural")
    assert maps.shape == (3, 4, 6)
    expected = features.mean(axis=(2, 3)) @ weights[LABELS.index("subdural")]
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), expected, rtol=1e-5)


def test_cam_is_relu_of_the_weighted_sum():
    rng = np.random.default_rng(1)
    features = rng.random((2, 3, 5, 5)).astype(np.float32)
    weights = rng.normal(size=(len(LABELS), 3)).astype(np.float32)
    maps = cam_maps(features, _contract(weights))
    raw = np.einsum("nkhw,k->nhw", features, weights[0]) / 25
    np.testing.assert_allclose(maps, np.maximum(raw, 0), atol=1e-7)
    assert (raw < 0).any() and (maps >= 0).all()


def test_cam_refuses_a_head_without_weights_and_names_the_fallbacks():
    contract = ModelContract(arch="mlp-head")
    with pytest.raises(CamUnavailable, match="gradcam.*hshap"):
        cam_maps(np.zeros((1, 4, 2, 2), np.float32), contract)


def test_cam_checks_labels_and_channels():
    from ichrt.runtime.explain.base import ExplainError

    contract = _contract(np.ones((len(LABELS), 4), np.float32))
    with pytest.raises(ExplainError, match="not one of the model's labels"):
        cam_maps(np.zeros((1, 4, 2, 2), np.float32), contract, label="fracture")
    with pytest.raises(ExplainError, match="do not match"):
        cam_maps(np.zeros((1, 3, 2, 2), np.float32), contract)


def test_cam_explainer_runs_the_model_when_no_features_are_given(tiny_model):
    from ichrt.runtime.explain.cam import CamExplainer
    from ichrt.runtime.session import load_model

    model = load_model(tiny_model[0], provider="cpu", threads=1)
    x = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
    explainer = CamExplainer(model)
    ran = explainer.maps(x)
    given = explainer.maps(x, model.run(x))
    np.testing.assert_allclose(ran, given, atol=1e-6)
    assert ran.shape == (2, 8, 8)


# -- equality with pytorch-grad-cam on a torch model and its ONNX export ---------------------


@pytest.fixture(scope="module", params=["resnet18", "rsnahemorrhagenet"])
def twin(request, tmp_path_factory):
    from explain_helpers import export_twin

    return export_twin(tmp_path_factory.mktemp(request.param), arch=request.param, size=96)


def _inputs(size: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.normal(0, 1, (2, 3, size, size)).astype(np.float32)
    x[0, :, 20:40, 50:70] += 2.0
    return x


@pytest.mark.torch
@pytest.mark.parametrize("label", ["any", "subdural"])
def test_cam_equals_pytorch_grad_cam(twin, label):
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ichrt.runtime.session import load_model

    path, net, contract = twin
    size = contract.input_size
    x = _inputs(size)
    model = load_model(path, provider="cpu", threads=1)
    outputs = model.run(x)
    idx = contract.labels.index(label)
    expected = GradCAM(model=net, target_layers=[net.body])(
        input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(idx)] * len(x))
    ours = cam_maps(outputs["features"], contract, label)
    resized = np.stack([to_slice(m, (0, 0, size, size), (size, size)) for m in ours])
    np.testing.assert_allclose(scale_cam_image(resized), expected, atol=1e-4)
    logits = outputs["logits"][:, idx]
    assert (logits > 0).any() or (logits < 0).any()  # both signs are covered across labels/archs


@pytest.mark.torch
def test_gradcam_explainer_matches_cam_for_negative_logits_too(twin):
    # The raw-logit target explains the label whatever the logit's sign; pytorch-grad-cam's
    # BinaryClassifierOutputTarget, given the predicted class (0 for a negative logit), takes
    # -logit and explains the label's absence instead, which is why it is not used.
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget

    from ichrt.runtime.explain.gradcam import GradCamExplainer
    from ichrt.runtime.session import load_model

    path, net, contract = twin
    size = contract.input_size
    x = _inputs(size)
    model = load_model(path, provider="cpu", threads=1)
    outputs = model.run(x)
    logits = outputs["logits"]
    n, idx = np.argwhere(logits < 0)[0]
    label = contract.labels[idx]
    ours = GradCamExplainer(model, net=net).maps(x, outputs, label)
    cam = cam_maps(outputs["features"], contract, label)
    cam = scale_cam_image(np.stack([to_slice(m, (0, 0, size, size), (size, size)) for m in cam]))
    np.testing.assert_allclose(ours, cam, atol=1e-4)

    class Single(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = net

        def forward(self, t):
            return self.inner(t)[:, idx]

    single = Single().eval()
    binary = GradCAM(model=single, target_layers=[net.body])(
        input_tensor=torch.from_numpy(x[n:n + 1]), targets=[BinaryClassifierOutputTarget(int(logits[n, idx] > 0))])
    assert np.abs(binary[0] - cam[n]).max() > 0.1


# -- Grad-CAM on the torch twin written by export ---------------------------------------------


@pytest.mark.torch
def test_gradcam_loads_the_twin_beside_the_model_and_equals_cam(twin):
    from pytorch_grad_cam.utils.image import scale_cam_image

    from ichrt.runtime.explain.batch import make_explainer
    from ichrt.runtime.session import load_model

    path, _, contract = twin
    size = contract.input_size
    model = load_model(path, provider="cpu", threads=1)
    x = _inputs(size)
    maps = make_explainer("gradcam", model).maps(x)
    cam = cam_maps(model.run(x)["features"], contract)
    cam = scale_cam_image(np.stack([to_slice(m, (0, 0, size, size), (size, size)) for m in cam]))
    np.testing.assert_allclose(maps, cam, atol=1e-4)
    plus = make_explainer("gradcampp", model).maps(x)
    assert plus.shape == maps.shape and plus.max() == pytest.approx(1.0, abs=1e-5)
    assert plus.min() >= 0 and np.abs(plus - maps).max() > 1e-3  # Grad-CAM++ weighs differently


@pytest.mark.torch
@pytest.mark.parametrize("twin", ["resnet18"], indirect=True)
def test_gradcam_refuses_a_twin_of_other_weights(twin, tmp_path):
    import shutil

    import onnx

    from ichrt.runtime.explain.base import ExplainError
    from ichrt.runtime.explain.gradcam import GradCamExplainer
    from ichrt.runtime.session import load_model

    path = twin[0]
    proto = onnx.load(str(path))
    # a metadata-only copy (what calibration writes) keeps its twin
    proto.doc_string = "same weights, another file"
    relabelled = tmp_path / "relabelled.onnx"
    onnx.save(proto, str(relabelled))
    model = load_model(relabelled, provider="cpu", threads=1)
    with pytest.raises(ExplainError, match="no torch checkpoint"):
        GradCamExplainer(model)
    shutil.copy(path.with_suffix(".pt"), relabelled.with_suffix(".pt"))
    GradCamExplainer(model)
    # other weights are refused
    weight = proto.graph.initializer[0]
    array = onnx.numpy_helper.to_array(weight).copy()
    array.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(array, weight.name))
    other = tmp_path / "other.onnx"
    onnx.save(proto, str(other))
    shutil.copy(path.with_suffix(".pt"), other.with_suffix(".pt"))
    with pytest.raises(ExplainError, match="SHA-256"):
        GradCamExplainer(load_model(other, provider="cpu", threads=1))


@pytest.mark.torch
@pytest.mark.parametrize("twin", ["resnet18"], indirect=True)
def test_gradcam_refuses_torch_weights_that_disagree_with_onnx(twin):
    import torch

    from ichrt.nets import build_model
    from ichrt.runtime.explain.base import ExplainError
    from ichrt.runtime.explain.gradcam import GradCamExplainer
    from ichrt.runtime.session import load_model

    path, _, contract = twin
    torch.manual_seed(123)
    stranger = build_model(contract.arch, len(contract.labels)).eval()
    model = load_model(path, provider="cpu", threads=1)
    with pytest.raises(ExplainError, match="disagree"):
        GradCamExplainer(model, net=stranger).maps(_inputs(contract.input_size)[:1])


def test_gradcam_without_the_extra_names_it(tiny_model, monkeypatch):
    import sys

    from ichrt.runtime.explain.base import ExplainExtraMissing
    from ichrt.runtime.explain.batch import make_explainer
    from ichrt.runtime.session import load_model

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import now raises ImportError
    model = load_model(tiny_model[0], provider="cpu", threads=1)
    for method in ("gradcam", "gradcampp"):
        with pytest.raises(ExplainExtraMissing, match=r"'explain' extra.*ichrt\[explain\]"):
            make_explainer(method, model)
