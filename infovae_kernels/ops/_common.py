"""What every public op does before its primitives run: pick the backend, check the bandwidths, prepare
the points; and the bandwidth gradient every op derives the same way."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Callable, Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.backends import batching
from infovae_kernels.bandwidth import median_distance


def primitives(backend: str, device: torch.device) -> ModuleType:
    """The primitives of the backend that runs on `device` (a name never falls back; see backends)."""
    return backends.primitives(backends.resolve(backend, device))


def bandwidths(sigma: _checks.Sigma, kernel: kernels.Kernel, x: Tensor, y: Optional[Tensor] = None,
               median: Callable[[Tensor], Tensor] = median_distance, masks: tuple = (None, None)
               ) -> Optional[Tensor]:
    """sigma as a float64 (S,) tensor (keeping its autograd graph), or None for a kernel without a
    bandwidth; sigma="median" is `median` (the median pair distance) of the pooled points. A batch
    x (B, N, d) gives (S,) shared or (B, S) per problem (_checks.sigmas); its median is each problem's,
    of its real rows (`masks`: (B, N) and (B, M) bools or None)."""
    parts = (x,) if y is None else (x, y)
    pooled = (lambda: torch.cat(parts, -2)) if y is not None else (lambda: x)
    if x.dim() == 2:
        return _checks.sigmas(sigma, x, lambda: median(pooled()), kernel)

    def per_problem() -> Tensor:  # one batched call; a padded batch: one call per problem on its real rows
        if all(m is None for m in masks):
            return median(pooled())
        rows = [[p[b] if m is None else p[b][m[b]] for p, m in zip(parts, masks)] for b in range(x.shape[0])]
        return torch.stack([median(torch.cat(r)) for r in rows])
    return _checks.sigmas(sigma, x, per_problem, kernel, batch=x.shape[0])


def prepared(x: Tensor, y: Tensor, sigmas: Optional[Tensor], kernel: kernels.Kernel, mask: Optional[Tensor] = None
             ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x', y', scale, params): the points prepared (kernels.prepare) and the kernel parameters for them
    (from the bandwidths' values: their gradient is the op's to compute, see bandwidth_grad)."""
    z, scale, params = prepared_pooled(x, y, sigmas, kernel, mask)
    n = x.shape[-2]
    return z[..., :n, :], z[..., n:, :], scale, params


def prepared_pooled(x: Tensor, y: Tensor, sigmas: Optional[Tensor], kernel: kernels.Kernel,
                    mask: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
    """(z, scale, params) with z = [x'; y'] in one buffer (kernels.prepare_pooled); a batch (B, N, d) gives
    scale (B,) and params (B, S'), `mask` (B, N + M) its real rows."""
    z, scale = kernels.prepare_pooled(x, y, kernel, mask)
    params = kernels.kernel_params(kernel, None if sigmas is None else sigmas.detach(), x.shape[-1], scale, x.dtype)
    if kernels.is_dot(kernel):
        n = x.shape[-2]
        _dot_range(z[..., :n, :], z[..., n:, :], params, x.dtype)
    return z, scale, params


def _dot_range(xs: Tensor, ys: Tensor, params: Tensor, dtype: torch.dtype) -> None:
    """A ValueError when the polynomial kernel's values or weights could overflow the compute dtype:
    |t| <= gamma max|x| max|y| + |coef|, k = t^n, h = n gamma t^(n-1) (the largest over a batch)."""
    if _checks._tracing(xs):
        return
    gamma, coef, degree = params.unbind(-1)
    t = gamma * xs.norm(dim=-1).amax(-1) * ys.norm(dim=-1).amax(-1) + coef.abs()
    log_t = t.clamp_min(1e-300).log()
    bounds = torch.maximum(degree * log_t, (degree * gamma).log() + (degree - 1) * log_t)
    worst = bounds.reshape(-1).argmax()  # the problem whose k or h grows largest
    log_bound, t, degree = (float(v.reshape(-1)[worst]) for v in (bounds, t, degree))
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
    scales = params.shape[-1]
    terms = [computed] if scales == 1 else [gradient_terms(params[..., s:s + 1]) for s in range(scales)]
    return -torch.stack([moment(t) for t in terms], -1).to(torch.float64) / sigmas.detach()


def padded(x_mask: Optional[Tensor], y_mask: Optional[Tensor], x: Tensor, y: Tensor) -> Optional[Tensor]:
    """The real rows of the pooled points [x; y] of a padded batch (B, N + M), None when all are real."""
    if x_mask is None and y_mask is None:
        return None
    return torch.cat([x_mask if x_mask is not None else x.new_ones(x.shape[:-1], dtype=torch.bool),
                      y_mask if y_mask is not None else y.new_ones(y.shape[:-1], dtype=torch.bool)], -1)


def vmap_batched(apply: Callable, info, in_dims: tuple, args: tuple, n_tensors: int, shared: int):
    """The vmap rule of an op's autograd Function that takes a batch as it is (its points (..., N, d)
    first; argument `shared`, a bandwidth, (S,) for all problems or (B, S)): one `apply` of the Function
    on the batch (apply, not forward, so that autograd outside the vmap records it), the arguments
    brought to it by backends.batching.to_front. Outputs that are empty (gradients not asked for) are
    not batched."""
    tensors, restore = batching.to_front(info, in_dims[:n_tensors], args[:n_tensors], shared)
    out = apply(*tensors, *args[n_tensors:])
    return tuple(o if o.numel() == 0 else restore(o) for o in out), tuple(None if o.numel() == 0 else 0 for o in out)


def sum_to_input(grad_output: Tensor, per_problem: Tensor, shape: torch.Size) -> Tensor:
    """grad_output (B,) or () times a per-problem gradient (B, ...) or (...), summed over the problems
    for an input of `shape` that all of them share (a bandwidth (S,) for a batch)."""
    g = grad_output.reshape(grad_output.shape + (1,) * (per_problem.dim() - grad_output.dim()))
    return (g.to(per_problem.dtype) * per_problem).sum_to_size(shape)


def needs_grad(*tensors: Optional[Tensor]) -> list[bool]:
    enabled = torch.is_grad_enabled()
    return [enabled and t is not None and t.requires_grad for t in tensors]


def no_double_backward(name: str, grad_output: Tensor) -> None:
    """Backward of a fused op is not differentiable: NotImplementedError when asked to be (create_graph
    or an outer torch.func.grad level: the incoming gradient then tracks one)."""
    if _grad_levels(grad_output) > 1 or torch.is_grad_enabled() and not kernels.is_transformed(grad_output):
        raise NotImplementedError(f"second derivatives of {name} are not implemented "
                                  "(backward was called with create_graph=True)")


def _grad_levels(t: Tensor) -> int:
    """How many torch.func.grad (or vjp, jacrev) levels wrap t: the backward of the innermost one sees
    its incoming gradient wrapped once; a second level means the gradient itself is being differentiated."""
    functorch, levels = torch._C._functorch, 0
    while kernels.is_transformed(t):
        levels += functorch.is_gradtrackingtensor(t)
        t = functorch.get_unwrapped(t)
    return levels
