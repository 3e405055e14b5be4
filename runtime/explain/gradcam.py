"""Grad-CAM and Grad-CAM++ on demand, with PyTorch and pytorch-grad-cam (the ``explain`` extra).

torch is imported only here, only when one of these methods is asked for; without the extra an
:class:`~ichrt.runtime.explain.base.ExplainExtraMissing` error names it.

Weights: the torch twin that ``ichrt export`` writes beside the ONNX file (``model.onnx`` ->
``model.pt``, read by :func:`ichrt.runtime.torchtwin.load_torch_twin`), which records the SHA-256
of the ONNX graph it was exported with (metadata left out, so a calibrated copy keeps its twin).
The twin is refused unless that hash is the model graph's,
and the torch logits must match the ONNX Runtime logits on the very slices explained.  Chosen
over converting the ONNX graph back to torch because the checkpoint *is* the module export traced:
same layers, same parameters, exact gradients, and the target layer is known by name
(``IchNet.body``, whose output is the ONNX ``features``).  A graph converter (onnx2torch) would
add a dependency, cover only some operators, and rebuild modules whose gradients pass through
export-time rewrites (BatchNorm folded into convolutions, fused activations).

Target: the raw logit of the label (``ClassifierOutputTarget`` on the logits).  The model's
probability is ``sigmoid(logit)``, a monotone function of it, so the logit is the class score
Grad-CAM was defined on, whatever its sign.  pytorch-grad-cam's ``BinaryClassifierOutputTarget``
returns ``-logit`` for category 0, the class a negative logit predicts, and so explains the label's
absence; with independent sigmoid labels the question is always "where is the evidence for this
label", which is the raw logit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ichrt.runtime.explain.base import Explainer, ExplainError, ExplainExtraMissing, label_index
from ichrt.runtime.extras import needs_extra
from ichrt.runtime.torchtwin import TwinError, load_torch_twin, twin_path

#: Relative/absolute tolerance between torch and ONNX Runtime logits for the same weights.
PARITY_TOL = 1e-3


def require_extra() -> tuple[Any, Any]:
    """(torch, pytorch_grad_cam), or :class:`ExplainExtraMissing` naming the ``explain`` extra."""
    try:
        import pytorch_grad_cam
        import torch
        import torchvision  # noqa: F401  (the twin's bodies are torchvision networks)
    except ImportError as exc:
        raise ExplainExtraMissing(needs_extra(
            "Grad-CAM", "explain", f"torch, torchvision, grad-cam; {exc}")) from exc
    return torch, pytorch_grad_cam


def load_model_twin(model) -> Any:
    """The torch module (eval mode) behind ``model`` (a LoadedModel), tied to it by SHA-256.

    Raises:
        ExplainError: no twin beside the model, not an ichrt torch twin, or a twin written for
            another ONNX file (:class:`ExplainExtraMissing` without the ``explain`` extra).
    """
    require_extra()
    path = twin_path(model.path)
    if not path.is_file():
        raise ExplainError(
            f"{path}: no torch checkpoint beside {model.path.name}; Grad-CAM needs the one "
            "'ichrt export' writes there (use --method cam or hshap otherwise)"
        )
    try:
        net, _ = load_torch_twin(path, model.path)
    except TwinError as exc:
        raise ExplainError(f"{exc}; refusing to explain one model with another's weights") from exc
    except Exception as exc:
        raise ExplainError(f"{path}: not a readable torch checkpoint: {exc}") from exc
    return net


class GradCamExplainer(Explainer):
    """Grad-CAM (or Grad-CAM++) of one label on the torch twin of an ONNX model.

    Args:
        model: the :class:`~ichrt.runtime.session.LoadedModel` being explained.
        plusplus: Grad-CAM++ instead of Grad-CAM.
        net: the torch module to use (an ``IchNet``: ``forward`` -> logits, ``body`` -> the
            feature map); by default loaded from the checkpoint beside ``model``.
    """

    def __init__(self, model, plusplus: bool = False, net: Any = None) -> None:
        self._torch, cams = require_extra()
        self.name = "gradcampp" if plusplus else "gradcam"
        self.model = model
        self.net = (net if net is not None else load_model_twin(model)).eval()
        cls = cams.GradCAMPlusPlus if plusplus else cams.GradCAM
        target = self.net.cam_target() if hasattr(self.net, "cam_target") else self.net.body
        self.cam = cls(model=self.net, target_layers=[target])

    def maps(
        self,
        tensors: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        label: str = "any",
    ) -> np.ndarray:
        """Maps (N, S, S) in [0, 1] at the model input size (pytorch-grad-cam's scaling)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        idx = label_index(self.model.contract.labels, label)
        tensors = np.ascontiguousarray(tensors, np.float32)
        if not len(tensors):
            return np.zeros((0, *tensors.shape[-2:]), np.float32)
        targets = [ClassifierOutputTarget(idx)] * len(tensors)
        maps = self.cam(input_tensor=self._torch.from_numpy(tensors), targets=targets)
        torch_logits = self.cam.outputs.detach().cpu().numpy()
        if outputs is None or "logits" not in outputs:
            outputs = self.model.run(tensors, ("logits",))
        if not np.allclose(torch_logits, outputs["logits"], rtol=PARITY_TOL, atol=PARITY_TOL):
            gap = float(np.max(np.abs(torch_logits - outputs["logits"])))
            raise ExplainError(
                f"the torch weights and {self.model.path.name} disagree on these slices (max "
                f"logit difference {gap:.3g}); refusing Grad-CAM of a different model"
            )
        return np.asarray(maps, np.float32)
