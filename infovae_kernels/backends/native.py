"""The compiled backends: torch.ops.infovae.* from infovae_kernels._C ("cpu" and, when built, "cuda").

The dispatcher picks the CPU or CUDA implementation by the device of the inputs; this module adds the
fake (meta) implementations so the ops trace under torch.compile, and installs the CPU kernels:
csrc/cpu is compiled once per capability into its own module (`_cpu_baseline`, `_cpu_avx2`,
`_cpu_avx512`, or one `_cpu_native` developer build), and the best one this CPU runs (cpuid, read by
_C) is installed here, unless INFOVAE_CPU_CAPABILITY names a lower one.

The extension records the torch it was compiled against (_build_info.py, written by setup.py). Under
another torch it is not loaded at all (its symbols would not resolve): the "cpu" and "cuda" backends are
then unavailable with the reason and how to rebuild, "auto" warns once and uses the "torch" backend.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

CAPABILITIES = ("baseline", "avx2", "avx512")  # lowest first; a build with INFOVAE_CPU_ARCH has "native"
ENV = "INFOVAE_CPU_CAPABILITY"
REBUILD = ("rebuild it against this torch: `pip install --no-build-isolation --no-deps --force-reinstall .` in "
           "its source directory (or on its sdist), or `make build` in a checkout")


def _release(version: str) -> str:
    return version.split("+")[0]


def _load_extension():
    """(error or None, _C, _build_info): the extension, loaded only when it matches this torch."""
    try:
        from infovae_kernels import _build_info
    except ImportError:
        try:
            from infovae_kernels import _C  # noqa: F401
        except ImportError:
            return ("the compiled extension is not built (no compiler at install time, or INFOVAE_NO_EXTENSION=1); "
                    "build it: `pip install --no-build-isolation .`"), None, None
        return "the compiled extension is out of date (it has no _build_info.py); " + REBUILD, None, None
    built, running = _build_info.TORCH_VERSION, torch.__version__
    if _release(built) != _release(running):
        return (f"infovae_kernels was compiled against torch {built} but torch {running} is running, so its "
                f"compiled kernels are not loaded; {REBUILD}"), None, _build_info
    if _build_info.CUDA_KERNELS and torch.version.cuda is None:
        return (f"infovae_kernels was compiled with CUDA kernels against torch {built}, but this torch is a CPU "
                f"build; {REBUILD}"), None, _build_info
    try:
        from infovae_kernels import _C
    except ImportError as exc:
        return f"the compiled extension infovae_kernels._C is not importable ({exc}); {REBUILD}", None, _build_info
    if not all(hasattr(torch.ops.infovae, op) for op in ("gram", "pair_reduce", "quad_form", "stein_form", "stein_moments", "stein_thin")):
        return "the compiled extension infovae_kernels._C is out of date (it lacks infovae::gram); " + REBUILD, None, None
    return None, _C, _build_info


IMPORT_ERROR, _C, _BUILD = _load_extension()
TORCH_MISMATCH = IMPORT_ERROR is not None and _BUILD is not None and _C is None
WITH_CUDA = bool(_C.with_cuda) if _C is not None else False
CPU_VARIANTS: tuple[str, ...] = tuple(_BUILD.CPU_VARIANTS) if _C is not None else ()
CPU_SUPPORTED: tuple[str, ...] = tuple(_C.cpu_capabilities()) if _C is not None else ()
if TORCH_MISMATCH:
    warnings.warn(IMPORT_ERROR + "; backend 'auto' uses the 'torch' backend instead", RuntimeWarning, stacklevel=2)


def choose_capability(requested: str) -> str:
    """The CPU variant to install for `requested` ("auto" or a capability name); ValueError when this build
    or this CPU cannot run it."""
    if not isinstance(requested, str):
        raise TypeError(f"{ENV} must be a string, got {type(requested).__name__}")
    requested = requested.strip().lower() or "auto"
    if CPU_VARIANTS == ("native",):
        if requested not in ("auto", "native"):
            raise ValueError(f"{ENV}={requested!r}, but this build has one CPU variant, compiled with "
                             f"-march={_BUILD.CPU_ARCH} (INFOVAE_CPU_ARCH): unset {ENV}, or rebuild without "
                             "INFOVAE_CPU_ARCH for the runtime-dispatched variants")
        return "native"
    if requested == "auto":
        runs = [c for c in CAPABILITIES if c in CPU_VARIANTS and c in CPU_SUPPORTED]
        return runs[-1]
    if requested not in CAPABILITIES:
        raise ValueError(f"{ENV} must be one of auto, {', '.join(CAPABILITIES)}; got {requested!r}")
    if requested not in CPU_SUPPORTED:
        raise ValueError(f"{ENV}={requested!r}, but this CPU runs only {', '.join(CPU_SUPPORTED)}: unset {ENV} "
                         "or choose one of those")
    if requested not in CPU_VARIANTS:
        raise ValueError(f"{ENV}={requested!r}, but this build has only the {', '.join(CPU_VARIANTS)} variants")
    return requested


def set_cpu_capability(name: str) -> str:
    """Install the CPU variant `name` ("auto" for the best) for every later CPU op; returns the previous
    one. For tests and benchmarks, which compare the variants in one process; users set INFOVAE_CPU_CAPABILITY."""
    if _C is None:
        raise ValueError(f"backend 'cpu' is not available: {IMPORT_ERROR}")
    global CPU_CAPABILITY
    name = choose_capability(name)
    module = importlib.import_module(f"infovae_kernels._cpu_{name}")
    _C.install_cpu_variant(module.variant)
    previous, CPU_CAPABILITY = CPU_CAPABILITY, name
    return previous


CPU_CAPABILITY: str | None = None
CONFIG_ERROR: str | None = None  # an INFOVAE_CPU_CAPABILITY this build or CPU cannot honour
if _C is not None:
    try:
        set_cpu_capability(os.environ.get(ENV, "auto"))
    except ValueError as exc:
        CONFIG_ERROR = str(exc)


def cpu_status() -> tuple[bool, str]:
    if IMPORT_ERROR:
        return False, IMPORT_ERROR
    if CONFIG_ERROR:
        return False, CONFIG_ERROR
    return True, (f"C++ CPU kernels, {CPU_CAPABILITY} variant (this CPU runs {', '.join(CPU_SUPPORTED)}; "
                  f"built: {', '.join(CPU_VARIANTS)})")


def cuda_status() -> tuple[bool, str]:
    if IMPORT_ERROR:
        return False, IMPORT_ERROR
    if not WITH_CUDA:
        return False, ("the extension was built without CUDA kernels (needs a CUDA build of torch and "
                       "nvcc at build time; INFOVAE_WITH_CUDA=1 forces it)")
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, "CUDA C++ kernels"


if IMPORT_ERROR is None:
    from infovae_kernels.backends import batching, fake

    fake.register_fakes("infovae")

    gram = torch.ops.infovae.gram
    pair_reduce = torch.ops.infovae.pair_reduce
    quad_form = torch.ops.infovae.quad_form
    batching.register_vmaps("infovae", {"gram": gram, "pair_reduce": pair_reduce, "quad_form": quad_form})
    stein_form = torch.ops.infovae.stein_form  # CPU and CUDA (csrc/cpu/stein.cpp, csrc/cuda/pair_kernels.cuh)
    stein_moments = torch.ops.infovae.stein_moments
    stein_thin = torch.ops.infovae.stein_thin
