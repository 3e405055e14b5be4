"""Markdown tables of the model card from the evaluation JSON files in docs/eval/.

Usage: python scripts/model_card.py [--eval docs/eval] > tables.md
Reads lesion-default.json, lesion-default-int8.json (held-out groups, phantoms, realct),
loso-*.json (leave-one-source-out) and calibration-default.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def f(v, nd: int = 3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def ci(stat) -> str:
    if not stat or stat.get("ci") is None:
        return "-"
    return (f"{f(stat['sensitivity'])} [{f(stat['ci']['sensitivity'][1])}, "
            f"{f(stat['ci']['sensitivity'][2])}] / {f(stat['specificity'])} "
            f"[{f(stat['ci']['specificity'][1])}, {f(stat['ci']['specificity'][2])}]")


def slice_table(results: list[dict], title: str) -> str:
    rows = [(f"| {title} | slices (groups) | positive | AUC(any) slice | slice sens / spec "
            "| study AUC max / study model | studies flagged: ICH / normal not flagged | "
            "pointing game | Dice | volume error (median abs. rel.) |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        st, loc = r.get("study"), r.get("localization") or {}
        at = st["at_threshold_model"] if st else None
        vol = loc.get("volume") or {}
        rows.append(
            f"| {r['source']} | {r['slices']} ({r['groups']}) | {r['positive']} | "
            f"{f(r['auc']['any'])} | {f(r['slice']['sensitivity'])} / "
            f"{f(r['slice']['specificity'])} | "
            + (f"{f(st['auc_max'])} / {f(st['auc_model'])} | "
               f"{at['flagged_positive']}/{at['positive']} / "
               f"{at['not_flagged_negative']}/{at['negative']} | " if st else "- | - | ")
            + f"{f(loc.get('pointing_game'), 2)} (n={loc.get('n', 0)}) | {f(loc.get('dice'), 2)} | "
            f"{f(vol.get('median_abs_rel_error'), 2)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--eval", type=Path, default=Path("docs/eval"))
    args = ap.parse_args()
    for name in ("lesion-default.json", "lesion-default-int8.json"):
        p = args.eval / name
        if p.is_file():
            doc = json.loads(p.read_text())
            print(f"\n### {name} ({doc['model']})\n")
            print(slice_table(doc["results"], "data"))
            for row in doc.get("realct", []):
                print(f"- realct {row['slice']}: p(any) {row['p_any']:.3f}, flagged "
                      f"{row['flagged']}, peak in box {row.get('peak_in_box')}")
    loso = sorted(args.eval.glob("loso-*.json"))
    if loso:
        print("\n### leave-one-source-out\n")
        print(slice_table([json.loads(p.read_text())["results"][0] for p in loso],
                          "left-out source"))
    cal = args.eval / "calibration-default.json"
    if cal.is_file():
        doc = json.loads(cal.read_text())
        print(f"\n### calibration: threshold {doc['threshold_any']:.3f}, study model "
              f"{doc['study_model']}\n")
        print("| part | level | positives / negatives | sensitivity [95% CI] | "
              "specificity [95% CI] | AUC study max / model |")
        print("|---|---|---|---|---|---|")
        for part in doc["parts"]:
            level = "study" if "study" in part else "slice"
            s = part[level]
            print(f"| {part['source']} | {level} | {s['positives']} / {s['negatives']} | "
                  f"{f(s['sensitivity'][0])} [{f(s['sensitivity'][1])}, {f(s['sensitivity'][2])}]"
                  f" | {f(s['specificity'][0])} [{f(s['specificity'][1])}, "
                  f"{f(s['specificity'][2])}] | {f(part.get('auc_study_max'))} / "
                  f"{f(part.get('auc_study_model'))} |")


if __name__ == "__main__":
    main()
