"""mmd_power: the unbiased MMD^2 and its variance under H1 in O(N) memory, differentiable in x and y.

For paired samples x, y (n points each), H_ij = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(y_i, x_j)
and its row sums h_i = sum_j H_ij; with Z = [X; Y] and the columns w = ([1; 0], [0; 1]) these are four
blocks of quad_form's row sums S = K w:  h = S_x[:, 0] + S_y[:, 1] - S_x[:, 1] - S_y[:, 0]. Then

    MMD_u^2     = (sum K_xx - tr) / (n (n-1)) + (sum K_yy - tr) / (n (n-1)) - 2 sum K_xy / n^2
    sigma_H1^2  = 4/n^3 sum_i h_i^2 - 4/n^4 (sum_i h_i)^2          (Liu et al. 2020, eq. 5 / their code)

Both are smooth functions of S. The gradient of any L(S) follows from dL/dS = U: L = sum_ij (U_i . w_j)
k_ij over both orders of each pair, so dL/dz_i = -sum_j g_ij (U_i . w_j + w_i . U_j)(z_i - z_j): one
quad_form with columns [w, U] and a = [U, w]. Forward and backward are one symmetric pass each; a
bandwidth that requires grad gets dL/dsigma_s = -(1/sigma_s) sum_i z_i . dL^(s)/dz_i (_common.bandwidth_grad;
one more pass per scale when there are several).

mmd2 and h are linear in the kernel and sigma_H1^2 is a function of h alone, so the op is two pieces:
mmd_terms (one kernel's (mmd2, h), the fused pass) and power_from_terms ((mmd2, h) -> MMDPower). A sum of
kernels k = sum_c a_c k_c, each on its own feature map, is sum_c a_c mmd_terms_c fed to power_from_terms
(drift.DeepKernel); mmd_power is the one-kernel case.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.ops._common import bandwidth_grad, bandwidths, no_double_backward, prepared_pooled, primitives


class _RowSums(torch.autograd.Function):
    """S = K(z, z) w (float64), differentiable in z (prepared points; dz in their units) and sigmas."""

    @staticmethod
    def forward(ctx, z, w, sigmas, params, name, ops):
        _, s, _ = ops.quad_form(z, w, None, params, name, False, True)
        ctx.save_for_backward(z, w, sigmas, params)
        ctx.args = (name, ops)
        return s

    @staticmethod
    def backward(ctx, u):
        no_double_backward("mmd_power", u)
        z, w, sigmas, params = ctx.saved_tensors
        name, ops = ctx.args
        cols = torch.cat([w, u.to(z.dtype)], 1)
        a = torch.cat([u.to(z.dtype), w], 1)
        g = ops.quad_form(z, cols, a, params, name, False, False)[2]
        dsigma = None
        if ctx.needs_input_grad[2]:
            dsigma = bandwidth_grad(sigmas, params, g, lambda p: ops.quad_form(z, cols, a, p, name, False, False)[2],
                                    lambda gp: -(z.double() * gp).sum())  # sum_i z_i . dL/dz_i, dL/dz = -G
        return -g.to(z.dtype), None, dsigma, None, None, None


def _trace(kernel: kernels.Kernel, params: Tensor, xs: Tensor, ys: Tensor) -> Tensor:
    """sum_i k(x_i, x_i) (= sum_i k(y_i, y_i) for distance kernels: k(0)); the two traces summed."""
    if kernels.is_dot(kernel):
        k, _ = kernels.dot_kernel_and_weight(torch.cat([xs, ys]).double().square().sum(1), params)
        return k.sum()
    k0, _ = kernels.kernel_and_weight(torch.zeros(1, dtype=torch.float64, device=xs.device), params, kernel)
    return 2 * xs.shape[0] * k0[0]


class MMDPower(NamedTuple):
    """mmd2: unbiased MMD^2; variance: its variance under H1 (sigma_H1^2); criterion = mmd2 / sqrt(variance + eps)."""

    mmd2: Tensor
    variance: Tensor
    criterion: Tensor


class MMDTerms(NamedTuple):
    """What mmd_power's statistics are made of, for one kernel: mmd2, the unbiased MMD^2 (0-dim), and h, the
    row sums h_i = sum_j H_ij (n,), both float64. Both are linear in the kernel: for k = sum_c a_c k_c,
    mmd2 = sum_c a_c mmd2_c and h = sum_c a_c h_c, so a sum of kernels (on different feature maps, even) is
    one mmd_terms call per term, combined, then power_from_terms."""

    mmd2: Tensor
    h: Tensor


def mmd_terms(x: Tensor, y: Tensor, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = None,
              backend: str = "auto") -> MMDTerms:
    """MMDTerms (mmd2, h) of paired samples x, y (n, d) each, from one fused pass (O(n d) memory),
    differentiable in x, y and a tensor sigma; arguments as in mmd_power."""
    _checks.points(x, y)
    kernel = _checks.kernel(kernel)
    n = x.shape[0]
    if y.shape[0] != n or n < 2:
        raise ValueError(f"mmd_power needs paired samples of equal size >= 2, got {n} and {y.shape[0]} points")
    ops = primitives(backend, x.device)
    sigmas = bandwidths(sigma, kernel, x, y)
    z, scale, params = prepared_pooled(x, y, sigmas, kernel)  # differentiable through centring and scaling
    xs, ys = z[:n], z[n:]
    w = torch.zeros(2 * n, 2, dtype=z.dtype, device=z.device)
    w[:n, 0], w[n:, 1] = 1.0, 1.0
    s = _RowSums.apply(z, w, sigmas, params, kernels.primitive_name(kernel), ops)
    sxx, sxy, syx, syy = s[:n, 0], s[:n, 1], s[n:, 0], s[n:, 1]
    trace = _trace(kernel, params, xs, ys)
    nf = float(n)
    mmd2 = (sxx.sum() + syy.sum() - trace) / (nf * (nf - 1.0)) - 2.0 * sxy.sum() / (nf * nf)
    return MMDTerms(mmd2, sxx + syy - sxy - syx)


def power_from_terms(mmd2: Tensor, h: Tensor, eps: float = 1e-8) -> MMDPower:
    """MMDPower from MMDTerms (of one kernel, or combined over a sum of kernels): sigma_H1^2 =
    4/n^3 sum h_i^2 - 4/n^4 (sum h_i)^2 and the criterion mmd2 / sqrt(sigma_H1^2 + eps); differentiable."""
    nf = float(h.shape[0])  # n**4 overflows int64 past n = 55,108
    variance = 4.0 * h.square().sum() / nf**3 - 4.0 * h.sum().square() / nf**4
    return MMDPower(mmd2, variance, mmd2 / torch.sqrt(variance.clamp_min(0.0) + eps))


def mmd_power(x: Tensor, y: Tensor, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = None, eps: float = 1e-8,
              backend: str = "auto") -> MMDPower:
    """Unbiased MMD^2 of paired samples x, y (n, d) each, its variance under H1 and the test-power
    criterion mmd2 / sqrt(variance + eps) (Sutherland et al. 2017; Liu et al. 2020), all float64 0-dim
    tensors differentiable in x, y and a tensor sigma (train features phi(x), or the bandwidth, through
    them; kernel and sigma as in ik.mmd). O(n d) memory: the row sums of the n x n blocks come from one
    fused pass; the matrices are never built. (mmd_terms + power_from_terms.)"""
    terms = mmd_terms(x, y, kernel=kernel, sigma=sigma, backend=backend)
    return power_from_terms(terms.mmd2, terms.h, eps)
