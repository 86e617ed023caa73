"""The C++ CPU backend (csrc/cpu) against the float64 oracle (backends/reference.py run in float64).

Tolerances are relative to the largest magnitude of the oracle's output; float32 compute measures
~3e-6 on these problems (r2 rounding dominates), float64 ~5e-14 (the oracle's own uncentered r2).
"""

import math

import pytest
import torch

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


def oracle_pair_reduce(x, y, v, a, sigmas, kernel, excl):
    f = lambda t: None if t is None else t.double()  # noqa: E731
    return reference.pair_reduce(f(x), f(y), f(v), f(a), sigmas, kernel, excl)


KERNELS = [("rbf", None), ("imq", [0.7]), ("rbf", "multi"), ("imq", [0.2, 1.0, 3.0])]


def sigmas_for(spec, d):
    if spec is None:
        return [math.sqrt(d)]
    if spec == "multi":
        return [0.5, math.sqrt(d), 3.0 * math.sqrt(d)]
    return spec


SHAPES = [(1, 1, 1), (2, 7, 2), (7, 2, 5), (129, 129, 64), (1000, 333, 5), (129, 70, 784), (33, 33, 2)]


@pytest.mark.parametrize("n,m,d", SHAPES)
@pytest.mark.parametrize("kernel,sig", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_reduce_matches_oracle(n, m, d, kernel, sig, dtype):
    sigmas = sigmas_for(sig, d)
    x = points(n, d, shift=2.0, seed=1).to(dtype)
    y = points(m, d, shift=2.0, scale=1.3, seed=2).to(dtype)
    for p in (1, 5):
        v = points(m, p, seed=3).to(dtype)
        a = points(n, p, seed=4).to(dtype)
        for excl in ([False, True] if n == m else [False]):
            for aa in (None, a):
                S, G = ops.pair_reduce(x, y, v, aa, sigmas, kernel, excl)
                Sr, Gr = oracle_pair_reduce(x, y, v, aa, sigmas, kernel, excl)
                assert S.dtype == torch.float64 and G.dtype == torch.float64
                assert G.shape == ((n, d) if aa is not None else (0, d))
                assert rel_err(S, Sr) < TOL[dtype], (p, excl, aa is None)
                if aa is not None:
                    assert rel_err(G, Gr) < TOL[dtype], (p, excl)


@pytest.mark.parametrize("n,d", [(1, 1), (2, 3), (7, 5), (129, 64), (1000, 2), (150, 784), (300, 8)])
@pytest.mark.parametrize("kernel,sig", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quad_form_matches_oracle(n, d, kernel, sig, dtype):
    sigmas = sigmas_for(sig, d)
    z = points(n, d, shift=-1.0, seed=5).to(dtype)
    for P in (1, 3, 37):
        w = points(n, P, seed=6).to(dtype)
        for excl in (False, True):
            q = ops.quad_form(z, w, sigmas, kernel, excl)
            qr = reference.quad_form(z.double(), w.double(), sigmas, kernel, excl)
            assert q.dtype == torch.float64 and q.shape == (P,)
            # random-sign weights cancel: measure against |w|^T K |w|
            scale = reference.quad_form(z.double(), w.double().abs(), sigmas, kernel, excl).max().clamp_min(1e-300)
            assert ((q - qr).abs().max() / scale).item() < TOL[dtype], (P, excl)


def test_quad_form_mmd_weights_many_blocks():
    # pooled Z with the +1/N, -1/M column: crosses several symmetric blocks (block size 64 or 128)
    x, y = points(1100, 3, seed=7), points(900, 3, shift=0.3, seed=8)
    z = torch.cat([x, y])
    w = torch.cat([torch.full((1100, 1), 1 / 1100.0), torch.full((900, 1), -1 / 900.0)]).double()
    for dtype in (torch.float64, torch.float32):
        q = ops.quad_form(z.to(dtype), w.to(dtype), [1.0], "rbf", True)
        qr = reference.quad_form(z.to(dtype).double(), w.to(dtype).double(), [1.0], "rbf", True)
        assert abs(q.item() - qr.item()) <= TOL[dtype] * 10 * abs(qr.item()) + 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_rbf_gram_matches_oracle(dtype):
    for n, m, d in [(1, 1, 1), (7, 130, 5), (129, 33, 64), (40, 50, 784)]:
        x = points(n, d, seed=9).to(dtype)
        y = points(m, d, shift=0.2, seed=10).to(dtype)
        sig = [0.5 * math.sqrt(d), 2.0]
        K = ops.rbf_gram(x, y, sig)
        Kr = reference.rbf_gram(x.double(), y.double(), sig)
        assert K.dtype == dtype and K.shape == (n, m)
        tol = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, TOL[dtype])
        assert rel_err(K, Kr) < tol


def test_exp_accuracy_elementwise():
    # d = 1: x = {0}, y = {t, -t, ...}, so the pooled mean is exactly 0, centering changes nothing and
    # r2 = fl(t * t). Then k = exp(-r2 / 2) measures the vector exp alone (arguments 0 ... -84).
    t = torch.linspace(0.0, 13.0, 4001, dtype=torch.float64)
    for dtype, tol in ((torch.float32, 2.5e-7), (torch.float64, 4e-16)):
        tt = t.to(dtype)
        y = torch.stack([tt, -tt], 1).reshape(-1, 1)
        K = ops.rbf_gram(torch.zeros(1, 1, dtype=dtype), y, [1.0]).double()[0]
        r2 = (y * y).double()[:, 0]  # fl(t * t) in the input precision
        want = torch.exp(-r2 / 2.0)
        ok = want > (1e-37 if dtype == torch.float32 else 1e-300)
        err = (K - want).abs() / want
        assert err[ok].max().item() < tol, err[ok].max().item()
        assert bool((K[~ok] < 2e-38).all())


def test_half_inputs_upcast():
    x64, y64 = points(65, 6, seed=11), points(40, 6, seed=12)
    v64, a64 = points(40, 2, seed=13), points(65, 2, seed=14)
    for dtype in (torch.float16, torch.bfloat16):
        x, y, v, a = (t.to(dtype) for t in (x64, y64, v64, a64))
        S, G = ops.pair_reduce(x, y, v, a, [1.5], "rbf", False)
        Sr, Gr = oracle_pair_reduce(x, y, v, a, [1.5], "rbf", False)
        assert rel_err(S, Sr) < 2e-5 and rel_err(G, Gr) < 2e-5
        q = ops.quad_form(x, a, [1.5], "imq", True)
        qr = reference.quad_form(x.double(), a.double(), [1.5], "imq", True)
        assert rel_err(q, qr) < 2e-5


def test_non_contiguous_inputs():
    base = points(80, 12, seed=15)
    x = base[::2, ::3]  # (40, 4) strided
    y = points(4, 30, seed=16).t()  # (30, 4) transposed
    v = points(3, 30, seed=17).t()  # (30, 3)
    a = points(40, 6, seed=18)[:, 1::2]  # (40, 3)
    assert not (x.is_contiguous() or y.is_contiguous() or v.is_contiguous() or a.is_contiguous())
    for dtype in (torch.float64, torch.float32):
        args = [t.to(dtype) for t in (x, y, v, a)]
        S, G = ops.pair_reduce(*args, [1.0, 2.0], "rbf", False)
        S2, G2 = ops.pair_reduce(*[t.contiguous() for t in args], [1.0, 2.0], "rbf", False)
        assert torch.equal(S, S2) and torch.equal(G, G2)
        Sr, Gr = oracle_pair_reduce(*args, [1.0, 2.0], "rbf", False)
        assert rel_err(S, Sr) < TOL[dtype] and rel_err(G, Gr) < TOL[dtype]
        q = ops.quad_form(args[0], args[3], [1.0], "imq", False)
        assert rel_err(q, reference.quad_form(args[0].double(), args[3].double(), [1.0], "imq", False)) < TOL[dtype]
        K = ops.rbf_gram(args[0], args[1], [1.0])
        assert torch.equal(K, ops.rbf_gram(args[0].contiguous(), args[1].contiguous(), [1.0]))


def test_deterministic_across_calls_and_thread_counts():
    x, y = points(1000, 7, seed=19).float(), points(777, 7, seed=20).float()
    v, a = points(777, 5, seed=21).float(), points(1000, 5, seed=22).float()
    v1, a1 = v[:, :1].contiguous(), a[:, :1].contiguous()
    z = torch.cat([x, y])
    w = points(1777, 3, seed=23).float()

    def run():
        return [*ops.pair_reduce(x, y, v, a, [1.0, 3.0], "rbf", False),
                *ops.pair_reduce(x, y, v1, a1, [2.0], "imq", False),
                ops.pair_reduce(x, y, v1, None, [2.0], "rbf", False)[0],
                ops.quad_form(z, w, [2.0], "rbf", True), ops.quad_form(z, w[:, :1], [2.0], "rbf", True),
                ops.rbf_gram(x[:100], y, [2.0])]

    old = torch.get_num_threads()
    try:
        first = run()
        assert all(torch.equal(p, q) for p, q in zip(first, run()))
        torch.set_num_threads(1)
        single = run()
        torch.set_num_threads(max(2, old))
        multi = run()
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(p, q) for p, q in zip(first, single))
    assert all(torch.equal(p, q) for p, q in zip(single, multi))


def test_empty_and_degenerate_shapes():
    x = torch.zeros(0, 3)
    y = torch.randn(5, 3)
    S, G = ops.pair_reduce(x, y, torch.ones(5, 2), torch.ones(0, 2), [1.0], "rbf", False)
    assert S.shape == (0, 2) and G.shape == (0, 3)
    S, G = ops.pair_reduce(y, x, torch.ones(0, 2), torch.ones(5, 2), [1.0], "rbf", False)
    assert torch.equal(S, torch.zeros(5, 2, dtype=torch.float64)) and torch.equal(G, torch.zeros(5, 3, dtype=torch.float64))
    assert ops.quad_form(torch.zeros(0, 2), torch.zeros(0, 4), [1.0], "rbf", False).shape == (4,)
    assert ops.rbf_gram(x, y, [1.0]).shape == (0, 5)
    # a single point with the diagonal excluded has nothing left
    S, G = ops.pair_reduce(y[:1], y[:1], torch.ones(1, 1), torch.ones(1, 1), [1.0], "rbf", True)
    assert S.item() == 0.0 and G.abs().max().item() == 0.0


def test_large_index_space():
    # N * M = 2.5e9 > 2^31 pairs, d = 1, float32: x_i = (i mod 100) h, v_i = 1 + (i mod 7), so every pair
    # contributes and the oracle groups the columns by residue: S_i = sum_r k((i mod 100 - r) h) V_r.
    n, h, sigma = 50_000, 0.01, 0.3
    idx = torch.arange(n)
    x = ((idx % 100).double() * h).unsqueeze(1)
    v = (1.0 + (idx % 7).double()).unsqueeze(1)
    S, _ = ops.pair_reduce(x.float(), x.float(), v.float(), None, [sigma], "rbf", False)
    xr = x.float().double()[:100, 0]
    V = torch.zeros(100, dtype=torch.float64).index_add_(0, idx % 100, v[:, 0])
    k = torch.exp(-((xr[:, None] - xr[None, :]) ** 2) / (2 * sigma**2))
    want = (k @ V)[idx % 100]
    assert rel_err(S[:, 0], want) < 2e-5


@pytest.mark.parametrize("call,match", [
    (lambda: ops.pair_reduce(torch.ones(3), torch.ones(3, 1), torch.ones(3, 1), None, [1.0], "rbf", False), "2-D"),
    (lambda: ops.pair_reduce(torch.ones(3, 2), torch.ones(3, 1), torch.ones(3, 1), None, [1.0], "rbf", False),
     "same number of columns"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(3, 1), None, [1.0], "rbf", False),
     "one row per row of y"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 2), torch.ones(3, 1), [1.0], "rbf",
                             False), "a must have shape"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1).double(), torch.ones(4, 1), None, [1.0], "rbf",
                             False), "same dtype"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [1.0], "rbf", True),
     "exclude_diagonal"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [1.0], "gauss", False),
     "kernel must be"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [], "rbf", False), "sigmas"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [1.0] * 17, "rbf", False),
     "sigmas"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [1.0, -2.0], "rbf", False),
     "sigma"),
    (lambda: ops.pair_reduce(torch.ones(3, 1), torch.ones(4, 1), torch.ones(4, 1), None, [0.0], "imq", False), "sigma"),
    (lambda: ops.pair_reduce(torch.ones(3, 1, dtype=torch.int64), torch.ones(4, 1, dtype=torch.int64),
                             torch.ones(4, 1, dtype=torch.int64), None, [1.0], "rbf", False), "float"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(4, 1), [1.0], "rbf", False), "one row per row of z"),
    (lambda: ops.quad_form(torch.ones(3, 2), torch.ones(3), [1.0], "rbf", False), "2-D"),
    (lambda: ops.rbf_gram(torch.ones(3, 2), torch.ones(3, 3), [1.0]), "same number of columns"),
    (lambda: ops.rbf_gram(torch.ones(3, 2), torch.ones(3, 2), [float("nan")]), "sigma"),
])
def test_checks_raise_runtime_error(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()
