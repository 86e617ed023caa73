"""The plain-torch reference: the test oracle (run it in float64) and a real backend ("torch").

It materialises the N x M kernel matrix, so it is for small problems, any device and float64. Every
backend implements the same three primitives with this contract (C++ schemas in csrc/ops.cpp):

    gram(x, y, params, kernel, derivative)                -> K_ij = k(r2_ij), or g(r2_ij) when derivative
    pair_reduce(x, y, v, a, params, kernel, exclude_diagonal)
                                                          -> (S, G), float64
        S_i = sum_j k_ij v_j                    (N, p)
        G_i = sum_j g_ij (a_i . v_j) (x_i - y_j)  (N, d); shape (0, d) when a is None
    quad_form(z, w, a, params, kernel, exclude_diagonal, row_sums)
                                                          -> (q, S, G), float64
        q_p = sum_ij w_ip k_ij w_jp              (P,)
        S_i = sum_j k_ij w_j                     (N, P); shape (0, P) unless row_sums
        G_i = sum_j g_ij (a_i . w_j) (z_i - z_j)  (N, d); shape (0, d) when a is None

kernel is one of kernels.PRIMITIVE_KERNELS. r2_ij = |x_i - y_j|^2; k, g and params as in
infovae_kernels/kernels.py (the points arrive prepared and the params clamped: the primitives do
neither). For the dot kernel (polynomial) g is replaced by h = dk/d(x.y) and G_i = -sum_j h_ij
(a_i . v_j) y_j: in every case G_i = -sum_j (a_i . v_j) dk(x_i, y_j)/dx_i. exclude_diagonal drops the
pairs i == j.
The Stein kernel's primitive, stein_form (q = W^T U W for the Langevin Stein kernel U), is at the end of
this file; unlike the three above it reduces blocks of rows and never materialises n x n.
float16/bfloat16 compute in float32; float32 and float64 in their own precision. This backend computes
r2 from coordinate differences (torch.cdist without its matmul shortcut) for d <= 64, under
torch.compile, for laplacian and energy, and wherever the expansion would be lossy
(kernels.LOSSY_TOLERANCE); above d = 64 it
otherwise uses the expansion |x|^2 + |y|^2 - 2 x.y (one matmul, 10-20x faster there), clamped at 0 and
exactly 0 between a point and itself when x and y are the same points.

A batch of problems, x (B, N, d), y (B, M, d), v (B, M, p), a and w likewise, params (B, S'), gives every
output with a leading B (gram (B, N, M), q (B, P), S (B, N, P), G (B, N, d)): problem b with params[b],
in batched torch operations (the choice between differences and the expansion is made once for the
batch).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from infovae_kernels.kernels import (LOSSY_TOLERANCE, always_differences, compute_dtype, diagonal_mask,
                                     dot_kernel_and_weight, kappa, kernel_and_weight, stein_kernel, stein_radial,
                                     unit_roundoff)

DIFFERENCES_UP_TO_D = 64


def squared_distances(x: Tensor, y: Tensor, params: Tensor, kernel: str) -> Tensor:
    """r2_ij = |x_i - y_j|^2: from coordinate differences, or by the expansion where that is exact
    enough and faster (module docstring)."""
    if x.shape[-1] > DIFFERENCES_UP_TO_D and not torch.compiler.is_compiling() and not always_differences(kernel):
        xn, yn = x.square().sum(-1), y.square().sum(-1)
        lossy = unit_roundoff(x.dtype) * float(xn.max() + yn.max()) * float(kappa(kernel, params)) > LOSSY_TOLERANCE
        if not lossy:
            r2 = (xn[..., :, None] + yn[..., None, :] - 2.0 * (x @ y.mT)).clamp_min_(0.0)
            if x.shape == y.shape and torch.equal(x, y):
                r2.diagonal(dim1=-2, dim2=-1).fill_(0.0)
            return r2
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist").square()


def _kernel_matrices(x, y, params, kernel, exclude_diagonal):
    """x, y in the compute dtype, k and its weight g (h for the dot kernel) as (N, M) matrices."""
    ct = compute_dtype(x.dtype)
    xc, yc = x.to(ct), y.to(ct)
    if kernel == "polynomial":
        k, g = dot_kernel_and_weight(xc @ yc.mT, params)
    else:
        k, g = kernel_and_weight(squared_distances(xc, yc, params, kernel), params, kernel)
    if exclude_diagonal:
        k.diagonal(dim1=-2, dim2=-1).fill_(0.0)
        g.diagonal(dim1=-2, dim2=-1).fill_(0.0)
    return xc, yc, k, g


def _gradient_terms(x: Tensor, y: Tensor, w: Tensor, kernel: str) -> Tensor:
    """G_i: sum_j w_ij (x_i - y_j), or -sum_j w_ij y_j for the dot kernel."""
    if kernel == "polynomial":
        return -(w @ y)
    return x * w.sum(-1, keepdim=True) - w @ y


def gram(x: Tensor, y: Tensor, params: Tensor, kernel: str, derivative: bool) -> Tensor:
    _, _, k, g = _kernel_matrices(x, y, params, kernel, False)
    return (g if derivative else k).to(x.dtype)


def pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], params: Tensor, kernel: str,
                exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    xc, yc, k, g = _kernel_matrices(x, y, params, kernel, exclude_diagonal)
    vc = v.to(xc.dtype)
    s = (k @ vc).double()
    if a is None:
        return s, x.new_zeros(x.shape[:-2] + (0, x.shape[-1]), dtype=torch.float64)
    return s, _gradient_terms(xc, yc, g * (a.to(xc.dtype) @ vc.mT), kernel).double()


def quad_form(z: Tensor, w: Tensor, a: Optional[Tensor], params: Tensor, kernel: str, exclude_diagonal: bool,
              row_sums: bool) -> tuple[Tensor, Tensor, Tensor]:
    zc, _, k, g = _kernel_matrices(z, z, params, kernel, exclude_diagonal)
    wc = w.to(k.dtype)
    kw = k @ wc
    q = (kw * wc).sum(-2).double()
    s = kw.double() if row_sums else z.new_zeros(z.shape[:-2] + (0, w.shape[-1]), dtype=torch.float64)
    if a is None:
        return q, s, z.new_zeros(z.shape[:-2] + (0, z.shape[-1]), dtype=torch.float64)
    return q, s, _gradient_terms(zc, zc, g * (a.to(zc.dtype) @ wc.mT), kernel).double()


#: Pairs per block of rows of stein_form (rows = STEIN_BLOCK_PAIRS // n).
STEIN_BLOCK_PAIRS = 1 << 21


def stein_blocks(n: int):
    """(start, end) of the blocks of rows stein_form and the KSD's backward sweep."""
    rows = max(1, min(n, STEIN_BLOCK_PAIRS // max(n, 1)))
    return [(start, min(n, start + rows)) for start in range(0, n, rows)]


def stein_form(x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str, exclude_diagonal: bool) -> Tensor:
    """q_p = sum_ij w_ip u(x_i, x_j) w_jp (P,) float64 for the Langevin Stein kernel u of the base `kernel`
    ("imq" | "rbf"), params = [beta, c, sigma_1, ...] (kernels.stein_kernel; the points centred). Unlike
    the other primitives of this backend it never materialises the n x n matrix: blocks of rows against
    all points, each block's products accumulated in float64."""
    ct = compute_dtype(x.dtype)
    xc, sc, wc = x.to(ct), s.to(ct), w.to(ct)
    beta, c = float(params[0]), float(params[1])
    sigmas = params[2:]
    n = x.shape[0]
    q = torch.zeros(w.shape[1], dtype=torch.float64, device=x.device)
    for start, end in stein_blocks(n):
        mask = diagonal_mask(end - start, n, start, x.device)
        u = stein_kernel(xc[start:end], sc[start:end], xc, sc, sigmas, kernel, beta, c, diagonal=mask)
        if exclude_diagonal:
            u = u.masked_fill(mask, 0.0)
        q += ((u @ wc) * wc[start:end]).sum(0, dtype=torch.float64)
    return q


def stein_thin(x: Tensor, s: Tensor, objective: Tensor, params: Tensor, kernel: str, steps: int):
    """`steps` steps of greedy Stein thinning (ops/stein_thinning.py): each picks the objective's first
    argmin j and adds 2 u(x_i, x_j) to entry i, from the new point's products with every point (one
    (n, 2d) x (2d, 4) matrix product) and elementwise terms. (chosen (steps,) int64, objective)."""
    beta, c, sigmas = float(params[0]), float(params[1]), params[2:]
    d = x.shape[1]
    objective = objective.clone()
    xn, xs = x.square().sum(1), (x * s).sum(1)
    both = torch.cat([x, s], 1)
    chosen = []
    for _ in range(steps):
        j = int(torch.argmin(objective))
        chosen.append(j)
        xj, sj = x[j], s[j]
        # columns: x.x_j, x.s_j, s.x_j, s.s_j
        prods = both @ torch.stack([torch.cat([xj, torch.zeros_like(xj)]), torch.cat([sj, torch.zeros_like(sj)]),
                                    torch.cat([torch.zeros_like(xj), xj]), torch.cat([torch.zeros_like(sj), sj])], 1)
        r2 = (xn + xn[j] - 2.0 * prods[:, 0]).clamp_min_(0.0)
        r2[j] = 0.0
        cross = prods[:, 1] - xs[j] - xs + prods[:, 2]  # (s_j - s_i).(x_i - x_j)
        phi, d1, d2 = stein_radial(r2, sigmas, kernel, beta, c)
        objective += 2.0 * (phi * prods[:, 3] + 2.0 * d1 * cross - (2.0 * d) * d1 - 4.0 * d2 * r2)
    return torch.tensor(chosen, dtype=torch.int64, device=x.device), objective
