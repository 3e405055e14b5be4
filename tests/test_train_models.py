"""Architectures, CAM parameters of the heads, and loading weight files (incl. the seed's)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision import models as tvm

from ichrt.export.models import cam_parameters, load_weights, torch_cam_maps
from ichrt.nets import ARCHS, build_model

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("arch,channels", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048),
                                           ("densenet121", 1024), ("efficientnet_b0", 1280),
                                           ("rsnahemorrhagenet", 512)])
def test_every_arch_exposes_features_and_head(arch, channels):
    torch.manual_seed(0)
    model = build_model(arch, 6).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model.forward_all(x)
        assert logits.shape == (2, 6)
        assert feats.shape == (2, channels, 2, 2)  # stride 32
        assert torch.allclose(model.head(model.features(x)), model(x), atol=1e-6)
        w, b = (torch.from_numpy(a) for a in cam_parameters(model))
        # CAM weights reproduce the logits from the pooled features (GAP + linear head)
        assert torch.allclose(feats.mean(dim=(2, 3)) @ w.T + b, logits, atol=1e-4)
        assert torch.allclose(torch_cam_maps(model, feats).mean(dim=(2, 3)) + b, logits, atol=1e-4)
    assert set(ARCHS) >= {arch}


def test_a_head_that_is_not_linear_has_no_cam_weights():
    model = build_model("resnet18", 1)
    model.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 8),
                               nn.ReLU(), nn.Linear(8, 1))
    assert cam_parameters(model) is None


class PublishedRSNAHemorrhageNet(nn.Module):
    """The seed tutorial's module as published (Sulam-Group/h-shap), without pretrained weights."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = tvm.resnet18(weights=None)
        self.encoder.fc = nn.Linear(512, 128)
        self.classifier = nn.Sequential(nn.Linear(128, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))


def test_loads_the_published_rsnahemorrhagenet_state_dict(tmp_path):
    torch.manual_seed(3)
    published = PublishedRSNAHemorrhageNet().eval()
    path = tmp_path / "model.pt"
    torch.save(published.state_dict(), path)
    ours = build_model("rsnahemorrhagenet", 1)
    report = load_weights(ours, path)
    assert report["skipped"] == [] and report["missing"] == []
    ours.eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(ours(x)), published(x), atol=1e-6)


def test_loads_torchvision_weights_and_keeps_a_fresh_head(tmp_path):
    torch.manual_seed(4)
    tv = tvm.resnet18(weights=None)
    path = tmp_path / "imagenet.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tv.state_dict().items()}}, path)
    ours = build_model("resnet18", 6)
    report = load_weights(ours, path)
    assert report["skipped"] == ["head.fc.bias", "head.fc.weight"]  # 1000 classes do not fit
    assert torch.equal(ours.body.conv1.weight, tv.conv1.weight)


def test_unusable_weight_files_are_named(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"x": 1}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_weights(build_model("resnet18", 1), bad)
    other = tmp_path / "densenet.pt"
    torch.save(tvm.densenet121(weights=None).state_dict(), other)
    with pytest.raises(ValueError, match="no tensor fits"):
        load_weights(build_model("resnet18", 1), other)
    with pytest.raises(FileNotFoundError, match="only local files"):
        load_weights(build_model("resnet18", 1), tmp_path / "missing.pt")
