"""rbf_gram: the Gram matrix K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), fused distance + exp.

Forward is gram(x, y). Backward, with W = grad_out * g (g = gram(x, y, derivative=True) = -2 dK/dr2):
    dL/dx_i = -sum_j W_ij (x_i - y_j),    dL/dy_j = sum_i W_ij (x_i - y_j),
two matrix products on the (N, M) matrix this op materialises anyway. A bandwidth that requires grad
gets dL/dsigma_s = -(1/sigma_s)(sum_i x_i . dL^(s)/dx_i + sum_j y_j . dL^(s)/dy_j) (_common.bandwidth_grad).
A batch (B, N, d) gives (B, N, M) from one gram call; a padded one has 0 outside each problem's block.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, no_double_backward, padded, prepared, primitives


class _RBFGram(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, y, sigmas, mask, backend):
        xs, ys, scale, params = prepared(x, y, sigmas, "rbf", mask)
        return primitives(backend, x.device).gram(xs, ys, params, "rbf", False).to(x.dtype), xs, ys, scale, params

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(*output[1:])
        ctx.save_for_backward(*output[1:], inputs[2])
        ctx.ops = primitives(inputs[4], inputs[0].device)

    @staticmethod
    def backward(ctx, grad, *_):
        no_double_backward("rbf_gram", grad)
        xs, ys, scale, params, sigmas = ctx.saved_tensors
        need_x, need_y, need_sigma = ctx.needs_input_grad[:3]

        def point_grads(p, rows=True, cols=True):  # dL/dx', dL/dy' (prepared units) for params p
            w = grad.to(xs.dtype) * ctx.ops.gram(xs, ys, p, "rbf", True).to(xs.dtype)
            return (w @ ys - xs * w.sum(-1, keepdim=True) if rows else None,
                    w.mT @ xs - ys * w.sum(-2)[..., None] if cols else None)

        gx, gy = point_grads(params, need_x or need_sigma, need_y or need_sigma)
        dsigma = None
        if need_sigma:
            dsigma = bandwidth_grad(sigmas, params, (gx, gy), point_grads,
                                    lambda t: (xs * t[0]).sum((-2, -1), dtype=torch.float64)
                                    + (ys * t[1]).sum((-2, -1), dtype=torch.float64))
            dsigma = dsigma.sum_to_size(sigmas.shape)  # a bandwidth shared by a batch: summed over problems
        per_scale = scale[..., None, None]
        dx = (gx / per_scale).to(grad.dtype) if need_x else None
        dy = (gy / per_scale).to(grad.dtype) if need_y else None
        return dx, dy, dsigma, None, None


def rbf_gram(x: Tensor, y: Optional[Tensor] = None, *, sigma: _checks.Sigma = None,
             x_lengths: Optional[Tensor] = None, y_lengths: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), shape (N, M) (y defaults to x); fused distance + exp.
    Differentiable in x, y and a tensor sigma (None means 1.0; see ik.mmd). A batch x (B, N, d),
    y (B, M, d) gives (B, N, M), per-problem sigma and x_lengths / y_lengths as in ik.mmd (a padded
    problem's rows and columns outside its lengths are 0)."""
    _checks.points(x, y, batch=True)
    if y is None:
        y, y_lengths = x, x_lengths
    x_mask, y_mask = _checks.lengths(x_lengths, x, "x_lengths"), _checks.lengths(y_lengths, y, "y_lengths")
    k = _RBFGram.apply(x, y, bandwidths(sigma, "rbf", x, y, masks=(x_mask, y_mask)), padded(x_mask, y_mask, x, y),
                       backend)[0]
    if x_mask is not None:
        k = k * x_mask[..., :, None]
    if y_mask is not None:
        k = k * y_mask[..., None, :]
    return k
