"""DICOM files -> explanations in a folder: the library behind ``ichrt explain``.

Files go through :func:`ichrt.runtime.batches.iter_batches` (the runtime's ingest, duplicate
rule and windowing, HU kept for the overlays); each batch is scored once, the slices whose
p(label) reaches the threshold (every slice without one) are explained with
:func:`~ichrt.runtime.explain.batch.explain_slices`, and written with
:func:`~ichrt.runtime.explain.output.write_explanation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.aggregate import calibrated_probabilities
from ichrt.runtime.batches import Batch, iter_batches
from ichrt.runtime.explain.base import Explainer
from ichrt.runtime.explain.batch import explain_slices
from ichrt.runtime.explain.output import write_explanation
from ichrt.runtime.slices import Rejected

#: ``progress(done, total)``: called as input files are accounted for.
Progress = Callable[[int, int], None]


def explain_files(
    files: Sequence[str | Path],
    model,
    explainer: Explainer,
    out_dir: Path,
    label: str = "any",
    cut: float | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[list[dict[str, Any]], list[Rejected]]:
    """Explain ``files`` with ``model`` (a LoadedModel) batch by batch into ``out_dir``.

    Only slices whose p(``label``) reaches ``cut`` are explained (every slice when ``cut`` is
    None). Returns the summaries written and the rejected inputs (unreadable files, duplicate
    SOPInstanceUIDs).
    """
    summaries: list[dict[str, Any]] = []
    rejected: list[Rejected] = []
    for batch in iter_batches(files, model.contract, batch_size, keep_hu=True):
        rejected += batch.rejected
        if batch.identities:
            summaries += _explain_batch(batch, model, explainer, out_dir, label, cut)
        if progress is not None:
            progress(batch.done, len(files))
    return summaries, rejected


def _explain_batch(batch: Batch, model, explainer: Explainer, out_dir: Path, label: str,
                   cut: float | None) -> list[dict[str, Any]]:
    """Score one batch, explain its slices at ``cut`` (all with None), write them."""
    contract = model.contract
    names = ("probs", "logits", "features") + (
        ("lesion",) if contract.lesion_stride is not None else ())
    outputs = model.run(batch.tensor, names)
    probs = calibrated_probabilities(outputs["logits"], contract)[:, contract.labels.index(label)]
    keep = np.arange(len(probs)) if cut is None else np.flatnonzero(probs >= cut)
    found = explain_slices(explainer, batch.tensor[keep], batch.boxes[keep],
                           [batch.hu[i].shape for i in keep],
                           {k: v[keep] for k, v in outputs.items()}, label)
    summaries = []
    for i, item in zip(keep, found):
        ident = batch.identities[i]
        extra = {"sop_instance_uid": ident.sop_uid, "label": label,
                 "probability": float(probs[i]), "seconds": item.seconds}
        summaries.append(write_explanation(out_dir, ident.sop_uid, batch.hu[i], item.heatmap,
                                           item.method, extra=extra))
    return summaries
