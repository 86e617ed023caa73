#!/usr/bin/env bash
# The built package on older x86-64 CPUs, emulated by qemu-user (apt-get install qemu-user): the core op
# checks (`infovae-kernels selftest`) on a Westmere (SSE4.2, no AVX: the baseline variant is chosen) and
# a Haswell (AVX2 + FMA, no AVX-512: the avx2 variant), and a forced capability the emulated CPU lacks
# (a ValueError, not SIGILL). Any AVX-512 instruction reached on the Haswell, or any AVX instruction on
# the Westmere, stops qemu with "Illegal instruction". About 4-6 minutes on 2 cores (TCG emulation).
#
#   bash scripts/check_cpu_emulation.sh     # after `make build`; PYTHON defaults to .venv/bin/python
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-.venv/bin/python}"
command -v qemu-x86_64 > /dev/null || { echo "needs qemu-x86_64 (apt-get install qemu-user)"; exit 2; }
export PYTHONPATH="$PWD:$PWD/python"
for cpu in Westmere Haswell; do
  echo "=== emulated $cpu"
  qemu-x86_64 -cpu "$cpu" "$PY" -m infovae_kernels selftest
done
echo "=== emulated Westmere with INFOVAE_CPU_CAPABILITY=avx2"
INFOVAE_CPU_CAPABILITY=avx2 qemu-x86_64 -cpu Westmere "$PY" -c "
import torch, infovae_kernels as ik
try:
    ik.mmd(torch.randn(5, 2), torch.randn(5, 2))
    raise SystemExit('FAIL: ran without the AVX2 the emulated CPU lacks')
except ValueError as exc:
    print('ValueError:', exc)
"
echo "OK"
