"""The torch networks of ichrt: what a checkpoint or a torch twin is rebuilt into.

Torch-only (torch, torchvision) and independent of the rest of ichrt, so that both training and
export (:mod:`ichrt.export`) and the runtime's on-demand Grad-CAM (:mod:`ichrt.runtime.torchtwin`,
which imports this module lazily) rebuild the same modules without the runtime importing export.

Every :class:`IchNet` has ``body`` (input -> last convolutional feature map) and ``head``
(feature map -> logits). ``forward`` returns logits; :meth:`IchNet.features` the feature map.

Architectures (torchvision, always built with ``weights=None``: nothing is downloaded):
``resnet10`` (torchvision's ResNet with one BasicBlock per stage), ``resnet18``, ``resnet50``,
``densenet121``, ``efficientnet_b0`` with a GAP + Linear head, and
``rsnahemorrhagenet``, the seed tutorial's shape (Sulam-Group/h-shap,
``demo/RSNA_ICH_detection/model.py``): a ResNet-18 encoder whose ``fc`` is Linear(512, 128)
followed by ``classifier`` = Linear(128, 1) and a sigmoid. The published code has no
non-linearity between the two linear layers, so its head is still one linear map of the pooled
features and CAM applies (the product of the two weight matrices). ``resnet10seg`` and
``resnet18seg`` add a dense lesion head (:class:`LesionNet`).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

ARCHS: tuple[str, ...] = ("resnet10", "resnet18", "resnet50", "densenet121", "efficientnet_b0",
                          "rsnahemorrhagenet", "resnet10seg", "resnet18seg")


class GapLinear(nn.Module):
    """Global average pooling then one linear layer (optional dropout in training only)."""

    def __init__(self, channels: int, outputs: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, outputs)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(features.mean(dim=(2, 3))))


class RsnaHead(nn.Module):
    """The seed tutorial's head: GAP -> Linear(512, 128) -> Linear(128, outputs)."""

    def __init__(self, channels: int = 512, outputs: int = 1, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, outputs)
        nn.init.kaiming_normal_(self.fc1.weight)
        nn.init.constant_(self.fc1.bias, 0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(features.mean(dim=(2, 3))))


class IchNet(nn.Module):
    """``body`` -> feature map -> ``head`` -> logits."""

    def __init__(self, arch: str, body: nn.Module, head: nn.Module, channels: int) -> None:
        super().__init__()
        self.arch = arch
        self.channels = channels
        self.body = body
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (N, K, h, w)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, features) in one pass."""
        f = self.body(x)
        return self.head(f), f

    def cam_target(self) -> nn.Module:
        """The module whose output is ``features`` (Grad-CAM hooks it)."""
        return self.body


def _resnet_body(net: nn.Module) -> nn.Module:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))


def build_model(arch: str, outputs: int) -> IchNet:
    """A freshly initialized model with ``outputs`` logits (6 = multi-label, 1 = any only)."""
    from torchvision import models

    if arch in DENSE_ARCHS:
        return build_dense_model(arch, outputs)
    if arch == "resnet10":
        # torchvision's ResNet with one BasicBlock per stage: ~4.9 M parameters (a ~20 MB ONNX
        # file, within the 25 MB package budget that resnet18's 45 MB exceeds), ~60% of its FLOPs.
        net = models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1])
        return IchNet(arch, _resnet_body(net), GapLinear(net.fc.in_features, outputs),
                      net.fc.in_features)
    if arch in ("resnet18", "resnet50", "rsnahemorrhagenet"):
        net = getattr(models, "resnet50" if arch == "resnet50" else "resnet18")(weights=None)
        channels = net.fc.in_features
        head = (RsnaHead(channels, outputs) if arch == "rsnahemorrhagenet"
                else GapLinear(channels, outputs))
        return IchNet(arch, _resnet_body(net), head, channels)
    if arch == "densenet121":
        net = models.densenet121(weights=None)
        body = nn.Sequential(OrderedDict(features=net.features, relu=nn.ReLU(inplace=False)))
        return IchNet(arch, body, GapLinear(net.classifier.in_features, outputs), 1024)
    if arch == "efficientnet_b0":
        net = models.efficientnet_b0(weights=None)
        channels = net.classifier[1].in_features
        body = nn.Sequential(OrderedDict(features=net.features))
        return IchNet(arch, body, GapLinear(channels, outputs, dropout=0.2), channels)
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHS)}")


# -- the lesion-level model --------------------------------------------------------------------

#: Architectures with a dense lesion head (see :class:`LesionNet`).
DENSE_ARCHS: tuple[str, ...] = ("resnet10seg", "resnet18seg")


class FpnDecoder(nn.Module):
    """A light FPN: lateral 1x1 convs of the four ResNet stages, top-down sum, 3x3 refinement.

    Returns lesion logits (N, 1, S/4, S/4) at the stride of ``layer1`` (4).
    """

    def __init__(self, channels: tuple[int, ...] = (64, 128, 256, 512), width: int = 32) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.refine = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(width, 1, 1)
        # Start the map near "no lesion" (p ~ 0.01) so that early training is not flooded.
        nn.init.constant_(self.out.bias, -4.0)

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        import torch.nn.functional as F

        top = self.lateral[-1](stages[-1])
        for lat, feat in zip(reversed(self.lateral[:-1]), reversed(stages[:-1])):
            top = lat(feat) + F.interpolate(top, size=feat.shape[-2:], mode="nearest")
        return self.out(self.refine(top))


def topk_pool(lesion: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """Mean of the top ``fraction`` of each map's logits (N,): "is there a bleeding region?".

    At least one pixel; 1 % of a 40x40 map is its 16 strongest cells (a small bleed).
    """
    flat = lesion.flatten(1)
    k = max(1, round(fraction * flat.shape[1]))
    return flat.topk(k, dim=1).values.mean(dim=1)


class LesionNet(IchNet):
    """ResNet body + FPN lesion head; the ``any`` logit is tied to the lesion map.

    ``logits[:, 0] = global_any + topk_pool(lesion)``: a slice is called bleeding when the global
    head and the strongest region of the map agree, so "bleed" means "a bleeding region is
    found". Subtype logits come from the global GAP + linear head.
    """

    def __init__(self, arch: str, net: nn.Module, outputs: int, pool_fraction: float = 0.01
                 ) -> None:
        channels = net.fc.in_features
        super().__init__(arch, _resnet_body(net), GapLinear(channels, outputs), channels)
        stage_channels = tuple(getattr(net, f"layer{i}")[-1].conv2.out_channels
                               for i in range(1, 5))
        self.decoder = FpnDecoder(stage_channels)
        self.pool_fraction = pool_fraction

    def forward_dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor]:
        """(logits, features, lesion logits (N, 1, S/4, S/4), pooled lesion logit (N,))."""
        b = self.body
        h = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        stages = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(b, name)(h)
            stages.append(h)
        lesion = self.decoder(stages)
        pooled = topk_pool(lesion, self.pool_fraction)
        logits = self.head(h)
        logits = torch.cat([logits[:, :1] + pooled[:, None], logits[:, 1:]], dim=1)
        return logits, h, lesion, pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_dense(x)[0]

    def cam_target(self) -> nn.Module:
        """``body.layer4``: :meth:`forward_dense` runs the body's stages one by one, so a hook
        on ``body`` itself would never fire."""
        return self.body.layer4

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, features, _, _ = self.forward_dense(x)
        return logits, features


def build_dense_model(arch: str, outputs: int) -> LesionNet:
    """A freshly initialized :class:`LesionNet` (``resnet10seg`` or ``resnet18seg``)."""
    from torchvision import models

    if arch == "resnet10seg":
        return LesionNet(arch, models.ResNet(models.resnet.BasicBlock, [1, 1, 1, 1]), outputs)
    if arch == "resnet18seg":
        return LesionNet(arch, models.resnet18(weights=None), outputs)
    raise ValueError(f"unknown dense architecture {arch!r}; known: {', '.join(DENSE_ARCHS)}")
