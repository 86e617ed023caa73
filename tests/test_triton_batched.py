"""The Triton backend's three primitives on a leading batch dimension (docs/DESIGN.md, "Batched problems").

Problem b of a batched call must be bitwise the 2-D Triton call on (x[b], y[b], ..., params[b]) (every host
decision is a function of one problem's sizes and the lossy flag is per problem, so the schedule allows it),
and match the float64 oracle (backends/reference.py looped over b) within the compute type's rounding:
errors are measured against the magnitudes the sums add up (|K| |v|, |W| |a.v| |points|, |w|^T |K| |w|),
float32 1e-4, float64 1e-10, as tests/test_triton.py's new-kernel tests.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from infovae_kernels.backends import fake  # noqa: E402
from infovae_kernels.backends import reference as R  # noqa: E402
from infovae_kernels.backends import triton as T  # noqa: E402

AVAILABLE, REASON = T.status()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"triton backend unavailable: {REASON}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
KERNELS = ["rbf", "imq", "laplacian", "energy", "polynomial"]
DTYPES = [torch.float32, torch.float64]


def rotate(cases):
    """Each (kernel, dtype) once, with the shape cases in turn (each case gets two kernels, one of each
    dtype when there are 5 cases): every combination would take minutes under the interpreter."""
    pairs = [(kernel, dtype) for kernel in KERNELS for dtype in DTYPES]
    return [pytest.param(*cases[i % len(cases)], kernel, dtype,
                         id=f"{kernel}-{str(dtype)[6:]}-{cases[i % len(cases)]}") for i, (kernel, dtype) in enumerate(pairs)]


def batch_params(kernel, d, nbatch):
    """(B, S') float64, different for every problem: rbf and imq 2 scales, laplacian 2, energy [p],
    polynomial [gamma, coef, degree] with degrees 1, 2, 3, ..."""
    rows = []
    for b in range(nbatch):
        f = (1.0, 0.5, 2.0, 1.5)[b % 4]
        sig = torch.tensor([0.35 * d ** 0.5 * f, 1.2 * d ** 0.5 * f], dtype=torch.float64)
        if kernel == "rbf":
            rows.append(0.5 / sig ** 2)
        elif kernel == "imq":
            rows.append(2.0 * d * sig ** 2)
        elif kernel == "laplacian":
            rows.append(1.0 / sig)
        elif kernel == "energy":
            rows.append(torch.tensor([0.75 * f], dtype=torch.float64))
        else:
            rows.append(torch.tensor([1.0 / d, float(b % 2), float(1 + b % 3)], dtype=torch.float64))
    if not rows:
        return torch.empty((0, {"energy": 1, "polynomial": 3}.get(kernel, 2)), dtype=torch.float64, device=DEV)
    return torch.stack(rows).to(DEV)


def points(nbatch, n, d, dtype, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (0.25 * torch.randn(nbatch, n, d, generator=g, dtype=torch.float64) + shift).to(dtype).to(DEV)


def weights(nbatch, n, p, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(nbatch, n, p, generator=g, dtype=torch.float64).to(dtype).to(DEV)


def err(out, ref, magnitude):
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.numel() == 0:
        return 0.0
    return ((out.double().cpu() - ref.double().cpu()).abs().max() / magnitude.double().cpu().abs().max()
            .clamp_min(1e-300)).item()


def k_and_w(x, y, params, kernel):
    """float64 |K| and |W| (g, or h for polynomial) of one problem from the oracle."""
    x, y = x.double(), y.double()
    return R.gram(x, y, params, kernel, False).abs(), R.gram(x, y, params, kernel, True).abs()


def g_magnitude(x, y, w_abs, av, kernel):
    m = w_abs * av.abs()
    ax, ay = x.double().abs(), y.double().abs()
    return m @ ay if kernel == "polynomial" else m.sum(1, keepdim=True) * ax + m @ ay


def d64(t):
    return None if t is None else t.double()


def assert_bitwise(batched, singles):
    """Every batched output's row b equals the 2-D call on problem b, bit for bit."""
    for b, single in enumerate(singles):
        for out, one in zip(batched, single):
            assert out[b].shape == one.shape and torch.equal(out[b], one), b


# ------------------------------------------------------------------------------------ gram

GRAM_CASES = [  # nbatch, n, m, d
    (1, 1, 1, 2), (3, 3, 127, 3), (3, 127, 1, 17), (3, 257, 3, 5), (1, 127, 3, 17),
]


@pytest.mark.parametrize("nbatch,n,m,d,kernel,dtype", rotate(GRAM_CASES))
def test_gram_batched(nbatch, n, m, d, kernel, dtype):
    x, y = points(nbatch, n, d, dtype, 1), points(nbatch, m, d, dtype, 2, 0.05)
    params = batch_params(kernel, d, nbatch)
    for derivative in (False, True):
        K = T.gram(x, y, params, kernel, derivative)
        assert K.shape == (nbatch, n, m) and K.dtype == dtype
        assert_bitwise([K], [[T.gram(x[b], y[b], params[b], kernel, derivative)] for b in range(nbatch)])
        for b in range(nbatch):
            ref = R.gram(x[b].double(), y[b].double(), params[b], kernel, derivative)
            assert err(K[b], ref, ref.abs()) < TOL[dtype]


# ------------------------------------------------------------------------------------ pair_reduce

PAIR_CASES = [  # nbatch, n, m, d, p, with a, exclude_diagonal
    (1, 1, 3, 3, 1, True, False),
    (3, 3, 127, 3, 2, True, False),
    (3, 127, 127, 17, 1, False, True),
    (3, 257, 3, 2, 3, True, False),
    (3, 127, 127, 3, 2, True, True),
]


@pytest.mark.parametrize("nbatch,n,m,d,p,with_a,excl,kernel,dtype", rotate(PAIR_CASES))
def test_pair_reduce_batched(nbatch, n, m, d, p, with_a, excl, kernel, dtype):
    x, y = points(nbatch, n, d, dtype, 3), points(nbatch, m, d, dtype, 4, 0.05)
    if excl:
        y = x
    v = weights(nbatch, m, p, dtype, 5)
    a = weights(nbatch, n, p, dtype, 6) if with_a else None
    params = batch_params(kernel, d, nbatch)
    s, g = T.pair_reduce(x, y, v, a, params, kernel, excl)
    assert s.shape == (nbatch, n, p) and g.shape == (nbatch, n if with_a else 0, d)
    assert_bitwise([s, g], [T.pair_reduce(x[b], y[b], v[b], None if a is None else a[b], params[b], kernel, excl)
                            for b in range(nbatch)])
    for b in range(nbatch):
        ab = None if a is None else a[b]
        s0, g0 = R.pair_reduce(x[b].double(), y[b].double(), v[b].double(), d64(ab), params[b], kernel, excl)
        k_abs, w_abs = k_and_w(x[b], y[b], params[b], kernel)
        assert err(s[b], s0, k_abs @ v[b].double().abs()) < TOL[dtype]
        if with_a:
            mag = g_magnitude(x[b], y[b], w_abs, ab.double() @ v[b].double().T, kernel)
            assert err(g[b], g0, mag) < TOL[dtype]


# ------------------------------------------------------------------------------------ quad_form

QUAD_CASES = [  # nbatch, n, d, P, with a, exclude_diagonal, row_sums
    (1, 1, 3, 1, True, False, True),
    (3, 3, 2, 2, True, True, True),
    (3, 127, 3, 1, False, False, False),
    (3, 127, 17, 2, True, False, True),
    (3, 257, 3, 3, False, True, True),
]


@pytest.mark.parametrize("nbatch,n,d,P,with_a,excl,row_sums,kernel,dtype", rotate(QUAD_CASES))
def test_quad_form_batched(nbatch, n, d, P, with_a, excl, row_sums, kernel, dtype):
    z = points(nbatch, n, d, dtype, 7)
    w = weights(nbatch, n, P, dtype, 8)
    a = weights(nbatch, n, P, dtype, 9) if with_a else None
    params = batch_params(kernel, d, nbatch)
    q, s, g = T.quad_form(z, w, a, params, kernel, excl, row_sums)
    assert q.shape == (nbatch, P) and s.shape == (nbatch, n if row_sums else 0, P)
    assert g.shape == (nbatch, n if with_a else 0, d)
    assert_bitwise([q, s, g], [T.quad_form(z[b], w[b], None if a is None else a[b], params[b], kernel, excl,
                                           row_sums) for b in range(nbatch)])
    for b in range(nbatch):
        ab = None if a is None else a[b]
        q0, s0, g0 = R.quad_form(z[b].double(), w[b].double(), d64(ab), params[b], kernel, excl, row_sums)
        k_abs, w_abs = k_and_w(z[b], z[b], params[b], kernel)
        wa = w[b].double().abs()
        assert err(q[b], q0, ((k_abs @ wa) * wa).sum(0)) < TOL[dtype]
        if row_sums:
            assert err(s[b], s0, k_abs @ wa) < TOL[dtype]
        if with_a:
            mag = g_magnitude(z[b], z[b], w_abs, ab.double() @ w[b].double().T, kernel)
            assert err(g[b], g0, mag) < TOL[dtype]


# ------------------------------------------------------------------------------------ per-problem decisions

def test_lossy_flag_is_per_problem():
    """d > 16: problem 1's points are far from the origin for its narrow bandwidth (the expansion would lose
    the distance), problem 0's are not; each takes the formula of its 2-D call, and both match float64."""
    z = points(2, 40, 20, torch.float32, 10)
    z[1] += 3.0
    params = torch.tensor([[0.5], [50.0]], dtype=torch.float64, device=DEV)
    w = weights(2, 40, 2, torch.float32, 11)
    flag, variants = T._variants(z, z, params, "rbf", torch.float32)
    assert flag.tolist() == [0, 1] and len(variants) == 2
    out = T.quad_form(z, w, w, params, "rbf", False, True)
    assert_bitwise(out, [T.quad_form(z[b], w[b], w[b], params[b], "rbf", False, True) for b in range(2)])
    K = T.gram(z, z, params, "rbf", False)
    for b in range(2):
        ref = R.gram(z[b].double(), z[b].double(), params[b], "rbf", False)
        assert err(K[b], ref, ref.abs()) < 1e-4


class _Counting:
    """A kernel launcher that records (kernel name, grid) of each launch."""

    def __init__(self, name, fn, log):
        self.name, self.fn, self.log = name, fn, log

    def __getitem__(self, grid):
        self.log.append((self.name, grid))
        return self.fn[grid]


@pytest.mark.parametrize("d", [3, 20])
def test_one_launch_per_phase_for_the_whole_batch(monkeypatch, d):
    """A batch of 3 launches the kernels a batch of 1 does, the batch folded into the grid's first axis."""
    original = T._tuner
    log = []
    monkeypatch.setattr(T, "_tuner", lambda name, configs: _Counting(name, original(name, configs), log))

    def launches(nbatch):
        log.clear()
        x, v = points(nbatch, 40, d, torch.float32, 12), weights(nbatch, 40, 2, torch.float32, 13)
        params = batch_params("rbf", d, nbatch)
        T.gram(x, x, params, "rbf", False)
        T.pair_reduce(x, x, v, v, params, "rbf", False)
        T.quad_form(x, v, v, params, "rbf", False, True)
        return list(log)

    one, three = launches(1), launches(3)
    assert [name for name, _ in one] == [name for name, _ in three]
    for (name, g1), (_, g3) in zip(one, three):
        if name == "sum_slots_kernel":  # elementwise over (B, N, cols)
            assert g3[0] >= g1[0]
        else:
            assert g3[0] == 3 * g1[0] and tuple(g3[1:]) == tuple(g1[1:]), name


# ------------------------------------------------------------------------------------ layouts, edges, errors

def test_non_contiguous_batched_inputs():
    base = points(3, 60, 10, torch.float32, 14)
    x = base[:, :, ::2]  # (3, 60, 5), strided columns
    y = points(3, 5, 40, torch.float32, 15).transpose(1, 2)  # (3, 40, 5), column-major problems
    vb = weights(3, 40, 6, torch.float32, 16)
    v, a = vb[:, :, ::2], weights(3, 60, 4, torch.float32, 17)[:, :, 1:4]
    params = batch_params("imq", 5, 6)[::2]  # (3, 2) with a row stride of 4
    assert not any(t.is_contiguous() for t in (x, y, v, a, params))
    s, g = T.pair_reduce(x, y, v, a, params, "imq", False)
    xc, yc, vc, ac, pc = (t.contiguous() for t in (x, y, v, a, params))
    s_c, g_c = T.pair_reduce(xc, yc, vc, ac, pc, "imq", False)
    assert torch.equal(s, s_c) and torch.equal(g, g_c)
    assert torch.equal(T.gram(x, y, params, "imq", True), T.gram(xc, yc, pc, "imq", True))
    out, out_c = T.quad_form(x, a, a, params, "rbf", True, True), T.quad_form(xc, ac, ac, pc, "rbf", True, True)
    assert all(torch.equal(o, c) for o, c in zip(out, out_c))
    s0, g0 = R.pair_reduce(x[1].double(), y[1].double(), v[1].double(), a[1].double(), params[1], "imq", False)
    assert torch.allclose(s[1], s0, rtol=1e-4, atol=1e-5) and torch.allclose(g[1], g0, rtol=1e-4, atol=1e-5)


def test_empty_batches_and_empty_problems():
    params = batch_params("rbf", 3, 0)
    x, v = points(0, 5, 3, torch.float32, 18), weights(0, 5, 2, torch.float32, 19)
    assert T.gram(x, x, params, "rbf", False).shape == (0, 5, 5)
    s, g = T.pair_reduce(x, x, v, v, params, "rbf", False)
    assert s.shape == (0, 5, 2) and g.shape == (0, 5, 3) and s.dtype == torch.float64
    s, g = T.pair_reduce(x, x, v, None, params, "rbf", False)
    assert g.shape == (0, 0, 3)
    q, s, g = T.quad_form(x, v, v, params, "rbf", False, True)
    assert q.shape == (0, 2) and s.shape == (0, 5, 2) and g.shape == (0, 5, 3)
    q, s, g = T.quad_form(x, v, None, params, "rbf", False, False)
    assert s.shape == (0, 0, 2) and g.shape == (0, 0, 3)
    # N = 0 inside a batch of 2: zeros like 2-D
    params = batch_params("rbf", 3, 2)
    x0, y = points(2, 0, 3, torch.float32, 20), points(2, 4, 3, torch.float32, 21)
    w, w0 = weights(2, 4, 2, torch.float32, 22), weights(2, 0, 2, torch.float32, 23)
    assert T.gram(x0, y, params, "rbf", False).shape == (2, 0, 4)
    s, g = T.pair_reduce(x0, y, w, w0, params, "rbf", False)
    assert s.shape == (2, 0, 2) and g.shape == (2, 0, 3)
    q, s, g = T.quad_form(x0, w0, None, params, "rbf", False, True)
    assert q.shape == (2, 2) and torch.equal(q, torch.zeros_like(q)) and s.shape == (2, 0, 2) and g.shape == (2, 0, 3)


def test_mismatched_batches_and_ranks_name_the_argument():
    x, y = points(3, 5, 3, torch.float32, 25), points(3, 6, 3, torch.float32, 26)
    v = weights(3, 6, 1, torch.float32, 27)
    params = batch_params("rbf", 3, 3)
    with pytest.raises(ValueError, match="y holds 2 problems, x 3"):
        T.gram(x, y[:2], params, "rbf", False)
    with pytest.raises(ValueError, match="params holds 2 problems"):
        T.pair_reduce(x, y, v, None, params[:2], "rbf", False)
    with pytest.raises(ValueError, match="v holds 1 problems"):
        T.pair_reduce(x, y, v[:1], None, params, "rbf", False)
    with pytest.raises(ValueError, match="a holds 2 problems"):
        T.quad_form(x, x[:, :, :1], x[:2, :, :1], params, "rbf", False, False)
    with pytest.raises(ValueError, match="y must be 3-D"):
        T.gram(x, y[0], params, "rbf", False)
    with pytest.raises(ValueError, match="x must be 2-D, or 3-D"):
        T.gram(x[None], y[None], params, "rbf", False)
    with pytest.raises(ValueError, match="params must be a 2-D"):
        T.gram(x, y, params[0], "rbf", False)
    with pytest.raises(ValueError, match="params must be a 1-D"):
        T.gram(x[0], y[0], params, "rbf", False)
    with pytest.raises(ValueError, match="degree"):  # every problem's degree is checked (CPU tensors)
        poly = batch_params("polynomial", 3, 3)
        poly[2, 2] = 2.5
        T.quad_form(x, x, None, poly, "polynomial", False, False)


def _fakes_are_batched():
    x = torch.empty((2, 3, 4), device="meta")
    return tuple(fake.gram_fake(x, x, torch.empty((2, 1), device="meta"), "rbf", False).shape) == (2, 3, 3)


def test_opcheck_batched():
    """torch.library.opcheck on 3-D calls. Until backends/fake.py's fakes give the batched shapes (the lead's
    part), only the schema and autograd-registration checks run (the fake and aot_dispatch ones compare
    against the 2-D fake shapes)."""
    utils = None if _fakes_are_batched() else ("test_schema", "test_autograd_registration")
    kw = {} if utils is None else {"test_utils": utils}
    x, y = points(2, 7, 3, torch.float32, 28), points(2, 9, 3, torch.float32, 29)
    v, a = weights(2, 9, 2, torch.float32, 30), weights(2, 7, 2, torch.float32, 31)
    p, poly = batch_params("rbf", 3, 2), batch_params("polynomial", 3, 2)
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.gram.default, (x, y, p, "rbf", True), **kw)
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, p, "rbf", False), **kw)
    torch.library.opcheck(ops.pair_reduce.default, (x, x, a, None, poly, "polynomial", True), **kw)
    torch.library.opcheck(ops.quad_form.default, (x, a, a, p, "rbf", True, True), **kw)
    torch.library.opcheck(ops.quad_form.default, (x, a[:, :, :1], None, poly, "polynomial", False, False), **kw)
