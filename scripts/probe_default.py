"""Source probe on the shipped model's features: can the source be read from them?

Usage: python scripts/probe_default.py [MODEL] [--realtrain ../shared/realtrain] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ichrt.export.probe import model_features, probe_sources
from ichrt.export.sources import SOURCES, load_source
from ichrt.runtime.session import default_model_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=str(default_model_path(fp32=True)))
    ap.add_argument("--realtrain", type=Path, default=Path("../shared/realtrain"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    options = {"roboflow": {"dedupe": True}}
    samples = [s for name in SOURCES
               for s in load_source(name, args.realtrain / name, **options.get(name, {}))
               if not np.isnan(s.labels[0])]
    feats = model_features(args.model, samples)
    results = probe_sources(feats, [s.source for s in samples], [s.group for s in samples],
                            np.array([s.labels[0] for s in samples]))
    print("| subset | slices | sources | balanced accuracy | chance | accuracy | majority |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.subset} | {r.n} | {len(r.classes)} | {r.balanced_accuracy:.3f} | "
              f"{r.chance:.3f} | {r.accuracy:.3f} | {r.majority:.3f} |")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")


if __name__ == "__main__":
    main()
