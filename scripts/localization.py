"""Measured localization of every explanation method: where do the heat maps point?

For each evaluation set and method: the pointing-game hit rate (map peak inside the lesion), the
share of positive map energy inside the lesion, the IoU of the Otsu-thresholded map with the
lesion, and the explanation time per slice (for cam the model outputs are already there, as
during scoring; the other methods include their own model calls).  A ``centre`` row is the
chance level: a uniform map over the framing box (its peak is the box centre).

Sets:
* ``--phantoms DIR``: a held-out phantom set in the RSNA layout (``ichrt synth``), generated with
  a seed and preset never trained on; every slice with a lesion mask is evaluated (the union of
  the subtype masks is the lesion).
* ``--realct DIR``: HU slices (``<SOPInstanceUID>.npy``) with radiologist boxes (``gt.csv``), e.g.
  ../shared/realct; boxes become the lesion mask.  Evaluation only: never tune on it.

Usage::

    python scripts/localization.py --model M --phantoms HELDOUT --realct ../shared/realct \\
        [--methods cam,gradcam,gradcampp,hshap] [--max-slices 200] [--overlays DIR] [--json OUT]

Prints a markdown table (and writes the JSON document with ``--json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ichrt.runtime.contract import LABELS
from ichrt.runtime.explain.base import METHODS, ExplainError, normalize
from ichrt.runtime.explain.batch import explain_slices, make_explainer
from ichrt.runtime.explain.metrics import boxes_to_mask, localization

#: Slices windowed, scored and explained together.
BATCH = 8
METRICS = ("pointing", "energy", "iou")


@dataclass
class Case:
    """One evaluation slice: its HU, lesion mask, ground-truth boxes (drawn) and a name."""

    name: str
    hu: np.ndarray
    mask: np.ndarray
    boxes: list[tuple[float, float, float, float]]


def phantom_cases(folder: Path, max_slices: int | None) -> list[Case]:
    """Lesion slices of a phantom set (RSNA layout with masks/), evenly thinned to max_slices."""
    from ichrt.runtime.dicom import read_slice
    from ichrt.runtime.rsna_layout import (
        IMAGES_DIR,
        LABELS_FILE,
        MASKS_DIR,
        read_labels_csv,
        read_mask_npz,
    )

    labels = read_labels_csv(folder / LABELS_FILE)
    ids = sorted(i for i, y in labels.items() if y[LABELS.index("any")] == 1
                 and (folder / MASKS_DIR / f"{i}.npz").is_file())
    cases = []
    for image_id in _thin(ids, max_slices):
        mask = read_mask_npz(folder / MASKS_DIR / f"{image_id}.npz").any(axis=0)
        if mask.any():
            hu = read_slice(folder / IMAGES_DIR / f"{image_id}.dcm").hu
            cases.append(Case(image_id, hu, mask, []))
    return cases


def realct_cases(folder: Path) -> list[Case]:
    """Real HU slices with their radiologist boxes; padding (-3024) becomes air as in ingest."""
    from ichrt.runtime.hounsfield import pad_to_air
    from ichrt.runtime.rsna_layout import read_boxes_csv

    boxes = read_boxes_csv(folder / "gt.csv")
    cases = []
    for path in sorted(folder.glob("*.npy")):
        hu = pad_to_air(np.load(path, allow_pickle=False).astype(np.float32))
        rects = [(b.y, b.x, b.y + b.height, b.x + b.width) for b in boxes.get(path.stem, [])]
        if rects:
            cases.append(Case(path.stem, hu, boxes_to_mask(rects, hu.shape), rects))
    return cases


def _thin(items: list[str], limit: int | None) -> list[str]:
    if limit is None or len(items) <= limit:
        return items
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, limit)]


def evaluate(model, cases: Sequence[Case], methods: Sequence[str],
             overlays: Path | None = None) -> dict[str, Any]:
    """Metrics of every method on ``cases``: {method: {pointing, energy, iou, ms, n} or error}."""
    from ichrt.runtime.aggregate import calibrated_probabilities
    from ichrt.runtime.batches import window_hu

    contract = model.contract
    explainers: dict[str, Any] = {}
    results: dict[str, Any] = {}
    for method in methods:
        try:
            explainers[method] = make_explainer(method, model)
        except ExplainError as exc:
            results[method] = {"error": str(exc)}
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in ("centre", *explainers)}
    flagged = 0
    for start in range(0, len(cases), BATCH):
        chunk = cases[start:start + BATCH]
        tensors, boxes = window_hu([c.hu for c in chunk], contract)
        outputs = model.run(tensors)
        probs = calibrated_probabilities(outputs["logits"], contract)
        p_any = probs[:, contract.labels.index("any")]
        flagged += int((p_any >= contract.threshold("any")).sum())
        for case, box in zip(chunk, boxes):
            uniform = np.zeros(case.hu.shape, np.float32)
            uniform[max(0, box[0]):box[2], max(0, box[1]):box[3]] = 1.0
            rows["centre"].append({**localization(uniform, case.mask), "seconds": 0.0})
        for method, explainer in explainers.items():
            found = explain_slices(explainer, tensors, boxes, [c.hu.shape for c in chunk],
                                   outputs)
            for case, item in zip(chunk, found):
                heat = normalize(item.heatmap)
                rows[method].append({**localization(heat, case.mask), "seconds": item.seconds})
                if overlays is not None:
                    from ichrt.runtime.explain.output import write_explanation

                    write_explanation(overlays / method, case.name, case.hu, item.heatmap, method,
                                      boxes=case.boxes or None, mask=None if case.boxes else case.mask,
                                      extra={"seconds": item.seconds})
    for method, per_slice in rows.items():
        results[method] = {
            **{k: float(np.mean([r[k] for r in per_slice])) if per_slice else None
               for k in METRICS},
            "ms": 1000 * float(np.mean([r["seconds"] for r in per_slice])) if per_slice else None,
            "n": len(per_slice),
        }
    ordered = {m: results[m] for m in (*methods, "centre")}
    return {"slices": len(cases), "flagged": flagged, "methods": ordered}


def markdown(document: dict[str, Any]) -> str:
    """The localization table: one row per set and method."""
    lines = ["| set | method | slices | pointing | energy in lesion | Otsu IoU | ms/slice |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, result in document["sets"].items():
        for method, r in result["methods"].items():
            if "error" in r:
                lines.append(f"| {name} | {method} | - | unavailable | | | |")
                continue
            cells = [f"{r[k]:.3f}" if r[k] is not None else "-" for k in METRICS]
            ms = "-" if r["ms"] is None else f"{r['ms']:.1f}"
            lines.append(f"| {name} | {method} | {r['n']} | {' | '.join(cells)} | {ms} |")
    lines.append("")
    lines += [f"{name}: {r['slices']} lesion slices, {r['flagged']} flagged by the model"
              for name, r in document["sets"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="ONNX model [default: the shipped one]")
    parser.add_argument("--phantoms", type=Path, help="held-out phantom set (RSNA layout)")
    parser.add_argument("--realct", type=Path, help="folder of HU .npy slices with gt.csv")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated methods [default: all]")
    parser.add_argument("--max-slices", type=int, default=200,
                        help="at most this many phantom lesion slices (evenly spread)")
    parser.add_argument("--threads", type=int, help="ONNX Runtime threads")
    parser.add_argument("--overlays", type=Path, help="write overlays/maps per set and method")
    parser.add_argument("--json", type=Path, help="write the JSON document here")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown or not (args.phantoms or args.realct):
        parser.error(f"unknown methods {sorted(unknown)}" if unknown
                     else "give --phantoms and/or --realct")

    from ichrt.runtime.session import load_model

    model = load_model(args.model, threads=args.threads)
    sets = {}
    if args.phantoms:
        sets["phantom"] = phantom_cases(args.phantoms, args.max_slices)
    if args.realct:
        sets["realct"] = realct_cases(args.realct)
    document = {"model": {"name": model.contract.name, "sha256": model.sha256,
                          "arch": model.contract.arch, "input_size": model.contract.input_size},
                "sets": {}}
    for name, cases in sets.items():
        print(f"{name}: {len(cases)} lesion slices", file=sys.stderr)
        folder = args.overlays / name if args.overlays else None
        document["sets"][name] = evaluate(model, cases, methods, folder)
    print(markdown(document))
    if args.json:
        args.json.write_text(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
