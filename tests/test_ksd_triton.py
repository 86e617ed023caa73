"""The "triton" backend's Stein primitives (stein_form, stein_moments) against float64 references.

Without a GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (set here, before triton is first
imported; conftest.py does the same). stein_form's oracle is backends/reference.py's stein_form on float64
copies of the inputs; stein_moments' is formed densely here in float64: the four per-pair matrices of
csrc/cpu/stein.cpp's pair_pass<T, true> (U, phi, phi', A; phi''' by autograd of kernels.stein_radial's
phi'') against [w, w x, w s].

Error = max |out - ref| / max (|W|^T |U|' |W|) (the size of the terms a quadratic form of signed weights
sums; |U|' is the per-pair sum of the magnitudes of u's four terms, which cancel); stein_moments: per
matrix, |M^k|' |Rhs| (A's five terms likewise). Largest measured under the interpreter over these tests'
cases (`python tests/test_ksd_triton.py` prints them): float32 compute (float32, float16, bfloat16 inputs,
the reference on the same rounded inputs) stein_form 9.1e-8, stein_moments 2.7e-7 (the lossy case);
float64 1.8e-16 and 2.8e-16. The tests allow F32_TOL = 1e-5 and F64_TOL = 1e-10.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from infovae_kernels import kernels as KS  # noqa: E402
from infovae_kernels.backends import reference as R  # noqa: E402
from infovae_kernels.backends import triton as T  # noqa: E402

AVAILABLE, REASON = T.status()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"triton backend unavailable: {REASON}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F32_TOL = 1e-5
F64_TOL = 1e-10
TOL = {torch.float64: F64_TOL, torch.float32: F32_TOL, torch.float16: F32_TOL, torch.bfloat16: F32_TOL}
WORST: dict = {}  # (primitive, dtype) -> largest error seen (printed by __main__)

# (kernel, [beta, c, sigma_1, ...])
BASES = [
    ("imq", (-0.5, 1.0, 0.9)),
    ("imq", (-0.3, 1.7, 0.6, 1.5, 4.0)),
    ("rbf", (-0.5, 1.0, 0.7, 2.5)),
    ("rbf", (-0.5, 1.0, 1.3)),
]


def params_of(base):
    return torch.tensor(base[1], dtype=torch.float64, device=DEV)


def data(n, d, p, seed=0, dtype=torch.float32, scale=0.5):
    """Centred points (as the op layer passes them), scores, signed weights (n, p)."""
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x - x.mean(0)
    s = -x + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(n, p, generator=g, dtype=torch.float64)
    return [t.to(dtype).to(DEV) for t in (x, s, w)]


def dense_matrices(x, s, params, kernel, excl):
    """([U, phi, phi', A], their sizes) (n x n, float64) of the points' own rounded values; the size of U
    and A is the sum of their terms' magnitudes (what a rounding error in the terms is relative to)."""
    x, s = x.double().cpu(), s.double().cpu()
    n, d = x.shape
    beta, c, sigmas = float(params[0]), float(params[1]), params[2:].cpu()
    diag = torch.eye(n, dtype=torch.bool)
    delta = x[:, None, :] - x[None, :, :]
    r2 = delta.square().sum(-1).requires_grad_(True)
    phi, d1, d2 = KS.stein_radial(r2, sigmas, kernel, beta, c)
    (d3,) = torch.autograd.grad(d2.sum(), r2)
    r2, phi, d1, d2 = r2.detach(), phi.detach(), d1.detach(), d2.detach()
    ss = s @ s.T
    cross = ((s[None, :, :] - s[:, None, :]) * delta).sum(-1)  # (s_j - s_i).(x_i - x_j)
    u_terms = [phi * ss, 2 * d1 * cross, -2 * d * d1, -4 * d2 * r2]
    a_terms = [d1 * ss, 2 * d2 * cross, -2 * d * d2, -4 * d3 * r2, -4 * d2]
    mats = [sum(u_terms), phi, d1, sum(a_terms)]
    sizes = [sum(v.abs() for v in u_terms), phi.abs(), d1.abs(), sum(v.abs() for v in a_terms)]
    if excl:
        mats, sizes = ([m.masked_fill(diag, 0.0) for m in ms] for ms in (mats, sizes))
    return mats, sizes


def err(out, ref, scale, key):
    out, ref, scale = out.double().cpu(), ref.double().cpu(), scale.double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    e = ((out - ref).abs().max() / scale.abs().max().clamp_min(1e-300)).item() if ref.numel() else 0.0
    WORST[key] = max(WORST.get(key, 0.0), e)
    return e


def check_form(x, s, w, params, kernel, excl):
    q = T.stein_form(x, s, w, params, kernel, excl)
    assert q.dtype == torch.float64 and q.shape == (w.shape[1],)
    x64, s64, w64 = (t.double() for t in (x, s, w))
    q0 = R.stein_form(x64, s64, w64, params, kernel, excl)
    size = dense_matrices(x, s, params, kernel, excl)[1][0].to(DEV)
    scale = (w64.abs() * (size @ w64.abs())).sum(0)
    assert err(q, q0, scale, ("stein_form", x.dtype)) < TOL[x.dtype]


RHS_COLUMNS = [(0, 1), (2, 3), (0, 3), (0, 2)]  # per matrix, blocks of [w | w x | w s] it meets


def check_moments(x, s, w, params, kernel, excl):
    n, d = x.shape
    r = T.stein_moments(x, s, w, params, kernel, excl)
    assert r.dtype == torch.float64 and r.shape == (n, 4, 1 + 2 * d)
    x64, s64, w64 = (t.double().cpu() for t in (x, s, w[:, None]))
    rhs = torch.cat([w64, w64 * x64, w64 * s64], 1)
    bounds = [0, 1, 1 + d, 1 + 2 * d]
    for k, (m, size) in enumerate(zip(*dense_matrices(x, s, params, kernel, excl))):
        lo, hi = bounds[RHS_COLUMNS[k][0]], bounds[RHS_COLUMNS[k][1]]
        ref = torch.zeros(n, 1 + 2 * d, dtype=torch.float64)
        ref[:, lo:hi] = m @ rhs[:, lo:hi]
        scale = size @ rhs.abs()
        assert err(r[:, k], ref, scale, ("stein_moments", x.dtype)) < TOL[x.dtype], k


# ------------------------------------------------------------------------------------ stein_form

FORM_CASES = [(1, 1, 1), (2, 3, 3), (37, 3, 1), (37, 17, 5), (130, 1, 2)]  # n, d, P


@pytest.mark.parametrize("n,d,p", FORM_CASES)
@pytest.mark.parametrize("base", BASES, ids=lambda b: f"{b[0]}{len(b[1]) - 2}")
@pytest.mark.parametrize("excl", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stein_form_matches_float64(n, d, p, base, excl, dtype):
    x, s, w = data(n, d, p, seed=n + d, dtype=dtype)
    check_form(x, s, w, params_of(base), base[0], excl)


def test_stein_form_large_tile_count():
    """n = 130, d = 17: five row tiles (an odd count: every round full) and the expansion of r2."""
    x, s, w = data(130, 17, 4, seed=3)
    check_form(x, s, w, params_of(BASES[1]), "imq", True)
    check_form(x[:128], s[:128], w[:128, :1], params_of(BASES[2]), "rbf", False)  # four tiles: a half round


def test_stein_form_many_columns():
    """P = 70: two 64-wide column chunks (the bootstrap's [1, e_1, ..., e_B] are this wide and wider)."""
    x, s, w = data(37, 3, 70, seed=10)
    check_form(x, s, w, params_of(BASES[0]), "imq", True)


# ------------------------------------------------------------------------------------ stein_moments

MOMENT_CASES = [(1, 1), (2, 3), (37, 3), (37, 17)]  # n, d (n = 130: test_stein_moments_several_tiles_per_split)


@pytest.mark.parametrize("n,d", MOMENT_CASES)
@pytest.mark.parametrize("base", BASES[:3], ids=lambda b: f"{b[0]}{len(b[1]) - 2}")
@pytest.mark.parametrize("excl", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stein_moments_matches_dense_float64(n, d, base, excl, dtype):
    x, s, w = data(n, d, 1, seed=2 * n + d, dtype=dtype)
    check_moments(x, s, w[:, 0], params_of(base), base[0], excl)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [3, 17])
def test_gpu_tile_shapes(dtype, d):
    """The GPU plans' tiles under the interpreter (whose own are 32 x 32 with 32-wide chunks): 16-wide d
    chunks (two at d = 17), stein_form's 64 x 64 (two row tiles at n = 70: a half round), stein_moments'
    16 x 32 and 32 x 32 tiles and 16-column chunks of its d-wide blocks (two at d = 17)."""
    x, s, w = data(70, d, 3, seed=14, dtype=dtype)
    for kind, check, weights in (("stein", check_form, w), ("stein_moments", check_moments, w[:, 0])):
        plan = T._plan(kind, d, dtype, gpu=True)
        with T._forced_tiles(**{k: plan[k] for k in ("BM", "BN", "BLOCK_D", "BLOCK_G")}):
            check(x, s, weights, params_of(BASES[1]), "imq", True)


def test_stein_moments_several_tiles_per_split():
    """n = 130: five row tiles, the column tiles split in two runs of three."""
    x, s, w = data(130, 1, 1, seed=4)
    check_moments(x, s, w[:, 0], params_of(BASES[1]), "imq", True)
    check_moments(x.double(), s.double(), w[:, 0].double(), params_of(BASES[2]), "rbf", False)


def test_form_is_the_moments_u_column():
    """w^T U w two ways: stein_form, and sum_i w_i R[i, U, w] from stein_moments (two kernels, one math)."""
    x, s, w = data(37, 5, 1, seed=9, dtype=torch.float64)
    params = params_of(BASES[1])
    for excl in (False, True):
        q = T.stein_form(x, s, w, params, "imq", excl)
        r = T.stein_moments(x, s, w[:, 0], params, "imq", excl)
        torch.testing.assert_close(q[0], (w[:, 0] * r[:, 0, 0]).sum(), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel,beta,c", [("imq", -0.3, 1.7), ("rbf", -0.5, 1.0)])
@pytest.mark.parametrize("unbiased", [False, True])
def test_ksd_gradient_through_the_triton_primitives(kernel, beta, c, unbiased):
    """ops/ksd.py's _KSD run on this backend (value: stein_form; x, s, w gradients: its fused backward from
    stein_moments) equals it run on the torch blocks (value and autograd), float64: the layout of R is
    the one the op layer reads."""
    import importlib

    ops_ksd = importlib.import_module("infovae_kernels.ops.ksd")  # the module (the package re-exports ksd())

    x, s, w = data(37, 3, 1, seed=11, dtype=torch.float64)
    w = w[:, 0].abs() / w.abs().sum()
    sigmas = torch.tensor([0.8, 2.0], dtype=torch.float64, device=DEV)
    out = []
    for module in (T, R):
        leaves = [t.clone().requires_grad_(True) for t in (x, s, w)]
        value = ops_ksd._KSD.apply(*leaves, sigmas, kernel, beta, c, unbiased, module)
        out.append([value, *torch.autograd.grad(value, leaves)])
    assert not hasattr(R, "stein_moments")  # so the second run is autograd through the blocks
    for got, want in zip(*out):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_public_stein_functions_run_on_the_triton_backend():
    """ik.ksd (value, and with x and a chained score's gradient from one stein_moments pass), ik.ksd_test
    and ik.stein_thinning by name on this backend equal the torch backend (float64)."""
    import infovae_kernels as ik

    x, s, _ = data(45, 3, 1, seed=12, dtype=torch.float64)
    for est in ("unbiased", "biased"):
        torch.testing.assert_close(ik.ksd(x, s, sigma=[0.7, 1.9], estimator=est, backend="triton"),
                                   ik.ksd(x, s, sigma=[0.7, 1.9], estimator=est, backend="torch"), rtol=1e-10, atol=0)
    grads = []
    for backend in ("triton", "torch"):
        xg = x.clone().requires_grad_()
        value = ik.ksd(xg, lambda z: -2.0 * z, kernel="rbf", sigma=0.9, backend=backend)
        grads.append((value.detach(), torch.autograd.grad(value, xg)[0]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-13)
    tests = [ik.ksd_test(x, s, n_bootstrap=20, seed=3, backend=b) for b in ("triton", "torch")]
    assert tests[0].statistic == pytest.approx(tests[1].statistic, rel=1e-10)
    assert tests[0].bootstrap_statistics == pytest.approx(tests[1].bootstrap_statistics, rel=1e-9, abs=1e-14)
    assert ik.stein_thinning(x, s, 10, backend="triton").tolist() == ik.stein_thinning(x, s, 10, backend="torch").tolist()


# ------------------------------------------------------------------------------------ numerics

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32(dtype):
    """float16 / bfloat16 are upcast in the kernel (the reference runs on the same rounded values)."""
    x, s, w = data(37, 17, 3, seed=5, dtype=dtype)
    check_form(x, s, w, params_of(BASES[0]), "imq", False)
    check_moments(x, s, w[:, 0], params_of(BASES[2]), "rbf", True)


def test_lossy_distances_use_differences():
    """d = 17, two tight clusters at +-30 (centred, |x|^2 ~ 900) at bandwidths 0.3 and 2: in float32 the
    expansion would lose r2 (its error ~ u |x|^2 ~ 1e-4 against sigma^2 = 0.09); the lossy rule's flag
    selects coordinate differences, and that variant matches float64."""
    x, s, w = data(37, 17, 2, seed=6, dtype=torch.float64, scale=0.2)
    shift = torch.zeros_like(x)
    shift[:, 0] = 30.0 * (1 - 2 * (torch.arange(37, device=DEV) % 2))
    shift -= shift.mean(0)
    x, s, w = (x + shift).float(), (s - shift).float(), w.float()
    params = torch.tensor([-0.5, 1.0, 0.3, 2.0], dtype=torch.float64, device=DEV)
    for kernel in ("imq", "rbf"):
        flag, variants = T._stein_variants(x, params, kernel, torch.float32)
        assert len(variants) == 2 and int(flag[0]) == 1
        check_form(x, s, w, params, kernel, False)
        check_moments(x, s, w[:, 0], params, kernel, False)
    flag, _ = T._stein_variants(x / 64, params, "imq", torch.float32)  # small norms: the expansion
    assert int(flag[0]) == 0


def test_self_pairs_exactly_zero_distance():
    """n copies of one point (beside another, of weight 0): every u_ij of the copies is the diagonal value
    phi(0) |s|^2 - 2 d phi'(0) (r2 and the cross term exactly 0)."""
    x = torch.tensor([[0.3, -0.2, 0.1]] * 5 + [[-1.5, 1.0, -0.5]], dtype=torch.float64, device=DEV)
    s = torch.tensor([[1.0, 2.0, -1.0]] * 5 + [[0.0, 0.0, 0.0]], dtype=torch.float64, device=DEV)
    w = torch.tensor([1.0] * 5 + [0.0], dtype=torch.float64, device=DEV)[:, None]
    params = params_of(BASES[1])
    diag = KS.stein_diagonal(x[:1], s[:1], params[2:], "imq", -0.3, 1.7)
    for excl, pairs in ((False, 25), (True, 20)):
        q = T.stein_form(x, s, w, params, "imq", excl)
        torch.testing.assert_close(q[0], pairs * diag[0], rtol=1e-14, atol=0)


def test_self_pairs_exact_with_the_expansion():
    """d = 17, |x|^2 ~ 80 and sigma 0.3, just inside the lossy rule (the expansion runs): u_ii is still the
    diagonal value, r2 and the cross term forced to 0 (the expansion's rounding would be ~1e-5 in r2). w the
    identity: q_p = u_pp."""
    x, s, _ = data(37, 17, 1, seed=8, scale=9.0 / 17 ** 0.5)
    params = torch.tensor([-0.5, 1.0, 0.3], dtype=torch.float64, device=DEV)
    flag, _ = T._stein_variants(x, params, "imq", torch.float32)
    assert int(flag[0]) == 0
    q = T.stein_form(x, s, torch.eye(37, device=DEV), params, "imq", False)
    diag = KS.stein_diagonal(x.double(), s.double(), params[2:], "imq", -0.5, 1.0)
    torch.testing.assert_close(q, diag, rtol=4e-7, atol=0)  # measured 6.9e-8; unforced cross: 1e-6


def test_bitwise_reproducible_and_non_contiguous():
    x, s, w = data(70, 3, 2, seed=7)
    params = params_of(BASES[0])
    q = T.stein_form(x, s, w, params, "imq", True)
    assert torch.equal(q, T.stein_form(x, s, w, params, "imq", True))
    xt, st, wt = (t.T.contiguous().T for t in (x, s, w))  # column-major copies
    assert torch.equal(q, T.stein_form(xt, st, wt, params, "imq", True))
    r = T.stein_moments(x, s, w[:, 0], params, "imq", False)
    assert torch.equal(r, T.stein_moments(xt, st, wt[:, 0], params, "imq", False))


# ------------------------------------------------------------------------------------ op contract

def test_empty_sizes():
    x, s, w = data(4, 3, 2)
    params = params_of(BASES[0])
    assert torch.equal(T.stein_form(x[:0], s[:0], w[:0], params, "imq", True), torch.zeros(2, dtype=torch.float64))
    assert T.stein_form(x, s, w[:, :0], params, "imq", True).shape == (0,)
    assert T.stein_moments(x[:0], s[:0], w[:0, 0], params, "rbf", False).shape == (0, 4, 7)


def test_argument_errors():
    x, s, w = data(4, 3, 2)
    params = params_of(BASES[0])
    bad = [
        (T.stein_form, (x, s, w, params, "laplacian", False), "kernel"),
        (T.stein_form, (x, s[:, :2], w, params, "imq", False), "x and s"),
        (T.stein_form, (x, s, w[:3], params, "imq", False), "x and s"),
        (T.stein_form, (x, s, w, params[:2], "imq", False), "sigma"),
        (T.stein_form, (x, s, w, params.float(), "imq", False), "float64"),
        (T.stein_form, (x, s.double(), w, params, "imq", False), "dtype"),
        (T.stein_moments, (x, s, w, params, "imq", False), r"\(N,\)"),
    ]
    if DEV == "cpu":
        bad.append((T.stein_form, (x, s, w, params * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), "imq",
                                   False), "positive"))
    for fn, args, match in bad:
        with pytest.raises(ValueError, match=match):
            fn(*args)


def test_schemas_are_those_of_ops_cpp():
    """The Stein schemas here are csrc/ops.cpp's text (the shared three: tests/test_triton.py)."""
    import re

    src = os.path.join(os.path.dirname(__file__), "..", "csrc", "ops.cpp")
    if not os.path.exists(src):
        pytest.skip("csrc/ops.cpp not found")
    text = open(src).read()
    for name in ("stein_form", "stein_moments"):
        (cpp,) = re.findall(r'm\.def\("' + name + r'(\([^"]*)"\)', text)
        assert str(getattr(torch.ops.infovae_triton, name).default._schema) == f"infovae_triton::{name}{cpp}"


def test_opcheck():
    x, s, w = data(7, 3, 2, seed=12)
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.stein_form.default, (x, s, w, params_of(BASES[1]), "imq", True))
    torch.library.opcheck(ops.stein_form.default, (x, s, w[:, :1], params_of(BASES[2]), "rbf", False))
    torch.library.opcheck(ops.stein_moments.default, (x, s, w[:, 0], params_of(BASES[0]), "imq", False))



def test_compile_fullgraph():
    x, s, w = data(7, 3, 2, seed=13)
    params = params_of(BASES[1])

    def f(x, s, w, params):
        q = torch.ops.infovae_triton.stein_form(x, s, w, params, "imq", True)
        r = torch.ops.infovae_triton.stein_moments(x, s, w[:, 0], params, "imq", False)
        return q.sum() + r.sum()

    backend = "inductor" if DEV == "cuda" else "aot_eager"
    out = torch.compile(f, fullgraph=True, backend=backend)(x, s, w, params)
    torch.testing.assert_close(out, f(x, s, w, params))


if __name__ == "__main__":  # run the tests, then print the largest errors they saw (the tolerances' basis)
    import sys

    code = pytest.main([__file__, "-q", "-p", "no:cacheprovider"])
    tested = next(m for name, m in sys.modules.items() if name.split(".")[-1] == "test_ksd_triton")
    for key, value in sorted(tested.WORST.items(), key=str):
        print(*key, f"{value:.2e}")
    raise SystemExit(code)
