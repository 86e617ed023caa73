"""What every public op does before its primitives run: pick the backend, prepare the points."""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import torch
from torch import Tensor

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.bandwidth import median_distance


def primitives(backend: str, device: torch.device) -> ModuleType:
    """The primitives of the backend that runs on `device` (a name never falls back; see backends)."""
    return backends.primitives(backends.resolve(backend, device))


def prepared(x: Tensor, y: Tensor, sigma: _checks.Sigma, kernel: str,
             median: Callable[[], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x', y', scale, params): the points centred and scaled (kernels.prepare) and the kernel
    parameters for them. sigma="median" is the median pair distance of the pooled points (or `median()`)."""
    sigmas = _checks.sigmas(sigma, x, median or (lambda: median_distance(torch.cat([x, y]))))
    xs, ys, scale = kernels.prepare(x, y)
    return xs, ys, scale, kernels.kernel_params(kernel, sigmas, x.shape[1], scale, x.dtype)


def needs_grad(*tensors: Tensor) -> list[bool]:
    enabled = torch.is_grad_enabled()
    return [enabled and t is not None and t.requires_grad for t in tensors]


def no_double_backward(name: str) -> None:
    if torch.is_grad_enabled():
        raise NotImplementedError(f"second derivatives of {name} are not implemented "
                                  "(backward was called with create_graph=True)")
