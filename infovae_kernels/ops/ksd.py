"""ksd: the squared kernel Stein discrepancy of samples x against a density p known by its score
s(x) = grad log p(x) (Liu, Lee & Jordan 2016; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey
2017), with the Stein kernel u of kernels.stein_kernel and weights w summing to 1:

    biased (V-statistic):    KSD^2 = sum_ij w_i w_j u(x_i, x_j)
    unbiased (U-statistic):  KSD^2 = sum_{i != j} w_i w_j u(x_i, x_j) / (1 - sum_i w_i^2)

(uniform weights: (1/n^2) sum_ij u_ij and (1/(n(n-1))) sum_{i != j} u_ij). Without a gradient the value
is one stein_form primitive (q = w^T U w): fused on the cpu (csrc/cpu/stein.cpp), cuda (csrc/cuda) and
triton (backends/triton) backends, blocks of rows on the torch backend (backends/reference.py); none
stores n x n. With a gradient in x (at fixed score), score or weights, the fused backends run one pass,
stein_moments, for the value and everything the gradient needs (_KSD). Otherwise (the torch backend, a
tensor sigma) the gradient is autograd through the torch blocks, recomputed in backward one block at a
time (activation checkpointing), so memory stays O(n d) plus one block.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.backends import reference
from infovae_kernels.bandwidth import median_distance

Score = Union[Tensor, Callable[[Tensor], Tensor]]
#: Rows per call of a callable score.
SCORE_CHUNK = 4096


def stein_primitive(backend: str, device: torch.device) -> Callable:
    """The stein_form primitive of `backend` on `device` (see stein_module)."""
    return stein_module(backend, device).stein_form


def stein_module(backend: str, device: torch.device):
    """The backend module with the Stein primitives, resolved as for every op (backends.resolve: "auto"
    picks triton, cuda, torch on CUDA tensors and cpu, torch on CPU tensors; a name runs or raises).
    Every backend has stein_form; stein_moments all but torch; stein_thin only cpu."""
    return backends.primitives(backends.resolve(backend, device))


def stein_params(sigmas: Tensor, beta: float, c: float) -> Tensor:
    """The primitive's params: float64 [beta, c, sigma_1, ...] (values only)."""
    return torch.cat([sigmas.new_tensor([beta, c]), sigmas.detach()])


def stein_args(x: Tensor, kernel: str, beta: float, c: float) -> tuple[float, float]:
    """Checks x and the base kernel's parameters; (beta, c) as floats."""
    _checks.points(x)
    if not isinstance(kernel, str) or kernel not in kernels.STEIN_BASES:
        raise ValueError(f"kernel must be one of {kernels.STEIN_BASES} (the Stein kernel's base), got {kernel!r}")
    for value, name in ((beta, "beta"), (c, "c")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"{name} must be a finite float, got {value!r}")
    beta, c = float(beta), float(c)
    if kernel == "imq":
        if not -1.0 < beta < 0.0:
            raise ValueError(f"beta must lie in (-1, 0) for the imq Stein kernel (Gorham & Mackey), got {beta}")
        if c <= 0.0:
            raise ValueError(f"c must be positive, got {c}")
    elif (beta, c) != (-0.5, 1.0):
        raise ValueError(f"beta and c belong to the imq base; the rbf base takes neither (got beta={beta}, c={c})")
    return beta, c


def score_values(score: Score, x: Tensor) -> Tensor:
    """The scores of x (n, d): the tensor as given, or a callable x -> grad log p(x) evaluated on chunks of
    SCORE_CHUNK rows (keeping its autograd graph); checked for shape, device, dtype and finiteness."""
    if callable(score) and not isinstance(score, Tensor):
        parts = []
        for start in range(0, x.shape[0], SCORE_CHUNK):
            out = score(x[start:start + SCORE_CHUNK])
            if not isinstance(out, Tensor):
                raise TypeError(f"score: the callable must return a torch.Tensor, got {type(out).__name__}")
            parts.append(out)
        s = torch.cat(parts) if len(parts) > 1 else parts[0]
    else:
        _checks.floating(score, "score")
        s = score
    if s.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(s.shape)}")
    _checks.same_device_dtype(x, s, "x", "score")
    _checks.finite(s, "score")
    return s


def stein_sigmas(sigma: _checks.Sigma, x: Tensor, kernel: str) -> Tensor:
    """Bandwidths (S,) float64 (1.0 when None, the median pair distance of x for "median")."""
    return _checks.sigmas(sigma, x, lambda: median_distance(x.detach()), kernel)


def centred(x: Tensor) -> Tensor:
    """x in its compute dtype minus its mean (u is translation invariant; centring keeps the expansion
    of r2 and of the cross terms from cancelling)."""
    xc = x.to(kernels.compute_dtype(x.dtype))
    return xc - xc.detach().mean(0)


def _block_sum(start: int, xr: Tensor, sr: Tensor, wr: Tensor, x: Tensor, s: Tensor, w: Tensor, sigmas: Tensor,
               base: str, beta: float, c: float, exclude_diagonal: bool) -> Tensor:
    """sum_{i in block, j} w_i w_j u_ij (the pairs i == j dropped when exclude_diagonal), float64."""
    mask = kernels.diagonal_mask(xr.shape[0], x.shape[0], start, x.device)
    u = kernels.stein_kernel(xr, sr, x, s, sigmas, base, beta, c, diagonal=mask)
    if exclude_diagonal:
        u = u.masked_fill(mask, 0.0)
    return wr @ (u.double() @ w)


def _normaliser(w: Tensor, unbiased: bool) -> Tensor:
    return 1.0 - w.square().sum() if unbiased else w.new_ones(())


class _KSD(torch.autograd.Function):
    """value = w^T U w / norm. Where the backend has fused moments and a gradient is wanted in x, score or
    weights but not sigma, forward runs stein_moments alone (V = sum_i w_i R^U_i[w]; no separate value
    pass) and backward combines its R (module docstring of csrc/cpu/stein.cpp):

        dV/dx_i = 4 w_i (x_i R^A_i[w] - R^A_i[w x] + R^phi'_i[w s] - s_i R^phi'_i[w])
        dV/ds_i = 2 w_i (R^phi_i[w s] - 2 x_i R^phi'_i[w] + 2 R^phi'_i[w x])
        dV/dw_i = 2 R^U_i[w]

    (u symmetric, so each pair counts twice). Otherwise the value is stein_form and the gradient autograd
    through the torch blocks. The two values agree to float64 rounding of their sums."""

    @staticmethod
    def forward(ctx, xc, sc, w, sigmas, kernel, beta, c, unbiased, module):
        need = ctx.needs_input_grad[:4]
        params = stein_params(sigmas, beta, c)
        ctx.moments = None
        if hasattr(module, "stein_moments") and any(need[:3]) and not need[3]:
            ctx.moments = module.stein_moments(xc, sc, w.to(xc.dtype), params, kernel, unbiased)
            value = (w.double() * ctx.moments[:, 0, 0]).sum()
        else:
            value = module.stein_form(xc, sc, w.to(xc.dtype)[:, None], params, kernel, unbiased)[0]
        ctx.save_for_backward(xc, sc, w, sigmas)
        ctx.args = (kernel, beta, c, unbiased)
        ctx.value = value
        return value / _normaliser(w, unbiased)

    @staticmethod
    def backward(ctx, grad):
        kernel, beta, c, unbiased = ctx.args
        need = ctx.needs_input_grad[:4]
        if ctx.moments is not None:
            return _fused_backward(ctx, grad, need) + (None,) * 5
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, need)]
            xc, sc, w, sigmas = leaves
            total = xc.new_zeros((), dtype=torch.float64)
            for start, end in reference.stein_blocks(xc.shape[0]):
                total = total + checkpoint(_block_sum, start, xc[start:end], sc[start:end], w[start:end], xc, sc, w,
                                           sigmas, kernel, beta, c, unbiased, use_reentrant=False)
            value = total / _normaliser(w, unbiased)
            wanted = [t for t, n in zip(leaves, need) if n]
            grads = iter(torch.autograd.grad(value, wanted, grad))
        return tuple(next(grads) if n else None for n in need) + (None,) * 5


def _fused_backward(ctx, grad: Tensor, need) -> tuple:
    xc, sc, w, _ = ctx.saved_tensors
    unbiased = ctx.args[3]
    d = xc.shape[1]
    r = ctx.moments
    x64, s64, w64 = xc.double(), sc.double(), w.double()[:, None]
    norm = _normaliser(w, unbiased)
    g = grad.double() / norm
    gx = gs = gw = None
    if need[0]:
        gx = 4.0 * g * w64 * (x64 * r[:, 3, :1] - r[:, 3, 1:1 + d] + r[:, 2, 1 + d:] - s64 * r[:, 2, :1])
        gx = gx.to(xc.dtype)
    if need[1]:
        gs = (2.0 * g * w64 * (r[:, 1, 1 + d:] - 2.0 * x64 * r[:, 2, :1] + 2.0 * r[:, 2, 1:1 + d])).to(sc.dtype)
    if need[2]:
        gw = 2.0 * g * r[:, 0, 0]
        if unbiased:  # d(1 - sum w^2)/dw_i = -2 w_i
            gw = gw + grad.double() * ctx.value * 2.0 * w.double() / (norm * norm)
        gw = gw.to(w.dtype)
    return gx, gs, gw, None


def ksd(x: Tensor, score: Score, *, kernel: str = "imq", sigma: _checks.Sigma = None, beta: float = -0.5,
        c: float = 1.0, estimator: str = "unbiased", weights: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Squared kernel Stein discrepancy of the samples x (n, d) against the density whose score is
    `score` (module docstring), a 0-dim tensor in x's dtype.

    kernel: the Stein kernel's base, "imq" (phi = (c^2 + r2/sigma^2)^beta, beta in (-1, 0)) or "rbf"
    (exp(-r2 / (2 sigma^2))); sigma: a float, several (summed kernels), "median" or a tensor (which gets
    a gradient); None means 1.0. score: a tensor (n, d) or a callable x -> grad log p(x), evaluated in
    chunks. Differentiable in x (at fixed score; a score computed from x with autograd chains the rest),
    in score, in weights and in a tensor sigma: KSD descent and KSD-trained samplers work.
    """
    beta, c = stein_args(x, kernel, beta, c)
    unbiased = _checks.estimator(estimator)
    module = stein_module(backend, x.device)
    n = x.shape[0]
    if unbiased and n < 2:
        raise ValueError(f"x: the unbiased KSD needs at least 2 points, got {n}")
    s = score_values(score, x)
    sigmas = stein_sigmas(sigma, x, kernel)
    w = _checks.weights(weights, n, x, "weights")
    if unbiased and not _checks._tracing() and float(_normaliser(w.detach(), True)) <= 0.0:
        raise ValueError("weights: the unbiased KSD needs at least two points of positive weight")
    xc, sc = centred(x), s.to(kernels.compute_dtype(x.dtype))
    return _KSD.apply(xc, sc, w, sigmas, kernel, beta, c, unbiased, module).to(x.dtype)
