"""The C++ CPU backend (csrc/cpu) against the float64 oracle (backends/reference.py run in float64 on
float64 copies of the same prepared inputs), every test under every CPU capability this machine runs
(the cpu_capability fixture installs each compiled variant in turn).

Inputs are prepared as the op layer prepares them (kernels.prepare: centred, scaled by a power of two;
kernels.kernel_params: clamped params). Tolerances are relative to the largest magnitude of the
oracle's output (for q: of |w|^T K |w|, as random-sign weights cancel); float32 compute measures up to
~3e-6 on these problems, float64 ~1e-14.
"""

import math

import pytest
import torch

from infovae_kernels import kernels
from infovae_kernels.backends import native, reference

pytestmark = [pytest.mark.skipif(native.IMPORT_ERROR is not None, reason=str(native.IMPORT_ERROR)),
              pytest.mark.usefixtures("cpu_capability")]

ops = torch.ops.infovae if native.IMPORT_ERROR is None else None
TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}


def rel_err(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.numel() == 0:
        return 0.0
    return ((got.double() - want).abs().max() / want.abs().max().clamp_min(1e-300)).item()


def points(n, d, shift=0.0, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


def prepared(x, y, sigmas, kernel, dtype):
    """x, y in dtype, prepared like the op layer, and the params for the sigmas (original units)."""
    m = y.shape[0]
    xs, ys, scale = kernels.prepare(x.to(dtype), (y if m else x).to(dtype))
    ys = ys[:m]
    params = kernels.kernel_params(kernel, torch.tensor(sigmas, dtype=torch.float64), x.shape[1], scale, dtype)
    return xs.to(dtype), ys.to(dtype), params


def f64(t):
    return None if t is None else t.double()


KERNELS = [("rbf", None), ("imq", [0.7]), ("rbf", "multi"), ("imq", "multi")]


def sigmas_for(spec, d):
    if spec is None:
        return [math.sqrt(d)]
    if spec == "multi":
        return [0.5, math.sqrt(d), 3.0 * math.sqrt(d)]
    return spec


# ---- quad_form --------------------------------------------------------------------------------------
QUAD_SHAPES = [(1, 1), (2, 3), (7, 5), (129, 64), (1000, 2), (150, 784), (300, 8), (2100, 3)]


@pytest.mark.parametrize("n,d", QUAD_SHAPES)
@pytest.mark.parametrize("kernel,sig", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quad_form_matches_oracle(n, d, kernel, sig, dtype):
    if n * d > 200_000 or (n > 1000 and sig is not None):
        pytest.skip("one large case per dtype keeps the oracle's N x N matrices small")
    x = points(n, d, shift=-1.0, seed=5)
    zs, _, params = prepared(x, x[:0], sigmas_for(sig, d), kernel, dtype)
    for P in (1, 3):
        w = points(n, P, seed=6).to(dtype)
        a = points(n, P, seed=7).to(dtype)
        for excl in (False, True):
            q0, s0, g0 = ops.quad_form(zs, w, None, params, kernel, excl, False)
            assert q0.dtype == torch.float64 and q0.shape == (P,) and s0.shape == (0, P) and g0.shape == (0, d)
            q, s, g = ops.quad_form(zs, w, a, params, kernel, excl, True)
            assert s.shape == (n, P) and g.shape == (n, d) and s.dtype == g.dtype == torch.float64
            assert torch.equal(q, q0), "q must be bitwise the same with and without S and G"
            qr, sr, gr = reference.quad_form(f64(zs), f64(w), f64(a), params, kernel, excl, True)
            scale = reference.quad_form(f64(zs), f64(w).abs(), None, params, kernel, excl, False)[0]
            assert ((q - qr).abs().max() / scale.max().clamp_min(1e-300)).item() < TOL[dtype], (P, excl)
            assert rel_err(s, sr) < TOL[dtype], (P, excl)
            assert rel_err(g, gr) < TOL[dtype], (P, excl)
            q1, s1, g1 = ops.quad_form(zs, w, None, params, kernel, excl, True)
            q2, s2, g2 = ops.quad_form(zs, w, a, params, kernel, excl, False)
            assert torch.equal(q1, q0) and torch.equal(q2, q0) and torch.equal(s1, s) and torch.equal(g2, g)


@pytest.mark.parametrize("n", [1000, 2100, 2300])
def test_quad_form_mmd_weights_many_blocks(n):
    # pooled Z with the +1/N, -1/M column, several symmetric blocks (64 or 128 rows: 16, 17 and 18
    # blocks: even and odd circulant rounds); a = w and a = [wx; 0] (only x needs a gradient: the
    # y-y tiles and the y side of x-y tiles skip G)
    nx = n // 2 + 3
    x, y = points(nx, 3, seed=7), points(n - nx, 3, shift=0.3, seed=8)
    for dtype in (torch.float64, torch.float32):
        xs, ys, params = prepared(x, y, [1.0], "rbf", dtype)
        z = torch.cat([xs, ys])
        w = torch.cat([torch.full((nx, 1), 1.0 / nx), torch.full((n - nx, 1), -1.0 / (n - nx))]).to(dtype)
        ax = torch.cat([w[:nx], torch.zeros(n - nx, 1, dtype=dtype)])
        q0 = ops.quad_form(z, w, None, params, "rbf", False, False)[0]
        for a in (w, ax):
            q, s, g = ops.quad_form(z, w, a, params, "rbf", False, True)
            assert torch.equal(q, q0)
            qr, sr, gr = reference.quad_form(f64(z), f64(w), f64(a), params, "rbf", False, True)
            assert abs(q.item() - qr.item()) <= TOL[dtype] * 10 * abs(qr.item()) + 1e-12
            assert rel_err(s, sr) < TOL[dtype] and rel_err(g, gr) < TOL[dtype]
        assert g[nx:].abs().max().item() == 0.0  # a = [wx; 0]: no gradient on the y rows


# ---- pair_reduce ------------------------------------------------------------------------------------
SHAPES = [(1, 1, 1), (2, 7, 2), (7, 2, 5), (129, 129, 64), (1000, 333, 5), (129, 70, 784), (33, 33, 2)]


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("kernel,sig", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_reduce_matches_oracle(n, m, d, kernel, sig, dtype):
    xs, ys, params = prepared(points(n, d, shift=2.0, seed=1), points(m, d, shift=2.0, scale=1.3, seed=2),
                              sigmas_for(sig, d), kernel, dtype)
    for p in (1, 5):
        v = points(m, p, seed=3).to(dtype)
        a = points(n, p, seed=4).to(dtype)
        for excl in ([False, True] if n == m else [False]):
            for aa in (None, a):
                S, G = ops.pair_reduce(xs, ys, v, aa, params, kernel, excl)
                Sr, Gr = reference.pair_reduce(f64(xs), f64(ys), f64(v), f64(aa), params, kernel, excl)
                assert S.dtype == torch.float64 and G.dtype == torch.float64
                assert G.shape == ((n, d) if aa is not None else (0, d))
                assert rel_err(S, Sr) < TOL[dtype], (p, excl, aa is None)
                if aa is not None:
                    assert rel_err(G, Gr) < TOL[dtype], (p, excl)


# ---- gram -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_gram_matches_oracle(dtype, kernel):
    for n, m, d in [(1, 1, 1), (7, 130, 5), (129, 33, 64), (40, 50, 784)]:
        xs, ys, params = prepared(points(n, d, seed=9), points(m, d, shift=0.2, seed=10),
                                  [0.5 * math.sqrt(d), 2.0], kernel, dtype)
        for derivative in (False, True):
            K = ops.gram(xs, ys, params, kernel, derivative)
            Kr = reference.gram(f64(xs), f64(ys), params, kernel, derivative)
            assert K.dtype == dtype and K.shape == (n, m)
            tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, TOL[dtype])
            assert rel_err(K, Kr) < tol, (n, m, d, derivative)


def test_exp_accuracy_elementwise():
    # d = 1: x = {0}, y = {t, -t, ...}, params c = 1/2: r2 = fl(t * t) and k = exp(-r2 / 2) measures the
    # vector exp alone (arguments 0 ... -84).
    t = torch.linspace(0.0, 13.0, 4001, dtype=torch.float64)
    params = torch.tensor([0.5], dtype=torch.float64)
    for dtype, tol in ((torch.float32, 2.5e-7), (torch.float64, 4e-16)):
        tt = t.to(dtype)
        y = torch.stack([tt, -tt], 1).reshape(-1, 1)
        K = ops.gram(torch.zeros(1, 1, dtype=dtype), y, params, "rbf", False).double()[0]
        r2 = (y * y).double()[:, 0]  # fl(t * t) in the input precision
        want = torch.exp(-r2 / 2.0)
        ok = want > (1e-37 if dtype == torch.float32 else 1e-300)
        err = (K - want).abs() / want
        assert err[ok].max().item() < tol, err[ok].max().item()
        assert bool((K[~ok] < 2e-38).all())


# ---- numerics ---------------------------------------------------------------------------------------
def test_lossy_distances_issue_case():
    # x = 100 randn(500, 3), y = x + 0.01 randn, sigma 0.01: the expansion |x|^2 + |y|^2 - 2 x.y loses
    # the distances in float32 (63% off before); coordinate differences match the float64 oracle.
    g = torch.Generator().manual_seed(0)
    x = 100.0 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    y = x + 0.01 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    want = None
    for dtype in (torch.float64, torch.float32):
        xs, ys, params = prepared(x, y, [0.01], "rbf", dtype)
        z = torch.cat([xs, ys])
        w = torch.cat([torch.full((500, 1), 1 / 500.0), torch.full((500, 1), -1 / 500.0)]).to(dtype)
        q, s, gz = ops.quad_form(z, w, w, params, "rbf", False, True)
        qr, sr, gr = reference.quad_form(f64(z), f64(w), f64(w), params, "rbf", False, True)
        if want is None:
            want = qr.item()
            assert abs(want - 2.56e-3) < 1e-4, want  # the issue's float64 value
        assert abs(q.item() - want) < 1e-4 * want, (dtype, q.item(), want)
        assert rel_err(s, sr) < 1e-4 and rel_err(gz, gr) < 1e-4
        S, G = ops.pair_reduce(xs, ys, w[500:], w[:500], params, "rbf", False)
        Sr, Gr = reference.pair_reduce(f64(xs), f64(ys), f64(w[500:]), f64(w[:500]), params, "rbf", False)
        assert rel_err(S, Sr) < 1e-4 and rel_err(G, Gr) < 1e-4
        K = ops.gram(xs, ys, params, "rbf", False)
        assert rel_err(K, reference.gram(f64(xs), f64(ys), params, "rbf", False)) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lossy", [False, True])
def test_self_distance_exactly_zero(dtype, lossy):
    # k(x, x) = n_scales exactly and g(x, x) = 0, with and without the difference form (tiny sigma
    # forces it); d = 784 makes the norms long sums.
    x = points(37, 784, shift=3.0, seed=30)
    xs, _, params = prepared(x, x[:0], [1e-3 if lossy else 30.0, 50.0], "rbf", dtype)
    K = ops.gram(xs, xs, params, "rbf", False)
    assert torch.equal(K.diagonal(), torch.full((37,), 2.0, dtype=dtype))
    G = ops.gram(xs, xs, params, "rbf", True)
    assert G.diagonal().abs().max().item() == 0.0
    # quad_form: a single point has q = w k(z, z) w and no gradient
    w = torch.full((1, 1), 0.5, dtype=dtype)
    q, s, g = ops.quad_form(xs[:1], w, w, params, "rbf", False, True)
    assert q.item() == 0.5 * 2.0 * 0.5 and s.item() == 1.0 and g.abs().max().item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_extreme_params_finite(dtype, kernel):
    # params clamped to [tiny, max / 4] of the compute type (what kernel_params gives for sigma 1e-300 or
    # 1e300): every output finite; the tiny-bandwidth limit is k = 0 off the diagonal (rbf), the
    # huge one k = 1.
    info = torch.finfo(dtype)
    x = points(40, 3, seed=31)
    xs, _, _ = prepared(x, x[:0], [1.0], kernel, dtype)
    w = points(40, 1, seed=32).to(dtype)
    for value in (info.tiny, info.max / 4):
        params = torch.tensor([value, 1.0], dtype=torch.float64)
        q, s, g = ops.quad_form(xs, w, w, params, kernel, False, True)
        S, G = ops.pair_reduce(xs, xs, w, w, params, kernel, True)
        K = ops.gram(xs, xs, params, kernel, True)
        for t in (q, s, g, S, G, K):
            assert bool(torch.isfinite(t).all()), (value, t)


def subnormals_survive():
    """float32 arithmetic on this thread and on torch's intra-op threads still gives subnormals."""
    tiny = torch.full((1 << 17,), 1e-38, dtype=torch.float32)
    return bool(((tiny / 16) > 0).all())


@pytest.mark.parametrize("threads", [1, 2])
def test_narrow_bandwidth_flushes_subnormals_and_restores_the_callers_mode(threads):
    # sigma 0.2 against unit-variance data: most k_ij w_j and g_ij products are subnormal, which the
    # engine's workers flush (an x86 microcode assist each otherwise); the result stays the oracle's, and
    # the threads that ran the workers get their floating-point mode back
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert subnormals_survive()
        x, y = points(300, 6, seed=40), points(260, 6, shift=0.3, seed=41)
        xs, ys, params = prepared(x, y, [0.2], "rbf", torch.float32)
        z = torch.cat([xs, ys])
        w = torch.cat([torch.full((300, 1), 1 / 300), torch.full((260, 1), -1 / 260)]).float()
        q, s, g = ops.quad_form(z, w, w, params, "rbf", False, True)
        assert subnormals_survive()
        qr, sr, gr = reference.quad_form(f64(z), f64(w), f64(w), params, "rbf", False, True)
        scale = reference.quad_form(f64(z), f64(w).abs(), None, params, "rbf", False, False)[0]
        assert ((q - qr).abs().max() / scale.max()).item() < TOL[torch.float32]
        assert rel_err(s, sr) < TOL[torch.float32] and rel_err(g, gr) < TOL[torch.float32]
    finally:
        torch.set_num_threads(old)


# ---- determinism and layouts ------------------------------------------------------------------------
def assert_same_bits_across_threads(run):
    """run() with 1, 2 and 3 torch threads: every output bitwise equal; returns the 1-thread outputs."""
    old = torch.get_num_threads()
    try:
        results = []
        for nt in (1, 2, 3):
            torch.set_num_threads(nt)
            results.append(run())
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        assert all(torch.equal(p, q) for p, q in zip(results[0], other))
    return results[0]


def test_deterministic_across_calls_and_thread_counts():
    x, y = points(1000, 7, seed=19).float(), points(1777, 7, seed=20).float()
    v, a = points(1777, 5, seed=21).float(), points(1000, 5, seed=22).float()
    v1, a1 = v[:, :1].contiguous(), a[:, :1].contiguous()
    z = torch.cat([x, y])
    w, aw = points(2777, 3, seed=23).float(), points(2777, 3, seed=24).float()
    p1, p2 = torch.tensor([0.3, 0.05], dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)

    def run():
        return [*ops.pair_reduce(x, y, v, a, p1, "rbf", False),
                *ops.pair_reduce(x, y, v1, a1, p2, "imq", False),
                *ops.quad_form(z, w, aw, p2, "rbf", True, True),
                *ops.quad_form(z, w[:, :1], aw[:, :1], p2, "rbf", False, True),
                *ops.quad_form(z, w[:, :1], None, p1, "imq", False, False),
                ops.gram(x[:100], y, p2, "rbf", True)]

    first = run()
    assert all(torch.equal(p, q) for p, q in zip(first, run()))
    single = assert_same_bits_across_threads(run)
    assert all(torch.equal(p, q) for p, q in zip(first, single))


def test_half_inputs_upcast():
    x64, y64 = points(65, 6, seed=11), points(40, 6, seed=12)
    v64, a64 = points(40, 2, seed=13), points(65, 2, seed=14)
    for dtype in (torch.float16, torch.bfloat16):
        xs, ys, params = prepared(x64, y64, [1.5], "rbf", dtype)
        v, a = v64.to(dtype), a64.to(dtype)
        S, G = ops.pair_reduce(xs, ys, v, a, params, "rbf", False)
        Sr, Gr = reference.pair_reduce(f64(xs), f64(ys), f64(v), f64(a), params, "rbf", False)
        assert rel_err(S, Sr) < 2e-5 and rel_err(G, Gr) < 2e-5
        q, s, g = ops.quad_form(xs, a, a, params, "imq", True, True)
        qr, sr, gr = reference.quad_form(f64(xs), f64(a), f64(a), params, "imq", True, True)
        assert rel_err(q, qr) < 2e-5 and rel_err(s, sr) < 2e-5 and rel_err(g, gr) < 2e-5


def test_non_contiguous_inputs():
    params = torch.tensor([0.5, 0.125], dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        x = points(80, 12, seed=15).to(dtype)[::2, ::3]  # (40, 4) strided
        y = points(4, 30, seed=16).to(dtype).t()  # (30, 4) transposed
        v = points(3, 30, seed=17).to(dtype).t()  # (30, 3)
        a = points(40, 6, seed=18).to(dtype)[:, 1::2]  # (40, 3)
        args = [x, y, v, a]
        assert not any(t.is_contiguous() for t in args)
        S, G = ops.pair_reduce(*args, params, "rbf", False)
        S2, G2 = ops.pair_reduce(*[t.contiguous() for t in args], params, "rbf", False)
        assert torch.equal(S, S2) and torch.equal(G, G2)
        Sr, Gr = reference.pair_reduce(*[f64(t) for t in args], params, "rbf", False)
        assert rel_err(S, Sr) < TOL[dtype] and rel_err(G, Gr) < TOL[dtype]
        out = ops.quad_form(x, a, a, params, "imq", False, True)
        ref = ops.quad_form(x.contiguous(), a.contiguous(), a.contiguous(), params, "imq", False, True)
        assert all(torch.equal(o, r) for o, r in zip(out, ref))
        K = ops.gram(x, y, params, "rbf", False)
        assert torch.equal(K, ops.gram(x.contiguous(), y.contiguous(), params, "rbf", False))


def test_empty_and_degenerate_shapes():
    x = torch.zeros(0, 3)
    y = torch.randn(5, 3)
    p = torch.ones(1, dtype=torch.float64)
    S, G = ops.pair_reduce(x, y, torch.ones(5, 2), torch.ones(0, 2), p, "rbf", False)
    assert S.shape == (0, 2) and G.shape == (0, 3)
    S, G = ops.pair_reduce(y, x, torch.ones(0, 2), torch.ones(5, 2), p, "rbf", False)
    assert torch.equal(S, torch.zeros(5, 2, dtype=torch.float64)) and torch.equal(G, torch.zeros(5, 3, dtype=torch.float64))
    q, s, g = ops.quad_form(torch.zeros(0, 2), torch.zeros(0, 4), torch.zeros(0, 4), p, "rbf", False, True)
    assert q.shape == (4,) and s.shape == (0, 4) and g.shape == (0, 2)
    assert ops.gram(x, y, p, "rbf", False).shape == (0, 5)
    # a single point with the diagonal excluded has nothing left
    S, G = ops.pair_reduce(y[:1], y[:1], torch.ones(1, 1), torch.ones(1, 1), p, "rbf", True)
    assert S.item() == 0.0 and G.abs().max().item() == 0.0
    q, s, g = ops.quad_form(y[:1], torch.ones(1, 1), torch.ones(1, 1), p, "imq", True, True)
    assert q.item() == 0.0 and s.item() == 0.0 and g.abs().max().item() == 0.0


def test_large_index_space():
    # N * M = 2.5e9 > 2^31 pairs, d = 1, float32: x_i = (i mod 100) h, v_i = 1 + (i mod 7), so every pair
    # contributes and the oracle groups the columns by residue: S_i = sum_r k((i mod 100 - r) h) V_r.
    n, h, sigma = 50_000, 0.01, 0.3
    idx = torch.arange(n)
    x = ((idx % 100).double() * h).unsqueeze(1)
    v = (1.0 + (idx % 7).double()).unsqueeze(1)
    params = torch.tensor([1.0 / (2 * sigma**2)], dtype=torch.float64)
    S, _ = ops.pair_reduce(x.float(), x.float(), v.float(), None, params, "rbf", False)
    xr = x.float().double()[:100, 0]
    V = torch.zeros(100, dtype=torch.float64).index_add_(0, idx % 100, v[:, 0])
    k = torch.exp(-((xr[:, None] - xr[None, :]) ** 2) / (2 * sigma**2))
    want = (k @ V)[idx % 100]
    assert rel_err(S[:, 0], want) < 2e-5


_P = torch.ones(1, dtype=torch.float64)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.pair_reduce(torch.ones(3), torch.ones(3, 1), torch.ones(3, 1), None, _P, "rbf", False), "x must be a 2-D"),
    (lambda: ops.pair_reduce(torch.ones(3, 2), torch.ones(3, 1), torch.ones(3, 1), None, _P, "rbf", False),
     "y must have the number of columns d of x"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(3, 1), None, _P, "rbf", False),
     "v must have one row per row of y"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 2), torch.ones(3, 1), _P, "rbf",
                             False), "a must have the number of columns p of v"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1).double(), torch.ones(4, 1), None, _P, "rbf",
                             False), "y must have the dtype of x"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, _P, "rbf", True),
     "exclude_diagonal"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, _P, "gauss", False),
     "kernel must be"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None,
                             torch.ones(0, dtype=torch.float64), "rbf", False), "params must hold 1 to 16"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None,
                             torch.ones(17, dtype=torch.float64), "rbf", False), "params must hold 1 to 16"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None,
                             torch.tensor([1.0, -2.0], dtype=torch.float64), "rbf", False), "finite and > 0"),
    (lambda: ops.quad_form(torch.ones(3, 1), torch.ones(3, 1), None, torch.tensor([math.inf], dtype=torch.float64),
                           "imq", False, False), "finite and > 0"),
    (lambda: ops.quad_form(torch.ones(3, 1), torch.ones(3, 1), None, torch.ones(1), "imq", False, False),
     "params must be float64"),
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), torch.ones(1, 1, dtype=torch.float64), "rbf", False),
     "params must be a 1-D"),
    (lambda: ops.pair_reduce(torch.ones(3, 1, dtype=torch.int64), torch.ones(4, 1, dtype=torch.int64),
                             torch.ones(4, 1, dtype=torch.int64), None, _P, "rbf", False), "x must be float16"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(4, 1), None, _P, "rbf", False, False),
     "w must have one row per row of z"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(3), None, _P, "rbf", False, False), "w must be a 2-D"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(3, 2), torch.ones(3, 1), _P, "rbf", False, False),
     "a must have the number of columns P of w"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(3, 1), torch.ones(3, 1).double(), _P, "rbf", False, False),
     "a must have the dtype of z"),
    (lambda: ops.gram(torch.ones(3, 2), torch.ones(3, 3), _P, "rbf", False), "y must have the number of columns"),
])
def test_checks_raise_runtime_error(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


# ---- laplacian, energy, polynomial ------------------------------------------------------------------
# Prepared as the op layer prepares them: distance kernels centred and scaled by a power of two,
# polynomial only scaled (gamma folded into params). Tolerances relative to the largest magnitude:
# float64 ~1e-15 measured (1e-11 allowed), float32 ~1e-6 measured (2e-5 allowed: a few float32 roundings
# of t = gamma x.y + coef, d <= 40, raised to degree <= 3, or of the sqrt/exp of r).
NEW_TOL = {torch.float64: 1e-11, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
NEW_KERNELS = [
    ("laplacian", [0.8]),
    ("laplacian", [0.3, 1.0, 2.5]),
    ("energy", None),
    *[(kernels.Polynomial(degree=n, gamma=None, coef=c), None) for n in (1, 2, 3) for c in (0.0, 1.0)],
]


def new_kernel_id(spec):
    k, s = spec
    if isinstance(k, kernels.Polynomial):
        return f"poly{k.degree}c{k.coef:g}"
    return f"{k}{len(s) if s else ''}"


def prepared_new(x, y, kernel, sigmas, dtype):
    """(x', y', params, primitive kernel name) for a new kernel, as the op layer prepares them."""
    m = y.shape[0]
    xs, ys, scale = kernels.prepare(x.to(dtype), (y if m else x).to(dtype), kernel)
    ys = ys[:m]
    sig = None if sigmas is None else torch.tensor(sigmas, dtype=torch.float64) * math.sqrt(x.shape[1])
    params = kernels.kernel_params(kernel, sig, x.shape[1], scale, dtype)
    return xs.to(dtype), ys.to(dtype), params, kernels.primitive_name(kernel)


def abs_quad_scale(z, w, params, name):
    """|w|^T |K| |w| per column: the magnitude q is measured against (signed k and w cancel)."""
    K = reference.gram(f64(z), f64(z), params, name, False).abs()
    return (f64(w).abs() * (K @ f64(w).abs())).sum(0)


@pytest.mark.parametrize("n,d", [(1, 1), (7, 5), (97, 40), (256, 3), (301, 8)])
@pytest.mark.parametrize("spec", NEW_KERNELS, ids=new_kernel_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_new_kernels_quad_form(n, d, spec, dtype):
    # 256 and 301 rows: 4 and 5 symmetric blocks of 64 (even and odd circulant rounds)
    x = points(n, d, shift=0.5, seed=40)
    zs, _, params, name = prepared_new(x, x[:0], spec[0], spec[1], dtype)
    for P in (1, 3):
        w, a = points(n, P, seed=41).to(dtype), points(n, P, seed=42).to(dtype)
        for excl in (False, True):
            q0, s0, g0 = ops.quad_form(zs, w, None, params, name, excl, False)
            q, s, g = ops.quad_form(zs, w, a, params, name, excl, True)
            assert torch.equal(q, q0), "q must be bitwise the same with and without S and G"
            assert s.shape == (n, P) and g.shape == (n, d) and s0.shape == (0, P) and g0.shape == (0, d)
            qr, sr, gr = reference.quad_form(f64(zs), f64(w), f64(a), params, name, excl, True)
            scale = abs_quad_scale(zs, w, params, name)
            assert ((q - qr).abs() / scale.clamp_min(1e-300)).max().item() < NEW_TOL[dtype], (P, excl)
            assert rel_err(s, sr) < NEW_TOL[dtype], (P, excl)
            assert rel_err(g, gr) < NEW_TOL[dtype], (P, excl)
            assert bool(torch.isfinite(g).all())


@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 2, 5), (129, 129, 8), (70, 33, 40)])
@pytest.mark.parametrize("spec", NEW_KERNELS, ids=new_kernel_id)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_new_kernels_pair_reduce(n, m, d, spec, dtype):
    xs, ys, params, name = prepared_new(points(n, d, shift=1.0, seed=43), points(m, d, shift=1.2, scale=1.3, seed=44),
                                        spec[0], spec[1], dtype)
    for p in (1, 4):
        v, a = points(m, p, seed=45).to(dtype), points(n, p, seed=46).to(dtype)
        for excl in ([False, True] if n == m else [False]):
            S0, G0 = ops.pair_reduce(xs, ys, v, None, params, name, excl)
            S, G = ops.pair_reduce(xs, ys, v, a, params, name, excl)
            assert G0.shape == (0, d) and G.shape == (n, d) and S.dtype == G.dtype == torch.float64
            Sr, Gr = reference.pair_reduce(f64(xs), f64(ys), f64(v), f64(a), params, name, excl)
            assert rel_err(S0, Sr) < NEW_TOL[dtype] and rel_err(S, Sr) < NEW_TOL[dtype], (p, excl)
            assert rel_err(G, Gr) < NEW_TOL[dtype], (p, excl)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", NEW_KERNELS, ids=new_kernel_id)
def test_new_kernels_gram(dtype, spec):
    for n, m, d in [(1, 1, 1), (7, 130, 5), (129, 33, 40)]:
        xs, ys, params, name = prepared_new(points(n, d, seed=47), points(m, d, shift=0.2, seed=48), spec[0], spec[1],
                                            dtype)
        for derivative in (False, True):
            K = ops.gram(xs, ys, params, name, derivative)
            Kr = reference.gram(f64(xs), f64(ys), params, name, derivative)
            assert K.dtype == dtype and K.shape == (n, m)
            assert rel_err(K, Kr) < NEW_TOL[dtype], (n, m, d, derivative)


def _textbook_k(x, y, name, params):
    """k(x_i, y_j) in plain float64 torch (no package code), differentiable in x; at r = 0 the distance
    kernels' gradient is the subgradient 0 (torch.where keeps sqrt away from 0)."""
    if name == "polynomial":
        gamma, coef, n = params.tolist()
        return (gamma * (x @ y.T) + coef) ** int(n)
    r2 = (x[:, None, :] - y[None, :, :]).square().sum(-1)
    pos = r2 > 0
    r = torch.where(pos, torch.where(pos, r2, torch.ones_like(r2)).sqrt(), torch.zeros_like(r2))
    if name == "energy":
        return -params[0] * r
    return sum(torch.exp(-c * r) for c in params.tolist())


@pytest.mark.parametrize("spec", NEW_KERNELS, ids=new_kernel_id)
def test_new_kernels_gradient_is_minus_d_dx(spec):
    # the contract's G_i = -sum_j (a_i . v_j) d k(x_i, y_j) / d x_i (y_j held fixed), by autograd of a
    # textbook formula, independent of the oracle; quad_form: the same with y = z.
    x, y = points(23, 6, seed=49), points(17, 6, shift=0.3, seed=50)
    xs, ys, params, name = prepared_new(x, y, spec[0], spec[1], torch.float64)
    v, a, w = points(17, 2, seed=51), points(23, 2, seed=52), points(23, 2, seed=53)
    xg = xs.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(((a @ v.T) * _textbook_k(xg, ys, name, params)).sum(), xg)
    S, G = ops.pair_reduce(xs, ys, v, a, params, name, False)
    assert rel_err(G, -want) < 1e-12
    assert rel_err(S, _textbook_k(xs, ys, name, params) @ v) < 1e-12
    for excl in (False, True):
        mask = 1.0 - torch.eye(23, dtype=torch.float64) if excl else torch.ones(23, 23, dtype=torch.float64)
        xg = xs.clone().requires_grad_(True)
        K = _textbook_k(xg, xs, name, params) * mask
        (want,) = torch.autograd.grad(((a @ w.T) * K).sum(), xg)
        q, s, g = ops.quad_form(xs, w, a, params, name, excl, True)
        K = K.detach()
        assert rel_err(g, -want) < 1e-12, excl
        assert rel_err(q, (w * (K @ w)).sum(0)) < 1e-12 and rel_err(s, K @ w) < 1e-12, excl


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name,params", [("laplacian", [0.5, 2.0]), ("energy", [1.5])])
def test_kink_duplicates_finite_and_zero(dtype, name, params):
    # duplicate points (r = 0 between distinct indices) and near-duplicates (r at the bottom of the
    # precision): the subgradient 0 at the kink, G finite and equal to the oracle, k(x, x) exact
    params = torch.tensor(params, dtype=torch.float64)
    base = points(9, 4, seed=54)
    tiny = 1e-150 if dtype == torch.float64 else 1e-18
    x = torch.cat([base, base, base[:3] + tiny, base[:1]]).to(dtype)  # rows i, i + 9 equal; 27 == 0 == 18
    n = x.shape[0]
    K = ops.gram(x, x, params, name, False)
    Kd = ops.gram(x, x, params, name, True)
    self_k = float(len(params)) if name == "laplacian" else 0.0
    assert torch.equal(K.diagonal(), torch.full((n,), self_k, dtype=dtype))  # energy: k(x, x) = 0 exactly
    assert torch.equal(K[:9, 9:18].diagonal(), torch.full((9,), self_k, dtype=dtype))
    assert Kd.diagonal().abs().max().item() == 0.0 and Kd[:9, 9:18].diagonal().abs().max().item() == 0.0
    assert bool(torch.isfinite(Kd).all())
    w, a = points(n, 1, seed=55).to(dtype), points(n, 1, seed=56).to(dtype)
    for excl in (False, True):
        S, G = ops.pair_reduce(x, x, w, a, params, name, excl)
        Sr, Gr = reference.pair_reduce(f64(x), f64(x), f64(w), f64(a), params, name, excl)
        assert bool(torch.isfinite(G).all()) and rel_err(S, Sr) < NEW_TOL[dtype] and rel_err(G, Gr) < NEW_TOL[dtype]
    for P in (1, 3):
        wp, ap = points(n, P, seed=57).to(dtype), points(n, P, seed=58).to(dtype)
        q, s, g = ops.quad_form(x, wp, ap, params, name, False, True)
        qr, sr, gr = reference.quad_form(f64(x), f64(wp), f64(ap), params, name, False, True)
        assert bool(torch.isfinite(g).all()) and rel_err(g, gr) < NEW_TOL[dtype] and rel_err(s, sr) < NEW_TOL[dtype]
    # all points equal: every pair sits on the kink, so G is exactly 0 and k is the self value
    same = base[:1].expand(70, 4).contiguous().to(dtype)
    ones = torch.ones(70, 1, dtype=dtype)
    q, s, g = ops.quad_form(same, ones, ones, params, name, False, True)
    assert g.abs().max().item() == 0.0 and q.item() == 70 * 70 * self_k
    S, G = ops.pair_reduce(same, same, ones, ones, params, name, False)
    assert G.abs().max().item() == 0.0 and torch.equal(S, torch.full((70, 1), 70 * self_k, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_polynomial_self_pairs_count(dtype):
    # k(z_i, z_i) is not a constant for the polynomial kernel: exclude_diagonal must drop exactly
    # sum_i w_i^2 k(z_i, z_i) from q and w_i k(z_i, z_i) from S_i
    z = points(50, 7, shift=0.4, seed=59).to(dtype)
    w = points(50, 1, seed=60).to(dtype)
    params = torch.tensor([0.25, 1.0, 3.0], dtype=torch.float64)
    q1, s1, _ = ops.quad_form(z, w, None, params, "polynomial", False, True)
    q0, s0, _ = ops.quad_form(z, w, None, params, "polynomial", True, True)
    kd = (0.25 * f64(z).square().sum(1) + 1.0) ** 3
    assert abs((q1 - q0).item() - (f64(w)[:, 0].square() * kd).sum().item()) < NEW_TOL[dtype] * abs(q1.item()) * 10
    assert rel_err(s1 - s0, f64(w) * kd[:, None]) < NEW_TOL[dtype] * 10


def test_new_kernels_deterministic_across_thread_counts():
    x, y = points(700, 5, seed=61).float(), points(333, 5, seed=62).float()
    z = torch.cat([x, y])
    w, aw = points(1033, 3, seed=63).float(), points(1033, 3, seed=64).float()
    v, a = points(333, 2, seed=65).float(), points(700, 2, seed=66).float()
    lap, en = torch.tensor([0.7, 2.0], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    poly = torch.tensor([0.2, 1.0, 3.0], dtype=torch.float64)

    def run():
        out = []
        for name, prm in (("laplacian", lap), ("energy", en), ("polynomial", poly)):
            full = ops.quad_form(z, w, aw, prm, name, True, True)
            assert torch.equal(ops.quad_form(z, w, None, prm, name, True, False)[0], full[0])
            out += [*full, *ops.quad_form(z, w[:, :1], aw[:, :1], prm, name, False, True),
                    *ops.pair_reduce(x, y, v, a, prm, name, False), ops.gram(x[:50], y, prm, name, True)]
        return out

    assert_same_bits_across_threads(run)


_P3 = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731


@pytest.mark.parametrize("call,match", [
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), _P3(1.0, 1.0, 0.0), "polynomial", False), "integer degree"),
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), _P3(1.0, 1.0, 2.5), "polynomial", False), "integer degree"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(3, 1), torch.ones(3, 1), None, _P3(1.0, 1.0, 17.0),
                             "polynomial", False), "integer degree in 1..16"),
    (lambda: ops.quad_form(torch.ones(3, 1), torch.ones(3, 1), None, _P3(math.nan, 1.0, 2.0), "polynomial", False,
                           False), "finite gamma and coef"),
    (lambda: ops.quad_form(torch.ones(3, 1), torch.ones(3, 1), None, _P3(1.0, math.inf, 2.0), "polynomial", False,
                           False), "finite gamma and coef"),
    (lambda: ops.quad_form(torch.ones(3, 1), torch.ones(3, 1), None, _P3(1.0, 2.0), "polynomial", False, False),
     "3 values"),
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), _P3(1.0, 2.0), "energy", False), "1 value"),
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), _P3(-1.0), "energy", False), "finite and > 0"),
    (lambda: ops.gram(torch.ones(3, 1), torch.ones(3, 1), _P3(1.0, 0.0), "laplacian", False), "finite and > 0"),
])
def test_new_kernel_checks_raise(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_polynomial_negative_gamma_and_coef_accepted():
    # gamma and coef may have any sign (a user's Polynomial); the degree's parity decides the sign of k
    x, y = points(9, 3, seed=67), points(11, 3, seed=68)
    for prm in ((-0.5, 1.0, 3.0), (0.5, -2.0, 2.0), (0.5, -2.0, 3.0)):
        params = _P3(*prm)
        for der in (False, True):
            K = ops.gram(x, y, params, "polynomial", der)
            assert rel_err(K, reference.gram(x, y, params, "polynomial", der)) < 1e-12


@pytest.mark.parametrize("spec", [NEW_KERNELS[1], NEW_KERNELS[2], NEW_KERNELS[-1]], ids=new_kernel_id)
def test_new_kernels_quad_form_large_blocks(spec):
    # N >= 2048: symmetric blocks of 128 rows (17 blocks), float32, with S and G
    n, d = 2100, 3
    zs, _, params, name = prepared_new(points(n, d, seed=69), points(0, d), spec[0], spec[1], torch.float32)
    for P in (1, 3):
        w, a = points(n, P, seed=70).float(), points(n, P, seed=71).float()
        q, s, g = ops.quad_form(zs, w, a, params, name, True, True)
        qr, sr, gr = reference.quad_form(f64(zs), f64(w), f64(a), params, name, True, True)
        assert ((q - qr).abs() / abs_quad_scale(zs, w, params, name)).max().item() < NEW_TOL[torch.float32]
        assert rel_err(s, sr) < NEW_TOL[torch.float32] and rel_err(g, gr) < NEW_TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplacian_extreme_params_finite(dtype):
    # laplacian params clamped to [tiny, max / 4] of the compute type (kernel_params' clamp): c r may
    # overflow to inf (exp gives 0, g = 0) or g = c e / r meet the smallest r; every output finite
    info = torch.finfo(dtype)
    x = points(40, 3, seed=72).to(dtype)
    x[1] = x[0]  # a duplicate: r = 0 on the off-diagonal too
    w = points(40, 1, seed=73).to(dtype)
    for value in (info.tiny, info.max / 4):
        params = torch.tensor([value, 1.0], dtype=torch.float64)
        outs = [*ops.quad_form(x, w, w, params, "laplacian", False, True),
                *ops.pair_reduce(x, x, w, w, params, "laplacian", True), ops.gram(x, x, params, "laplacian", True)]
        assert all(bool(torch.isfinite(t).all()) for t in outs), value
        qr, sr, gr = reference.quad_form(f64(x), f64(w), f64(w), params, "laplacian", False, True)
        assert rel_err(outs[1], sr) < NEW_TOL[dtype] and rel_err(outs[2], gr) < NEW_TOL[dtype], value


@pytest.mark.parametrize("spec", [NEW_KERNELS[0], NEW_KERNELS[2], NEW_KERNELS[-1]], ids=new_kernel_id)
def test_new_kernels_quad_form_zero_a_blocks(spec):
    # a = [w_x; 0] (only x needs a gradient): blocks of zero a skip their G side, for the dot kernel's
    # -h (a.w) z terms as for the distance kernels'; 10 blocks of 64
    nx, n = 333, 640
    x, y = points(nx, 5, seed=74), points(n - nx, 5, shift=0.3, seed=75)
    for dtype in (torch.float64, torch.float32):
        xs, ys, params, name = prepared_new(x, y, spec[0], spec[1], dtype)
        z = torch.cat([xs, ys])
        w = torch.cat([torch.full((nx, 1), 1.0 / nx), torch.full((n - nx, 1), -1.0 / (n - nx))]).to(dtype)
        ax = torch.cat([w[:nx], torch.zeros(n - nx, 1, dtype=dtype)])
        q, s, g = ops.quad_form(z, w, ax, params, name, True, True)
        qr, sr, gr = reference.quad_form(f64(z), f64(w), f64(ax), params, name, True, True)
        assert rel_err(g, gr) < NEW_TOL[dtype] and rel_err(s, sr) < NEW_TOL[dtype]
        assert g[nx:].abs().max().item() == 0.0


# ---- polynomial at large d: the BLAS-GEMM tile path (csrc/cpu/dot_gemm.cpp, d >= kMinD = 512) ---------
GEMM_D = 512  # dot_gemm.h kMinD


def _poly_points(n, d, seed):
    return points(n, d, seed=seed) / math.sqrt(d)  # x.y of order 1: t = gamma x.y + coef well inside range


@pytest.mark.parametrize("n,d", [(1, GEMM_D), (37, GEMM_D + 3), (300, GEMM_D + 1), (517, 600), (1100, GEMM_D + 5)])
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("excl", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_polynomial_gemm_quad_form_matches_oracle(n, d, P, excl, dtype):
    # 300, 517, 1100 rows: 3, 5 blocks of 128 (odd rounds), 5 blocks of 256; 1100 = 4 * 256 + 76 (a short block)
    z, w, a = _poly_points(n, d, 71), points(n, P, seed=72), points(n, P, seed=73)
    prm = torch.tensor([0.7, -0.4, 3.0], dtype=torch.float64)
    q, s, g = ops.quad_form(z.to(dtype), w.to(dtype), a.to(dtype), prm, "polynomial", excl, True)
    q0 = ops.quad_form(z.to(dtype), w.to(dtype), None, prm, "polynomial", excl, False)[0]
    assert torch.equal(q, q0)  # q bitwise the same with and without S and G
    want = reference.quad_form(z, w, a, prm, "polynomial", excl, True)
    absq = abs_quad_scale(z, w, prm, "polynomial")
    assert ((q - want[0]).abs() / absq).max().item() < TOL[dtype]
    assert rel_err(s, want[1]) < TOL[dtype]
    assert rel_err(g, want[2]) < TOL[dtype]


@pytest.mark.parametrize("n,m,d", [(1, 1, GEMM_D), (300, 257, GEMM_D + 3), (130, 1030, 600), (1030, 7, GEMM_D)])
@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("excl", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_polynomial_gemm_pair_reduce_matches_oracle(n, m, d, p, excl, dtype):
    x = _poly_points(n, d, 81)
    y = x if excl else _poly_points(m, d, 82)  # exclude_diagonal: the same points (its use)
    v, a = points(y.shape[0], p, seed=83), points(n, p, seed=84)
    prm = torch.tensor([0.5, -0.3, 4.0], dtype=torch.float64)
    s, g = ops.pair_reduce(x.to(dtype), y.to(dtype), v.to(dtype), a.to(dtype), prm, "polynomial", excl)
    want = reference.pair_reduce(x, y, v, a, prm, "polynomial", excl)
    assert rel_err(s, want[0]) < TOL[dtype]
    assert rel_err(g, want[1]) < TOL[dtype]
    s1, g1 = ops.pair_reduce(x.to(dtype), y.to(dtype), v.to(dtype), None, prm, "polynomial", excl)
    assert torch.equal(s1, s) and g1.shape == (0, d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("derivative", [False, True])
def test_polynomial_gemm_gram_matches_oracle(dtype, derivative):
    x, y = _poly_points(300, GEMM_D + 7, 91).to(dtype), _poly_points(45, GEMM_D + 7, 92).to(dtype)
    prm = torch.tensor([0.7, 1.0, 2.0], dtype=torch.float64)
    got = ops.gram(x, y, prm, "polynomial", derivative)
    assert got.dtype == dtype
    want = reference.gram(f64(x), f64(y), prm, "polynomial", derivative)
    tol = TOL[dtype] if dtype in (torch.float64, torch.float32) else 1e-2  # the output is rounded to dtype
    assert rel_err(got, want) < tol


def test_polynomial_gemm_half_inputs_compute_in_float32():
    z, w, a = _poly_points(200, GEMM_D, 95), points(200, 2, seed=96), points(200, 2, seed=97)
    prm = torch.tensor([0.7, 1.0, 3.0], dtype=torch.float64)
    for dt in (torch.float16, torch.bfloat16):
        got = ops.quad_form(z.to(dt), w.to(dt), a.to(dt), prm, "polynomial", True, True)
        f32 = ops.quad_form(z.to(dt).float(), w.to(dt).float(), a.to(dt).float(), prm, "polynomial", True, True)
        assert all(torch.equal(u, v) for u, v in zip(got, f32))


def test_polynomial_gemm_deterministic_across_thread_counts():
    # several tiles per thread, odd and even block counts, a short last block, P = 1 and 3, a zero on some
    # blocks of a (skipped gradient blocks)
    z = _poly_points(1100, GEMM_D + 5, 101).float()
    w, aw = points(1100, 3, seed=102).float(), points(1100, 3, seed=103).float()
    aw[:300] = 0.0
    x, y = z[:700], z[700:]
    v, a = points(400, 2, seed=104).float(), points(700, 2, seed=105).float()
    prm = torch.tensor([0.7, 1.0, 3.0], dtype=torch.float64)

    def run():
        full = ops.quad_form(z, w, aw, prm, "polynomial", True, True)
        assert torch.equal(ops.quad_form(z, w, None, prm, "polynomial", True, False)[0], full[0])
        return [*full, *ops.quad_form(z[:1030], w[:1030, :1], aw[:1030, :1], prm, "polynomial", False, True),
                *ops.pair_reduce(x, y, v, a, prm, "polynomial", False),
                *ops.pair_reduce(x, x, a, a, prm, "polynomial", True),
                ops.gram(x, y, prm, "polynomial", True), *ops.quad_form(z.double(), w.double(), aw.double(), prm,
                                                                        "polynomial", False, True)]

    assert_same_bits_across_threads(run)
