"""svgd_direction: the Stein variational gradient direction (Liu & Wang 2016), rbf kernel,

    phi_i = (1/n) sum_j [ k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i) ]
          = (1/n) [ (K score)_i + sum_j g_ij (x_i - x_j) ],

one pair_reduce(x, x, v = [score, 1], a = [0, 1]): S = [K score, K 1] and G_i = sum_j g_ij (x_i - x_j)
(divided by the scale, as G is computed on the scaled points).
"""

from __future__ import annotations

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.bandwidth import svgd_sigma
from infovae_kernels.ops._common import bandwidths, prepared, primitives


def svgd_direction(x: Tensor, score: Tensor, *, sigma: _checks.Sigma = "median", backend: str = "auto") -> Tensor:
    """Stein variational gradient direction for particles x (n, d) with score = grad log p(x) (n, d).

    sigma="median" follows Liu & Wang: exp(-r2 / h) with h = med^2 / log(n + 1), med the median pairwise
    distance; a float sigma means exp(-r2 / (2 sigma^2)). phi is a direction, not a differentiable
    function: it carries no gradient (use it as -sum_i stop_grad(phi_i) . x_i in a surrogate loss).
    """
    _checks.points(x)
    _checks.floating(score, "score")
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
    _checks.same_device_dtype(x, score, "x", "score")
    _checks.finite(score, "score")
    x, score = x.detach(), score.detach()
    ops = primitives(backend, x.device)
    sigmas = bandwidths(sigma, "rbf", x, median=svgd_sigma)
    xs, _, scale, params = prepared(x, x, sigmas, "rbf")
    n = x.shape[0]
    v = torch.cat([score.to(xs.dtype), xs.new_ones(n, 1)], 1)
    a = torch.cat([torch.zeros_like(score, dtype=xs.dtype), xs.new_ones(n, 1)], 1)
    s, g = ops.pair_reduce(xs, xs, v, a, params, "rbf", False)
    return ((s[:, :-1] + g / scale) / n).to(x.dtype)
