#!/usr/bin/env bash
# The GPU checks of the fused backends in one run, for a machine with a CUDA device and
# nlframe importable (its dependencies, triton, and optionally flash-linear-attention):
#   1. the kernels in float16 / bfloat16 at real sizes against the float64 reference
#      (tests/gpu);
#   2. `nlframe bench scan` on the device: the gated delta rule in bfloat16 with
#      flash-linear-attention's kernels as yardstick rows where installed (head dims 64
#      and 128), and the Titans MLP memory at titans-pytorch's default size in float32
#      (triton against chunked).
# Results go to $OUT (default ./gpu-check): tests.txt and one JSON list per benchmark.
set -uo pipefail
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
status=0
$PY -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$OUT/tests.txt" || status=1
for dim in 64 128; do
  for decay in 0 0.01; do
    $PY -m nlframe bench scan --device cuda --dtype bfloat16 --rule gd --decay "$decay" \
      --backends triton reference --seq 512 2048 8192 --dim "$dim" --json \
      >"$OUT/scan-gd-d$dim-decay$decay.json" || status=1
  done
done
$PY -m nlframe bench scan --device cuda --memory mlp --hidden 1024 --dim 256 --heads 4 \
  --chunk-size 16 --batch 2 --seq 512 2048 --backends triton chunked --json \
  >"$OUT/scan-titans-mlp.json" || status=1
exit $status
