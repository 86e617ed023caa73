#!/usr/bin/env bash
# One command for a CUDA machine with no network (torch 2.11+, triton 3.6+, Python 3.12, nvcc):
#   bash benchmarks/gpu_check.sh            (from the repo root; results under $OUT)
# 1. builds the package in place with what is installed (C++ CPU kernels, CUDA kernels when present);
# 2. runs the GPU tests (pytest -m gpu) and the backend test suite on CUDA (-x, wall-clock timeouts);
# 3. runs the benchmark ladder (benchmarks/bench_gpu.py) with what is left of an 8-minute budget.
# Everything is logged to $OUT/gpu_check.log; the benchmark writes $OUT/bench_<gpu>.csv, $OUT/bench.png
# and prints its short table last. A failing step is reported and the next one still runs.
set -u -o pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-benchmarks/results/gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
TOTAL_S="${GPU_CHECK_BUDGET_S:-470}"
exec > >(tee "$OUT/gpu_check.log") 2>&1
SECONDS=0
declare -A RESULT

step() {  # step NAME TIMEOUT_S CMD...
  local name=$1 limit=$2
  shift 2
  echo "=== [$SECONDS s] $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@"
  local rc=$?
  RESULT[$name]=$rc
  echo "=== [$SECONDS s] $name: rc=$rc"
  return 0
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "nvidia-smi unavailable"
"$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
try:
    import triton; print("triton", triton.__version__)
except Exception as exc:
    print("triton not importable:", exc)
EOF

# 1. build in place (no network: no build isolation, no dependency resolution); GPU_CHECK_SKIP_BUILD=1 skips
export MAX_JOBS="${MAX_JOBS:-16}"
RESULT[build]=0
[ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ] || step build 200 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
if [ "${RESULT[build]}" != 0 ]; then
  step build_inplace 200 "$PY" setup.py build_ext --inplace
fi
"$PY" -c "import infovae_kernels as ik; [print(f'backend {k}: {v}') for k, v in ik.backends.available().items()]"

# 2. tests: the GPU-marked tests, then the backend suite (its CUDA parametrisations and the triton file)
export INFOVAE_TRITON_AUTOTUNE="${INFOVAE_TRITON_AUTOTUNE:-1}"
step pytest_gpu 110 "$PY" -m pytest -x -q -rs -s -m gpu tests/ -p no:cacheprovider
step pytest_triton 80 "$PY" -m pytest -x -q tests/test_triton.py -m "not gpu" -p no:cacheprovider
step pytest_cuda_suite 90 "$PY" -m pytest -x -q tests/ -k "cuda" -m "not gpu" -p no:cacheprovider

echo "=== [$SECONDS s] results so far:"
for k in build build_inplace pytest_gpu pytest_triton pytest_cuda_suite; do
  [ -n "${RESULT[$k]+x}" ] && echo "  $k: rc=${RESULT[$k]}"
done

# 3. benchmark with the rest of the budget (at least 60 s); its short table is the last output
LEFT=$(( TOTAL_S - SECONDS - 25 ))
[ "$LEFT" -lt 60 ] && LEFT=60
BENCH_ARGS=${BENCH_ARGS:-}
step bench $(( LEFT + 20 )) "$PY" benchmarks/bench_gpu.py --out "$OUT" --budget-s "$LEFT" $BENCH_ARGS
[ "${RESULT[bench]}" != 0 ] && echo "bench: rc=${RESULT[bench]}"
exit 0
