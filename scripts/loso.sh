#!/usr/bin/env bash
# Leave-one-source-out: start from the phantom-only stage of the default run (no real data),
# train one epoch on phantoms + the other real sources, then score every slice of the left-out one.
set -euo pipefail
cd "$(dirname "$0")/.."
init=${1:-runs/stage1/checkpoint.pt}
for s in ctich roboflow rsna200; do
  ichrt train --recipe recipes/loso-$s.json --out runs/loso-$s --arch resnet10 --image-size 160 \
    --batch-size 32 --augment-preset ichrt.export.realaug:MIXED --balance class --seed 0 \
    --workers 1 --init-weights "$init" --quiet
  ichrt export runs/loso-$s --out runs/loso-$s/model.onnx
  python -m ichrt.export.source_eval runs/loso-$s/model.onnx --realtrain ../shared/realtrain \
    --sources $s --val-fraction 1 --json runs/loso-$s/eval.json
done
