"""kernel_sum: S_i = sum_j k(x_i, y_j) v_j without storing the N x M matrix.

Forward is one pair_reduce(x, y, v). Backward, with grad_out = dL/dS (N, p):
    dL/dx_i = -sum_j g_ij (grad_i . v_j)(x_i - y_j)      pair_reduce(x, y, v, a=grad).G
    dL/dy_j = -sum_i g_ij (v_j . grad_i)(y_j - x_i)      pair_reduce(y, x, grad, a=v).G
    dL/dv_j =  sum_i k_ij grad_i                          pair_reduce(y, x, grad).S  (same call)
G is computed on the scaled points, so it is divided by the scale once more. A bandwidth that requires
grad gets dL/dsigma_s = (1 / sigma_s)(sum_i x_i . Gx_i^(s) + sum_j y_j . Gy_j^(s)) (_common.bandwidth_grad).
A batch (every tensor with a leading B) is one pair_reduce call per pass; a padded one has the padding
rows of v and of dL/dS set to 0.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, no_double_backward, padded, prepared, primitives


class _KernelSum(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, v, sigmas, mask, kernel, backend):
        xs, ys, scale, params = prepared(x, y, sigmas, kernel, mask)
        s, _ = primitives(backend, x.device).pair_reduce(xs, ys, v.to(xs.dtype), None, params,
                                                         kernels.primitive_name(kernel), False)
        return s.to(x.dtype), xs, ys, scale, params

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, _, v, sigmas, _, kernel, backend = inputs
        _, xs, ys, scale, params = output
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(xs, ys, v, scale, params, sigmas)
        ctx.args = (kernels.primitive_name(kernel), primitives(backend, x.device))

    @staticmethod
    def backward(ctx, grad, *_):
        no_double_backward("kernel_sum", grad)
        xs, ys, v, scale, params, sigmas = ctx.saved_tensors
        name, ops = ctx.args
        need_x, need_y, need_v, need_sigma = ctx.needs_input_grad[:4]
        vc, gc = v.to(xs.dtype), grad.to(xs.dtype)

        def gradient_terms(p, rows, cols, values=False):  # (Gx, S^T grad, Gy): dL/dx' = -Gx, dL/dy' = -Gy
            gx = ops.pair_reduce(xs, ys, vc, gc, p, name, False)[1] if rows else None
            s = gy = None
            if cols or values:  # the y-side pass, only when y or v needs it
                s, gy = ops.pair_reduce(ys, xs, gc, vc if cols else None, p, name, False)
            return gx, s, gy

        gx, s, gy = gradient_terms(params, need_x or need_sigma, need_y or need_sigma, need_v)
        dsigma = None
        if need_sigma:
            dsigma = bandwidth_grad(  # moment: sum_i x_i . dL/dx_i + sum_j y_j . dL/dy_j
                sigmas, params, (gx, s, gy), lambda p: gradient_terms(p, True, True),
                lambda t: -(xs.double() * t[0]).sum((-2, -1)) - (ys.double() * t[2]).sum((-2, -1)))
            dsigma = dsigma.sum_to_size(sigmas.shape)  # a bandwidth shared by a batch: summed over problems
        per_scale = scale[..., None, None]
        dx = (gx / -per_scale).to(grad.dtype) if need_x else None
        dy = (gy / -per_scale).to(grad.dtype) if need_y else None
        dv = s.to(v.dtype) if need_v else None
        return dx, dy, dv, dsigma, None, None, None


def kernel_sum(x: Tensor, y: Tensor, v: Optional[Tensor] = None, *, kernel: kernels.Kernel = "rbf",
               sigma: _checks.Sigma = None, x_lengths: Optional[Tensor] = None, y_lengths: Optional[Tensor] = None,
               backend: str = "auto") -> Tensor:
    """S_i = sum_j k(x_i, y_j) v_j without storing the N x M matrix.

    v: None (all ones) or (M,) gives shape (N,); (M, p) gives (N, p). Differentiable in x, y, v and a
    tensor sigma. kernel and sigma as in ik.mmd. A batch x (B, N, d), y (B, M, d), v (B, M) or (B, M, p)
    gives (B, N) or (B, N, p), with x_lengths / y_lengths for padded problems (as in ik.mmd; the padding
    rows of the result are 0).
    """
    _checks.points(x, y, batch=True)
    kernel = _checks.kernel(kernel)
    x_mask, y_mask = _checks.lengths(x_lengths, x, "x_lengths"), _checks.lengths(y_lengths, y, "y_lengths")
    rows = y.shape[:-1]
    if v is None:
        v2 = y.new_ones(rows + (1,))
    else:
        _checks.values(v, rows, y, "v")
        v2 = v[..., None] if v.dim() == len(rows) else v
    if y_mask is not None:
        v2 = v2 * y_mask[..., None]
    mask = padded(x_mask, y_mask, x, y)
    s = _KernelSum.apply(x, y, v2, bandwidths(sigma, kernel, x, y, masks=(x_mask, y_mask)), mask, kernel, backend)[0]
    if x_mask is not None:
        s = s * x_mask[..., None]
    return s if v is not None and v.dim() > len(rows) else s[..., 0]
