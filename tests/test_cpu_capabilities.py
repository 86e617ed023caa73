"""The CPU kernels compiled once per capability (setup.py: _cpu_baseline, _cpu_avx2, _cpu_avx512) and
chosen at import (backends/native.py): the core op checks under every capability this CPU runs, the
choice and its errors, INFOVAE_CPU_CAPABILITY in a fresh process, the disassembly (no AVX outside the
AVX variants), and an extension built against another torch."""

import importlib.util
import platform
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import infovae_kernels as ik
from infovae_kernels import selftest
from infovae_kernels.backends import native

pytestmark = pytest.mark.skipif(native.IMPORT_ERROR is not None, reason=str(native.IMPORT_ERROR))
X86 = platform.machine().lower() in ("x86_64", "amd64")


def run_python(code, **env):
    import os

    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=full_env, timeout=300)


def test_core_op_checks_pass_under_every_capability(cpu_capability):
    assert ik.backends.cpu_capability() == cpu_capability
    checks = selftest.run("cpu", "cpu")
    assert len(checks) > 200
    assert all(c.ok for c in checks), selftest.report(checks)


def test_auto_picks_the_best_capability_this_cpu_runs():
    if native.CPU_VARIANTS == ("native",):
        assert native.choose_capability("auto") == "native"
        return
    runs = [c for c in native.CAPABILITIES if c in native.CPU_SUPPORTED]
    assert native.choose_capability("auto") == runs[-1]
    assert native.CPU_SUPPORTED[0] == "baseline"


def test_choice_errors_name_the_variable(monkeypatch):
    if native.CPU_VARIANTS == ("native",):
        pytest.skip("a native (INFOVAE_CPU_ARCH) build has no capabilities to choose")
    with pytest.raises(ValueError, match="INFOVAE_CPU_CAPABILITY must be one of auto, baseline, avx2, avx512; got 'sse9'"):
        native.choose_capability("sse9")
    with pytest.raises(TypeError, match="INFOVAE_CPU_CAPABILITY must be a string"):
        native.choose_capability(2)
    # a CPU without AVX2: the AVX variants are refused, "auto" gives the baseline
    monkeypatch.setattr(native, "CPU_SUPPORTED", ("baseline",))
    with pytest.raises(ValueError, match="INFOVAE_CPU_CAPABILITY='avx2', but this CPU runs only baseline"):
        native.choose_capability("avx2")
    assert native.choose_capability("auto") == "baseline"
    assert native.choose_capability(" Baseline ") == "baseline"
    # a build without the avx512 variant
    monkeypatch.setattr(native, "CPU_SUPPORTED", ("baseline", "avx2", "avx512"))
    monkeypatch.setattr(native, "CPU_VARIANTS", ("baseline", "avx2"))
    with pytest.raises(ValueError, match="this build has only the baseline, avx2 variants"):
        native.choose_capability("avx512")
    assert native.choose_capability("auto") == "avx2"
    # a developer build with INFOVAE_CPU_ARCH=native
    monkeypatch.setattr(native, "CPU_VARIANTS", ("native",))
    assert native.choose_capability("auto") == "native"
    with pytest.raises(ValueError, match="this build has one CPU variant"):
        native.choose_capability("avx2")


@pytest.mark.parametrize("capability", ["baseline", "avx2"])
def test_the_environment_variable_forces_a_capability_in_a_fresh_process(capability):
    if capability not in native.CPU_SUPPORTED or capability not in native.CPU_VARIANTS:
        pytest.skip(f"this CPU or build has no {capability} variant")
    out = run_python("""
        import torch, infovae_kernels as ik
        x, y = torch.randn(50, 3), torch.randn(40, 3)
        print(ik.backends.cpu_capability(), ik.backends.available()["cpu"].reason)
        print(float(ik.mmd(x, y, backend="cpu")) == float(ik.mmd(x, y)))
    """, INFOVAE_CPU_CAPABILITY=capability)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.startswith(f"{capability} C++ CPU kernels, {capability} variant")
    assert second == "True"


def test_a_capability_the_cpu_lacks_is_an_error_not_a_fallback():
    bad = "avx512" if "avx512" not in native.CPU_SUPPORTED else "sse9"
    out = run_python("""
        import torch, infovae_kernels as ik
        print(ik.backends.available()["cpu"])
        for backend in ("auto", "cpu"):
            try:
                ik.mmd(torch.randn(5, 2), torch.randn(5, 2), backend=backend)
                print(backend, "ran")
            except ValueError as exc:
                print(backend, "ValueError:", exc)
        print(float(ik.mmd(torch.randn(5, 2), torch.randn(5, 2), backend="torch")) >= 0)
    """, INFOVAE_CPU_CAPABILITY=bad)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "available=False" in lines[0] and "INFOVAE_CPU_CAPABILITY" in lines[0]
    assert lines[1].startswith("auto ValueError: INFOVAE_CPU_CAPABILITY")
    assert lines[2].startswith("cpu ValueError: backend 'cpu' is not available: INFOVAE_CPU_CAPABILITY")
    assert lines[3] == "True"
    info = subprocess.run([sys.executable, "-m", "infovae_kernels", "info"], capture_output=True, text=True,
                          env=dict(__import__("os").environ, INFOVAE_CPU_CAPABILITY=bad), timeout=300)
    assert info.returncode == 0 and "INFOVAE_CPU_CAPABILITY" in info.stdout, info.stdout + info.stderr


def test_an_extension_built_against_another_torch_is_not_loaded():
    out = run_python("""
        import sys, types, warnings
        fake = types.ModuleType("infovae_kernels._build_info")
        fake.TORCH_VERSION, fake.CUDA_KERNELS, fake.CPU_VARIANTS, fake.CPU_ARCH = "1.0.0", False, ("baseline",), None
        sys.modules["infovae_kernels._build_info"] = fake
        import torch, infovae_kernels as ik
        x, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(30, 3, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(ik.backends.available()["cpu"].reason)
            auto = ik.mmd(x, y)
        print([str(w.message)[:60] for w in caught if issubclass(w.category, RuntimeWarning)])
        print(float(auto) == float(ik.mmd(x, y, backend="torch")))
        try:
            ik.mmd(x, y, backend="cpu")
        except ValueError as exc:
            print("ValueError", exc)
        print("infovae_kernels._C" in sys.modules, ik.backends.cpu_capability())
    """)
    assert out.returncode == 0, out.stderr
    reason, warned, same, error, loaded = out.stdout.splitlines()
    assert reason.startswith(f"infovae_kernels was compiled against torch 1.0.0 but torch {torch.__version__} is running")
    assert "pip install --no-build-isolation" in reason
    assert warned.startswith("['infovae_kernels was compiled against torch 1.0.0")
    assert same == "True"
    assert error.startswith("ValueError backend 'cpu' is not available: infovae_kernels was compiled against")
    assert loaded == "False None"  # _C was never loaded: no undefined-symbol traceback possible


def test_install_cpu_variant_refuses_anything_but_a_variant():
    with pytest.raises(ValueError, match="PyCapsule_GetPointer called with invalid PyCapsule object|capsule"):
        native._C.install_cpu_variant(object())
    assert native._C.cpu_variant() == native.CPU_CAPABILITY


# ---- the binaries -----------------------------------------------------------------------------------
def _library(module):
    spec = importlib.util.find_spec(f"infovae_kernels.{module}")
    assert spec is not None and spec.origin, module
    return spec.origin


def _disassembly(path):
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], capture_output=True, text=True,
                          check=True).stdout


VEX = re.compile(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\b", re.M)  # every AVX / AVX-512 instruction is VEX/EVEX: v...
AVX512_REGISTERS = re.compile(r"%zmm|%k[0-7]\b|%[xy]mm(1[6-9]|2[0-9]|3[01])\b")


@pytest.mark.skipif(not X86 or shutil.which("objdump") is None, reason="x86-64 disassembly with objdump")
def test_no_code_outside_the_avx_variants_uses_avx():
    variants = set(native.CPU_VARIANTS)
    if variants == {"native"}:
        pytest.skip("a native (INFOVAE_CPU_ARCH) build is meant for its build machine only")
    for module in ("_C", "_cpu_baseline"):
        text = _disassembly(_library(module))
        hits = VEX.findall(text) + re.findall(r"%[yz]mm", text)
        assert not hits, f"{module} uses AVX: {hits[:5]}"
    if "avx2" in variants:
        text = _disassembly(_library("_cpu_avx2"))
        assert VEX.search(text), "the avx2 variant should use AVX"
        hits = AVX512_REGISTERS.findall(text)
        assert not hits, f"_cpu_avx2 uses AVX-512 registers: {hits[:5]}"
    if "avx512" in variants:
        assert re.search(r"%zmm", _disassembly(_library("_cpu_avx512")))


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_each_variant_names_its_code_after_its_capability():
    for name in native.CPU_VARIANTS:
        symbols = subprocess.run(["nm", "-C", "--defined-only", _library(f"_cpu_{name}")], capture_output=True,
                                 text=True, check=True).stdout
        ours = [line for line in symbols.splitlines() if "infovae::cpu::" in line]
        assert len(ours) > 100, name
        stray = [line for line in ours if f"infovae::cpu::{name}::" not in line]
        assert not stray, stray[:5]
        exported = subprocess.run(["nm", "-D", "--defined-only", _library(f"_cpu_{name}")], capture_output=True,
                                  text=True, check=True).stdout
        assert not re.search(r"\b_ZN7infovae", exported), f"_cpu_{name} exports engine symbols"
