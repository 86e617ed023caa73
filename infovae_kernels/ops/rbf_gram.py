"""rbf_gram: the Gram matrix K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), fused distance + exp.

Forward is gram(x, y). Backward, with W = grad_out * g (g = gram(x, y, derivative=True) = -2 dK/dr2):
    dL/dx_i = -sum_j W_ij (x_i - y_j),    dL/dy_j = sum_i W_ij (x_i - y_j),
two matrix products on the (N, M) matrix this op materialises anyway.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.ops._common import no_double_backward, prepared, primitives


class _RBFGram(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, sigma, backend):
        ops = primitives(backend, x.device)
        xs, ys, scale, params = prepared(x, y, sigma, "rbf")
        ctx.save_for_backward(xs, ys, scale, params)
        ctx.ops = ops
        return ops.gram(xs, ys, params, "rbf", False).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        no_double_backward("rbf_gram")
        xs, ys, scale, params = ctx.saved_tensors
        w = grad.to(xs.dtype) * ctx.ops.gram(xs, ys, params, "rbf", True).to(xs.dtype)
        dx = dy = None
        if ctx.needs_input_grad[0]:
            dx = ((xs * w.sum(1, keepdim=True) - w @ ys) / -scale).to(grad.dtype)
        if ctx.needs_input_grad[1]:
            dy = ((w.T @ xs - ys * w.sum(0)[:, None]) / scale).to(grad.dtype)
        return dx, dy, None, None


def rbf_gram(x: Tensor, y: Optional[Tensor] = None, *, sigma: _checks.Sigma = 1.0, backend: str = "auto") -> Tensor:
    """K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), shape (N, M) (y defaults to x); fused distance + exp.
    Differentiable in x and y."""
    _checks.points(x, y)
    return _RBFGram.apply(x, x if y is None else y, sigma, backend)
