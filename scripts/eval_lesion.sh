#!/usr/bin/env bash
# Export, calibrate, quantize and measure the lesion-level models trained by train_lesion.sh.
#   bash scripts/eval_lesion.sh main         # the shipped model -> runtime/models/, reports in docs/eval/
#   bash scripts/eval_lesion.sh loso SOURCE  # a leave-one-source-out run, measured on SOURCE
# Calibration uses held-out data only: phantom studies of data/ph-val (seed 2, never trained on)
# and the held-out groups of the real sources the run trained on (training's grouped split).
set -euo pipefail
cd "$(dirname "$0")/.."
REAL=../shared/realtrain
mkdir -p docs/eval
case "${1:-main}" in
  main)
    run=runs/lesion
    ichrt export "$run" --which best --out "$run/model.onnx" --name ichrt-resnet10seg-160
    ichrt calibrate threshold "$run/model.onnx" --data data/ph-val --real "$REAL" \
      --target-sensitivity 0.95 --out runtime/models/default.onnx --bootstrap 1000 \
      --report docs/eval/calibration-default.json --picture docs/reliability.png
    cp "$run/model.pt" runtime/models/default.pt   # Grad-CAM twin (same graph)
    # Every candidate compared (report only), then the shipped one: MinMax / U8S8 with reduce_range
    # (saturation-safe on AVX2-only CPUs, the smallest probability change of the safe ones).
    ichrt calibrate quantize runtime/models/default.onnx --data data/ph-train --holdout data/ph-val \
      --out runs/lesion/int8-compare.onnx --compare --report docs/eval/quantize-default-compare.json
    ichrt calibrate quantize runtime/models/default.onnx --data data/ph-train --holdout data/ph-val \
      --out "$run/model-int8.onnx" --method minmax --format u8s8-rr \
      --report docs/eval/quantize-default.json
    # INT8's own operating point: the FP32 recipe and data on INT8's outputs (temperatures, study
    # model, thresholds); its contract's lineage: this file <- model-int8.onnx <- default.onnx.
    ichrt calibrate threshold "$run/model-int8.onnx" --data data/ph-val --real "$REAL" \
      --target-sensitivity 0.95 --out runtime/models/default-int8.onnx --bootstrap 1000 \
      --report docs/eval/calibration-default-int8.json --picture "$run/reliability-int8.png"
    for m in default default-int8; do
      python -m ichrt.export.lesion_eval runtime/models/$m.onnx --realtrain "$REAL" \
        --phantoms data/ph-test --realct ../shared/realct --json docs/eval/lesion-$m.json > /dev/null
    done
    ;;
  loso)
    src=$2
    run=runs/lesion-loso-$src
    others=$(echo ctich,roboflow,bhsd,rsna200 | tr , '\n' | grep -vx "$src" | paste -sd, -)
    ichrt export "$run" --which best --out "$run/model.onnx"
    ichrt calibrate threshold "$run/model.onnx" --data data/ph-val --real "$REAL" \
      --real-sources "$others" --out "$run/model-cal.onnx" --bootstrap 1000 \
      --report "$run/calibration.json"
    python -m ichrt.export.lesion_eval "$run/model-cal.onnx" --realtrain "$REAL" --sources "$src" \
      --val-fraction 1 --json docs/eval/loso-$src.json > /dev/null
    ;;
  *) echo "usage: $0 main | loso SOURCE" >&2; exit 2 ;;
esac
