#!/usr/bin/env bash
# The package as a user gets it (`make check-wheel`, run by CI after `make test`):
# 1. the sdist and the wheel with the standard tools (python -m build --no-isolation) from this checkout;
#    the wheel reuses the objects of the in-place build under build/ (same sources, same flags), and the
#    sdist must carry every tracked source the build needs (checked against git);
# 2. a fresh venv with the wheel and its core dependencies only (torch pinned, numpy);
# 3. outside the checkout: `infovae-kernels info`, the core op checks (`infovae-kernels selftest`) under
#    every CPU capability this machine has, the model layer naming its missing extra, and the import
#    time beside torch's.
# Environment: BUILD_PYTHON (a python with torch, build, setuptools, ninja), PYTHON (makes the venv),
# TORCH_SPEC (pinned torch), WHEEL_VENV (default build/wheel-venv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUILD_PYTHON="${BUILD_PYTHON:-.venv/bin/python}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
WHEEL_VENV="${WHEEL_VENV:-build/wheel-venv}"
say() { echo "check-wheel: $*"; }

rm -rf dist "$WHEEL_VENV"
say "building the sdist and the wheel"
"$BUILD_PYTHON" -m build --no-isolation --sdist --wheel --outdir dist . > build/check-wheel-build.log 2>&1 \
  || { tail -40 build/check-wheel-build.log; exit 1; }
SDIST=$(ls dist/*.tar.gz)
WHEEL=$(ls dist/*.whl)
ls -l dist

say "the sdist carries every tracked source"
"$BUILD_PYTHON" - "$SDIST" <<'EOF'
import subprocess, sys, tarfile
names = {n.split("/", 1)[1] for n in tarfile.open(sys.argv[1]).getnames() if "/" in n}
tracked = subprocess.run(["git", "ls-files", "csrc", "infovae_kernels", "python/infovae", "pyproject.toml",
                          "setup.py", "MANIFEST.in", "LICENSE", "README.md"], capture_output=True, text=True,
                         check=True).stdout.split()
missing = [t for t in tracked if t not in names]
assert not missing, f"the sdist lacks {missing}"
built = [n for n in names if n.endswith((".so", ".o")) or n.endswith("_build_info.py")]
assert not built, f"the sdist carries build output {built}"
print(f"  {len(tracked)} tracked sources present, no build output")
EOF

say "installing the wheel with its core dependencies into a fresh venv ($WHEEL_VENV)"
"$PYTHON" -m venv "$WHEEL_VENV"
"$WHEEL_VENV/bin/pip" install -q "$TORCH_SPEC"
"$WHEEL_VENV/bin/pip" install -q "$WHEEL" "$TORCH_SPEC"
"$WHEEL_VENV/bin/pip" list --format=freeze | sed 's/^/  /'
VPY="$(cd "$WHEEL_VENV" && pwd)/bin/python"
VBIN="$(dirname "$VPY")"

cd "$(mktemp -d)"  # nothing of the checkout on sys.path from here on
say "the installed package, not the checkout"
"$VPY" -c "import infovae_kernels, sys; f = infovae_kernels.__file__; print(' ', f); sys.exit('site-packages' not in f)"
for extra in tqdm matplotlib mlxtend sklearn scipy triton pytest; do
  "$VPY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$extra') is not None)" \
    || { say "FAIL: $extra is installed with the core dependencies"; exit 1; }
done

"$VBIN/infovae-kernels" info
CAPS=$("$VPY" -c "from infovae_kernels.backends import native; print(*native.CPU_SUPPORTED)")
for cap in $CAPS; do
  say "core op checks with INFOVAE_CPU_CAPABILITY=$cap"
  INFOVAE_CPU_CAPABILITY=$cap "$VBIN/infovae-kernels" selftest
done

say "the model layer without its extra says which one is missing"
set +e
msg=$("$VBIN/infovae" --help 2>&1)
rc=$?
set -e
echo "$msg" | sed 's/^/  /'
[ "$rc" = 2 ] && echo "$msg" | grep -q "\[model\]" || { say "FAIL: expected exit 2 naming the [model] extra, got $rc"; exit 1; }

say "import time (best of 5; torch alone, then infovae_kernels)"
"$VPY" - <<'EOF'
import subprocess, sys, time
def best(code):
    runs = []
    for _ in range(5):
        t = time.perf_counter(); subprocess.run([sys.executable, "-c", code], check=True); runs.append(time.perf_counter() - t)
    return min(runs)
t_torch, t_ik = best("import torch"), best("import infovae_kernels")
print(f"  import torch {t_torch:.2f} s, import infovae_kernels {t_ik:.2f} s (+{t_ik - t_torch:.2f} s)")
EOF
say "OK"
