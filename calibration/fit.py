"""Fit temperatures and operating thresholds on a validation set and write the calibrated model.

The steps of ``ichrt calibrate threshold``: run the model over labelled validation slices (raw
logits), fit one temperature per label, choose each label's threshold for its target sensitivity
on the calibrated probabilities (with bootstrap intervals at slice and study level), and write a
new model whose contract carries the temperatures, thresholds and figures, with provenance naming
the parent's SHA-256. The runtime then applies both by default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.calibration.batches import Progress
from ichrt.calibration.metrics import brier, ece
from ichrt.calibration.report import jsonable
from ichrt.calibration.temperature import calibrated_probs, fit_temperatures, nll
from ichrt.calibration.thresholds import choose_thresholds
from ichrt.runtime.slices import Rejected

ECE_BINS = 15


@dataclass
class CalibrationResult:
    """What was fitted and measured; arrays are kept for the reliability picture."""

    report: dict[str, Any]
    labels: np.ndarray
    before: np.ndarray
    after: np.ndarray
    label_names: tuple[str, ...]
    rejected: list[Rejected] = field(default_factory=list)


def label_figures(y: np.ndarray, before: np.ndarray, after: np.ndarray, logits: np.ndarray,
                  temperature: float, parent_temperature: float) -> dict[str, float]:
    """ECE, Brier and NLL of one label before (the parent's probabilities) and after."""
    return {
        "temperature": temperature,
        "ece_before": ece(y, before, ECE_BINS),
        "ece_after": ece(y, after, ECE_BINS),
        "brier_before": brier(y, before),
        "brier_after": brier(y, after),
        "nll_before": nll(logits, y, parent_temperature),
        "nll_after": nll(logits, y, temperature),
    }


def per_label_figures(names, labels, before, after, logits, temperatures, parent, fitted,
                      points) -> dict[str, dict[str, Any]]:
    """:func:`label_figures` of every label, with whether it was fitted and its operating point."""
    per_label = {}
    for j, name in enumerate(names):
        figures = label_figures(labels[:, j], before[:, j], after[:, j], logits[:, j],
                                temperatures[name], parent.temperature(name))
        figures["fitted"] = name in fitted
        if name in points:
            figures["operating_point"] = points[name].to_dict()
        per_label[name] = figures
    return per_label


def calibrate_model(
    model_path: str | Path,
    data_dir: str | Path,
    out: str | Path,
    target_sensitivity: float = 0.95,
    subtype_sensitivity: float | None = None,
    level: str = "slice",
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 16,
    threads: int | None = None,
    progress: Progress | None = None,
) -> CalibrationResult:
    """Fit, choose and write (see the module docstring); returns the report and arrays.

    ``subtype_sensitivity`` is the target for the five subtypes (default: ``target_sensitivity``).
    """
    from ichrt.calibration.dataset import DatasetError, open_labelled
    from ichrt.calibration.model_io import derive_contract, file_sha256, load_onnx, write_model
    from ichrt.calibration.predictions import predict
    from ichrt.runtime.session import load_model

    model = load_model(model_path, provider="cpu", threads=threads)
    parent = model.contract
    names = parent.labels
    data = open_labelled(data_dir)
    preds = predict({"m": model}, data.files, parent, batch_size, progress=progress)
    if not preds.identities:
        raise DatasetError(f"{data_dir}: no validation slice could be read")
    logits = preds.logits["m"].astype(np.float64)
    labels = data.labels_of(preds.identities).astype(np.float64)
    studies = preds.studies

    fitted = fit_temperatures(logits, labels, names)
    temperatures = {name: fitted.get(name, parent.temperature(name)) for name in names}
    before = preds.probs("m", parent).astype(np.float64)
    after = calibrated_probs(logits, temperatures, names)
    sub = target_sensitivity if subtype_sensitivity is None else subtype_sensitivity
    targets = {name: (target_sensitivity if name == "any" else sub) for name in names}
    points = choose_thresholds(labels, after, studies, names, targets, level=level,
                               n_boot=n_boot, seed=seed)
    if "any" not in points:
        raise DatasetError(f"{data_dir}: the validation set needs positive and negative 'any' "
                         "labels to choose the operating threshold")

    per_label = per_label_figures(names, labels, before, after, logits, temperatures, parent,
                                  fitted, points)
    data_summary = data.summary(preds.identities, studies, len(preds.rejected))
    settings = {"target_sensitivity": target_sensitivity, "subtype_sensitivity": sub,
                "level": level, "bootstrap": n_boot, "seed": seed, "ece_bins": ECE_BINS}
    parent_sha = file_sha256(model_path)
    contract = derive_contract(
        parent, parent_sha, "ichrt calibrate threshold",
        details={**settings, "validation": data_summary},
        temperatures=temperatures,
        thresholds={**parent.thresholds, **{n: p.threshold for n, p in points.items()}},
        metrics={**parent.metrics, "calibration": jsonable(
            {"validation": data_summary, "labels": per_label, **settings})},
    )
    out_sha = write_model(load_onnx(model_path), contract, out, parent_path=model_path)
    report = {
        "parent": {"path": str(model_path), "sha256": parent_sha, "name": parent.name},
        "out": {"path": str(out), "sha256": out_sha, "name": contract.name},
        "settings": settings,
        "data": data_summary,
        "temperatures": temperatures,
        "thresholds": dict(contract.thresholds),
        "labels": per_label,
        "rejected": [{"path": r.path, "reason": r.reason} for r in preds.rejected],
    }
    return CalibrationResult(report, labels, before, after, names, preds.rejected)


def calibrate_on_studies(
    model_path: str | Path,
    parts: list,
    out: str | Path,
    target_sensitivity: float = 0.95,
    subtype_sensitivity: float | None = None,
    fit_study_model: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    min_real_positives: int = 20,
) -> CalibrationResult:
    """Temperatures, study model and the study-level ``any`` threshold from validation parts.

    ``parts`` (:class:`~ichrt.calibration.studyfit.ValidationPart`) hold raw logits of held-out
    real sources and phantoms. Temperatures are fitted on every slice of every part; the study
    model (:mod:`ichrt.runtime.studymodel`) on the whole studies (parts with ``whole_studies``);
    the ``any`` threshold is the highest one that reaches ``target_sensitivity`` on the real
    whole studies when they hold at least ``min_real_positives`` positive studies, else on all
    whole studies pooled (real and phantom). The threshold each part alone would need is
    reported beside it.
    Subtype thresholds: slice level on all slices. Every part is reported with bootstrap
    intervals, study level where it has whole studies, else slice level.
    """
    from ichrt.calibration import studyfit
    from ichrt.calibration.model_io import derive_contract, file_sha256, load_onnx, write_model
    from ichrt.calibration.thresholds import level_stats, threshold_for_sensitivity
    from ichrt.runtime.metrics import roc_auc
    from ichrt.runtime.session import load_model

    model = load_model(model_path, provider="cpu")
    parent = model.contract
    names = parent.labels
    logits = np.concatenate([p.logits for p in parts]).astype(np.float64)
    labels = np.concatenate([p.labels for p in parts]).astype(np.float64)
    fitted = fit_temperatures(logits, labels, names)
    temperatures = {name: fitted.get(name, parent.temperature(name)) for name in names}
    before = calibrated_probs(logits, {n: parent.temperature(n) for n in names}, names)
    after = calibrated_probs(logits, temperatures, names)
    offsets = np.cumsum([0] + [len(p) for p in parts])
    probs_of = {p.source: after[offsets[k]:offsets[k + 1]] for k, p in enumerate(parts)}

    whole = [p for p in parts if p.whole_studies]
    series = {p.source: studyfit.study_series(p, probs_of[p.source][:, 0]) for p in whole}
    study_model = None
    if fit_study_model and whole:
        study_model = studyfit.fit([s for p in whole for s in series[p.source][1]],
                                   np.concatenate([series[p.source][2] for p in whole]))
    params = study_model or {"r": 0.0, "a": 1.0, "b": 0.0}
    p_study = {src: studyfit.study_probability(s[1], params) for src, s in series.items()}
    chosen = {}
    for src, (_, _, y_st) in series.items():
        keep = ~np.isnan(y_st)
        if (y_st[keep] > 0.5).any() and (y_st[keep] <= 0.5).any():
            chosen[src] = threshold_for_sensitivity(y_st[keep], p_study[src][keep],
                                                    target_sensitivity)
    if not chosen:
        raise ValueError("no validation part has positive and negative whole studies: "
                         "cannot choose the study-level threshold")
    # On real whole studies when they hold enough positives for the target to mean something;
    # else on every whole study pooled (real and phantom), which the target must reach together.
    real = [p for p in whole if p.real and p.source in chosen]
    n_real_pos = sum(int(np.nansum(series[p.source][2] > 0.5)) for p in real)
    pool = real if n_real_pos >= min_real_positives else [p for p in whole if p.source in chosen]
    y_pool = np.concatenate([series[p.source][2] for p in pool])
    p_pool = np.concatenate([p_study[p.source] for p in pool])
    keep = ~np.isnan(y_pool)
    threshold = float(threshold_for_sensitivity(y_pool[keep], p_pool[keep], target_sensitivity))
    chosen_on = [p.source for p in pool]

    sub = target_sensitivity if subtype_sensitivity is None else subtype_sensitivity
    groups = np.concatenate([[f"{p.source}:{g}" for g in p.groups] for p in parts])
    points = choose_thresholds(labels, after, groups, names, {n: sub for n in names[1:]},
                               level="slice", n_boot=n_boot, seed=seed)
    per_part = []
    for p in parts:
        pr = probs_of[p.source]
        entry: dict[str, Any] = {"source": p.source, "real": p.real, "slices": len(p),
                                 "groups": len(set(p.groups)),
                                 "positive_slices": int(np.nansum(p.labels[:, 0] > 0.5)),
                                 "auc_slice": roc_auc(p.labels[:, 0], pr[:, 0]), **p.notes}
        entry["slice"] = level_stats(p.labels[:, 0], pr[:, 0], threshold, groups=p.groups,
                                     n_boot=n_boot, seed=seed).to_dict()
        if p.source in series:
            _, s, y_st = series[p.source]
            entry["studies"] = int((~np.isnan(y_st)).sum())
            entry["positive_studies"] = int(np.nansum(y_st > 0.5))
            entry["auc_study_max"] = roc_auc(y_st, studyfit.study_maxima(s, 0.0))
            entry["auc_study_model"] = roc_auc(y_st, p_study[p.source])
            entry["study"] = level_stats(y_st, p_study[p.source], threshold, n_boot=n_boot,
                                         seed=seed).to_dict()
            entry["threshold_for_target"] = chosen.get(p.source)
        per_part.append(entry)

    per_label = per_label_figures(names, labels, before, after, logits, temperatures, parent,
                                  fitted, points)
    settings = {"target_sensitivity": target_sensitivity, "subtype_sensitivity": sub,
                "level": "study", "study_model": study_model is not None,
                "bootstrap": n_boot, "seed": seed, "ece_bins": ECE_BINS}
    calibrated_on = [{"source": p.source, "real": p.real, "slices": len(p),
                      "groups": len(set(p.groups)), "whole_studies": p.whole_studies}
                     for p in parts]
    parent_sha = file_sha256(model_path)
    contract = derive_contract(
        parent, parent_sha, "ichrt calibrate threshold --real",
        details={**settings, "calibrated_on": calibrated_on},
        temperatures=temperatures,
        thresholds={**parent.thresholds, **{n: pt.threshold for n, pt in points.items()},
                    "any": threshold},
        study_model=study_model,
        metrics={**parent.metrics, "calibration": jsonable(
            {"calibrated_on": calibrated_on, "parts": per_part, "labels": per_label,
             "threshold_any": threshold, "thresholds_per_part": chosen,
             "threshold_chosen_on": chosen_on,
             "study_model": study_model, **settings})},
    )
    out_sha = write_model(load_onnx(model_path), contract, out, parent_path=model_path)
    report = {
        "parent": {"path": str(model_path), "sha256": parent_sha, "name": parent.name},
        "out": {"path": str(out), "sha256": out_sha, "name": contract.name},
        "settings": settings, "data": calibrated_on, "temperatures": temperatures,
        "thresholds": dict(contract.thresholds), "threshold_any": threshold,
        "thresholds_per_part": chosen, "threshold_chosen_on": chosen_on,
        "study_model": study_model, "parts": per_part,
        "labels": per_label, "rejected": [],
    }
    return CalibrationResult(report, labels, before, after, names, [])
