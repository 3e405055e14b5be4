"""Training checkpoint -> ONNX model that carries its own preprocessing contract.

:func:`export_onnx` writes, for a run folder or checkpoint file:
- ``model.onnx``: input ``image`` (N, C, S, S) float32 with a dynamic batch axis; outputs
  ``probs`` (N, labels) = sigmoid(logits), ``logits`` and ``features`` (N, K, h, w), the last
  convolutional feature map; opset :data:`OPSET`; the :class:`ModelContract` in
  ``metadata_props`` (windows, input size, normalization, framing, labels, thresholds,
  architecture, CAM weights, provenance, validation metrics, versions). ``onnx.checker`` passes
  and ONNX Runtime is checked against torch on the same input before anything is written.
- ``labels.json`` beside it: label names and order, thresholds, and the class-folder mapping of
  ImageFolder training data.
- ``<model>.pt`` beside it: the torch twin (:mod:`ichrt.runtime.torchtwin`, which defines its
  format and reads it for on-demand Grad-CAM), tied to the ONNX graph by the SHA-256 of the graph
  (weights and operators, metadata left out: :func:`~ichrt.runtime.hashing.graph_sha256`).
  Calibration rewrites only the metadata (temperatures, thresholds), so a calibrated model keeps
  its twin; a quantized graph does not.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ichrt.export.models import cam_parameters, count_parameters
from ichrt.export.provenance import versions
from ichrt.nets import IchNet, LesionNet, build_model
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.hashing import file_sha256
from ichrt.runtime.torchtwin import save_torch_twin

OPSET = 18
INPUT_NAME = "image"
OUTPUT_NAMES = ("probs", "logits", "features")
#: Dense models add ``lesion``: lesion logits (N, 1, S/stride, S/stride).
LESION_OUTPUT = "lesion"
#: Largest torch-vs-ONNX Runtime difference export accepts: absolute on probabilities, relative
#: to the largest feature (when above 1) on features.
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, or an export that fails its checks."""


class _Outputs(nn.Module):
    """The ichrt model I/O convention around an :class:`IchNet`."""

    def __init__(self, model: IchNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, LesionNet):
            logits, features, lesion, _ = self.model.forward_dense(image)
            return torch.sigmoid(logits), logits, features, lesion
        logits, features = self.model.forward_all(image)
        return torch.sigmoid(logits), logits, features


def output_names(model: IchNet) -> tuple[str, ...]:
    """The ONNX outputs of ``model``: :data:`OUTPUT_NAMES`, plus ``lesion`` for dense models."""
    return OUTPUT_NAMES + ((LESION_OUTPUT,) if isinstance(model, LesionNet) else ())


def resolve_checkpoint(source: str | Path, which: str = "last") -> Path:
    """The checkpoint file of a run folder (``last`` = checkpoint.pt, ``best`` = best.pt) or
    ``source`` itself when it is a file."""
    from ichrt.export.train import BEST, CHECKPOINT

    path = Path(source)
    if path.is_dir():
        if which not in ("last", "best"):
            raise ValueError(f"which must be 'last' or 'best', got {which!r}")
        path = path / (CHECKPOINT if which == "last" else BEST)
    if not path.is_file():
        raise ExportError(f"{path}: checkpoint not found")
    return path


def load_checkpoint(path: Path) -> tuple[IchNet, dict[str, Any], dict[str, Any] | None]:
    """(model in eval mode, run metadata, validation metrics) from a training checkpoint."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "meta" not in state or "model" not in state:
        raise ExportError(f"{path}: not an ichrt training checkpoint")
    meta = state["meta"]
    contract = meta["contract"]
    model = build_model(meta["config"]["arch"], len(contract["labels"]))
    model.load_state_dict(state["model"])
    model.eval()
    metrics = state.get("metrics")
    if metrics is None and state.get("history"):
        metrics = state["history"][-1]
    return model, meta, metrics


def _validation_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    keep = ("auc", "sensitivity", "specificity", "threshold", "val_loss", "n_val", "per_source",
            "stage", "epoch", "global_step", "complete")
    return {k: metrics[k] for k in keep if metrics and k in metrics}


def build_contract(model: IchNet, meta: dict[str, Any], metrics: dict[str, Any] | None,
                   checkpoint: Path) -> ModelContract:
    """The run's training contract completed with CAM weights, provenance, metrics, versions."""
    cam = cam_parameters(model)
    provenance = dict(meta.get("provenance", {}))
    provenance.update({
        "checkpoint": checkpoint.name,
        "parameters": count_parameters(model),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cam": "GAP + linear head: CAM weights stored" if cam is not None
        else "head is not GAP + one linear map: no CAM weights, use Grad-CAM",
    })
    if isinstance(model, LesionNet):
        provenance["lesion"] = ("FPN lesion map at stride 4 (output 'lesion', logits); the any "
                                "logit adds the top-k pooled lesion logit")
    base = ModelContract.from_dict(meta["contract"])
    return base.with_updates(
        lesion_stride=4 if isinstance(model, LesionNet) else None,
        cam_weights=None if cam is None else tuple(tuple(float(v) for v in r) for r in cam[0]),
        cam_bias=None if cam is None else tuple(float(v) for v in cam[1]),
        provenance=provenance,
        metrics={"validation": _validation_metrics(metrics)},
        versions={**meta.get("versions", {}), **versions()},
    )


def _example_input(contract: ModelContract, n: int = 2) -> torch.Tensor:
    """Phantom slices (a positive study) through the runtime's windowing: the export's trace
    input and parity check."""
    from ichrt.runtime.batches import window_hu
    from ichrt.runtime.synth import generate_study

    hu = generate_study(seed=7, n_slices=n, size=128, positive=True).hu[:n]
    return torch.from_numpy(window_hu(hu, contract)[0])


def _torch_export(wrapper: nn.Module, example: torch.Tensor, path: Path) -> None:
    """torch.onnx (dynamo) export with a dynamic batch axis, its console chatter captured."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), torch.no_grad():
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=[INPUT_NAME],
            output_names=list(output_names(wrapper.model)), opset_version=OPSET, dynamo=True,
            external_data=False, dynamic_shapes=({0: batch},), verbose=False,
        )


def parity(onnx_path: Path, wrapper: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """Max abs difference between torch and ONNX Runtime (CPU) for every output, plus the
    largest feature magnitude (``features_scale``) that the feature difference is judged by."""
    import onnxruntime as ort

    names = output_names(wrapper.model)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(names), {INPUT_NAME: example.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in wrapper(example)]
    diffs = {name: float(np.max(np.abs(g - w))) for name, g, w in zip(names, got, want)}
    diffs["features_scale"] = float(np.max(np.abs(want[2])))
    return diffs


def export_onnx(
    source: str | Path,
    out: str | Path,
    which: str = "last",
    name: str | None = None,
    labels_json: str | Path | None = None,
) -> ModelContract:
    """Export a run (folder or checkpoint file) to ``out`` with its contract; see the module doc.

    Returns the contract written into the model.

    Raises:
        ExportError: the checkpoint is not usable, ``onnx.checker`` fails, or ONNX Runtime
            disagrees with torch by more than :data:`PARITY_TOLERANCE` on probs or features.
    """
    import onnx

    checkpoint = resolve_checkpoint(source, which)
    model, meta, metrics = load_checkpoint(checkpoint)
    contract = build_contract(model, meta, metrics, checkpoint)
    if name:
        contract = contract.with_updates(name=name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _Outputs(model).eval()
    example = _example_input(contract)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        _torch_export(wrapper, example, raw)
        diffs = parity(raw, wrapper, example)
        if (diffs["probs"] > PARITY_TOLERANCE
                or diffs["features"] > PARITY_TOLERANCE * max(1.0, diffs["features_scale"])
                or diffs.get(LESION_OUTPUT, 0.0) > 10 * PARITY_TOLERANCE):
            raise ExportError(f"{out}: ONNX Runtime differs from torch: {diffs}")
        contract = contract.with_updates(
            provenance={**contract.provenance, "parity_max_abs_diff": diffs})
        proto = onnx.load(str(raw))
    for key, value in contract.to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{contract.name}: ichrt hemorrhage model ({contract.arch})"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{out}: onnx.checker failed: {exc}") from exc
    tmp_out = out.with_suffix(out.suffix + ".tmp")
    onnx.save(proto, str(tmp_out))
    os.replace(tmp_out, out)
    sha = file_sha256(out)
    _write_labels(Path(labels_json) if labels_json else out.parent / "labels.json", out, sha,
                  contract, meta)
    save_torch_twin(model, contract, out, sha)
    return contract


def _write_labels(path: Path, model_path: Path, sha: str, contract: ModelContract,
                  meta: dict[str, Any]) -> None:
    doc = {
        "model": model_path.name,
        "sha256": sha,
        "labels": list(contract.labels),
        "index": {name: i for i, name in enumerate(contract.labels)},
        "thresholds": contract.thresholds,
        "class_mapping": meta.get("provenance", {}).get("class_mapping", {}),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
