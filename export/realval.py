"""Validation parts for calibration from the held-out groups of the real sources, as raw logits.

``ichrt calibrate threshold --real DIR`` calibrates on what the product meets: the held-out groups
of every real source of ``DIR`` (the validation side of training's grouped split, so no patient,
scan or image the model trained on) beside phantom studies
(:func:`ichrt.calibration.parts.phantom_part`). This module runs the model over them through the
runtime's own framing and windowing (:func:`ichrt.export.lesion_eval.infer_hu`) and hands
:func:`ichrt.calibration.fit.calibrate_on_studies` one
:class:`~ichrt.calibration.studyfit.ValidationPart` per source.

Calibration may not import export, so :func:`real_parts` reaches it as a plugin: the entry point
``real`` of the group ``ichrt.validation_parts`` (pyproject.toml), found by
:func:`ichrt.calibration.parts.real_parts_provider`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ichrt.calibration.studyfit import ValidationPart
from ichrt.export.lesion_eval import held_out, infer_hu
from ichrt.runtime.session import LoadedModel

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
