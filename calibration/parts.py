"""Validation parts for ``ichrt calibrate threshold``: phantom studies and held-out real groups.

:func:`phantom_part` reads an ``ichrt synth`` folder through the runtime's own ingest. The real
sources (``--real``) are read by the training data loaders of :mod:`ichrt.export`, which
calibration may not import (the runtime <- calibration, runtime <- export graph has no edge
between the two); export offers them instead as an installed plugin, the entry point
``real`` of the group :data:`ENTRY_POINT_GROUP` (``ichrt.export.realval:real_parts`` in
pyproject.toml), and :func:`real_parts_provider` finds it there.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from ichrt.calibration.studyfit import ValidationPart
from ichrt.runtime.extras import ExtraNotInstalled, needs_extra
from ichrt.runtime.session import LoadedModel
from ichrt.runtime.slices import scan_order

#: Entry-point group of the providers of validation parts (export registers ``real`` there).
ENTRY_POINT_GROUP = "ichrt.validation_parts"


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


def real_parts_provider() -> Callable[..., list[ValidationPart]]:
    """Export's ``real_parts(model, realtrain, sources, seed=0, val_fraction=0.2)``: one part per
    real source of ``realtrain``, its held-out groups' raw logits and labels.

    Raises:
        ExtraNotInstalled: (an ImportError) no installed provider, i.e. ichrt without the
            ``export`` extra, or a source checkout that was never ``pip install``-ed.
    """
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == "real"]
    if not found:
        raise ExtraNotInstalled(needs_extra(
            "--real", "export", f"no '{ENTRY_POINT_GROUP}' entry point is installed"))
    try:
        return found[0].load()
    except ImportError as exc:
        raise ExtraNotInstalled(needs_extra("--real", "export", f"{exc.name} is missing")) from exc
