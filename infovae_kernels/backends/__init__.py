"""Backend registry: which backends this install has, and picking one for a device.

| name   | runs on                                                  |
| ------ | -------------------------------------------------------- |
| triton | CUDA tensors (CPU tensors only under TRITON_INTERPRET=1) |
| cuda   | CUDA tensors (CUDA C++ kernels)                          |
| cpu    | CPU tensors (C++ kernels)                                |
| torch  | anything (the plain-torch reference)                     |

"auto" picks triton, cuda, torch on CUDA tensors and cpu, torch on CPU tensors. A backend asked for
by name runs or raises a ValueError that says why; it never falls back silently.
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


def _status(name: str) -> Status:
    if name == "torch":
        return Status(True, "plain-torch reference")
    if name in ("cpu", "cuda"):
        from infovae_kernels.backends import native

        return Status(*(native.cpu_status() if name == "cpu" else native.cuda_status()))
    try:
        triton_backend = importlib.import_module("infovae_kernels.backends.triton")
    except Exception as exc:  # a broken triton install raises more than ImportError
        return Status(False, f"triton is not importable ({type(exc).__name__}: {exc})")
    return Status(*triton_backend.status())


def available() -> dict[str, Status]:
    """Every backend name mapped to Status(available, reason): what runs here, and why the others don't."""
    return {name: _status(name) for name in NAMES}


def _module(name: str) -> ModuleType:
    if name == "torch":
        return importlib.import_module("infovae_kernels.backends.reference")
    if name in ("cpu", "cuda"):
        return importlib.import_module("infovae_kernels.backends.native")
    return importlib.import_module("infovae_kernels.backends.triton")


def _device_reason(name: str, device: torch.device) -> str | None:
    """Why backend `name` cannot run on `device`, or None."""
    if name == "torch":
        return None
    if name == "cpu" and device.type != "cpu":
        return f"backend 'cpu' runs on CPU tensors, got a {device.type} tensor"
    if name == "cuda" and device.type != "cuda":
        return f"backend 'cuda' runs on CUDA tensors, got a {device.type} tensor"
    if name == "triton" and device.type != "cuda" and not (device.type == "cpu" and _triton_interpret()):
        return (f"backend 'triton' runs on CUDA tensors (CPU tensors only under TRITON_INTERPRET=1), "
                f"got a {device.type} tensor")
    return None


def resolve(backend: str, device: torch.device) -> tuple[str, ModuleType]:
    """(name, module) of the backend that computes on `device`; the module has the three primitives."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        for name in AUTO_ORDER.get(device.type, ("torch",)):
            if _status(name).available and _device_reason(name, device) is None:
                return name, _module(name)
        return "torch", _module("torch")
    if backend not in NAMES:
        raise ValueError(f"backend must be 'auto' or one of {NAMES}, got {backend!r}")
    status = _status(backend)
    if not status.available:
        raise ValueError(f"backend {backend!r} is not available: {status.reason}")
    reason = _device_reason(backend, device)
    if reason:
        raise ValueError(reason)
    return backend, _module(backend)
