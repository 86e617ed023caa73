"""mmd: the squared maximum mean discrepancy, value and gradient from one symmetric sweep.

With the pooled points Z = [X; Y] and signed weights w = [wx; -wy] (biased V-statistic)

    MMD^2 = w^T K w = quad_form(Z, w).q
    dMMD^2/dz_i = -2 G_i,  G_i = sum_j g_ij w_i w_j (z_i - z_j)   (quad_form with a = w)
    dMMD^2/dw_i = 2 (K w)_i                                     (quad_form's row sums S)

The unbiased U-statistic drops the diagonal of K and weighs the within-set sums by
c_xx = 1 / (1 - sum wx^2), c_yy likewise: with columns u1 = [wx; 0], u2 = [0; wy], u3 = [wx; wy]
(diagonal excluded), q = (q_xx, q_yy, q_xx + q_yy + 2 q_xy) and

    MMD_u^2 = c_xx q_xx + c_yy q_yy - 2 q_xy = (c_xx + 1) q1 + (c_yy + 1) q2 - q3,

its gradient from a_i = (c_xx wx_i, -wx_i, 0) for i in X and (-wy_i, c_yy wy_i, 0) for i in Y, since
a_i . u_j is then the coefficient of k_ij in the statistic. Rows of a for a set that needs no gradient
are 0 (the MMD-VAE case: only z ~ q(z|x) needs one), so the engines skip half of the G work. The value is computed the same way with
and without gradients (bitwise the same); backward only scales the saved gradients.

A bandwidth that requires grad gets dMMD^2/dsigma_s = (2 / sigma_s) sum_i z_i . G_i^(s) (homogeneity, see
_common.bandwidth_grad): from the same pass with one scale, one more quad_form per scale otherwise.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, needs_grad, no_double_backward, \
    prepared_pooled, primitives


class _MMD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, wx, wy, sigmas, kernel, unbiased, backend, need):
        ops = primitives(backend, x.device)
        z, scale, params = prepared_pooled(x, y, sigmas, kernel)
        name = kernels.primitive_name(kernel)
        n = x.shape[0]
        zeros_x, zeros_y = wx.new_zeros(wx.shape), wy.new_zeros(wy.shape)
        need_x, need_y, need_wx, need_wy, need_sigma = need
        # a's rows of a set that needs no gradient are 0: its G rows are then 0 and the engines skip them
        # (the bandwidth's gradient needs every row)
        ax, ay = (wx if need_x or need_sigma else zeros_x), (wy if need_y or need_sigma else zeros_y)
        if unbiased:
            cxx, cyy = 1.0 / (1.0 - wx.square().sum()), 1.0 / (1.0 - wy.square().sum())
            w = torch.stack([torch.cat([wx, zeros_y]), torch.cat([zeros_x, wy]), torch.cat([wx, wy])], 1)
            a = torch.stack([torch.cat([cxx * ax, -ay]), torch.cat([-ax, cyy * ay]), torch.cat([zeros_x, zeros_y])], 1)
        else:
            w = torch.cat([wx, -wy])[:, None]
            a = torch.cat([ax, -ay])[:, None]
        grad_points = need_x or need_y or need_sigma
        w, a = w.to(z.dtype), a.to(z.dtype)
        q, s, g = ops.quad_form(z, w, a if grad_points else None, params, name, unbiased, need_wx or need_wy)
        if unbiased:
            value = (cxx + 1.0) * q[0] + (cyy + 1.0) * q[1] - q[2]
        else:
            value = q[0]
        grads = [None] * 5
        if need_sigma:  # sum_i z_i . dvalue/dz_i = -2 sum_i z_i . G_i
            grads[4] = bandwidth_grad(sigmas, params, g, lambda p: ops.quad_form(z, w, a, p, name, unbiased, False)[2],
                                      lambda gp: -2.0 * (z.double() * gp).sum())
        if need_x or need_y:
            dz = g * (-2.0 / scale)
            grads[0] = dz[:n].to(x.dtype) if need_x else None
            grads[1] = dz[n:].to(y.dtype) if need_y else None
        if unbiased and (need_wx or need_wy):  # c_xx depends on wx: d(c q)/dw = c dq/dw + q c^2 2 w
            grads[2] = 2.0 * cxx * s[:n, 0] - 2.0 * s[:n, 1] + 2.0 * q[0] * cxx.square() * wx
            grads[3] = 2.0 * cyy * s[n:, 1] - 2.0 * s[n:, 0] + 2.0 * q[1] * cyy.square() * wy
        elif need_wx or need_wy:
            grads[2], grads[3] = 2.0 * s[:n, 0], -2.0 * s[n:, 0]
        ctx.grads = grads
        return value.to(x.dtype)

    @staticmethod
    def backward(ctx, grad_value):
        no_double_backward("mmd")
        return tuple(None if g is None else grad_value.to(g.dtype) * g for g in ctx.grads) + (None,) * 4


def mmd(x: Tensor, y: Tensor, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = None, estimator: str = "biased",
        weights_x: Optional[Tensor] = None, weights_y: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Squared MMD between the samples x (N, d) and y (M, d), a 0-dim tensor in x's dtype.

    biased (V-statistic):    sum_ab wx_a wx_b k(x_a, x_b) + sum_ab wy_a wy_b k(y_a, y_b) - 2 sum_ab wx_a wy_b k(x_a, y_b)
    unbiased (U-statistic):  the within-set sums drop a == b exactly and divide by 1 - sum w^2
                             (1/(N(N-1)) for uniform weights).
    Weights are non-negative and normalised to sum 1 in float64 (uniform when None). Value and gradient
    (x, y and the weights) come out of one fused symmetric pass over the pooled points; second
    derivatives raise NotImplementedError.

    kernel: "rbf", "imq", "laplacian", "energy", "polynomial", "linear" or ik.Polynomial(degree, gamma,
    coef) (formulas in infovae_kernels/kernels.py). sigma, for rbf, imq and laplacian: a float (None
    means 1.0), up to 16 floats (sum over scales), a tensor of them (one that requires grad gets a
    gradient), or "median" (median pair distance of the pooled sample, see bandwidth.median_distance);
    None for the other kernels.
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
            if not _checks._tracing() and float(w.detach().square().sum()) >= 1.0 - 1e-12:
                raise ValueError(f"the unbiased estimator needs at least 2 positive weights for {name}")
    sigmas = bandwidths(sigma, kernel, x, y)
    return _MMD.apply(x, y, wx, wy, sigmas, kernel, unbiased, backend, needs_grad(x, y, wx, wy, sigmas))
