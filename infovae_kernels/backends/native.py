"""The compiled backends: torch.ops.infovae.* from infovae_kernels._C ("cpu" and, when built, "cuda").

The dispatcher picks the CPU or CUDA implementation by the device of the inputs; this module adds the
fake (meta) implementations so the ops trace under torch.compile.
"""

from __future__ import annotations

import torch

try:
    from infovae_kernels import _C  # noqa: F401  (loading registers torch.ops.infovae)

    IMPORT_ERROR = None
    WITH_CUDA = bool(_C.with_cuda)
except ImportError as exc:  # no compiler at install time, or a broken build
    IMPORT_ERROR = f"the compiled extension infovae_kernels._C is not importable ({exc})"
    WITH_CUDA = False
if IMPORT_ERROR is None and not all(hasattr(torch.ops.infovae, op) for op in ("gram", "pair_reduce", "quad_form")):
    IMPORT_ERROR = "the compiled extension infovae_kernels._C is out of date (it lacks infovae::gram)"
    WITH_CUDA = False


def cpu_status() -> tuple[bool, str]:
    if IMPORT_ERROR:
        return False, IMPORT_ERROR + "; rebuild with `pip install --no-build-isolation -e .`"
    return True, "C++ CPU kernels"


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
    from infovae_kernels.backends import fake

    fake.register_fakes("infovae")

    gram = torch.ops.infovae.gram
    pair_reduce = torch.ops.infovae.pair_reduce
    quad_form = torch.ops.infovae.quad_form
