#!/usr/bin/env bash
# Train the lesion-level default model (resnet10seg @160) and its leave-one-source-out twins.
# Needs the export extra and ../shared/realtrain beside the repository. Every run is resumable:
# run this script again after an interruption and each stage continues from its checkpoint.
#   bash scripts/train_lesion.sh            # pretrain + main model
#   bash scripts/train_lesion.sh loso       # + the leave-one-source-out runs (same recipe)
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -d data/ph-train ]] || ichrt synth --out data/ph-train --studies 360 --seed 1 --size 256 --prevalence 0.5
[[ -d data/ph-val ]] || ichrt synth --out data/ph-val --studies 60 --seed 2 --size 256
[[ -d data/ph-test ]] || ichrt synth --out data/ph-test --studies 60 --seed 3 --size 512
COMMON=(--arch resnet10seg --image-size 160 --batch-size 32
        --augment-preset ichrt.export.realaug:MIXED --balance class --seed 0 --workers 1
        --insert-p 0.35 --hard-p 0.4 --appearance --name ichrt-resnet10seg-160)
run() {  # run NAME RECIPE [extra args]: train, or resume an unfinished run
  local out=runs/$1; shift
  local recipe=$1; shift
  if [[ -f $out/checkpoint.pt ]]; then
    ichrt train --out "$out" --resume --workers 1
  else
    ichrt train --recipe "$recipe" --out "$out" "${COMMON[@]}" "$@"
  fi
}
# Stage 1, shared by every run: phantoms only (no real source seen, so LOSO stays honest).
run lesion-pretrain recipes/lesion-pretrain.json
INIT=(--init-weights runs/lesion-pretrain/best.pt)
if [[ "${1:-main}" == "loso" ]]; then
  for s in ctich roboflow rsna200; do
    run "lesion-loso-$s" "recipes/lesion-loso-$s.json" "${INIT[@]}"
  done
else
  run lesion recipes/lesion.json "${INIT[@]}"
fi
