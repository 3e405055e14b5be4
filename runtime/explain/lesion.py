"""The lesion map of lesion-level models as an explanation (no torch, no extra model run).

The model's own ``lesion`` output (see :mod:`ichrt.runtime.lesion`): a probability per
``lesion_stride`` cell that the cell is bleeding. It explains the ``any`` decision directly, since
that logit includes the map's top-k pool. Other labels have no map of their own.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ichrt.runtime.explain.base import Explainer, ExplainError
from ichrt.runtime.lesion import lesion_probabilities


class LesionExplainer(Explainer):
    """Maps (N, S/stride, S/stride): the lesion probabilities of the ONNX ``lesion`` output."""

    name = "lesion"

    def __init__(self, model) -> None:
        """``model``: a :class:`~ichrt.runtime.session.LoadedModel` with a lesion output."""
        if model.contract.lesion_stride is None:
            raise ExplainError("the lesion method needs a lesion-level model (no 'lesion' "
                               "output in this model); use cam, gradcam, gradcampp or hshap")
        self.model = model

    def maps(
        self,
        tensors: np.ndarray,
        outputs: Mapping[str, np.ndarray] | None = None,
        label: str = "any",
    ) -> np.ndarray:
        if label != "any":
            raise ExplainError(f"the lesion map explains 'any' only, not {label!r}")
        if outputs is None or "lesion" not in outputs:
            outputs = self.model.run(tensors, ("lesion",))
        return lesion_probabilities(outputs["lesion"])
