"""Run one or more models over the same DICOM slices and keep their raw logits.

The runtime's scoring pipeline keeps only calibrated probabilities; calibration needs the raw
logits (temperature fitting) and the same slices seen by several models (FP32 versus INT8), so
this module runs :class:`~ichrt.runtime.session.LoadedModel` on the batches of
:func:`ichrt.calibration.batches.windowed_batches`: each file is decoded and windowed once, by the
runtime's own code, whatever the number of models. Probabilities are then computed from logits
with the runtime's :func:`ichrt.runtime.aggregate.calibrated_probabilities`, exactly as scoring
does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ichrt.calibration.batches import Progress, windowed_batches
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.slices import Rejected, SliceIdentity

if TYPE_CHECKING:
    from ichrt.runtime.batches import Batch

#: ``on_batch(batch, outputs)``: outputs[model name][output name] for one batch
#: (:class:`ichrt.runtime.batches.Batch`).
BatchHook = Callable[["Batch", dict[str, dict[str, np.ndarray]]], None]


@dataclass
class Predictions:
    """Raw logits of each model for every slice that could be read, in input order."""

    identities: list[SliceIdentity] = field(default_factory=list)
    logits: dict[str, np.ndarray] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def studies(self) -> np.ndarray:
        """Study of each slice (StudyInstanceUID; the file name when the file has none)."""
        return np.array([i.study_uid or Path(i.path).stem for i in self.identities], dtype=object)

    def probs(self, name: str, contract: ModelContract) -> np.ndarray:
        """Probabilities of model ``name`` as the runtime computes them (``sigmoid(z / T)``)."""
        from ichrt.runtime.aggregate import calibrated_probabilities

        return calibrated_probabilities(self.logits[name], contract)


def predict(
    models: Mapping[str, object],
    files: Sequence[Path],
    contract: ModelContract,
    batch_size: int = 16,
    outputs: tuple[str, ...] = ("logits",),
    on_batch: BatchHook | None = None,
    progress: Progress | None = None,
) -> Predictions:
    """Logits of every model in ``models`` (name -> LoadedModel) for the readable ``files``.

    ``contract`` drives preprocessing (all models must share it); ``outputs`` beyond
    ``logits`` (e.g. ``features``) are passed to ``on_batch`` and not kept.
    """
    result = Predictions()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    wanted = tuple(dict.fromkeys(("logits", *outputs)))
    for batch in windowed_batches(files, contract, batch_size, rejected=result.rejected,
                                  progress=progress):
        outs = {name: model.run(batch.tensor, wanted) for name, model in models.items()}
        for name, out in outs.items():
            chunks[name].append(np.asarray(out["logits"], np.float32))
        result.identities.extend(batch.identities)
        if on_batch is not None:
            on_batch(batch, outs)
    n_labels = len(contract.labels)
    result.logits = {
        name: np.concatenate(parts) if parts else np.zeros((0, n_labels), np.float32)
        for name, parts in chunks.items()
    }
    return result
