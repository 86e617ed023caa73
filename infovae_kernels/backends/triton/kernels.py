"""Triton kernels of the "triton" backend: the three primitives, the two Stein primitives (stein_form_kernel,
stein_moments_kernel; their own per-pair helpers _stein_products and _stein_radial, at the end) plus two
fixed-order combine kernels.

Per-pair math lives in two jit helpers used by every kernel:
  _sqdist      r2 of a tile. d <= 16: coordinate differences, a loop over d. d > 16:
               |x|^2 + |y|^2 - 2 x.y by tl.dot over BLOCK_D-wide chunks, clamped at 0, unless the
               lossy-distance rule of infovae_kernels/kernels.py holds for the problem (each of a batch):
               (max_i |x_i|^2 + max_j |y_j|^2) * kappa > LOSSY_BOUND (= LOSSY_TOLERANCE / u, u the unit
               roundoff of the compute type); then coordinate differences (a loop over d). The rule is
               evaluated once per call and problem on the device (lossy_flag_kernel writes a flag per
               problem); each d > 16 call
               launches both compiled variants (constexpr DIFF 0 and 1, GATE = the flag value it serves),
               and the programs of the variant the flag does not select return at once: no host sync,
               and each variant compiles to clean code (a per-tile runtime branch between the two
               formulas cost ptxas minutes and spilled).
  _pair_terms  k(r2) and g(r2) = -2 dk/dr2 summed over the NS scales of a distance kernel (rbf, imq,
               laplacian, energy); params (float64, one per scale) are loaded from their pointer; g := 0
               where r2 == 0 (laplacian, energy: the subgradient at the kink; never inf).
  _dot_terms   the dot kernel (polynomial): k(x.y) and h = dk/d(x.y), params [gamma, coef, n] read in the
               kernel (the degree is a run-time loop bound: no host read, one binary for every degree).
  _tile_terms  one tile's (k, weight) for every kernel: KIND (pair_math.h's KernelKind, a constexpr) picks
               r2 (_sqdist) or the dot (_dotprod) and the formula at compile time, so the rbf and imq
               binaries are those of before the other kernels existed (same PTX; aot.py compiles them).
laplacian and energy always take r2 from coordinate differences (the op bodies launch only DIFF
variants for them: near r = 0 the expansion's error u |x|^2 in r2 would be sqrt(u) |x| in r). The
polynomial takes the dot by a loop over d (d <= 16) or tl.dot chunks, with no lossy rule (no
distances), and its gradient has no x_i sum_j W_ij term: G_i = -sum_j h_ij (a_i . v_j) y_j (the
quad_form column side likewise).

The points arrive centred and scaled (the op layer does it); nothing here centres again.

Batches: gram, pair_reduce, quad_form, lossy_flag and sum_rows kernels run B problems in one launch. The
batch is folded into grid axis 0 (_problem_and_block: program b * blocks + block); a program offsets its
pointers by the batch strides (sxb, ..., scb: params row b) and writes problem b's outputs and partials
(pair_reduce's partials (split, B, N, cols), quad_form's q_part (B, TQ * nb, P) and slots (2T, B, N, cols)).
The lossy flag is per problem (flag_ptr[b]). Within a problem the arithmetic and its order are those of
a 2-D call.

Summation order. Every reduction a result passes through has an order fixed by the tile shapes, which
are a function of (d, dtype) only, and by num_warps (it picks the register layout and so the reduction
tree of tl.sum / tl.dot), which is also fixed per (d, dtype). Only num_stages (software pipelining of
loads: the arithmetic is unchanged) is ever autotuned. Partials are stored, never added with atomics, and
combined in float64 by sum_slots_kernel / sum_rows_kernel in a fixed order. So results depend on
(shapes, dtype, flags) only: not on the tuned choice, the SM count or the process.

quad_form's symmetric sweep (quad_form_kernel): row tiles of B points, nb = cdiv(N, B) of them. Round t
(0 <= t <= nb // 2) pairs tile I with tile J = (I + t) mod nb, which visits every unordered tile pair
once (for even nb, round nb / 2 keeps I < J). A launch runs a block of T rounds, grid (nb, T). The
program (I, t) evaluates the B x B pairs once and:
  - adds q's partial sum_i w_i (K_IJ w_J)_i, times 2 when I != J, to q_part[t mod TQ, I] (no other
    program of the launch has that cell; TQ bounds q_part to about 2^22 cells whatever N);
  - adds the row part of S and G (rows of I) to slot t - t0 of a float64 slot buffer and the column
    part (rows of J, the pair's other side) to slot T + t - t0: within one launch no two programs write
    the same (slot, row), and launches are ordered, so the read-add-write needs no atomics.
has_s and has_g are runtime flags, not constexpr, and not specialised (do_not_specialize): the value-only
and the value+gradient calls run the same compiled kernel, so q is bitwise the same with and without
S / G.
"""

from __future__ import annotations

import triton
import triton.language as tl


# ------------------------------------------------------------------------------------ per-pair math

@triton.jit
def _kappa(c_ptr, NS: tl.constexpr, KIND: tl.constexpr):
    """Inverse squared length scale of the narrowest scale, float64: max c_s (rbf), max 1 / C_s (imq)."""
    kap = tl.load(c_ptr).to(tl.float64) * 0.0
    for s in tl.static_range(NS):
        c = tl.load(c_ptr + s).to(tl.float64)
        if KIND == 0:
            kap = tl.maximum(kap, c)
        else:
            kap = tl.maximum(kap, 1.0 / c)
    return kap


@triton.jit
def _pair_terms(r2, c_ptr, NS: tl.constexpr, KIND: tl.constexpr, CT: tl.constexpr):
    """k = sum_s k_s and g = -2 dk/dr2 (0 where r2 == 0) of a distance kernel (KIND as pair_math.h's
    KernelKind). 0 rbf: c_s = 1 / (2 sigma_s^2), k_s = exp(-c_s r2), g_s = 2 c_s k_s; 1 imq:
    C_s = 2 d sigma_s^2, k_s = C_s / (C_s + r2), g_s = 2 k_s^2 / C_s; 2 laplacian: c_s = 1 / sigma_s,
    k_s = exp(-c_s r), g = sum_s c_s k_s / r; 3 energy: [p], k = -p r, g = p / r (r = sqrt(r2); at
    r == 0 g is the subgradient 0, never inf)."""
    k = tl.zeros(r2.shape, dtype=CT)
    g = tl.zeros(r2.shape, dtype=CT)
    if KIND >= 2:
        r = tl.sqrt(r2)
    for s in tl.static_range(NS):
        c = tl.load(c_ptr + s).to(CT)
        if KIND == 0:
            e = tl.exp(-c * r2)
            k += e
            g += (2.0 * c) * e
        elif KIND == 1:
            ks = c / (c + r2)
            k += ks
            g += (2.0 / c) * ks * ks
        elif KIND == 2:
            e = tl.exp(-c * r)
            k += e
            g += c * e
        else:
            k -= c * r
            g += c
    if KIND >= 2:
        # r == 0 also where a subnormal r2 flushes to 0 in the GPU's sqrt: g 0 there too, never inf
        coincide = r == 0.0
        g = tl.where(coincide, 0.0, g / tl.where(coincide, 1.0, r))
    else:
        g = tl.where(r2 == 0.0, 0.0, g)
    return k, g


@triton.jit
def _dot_terms(dot, c_ptr, CT: tl.constexpr):
    """The polynomial kernel (KernelKind 4) of dot = x.y, params [gamma, coef, n]: t = gamma dot + coef,
    k = t^n and h = n gamma t^(n-1) (grad_x k = h y), t^(n-1) by n - 1 multiplications (n read at run
    time: one binary for every degree)."""
    gamma = tl.load(c_ptr).to(tl.float64)
    coef = tl.load(c_ptr + 1).to(CT)
    nf = tl.load(c_ptr + 2).to(tl.float64)
    t = dot * gamma.to(CT) + coef
    pw = tl.full(dot.shape, 1.0, CT)
    for i in range(1, nf.to(tl.int32)):
        pw = pw * t
    return pw * t, pw * (nf * gamma).to(CT)


@triton.jit
def _load_tile(ptr, rows, cols, n_rows, n_cols, stride, CT: tl.constexpr):
    """ptr[rows, cols] (row stride `stride`, unit column stride) as CT; out-of-range entries are 0."""
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    return tl.load(ptr + rows[:, None] * stride + cols[None, :], mask=mask, other=0.0).to(CT)


@triton.jit
def _load_col(ptr, rows, k, n_rows, stride, CT: tl.constexpr):
    return tl.load(ptr + rows * stride + k, mask=rows < n_rows, other=0.0).to(CT)


@triton.jit
def _sqdist(x_ptr, y_ptr, rows, cols, N, M, D, sx, sy, BM: tl.constexpr, BN: tl.constexpr,
            BLOCK_D: tl.constexpr, DIFF: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    """r2[i, j] = |x_rows[i] - y_cols[j]|^2 in CT. DIFF: from coordinate differences, a loop over the d
    columns (not unrolled: an unrolled loop hoists every column's loads and spills); else
    |x|^2 + |y|^2 - 2 x.y by tl.dot over BLOCK_D-wide chunks, clamped at 0."""
    if DIFF:
        r2 = tl.zeros([BM, BN], dtype=CT)
        for k in range(0, D):
            diff = _load_col(x_ptr, rows, k, N, sx, CT)[:, None] - _load_col(y_ptr, cols, k, M, sy, CT)[None, :]
            r2 += diff * diff
    else:
        dot = tl.zeros([BM, BN], dtype=CT)
        xn = tl.zeros([BM], dtype=CT)
        yn = tl.zeros([BN], dtype=CT)
        for k0 in range(0, D, BLOCK_D):
            kk = k0 + tl.arange(0, BLOCK_D)
            xt = _load_tile(x_ptr, rows, kk, N, D, sx, CT)
            yt = _load_tile(y_ptr, cols, kk, M, D, sy, CT)
            dot += tl.dot(xt, tl.trans(yt), input_precision=PREC, out_dtype=CT)
            xn += tl.sum(xt * xt, axis=1)
            yn += tl.sum(yt * yt, axis=1)
        r2 = tl.maximum(xn[:, None] + yn[None, :] - 2.0 * dot, 0.0)
    return r2


@triton.jit
def _dotprod(x_ptr, y_ptr, rows, cols, N, M, D, sx, sy, BM: tl.constexpr, BN: tl.constexpr,
             BLOCK_D: tl.constexpr, LOOP: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    """dot[i, j] = x_rows[i] . y_cols[j] in CT: a loop over the d columns (LOOP; d <= 16, the code shape of
    _sqdist's differences) or tl.dot over BLOCK_D-wide chunks."""
    dot = tl.zeros([BM, BN], dtype=CT)
    if LOOP:
        for k in range(0, D):
            dot += _load_col(x_ptr, rows, k, N, sx, CT)[:, None] * _load_col(y_ptr, cols, k, M, sy, CT)[None, :]
    else:
        for k0 in range(0, D, BLOCK_D):
            kk = k0 + tl.arange(0, BLOCK_D)
            xt = _load_tile(x_ptr, rows, kk, N, D, sx, CT)
            yt = _load_tile(y_ptr, cols, kk, M, D, sy, CT)
            dot += tl.dot(xt, tl.trans(yt), input_precision=PREC, out_dtype=CT)
    return dot


@triton.jit
def _tile_terms(x_ptr, y_ptr, c_ptr, rows, cols, N, M, D, sx, sy, NS: tl.constexpr, KIND: tl.constexpr,
                SELF: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BLOCK_D: tl.constexpr,
                DIFF: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    """(k, weight) of a BM x BN tile: distance kernels (KIND 0-3) k(r2) and g(r2), with r2(i, i) forced
    to 0 when SELF (x and y the same points, quad_form); the polynomial (KIND 4) k(x.y) and h(x.y), DIFF
    selecting the loop form of the dot. laplacian and energy always arrive with DIFF (the op bodies
    launch no expansion variant for them)."""
    if KIND == 4:
        dot = _dotprod(x_ptr, y_ptr, rows, cols, N, M, D, sx, sy, BM, BN, BLOCK_D, DIFF, CT, PREC)
        k, g = _dot_terms(dot, c_ptr, CT)
    else:
        r2 = _sqdist(x_ptr, y_ptr, rows, cols, N, M, D, sx, sy, BM, BN, BLOCK_D, DIFF, CT, PREC)
        if SELF:
            r2 = tl.where(rows[:, None] == cols[None, :], 0.0, r2)  # a point against itself: exactly 0
        k, g = _pair_terms(r2, c_ptr, NS, KIND, CT)
    return k, g


@triton.jit
def _gated_out(flag_ptr, GATE: tl.constexpr):
    """True when this launch is not the variant the lossy flag selects (GATE -1: ungated)."""
    if GATE < 0:
        return False
    return tl.load(flag_ptr) != GATE


@triton.jit
def _problem_and_block(pid, n_blocks):
    """(problem b, block) of a program id that folds the batch into its grid axis: pid = b * n_blocks + block."""
    pid = pid.to(tl.int64)
    return pid // n_blocks, pid % n_blocks


@triton.jit
def _max_sqnorm(x_ptr, N, D, sx, CT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    m = tl.zeros([BLOCK_R], dtype=CT)
    for r0 in range(0, N, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        acc = tl.zeros([BLOCK_R], dtype=CT)
        for c0 in range(0, D, BLOCK_C):
            t = _load_tile(x_ptr, rows, c0 + tl.arange(0, BLOCK_C), N, D, sx, CT)
            acc += tl.sum(t * t, axis=1)
        m = tl.maximum(m, acc)
    return tl.max(m, axis=0)


@triton.jit
def lossy_flag_kernel(x_ptr, y_ptr, c_ptr, flag_ptr, N, M, D, sxb, sx, syb, sy, scb,
                      NS: tl.constexpr, KIND: tl.constexpr, CT: tl.constexpr, LOSSY_BOUND: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """flag = 1 when (max_i |x_i|^2 + max_j |y_j|^2) * kappa > LOSSY_BOUND (= LOSSY_TOLERANCE / u): the
    expansion would lose the distance at the narrowest bandwidth, so the problem uses differences. One
    program per problem b of the batch (flag_ptr[b]), once per call (d > 16 only); the kernels then read
    their problem's flag: no host sync."""
    b = tl.program_id(0).to(tl.int64)
    x_ptr += b * sxb
    y_ptr += b * syb
    c_ptr += b * scb
    bound = (_max_sqnorm(x_ptr, N, D, sx, CT, BLOCK_R, BLOCK_C).to(tl.float64)
             + _max_sqnorm(y_ptr, M, D, sy, CT, BLOCK_R, BLOCK_C).to(tl.float64)) * _kappa(c_ptr, NS, KIND)
    tl.store(flag_ptr + b, (bound > LOSSY_BOUND).to(tl.int32))


# ------------------------------------------------------------------------------------ gram

@triton.jit
def gram_kernel(
    x_ptr, y_ptr, c_ptr, flag_ptr, out_ptr, N, M, D, sxb, sx, syb, sy, scb, N_KEY, M_KEY,
    NS: tl.constexpr, KIND: tl.constexpr, DERIV: tl.constexpr, DIFF: tl.constexpr,
    GATE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Program (b * row blocks + row block, column block): one tile of problem b's (N, M) output."""
    b, row_block = _problem_and_block(tl.program_id(0), tl.cdiv(N, BLOCK_M))
    if _gated_out(flag_ptr + b, GATE):
        return
    x_ptr += b * sxb
    y_ptr += b * syb
    c_ptr += b * scb
    out_ptr += b * N * M
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k, g = _tile_terms(x_ptr, y_ptr, c_ptr, rows, cols, N, M, D, sx, sy, NS, KIND, False, BLOCK_M, BLOCK_N,
                       BLOCK_D, DIFF, CT, PREC)
    out = g if DERIV else k
    mask = (rows[:, None] < N) & (cols[None, :] < M)
    tl.store(out_ptr + rows[:, None] * M + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------ pair_reduce

@triton.jit
def pair_reduce_kernel(
    x_ptr, y_ptr, v_ptr, a_ptr, c_ptr, flag_ptr, s_ptr, g_ptr,
    N, M, D, P, n_batch, sxb, sx, syb, sy, svb, sv, sab, sa, scb, tiles_per_split, n_s_chunks, n_g_chunks,
    N_KEY, M_KEY,
    NS: tl.constexpr, KIND: tl.constexpr, HAS_A: tl.constexpr, EXCL: tl.constexpr,
    DIFF: tl.constexpr, GATE: tl.constexpr, P_ONE: tl.constexpr, CT: tl.constexpr,
    PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_PA: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Program (b * row blocks + row block, output-column chunk, split s): rows of problem b's X against
    the Y tiles of split s, in order; S_i += k_ij v_j and G_i += g_ij (a_i . v_j) (x_i - y_j) accumulated
    in float64 across tiles; writes its float64 partials to s_part[s, b] / g_part[s, b] (combined by
    sum_slots_kernel)."""
    b, pid_m = _problem_and_block(tl.program_id(0), tl.cdiv(N, BLOCK_M))
    if _gated_out(flag_ptr + b, GATE):
        return
    x_ptr += b * sxb
    y_ptr += b * syb
    v_ptr += b * svb
    a_ptr += b * sab
    c_ptr += b * scb
    pid_c = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2).to(tl.int64)
    part = pid_s * n_batch + b
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
        k, g = _tile_terms(x_ptr, y_ptr, c_ptr, rows, cols, N, M, D, sx, sy, NS, KIND, False, BLOCK_M, BLOCK_N,
                           BLOCK_D, DIFF, CT, PREC)
        valid = row_ok[:, None] & col_ok[None, :]
        if EXCL:
            valid = valid & (rows[:, None] != cols[None, :])
        k = tl.where(valid, k, 0.0)
        if do_s:
            if P_ONE:
                vj = _load_col(v_ptr, cols, 0, M, sv, CT)
                acc_s += tl.sum(k * vj[None, :], axis=1)[:, None].to(tl.float64)
            else:
                vt = _load_tile(v_ptr, cols, pc, M, P, sv, CT)
                acc_s += tl.dot(k, vt, input_precision=PREC, out_dtype=CT).to(tl.float64)
        if HAS_A:
            if P_ONE:
                av = _load_col(a_ptr, rows, 0, N, sa, CT)[:, None] * _load_col(v_ptr, cols, 0, M, sv, CT)[None, :]
            else:
                av = tl.zeros([BLOCK_M, BLOCK_N], dtype=CT)
                for p0 in range(0, P, BLOCK_PA):
                    pp = p0 + tl.arange(0, BLOCK_PA)
                    at = _load_tile(a_ptr, rows, pp, N, P, sa, CT)
                    vt2 = _load_tile(v_ptr, cols, pp, M, P, sv, CT)
                    av += tl.dot(at, tl.trans(vt2), input_precision=PREC, out_dtype=CT)
            w = tl.where(valid, g * av, 0.0)
            if KIND != 4:
                acc_w += tl.sum(w, axis=1).to(tl.float64)
            if do_g:
                yt = _load_tile(y_ptr, cols, gc, M, D, sy, CT)
                acc_g += tl.dot(w, yt, input_precision=PREC, out_dtype=CT).to(tl.float64)

    if do_s:
        s_off = part * N * P + rows[:, None] * P + pc[None, :]
        tl.store(s_ptr + s_off, acc_s, mask=row_ok[:, None] & (pc[None, :] < P))
    if HAS_A:
        if do_g:
            if KIND == 4:  # the dot kernel: G_i = -sum_j h_ij (a_i . v_j) y_j
                g_off = part * N * D + rows[:, None] * D + gc[None, :]
                tl.store(g_ptr + g_off, -acc_g, mask=row_ok[:, None] & (gc[None, :] < D))
            else:
                xt = _load_tile(x_ptr, rows, gc, N, D, sx, CT).to(tl.float64)
                g_off = part * N * D + rows[:, None] * D + gc[None, :]
                tl.store(g_ptr + g_off, xt * acc_w[:, None] - acc_g, mask=row_ok[:, None] & (gc[None, :] < D))


# ------------------------------------------------------------------------------------ quad_form

@triton.jit
def _add_rows(ptr, slot, rows, cols, n_rows, n_cols, val):
    """ptr[slot, rows, cols] += val (float64 slot buffer of shape (slots, n_rows, n_cols))."""
    off = (slot * n_rows + rows[:, None]) * n_cols + cols[None, :]
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    old = tl.load(ptr + off, mask=mask, other=0.0)
    tl.store(ptr + off, old + val, mask=mask)


# The flags and the launch-block ints are never specialised (Triton would compile a separate binary for
# a value of 1): the value-only and the value+gradient launches must run the same binary.
@triton.jit(do_not_specialize=["t0", "n_rounds", "T", "TQ", "has_s", "has_g"])
def quad_form_kernel(
    z_ptr, w_ptr, a_ptr, c_ptr, flag_ptr, q_ptr, s_ptr, g_ptr,
    N, D, P, n_batch, szb, sz, swb, sw, sab, sa, scb, nb, t0, n_rounds, T, TQ, has_s, has_g, N_KEY,
    NS: tl.constexpr, KIND: tl.constexpr, EXCL: tl.constexpr, DIFF: tl.constexpr,
    GATE: tl.constexpr, P_ONE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr,
    B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """Program (b * nb + I, t - t0) of problem b's circulant sweep (module docstring). q_part:
    (B, TQ, nb, P), round t adds to row t mod TQ (launch blocks hold at most TQ rounds, in increasing t,
    so a cell is added to in the same order whatever the blocks); s_ptr: (2T, B, N, P) and
    g_ptr: (2T, B, N, D) float64 slot buffers, used when has_s / has_g."""
    b, I = _problem_and_block(tl.program_id(0), nb)
    lt = tl.program_id(1).to(tl.int64)
    t = t0 + lt
    J = (I + t) % nb
    if _gated_out(flag_ptr + b, GATE):
        return
    if t >= n_rounds:
        return
    if (2 * t == nb) & (J < I):  # even nb, last round: the pair (J, I) is the program (J, t)
        return
    z_ptr += b * szb
    w_ptr += b * swb
    a_ptr += b * sab
    c_ptr += b * scb
    q_ptr += b * TQ * nb * P
    rows = I * B + tl.arange(0, B).to(tl.int64)
    cols = J * B + tl.arange(0, B).to(tl.int64)
    row_ok = rows < N
    col_ok = cols < N
    k, g = _tile_terms(z_ptr, z_ptr, c_ptr, rows, cols, N, N, D, sz, sz, NS, KIND, True, B, B, BLOCK_D, DIFF,
                       CT, PREC)
    valid = row_ok[:, None] & col_ok[None, :]
    if EXCL:
        valid = valid & (rows[:, None] != cols[None, :])
    k = tl.where(valid, k, 0.0)
    g = tl.where(valid, g, 0.0)
    factor = tl.where(t == 0, 1.0, 2.0).to(tl.float64)
    off_diag = t > 0
    slot_r = lt * n_batch + b  # slot (lt, b) of the (2T, B) slots
    slot_c = (T + lt) * n_batch + b

    # q and S: row part (K_IJ W_J), column part (K_IJ^T W_I)
    if P_ONE:
        wi = _load_col(w_ptr, rows, 0, N, sw, CT)
        wj = _load_col(w_ptr, cols, 0, N, sw, CT)
        rs = tl.sum(k * wj[None, :], axis=1)
        qv = tl.sum(wi.to(tl.float64) * rs.to(tl.float64), axis=0) * factor
        q_cell = q_ptr + (t % TQ) * nb + I
        tl.store(q_cell, tl.load(q_cell) + qv)
        if has_s:
            zero = tl.arange(0, 1).to(tl.int64)
            _add_rows(s_ptr, slot_r, rows, zero, N, 1, rs.to(tl.float64)[:, None])
            if off_diag:
                cs = tl.sum(k * wi[:, None], axis=0)
                _add_rows(s_ptr, slot_c, cols, zero, N, 1, cs.to(tl.float64)[:, None])
    else:
        for p0 in range(0, P, BLOCK_P):
            pc = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
            Wi = _load_tile(w_ptr, rows, pc, N, P, sw, CT)
            Wj = _load_tile(w_ptr, cols, pc, N, P, sw, CT)
            rs = tl.dot(k, Wj, input_precision=PREC, out_dtype=CT)
            qv = tl.sum(Wi.to(tl.float64) * rs.to(tl.float64), axis=0) * factor
            q_cells = q_ptr + ((t % TQ) * nb + I) * P + pc
            tl.store(q_cells, tl.load(q_cells, mask=pc < P, other=0.0) + qv, mask=pc < P)
            if has_s:
                _add_rows(s_ptr, slot_r, rows, pc, N, P, rs.to(tl.float64))
                if off_diag:
                    cs = tl.dot(tl.trans(k), Wi, input_precision=PREC, out_dtype=CT)
                    _add_rows(s_ptr, slot_c, cols, pc, N, P, cs.to(tl.float64))

    # G: row i gets sum_j g_ij (a_i . w_j)(z_i - z_j), row j gets sum_i g_ij (a_j . w_i)(z_j - z_i)
    if has_g:
        if P_ONE:
            ai = _load_col(a_ptr, rows, 0, N, sa, CT)
            aj = _load_col(a_ptr, cols, 0, N, sa, CT)
            u = g * (ai[:, None] * _load_col(w_ptr, cols, 0, N, sw, CT)[None, :])
            v = g * (_load_col(w_ptr, rows, 0, N, sw, CT)[:, None] * aj[None, :])
        else:
            au = tl.zeros([B, B], dtype=CT)
            av = tl.zeros([B, B], dtype=CT)
            for p0 in range(0, P, BLOCK_P):
                pc = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
                Wi = _load_tile(w_ptr, rows, pc, N, P, sw, CT)
                Wj = _load_tile(w_ptr, cols, pc, N, P, sw, CT)
                Ai = _load_tile(a_ptr, rows, pc, N, P, sa, CT)
                Aj = _load_tile(a_ptr, cols, pc, N, P, sa, CT)
                au += tl.dot(Ai, tl.trans(Wj), input_precision=PREC, out_dtype=CT)
                av += tl.dot(Wi, tl.trans(Aj), input_precision=PREC, out_dtype=CT)
            u = g * au
            v = g * av
        if KIND != 4:
            ru = tl.sum(u, axis=1).to(tl.float64)
            cv = tl.sum(v, axis=0).to(tl.float64)
        for g0 in range(0, D, BLOCK_G):
            gc = g0 + tl.arange(0, BLOCK_G).to(tl.int64)
            Zi = _load_tile(z_ptr, rows, gc, N, D, sz, CT)
            Zj = _load_tile(z_ptr, cols, gc, N, D, sz, CT)
            if KIND == 4:  # the dot kernel: no (sum_j u_ij) z_i term
                grow = -tl.dot(u, Zj, input_precision=PREC, out_dtype=CT).to(tl.float64)
            else:
                grow = Zi.to(tl.float64) * ru[:, None] - tl.dot(u, Zj, input_precision=PREC,
                                                                out_dtype=CT).to(tl.float64)
            _add_rows(g_ptr, slot_r, rows, gc, N, D, grow)
            if off_diag:
                if KIND == 4:
                    gcol = -tl.dot(tl.trans(v), Zi, input_precision=PREC, out_dtype=CT).to(tl.float64)
                else:
                    gcol = Zj.to(tl.float64) * cv[:, None] - tl.dot(tl.trans(v), Zi, input_precision=PREC,
                                                                    out_dtype=CT).to(tl.float64)
                _add_rows(g_ptr, slot_c, cols, gc, N, D, gcol)


# ------------------------------------------------------------------------------------ combines

@triton.jit
def sum_slots_kernel(src_ptr, dst_ptr, n_slots, n_elems, BLOCK: tl.constexpr):
    """dst[e] = sum_s src[s, e], s = 0, 1, ... in order (float64): the fixed-order combine of partials."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < n_elems
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for s in range(0, n_slots):
        acc += tl.load(src_ptr + s * n_elems + offs, mask=mask, other=0.0)
    tl.store(dst_ptr + offs, acc, mask=mask)


@triton.jit
def sum_rows_kernel(src_ptr, dst_ptr, n_rows, n_cols, BLOCK: tl.constexpr):
    """dst[b, c] = sum_r src[b, r, c] (float64), program b * n_cols + c: BLOCK running sums over the rows
    in order, then one tree of fixed shape (a fixed launch configuration: never tuned)."""
    b, c = _problem_and_block(tl.program_id(0), n_cols)
    src_ptr += b * n_rows * n_cols
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for r0 in range(0, n_rows, BLOCK):
        r = r0 + tl.arange(0, BLOCK).to(tl.int64)
        acc += tl.load(src_ptr + r * n_cols + c, mask=r < n_rows, other=0.0)
    tl.store(dst_ptr + b * n_cols + c, tl.sum(acc, axis=0))


# ------------------------------------------------------------------------------------ Stein kernel
#
# u_ij = phi s_i.s_j + 2 phi' (s_j - s_i).(x_i - x_j) - 2 d phi' - 4 phi'' r2 (phi' = dphi/dr2) for a radial
# base phi(r2) (kernels.py's stein_kernel; csrc/cpu/stein.cpp is the fused CPU twin). params (float64):
# [beta, c, sigma_1, ..., sigma_NS]; RBF: phi = sum_s exp(-r2 / (2 sigma_s^2)), else (imq)
# phi = sum_s (c^2 + r2 / sigma_s^2)^beta.

@triton.jit
def _stein_products(x_ptr, s_ptr, rows, cols, N, D, stx, sts, BM: tl.constexpr, BN: tl.constexpr,
                    BLOCK_D: tl.constexpr, DIFF: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr):
    """(r2, s_i.s_j, (s_j - s_i).(x_i - x_j)) of a tile of the points x with their scores s. DIFF: from
    coordinate differences, a loop over d; else r2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j (clamped at 0) and the
    cross term x_i.s_j + s_i.x_j - x_i.s_i - x_j.s_j, the products by tl.dot over BLOCK_D-wide chunks.
    Pairs i == j: r2 and the cross term exactly 0."""
    ss = tl.zeros([BM, BN], dtype=CT)
    cross = tl.zeros([BM, BN], dtype=CT)
    if DIFF:
        r2 = tl.zeros([BM, BN], dtype=CT)
        for k in range(0, D):
            si = _load_col(s_ptr, rows, k, N, sts, CT)
            sj = _load_col(s_ptr, cols, k, N, sts, CT)
            dx = _load_col(x_ptr, rows, k, N, stx, CT)[:, None] - _load_col(x_ptr, cols, k, N, stx, CT)[None, :]
            r2 += dx * dx
            ss += si[:, None] * sj[None, :]
            cross += (sj[None, :] - si[:, None]) * dx
    else:
        xx = tl.zeros([BM, BN], dtype=CT)
        xn_i = tl.zeros([BM], dtype=CT)
        xn_j = tl.zeros([BN], dtype=CT)
        xs_i = tl.zeros([BM], dtype=CT)
        xs_j = tl.zeros([BN], dtype=CT)
        for k0 in range(0, D, BLOCK_D):
            kk = k0 + tl.arange(0, BLOCK_D)
            xi = _load_tile(x_ptr, rows, kk, N, D, stx, CT)
            xj = _load_tile(x_ptr, cols, kk, N, D, stx, CT)
            si = _load_tile(s_ptr, rows, kk, N, D, sts, CT)
            sj = _load_tile(s_ptr, cols, kk, N, D, sts, CT)
            xx += tl.dot(xi, tl.trans(xj), input_precision=PREC, out_dtype=CT)
            ss += tl.dot(si, tl.trans(sj), input_precision=PREC, out_dtype=CT)
            cross += tl.dot(xi, tl.trans(sj), input_precision=PREC, out_dtype=CT)
            cross += tl.dot(si, tl.trans(xj), input_precision=PREC, out_dtype=CT)
            xn_i += tl.sum(xi * xi, axis=1)
            xn_j += tl.sum(xj * xj, axis=1)
            xs_i += tl.sum(xi * si, axis=1)
            xs_j += tl.sum(xj * sj, axis=1)
        r2 = tl.maximum(xn_i[:, None] + xn_j[None, :] - 2.0 * xx, 0.0)
        cross = cross - xs_i[:, None] - xs_j[None, :]
    self = rows[:, None] == cols[None, :]
    return tl.where(self, 0.0, r2), ss, tl.where(self, 0.0, cross)


@triton.jit
def _stein_radial(r2, p_ptr, NS: tl.constexpr, RBF: tl.constexpr, THIRD: tl.constexpr, CT: tl.constexpr):
    """(phi, phi', phi'', phi''' (0 unless THIRD)) of the base at r2, summed over the NS scales; the
    per-scale constants in float64, then rounded to CT (as stein.cpp's radial). imq: b = c^2 + r2 / sigma^2,
    phi = b^beta = exp(beta log b), each derivative one more factor (beta - m) / (sigma^2 b)."""
    beta = tl.load(p_ptr).to(tl.float64)
    c = tl.load(p_ptr + 1).to(tl.float64)
    phi = tl.zeros(r2.shape, dtype=CT)
    d1 = tl.zeros(r2.shape, dtype=CT)
    d2 = tl.zeros(r2.shape, dtype=CT)
    d3 = tl.zeros(r2.shape, dtype=CT)
    for k in tl.static_range(NS):
        sigma = tl.load(p_ptr + 2 + k).to(tl.float64)
        inv = 1.0 / (sigma * sigma)
        if RBF:
            a = 0.5 * inv
            e = tl.exp(-a.to(CT) * r2)
            phi += e
            d1 -= a.to(CT) * e
            d2 += (a * a).to(CT) * e
            if THIRD:
                d3 -= (a * a * a).to(CT) * e
        else:
            b = (c * c).to(CT) + r2 * inv.to(CT)
            rb = 1.0 / b
            p0 = tl.exp(beta.to(CT) * tl.log(b))
            p1 = p0 * rb
            p2 = p1 * rb
            phi += p0
            d1 += (beta * inv).to(CT) * p1
            d2 += (beta * (beta - 1.0) * inv * inv).to(CT) * p2
            if THIRD:
                d3 += (beta * (beta - 1.0) * (beta - 2.0) * inv * inv * inv).to(CT) * (p2 * rb)
    return phi, d1, d2, d3


@triton.jit(do_not_specialize=["per"])
def stein_form_kernel(
    x_ptr, s_ptr, w_ptr, p_ptr, flag_ptr, q_ptr, N, D, P, stx, sts, sw, nb, per, N_KEY,
    NS: tl.constexpr, RBF: tl.constexpr, EXCL: tl.constexpr, DIFF: tl.constexpr, GATE: tl.constexpr,
    P_ONE: tl.constexpr, CT: tl.constexpr, PREC: tl.constexpr, B: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """q_p = sum_ij w_ip u_ij w_jp over the symmetric schedule of B x B tiles (stein.cpp's): row tile I meets
    tile J = (I + t) mod nb in round t = 0 .. nb // 2 (for even nb the last round only for J > I), each
    unordered tile pair once, off-diagonal tiles counted twice (u is symmetric). Program (I, split) runs the
    rounds [split * per, (split + 1) * per) in order and adds each tile's float64 sum
    sum_i w_ip (U_IJ W_J)_ip to its own cells q_ptr[split, I, :] (combined in a fixed order afterwards)."""
    if _gated_out(flag_ptr, GATE):
        return
    I = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    rows = I * B + tl.arange(0, B).to(tl.int64)
    q_row = q_ptr + (split * nb + I) * P
    t_end = tl.minimum(split * per + per, nb // 2 + 1)
    for t in range(split * per, t_end):
        J = (I + t) % nb
        if (2 * t != nb) | (J > I):
            cols = J * B + tl.arange(0, B).to(tl.int64)
            r2, ss, cross = _stein_products(x_ptr, s_ptr, rows, cols, N, D, stx, sts, B, B, BLOCK_D, DIFF, CT, PREC)
            phi, d1, d2, _ = _stein_radial(r2, p_ptr, NS, RBF, False, CT)
            u = phi * ss + 2.0 * d1 * (cross - D) - 4.0 * d2 * r2
            valid = (rows[:, None] < N) & (cols[None, :] < N)
            if EXCL:
                valid = valid & (rows[:, None] != cols[None, :])
            u = tl.where(valid, u, 0.0)
            factor = tl.where(t == 0, 1.0, 2.0).to(tl.float64)
            if P_ONE:
                wi = _load_col(w_ptr, rows, 0, N, sw, CT)
                rs = tl.sum(u * _load_col(w_ptr, cols, 0, N, sw, CT)[None, :], axis=1)
                tl.store(q_row, tl.load(q_row) + tl.sum(wi.to(tl.float64) * rs.to(tl.float64), axis=0) * factor)
            else:
                for p0 in range(0, P, BLOCK_P):
                    pc = p0 + tl.arange(0, BLOCK_P).to(tl.int64)
                    Wi = _load_tile(w_ptr, rows, pc, N, P, sw, CT)
                    rs = tl.dot(u, _load_tile(w_ptr, cols, pc, N, P, sw, CT), input_precision=PREC, out_dtype=CT)
                    qv = tl.sum(Wi.to(tl.float64) * rs.to(tl.float64), axis=0) * factor
                    tl.store(q_row + pc, tl.load(q_row + pc, mask=pc < P, other=0.0) + qv, mask=pc < P)


@triton.jit
def _put_moment(r_ptr, rows, cols, k, N, Q, val):
    """r_ptr[rows, k, cols] = val (an (N, 4, Q) float64 slab); cols past Q are masked."""
    mask = (rows[:, None] < N) & (cols[None, :] < Q)
    tl.store(r_ptr + (rows[:, None] * 4 + k) * Q + cols[None, :], val, mask=mask)


@triton.jit(do_not_specialize=["per"])
def stein_moments_kernel(
    x_ptr, s_ptr, w_ptr, p_ptr, flag_ptr, r_ptr, N, D, stx, sts, sw, per, N_KEY,
    NS: tl.constexpr, RBF: tl.constexpr, EXCL: tl.constexpr, DIFF: tl.constexpr, GATE: tl.constexpr,
    CT: tl.constexpr, PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """R[i, k] = sum_j M^k_ij Rhs_j, Rhs_j = [w_j, w_j x_j, w_j s_j] (1 + 2d columns), for the four per-pair
    matrices of stein.cpp's pair_pass<T, true>: U (column w), phi (w s), phi' (all), and
    A = phi' s_i.s_j + 2 phi'' cross - 2 d phi'' - 4 phi''' r2 - 4 phi'' (w, w x); the other columns 0.
    Program (row block, column chunk c of the d-wide blocks, split) runs the column tiles of its split in
    order and writes its float64 partials to r_ptr[split] (zeroed before; chunk 0 writes the w column)."""
    if _gated_out(flag_ptr, GATE):
        return
    pid_c = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2).to(tl.int64)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    gc = pid_c * BLOCK_G + tl.arange(0, BLOCK_G).to(tl.int64)
    acc_u = tl.zeros([BLOCK_M], dtype=tl.float64)
    acc_d1 = tl.zeros([BLOCK_M], dtype=tl.float64)
    acc_a = tl.zeros([BLOCK_M], dtype=tl.float64)
    acc_phi_ws = tl.zeros([BLOCK_M, BLOCK_G], dtype=tl.float64)
    acc_d1_wx = tl.zeros([BLOCK_M, BLOCK_G], dtype=tl.float64)
    acc_d1_ws = tl.zeros([BLOCK_M, BLOCK_G], dtype=tl.float64)
    acc_a_wx = tl.zeros([BLOCK_M, BLOCK_G], dtype=tl.float64)
    t_end = tl.minimum(split * per + per, tl.cdiv(N, BLOCK_N))
    for t in range(split * per, t_end):
        cols = t * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
        r2, ss, cross = _stein_products(x_ptr, s_ptr, rows, cols, N, D, stx, sts, BLOCK_M, BLOCK_N, BLOCK_D, DIFF,
                                        CT, PREC)
        phi, d1, d2, d3 = _stein_radial(r2, p_ptr, NS, RBF, True, CT)
        valid = (rows[:, None] < N) & (cols[None, :] < N)
        if EXCL:
            valid = valid & (rows[:, None] != cols[None, :])
        u = tl.where(valid, phi * ss + 2.0 * d1 * (cross - D) - 4.0 * d2 * r2, 0.0)
        a = tl.where(valid, d1 * ss + 2.0 * d2 * (cross - D) - 4.0 * d3 * r2 - 4.0 * d2, 0.0)
        phi = tl.where(valid, phi, 0.0)
        d1 = tl.where(valid, d1, 0.0)
        wj = _load_col(w_ptr, cols, 0, N, sw, CT)
        acc_u += tl.sum(u * wj[None, :], axis=1).to(tl.float64)
        acc_d1 += tl.sum(d1 * wj[None, :], axis=1).to(tl.float64)
        acc_a += tl.sum(a * wj[None, :], axis=1).to(tl.float64)
        wx = _load_tile(x_ptr, cols, gc, N, D, stx, CT) * wj[:, None]
        ws = _load_tile(s_ptr, cols, gc, N, D, sts, CT) * wj[:, None]
        acc_phi_ws += tl.dot(phi, ws, input_precision=PREC, out_dtype=CT).to(tl.float64)
        acc_d1_wx += tl.dot(d1, wx, input_precision=PREC, out_dtype=CT).to(tl.float64)
        acc_d1_ws += tl.dot(d1, ws, input_precision=PREC, out_dtype=CT).to(tl.float64)
        acc_a_wx += tl.dot(a, wx, input_precision=PREC, out_dtype=CT).to(tl.float64)

    Q = 1 + 2 * D
    r_ptr += split * N * 4 * Q
    if pid_c == 0:
        first = tl.arange(0, 1).to(tl.int64)
        _put_moment(r_ptr, rows, first, 0, N, Q, acc_u[:, None])
        _put_moment(r_ptr, rows, first, 2, N, Q, acc_d1[:, None])
        _put_moment(r_ptr, rows, first, 3, N, Q, acc_a[:, None])
    gmask = gc < D  # the x and s column blocks end at 1 + d and 1 + 2d
    xcols = tl.where(gmask, 1 + gc, Q)
    scols = tl.where(gmask, 1 + D + gc, Q)
    _put_moment(r_ptr, rows, scols, 1, N, Q, acc_phi_ws)
    _put_moment(r_ptr, rows, xcols, 2, N, Q, acc_d1_wx)
    _put_moment(r_ptr, rows, scols, 2, N, Q, acc_d1_ws)
    _put_moment(r_ptr, rows, xcols, 3, N, Q, acc_a_wx)
