"""The C++ CPU backend (csrc/cpu) against the float64 oracle (backends/reference.py run in float64 on
float64 copies of the same prepared inputs).

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

pytestmark = pytest.mark.skipif(native.IMPORT_ERROR is not None, reason=str(native.IMPORT_ERROR))

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


# ---- determinism and layouts ------------------------------------------------------------------------
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

    old = torch.get_num_threads()
    try:
        first = run()
        assert all(torch.equal(p, q) for p, q in zip(first, run()))
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(2)
        multi = run()
        torch.set_num_threads(3)
        three = run()
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(p, q) for p, q in zip(first, single))
    assert all(torch.equal(p, q) for p, q in zip(single, multi))
    assert all(torch.equal(p, q) for p, q in zip(single, three))


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
