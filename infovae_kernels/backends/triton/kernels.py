"""Triton kernels of the "triton" backend: one tiled pairwise-reduction family plus a Gram writer.

A program owns a block of BLOCK_M rows of X and streams a range of Y tiles (BLOCK_N rows each)
through. Per tile:
  r2     squared distances, either directly from coordinate differences (DIRECT = d <= 16, a static
         loop over the d columns: no cancellation) or as |x|^2 + |y|^2 - 2 x.y from tl.dot over
         BLOCK_D-wide chunks of d, on inputs centred on the pooled mean (shrinks the norms and the
         cancellation), clamped at 0;
  k, g   kernel value and gradient weight g = -2 dk/dr2 summed over NS scales (constants in a small
         float64 tensor: rbf c_s = 1/(2 sigma_s^2), imq C_s = 2 d sigma_s^2);
  S      += k @ V[:, chunk]                      (tl.dot, or a row sum when p == 1)
  G      += x_i * sum_j w_ij - w @ Y[:, chunk]   with w_ij = g_ij (a_i . v_j)
Every tile partial is a float32 (float64 for float64 inputs) block that is added to a float64
accumulator, tile after tile in a fixed order; the program writes its float64 row partials to its own
slot of a (SPLIT, N, cols) buffer, which the caller sums in float64 in torch. No atomics anywhere, so a
given launch configuration is bitwise reproducible.

Grid: (row blocks, output-column chunks, SPLIT). The column chunk axis splits wide S (p > BLOCK_P) and
G (d > BLOCK_G) outputs over programs (the distances of a tile are then recomputed per chunk); the
SPLIT axis splits the Y tiles so that small N still fills the GPU.

All offsets are computed in int64.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _load_centered(ptr, rows, cols, n_rows, n_cols, stride, mean_ptr, CT: tl.constexpr):
    """Tile ptr[rows, cols] (row stride `stride`, unit column stride) upcast to CT, minus the mean;
    out-of-range entries are exactly 0."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    t = tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(CT)
    m = tl.load(mean_ptr + cols, mask=cols < n_cols, other=0.0).to(CT)
    return tl.where(mask, t - m[None, :], 0.0)


@triton.jit
def _load_tile(ptr, rows, cols, n_rows, n_cols, stride, CT: tl.constexpr):
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(CT)


@triton.jit
def _sqdist(x_ptr, y_ptr, mean_ptr, rows, cols, N, M, D, sx, sy,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
            DIRECT: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    if DIRECT > 0:
        r2 = tl.zeros([BLOCK_M, BLOCK_N], dtype=CT)
        for k in tl.static_range(DIRECT):
            xk = tl.load(x_ptr + rows * sx + k, mask=rows < N, other=0.0).to(CT)
            yk = tl.load(y_ptr + cols * sy + k, mask=cols < M, other=0.0).to(CT)
            diff = xk[:, None] - yk[None, :]
            r2 += diff * diff
    else:
        dot = tl.zeros([BLOCK_M, BLOCK_N], dtype=CT)
        xn = tl.zeros([BLOCK_M], dtype=CT)
        yn = tl.zeros([BLOCK_N], dtype=CT)
        for k0 in range(0, D, BLOCK_D):
            kk = k0 + tl.arange(0, BLOCK_D)
            xt = _load_centered(x_ptr, rows, kk, N, D, sx, mean_ptr, CT)
            yt = _load_centered(y_ptr, cols, kk, M, D, sy, mean_ptr, CT)
            dot += tl.dot(xt, tl.trans(yt), input_precision=PREC, out_dtype=CT)
            xn += tl.sum(xt * xt, axis=1)
            yn += tl.sum(yt * yt, axis=1)
        r2 = xn[:, None] + yn[None, :] - 2.0 * dot
        r2 = tl.maximum(r2, 0.0)
    return r2


@triton.jit
def _kernel_terms(r2, c_ptr, NS: tl.constexpr, KIND: tl.constexpr, CT: tl.constexpr):
    """k = sum_s k_s(r2), g = sum_s -2 dk_s/dr2. KIND 0: rbf, c_s = 1/(2 sigma_s^2); 1: imq, c_s = C_s."""
    k = tl.zeros(r2.shape, dtype=CT)
    g = tl.zeros(r2.shape, dtype=CT)
    for s in tl.static_range(NS):
        c = tl.load(c_ptr + s).to(CT)
        if KIND == 0:
            ks = tl.exp(-c * r2)
            k += ks
            g += (2.0 * c) * ks
        else:
            ks = c / (c + r2)
            k += ks
            g += (2.0 / c) * ks * ks
    return k, g


@triton.jit
def _times_v(k, v_ptr, cols, M, pc, P, sv, P_ONE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    """k (BM, BN) @ V[cols, pc] -> (BM, BLOCK_P) in CT (BLOCK_P == 1 when P_ONE); V has M rows."""
    if P_ONE:
        v = tl.load(v_ptr + cols * sv, mask=cols < M, other=0.0).to(CT)
        out = tl.sum(k * v[None, :], axis=1)[:, None]
    else:
        vt = _load_tile(v_ptr, cols, pc, M, P, sv, CT)
        out = tl.dot(k, vt, input_precision=PREC, out_dtype=CT)
    return out


@triton.jit
def pair_reduce_kernel(
    x_ptr, y_ptr, v_ptr, a_ptr, mean_ptr, c_ptr, s_ptr, g_ptr,
    N, M, D, P, sx, sy, sv, sa, tiles_per_split, n_s_chunks, n_g_chunks, N_KEY, M_KEY,
    NS: tl.constexpr, KIND: tl.constexpr, HAS_A: tl.constexpr, EXCL: tl.constexpr,
    DIRECT: tl.constexpr, P_ONE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_PA: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    row_ok = rows < N
    pc = pid_c * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    gc = pid_c * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)
    do_s = pid_c < n_s_chunks
    do_g = pid_c < n_g_chunks

    acc_s = tl.zeros([BLOCK_M, BLOCK_P], dtype=tl.float64)
    acc_g = tl.zeros([BLOCK_M, BLOCK_G], dtype=tl.float64)
    acc_w = tl.zeros([BLOCK_M], dtype=tl.float64)

    n_tiles = tl.cdiv(M, BLOCK_N)
    t_begin = pid_s * tiles_per_split
    t_end = tl.minimum(t_begin + tiles_per_split, n_tiles)
    for t in range(t_begin, t_end):
        cols = t * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        col_ok = cols < M
        r2 = _sqdist(x_ptr, y_ptr, mean_ptr, rows, cols, N, M, D, sx, sy,
                     BLOCK_M, BLOCK_N, BLOCK_D, DIRECT, CT, PREC)
        k, g = _kernel_terms(r2, c_ptr, NS, KIND, CT)
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCL:
            valid = valid & (rows[:, None] != cols[None, :])
        k = tl.where(valid, k, 0.0)
        if do_s:
            acc_s += _times_v(k, v_ptr, cols, M, pc, P, sv, P_ONE, CT, PREC).to(tl.float64)
        if HAS_A:
            if P_ONE:
                a0 = tl.load(a_ptr + rows * sa, mask=row_ok, other=0.0).to(CT)
                v0 = tl.load(v_ptr + cols * sv, mask=col_ok, other=0.0).to(CT)
                av = a0[:, None] * v0[None, :]
            else:
                av = tl.zeros([BLOCK_M, BLOCK_N], dtype=CT)
                for p0 in range(0, P, BLOCK_PA):
                    pp = p0 + tl.arange(0, BLOCK_PA)
                    at = _load_tile(a_ptr, rows, pp, N, P, sa, CT)
                    vt = _load_tile(v_ptr, cols, pp, M, P, sv, CT)
                    av += tl.dot(at, tl.trans(vt), input_precision=PREC, out_dtype=CT)
            w = tl.where(valid, g * av, 0.0)
            acc_w += tl.sum(w, axis=1).to(tl.float64)
            if do_g:
                yt = _load_centered(y_ptr, cols, gc, M, D, sy, mean_ptr, CT)
                acc_g += tl.dot(w, yt, input_precision=PREC, out_dtype=CT).to(tl.float64)

    if do_s:
        s_off = pid_s * N * P + rows[:, None] * P + pc[None, :]
        tl.store(s_ptr + s_off, acc_s, mask=row_ok[:, None] & (pc[None, :] < P))
    if HAS_A:
        if do_g:
            xt = _load_centered(x_ptr, rows, gc, N, D, sx, mean_ptr, CT).to(tl.float64)
            gval = xt * acc_w[:, None] - acc_g
            g_off = pid_s * N * D + rows[:, None] * D + gc[None, :]
            tl.store(g_ptr + g_off, gval, mask=row_ok[:, None] & (gc[None, :] < D))


@triton.jit
def quad_form_kernel(
    z_ptr, w_ptr, mean_ptr, c_ptr, q_ptr,
    N, D, P, sz, sw, n_blocks, SPLIT, N_KEY,
    NS: tl.constexpr, KIND: tl.constexpr, EXCL: tl.constexpr, DIRECT: tl.constexpr,
    P_ONE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """q partial of row block I: sum_{i in I} w_ip sum_{J >= I} f_J (K_IJ W_J)_ip, f_J = 1 if J == I else 2.
    Split s visits J = I + s, I + s + SPLIT, ...; writes q_part[s, I, pc]."""
    pid_m = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    rows = pid_m * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    row_ok = rows < N
    pc = pid_c * BLOCK_P + tl.arange(0, BLOCK_P).to(tl.int64)
    acc = tl.zeros([BLOCK, BLOCK_P], dtype=tl.float64)
    for jb in range(pid_m + pid_s, n_blocks, SPLIT):
        cols = jb * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        col_ok = cols < N
        r2 = _sqdist(z_ptr, z_ptr, mean_ptr, rows, cols, N, N, D, sz, sz,
                     BLOCK, BLOCK, BLOCK_D, DIRECT, CT, PREC)
        r2 = tl.where(rows[:, None] == cols[None, :], 0.0, r2)  # z against itself: exactly 0
        k, g = _kernel_terms(r2, c_ptr, NS, KIND, CT)
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCL:
            valid = valid & (rows[:, None] != cols[None, :])
        k = tl.where(valid, k, 0.0)
        part = _times_v(k, w_ptr, cols, N, pc, P, sw, P_ONE, CT, PREC).to(tl.float64)
        factor = tl.where(jb == pid_m, 1.0, 2.0).to(tl.float64)
        acc += part * factor
    if P_ONE:
        wi = tl.load(w_ptr + rows * sw, mask=row_ok, other=0.0).to(tl.float64)[:, None]
    else:
        wi = _load_tile(w_ptr, rows, pc, N, P, sw, CT).to(tl.float64)
    q = tl.sum(acc * wi, axis=0)
    tl.store(q_ptr + (pid_s * n_blocks + pid_m) * P + pc, q, mask=pc < P)


@triton.jit
def rbf_gram_kernel(
    x_ptr, y_ptr, mean_ptr, c_ptr, out_ptr, N, M, D, sx, sy, N_KEY, M_KEY,
    NS: tl.constexpr, DIRECT: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    r2 = _sqdist(x_ptr, y_ptr, mean_ptr, rows, cols, N, M, D, sx, sy,
                 BLOCK_M, BLOCK_N, BLOCK_D, DIRECT, CT, PREC)
    k, g = _kernel_terms(r2, c_ptr, NS, 0, CT)
    mask = (rows[:, None] < N) & (cols[None, :] < M)
    tl.store(out_ptr + rows[:, None] * M + cols[None, :], k.to(out_ptr.dtype.element_ty), mask=mask)
