"""SHA-256 of model files: the whole file, and an ONNX graph without its metadata.

The file hash identifies a model in results, reports and calibration provenance; the graph hash
ties a torch twin to the weights and operators of an ONNX file, so that rewriting only its
metadata (calibration) keeps the twin.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ichrt.runtime.extras import ExtraNotInstalled, needs_extra

_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_sha256(path: str | Path) -> str:
    """Hex SHA-256 of an ONNX model's graph and opsets, without ``metadata_props`` and doc string.

    Needs the ``onnx`` package (the ``explain``, ``export`` and ``calibration`` extras bring it).
    """
    try:
        import onnx
    except ImportError as exc:
        raise ExtraNotInstalled(needs_extra("hashing an ONNX graph", "explain",
                                            f"{exc.name} is missing")) from exc
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.doc_string = ""
    return hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()
