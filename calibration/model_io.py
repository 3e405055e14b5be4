"""Write a derived model file (calibrated or quantized) with its updated contract and lineage.

A derived model never overwrites its parent: it is a new file whose contract records the parent's
SHA-256, the step that produced it and the parent's own provenance, so that any shipped model can
be traced back to the export it came from. Files are written to a temporary name beside the
target and renamed into place, so a crash never leaves half a model behind.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ichrt.runtime.contract import METADATA_KEY, ModelContract
from ichrt.runtime.hashing import file_sha256

if TYPE_CHECKING:
    import onnx


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Load an ONNX file, naming it in the error when it cannot be read."""
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, OSError, onnx's own errors
        raise ValueError(f"{path}: cannot read the ONNX model: {exc}") from exc


def model_contract(model: onnx.ModelProto, source: str = "model") -> ModelContract:
    """The contract stored in a loaded ONNX model (ContractError when absent or invalid)."""
    return ModelContract.from_metadata({p.key: p.value for p in model.metadata_props}, source)


def derive_contract(
    parent: ModelContract, parent_sha256: str, step: str, details: dict[str, Any] | None = None,
    **changes: Any,
) -> ModelContract:
    """The parent's contract with ``changes`` applied and provenance pointing at the parent.

    ``provenance`` becomes ``{"parent": sha256, "parent_name", "step", "created", "details",
    "parent_provenance"}``; nesting the parent's provenance keeps the whole lineage.
    """
    provenance = {
        "parent": parent_sha256,
        "parent_name": parent.name,
        "step": step,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "details": details or {},
        "parent_provenance": parent.provenance,
    }
    return parent.with_updates(provenance=provenance, **changes)


def write_model(
    model: onnx.ModelProto, contract: ModelContract, out: str | Path,
    parent_path: str | Path | None = None,
) -> str:
    """Write ``model`` with ``contract`` in its metadata to ``out``; returns the new file's SHA-256.

    Raises:
        ValueError: when ``out`` is the parent file itself (the parent is never overwritten).
    """
    import onnx

    out = Path(out)
    if parent_path is not None and out.resolve() == Path(parent_path).resolve():
        raise ValueError(f"{out}: refusing to overwrite the parent model; choose another --out")
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    for key, value in [*kept, *contract.to_metadata().items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a model file is meant to be shared
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return file_sha256(out)
