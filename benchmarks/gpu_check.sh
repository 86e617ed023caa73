#!/usr/bin/env bash
# One command for a CUDA machine with no network (torch 2.11+, triton 3.6+, Python 3.12, nvcc):
#   bash benchmarks/gpu_check.sh            (from the repo root; results under $OUT)
# 1. builds the package in place with what is installed (C++ CPU kernels, CUDA kernels when present);
# 2. runs the GPU tests (pytest -m gpu: Triton precision modes, value bitwise with/without gradient,
#    bit-neutral tuning, CUDA graphs, Inductor);
# 3. bench targets: mmd value vs value + gradient at N = M = 8192, d = 8 and 64, for triton, cuda, torch
#    and the naive formula ($OUT/full_<gpu>.csv), and the error of each Triton tl.dot precision mode
#    against float64 ($OUT/precision_<gpu>.csv);
# 4. the Triton test file and the backend suite on CUDA (-x, wall-clock limits);
# 5. the benchmark ladder (benchmarks/bench_gpu.py, both mmd modes) with what is left of an 8-minute
#    budget: $OUT/bench_<gpu>.csv and $OUT/bench.png.
# Everything is logged to $OUT/gpu_check.log; the short tables are printed last. A failing step is
# reported and the next one still runs.
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
try:
    import setuptools; print("setuptools", setuptools.__version__)
except Exception as exc:
    print("setuptools not importable:", exc)
EOF

# 1. build in place (no network: no build isolation, no dependency resolution); GPU_CHECK_SKIP_BUILD=1 skips.
# One CPU kernel variant (-march=native) instead of the three a wheel carries: this run is about the GPU.
# pyproject.toml's SPDX license needs setuptools >= 77: its version is printed above if the build fails.
export MAX_JOBS="${MAX_JOBS:-16}"
export INFOVAE_CPU_ARCH="${INFOVAE_CPU_ARCH:-native}"
RESULT[build]=0
[ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ] || step build 180 "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
if [ "${RESULT[build]}" != 0 ]; then
  step build_inplace 150 "$PY" setup.py build_ext --inplace
fi
"$PY" -c "import infovae_kernels as ik; [print(f'backend {k}: {v}') for k, v in ik.backends.available().items()]"

# 2. GPU tests (Triton and CUDA engineers' gpu-marked tests)
export INFOVAE_TRITON_AUTOTUNE="${INFOVAE_TRITON_AUTOTUNE:-1}"
SKIP_TESTS="${GPU_CHECK_SKIP_TESTS:-0}"  # 1: benchmarks only (a dry run of the script on CPU: BENCH_ARGS=--smoke)
# no -x: each test is reported (a fault that breaks the CUDA context fails the tests after it, and
# tests/conftest.py synchronises after each test so that the faulting one is named first); -rfEs lists them
[ "$SKIP_TESTS" = 1 ] || step pytest_gpu 100 "$PY" -m pytest -q -rfEs -s -m gpu tests/ -p no:cacheprovider

# 3. bench targets (value vs full at N = M = 8192) and the tl.dot precision errors
BENCH_ARGS=${BENCH_ARGS:-}
step bench_targets 140 "$PY" benchmarks/bench_gpu.py --out "$OUT" --skip ladder --budget-s 120 $BENCH_ARGS

# 4. the Triton test file and the backend suite on CUDA, each only while the budget leaves the ladder 60 s
left() { echo $(( TOTAL_S - SECONDS )); }
if [ "$SKIP_TESTS" != 1 ] && [ "$(left)" -gt 130 ]; then
  step pytest_triton 70 "$PY" -m pytest -x -q tests/test_triton.py tests/test_triton_batched.py tests/test_ksd_triton.py -m "not gpu" -p no:cacheprovider
fi
if [ "$SKIP_TESTS" != 1 ] && [ "$(left)" -gt 110 ]; then
  step pytest_cuda_suite 50 "$PY" -m pytest -x -q tests/ -k "cuda" -m "not gpu" -p no:cacheprovider
fi

# 4b. a short GPU training run of the model layer and its throughput row (about a minute)
if [ "$(left)" -gt 150 ]; then
  step infovae_train_smoke 120 env PYTHON="$PY" bash benchmarks/gpu_train_smoke.sh "$OUT/train_smoke"
fi

echo "=== [$SECONDS s] results so far:"
for k in build build_inplace pytest_gpu bench_targets pytest_triton pytest_cuda_suite infovae_train_smoke; do
  [ -n "${RESULT[$k]+x}" ] && echo "  $k: rc=${RESULT[$k]}"
done

# 5. the ladder with the rest of the budget (at least 30 s); its short tables are the last output
LEFT=$(( TOTAL_S - SECONDS - 20 ))
[ "$LEFT" -lt 30 ] && LEFT=30
step bench $(( LEFT + 15 )) "$PY" benchmarks/bench_gpu.py --out "$OUT" --skip targets,precision --budget-s "$LEFT" $BENCH_ARGS
[ "${RESULT[bench]}" != 0 ] && echo "bench: rc=${RESULT[bench]}"
if ls "$OUT"/full_*.csv >/dev/null 2>&1; then echo "targets:"; cat "$OUT"/full_*.csv; fi
exit 0
