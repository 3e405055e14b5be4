"""Slice, study and lesion-map figures of an exported model on labelled real and phantom slices.

What the model card reports for a lesion-level model, measured through the runtime's own framing,
windowing, ONNX Runtime session, temperature and study model (as ``ichrt score`` computes them):

- slice level: AUC(any) and sensitivity / specificity at the contract's threshold;
- study level (sources with whole studies: ct-ich patients, phantom studies): AUC of the maximum
  over slices and of the contract's study model, and flagged / not flagged at the threshold with
  bootstrap intervals over studies. The study model blends neighbouring slices, so a study's
  slices must be in scan order: phantom studies carry their DICOM identities (series, position,
  orientation) and are ordered by :func:`ichrt.runtime.slices.scan_order`, as ``ichrt score``
  orders them; ct-ich slices come in slice-number order from their loader;
- localization on slices with a radiologist mask (ct-ich, BHSD, phantoms) or boxes (Roboflow):
  pointing game (the map's peak inside the mask), Dice of the map at 0.5, and per study the
  predicted lesion area summed over slices against the mask's (relative volume error: the
  slices' pixel and slice spacing cancel out, which these PNG exports do not keep).

``python -m ichrt.export.lesion_eval MODEL --realtrain ../shared/realtrain [--val-fraction 1]
[--phantoms data/ph-test] [--realct ../shared/realct] [--json FILE]``
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.export.samples import Sample
from ichrt.runtime.aggregate import calibrated_probabilities
from ichrt.runtime.batches import window_hu
from ichrt.runtime.explain.base import to_slice
from ichrt.runtime.explain.metrics import boxes_to_mask, pointing_hit
from ichrt.runtime.lesion import LESION_THRESHOLD, lesion_probabilities
from ichrt.runtime.metrics import roc_auc, sensitivity_specificity, sensitivity_specificity_ci
from ichrt.runtime.session import LoadedModel, load_model
from ichrt.runtime.slices import SliceIdentity, scan_order
from ichrt.runtime.studymodel import study_any


@dataclass
class Outputs:
    """Calibrated probabilities, raw logits and lesion maps (model input grid) of N slices."""

    probs: np.ndarray
    logits: np.ndarray
    lesion: np.ndarray | None
    boxes: np.ndarray


def infer_hu(model: LoadedModel, hus: Sequence[np.ndarray], batch: int = 16) -> Outputs:
    """Run ``model`` on HU slices, ``batch`` at a time, windowed as scoring does."""
    contract = model.contract
    dense = contract.lesion_stride is not None
    wanted = ("logits", "lesion") if dense else ("logits",)
    logits, lesion, boxes = [], [], []
    for start in range(0, len(hus), batch):
        tensor, box = window_hu(hus[start:start + batch], contract)
        out = model.run(tensor, wanted)
        logits.append(out["logits"])
        if dense:
            lesion.append(lesion_probabilities(out["lesion"]))
        boxes.append(box)
    logits_all = np.concatenate(logits).astype(np.float32)
    return Outputs(calibrated_probabilities(logits_all, contract), logits_all,
                   np.concatenate(lesion) if dense else None, np.concatenate(boxes))


def region_of(sample: Sample) -> tuple[np.ndarray | None, str]:
    """(bool lesion region, "mask" / "boxes" / "") of a sample."""
    if sample.mask is not None:
        return np.asarray(sample.mask, bool), "mask"
    if sample.boxes:
        return boxes_to_mask([b[:4] for b in sample.boxes], sample.hu.shape), "boxes"
    return None, ""


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    inter = np.count_nonzero(pred & truth)
    total = np.count_nonzero(pred) + np.count_nonzero(truth)
    return 1.0 if total == 0 else 2.0 * inter / total


def identities_of(groups: Sequence[str], ids: Sequence[str]) -> list[SliceIdentity]:
    """Stand-in identities (one series per group, slices in the given order) for the study model,
    for sources without DICOM identities (their loaders give each group's slices in scan order)."""
    counter: dict[str, int] = {}
    out = []
    for g, i in zip(groups, ids):
        k = counter.get(g, 0)
        counter[g] = k + 1
        out.append(SliceIdentity(path="", study_uid=g, series_uid=g, sop_uid=str(i),
                                 instance_number=k))
    return out


def study_scores(
    y_any: np.ndarray, p_any: np.ndarray, groups: Sequence[str], ids: Sequence[str],
    study_model: Mapping[str, Any] | None, identities: Sequence[SliceIdentity] | None = None,
) -> dict[str, np.ndarray]:
    """Per study: label (max of known), p(any) by the maximum and by ``study_model``.

    ``identities``: the slices' own DICOM identities, with which the study model splits a study
    into series and orders each along the scan axis exactly as ``ichrt score`` does (position and
    orientation, see :func:`ichrt.runtime.slices.scan_order`); without them, stand-ins (one
    series per group, slices in the given order).
    """
    if identities is not None and len(identities) != len(groups):
        raise ValueError(f"{len(identities)} identities for {len(groups)} slices")
    idents = list(identities) if identities is not None else identities_of(groups, ids)
    members: dict[str, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    names = list(members)
    y = np.array([np.nanmax(y_any[m]) if np.isfinite(y_any[m]).any() else np.nan
                  for m in members.values()])
    p_max = np.array([float(np.max(p_any[m])) for m in members.values()])
    p_model = np.array([study_any(p_any[m], [idents[k] for k in m], study_model)[0]
                        for m in members.values()])
    return {"study": np.array(names, object), "y": y, "p_max": p_max, "p_model": p_model}


def _rate_ci(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int, seed: int
             ) -> dict[str, Any]:
    se, sp = sensitivity_specificity(y, p, threshold)
    ci = sensitivity_specificity_ci(y, p, threshold, n=n_boot, seed=seed) if n_boot else None
    pos, neg = int((y > 0.5).sum()), int((y <= 0.5).sum())
    return {"sensitivity": se, "specificity": sp,
            "flagged_positive": int(((p >= threshold) & (y > 0.5)).sum()), "positive": pos,
            "not_flagged_negative": int(((p < threshold) & (y <= 0.5)).sum()), "negative": neg,
            "ci": None if ci is None else {  # [estimate, low, high] of each
                "sensitivity": list(ci[0]), "specificity": list(ci[1])}}


def evaluate_samples(
    model: LoadedModel, samples: Sequence[Sample], name: str, studies: bool = False,
    n_boot: int = 1000, seed: int = 0, identities: Sequence[SliceIdentity] | None = None,
) -> dict[str, Any]:
    """Every figure of the module docstring on ``samples`` (one source); ``identities`` (one a
    sample, e.g. from :func:`phantom_slices`) order the study model's slices by scan position."""
    contract = model.contract
    out = infer_hu(model, [s.hu for s in samples])
    y = np.stack([s.labels for s in samples]).astype(np.float64)
    thr = contract.threshold("any")
    se, sp = sensitivity_specificity(y[:, 0], out.probs[:, 0], thr)
    doc: dict[str, Any] = {
        "source": name, "slices": len(samples), "groups": len({s.group for s in samples}),
        "positive": int(np.nansum(y[:, 0] > 0.5)), "threshold": thr,
        "auc": {lab: _nan_none(roc_auc(y[:, i], out.probs[:, i]))
                for i, lab in enumerate(contract.labels)},
        "slice": {"sensitivity": _nan_none(se), "specificity": _nan_none(sp)},
    }
    groups = [s.group for s in samples]
    if studies:
        st = study_scores(y[:, 0], out.probs[:, 0], groups, [s.id for s in samples],
                          contract.study_model, identities)
        known = ~np.isnan(st["y"])
        doc["study"] = {
            "studies": int(known.sum()), "positive": int((st["y"][known] > 0.5).sum()),
            "auc_max": _nan_none(roc_auc(st["y"], st["p_max"])),
            "auc_model": _nan_none(roc_auc(st["y"], st["p_model"])),
            "at_threshold_model": _rate_ci(st["y"][known], st["p_model"][known], thr, n_boot, seed),
            "at_threshold_max": _rate_ci(st["y"][known], st["p_max"][known], thr, n_boot, seed),
        }
    if out.lesion is not None:
        doc["localization"] = _localization(samples, out, y[:, 0], groups)
    return doc


def _localization(samples: Sequence[Sample], out: Outputs, y_any: np.ndarray,
                  groups: Sequence[str]) -> dict[str, Any]:
    hits, dices, kinds = [], [], set()
    pred_area: dict[str, float] = {}
    true_area: dict[str, float] = {}
    for k, s in enumerate(samples):
        region, kind = region_of(s)
        if region is None:
            continue
        heat = to_slice(out.lesion[k], out.boxes[k], s.hu.shape)
        if kind == "mask":
            pred_area[s.group] = pred_area.get(s.group, 0.0) + float(
                np.count_nonzero(heat >= LESION_THRESHOLD))
            true_area[s.group] = true_area.get(s.group, 0.0) + float(np.count_nonzero(region))
        if y_any[k] > 0.5 and region.any():
            kinds.add(kind)
            hits.append(pointing_hit(heat, region))
            if kind == "mask":
                dices.append(dice(heat >= LESION_THRESHOLD, region))
    doc: dict[str, Any] = {"n": len(hits), "region": "/".join(sorted(kinds)),
                           "pointing_game": float(np.mean(hits)) if hits else None,
                           "dice": float(np.mean(dices)) if dices else None}
    pos = [g for g in true_area if true_area[g] > 0]
    if pos:
        rel = np.array([(pred_area[g] - true_area[g]) / true_area[g] for g in pos])
        doc["volume"] = {"studies": len(pos), "median_abs_rel_error": float(np.median(np.abs(rel))),
                         "median_rel_error": float(np.median(rel)),
                         "correlation": _nan_none(float(np.corrcoef(
                             [pred_area[g] for g in pos], [true_area[g] for g in pos])[0, 1]))
                         if len(pos) > 2 else None}
    neg = [g for g in true_area if true_area[g] == 0]
    if neg:
        doc["volume_on_normal_studies_px"] = float(np.median([pred_area[g] for g in neg]))
    return doc


def _nan_none(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def held_out(name: str, root: Path, seed: int = 0, val_fraction: float = 0.2,
             options: dict | None = None) -> list[Sample]:
    """The validation groups of training's split of a real source (all of it at 1.0)."""
    from ichrt.export.sources import load_source
    from ichrt.export.splits import grouped_split

    samples = load_source(name, root, **(options or {}))
    if val_fraction >= 1.0:
        return samples
    labels = np.stack([s.labels for s in samples])
    _, val = grouped_split([s.group for s in samples], [s.source for s in samples],
                           labels[:, 0], val_fraction, seed)
    return [samples[i] for i in val]


def phantom_slices(folder: Path) -> tuple[list[Sample], list[SliceIdentity]]:
    """Every slice of an ``ichrt synth`` folder with masks, and its DICOM identity.

    Grouped by study, each study's series one after the other, each series in scan order: the
    runtime's :func:`~ichrt.runtime.slices.scan_order` on the identities' position and
    orientation (InstanceNumber as its fallback), what ``ichrt score`` uses, never the file
    names (random ``ID_...`` ones for phantoms). The identities come from the runtime's own
    ingest of each file; pass them to :func:`evaluate_samples` / :func:`study_scores`.
    """
    from ichrt.export.datasets import iter_rsna
    from ichrt.runtime.dicom import read_slice

    folder = Path(folder)
    samples = list(iter_rsna(folder))
    image_dir = _image_dir(folder)
    idents = [read_slice(image_dir / f"{s.id}.dcm").identity for s in samples]
    members: dict[tuple[str, str], list[int]] = {}
    for k, (s, ident) in enumerate(zip(samples, idents)):
        members.setdefault((s.group, ident.series_uid), []).append(k)
    order: list[int] = []
    for key in sorted(members):
        idx = members[key]
        ranks, _ = scan_order([idents[k] for k in idx])
        order += [idx[r] for r in ranks]
    return [samples[k] for k in order], [idents[k] for k in order]


def phantom_samples(folder: Path) -> list[Sample]:
    """The samples of :func:`phantom_slices` (each study's slices in scan order)."""
    return phantom_slices(folder)[0]


def _image_dir(folder: Path) -> Path:
    """The image folder of an RSNA-layout folder, as :func:`ichrt.export.datasets.iter_rsna`
    finds it."""
    from ichrt.export.datasets import _find_one
    from ichrt.runtime import rsna_layout as layout

    return _find_one(folder, (layout.IMAGES_DIR, "stage_1_train_images", "stage_2_train_images"),
                     "image folder")


def evaluate_realct(model: LoadedModel, folder: Path) -> list[dict[str, Any]]:
    """p(any), flag and lesion-map peak in the radiologist's box on each realct slice."""
    from ichrt.export.source_eval import read_realct

    uids, hu, boxes = read_realct(folder)
    out = infer_hu(model, hu)
    rows = []
    for k, uid in enumerate(uids):
        row = {"slice": uid[-14:], "p_any": float(out.probs[k, 0]),
               "flagged": bool(out.probs[k, 0] >= model.contract.threshold("any"))}
        if out.lesion is not None:
            heat = to_slice(out.lesion[k], out.boxes[k], hu[k].shape)
            row["peak_in_box"] = bool(pointing_hit(heat, boxes_to_mask(boxes[uid],
                                                                       hu[k].shape)))
        rows.append(row)
    return rows


STUDY_SOURCES = ("ctich", "phantom")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--realtrain", type=Path)
    ap.add_argument("--sources", nargs="*", default=["ctich", "roboflow", "bhsd", "rsna200"])
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="training's split (0.2); 1 = every slice (a left-out source)")
    ap.add_argument("--phantoms", type=Path, nargs="*", default=[])
    ap.add_argument("--realct", type=Path)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    model = load_model(args.model, provider="cpu")
    doc: dict[str, Any] = {"model": model.display_name, "sha256": model.sha256,
                           "val_fraction": args.val_fraction, "results": []}
    options = {"roboflow": {"dedupe": True}}
    if args.realtrain:
        for name in args.sources:
            samples = held_out(name, args.realtrain / name, 0, args.val_fraction,
                               options.get(name))
            doc["results"].append(evaluate_samples(model, samples, name,
                                                   studies=name in STUDY_SOURCES,
                                                   n_boot=args.bootstrap))
            print(json.dumps(doc["results"][-1]), file=sys.stderr)
    for folder in args.phantoms:
        samples, identities = phantom_slices(folder)
        doc["results"].append(evaluate_samples(model, samples, f"phantom:{folder.name}",
                                               studies=True, n_boot=args.bootstrap,
                                               identities=identities))
        print(json.dumps(doc["results"][-1]), file=sys.stderr)
    if args.realct:
        doc["realct"] = evaluate_realct(model, args.realct)
    text = json.dumps(doc, indent=2, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
