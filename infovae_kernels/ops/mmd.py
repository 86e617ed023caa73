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

A batch, x (B, N, d) and y (B, M, d), is B problems in one quad_form call (every tensor above with a
leading B). A padded batch gives its padding rows weight 0 (and puts them at the centre), so each
problem's value and gradient are those of its real rows; padding rows get gradient 0.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, needs_grad, no_double_backward, \
    padded, prepared_pooled, primitives, sum_to_input, vmap_batched


class _MMD(torch.autograd.Function):
    """Forward returns the value and the gradients the fused pass computed (empty where not needed), so
    that torch.func transforms see them as outputs; backward scales them."""

    @staticmethod
    def forward(x, y, wx, wy, sigmas, mask, kernel, unbiased, backend, need):
        ops = primitives(backend, x.device)
        z, scale, params = prepared_pooled(x, y, sigmas, kernel, mask)
        name = kernels.primitive_name(kernel)
        n = x.shape[-2]
        zeros_x, zeros_y = torch.zeros_like(wx), torch.zeros_like(wy)
        need_x, need_y, need_wx, need_wy, need_sigma = need
        # a's rows of a set that needs no gradient are 0: its G rows are then 0 and the engines skip them
        # (the bandwidth's gradient needs every row)
        ax, ay = (wx if need_x or need_sigma else zeros_x), (wy if need_y or need_sigma else zeros_y)
        if unbiased:
            cxx, cyy = 1.0 / (1.0 - wx.square().sum(-1)), 1.0 / (1.0 - wy.square().sum(-1))
            cx, cy = cxx[..., None], cyy[..., None]
            w = torch.stack([torch.cat([wx, zeros_y], -1), torch.cat([zeros_x, wy], -1), torch.cat([wx, wy], -1)], -1)
            a = torch.stack([torch.cat([cx * ax, -ay], -1), torch.cat([-ax, cy * ay], -1),
                             torch.cat([zeros_x, zeros_y], -1)], -1)
        else:
            w = torch.cat([wx, -wy], -1)[..., None]
            a = torch.cat([ax, -ay], -1)[..., None]
        grad_points = need_x or need_y or need_sigma
        w, a = w.to(z.dtype), a.to(z.dtype)
        q, s, g = ops.quad_form(z, w, a if grad_points else None, params, name, unbiased, need_wx or need_wy)
        if unbiased:
            value = (cxx + 1.0) * q[..., 0] + (cyy + 1.0) * q[..., 1] - q[..., 2]
        else:
            value = q[..., 0]
        grads = [None] * 5
        if need_sigma:  # sum_i z_i . dvalue/dz_i = -2 sum_i z_i . G_i
            grads[4] = bandwidth_grad(sigmas, params, g, lambda p: ops.quad_form(z, w, a, p, name, unbiased, False)[2],
                                      lambda gp: -2.0 * (z.double() * gp).sum((-2, -1)))
        factor = (-2.0 / scale)[..., None, None]
        if need_x:
            grads[0] = (g[..., :n, :] * factor).to(x.dtype)
        if need_y:
            grads[1] = (g[..., n:, :] * factor).to(y.dtype)
        if unbiased and (need_wx or need_wy):  # c_xx depends on wx: d(c q)/dw = c dq/dw + q c^2 2 w
            grads[2] = 2.0 * cx * s[..., :n, 0] - 2.0 * s[..., :n, 1] + 2.0 * (q[..., 0] * cxx.square())[..., None] * wx
            grads[3] = 2.0 * cy * s[..., n:, 1] - 2.0 * s[..., n:, 0] + 2.0 * (q[..., 1] * cyy.square())[..., None] * wy
        elif need_wx or need_wy:
            grads[2], grads[3] = 2.0 * s[..., :n, 0], -2.0 * s[..., n:, 0]
        return (value.to(x.dtype), *(value.new_empty(0) if g is None else g for g in grads))

    @staticmethod
    def vmap(info, in_dims, *args):  # the op takes a batch already: applied once to it
        # autograd outside the vmap: which inputs need a gradient shows on the unwrapped tensors only
        need = [n or g for n, g in zip(args[-1], needs_grad(*args[:5]))]
        return vmap_batched(_MMD.apply, info, in_dims, (*args[:-1], need), n_tensors=6, shared=4)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:])
        ctx.shapes = [None if t is None else t.shape for t in inputs[:5]]

    @staticmethod
    def backward(ctx, grad_value, *_):
        no_double_backward("mmd", grad_value)
        grads = [sum_to_input(grad_value, g, shape) if need else None
                 for need, g, shape in zip(ctx.needs_input_grad[:5], ctx.saved_tensors, ctx.shapes)]
        return (*grads, None, None, None, None, None)


def mmd(x: Tensor, y: Tensor, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = None, estimator: str = "biased",
        weights_x: Optional[Tensor] = None, weights_y: Optional[Tensor] = None, x_lengths: Optional[Tensor] = None,
        y_lengths: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Squared MMD between the samples x (N, d) and y (M, d), a 0-dim tensor in x's dtype; or between
    x[b] and y[b] for each problem of a batch, x (B, N, d) and y (B, M, d), a (B,) tensor.

    biased (V-statistic):    sum_ab wx_a wx_b k(x_a, x_b) + sum_ab wy_a wy_b k(y_a, y_b) - 2 sum_ab wx_a wy_b k(x_a, y_b)
    unbiased (U-statistic):  the within-set sums drop a == b exactly and divide by 1 - sum w^2
                             (1/(N(N-1)) for uniform weights).
    Weights are non-negative and normalised to sum 1 in float64 (uniform when None); (B, N) and (B, M)
    for a batch. Value and gradient (x, y and the weights) come out of one fused symmetric pass over the
    pooled points (for a batch, one call for all problems); second derivatives raise NotImplementedError.

    kernel: "rbf", "imq", "laplacian", "energy", "polynomial", "linear" or ik.Polynomial(degree, gamma,
    coef) (formulas in infovae_kernels/kernels.py). sigma, for rbf, imq and laplacian: a float (None
    means 1.0), up to 16 floats (sum over scales), a tensor of them (one that requires grad gets a
    gradient), or "median" (median pair distance of the pooled sample, see bandwidth.median_distance);
    None for the other kernels. For a batch, floats and 0-dim tensors are shared by every problem, a
    (B,) tensor is one bandwidth per problem, (B, S) S scales per problem, and "median" is each
    problem's own.

    A padded batch of problems of different sizes: x_lengths (B,) (and y_lengths (B,)) integer tensors,
    problem b being x[b, :x_lengths[b]] and y[b, :y_lengths[b]]; the padding rows' values are ignored
    and get gradient 0.
    """
    _checks.points(x, y, batch=True)
    kernel = _checks.kernel(kernel)
    unbiased = _checks.estimator(estimator)
    x_mask, y_mask = _checks.lengths(x_lengths, x, "x_lengths"), _checks.lengths(y_lengths, y, "y_lengths")
    wx = _checks.weights(weights_x, x.shape[-2], x, "weights_x", x_mask)
    wy = _checks.weights(weights_y, y.shape[-2], y, "weights_y", y_mask)
    if unbiased:
        for w, n, name in ((wx, x.shape[-2], "x"), (wy, y.shape[-2], "y")):
            if n < 2:
                raise ValueError(f"the unbiased estimator needs at least 2 points in {name}, got {n}")
            if not _checks._tracing(w) and bool((w.detach().square().sum(-1) >= 1.0 - 1e-12).any()):
                raise ValueError(f"the unbiased estimator needs at least 2 positive weights for {name}"
                                 + (" in every problem (x_lengths, y_lengths >= 2)" if w.dim() == 2 else ""))
    sigmas = bandwidths(sigma, kernel, x, y, masks=(x_mask, y_mask))
    return _MMD.apply(x, y, wx, wy, sigmas, padded(x_mask, y_mask, x, y), kernel, unbiased, backend,
                      needs_grad(x, y, wx, wy, sigmas))[0]
