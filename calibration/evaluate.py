"""Evaluate a model on labelled data: AUC, sensitivity, specificity, ECE and Brier per label.

Every figure is given at slice level and at study level (a study's label and probability are the
maximum over its slices, as the runtime's worklist does). Sensitivity and specificity are taken
at the model's own contract threshold of each label, and probabilities are the runtime's
(``sigmoid(logit / T)`` with the contract's temperatures), so the figures describe the model as
``ichrt score`` will use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.calibration.batches import Progress
from ichrt.calibration.metrics import brier, ece
from ichrt.calibration.thresholds import study_level
from ichrt.runtime.contract import ModelContract
from ichrt.runtime.metrics import bootstrap_ci, roc_auc, sensitivity_specificity
from ichrt.runtime.slices import Rejected, SliceIdentity

ECE_BINS = 15


def level_metrics(
    y: np.ndarray, p: np.ndarray, threshold: float, bins: int = ECE_BINS,
    groups: Sequence | np.ndarray | None = None, n_boot: int = 0, seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one label at one level; with ``n_boot`` > 0 an AUC 95% interval is added."""
    known = ~np.isnan(np.asarray(y, np.float64))
    y, p = np.asarray(y, np.float64)[known], np.asarray(p, np.float64)[known]
    sens, spec = sensitivity_specificity(y, p, threshold)
    out: dict[str, Any] = {
        "auc": roc_auc(y, p),
        "sensitivity": sens,
        "specificity": spec,
        "ece": ece(y, p, bins),
        "brier": brier(y, p),
        "positives": int((y > 0.5).sum()),
        "negatives": int((y <= 0.5).sum()),
    }
    if n_boot > 0 and not np.isnan(out["auc"]):
        g = None if groups is None else np.asarray(groups)[known]
        ci = bootstrap_ci(roc_auc, y, p, n=n_boot, seed=seed, groups=g)
        out["auc_ci"] = [ci.low, ci.high]
    return out


def evaluate_arrays(
    labels: np.ndarray, probs: np.ndarray, studies: Sequence | np.ndarray,
    contract: ModelContract, bins: int = ECE_BINS, n_boot: int = 0,
    identities: Sequence[SliceIdentity] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{label: {"threshold", "slice": {...}, "study": {...}}}`` for every contract label.

    With ``identities`` and a contract study model, the study ``any`` probability is the study
    model's (as ``ichrt score`` computes it); otherwise every label's is the maximum.
    """
    report: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(contract.labels):
        y, p = labels[:, j], probs[:, j]
        threshold = contract.threshold(name)
        y_st, p_st, ids = study_level(y, p, studies)
        if name == "any" and identities is not None and contract.study_model is not None:
            p_st = _study_model_probs(p, studies, ids, identities, contract.study_model)
        report[name] = {
            "threshold": threshold,
            "slice": level_metrics(y, p, threshold, bins, groups=studies, n_boot=n_boot),
            "study": level_metrics(y_st, p_st, threshold, bins, n_boot=n_boot),
        }
    return report


def _study_model_probs(p: np.ndarray, studies, ids, identities, params) -> np.ndarray:
    from ichrt.runtime.studymodel import study_any

    studies = np.asarray(studies)
    out = np.empty(len(ids))
    for k, sid in enumerate(ids):
        rows = np.flatnonzero(studies == sid)
        out[k] = study_any(p[rows], [identities[i] for i in rows], params)[0]
    return out


@dataclass
class EvaluationReport:
    """What :func:`evaluate_model` measured, JSON-ready through :meth:`to_dict`."""

    model: dict[str, str]
    data: dict[str, Any]
    labels: dict[str, dict[str, Any]]
    rejected: list[Rejected] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "labels": self.labels,
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
        }


def evaluate_model(
    model_path: str | Path,
    data_dir: str | Path,
    batch_size: int = 16,
    provider: str = "auto",
    threads: int | None = None,
    n_boot: int = 0,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Run the model over an RSNA-layout folder and measure it (see the module docstring)."""
    from ichrt.calibration.dataset import open_labelled
    from ichrt.calibration.predictions import predict
    from ichrt.runtime.session import load_model

    model = load_model(model_path, provider=provider, threads=threads)
    data = open_labelled(data_dir)
    preds = predict({"model": model}, data.files, model.contract, batch_size, progress=progress)
    labels = data.labels_of(preds.identities)
    studies = preds.studies
    return EvaluationReport(
        model={"name": model.contract.name, "sha256": model.sha256, "path": str(model.path)},
        data=data.summary(preds.identities, studies, len(preds.rejected)),
        labels=evaluate_arrays(labels, preds.probs("model", model.contract), studies,
                               model.contract, n_boot=n_boot, identities=preds.identities),
        rejected=preds.rejected,
    )


def format_table(labels: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per label and level."""
    head = (f"{'label':<17}{'level':<7}{'AUC':>7}{'sens':>7}{'spec':>7}{'ECE':>7}"
            f"{'Brier':>7}{'thr':>7}{'pos':>6}{'neg':>7}")
    rows = [head, "-" * len(head)]
    for name, entry in labels.items():
        for level in ("slice", "study"):
            m = entry[level]
            rows.append(
                f"{name:<17}{level:<7}{_f(m['auc'])}{_f(m['sensitivity'])}{_f(m['specificity'])}"
                f"{_f(m['ece'])}{_f(m['brier'])}{_f(entry['threshold'])}"
                f"{m['positives']:>6}{m['negatives']:>7}"
            )
    return "\n".join(rows)


def _f(value: float) -> str:
    return f"{'-':>7}" if value is None or np.isnan(value) else f"{value:>7.3f}"
