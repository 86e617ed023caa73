"""mmd_power: the unbiased MMD^2 and its variance under H1 in O(N) memory, differentiable in x and y.

For paired samples x, y (n points each), H_ij = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j)
and its row sums h_i = sum_j H_ij; with Z = [X; Y] and the columns w = ([1; 0], [0; 1]) these are four
blocks of quad_form's row sums S = K w:  h = S_x[:, 0] + S_y[:, 1] - S_x[:, 1] - S_y[:, 0]. Then

    MMD_u^2     = (sum K_xx - tr) / (n (n-1)) + (sum K_yy - tr) / (n (n-1)) - 2 sum K_xy / n^2
    sigma_H1^2  = 4/n^3 sum_i h_i^2 - 4/n^4 (sum_i h_i)^2          (Liu et al. 2020, eq. 5 / their code)

Both are smooth functions of S. The gradient of any L(S) follows from dL/dS = U: L = sum_ij (U_i . w_j)
k_ij over both orders of each pair, so dL/dz_i = -sum_j g_ij (U_i . w_j + w_i . U_j)(z_i - z_j): one
quad_form with columns [w, U] and a = [U, w]. Forward and backward are one symmetric pass each.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.ops._common import no_double_backward, prepared, primitives


class _RowSums(torch.autograd.Function):
    """S = K(z, z) w (float64), differentiable in z (prepared points; dz in their units)."""

    @staticmethod
    def forward(ctx, z, w, params, kernel, ops):
        _, s, _ = ops.quad_form(z, w, None, params, kernel, False, True)
        ctx.save_for_backward(z, w, params)
        ctx.args = (kernel, ops)
        return s

    @staticmethod
    def backward(ctx, u):
        no_double_backward("mmd_power")
        z, w, params = ctx.saved_tensors
        kernel, ops = ctx.args
        cols = torch.cat([w, u.to(z.dtype)], 1)
        a = torch.cat([u.to(z.dtype), w], 1)
        _, _, g = ops.quad_form(z, cols, a, params, kernel, False, False)
        return -g.to(z.dtype), None, None, None, None


class MMDPower(NamedTuple):
    """mmd2: unbiased MMD^2; variance: its variance under H1 (sigma_H1^2); criterion = mmd2 / sqrt(variance + eps)."""

    mmd2: Tensor
    variance: Tensor
    criterion: Tensor


def mmd_power(x: Tensor, y: Tensor, *, kernel: str = "rbf", sigma: _checks.Sigma = 1.0, eps: float = 1e-8,
              backend: str = "auto") -> MMDPower:
    """Unbiased MMD^2 of paired samples x, y (n, d) each, its variance under H1 and the test-power
    criterion mmd2 / sqrt(variance + eps) (Sutherland et al. 2017; Liu et al. 2020), all float64 0-dim
    tensors differentiable in x and y (train features phi(x) through them). O(n d) memory: the row
    sums of the n x n blocks come from one fused pass; the matrices are never built."""
    _checks.points(x, y)
    kernel = _checks.kernel(kernel)
    n = x.shape[0]
    if y.shape[0] != n or n < 2:
        raise ValueError(f"mmd_power needs paired samples of equal size >= 2, got {n} and {y.shape[0]} points")
    ops = primitives(backend, x.device)
    xs, ys, scale, params = prepared(x, y, sigma, kernel)
    z = torch.cat([xs, ys])  # prepared points: the gradient flows back through centring and scaling
    w = torch.zeros(2 * n, 2, dtype=z.dtype, device=z.device)
    w[:n, 0], w[n:, 1] = 1.0, 1.0
    s = _RowSums.apply(z, w, params, kernel, ops)
    k0, _ = kernels.kernel_and_weight(torch.zeros(1, dtype=torch.float64, device=z.device), params, kernel)
    sxx, sxy, syx, syy = s[:n, 0], s[:n, 1], s[n:, 0], s[n:, 1]
    trace = n * k0[0]
    mmd2 = (sxx.sum() - trace + syy.sum() - trace) / (n * (n - 1)) - 2.0 * sxy.sum() / (n * n)
    h = sxx + syy - sxy - syx
    variance = 4.0 * h.square().sum() / n**3 - 4.0 * h.sum().square() / n**4
    return MMDPower(mmd2, variance, mmd2 / torch.sqrt(variance.clamp_min(0.0) + eps))
