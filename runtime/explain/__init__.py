"""Heat-map explanations of flagged slices: CAM, Grad-CAM, Grad-CAM++ and h-Shap.

One interface, one small module per method (the pytorch-grad-cam pattern):

* :mod:`.base` - :class:`Explainer` (``maps(tensors, outputs, label) -> (N, h, w)``) and what all
  methods share: :func:`to_slice` (undo the framing box, bilinear onto the slice pixels),
  :func:`normalize`, :func:`otsu_threshold`, :func:`peak_location`.
* :mod:`.cam` - ``cam_maps(features, contract, label="any")``: CAM from the ONNX ``features`` output
  and ``contract.cam_weights`` (no torch; equals Grad-CAM for GAP + Linear heads; raises
  :class:`~.cam.CamUnavailable` otherwise so callers fall back).
* :mod:`.gradcam` - Grad-CAM / Grad-CAM++ with pytorch-grad-cam on the torch checkpoint written
  beside the ONNX file (``model.pt``, tied by the ONNX sha256); torch is imported only there.
* :mod:`.hshap` - h-Shap over ONNX Runtime (exact hierarchical Shapley values, cycle spinning).
* :mod:`.metrics` - pointing game, energy share, Otsu IoU; boxes -> mask.
* :mod:`.files` - ``explain_files(files, model, explainer, out_dir, ...)``: DICOM files through
  :func:`ichrt.runtime.batches.iter_batches` to written explanations (``ichrt explain``).
* :mod:`.overlay` / :mod:`.output` - PNG overlay and ``write_explanation(out_dir, name, hu,
  heatmap, method, boxes=None, mask=None, extra=None, frame=None) -> summary dict``.

The shared path of ``ichrt explain`` and ``ichrt score --explain`` (:mod:`.batch`)::

    explainer = make_explainer("cam", model)            # model: a LoadedModel; once per run
    found = explain_slices(explainer, tensors, boxes, shapes, outputs=outputs)
    for item, hu, name in zip(found, hu_slices, names):
        write_explanation(out, name, hu, item.heatmap, item.method,
                          extra={"seconds": item.seconds})

``tensors``/``boxes`` are what :func:`ichrt.runtime.batches.window_hu` returns; ``outputs``
the model outputs already computed for them (CAM then costs one small einsum).  A CAM kept during
scoring at feature resolution can go straight to ``write_explanation(..., frame=box)``.

Importing this package and computing CAM or h-Shap never imports torch.
"""

from ichrt.runtime.explain.base import (
    METHODS,
    Explainer,
    ExplainError,
    ExplainExtraMissing,
    normalize,
    otsu_threshold,
    peak_location,
    to_slice,
)
from ichrt.runtime.explain.batch import SliceExplanation, explain_slices, make_explainer
from ichrt.runtime.explain.cam import CamUnavailable, cam_maps
from ichrt.runtime.explain.output import write_explanation

__all__ = [
    "METHODS",
    "CamUnavailable",
    "ExplainError",
    "ExplainExtraMissing",
    "Explainer",
    "SliceExplanation",
    "cam_maps",
    "explain_slices",
    "make_explainer",
    "normalize",
    "otsu_threshold",
    "peak_location",
    "to_slice",
    "write_explanation",
]
