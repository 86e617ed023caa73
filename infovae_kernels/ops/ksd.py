"""ksd: the squared kernel Stein discrepancy of samples x against a density p known by its score
s(x) = grad log p(x) (Liu, Lee & Jordan 2016; Chwialkowski, Strathmann & Gretton 2016; Gorham & Mackey
2017), with the Stein kernel u of kernels.stein_kernel and weights w summing to 1:

    biased (V-statistic):    KSD^2 = sum_ij w_i w_j u(x_i, x_j)
    unbiased (U-statistic):  KSD^2 = sum_{i != j} w_i w_j u(x_i, x_j) / (1 - sum_i w_i^2)

(uniform weights: (1/n^2) sum_ij u_ij and (1/(n(n-1))) sum_{i != j} u_ij). The pairs are reduced in
blocks of rows against all points, so memory is O(n d + block n), never n x n; with autograd each block
is recomputed in backward (activation checkpointing) instead of stored. The Stein kernel runs on the
plain-torch backend ("torch", any device); the fused cpu / cuda / triton Stein kernels are not built yet,
and asking for them by name is a ValueError.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Union

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.bandwidth import median_distance

Score = Union[Tensor, Callable[[Tensor], Tensor]]
#: Pairs per block of rows (rows = BLOCK_PAIRS // n): a few temporaries of this many entries at a time.
BLOCK_PAIRS = 1 << 21
#: Rows per call of a callable score.
SCORE_CHUNK = 4096


def stein_backend(backend: str, device: torch.device) -> str:
    """The backend that computes the Stein kernel: "torch" for "auto" and "torch"; any other name is a
    ValueError (a backend asked for by name never falls back)."""
    if backend not in backends.NAMES + ("auto",):
        raise ValueError(f"backend must be one of {('auto',) + backends.NAMES}, got {backend!r}")
    if backend not in ("auto", "torch"):
        raise ValueError(f"backend={backend!r}: the Stein kernel runs on the 'torch' backend only so far (fused "
                         "cpu, cuda and triton Stein kernels are not built yet); use backend='auto' or 'torch'")
    return "torch"


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


def row_blocks(n: int) -> Iterator[tuple[int, int]]:
    rows = max(1, min(n, BLOCK_PAIRS // max(n, 1)))
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


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
    stein_backend(backend, x.device)
    n = x.shape[0]
    if unbiased and n < 2:
        raise ValueError(f"x: the unbiased KSD needs at least 2 points, got {n}")
    s = score_values(score, x)
    sigmas = stein_sigmas(sigma, x, kernel)
    w = _checks.weights(weights, n, x, "weights")
    norm = 1.0
    if unbiased:
        norm = 1.0 - w.square().sum()
        if not _checks._tracing() and float(norm.detach()) <= 0.0:
            raise ValueError("weights: the unbiased KSD needs at least two points of positive weight")
    xc, sc = centred(x), s.to(kernels.compute_dtype(x.dtype))
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (xc, sc, w, sigmas))
    total = xc.new_zeros((), dtype=torch.float64)
    for start, end in row_blocks(n):
        args = (start, xc[start:end], sc[start:end], w[start:end], xc, sc, w, sigmas, kernel, beta, c, unbiased)
        total = total + (checkpoint(_block_sum, *args, use_reentrant=False) if grad else _block_sum(*args))
    return (total / norm).to(x.dtype)
