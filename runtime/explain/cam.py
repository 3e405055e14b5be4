"""Class activation mapping from the ONNX ``features`` output, without torch.

For a head that is global average pooling followed by one linear layer, ``logit_c = b_c +
sum_k W_ck * mean_ij A_k(i, j)``, so the gradient of the logit with respect to ``A_k(i, j)`` is
``W_ck / (h * w)`` everywhere: Grad-CAM's channel weights (the spatial mean of that gradient) are
``W_ck / (h * w)`` and Grad-CAM equals CAM.  :func:`cam_maps` therefore computes
``ReLU(sum_k W_ck A_k / (h * w))``: each cell's share of the logit (before the ReLU the map sums
to ``logit_c - b_c``), identical to pytorch-grad-cam's GradCAM map before its scaling.

Heads of another form (e.g. the seed's ResNet-18 -> 128 -> 1 MLP) have no such weights: their
contract carries ``cam_weights = None`` and :func:`cam_maps` raises :class:`CamUnavailable`, so
callers fall back to Grad-CAM (torch) or h-Shap.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.explain.base import Explainer, ExplainError, label_index


class CamUnavailable(ExplainError):
    """The model's head is not GAP + Linear, so CAM cannot be computed from its outputs."""


def require_cam_weights(contract: ModelContract) -> None:
    """Raise :class:`CamUnavailable` unless the contract carries GAP + Linear head weights."""
    if contract.cam_weights is None:
        raise CamUnavailable(
            f"model {contract.name!r} (arch {contract.arch!r}) has no cam_weights in its contract: "
            "its head is not global average pooling + one linear layer, so CAM cannot be "
            "computed without torch; use --method gradcam (needs the 'explain' extra) or hshap"
        )


def cam_maps(features: np.ndarray, contract: ModelContract, label: str = "any") -> np.ndarray:
    """CAM maps (N, h, w) float32 of ``label`` from ``features`` (N, K, h, w); ReLU'd, not resized.

    Raises:
        CamUnavailable: the contract has no ``cam_weights`` (head not GAP + Linear).
        ExplainError: unknown label or a feature map that does not match the weights.
    """
    require_cam_weights(contract)
    features = np.asarray(features, np.float32)
    weights = np.asarray(contract.cam_weights[label_index(contract.labels, label)], np.float32)
    if features.ndim != 4 or features.shape[1] != weights.size:
        raise ExplainError(
            f"features of shape {features.shape} do not match cam_weights with {weights.size} "
            "channels (expected (N, K, h, w))"
        )
    h, w = features.shape[2:]
    cam = np.einsum("nkhw,k->nhw", features, weights / np.float32(h * w))
    return np.maximum(cam, 0.0).astype(np.float32, copy=False)


class CamExplainer(Explainer):
    """CAM from the ONNX model's own outputs: free when scoring already produced ``features``."""

    name = "cam"

    def __init__(self, model) -> None:
        """``model``: a :class:`~ichrt.runtime.session.LoadedModel`."""
        require_cam_weights(model.contract)
        self.model = model

    def maps(
        self,
        tensors: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        label: str = "any",
    ) -> np.ndarray:
        if outputs is None or "features" not in outputs:
            outputs = self.model.run(tensors, ("features",))
        return cam_maps(outputs["features"], self.model.contract, label)
