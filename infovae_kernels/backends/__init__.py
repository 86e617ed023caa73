"""Backend registry: which backends this install has, and which one computes on a device.

| name   | runs on                                                  | primitives from            |
| ------ | -------------------------------------------------------- | -------------------------- |
| triton | CUDA tensors (CPU tensors only under TRITON_INTERPRET=1) | backends/triton (Triton)   |
| cuda   | CUDA tensors                                             | infovae_kernels._C (CUDA)  |
| cpu    | CPU tensors                                              | infovae_kernels._C (C++)   |
| torch  | anything                                                 | backends/reference.py      |

"auto" picks triton, cuda, torch on CUDA tensors and cpu, torch on CPU tensors. A backend asked for by
name runs or raises a ValueError that says why; it never falls back silently. "auto" does not fall back
either when the cpu backend is missing only because INFOVAE_CPU_CAPABILITY asks for what this build or
CPU cannot run; it warns once when the extension was compiled against another torch.

The cpu backend's kernels are compiled once per CPU capability; `cpu_capability()` names the one in use.

Every backend module offers the three primitives `gram`, `pair_reduce`, `quad_form` with the contract
of backends/reference.py. `resolve` runs once per (backend, device) and is a constant under
torch.compile, so the public ops trace straight to the primitives.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NamedTuple

import torch

NAMES = ("triton", "cuda", "cpu", "torch")
AUTO_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpu", "torch")}


class Status(NamedTuple):
    available: bool
    reason: str


def _triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_LOADED: dict[str, tuple[Status, ModuleType | None]] = {}


def _load(name: str) -> tuple[Status, ModuleType | None]:
    """(status, module with the primitives) of one backend; imported on first use, then cached."""
    if name not in _LOADED:
        _LOADED[name] = _import(name)
    return _LOADED[name]


def _import(name: str) -> tuple[Status, ModuleType | None]:
    if name == "torch":
        from infovae_kernels.backends import reference

        return Status(True, "plain-torch reference (materialises the N x M matrix)"), reference
    if name in ("cpu", "cuda"):
        from infovae_kernels.backends import native

        ok, reason = native.cpu_status() if name == "cpu" else native.cuda_status()
        return Status(ok, reason), native if ok else None
    try:
        triton_backend = importlib.import_module("infovae_kernels.backends.triton")
    except Exception as exc:  # a broken triton install raises more than ImportError
        return Status(False, f"triton is not importable ({type(exc).__name__}: {exc})"), None
    ok, reason = triton_backend.status()
    return Status(ok, reason), triton_backend if ok else None


def available() -> dict[str, Status]:
    """Every backend name mapped to Status(available, reason): what runs here, and why the others don't."""
    return {name: _load(name)[0] for name in NAMES}


def cpu_capability() -> str | None:
    """The CPU kernels the cpu backend runs: "avx512", "avx2", "baseline" (chosen at import: the best this
    CPU supports, or INFOVAE_CPU_CAPABILITY), "native" for a build with INFOVAE_CPU_ARCH; None without them."""
    if not _load("cpu")[0].available:
        return None
    from infovae_kernels.backends import native

    return native.CPU_CAPABILITY


def device_reason(name: str, device: torch.device | str) -> str | None:
    """Why backend `name` cannot run on tensors of `device` (None when it can, if installed)."""
    device = torch.device(device)
    if name == "cpu" and device.type != "cpu":
        return f"backend 'cpu' runs on CPU tensors, got a {device.type} tensor"
    if name == "cuda" and device.type != "cuda":
        return f"backend 'cuda' runs on CUDA tensors, got a {device.type} tensor"
    if name == "triton" and device.type != "cuda" and not (device.type == "cpu" and _triton_interpret()):
        return (f"backend 'triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
                f"got a {device.type} tensor")
    return None


def runnable(device: torch.device | str) -> list[str]:
    """Names of the backends that are installed and run on tensors of `device`, in "auto" order first."""
    device = torch.device(device)
    order = AUTO_ORDER.get(device.type, ()) + tuple(n for n in NAMES if n not in AUTO_ORDER.get(device.type, ()))
    return [n for n in order if _load(n)[0].available and device_reason(n, device) is None]


def _constant_under_compile(fn):
    """torch.compiler.assume_constant_result(fn) without importing torch._dynamo, which took about 1 s of
    `import infovae_kernels`: that decorator only sets this attribute (tests/test_registration.py checks
    that it still does), and torch.compile reads it when it traces a call."""
    fn._dynamo_marked_constant = True
    return fn


@_constant_under_compile
def resolve(backend: str, device: torch.device) -> str:
    """The name of the backend that computes on `device`: `backend` itself, or the first of AUTO_ORDER."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        names = runnable(device)
        if device.type == "cpu" and "cpu" not in names:
            _raise_if_misconfigured()
        return names[0] if names else "torch"
    if backend not in NAMES:
        raise ValueError(f"backend must be 'auto' or one of {NAMES}, got {backend!r}")
    status = _load(backend)[0]
    if not status.available:
        raise ValueError(f"backend {backend!r} is not available: {status.reason}")
    reason = device_reason(backend, device)
    if reason:
        raise ValueError(reason)
    return backend


def _raise_if_misconfigured() -> None:
    """An INFOVAE_CPU_CAPABILITY the cpu backend cannot honour is an error, not a fallback."""
    try:
        from infovae_kernels.backends import native
    except ImportError:
        return
    if native.CONFIG_ERROR:
        raise ValueError(native.CONFIG_ERROR)


def primitives(name: str) -> ModuleType:
    """The module holding backend `name`'s gram, pair_reduce and quad_form (after `resolve`)."""
    module = _load(name)[1]
    if module is None:
        raise ValueError(f"backend {name!r} is not available: {_load(name)[0].reason}")
    return module
