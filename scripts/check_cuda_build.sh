#!/usr/bin/env bash
# Builds the full extension (CPU + CUDA kernels) against the CUDA 13.0 build of torch 2.14.1 and checks
# that it imports and registers CUDA kernels for every infovae:: op. Needs no GPU.
#
#   scripts/check_cuda_build.sh            # creates .venv-cuda on first use (torch 2.14.1, ~5.4 GB)
#
# Environment: CUDA_HOME (default /usr/local/cuda-13.0: the toolkit of the nvcc used), VENV (default
# .venv-cuda), MAX_JOBS (default 2).
# The library goes to build/cuda-check/infovae_kernels/_C*.so, never into infovae_kernels/ (a
# CUDA-linked _C there would break the CPU venv). Exit status: 0 when built, imported and registered
# (and, unless TORCH_CUDA_ARCH_LIST is set, holding sm_80 and sm_90 code and compute_90 PTX); 6 when an
# architecture is missing; 5 when setup.py's -std=c++17 is what breaks the build (then checked again
# from a -std=c++20 copy).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda-13.0}"
VENV="${VENV:-.venv-cuda}"
BUILD_LIB="build/cuda-check"
BUILD_TMP="build/cuda-check-tmp"
TORCH_VERSION="2.14.1"

t0=$(date +%s)
say() { printf '[check_cuda_build %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

[[ -x "$CUDA_HOME/bin/nvcc" ]] || { say "FAIL: no nvcc at $CUDA_HOME/bin/nvcc (set CUDA_HOME)"; exit 2; }
export PATH="$CUDA_HOME/bin:$PATH"

if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV with torch==$TORCH_VERSION"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install "torch==$TORCH_VERSION" numpy ninja setuptools wheel
fi
PY="$VENV/bin/python"
"$PY" - "$TORCH_VERSION" <<'EOF'
import sys, torch
want = sys.argv[1]
assert torch.__version__.split("+")[0] == want, f"{sys.executable}: torch {torch.__version__}, want {want}"
assert torch.version.cuda is not None, "torch in this venv is not a CUDA build"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), python {sys.version.split()[0]}")
EOF
say "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"

mkdir -p build
rm -rf "$BUILD_LIB" "$BUILD_TMP" build/cuda-check-src
before=$(ls infovae_kernels/_C*.so 2>/dev/null || true)
status=0
build() {  # build <source dir> <lib dir> <temp dir> <log>
  # one CPU variant (INFOVAE_CPU_ARCH): this script checks the CUDA build, the CPU variants are make test's
  (cd "$1" && INFOVAE_WITH_CUDA=1 INFOVAE_CPU_ARCH="${INFOVAE_CPU_ARCH:-native}" MAX_JOBS="${MAX_JOBS:-2}" \
     nice "$ROOT/$PY" setup.py -q build_ext \
     --build-lib "$ROOT/$2" --build-temp "$ROOT/$3") > "$4" 2>&1
}
say "building (INFOVAE_WITH_CUDA=1, MAX_JOBS=${MAX_JOBS:-2}) into $BUILD_LIB"
if ! build . "$BUILD_LIB" "$BUILD_TMP" "$BUILD_TMP.log"; then
  if grep -q "C++20 or later compatible compiler is required" "$BUILD_TMP.log" \
     && grep -q -- "-std=c++17" setup.py; then
    # torch >= 2.14 headers need C++20 (ATen/ATen.h: #error); setup.py passes -std=c++17 to g++ and nvcc.
    say "FAIL: setup.py compiles with -std=c++17, but torch $TORCH_VERSION's headers require C++20"
    say "      (ATen/ATen.h: '#error C++20 or later compatible compiler is required'). Fix in setup.py:"
    say "      -std=c++20 for torch >= 2.14 (torch <= 2.13 accept c++17). Log: $BUILD_TMP.log"
    say "continuing with a copy of the tree whose setup.py uses -std=c++20 (build/cuda-check-src),"
    say "to check everything else; the exit status stays non-zero (5) until setup.py is fixed"
    status=5
    mkdir -p build/cuda-check-src
    cp -r setup.py pyproject.toml MANIFEST.in LICENSE README.md csrc infovae_kernels python build/cuda-check-src/
    find build/cuda-check-src -name '*.so' -delete
    sed -i 's/-std=c++17/-std=c++20/g' build/cuda-check-src/setup.py
    rm -rf "$BUILD_TMP"
    build build/cuda-check-src "$BUILD_LIB" "$BUILD_TMP" "$BUILD_TMP-cxx20.log" || {
      grep -nE "error|FAILED" "$BUILD_TMP-cxx20.log" | head -n 40
      say "FAIL: build with -std=c++20 too (log: $BUILD_TMP-cxx20.log)"
      exit 1
    }
  else
    grep -nE "error|FAILED" "$BUILD_TMP.log" | head -n 40
    say "FAIL: build (full log: $BUILD_TMP.log)"
    exit 1
  fi
fi
after=$(ls infovae_kernels/_C*.so 2>/dev/null || true)
[[ "$before" == "$after" ]] || { say "FAIL: the build changed infovae_kernels/_C*.so"; exit 1; }
SO=$(ls "$BUILD_LIB"/infovae_kernels/_C*.so)
say "built $SO ($(du -h "$SO" | cut -f1))"

say "importing and checking the dispatcher"
"$PY" - "$SO" <<'EOF'
import importlib.util, sys
import torch

so = sys.argv[1]
print("torch.cuda.is_available():", torch.cuda.is_available(), "(no driver/GPU is fine for this check)")
try:
    spec = importlib.util.spec_from_file_location("_C", so)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # dlopen: registers the TORCH_LIBRARY(infovae) ops
except Exception as e:  # report precisely: a missing driver (libcuda.so.1) is not a build failure
    msg = str(e)
    kind = "no CUDA driver on this machine" if "libcuda.so" in msg else "import failed"
    print(f"IMPORT FAIL ({kind}): {type(e).__name__}: {msg}")
    sys.exit(3)
print("with_cuda =", mod.with_cuda)
ok = mod.with_cuda == 1
for op in ("gram", "pair_reduce", "quad_form"):
    name = f"infovae::{op}"
    has_op = hasattr(torch.ops.infovae, op)
    cuda = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")
    cpu = torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")
    print(f"{name:22s} torch.ops: {has_op}  CUDA kernel: {cuda}  CPU kernel: {cpu}")
    ok = ok and has_op and cuda and cpu
if not ok:
    print("FAIL: missing op or kernel registration")
    sys.exit(4)
EOF
# Architectures in the library: machine code for sm_80 and sm_90 and PTX for compute_90 (setup.py's
# default; skipped when TORCH_CUDA_ARCH_LIST chose others). cuobjdump: the toolkit's, else the copy that
# ships with triton in $VENV.
CUOBJDUMP=$(command -v "$CUDA_HOME/bin/cuobjdump" cuobjdump 2>/dev/null | head -n 1 || true)
[[ -n "$CUOBJDUMP" ]] || CUOBJDUMP=$(ls "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -n 1 || true)
if [[ -n "${TORCH_CUDA_ARCH_LIST:-}" ]]; then
  say "architectures: TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST (not checked)"
elif [[ -z "$CUOBJDUMP" ]]; then
  say "architectures: not checked (no cuobjdump in $CUDA_HOME/bin, on PATH or in $VENV's triton)"
else
  elf=$("$CUOBJDUMP" --list-elf "$SO" 2>/dev/null || true)
  ptx=$("$CUOBJDUMP" --list-ptx "$SO" 2>/dev/null || true)
  miss=""
  grep -q '\.sm_80\.cubin' <<< "$elf" || miss+=" sm_80-code"
  grep -q '\.sm_90\.cubin' <<< "$elf" || miss+=" sm_90-code"
  grep -q '\.sm_90\.ptx' <<< "$ptx" || miss+=" compute_90-PTX"
  [[ -z "$miss" ]] || { say "FAIL: missing in $SO:$miss ($CUOBJDUMP)"; exit 6; }
  say "architectures: $(grep -c 'sm_80\.cubin' <<< "$elf") sm_80 + $(grep -c 'sm_90\.cubin' <<< "$elf") sm_90 cubins, $(grep -c . <<< "$ptx") compute_90 PTX"
fi
if [[ $status -ne 0 ]]; then
  say "PARTIAL: CUDA extension builds (with -std=c++20), imports and registers CUDA kernels; setup.py as committed does not build against torch $TORCH_VERSION"
  exit "$status"
fi
say "OK: built, imported, CUDA kernels registered for infovae::gram, pair_reduce, quad_form"
