"""Builds the compiled parts of infovae_kernels (metadata: pyproject.toml):

  _C                 the registered ops (csrc/ops.cpp), the CPU variant dispatch (csrc/cpu_dispatch.cpp) and,
                     when torch is a CUDA build and nvcc exists, the CUDA kernels (csrc/cuda); compiled for
                     the architecture's baseline
  _cpu_<capability>  the CPU kernels (csrc/cpu) compiled once per capability: on x86-64 "baseline" (x86-64,
                     SSE2), "avx2" (x86-64-v3: AVX2, FMA) and "avx512" (x86-64-v4); elsewhere "baseline" only.
                     infovae_kernels/backends/native.py installs the best one this CPU supports at import.
  _build_info.py     the torch this was built against, the CPU variants and whether CUDA kernels are in

Environment:
  INFOVAE_WITH_CUDA=0|1   force the CUDA sources off or on (default: auto-detect)
  INFOVAE_NO_EXTENSION=1  build nothing compiled; the package then runs on the "torch" backend only
  INFOVAE_CPU_ARCH=...    developer builds: one CPU variant, "native", compiled with -march=<value> (e.g.
                          native) instead of the runtime-dispatched set; it runs only on CPUs like that one
  TORCH_CUDA_ARCH_LIST    CUDA architectures, torch's syntax ("8.0;9.0+PTX"); default: sm_80 and sm_90
                          machine code plus compute_90 PTX
Build with torch installed first (the extension is compiled against it): `pip install --no-build-isolation .`,
`pip install --no-build-isolation -e .` or `python -m build --no-isolation`.
"""

import glob
import os
import platform
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

# capability -> compiler flags of its CPU variant. The baseline is spelled out (not left to the compiler's
# default, which a distribution may have raised) and _C is built for it too.
X86_VARIANTS = {"baseline": ["-march=x86-64", "-mtune=generic"],
                "avx2": ["-march=x86-64-v3", "-mtune=generic"],
                "avx512": ["-march=x86-64-v4", "-mtune=generic"]}


def _cpu_variants():
    """[(capability, flags)] of the CPU variant modules this build makes."""
    arch = os.environ.get("INFOVAE_CPU_ARCH")
    if arch:
        return [("native", [f"-march={arch}"])]
    if platform.machine().lower() in ("x86_64", "amd64"):
        return list(X86_VARIANTS.items())
    return [("baseline", [])]  # aarch64: NEON is part of the baseline


def _cuda_wanted(torch_mod, cpp_extension):
    flag = os.environ.get("INFOVAE_WITH_CUDA", "auto").lower()
    has_toolkit = torch_mod.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None
    )
    if flag in ("1", "true", "yes", "on"):
        if not has_toolkit:
            sys.exit("INFOVAE_WITH_CUDA=1 but torch is not a CUDA build or nvcc/CUDA_HOME is missing")
        return True
    if flag in ("0", "false", "no", "off"):
        return False
    if not has_toolkit:
        print("infovae_kernels: building without CUDA kernels "
              f"(torch.version.cuda={torch_mod.version.cuda}, CUDA_HOME={cpp_extension.CUDA_HOME})")
    return has_toolkit


def _cxx_standard(torch_mod):
    """C++20 from torch 2.14 on (its headers need it), C++17 before (as CMakeLists.txt)."""
    major, minor = (int(part) for part in torch_mod.__version__.split(".")[:2])
    return 20 if (major, minor) >= (2, 14) else 17


def _cuda_arch_flags():
    """Machine code for sm_80 and sm_90 plus PTX for compute_90, which newer GPUs JIT-compile (instead
    of "no kernel image is available"). When TORCH_CUDA_ARCH_LIST is set (e.g. "8.0;9.0+PTX"), no flags:
    torch.utils.cpp_extension then builds exactly that list (it only does when no -gencode is given)."""
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return []
    return ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90"]


def _build_ext(base, variants, with_cuda):
    """torch's BuildExtension with an object directory per module, writing _build_info.py beside _C (in place
    or into the wheel)."""

    class BuildExt(base):
        def build_extension(self, ext):
            # each module its own object directory: the variants compile the same sources with other flags
            shared = self.build_temp
            self.build_temp = os.path.join(shared, ext.name.rsplit(".", 1)[-1])
            try:
                super().build_extension(ext)
            finally:
                self.build_temp = shared

        def run(self):
            super().run()
            import torch

            target = os.path.join(os.path.dirname(self.get_ext_fullpath("infovae_kernels._C")), "_build_info.py")
            text = ("# Written by setup.py when the compiled extension was built; read at import by\n"
                    "# infovae_kernels/backends/native.py.\n"
                    f"TORCH_VERSION = {torch.__version__!r}\n"
                    f"CUDA_KERNELS = {with_cuda!r}\n"
                    f"CPU_VARIANTS = {tuple(name for name, _ in variants)!r}\n"
                    f"CPU_ARCH = {os.environ.get('INFOVAE_CPU_ARCH') or None!r}\n")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target + ".tmp", "w") as f:
                f.write(text)
            os.replace(target + ".tmp", target)

    return BuildExt


def _extensions():
    if os.environ.get("INFOVAE_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    with_cuda = _cuda_wanted(torch, cpp_extension)
    variants = _cpu_variants()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    # -g0: Python's CFLAGS ask for debug information, which made the library 5x larger.
    cxx = ["-O3", f"-std=c++{_cxx_standard(torch)}", "-fopenmp", "-ffp-contract=fast", "-g0"]
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    kwargs = dict(include_dirs=include_dirs, extra_link_args=["-fopenmp"])

    sources = ["csrc/module.cpp", "csrc/ops.cpp", "csrc/cpu_dispatch.cpp"]
    base_cxx = cxx + (X86_VARIANTS["baseline"] if x86 else [])
    if with_cuda:
        # No --use_fast_math: it swaps exp for ex2.approx (error growing with |argument|), division for
        # an approximate one and flushes denormals, and its effect on the results has not been measured
        # on a GPU; the kernels use the CUDA math library's exp / IEEE division (CMakeLists.txt alike).
        nvcc = ["-O3", f"-std=c++{_cxx_standard(torch)}", "-lineinfo"] + _cuda_arch_flags()
        core = cpp_extension.CUDAExtension(
            "infovae_kernels._C", sources + sorted(glob.glob("csrc/cuda/*.cu")),
            define_macros=[("INFOVAE_WITH_CUDA", None)], extra_compile_args={"cxx": base_cxx, "nvcc": nvcc}, **kwargs)
    else:
        core = cpp_extension.CppExtension("infovae_kernels._C", sources, extra_compile_args={"cxx": base_cxx}, **kwargs)

    # Each variant in its own module: its inline functions (torch's and the standard library's included)
    # are its own copies, hidden, so code built for one capability is never called from another.
    hidden = ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
    cpu = [cpp_extension.CppExtension(f"infovae_kernels._cpu_{name}", sorted(glob.glob("csrc/cpu/*.cpp")),
                                      define_macros=[("INFOVAE_CPU_CAPABILITY", name)],
                                      extra_compile_args={"cxx": cxx + flags + hidden}, **kwargs)
           for name, flags in variants]
    build_ext = _build_ext(cpp_extension.BuildExtension.with_options(use_ninja=True), variants, with_cuda)
    return [core] + cpu, {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()

setup(ext_modules=ext_modules, cmdclass=cmdclass)
