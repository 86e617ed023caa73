"""svgd_direction: the Stein variational gradient direction (Liu & Wang 2016), rbf kernel,

    phi_i = (1/n) sum_j [ k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i) ]
          = (1/n) [ (K score)_i + sum_j g_ij (x_i - x_j) ],

one pair_reduce(x, x, v = [score, 1], a = [0, 1]): S = [K score, K 1] and G_i = sum_j g_ij (x_i - x_j)
(divided by the scale, as G is computed on the scaled points). A batch of particle sets (B, n, d) is one
pair_reduce call; a padded one has v = 0 on its padding rows and n its lengths.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.bandwidth import svgd_sigma
from infovae_kernels.ops._common import bandwidths, padded, prepared, primitives


def svgd_direction(x: Tensor, score: Tensor, *, sigma: _checks.Sigma = "median", lengths: Optional[Tensor] = None,
                   backend: str = "auto") -> Tensor:
    """Stein variational gradient direction for particles x (n, d) with score = grad log p(x) (n, d).
    sigma="median" follows Liu & Wang: exp(-r2 / h) with h = med^2 / log(n + 1), med the median pairwise
    distance; a float sigma means exp(-r2 / (2 sigma^2)). phi is a direction, not a differentiable
    function: it carries no gradient (use it as -sum_i stop_grad(phi_i) . x_i in a surrogate loss).
    A batch x, score (B, n, d) gives (B, n, d): B independent particle sets, sigma per set as in ik.mmd,
    `lengths` (B,) for padded sets (their padding rows get 0).
    """
    _checks.points(x, batch=True)
    _checks.floating(score, "score")
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
    _checks.same_device_dtype(x, score, "x", "score")
    _checks.finite(score, "score")
    x, score = x.detach(), score.detach()
    mask = _checks.lengths(lengths, x, "lengths")
    ops = primitives(backend, x.device)
    sigmas = bandwidths(sigma, "rbf", x, median=svgd_sigma, masks=(mask,))
    xs, _, scale, params = prepared(x, x, sigmas, "rbf", padded(mask, mask, x, x))
    real = x.new_ones(x.shape[:-1] + (1,), dtype=xs.dtype) if mask is None else mask[..., None].to(xs.dtype)
    v = torch.cat([score.to(xs.dtype) * real, real], -1)
    a = torch.cat([torch.zeros_like(score, dtype=xs.dtype), real], -1)
    s, g = ops.pair_reduce(xs, xs, v, a, params, "rbf", False)
    n = real.sum(-2, keepdim=True).double()
    return ((s[..., :-1] + g / scale[..., None, None]) / n * real).to(x.dtype)
