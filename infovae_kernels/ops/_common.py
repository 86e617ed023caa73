"""What every public op does before its primitives run: pick the backend, check the bandwidths, prepare
the points; and the bandwidth gradient every op derives the same way."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Callable, Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.bandwidth import median_distance


def primitives(backend: str, device: torch.device) -> ModuleType:
    """The primitives of the backend that runs on `device` (a name never falls back; see backends)."""
    return backends.primitives(backends.resolve(backend, device))


def bandwidths(sigma: _checks.Sigma, kernel: kernels.Kernel, x: Tensor, y: Optional[Tensor] = None,
               median: Callable[[], Tensor] | None = None) -> Optional[Tensor]:
    """sigma as a float64 (S,) tensor (keeping its autograd graph), or None for a kernel without a
    bandwidth; sigma="median" is the median pair distance of the pooled points (or `median()`)."""
    pooled = (lambda: torch.cat([x, y])) if y is not None else (lambda: x)
    return _checks.sigmas(sigma, x, median or (lambda: median_distance(pooled())), kernel)


def prepared(x: Tensor, y: Tensor, sigmas: Optional[Tensor], kernel: kernels.Kernel
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x', y', scale, params): the points prepared (kernels.prepare) and the kernel parameters for them
    (from the bandwidths' values: their gradient is the op's to compute, see bandwidth_grad)."""
    z, scale, params = prepared_pooled(x, y, sigmas, kernel)
    return z[: x.shape[0]], z[x.shape[0]:], scale, params


def prepared_pooled(x: Tensor, y: Tensor, sigmas: Optional[Tensor], kernel: kernels.Kernel
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """(z, scale, params) with z = [x'; y'] in one buffer (kernels.prepare_pooled)."""
    z, scale = kernels.prepare_pooled(x, y, kernel)
    params = kernels.kernel_params(kernel, None if sigmas is None else sigmas.detach(), x.shape[1], scale, x.dtype)
    if kernels.is_dot(kernel):
        _dot_range(z[: x.shape[0]], z[x.shape[0]:], params, x.dtype)
    return z, scale, params


def _dot_range(xs: Tensor, ys: Tensor, params: Tensor, dtype: torch.dtype) -> None:
    """A ValueError when the polynomial kernel's values or weights could overflow the compute dtype:
    |t| <= gamma max|x| max|y| + |coef|, k = t^n, h = n gamma t^(n-1)."""
    if _checks._tracing():
        return
    gamma, coef, degree = params.tolist()
    t = gamma * float(xs.norm(dim=1).max()) * float(ys.norm(dim=1).max()) + abs(coef)
    log_bound = max(degree * math.log(max(t, 1e-300)),
                    math.log(degree * gamma) + (degree - 1) * math.log(max(t, 1e-300)))
    ct = kernels.compute_dtype(dtype)
    if log_bound > math.log(torch.finfo(ct).max / 4):
        raise ValueError(f"kernel: polynomial values reach about 1e{log_bound / math.log(10):.0f}, beyond the range of "
                         f"{ct} (|gamma x.y + coef| up to {t:.3g}, degree {degree:g}); pass float64 points or a smaller gamma")


def bandwidth_grad(sigmas: Tensor, params: Tensor, computed, gradient_terms: Callable, moment: Callable) -> Tensor:
    """dL/dsigma (S,) by homogeneity. Restricted to scale s the kernel depends on the points only through
    p / sigma_s (rbf, imq, laplacian), so  sigma_s dL/dsigma_s = -sum_i p_i . dL^(s)/dp_i  over every point,
    where L^(s) is L with the kernel's scale-s part only (its coefficients dL/dK held at their full-kernel
    values). gradient_terms(params_s) gives the op's point-gradient terms for params_s = params[s:s+1], and
    moment(terms) the sum above from them (the points in the prepared units: the moment does not depend on
    them). With one scale the terms the op computed anyway (`computed`) serve; S > 1 costs one extra pass
    per scale."""
    terms = [computed] if params.shape[0] == 1 else [gradient_terms(params[s:s + 1]) for s in range(params.shape[0])]
    return -torch.stack([moment(t) for t in terms]).to(torch.float64) / sigmas.detach()


def needs_grad(*tensors: Optional[Tensor]) -> list[bool]:
    enabled = torch.is_grad_enabled()
    return [enabled and t is not None and t.requires_grad for t in tensors]


def no_double_backward(name: str) -> None:
    if torch.is_grad_enabled():
        raise NotImplementedError(f"second derivatives of {name} are not implemented "
                                  "(backward was called with create_graph=True)")
