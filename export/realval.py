"""Validation parts for calibration: held-out real groups and phantom studies, as raw logits.

``ichrt calibrate threshold --real DIR`` calibrates on what the product meets: the held-out groups
of every real source of ``DIR`` (the validation side of training's grouped split, so no patient,
scan or image the model trained on) beside phantom studies. This module runs the model over
them through the runtime's own framing and windowing (:func:`ichrt.export.lesion_eval.infer_hu`)
and hands :func:`ichrt.calibration.fit.calibrate_on_studies` one
:class:`~ichrt.calibration.studyfit.ValidationPart` per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichrt.calibration.studyfit import ValidationPart
from ichrt.export.lesion_eval import held_out, infer_hu
from ichrt.runtime.session import LoadedModel
from ichrt.runtime.slices import scan_order

#: Real sources whose groups are whole studies (ct-ich: one patient's slices, skull base up).
WHOLE_STUDY_SOURCES = ("ctich",)
REAL_SOURCES = ("ctich", "roboflow", "bhsd", "rsna200")
OPTIONS = {"roboflow": {"dedupe": True}}


def real_parts(
    model: LoadedModel, realtrain: str | Path, sources: Sequence[str] = REAL_SOURCES,
    seed: int = 0, val_fraction: float = 0.2,
) -> list[ValidationPart]:
    """One part per real source: its held-out groups' raw logits and labels."""
    parts = []
    for name in sources:
        samples = held_out(name, Path(realtrain) / name, seed, val_fraction, OPTIONS.get(name))
        out = infer_hu(model, [s.hu for s in samples])
        parts.append(ValidationPart(
            source=name, logits=out.logits, labels=np.stack([s.labels for s in samples]),
            groups=[s.group for s in samples], order=np.arange(len(samples)),
            whole_studies=name in WHOLE_STUDY_SOURCES, real=True,
            notes={"split": f"held-out groups, val_fraction {val_fraction}, seed {seed}"}))
    return parts


def phantom_part(model: LoadedModel, folder: str | Path, batch_size: int = 16) -> ValidationPart:
    """Every slice of an ``ichrt synth`` folder (DICOM, read by the runtime), one group a study."""
    from ichrt.calibration.dataset import open_labelled
    from ichrt.calibration.predictions import predict

    data = open_labelled(folder)
    preds = predict({"m": model}, data.files, model.contract, batch_size)
    idents = preds.identities
    order = np.zeros(len(idents), np.int64)
    members: dict[str, list[int]] = {}
    for k, ident in enumerate(idents):
        members.setdefault(ident.study_uid, []).append(k)
    for idx in members.values():
        ranks, _ = scan_order([idents[k] for k in idx])
        for rank, j in enumerate(ranks):
            order[idx[j]] = rank
    return ValidationPart(
        source=f"phantom:{Path(folder).name}", logits=preds.logits["m"],
        labels=data.labels_of(idents), groups=[i.study_uid for i in idents], order=order,
        whole_studies=True, real=False)
