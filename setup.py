"""Builds infovae_kernels._C: the C++ CPU kernels always, the CUDA kernels when torch is a CUDA build
and nvcc exists.

Environment:
  INFOVAE_WITH_CUDA=0|1   force the CUDA sources off or on (default: auto-detect)
  INFOVAE_NO_EXTENSION=1  build nothing compiled; the package then runs on the "torch" backend only
  INFOVAE_CPU_ARCH=...    -march for the CPU kernels (default "native": the package is built where it runs)
  TORCH_CUDA_ARCH_LIST    CUDA architectures, torch's syntax ("8.0;9.0+PTX"); default: sm_80 and sm_90
                          machine code plus compute_90 PTX
Build with `pip install --no-build-isolation -e .` after torch is installed.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


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


def _extensions():
    if os.environ.get("INFOVAE_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension

    with_cuda = _cuda_wanted(torch, cpp_extension)
    arch = os.environ.get("INFOVAE_CPU_ARCH", "native")
    std = f"-std=c++{_cxx_standard(torch)}"
    cxx = ["-O3", std, "-fopenmp", f"-march={arch}", "-ffp-contract=fast"]
    sources = ["csrc/module.cpp", "csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include")]
    kwargs = dict(include_dirs=include_dirs, extra_link_args=["-fopenmp"])
    if with_cuda:
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        # No --use_fast_math: it swaps exp for ex2.approx (error growing with |argument|), division for
        # an approximate one and flushes denormals, and its effect on the results has not been measured
        # on a GPU; the kernels use the CUDA math library's exp / IEEE division (CMakeLists.txt alike).
        nvcc = ["-O3", std, "-lineinfo"] + _cuda_arch_flags()
        ext = cpp_extension.CUDAExtension(
            "infovae_kernels._C", sources, define_macros=[("INFOVAE_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    else:
        ext = cpp_extension.CppExtension("infovae_kernels._C", sources,
                                         extra_compile_args={"cxx": cxx}, **kwargs)
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="infovae-kernels",
    version="0.1.0",
    description="Fused kernel two-sample ops (RBF/IMQ Gram, MMD, Stein directions) and the InfoVAE family",
    packages=find_packages(include=["infovae_kernels", "infovae_kernels.*"])
    + find_packages("python", include=["infovae", "infovae.*"]),
    package_dir={"infovae": "python/infovae"},
    python_requires=">=3.10",
    install_requires=["torch>=2.4,<=2.14.1", "numpy", "tqdm"],
    extras_require={
        "triton": ["triton"],
        "models": ["matplotlib", "scikit-learn", "mlxtend"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "scipy"],
    },
    entry_points={"console_scripts": [
        "infovae-kernels=infovae_kernels.cli:main",
        "infovae=infovae.cli:main",
    ]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
