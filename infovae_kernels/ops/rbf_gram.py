"""rbf_gram: the Gram matrix K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), fused distance + exp.

Forward is gram(x, y). Backward, with W = grad_out * g (g = gram(x, y, derivative=True) = -2 dK/dr2):
    dL/dx_i = -sum_j W_ij (x_i - y_j),    dL/dy_j = sum_i W_ij (x_i - y_j),
two matrix products on the (N, M) matrix this op materialises anyway. A bandwidth that requires grad
gets dL/dsigma_s = -(1/sigma_s)(sum_i x_i . dL^(s)/dx_i + sum_j y_j . dL^(s)/dy_j) (_common.bandwidth_grad).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, no_double_backward, prepared, primitives


class _RBFGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, sigmas, backend):
        ops = primitives(backend, x.device)
        xs, ys, scale, params = prepared(x, y, sigmas, "rbf")
        ctx.save_for_backward(xs, ys, scale, params, sigmas)
        ctx.ops = ops
        return ops.gram(xs, ys, params, "rbf", False).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        no_double_backward("rbf_gram")
        xs, ys, scale, params, sigmas = ctx.saved_tensors
        need_x, need_y, need_sigma = ctx.needs_input_grad[:3]

        def point_grads(p, rows=True, cols=True):  # dL/dx', dL/dy' (prepared units) for params p
            w = grad.to(xs.dtype) * ctx.ops.gram(xs, ys, p, "rbf", True).to(xs.dtype)
            return (w @ ys - xs * w.sum(1, keepdim=True) if rows else None,
                    w.T @ xs - ys * w.sum(0)[:, None] if cols else None)

        gx, gy = point_grads(params, need_x or need_sigma, need_y or need_sigma)
        dsigma = None
        if need_sigma:
            dsigma = bandwidth_grad(sigmas, params, (gx, gy), point_grads,
                                    lambda t: (xs * t[0]).sum(dtype=torch.float64) + (ys * t[1]).sum(dtype=torch.float64))
        dx = (gx / scale).to(grad.dtype) if need_x else None
        dy = (gy / scale).to(grad.dtype) if need_y else None
        return dx, dy, dsigma, None


def rbf_gram(x: Tensor, y: Optional[Tensor] = None, *, sigma: _checks.Sigma = None, backend: str = "auto") -> Tensor:
    """K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), shape (N, M) (y defaults to x); fused distance + exp.
    Differentiable in x, y and a tensor sigma (None means 1.0; see ik.mmd)."""
    _checks.points(x, y)
    y = x if y is None else y
    return _RBFGram.apply(x, y, bandwidths(sigma, "rbf", x, y), backend)
