#!/usr/bin/env bash
# Reproduce the shipped default model (about 30 minutes of training on a 2-core CPU).
# Needs the export and calibration extras and ../shared/realtrain beside the repository.
set -euo pipefail
cd "$(dirname "$0")/.."
ichrt synth --out data/ph-train --studies 360 --seed 1 --size 256 --prevalence 0.5
ichrt synth --out data/ph-val --studies 60 --seed 2 --size 256
ichrt synth --out data/ph-test --studies 60 --seed 3 --size 512
ichrt synth --out data/ph-shifted --studies 60 --seed 4 --size 512 --preset shifted
# Stage 1: phantoms only; stage 2: phantoms + the four real sources (recipes/default.json).
ichrt train --recipe recipes/default.json --out runs/default --arch resnet10 --image-size 160 \
  --batch-size 32 --augment-preset ichrt.export.realaug:MIXED --balance class --seed 0 \
  --workers 1 --name ichrt-resnet10-160
ichrt export runs/default --out runs/default/model.onnx
# Temperatures and thresholds (target sensitivity 0.95 for any) on the phantom validation set,
# then INT8 (accepted only if AUC(any) drops by <= 0.005 on the held-out set).
ichrt calibrate threshold runs/default/model.onnx --data data/ph-val --out runtime/models/default.onnx
cp runs/default/model.pt runtime/models/default.pt   # Grad-CAM twin (same graph, see graph_sha256)
ichrt calibrate quantize runtime/models/default.onnx --data data/ph-train --holdout data/ph-val \
  --out runtime/models/default-int8.onnx --compare
# Held-out figures: phantoms of unseen seeds (ph-test) and unseen settings (ph-shifted), the
# held-out groups of every real source, and the four evaluation-only real slices.
for m in default default-int8; do
  for d in ph-test ph-shifted; do
    ichrt evaluate runtime/models/$m.onnx --data data/$d --bootstrap 200 --report runs/default/eval-$m-$d.json
  done
done
python -m ichrt.export.source_eval runtime/models/default.onnx --realtrain ../shared/realtrain \
  --realct ../shared/realct --json runs/default/eval-sources.json
