"""The plain-torch reference: the test oracle (run it in float64) and a real backend ("torch").

It materialises the N x M kernel matrix, so it is for small problems, any device and float64. Every
fused backend implements the same three primitives with the same contract (see csrc/ops.h):

    rbf_gram(x, y, sigmas)                                      -> K, K_ij = sum_s exp(-r2_ij / (2 sigma_s^2))
    pair_reduce(x, y, v, a, sigmas, kernel, exclude_diagonal)   -> (S, G), float64
        S_i = sum_j k_ij v_j                      (N, p)
        G_i = sum_j g_ij (a_i . v_j) (x_i - y_j)  (N, d); shape (0, d) when a is None
    quad_form(z, w, sigmas, kernel, exclude_diagonal)           -> q (P,), float64, q_p = w_p^T K w_p

with r2_ij = |x_i - y_j|^2, g = -2 dk/dr2 (so grad_x k(x, y) = -g (x - y)), and
    rbf: k = sum_s exp(-r2 / (2 sigma_s^2)),  g = sum_s k_s / sigma_s^2
    imq: k = sum_s C_s / (C_s + r2), C_s = 2 d sigma_s^2 (the WAE convention),  g = sum_s 2 k_s^2 / C_s
float16/bfloat16 compute in float32; float32 and float64 in their own precision.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

KERNELS = ("rbf", "imq")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """r2_ij = |x_i|^2 + |y_j|^2 - 2 x_i . y_j, clamped at 0."""
    r2 = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2.0 * (x @ y.T)
    return r2.clamp_min_(0.0)


def kernel_and_weight(r2: Tensor, sigmas: Sequence[float], kernel: str, d: int) -> tuple[Tensor, Tensor]:
    """Kernel value k(r2) and gradient weight g(r2) = -2 dk/dr2, summed over scales."""
    k = torch.zeros_like(r2)
    g = torch.zeros_like(r2)
    for sigma in sigmas:
        if kernel == "rbf":
            ks = torch.exp(r2 * (-0.5 / sigma**2))
            k += ks
            g += ks / sigma**2
        elif kernel == "imq":
            c = 2.0 * d * sigma**2
            ks = c / (c + r2)
            k += ks
            g += 2.0 * ks * ks / c
        else:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return k, g


def _kernel_matrices(x, y, sigmas, kernel, exclude_diagonal):
    ct = compute_dtype(x.dtype)
    xc, yc = x.to(ct), y.to(ct)
    k, g = kernel_and_weight(squared_distances(xc, yc), sigmas, kernel, x.shape[1])
    if exclude_diagonal:
        k.fill_diagonal_(0.0)
        g.fill_diagonal_(0.0)
    return xc, yc, k, g


def rbf_gram(x: Tensor, y: Tensor, sigmas: Sequence[float]) -> Tensor:
    _, _, k, _ = _kernel_matrices(x, y, sigmas, "rbf", False)
    return k.to(x.dtype)


def pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], sigmas: Sequence[float],
                kernel: str, exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    xc, yc, k, g = _kernel_matrices(x, y, sigmas, kernel, exclude_diagonal)
    vc = v.to(xc.dtype)
    s = (k @ vc).double()
    if a is None:
        return s, x.new_zeros((0, x.shape[1]), dtype=torch.float64)
    w = g * (a.to(xc.dtype) @ vc.T)
    grad = xc * w.sum(1, keepdim=True) - w @ yc
    return s, grad.double()


def quad_form(z: Tensor, w: Tensor, sigmas: Sequence[float], kernel: str, exclude_diagonal: bool) -> Tensor:
    _, _, k, _ = _kernel_matrices(z, z, sigmas, kernel, exclude_diagonal)
    wc = w.to(k.dtype)
    return ((k @ wc) * wc).sum(0).double()
