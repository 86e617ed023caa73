"""Public functions: check the arguments, resolve the backend, make one op call.

Bandwidth conventions (rbf): k(x, y) = exp(-|x - y|^2 / (2 sigma^2)). GeomLoss's `blur` is sigma;
a kernel written exp(-r2 / h) has h = 2 sigma^2; the InfoVAE authors' exp(-r2 / (2 d)) is sigma^2 = d.
imq (WAE): k = C / (C + |x - y|^2) with C = 2 d sigma^2. A sequence of sigmas sums the kernels over
scales (one distance per pair). sigma="median" is the median pairwise distance of the pooled sample,
exact up to 2048 points and estimated from a seeded subsample of 2048 above that (bandwidth.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, autograd, backends
from infovae_kernels.bandwidth import median_distance, svgd_sigma


def _backend_name(backend: str, device: torch.device) -> str:
    """The backend that will run; under torch.compile the op resolves it when it runs instead."""
    return backend if _checks._tracing() else backends.resolve(backend, device)[0]


def _needs_grad(*tensors: Tensor) -> list[bool]:
    enabled = torch.is_grad_enabled()
    return [enabled and t.requires_grad for t in tensors]


def rbf_gram(x: Tensor, y: Optional[Tensor] = None, *, sigma: _checks.Sigma = 1.0, backend: str = "auto") -> Tensor:
    """K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), shape (N, M) (y defaults to x); fused distance + exp."""
    _checks.points(x, y)
    y = x if y is None else y
    sigmas = _checks.sigmas(sigma, lambda: median_distance(torch.cat([x, y])))
    name = _backend_name(backend, x.device)
    return autograd.rbf_gram_op(x, y, sigmas, name)


def kernel_sum(x: Tensor, y: Tensor, v: Optional[Tensor] = None, *, kernel: str = "rbf",
               sigma: _checks.Sigma = 1.0, backend: str = "auto") -> Tensor:
    """S_i = sum_j k(x_i, y_j) v_j without storing the N x M matrix.

    v: None (all ones) or (M,) gives shape (N,); (M, p) gives (N, p). Differentiable in x, y and v.
    """
    _checks.points(x, y)
    kernel = _checks.kernel(kernel)
    if v is None:
        v2 = y.new_ones((y.shape[0], 1))
    else:
        _checks.values(v, y.shape[0], y, "v")
        v2 = v[:, None] if v.dim() == 1 else v
    sigmas = _checks.sigmas(sigma, lambda: median_distance(torch.cat([x, y])))
    name = _backend_name(backend, x.device)
    s = autograd.kernel_sum_op(x, y, v2, sigmas, kernel, name)
    return s if v is not None and v.dim() == 2 else s[:, 0]


def mmd(x: Tensor, y: Tensor, *, kernel: str = "rbf", sigma: _checks.Sigma = 1.0, estimator: str = "biased",
        weights_x: Optional[Tensor] = None, weights_y: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Squared MMD between the samples x (N, d) and y (M, d), a 0-dim tensor in x's dtype.

    biased (V-statistic):    sum_ab wx_a wx_b k(x_a, x_b) + sum_ab wy_a wy_b k(y_a, y_b) - 2 sum_ab wx_a wy_b k(x_a, y_b)
    unbiased (U-statistic):  the within-set sums drop a == b exactly and divide by 1 - sum w^2
                             (1/(N(N-1)) for uniform weights).
    Weights are non-negative and normalised to sum 1 (uniform when None). Value and gradient (x, y and
    the weights) come out of the same fused pass; second derivatives raise NotImplementedError.
    """
    _checks.points(x, y)
    kernel = _checks.kernel(kernel)
    unbiased = _checks.estimator(estimator)
    wx = _checks.weights(weights_x, x.shape[0], x, "weights_x")
    wy = _checks.weights(weights_y, y.shape[0], y, "weights_y")
    if unbiased:
        for w, n, name in ((wx, x.shape[0], "x"), (wy, y.shape[0], "y")):
            if n < 2:
                raise ValueError(f"the unbiased estimator needs at least 2 points in {name}, got {n}")
            if not _checks._tracing() and float(w.detach().double().square().sum()) >= 1.0 - 1e-12:
                raise ValueError(f"the unbiased estimator needs at least 2 positive weights for {name}")
    sigmas = _checks.sigmas(sigma, lambda: median_distance(torch.cat([x, y])))
    name = _backend_name(backend, x.device)
    need = _needs_grad(x, y, wx, wy)
    return autograd.mmd_op(x, y, wx, wy, sigmas, kernel, unbiased, name, need)[0]


def svgd_direction(x: Tensor, score: Tensor, *, sigma: _checks.Sigma = "median", backend: str = "auto") -> Tensor:
    """Stein variational gradient direction (Liu & Wang 2016) for particles x (n, d) with
    score = grad log p(x) (n, d), rbf kernel:

        phi_i = (1/n) sum_j [ k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i) ]

    sigma="median" follows Liu & Wang: exp(-r2 / h) with h = med^2 / log(n + 1), med the median pairwise
    distance. phi is a direction, not a differentiable function: it carries no gradient (use it as
    -sum_i stop_grad(phi_i) . x_i in a surrogate loss).
    """
    _checks.points(x)
    _checks.floating(score, "score")
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
    _checks.same_device_dtype(x, score, "x", "score")
    _checks.finite(score, "score")
    x, score = x.detach(), score.detach()
    sigmas = _checks.sigmas(sigma, lambda: svgd_sigma(x))
    _, ops = backends.resolve(backend, x.device)
    xc, _ = autograd._centred(x, x)
    n = x.shape[0]
    # one pass: v = [score, 1] gives S = [K score, K 1]; a = [0, 1] gives G_i = sum_j g_ij (x_i - x_j)
    v = torch.cat([score.to(xc.dtype), xc.new_ones(n, 1)], 1)
    a = torch.zeros_like(v)
    a[:, -1] = 1.0
    s, g = ops.pair_reduce(xc, xc, v, a, sigmas, "rbf", False)
    return ((s[:, :-1] + g) / n).to(x.dtype)
