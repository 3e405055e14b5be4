"""The INT8 accuracy gate on real held-out data and phantoms: FP32 and its INT8 twin side by side.

Both models go through the same code (:func:`ichrt.export.lesion_eval.evaluate_samples`, the
model card's evaluation: runtime framing, windowing, temperature, study model) on the same slices,
and :func:`ichrt.calibration.quantize.accuracy_gate` (AUC(any) may drop by at most
``MAX_AUC_DROP``) is applied to every part with an AUC: each real source's held-out groups (slice
level; ct-ich also study level), all real held-out slices pooled, and each phantom folder (slice
and study level). Paired figures say how far INT8 moves the output: |p_fp32 - p_int8| per slice
and per study, slice and study flags that change at each model's own threshold (the INT8
contract carries a threshold fitted to INT8's own scores), lesion-map agreement. The phantom
folders are also scored by ``Scorer`` itself (``phantom_studies_as_scored``); the evaluation orders
a phantom study's slices by scan position as the runtime does, so both give the same study
figures.

    python scripts/int8_gate.py --json docs/eval/int8-gate.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.calibration.quantize import MAX_AUC_DROP, accuracy_gate
from ichrt.export.lesion_eval import (
    STUDY_SOURCES,
    evaluate_realct,
    evaluate_samples,
    held_out,
    infer_hu,
    phantom_slices,
    study_scores,
)
from ichrt.export.realval import OPTIONS, REAL_SOURCES
from ichrt.runtime.metrics import roc_auc
from ichrt.runtime.session import load_model


def _f(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def paired(models: dict[str, Any], samples: list, studies: bool,
           identities: list | None = None) -> tuple[dict, dict]:
    """(figures of FP32 vs INT8 on the same slices, raw arrays for pooling); ``identities``
    order each study's slices by scan position (phantoms)."""
    outs = {k: infer_hu(m, [s.hu for s in samples]) for k, m in models.items()}
    thr = {k: m.contract.threshold("any") for k, m in models.items()}
    p32, p8 = outs["fp32"].probs, outs["int8"].probs
    d_any = np.abs(p32[:, 0] - p8[:, 0])
    f32, f8 = p32[:, 0] >= thr["fp32"], p8[:, 0] >= thr["int8"]
    doc: dict[str, Any] = {
        "max_abs_diff_p_any": float(d_any.max()), "mean_abs_diff_p_any": float(d_any.mean()),
        "max_abs_diff_p_all_labels": float(np.abs(p32 - p8).max()),
        "slice_flags_changed": int((f32 != f8).sum()),
        "slice_flag_agreement": float((f32 == f8).mean()),
        "slices_flagged": {"fp32": int(f32.sum()), "int8": int(f8.sum())},
    }
    if outs["fp32"].lesion is not None:
        a = outs["fp32"].lesion.reshape(len(samples), -1)
        b = outs["int8"].lesion.reshape(len(samples), -1)
        corr = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b) if x.std() > 0 and y.std() > 0]
        doc["lesion_map"] = {"mean_correlation": _f(np.mean(corr)) if corr else None,
                             "peak_agreement": float(np.mean(a.argmax(1) == b.argmax(1)))}
    if studies:
        y = np.stack([s.labels for s in samples])[:, 0].astype(np.float64)
        groups, ids = [s.group for s in samples], [s.id for s in samples]
        st = {k: study_scores(y, outs[k].probs[:, 0], groups, ids, models[k].contract.study_model,
                              identities)
              for k in models}
        s32, s8 = st["fp32"]["p_model"], st["int8"]["p_model"]
        g32, g8 = s32 >= thr["fp32"], s8 >= thr["int8"]
        changed = [str(n) for n, a_, b_ in zip(st["fp32"]["study"], g32, g8) if a_ != b_]
        doc["study"] = {"max_abs_diff_p_any": float(np.abs(s32 - s8).max()),
                        "mean_abs_diff_p_any": float(np.abs(s32 - s8).mean()),
                        "flags_changed": len(changed), "flag_agreement": float((g32 == g8).mean()),
                        "changed_studies": [
                            {"study": n, "label": _f(y_), "p_fp32": float(a_), "p_int8": float(b_)}
                            for n, y_, a_, b_ in zip(st["fp32"]["study"], st["fp32"]["y"], s32, s8)
                            if str(n) in changed]}
    y_any = np.stack([s.labels for s in samples])[:, 0].astype(np.float64)
    return doc, {"y": y_any, "fp32": p32[:, 0], "int8": p8[:, 0]}


def scored_studies(models: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Both models over a phantom folder through ``Scorer`` itself (DICOM ingest, slices in scan
    order, study model, threshold): study AUC, flags and what INT8 changes."""
    from ichrt.calibration.dataset import open_labelled
    from ichrt.runtime.scorer import Scorer

    data = open_labelled(folder)
    doc: dict[str, Any] = {"part": f"phantom:{folder.name}", "path": "ichrt.runtime.Scorer"}
    scores: dict[str, dict[str, tuple[float, bool]]] = {}
    y: dict[str, float] = {}
    for k, model in models.items():
        result = Scorer(model, explain="none").score([folder])
        labels = data.labels_of([s.identity for s in result.slices])[:, 0]
        for sl, lab in zip(result.slices, labels):
            if np.isfinite(lab):
                uid = sl.identity.study_uid
                y[uid] = max(y.get(uid, 0.0), float(lab))
        scores[k] = {st.study_uid: (st.p_any, st.flagged) for st in result.studies}
        uids = sorted(scores[k])
        yy = np.array([y[u] for u in uids])
        pp = np.array([scores[k][u][0] for u in uids])
        ff = np.array([scores[k][u][1] for u in uids])
        doc[k] = {"studies": len(uids), "auc_study": roc_auc(yy, pp),
                  "flagged_positive": int((ff & (yy > 0.5)).sum()),
                  "positive": int((yy > 0.5).sum()),
                  "not_flagged_negative": int((~ff & (yy <= 0.5)).sum()),
                  "negative": int((yy <= 0.5).sum()), "threshold": model.contract.threshold("any")}
    uids = sorted(scores["fp32"])
    diff = [abs(scores["fp32"][u][0] - scores["int8"][u][0]) for u in uids]
    doc["paired"] = {"max_abs_diff_p_any": max(diff), "mean_abs_diff_p_any": float(np.mean(diff)),
                     "changed_studies": [
                         {"study": u, "label": y[u], "p_fp32": scores["fp32"][u][0],
                          "p_int8": scores["int8"][u][0], "flag_int8": scores["int8"][u][1]}
                         for u in uids if scores["fp32"][u][1] != scores["int8"][u][1]]}
    return doc


def gate(doc32: dict, doc8: dict, max_drop: float) -> list[dict[str, Any]]:
    """accuracy_gate on the slice AUC(any) and, with whole studies, the study-model AUC."""
    checks = []
    pairs = [("slice AUC(any)", doc32["auc"]["any"], doc8["auc"]["any"])]
    if "study" in doc32:
        pairs.append(("study AUC(any), study model", doc32["study"]["auc_model"],
                      doc8["study"]["auc_model"]))
    for what, a, b in pairs:
        if a is None or b is None:
            continue
        checks.append({"part": doc32["source"], "figure": what, "fp32": a, "int8": b,
                       "drop": a - b, "passed": accuracy_gate(a, b, max_drop)})
    return checks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fp32", default="runtime/models/default.onnx")
    ap.add_argument("--int8", default="runtime/models/default-int8.onnx")
    ap.add_argument("--realtrain", type=Path, default=Path("../shared/realtrain"))
    ap.add_argument("--sources", nargs="*", default=list(REAL_SOURCES))
    ap.add_argument("--phantoms", type=Path, nargs="*",
                    default=[Path("data/ph-test"), Path("data/ph-val")])
    ap.add_argument("--realct", type=Path, default=Path("../shared/realct"))
    ap.add_argument("--max-drop", type=float, default=MAX_AUC_DROP)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    models = {k: load_model(p, provider="cpu", threads=args.threads)
              for k, p in (("fp32", args.fp32), ("int8", args.int8))}
    # (name, samples, identities (phantoms: scan order) or None, whole studies, real)
    parts: list[tuple[str, list, list | None, bool, bool]] = []
    for name in args.sources:
        parts.append((name, held_out(name, args.realtrain / name, 0, 0.2, OPTIONS.get(name)),
                      None, name in STUDY_SOURCES, True))
    for folder in args.phantoms:
        parts.append((f"phantom:{folder.name}", *phantom_slices(folder), True, False))

    results: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    pooled: list[dict[str, np.ndarray]] = []
    for name, samples, identities, studies, real in parts:
        docs = {k: evaluate_samples(m, samples, name, studies=studies, n_boot=args.bootstrap,
                                    identities=identities)
                for k, m in models.items()}
        pair, raw = paired(models, samples, studies, identities)
        if real:
            pooled.append(raw)
        part_checks = gate(docs["fp32"], docs["int8"], args.max_drop)
        checks += part_checks
        results.append({"part": name, "real": real, "fp32": docs["fp32"], "int8": docs["int8"],
                        "paired": pair})
        print(json.dumps({"part": name, "checks": part_checks, "paired": pair}, default=float),
              file=sys.stderr)
    runtime_studies = []
    for folder in args.phantoms:
        st = scored_studies(models, folder)
        runtime_studies.append(st)
        a, b = st["fp32"]["auc_study"], st["int8"]["auc_study"]
        checks.append({"part": st["part"], "figure": "study AUC(any), ichrt score (scan order)",
                       "fp32": a, "int8": b, "drop": a - b,
                       "passed": accuracy_gate(a, b, args.max_drop)})
        print(json.dumps(st, default=float), file=sys.stderr)
    if pooled:
        y = np.concatenate([r["y"] for r in pooled])
        a, b = (roc_auc(y, np.concatenate([r[k] for r in pooled])) for k in ("fp32", "int8"))
        checks.append({"part": "real held-out, all sources pooled", "figure": "slice AUC(any)",
                       "fp32": a, "int8": b, "drop": a - b,
                       "passed": accuracy_gate(a, b, args.max_drop),
                       "slices": len(y), "positive": int(np.nansum(y > 0.5))})
    real_ok = all(c["passed"] for c in checks if not c["part"].startswith("phantom:"))
    phantom_ok = all(c["passed"] for c in checks if c["part"].startswith("phantom:"))
    doc: dict[str, Any] = {
        "command": "python scripts/int8_gate.py " + shlex.join(argv if argv is not None
                                                               else sys.argv[1:]),
        "models": {k: {"path": str(m.path), "name": m.contract.name, "sha256": m.sha256,
                       "threshold_any": m.contract.threshold("any")} for k, m in models.items()},
        "gate": {"rule": f"AUC(any) of INT8 at most {args.max_drop} below FP32 on every part "
                         "with an AUC (ichrt.calibration.quantize.accuracy_gate), slice level, "
                         "and study level (study model) where the part has whole studies",
                 "max_auc_drop": args.max_drop, "checks": checks,
                 "passed_real": real_ok, "passed_phantoms": phantom_ok,
                 "verdict": "INT8 passes" if real_ok and phantom_ok else "INT8 fails"},
        "data": {"real": f"held-out groups (training's grouped split, val_fraction 0.2, seed 0) "
                         f"of {args.realtrain} sources {args.sources}",
                 "phantoms": [str(p) for p in args.phantoms]},
        "results": results,
        "phantom_studies_as_scored": runtime_studies,
    }
    if args.realct and args.realct.is_dir():
        doc["realct"] = {k: evaluate_realct(m, args.realct) for k, m in models.items()}
    text = json.dumps(doc, indent=2, default=float)
    if args.json:
        args.json.write_text(text + "\n")
    print(json.dumps(doc["gate"], indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
