"""What training and export do with the networks of :mod:`ichrt.nets`: CAM weights, weight files.

The architectures themselves (:class:`~ichrt.nets.IchNet`, its heads,
:func:`~ichrt.nets.build_model`) live in :mod:`ichrt.nets`, a torch-only module that the
runtime's Grad-CAM imports too (to rebuild the torch twin) without importing export.
:func:`cam_parameters` gives the head as one linear map of the globally average-pooled features
(CAM weights), or None where it is not one.

Weight files (:func:`load_weights`, local files only) may hold:
- an ichrt checkpoint (``{"model": state_dict, ...}``) or its bare state_dict (``body.*``,
  ``head.*``);
- the published RSNAHemorrhageNet state_dict: ``encoder.<resnet18 keys>``, ``encoder.fc.weight``
  (128, 512), ``encoder.fc.bias``, ``classifier.0.weight`` (1, 128), ``classifier.0.bias``;
- a torchvision state_dict of the same architecture (e.g. ImageNet weights saved with
  ``torch.save(model.state_dict())``): ``conv1.*``/``layer*.*`` or ``features.*``; its
  classifier (``fc``/``classifier``) is loaded only when its shape fits the head.
A ``module.`` prefix (DataParallel) and ``{"state_dict": ...}`` wrappers are accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ichrt.nets import GapLinear, IchNet, LesionNet, RsnaHead


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def head_linear(model: IchNet) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(W labels x K, b) with logits = W @ mean_hw(features) + b (differentiable), or None.

    Exact for GAP + Linear heads and for the seed's GAP + Linear + Linear head (folded into one
    map); any other head gives None.
    """
    head = model.head
    if isinstance(model, LesionNet):  # the any logit also holds the pooled lesion map
        return None
    if isinstance(head, GapLinear):
        return head.fc.weight, head.fc.bias
    if isinstance(head, RsnaHead):
        w = head.fc2.weight @ head.fc1.weight
        return w, head.fc2.weight @ head.fc1.bias + head.fc2.bias
    return None


def cam_parameters(model: IchNet) -> tuple[np.ndarray, np.ndarray] | None:
    """The CAM weights and bias of :func:`head_linear` as float32 arrays, or None.

    None means the runtime cannot compute CAM without torch for this head and must fall back.
    """
    lin = head_linear(model)
    if lin is None:
        return None
    w, b = lin
    return (w.detach().double().cpu().numpy().astype(np.float32),
            b.detach().double().cpu().numpy().astype(np.float32))


def torch_cam_maps(model: IchNet, features: torch.Tensor) -> torch.Tensor | None:
    """Class activation maps (N, labels, h, w) before ReLU, differentiable; None if no CAM head.

    Their spatial mean plus the bias equals the logits.
    """
    lin = head_linear(model)
    if lin is None:
        return None
    return torch.einsum("lk,nkhw->nlhw", lin[0].to(features.dtype), features)


# -- weight files ------------------------------------------------------------------------------

_TORCHVISION_HEADS = {
    "resnet18": ("fc.",), "resnet50": ("fc.",), "densenet121": ("classifier.",),
    "efficientnet_b0": ("classifier.1.",),
}


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a state_dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def translate_keys(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a foreign state_dict's keys to this module's ``body.*`` / ``head.*`` names."""
    if any(k.startswith(("body.", "head.")) for k in state):
        return dict(state)
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith(("encoder.", "classifier.0.")) for k in state):  # published seed format
        for k, v in state.items():
            if k.startswith("encoder.fc."):
                out["head.fc1." + k.removeprefix("encoder.fc.")] = v
            elif k.startswith("encoder."):
                out["body." + k.removeprefix("encoder.")] = v
            elif k.startswith("classifier.0."):
                out["head.fc2." + k.removeprefix("classifier.0.")] = v
        return out
    head_prefixes = _TORCHVISION_HEADS.get(arch, ("fc.",))
    head_target = "head.fc2." if arch == "rsnahemorrhagenet" else "head.fc."
    for k, v in state.items():
        hp = next((p for p in head_prefixes if k.startswith(p)), None)
        out[(head_target + k.removeprefix(hp)) if hp else ("body." + k)] = v
    return out


def load_weights(model: IchNet, path: str | Path) -> dict[str, list[str]]:
    """Load a local weight file into ``model`` (see the module docstring for accepted formats).

    Tensors whose shape does not fit (e.g. an ImageNet classifier for a 6-label head) are left
    at their initialization and reported. Returns ``{"loaded", "skipped", "missing"}`` key lists.

    Raises:
        ValueError: naming the file when it is not a state_dict or nothing in it fits.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found (only local files can be used)")
    state = translate_keys(model.arch, _unwrap(torch.load(path, map_location="cpu",
                                                          weights_only=True), path))
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("body.") for k in fits):
        raise ValueError(f"{path}: no tensor fits architecture {model.arch!r} "
                         f"({len(state)} tensors in the file)")
    model.load_state_dict(fits, strict=False)
    return {"loaded": sorted(fits), "skipped": sorted(set(state) - set(fits)),
            "missing": sorted(set(own) - set(fits))}
