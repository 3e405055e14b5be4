"""The torch twin of an ONNX model: the weights ``ichrt export`` writes beside it (``model.pt``).

Written by export (:func:`save_torch_twin`) and read by on-demand Grad-CAM
(:func:`load_torch_twin`): the format is defined here, once, so that the runtime never imports
:mod:`ichrt.export`.  The twin holds the architecture name, labels, contract and ``state_dict``;
it is rebuilt into the module export traced with :func:`ichrt.nets.build_model` (torch-only,
shared with training).

A twin records the SHA-256 of the ONNX graph it was exported with, metadata left out
(:func:`~ichrt.runtime.hashing.graph_sha256`): calibration rewrites only metadata, so a calibrated
copy keeps its twin, while any other weights are refused.

torch is imported inside the functions only; without it they raise
:class:`~ichrt.runtime.extras.ExtraNotInstalled` naming the ``explain`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ichrt.runtime.contract import ModelContract
from ichrt.runtime.extras import ExtraNotInstalled, needs_extra
from ichrt.runtime.hashing import file_sha256, graph_sha256

#: Written into every twin; a file without it is not one.
TWIN_FORMAT = "ichrt-torch-twin-1"


class TwinError(ValueError):
    """A file that is not an ichrt torch twin, or the twin of another ONNX graph."""


def twin_path(onnx_path: str | Path) -> Path:
    """Where export writes the twin of ``onnx_path``: same name, ``.pt`` suffix."""
    return Path(onnx_path).with_suffix(".pt")


def require_torch() -> Any:
    """The ``torch`` module, or :class:`ExtraNotInstalled` naming the ``explain`` extra."""
    try:
        import torch
        import torchvision  # noqa: F401  (ichrt.nets builds torchvision bodies)
    except ImportError as exc:
        raise ExtraNotInstalled(needs_extra("the torch twin", "explain",
                                            f"{exc.name} is missing")) from exc
    return torch


def save_torch_twin(net: Any, contract: ModelContract, onnx_path: str | Path,
                    onnx_sha256: str | None = None) -> Path:
    """Write the twin of ``net`` beside ``onnx_path`` (its export) and return its path."""
    torch = require_torch()
    onnx_path = Path(onnx_path)
    path = twin_path(onnx_path)
    torch.save({"format": TWIN_FORMAT, "arch": contract.arch, "labels": list(contract.labels),
                "onnx_sha256": onnx_sha256 or file_sha256(onnx_path),
                "graph_sha256": graph_sha256(onnx_path), "contract": contract.to_dict(),
                "model": net.state_dict()}, path)
    return path


def load_torch_twin(pt_path: str | Path, onnx_path: str | Path | None = None
                    ) -> tuple[Any, ModelContract]:
    """(the torch module in eval mode, its contract) from a twin file.

    With ``onnx_path`` the twin must name that file's graph, so Grad-CAM never explains other
    weights than the ones that scored.

    Raises:
        TwinError: not an ichrt torch twin, or one written for another ONNX graph.
        ExtraNotInstalled: torch or torchvision is missing.
    """
    torch = require_torch()
    from ichrt.nets import build_model

    pt_path = Path(pt_path)
    state = torch.load(pt_path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != TWIN_FORMAT:
        raise TwinError(f"{pt_path}: not an ichrt torch twin ({TWIN_FORMAT})")
    if onnx_path is not None and graph_sha256(onnx_path) != state.get("graph_sha256"):
        raise TwinError(f"{pt_path}: weights belong to another model than {onnx_path} "
                        "(graph SHA-256 differs); export them together again")
    net = build_model(state["arch"], len(state["labels"]))
    net.load_state_dict(state["model"])
    return net.eval(), ModelContract.from_dict(state["contract"])
