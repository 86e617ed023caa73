"""kernel_sum: S_i = sum_j k(x_i, y_j) v_j without storing the N x M matrix.

Forward is one pair_reduce(x, y, v). Backward, with grad_out = dL/dS (N, p):
    dL/dx_i = -sum_j g_ij (grad_i . v_j)(x_i - y_j)      pair_reduce(x, y, v, a=grad).G
    dL/dy_j = -sum_i g_ij (v_j . grad_i)(y_j - x_i)      pair_reduce(y, x, grad, a=v).G
    dL/dv_j =  sum_i k_ij grad_i                          pair_reduce(y, x, grad).S  (same call)
G is computed on the scaled points, so it is divided by the scale once more.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.ops._common import no_double_backward, prepared, primitives


class _KernelSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, v, sigma, kernel, backend):
        ops = primitives(backend, x.device)
        xs, ys, scale, params = prepared(x, y, sigma, kernel)
        s, _ = ops.pair_reduce(xs, ys, v.to(xs.dtype), None, params, kernel, False)
        ctx.save_for_backward(xs, ys, v, scale, params)
        ctx.args = (kernel, ops)
        return s.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        no_double_backward("kernel_sum")
        xs, ys, v, scale, params = ctx.saved_tensors
        kernel, ops = ctx.args
        need_x, need_y, need_v = ctx.needs_input_grad[:3]
        vc, gc = v.to(xs.dtype), grad.to(xs.dtype)
        dx = dy = dv = None
        if need_x:
            dx = (ops.pair_reduce(xs, ys, vc, gc, params, kernel, False)[1] / -scale).to(grad.dtype)
        if need_y or need_v:
            s, g = ops.pair_reduce(ys, xs, gc, vc if need_y else None, params, kernel, False)
            dy = (g / -scale).to(grad.dtype) if need_y else None
            dv = s.to(v.dtype) if need_v else None
        return dx, dy, dv, None, None, None


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
    s = _KernelSum.apply(x, y, v2, sigma, kernel, backend)
    return s if v is not None and v.dim() == 2 else s[:, 0]
