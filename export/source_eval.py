"""Measure an exported model on the held-out groups of every real source and on realct.

The held-out groups are exactly the validation side of training's split
(:func:`ichrt.export.splits.grouped_split` with the run's seed and validation fraction), so no
patient, scan or source image that trained the model is scored here.  Slices go through the
runtime's own framing, windowing and ONNX Runtime session, as in ``ichrt score``.

``python -m ichrt.export.source_eval MODEL --realtrain ../shared/realtrain --realct ../shared/realct``
prints a markdown table and writes JSON with ``--json FILE``.
"""

from __future__ import annotations

import ast
import csv
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.export.sources import SOURCES, load_source
from ichrt.export.splits import grouped_split
from ichrt.runtime.aggregate import calibrated_probabilities
from ichrt.runtime.batches import window_hu
from ichrt.runtime.explain.base import to_slice
from ichrt.runtime.explain.cam import cam_maps
from ichrt.runtime.explain.metrics import boxes_to_mask, energy_share, pointing_hit
from ichrt.runtime.metrics import roc_auc, sensitivity_specificity
from ichrt.runtime.session import LoadedModel, load_model


def score_hu(model: LoadedModel, hu: list[np.ndarray], batch: int = 16
             ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Calibrated probabilities (N, labels) and ``any`` CAM maps on each slice's own pixels,
    ``batch`` slices per model call."""
    contract = model.contract
    probs = [np.zeros((0, len(contract.labels)), np.float32)]
    cams: list[np.ndarray] = []
    for start in range(0, len(hu), batch):
        chunk = hu[start:start + batch]
        tensor, boxes = window_hu(chunk, contract)
        out = model.run(tensor, ("logits", "features"))
        probs.append(calibrated_probabilities(out["logits"], contract))
        maps = cam_maps(out["features"], contract, label="any")
        cams += [to_slice(cam, box, item.shape) for cam, box, item in zip(maps, boxes, chunk)]
    return np.concatenate(probs), cams


def _localization(cams: list[np.ndarray], masks: list[np.ndarray | None]) -> dict[str, Any]:
    pairs = [(c, m) for c, m in zip(cams, masks) if m is not None and m.any()]
    if not pairs:
        return {"n": 0}
    return {"n": len(pairs),
            "pointing_game": float(np.mean([pointing_hit(c, m) for c, m in pairs])),
            "energy_share": float(np.mean([energy_share(c, m) for c, m in pairs]))}


def _region(sample) -> np.ndarray | None:
    if sample.mask is not None:
        return sample.mask
    if sample.boxes:
        return boxes_to_mask(sample.boxes, sample.hu.shape)
    return None


def evaluate_source(model: LoadedModel, name: str, root: Path, seed: int = 0,
                    val_fraction: float = 0.2, options: dict | None = None) -> dict[str, Any]:
    """Metrics of ``model`` on the validation groups of one real source (all of it when
    ``val_fraction`` is 1)."""
    samples = load_source(name, root, **(options or {}))
    labels = np.stack([s.labels for s in samples])
    if val_fraction >= 1.0:  # the whole source (leave-one-source-out: it never trained)
        val = np.arange(len(samples))
    else:
        _, val = grouped_split([s.group for s in samples], [s.source for s in samples],
                               labels[:, 0], val_fraction, seed)
    held = [samples[i] for i in val]
    probs, cams = score_hu(model, [s.hu for s in held])
    y = labels[val]
    names = model.contract.labels
    thr = model.contract.threshold("any")
    sens, spec = sensitivity_specificity(y[:, 0], probs[:, 0], thr)
    return {
        "source": name, "slices": len(held), "groups": len({s.group for s in held}),
        "positive": int(np.nansum(y[:, 0])),
        "auc": {lab: roc_auc(y[:, i], probs[:, i]) for i, lab in enumerate(names)},
        "sensitivity": sens, "specificity": spec, "threshold": thr,
        "localization": _localization(cams, [_region(s) for s in held]),
    }


def read_realct(folder: Path) -> tuple[list[str], list[np.ndarray], dict[str, list]]:
    """(SOPInstanceUIDs, HU slices, radiologist boxes (y0, x0, y1, x1) per UID) of realct."""
    boxes: dict[str, list] = {}
    with open(folder / "gt.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            d = ast.literal_eval(row["data"])
            boxes.setdefault(row["SOPInstanceUID"], []).append(
                (d["y"], d["x"], d["y"] + d["height"], d["x"] + d["width"]))
    uids = sorted(boxes)
    return uids, [np.load(folder / f"{uid}.npy").astype(np.float32) for uid in uids], boxes


def evaluate_realct(model: LoadedModel, folder: Path) -> list[dict[str, Any]]:
    """p(any) and CAM localization on each evaluation-only real slice (never used to tune)."""
    uids, hu, boxes = read_realct(folder)
    probs, cams = score_hu(model, hu)
    rows = []
    for uid, p, cam, img in zip(uids, probs, cams, hu):
        mask = boxes_to_mask(boxes[uid], img.shape)
        rows.append({"slice": uid[-12:], "p_any": float(p[0]),
                     "flagged": bool(p[0] >= model.contract.threshold("any")),
                     "pointing_hit": bool(pointing_hit(cam, mask)),
                     "energy_share": float(energy_share(cam, mask))})
    return rows


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--realtrain", type=Path, required=True)
    ap.add_argument("--realct", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.2,
                    help="the split training used; 1 = score every slice of each source")
    ap.add_argument("--sources", nargs="*", default=list(SOURCES))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    model = load_model(args.model, provider="cpu")
    options = {"roboflow": {"dedupe": True}}
    results = [evaluate_source(model, name, args.realtrain / name, args.seed, args.val_fraction,
                               options.get(name)) for name in args.sources]
    doc: dict[str, Any] = {"model": model.display_name, "sources": results}
    print("| source | held-out slices (groups) | positive | AUC(any) | sens | spec | "
          "pointing game | energy in mask |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        loc = r["localization"]
        print(f"| {r['source']} | {r['slices']} ({r['groups']}) | {r['positive']} | "
              f"{r['auc']['any']:.3f} | {r['sensitivity']:.3f} | {r['specificity']:.3f} | "
              f"{loc.get('pointing_game', float('nan')):.2f} (n={loc['n']}) | "
              f"{loc.get('energy_share', float('nan')):.2f} |")
    if args.realct:
        doc["realct"] = evaluate_realct(model, args.realct)
        for row in doc["realct"]:
            print(row)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
