"""The lean ichrt runtime: DICOM ingest, windowing, ONNX Runtime scoring, worklist, explanations.

Imports only NumPy, Numba, ONNX Runtime, pydicom and click; torch is imported only when a
torch-only feature (Grad-CAM) is asked for.  The data path, module by module:

    dicom (files -> Slice in HU) -> framing + windowing (-> model tensor) -> session (ONNX Runtime)
    -> pipeline (overlapped decode/window/infer) -> aggregate (studies) -> worklist (files)

``Scorer`` and ``score`` are re-exported here and imported on first use, so that
``import ichrt.runtime`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Scorer", "score"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ichrt.runtime import scorer

        return getattr(scorer, name)
    raise AttributeError(f"module 'ichrt.runtime' has no attribute {name!r}")
