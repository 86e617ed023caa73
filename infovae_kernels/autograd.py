"""The public ops as torch.library custom ops (namespace infovae_kernels::), each a composition of one
backend's three primitives (reference.py documents them), with its backward registered once here for
every backend.

- mmd: value and gradient come out of the same fused pass. Without gradients, one symmetric pass over
  the pooled set Z = [X; Y] (quad_form); with them, pair_reduce passes that also return
  G_i = sum_j g_ij w_j (x_i - y_j), from which
      dMMD^2/dx_i = w_i (-2 c_xx G_i(X, X) + 2 G_i(X, Y)),  c_xx = 1 (biased) or 1/(1 - sum w^2) (unbiased).
  The op returns those gradients beside the value; backward only scales them by grad_output.
- kernel_sum: S = K v; backward by three more passes (dx, dy from G, dv = K^T grad).
- rbf_gram: the matrix; backward in plain torch from the grad matrix.
Inputs are centred on their pooled mean before the kernels see them (translation invariance; it
shrinks norms and the cancellation in |x|^2 + |y|^2 - 2 x.y).
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from infovae_kernels import backends
from infovae_kernels.backends import reference


def _centred(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    ct = reference.compute_dtype(x.dtype)
    mean = (x.sum(0, dtype=torch.float64) + y.sum(0, dtype=torch.float64)) / (x.shape[0] + y.shape[0])
    mean = mean.to(ct)
    return x.to(ct) - mean, y.to(ct) - mean


def _no_double_backward(name: str) -> None:
    if torch.is_grad_enabled():
        raise NotImplementedError(f"second derivatives of {name} are not implemented "
                                  "(backward was called with create_graph=True)")


# ----------------------------------------------------------------------------------------------- mmd

@torch.library.custom_op("infovae_kernels::mmd", mutates_args=())
def mmd_op(x: Tensor, y: Tensor, wx: Tensor, wy: Tensor, sigmas: List[float], kernel: str,
           unbiased: bool, backend: str, need_grad: List[bool]) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(MMD^2, dx, dy, dwx, dwy); a gradient not asked for in need_grad is an empty tensor."""
    ops = backends.resolve(backend, x.device)[1]
    xc, yc = _centred(x, y)
    wx64, wy64 = wx.double(), wy.double()
    cxx = 1.0 / (1.0 - wx64.square().sum()) if unbiased else wx64.new_tensor(1.0)
    cyy = 1.0 / (1.0 - wy64.square().sum()) if unbiased else wy64.new_tensor(1.0)
    gx_needed, gy_needed, gwx_needed, gwy_needed = need_grad

    if not any(need_grad):
        z = torch.cat([xc, yc])
        n, m = x.shape[0], y.shape[0]
        if not unbiased:
            w = torch.cat([wx64, -wy64]).to(z.dtype)[:, None]
            value = ops.quad_form(z, w, sigmas, kernel, False)[0]
        else:
            zeros_x, zeros_y = wx64.new_zeros(n), wy64.new_zeros(m)
            w = torch.stack([torch.cat([wx64, zeros_y]), torch.cat([zeros_x, wy64]),
                             torch.cat([wx64, wy64])], 1).to(z.dtype)
            qxx, qyy, q_all = ops.quad_form(z, w, sigmas, kernel, True).unbind()
            qxy = 0.5 * (q_all - qxx - qyy)
            value = cxx * qxx + cyy * qyy - 2.0 * qxy
        return (value.to(x.dtype),) + tuple(x.new_empty(0) for _ in range(4))

    ct = xc.dtype
    wxc, wyc = wx64.to(ct)[:, None], wy64.to(ct)[:, None]
    ones_x, ones_y = xc.new_ones(x.shape[0], 1), yc.new_ones(y.shape[0], 1)
    sxx, gxx = ops.pair_reduce(xc, xc, wxc, ones_x if gx_needed else None, sigmas, kernel, unbiased)
    sxy, gxy = ops.pair_reduce(xc, yc, wyc, ones_x if gx_needed else None, sigmas, kernel, False)
    syy, gyy = ops.pair_reduce(yc, yc, wyc, ones_y if gy_needed else None, sigmas, kernel, unbiased)
    qxx, qyy, qxy = wx64 @ sxx[:, 0], wy64 @ syy[:, 0], wx64 @ sxy[:, 0]
    value = cxx * qxx + cyy * qyy - 2.0 * qxy

    dx, dy, dwx, dwy = (x.new_empty(0) for _ in range(4))
    if gx_needed:
        dx = (wx64[:, None] * (2.0 * gxy - 2.0 * cxx * gxx)).to(x.dtype)
    if gy_needed or gwy_needed:
        syx, gyx = ops.pair_reduce(yc, xc, wxc, ones_y if gy_needed else None, sigmas, kernel, False)
        if gy_needed:
            dy = (wy64[:, None] * (2.0 * gyx - 2.0 * cyy * gyy)).to(y.dtype)
        if gwy_needed:
            dwy = 2.0 * cyy * syy[:, 0] - 2.0 * syx[:, 0]
            if unbiased:
                dwy = dwy + 2.0 * qyy * cyy.square() * wy64
            dwy = dwy.to(wy.dtype)
    if gwx_needed:
        dwx = 2.0 * cxx * sxx[:, 0] - 2.0 * sxy[:, 0]
        if unbiased:
            dwx = dwx + 2.0 * qxx * cxx.square() * wx64
        dwx = dwx.to(wx.dtype)
    return value.to(x.dtype), dx, dy, dwx, dwy


@mmd_op.register_fake
def _(x, y, wx, wy, sigmas, kernel, unbiased, backend, need_grad):
    shapes = (x.shape, y.shape, wx.shape, wy.shape)
    likes = (x, y, wx, wy)
    grads = tuple(like.new_empty(shape) if need else x.new_empty(0)
                  for need, shape, like in zip(need_grad, shapes, likes))
    return (x.new_empty(()),) + grads


def _mmd_setup(ctx, inputs, output):
    ctx.grads = output[1:]
    ctx.mark_non_differentiable(*output[1:])


def _mmd_backward(ctx, grad_value, *unused):
    _no_double_backward("mmd")
    return tuple(grad_value * g if g.numel() else None for g in ctx.grads) + (None,) * 5


mmd_op.register_autograd(_mmd_backward, setup_context=_mmd_setup)


# ---------------------------------------------------------------------------------------- kernel_sum

@torch.library.custom_op("infovae_kernels::kernel_sum", mutates_args=())
def kernel_sum_op(x: Tensor, y: Tensor, v: Tensor, sigmas: List[float], kernel: str, backend: str) -> Tensor:
    """S_i = sum_j k(x_i, y_j) v_j, shape (N, p), in x's dtype."""
    ops = backends.resolve(backend, x.device)[1]
    xc, yc = _centred(x, y)
    s, _ = ops.pair_reduce(xc, yc, v.to(xc.dtype), None, sigmas, kernel, False)
    return s.to(x.dtype)


@kernel_sum_op.register_fake
def _(x, y, v, sigmas, kernel, backend):
    return x.new_empty((x.shape[0], v.shape[1]))


def _kernel_sum_setup(ctx, inputs, output):
    x, y, v, sigmas, kernel, backend = inputs
    ctx.save_for_backward(x, y, v)
    ctx.args = (sigmas, kernel, backend)


def _kernel_sum_backward(ctx, grad):
    _no_double_backward("kernel_sum")
    x, y, v = ctx.saved_tensors
    sigmas, kernel, backend = ctx.args
    need_x, need_y, need_v = ctx.needs_input_grad[:3]
    ops = backends.resolve(backend, x.device)[1]
    xc, yc = _centred(x, y)
    vc, gc = v.to(xc.dtype), grad.to(xc.dtype)
    dx = dy = dv = None
    if need_x:  # dL/dx_i = -sum_j g_ij (grad_i . v_j)(x_i - y_j)
        dx = -ops.pair_reduce(xc, yc, vc, gc, sigmas, kernel, False)[1].to(x.dtype)
    if need_y or need_v:  # dL/dy_j = -sum_i g_ij (v_j . grad_i)(y_j - x_i);  dL/dv_j = sum_i k_ij grad_i
        s, g = ops.pair_reduce(yc, xc, gc, vc if need_y else None, sigmas, kernel, False)
        dy = -g.to(y.dtype) if need_y else None
        dv = s.to(v.dtype) if need_v else None
    return dx, dy, dv, None, None, None


kernel_sum_op.register_autograd(_kernel_sum_backward, setup_context=_kernel_sum_setup)


# ------------------------------------------------------------------------------------------ rbf_gram

@torch.library.custom_op("infovae_kernels::rbf_gram", mutates_args=())
def rbf_gram_op(x: Tensor, y: Tensor, sigmas: List[float], backend: str) -> Tensor:
    """K_ij = sum_s exp(-|x_i - y_j|^2 / (2 sigma_s^2)), in x's dtype."""
    ops = backends.resolve(backend, x.device)[1]
    xc, yc = _centred(x, y)
    return ops.rbf_gram(xc, yc, sigmas).to(x.dtype)


@rbf_gram_op.register_fake
def _(x, y, sigmas, backend):
    return x.new_empty((x.shape[0], y.shape[0]))


def _rbf_gram_setup(ctx, inputs, output):
    x, y, sigmas, backend = inputs
    ctx.save_for_backward(x, y)
    ctx.sigmas = sigmas


def _rbf_gram_backward(ctx, grad):
    _no_double_backward("rbf_gram")
    x, y = ctx.saved_tensors
    xc, yc = _centred(x, y)
    r2 = reference.squared_distances(xc, yc)
    _, g = reference.kernel_and_weight(r2, ctx.sigmas, "rbf", x.shape[1])
    w = grad.to(g.dtype) * g  # dL/dx_i = -sum_j w_ij (x_i - y_j)
    dx = (w @ yc - xc * w.sum(1, keepdim=True)).to(x.dtype) if ctx.needs_input_grad[0] else None
    dy = (w.T @ xc - yc * w.sum(0)[:, None]).to(y.dtype) if ctx.needs_input_grad[1] else None
    return dx, dy, None, None


rbf_gram_op.register_autograd(_rbf_gram_backward, setup_context=_rbf_gram_setup)
