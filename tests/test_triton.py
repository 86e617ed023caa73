"""The "triton" backend's three primitives against the float64 reference.

Without a GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (set here, before triton is
first imported; conftest.py does the same). The oracle is backends/reference.py run on float64 copies
of the inputs; the Triton ops compute in float32. Tests marked gpu need CUDA (benchmarks/gpu_check.sh).

Tolerances: measured max |err| / max |ref| under the interpreter is 1e-8 .. 5e-7 for float32 compute
(module docstring of backends/triton); the tests allow 2e-5 (float32) and 1e-11 (float64).
"""

import math
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed")

from infovae_kernels.backends import reference as R  # noqa: E402
from infovae_kernels.backends import triton as T  # noqa: E402

AVAILABLE, REASON = T.status()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"triton backend unavailable: {REASON}")

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F32_TOL = 2e-5
F64_TOL = 1e-11


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.numel() == 0:
        return 0.0
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def data(n, m, d, p, seed=0, dtype=torch.float32, device=DEV):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g).to(dtype).to(device)  # noqa: E731
    return mk(n, d), mk(m, d) + 0.3, mk(m, p), mk(n, p)


def sigmas_for(d, multi):
    base = math.sqrt(d)
    return [0.5 * base, base, 3.0 * base] if multi else [base]


def ref_pair_reduce(x, y, v, a, sigmas, kernel, excl):
    return R.pair_reduce(x.double(), y.double(), v.double(), None if a is None else a.double(),
                         sigmas, kernel, excl)


# ------------------------------------------------------------------------------------ pair_reduce

PAIR_CASES = [
    # n, m, d, p
    (1, 1, 1, 1),
    (7, 7, 2, 3),
    (7, 129, 5, 1),
    (129, 7, 1, 3),
    (200, 200, 2, 1),
    (129, 200, 64, 1),
    (33, 40, 64, 3),
    (40, 33, 17, 3),
    (7, 5, 784, 1),
    (5, 7, 784, 3),
]


@pytest.mark.parametrize("n,m,d,p", PAIR_CASES)
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_pair_reduce_matches_float64(n, m, d, p, kernel):
    x, y, v, a = data(n, m, d, p)
    multi = (n + d) % 2 == 0  # alternate single- and multi-scale over the cases
    sig = sigmas_for(d, multi)
    s, g = T.pair_reduce(x, y, v, a, sig, kernel, False)
    s0, g0 = ref_pair_reduce(x, y, v, a, sig, kernel, False)
    assert s.dtype == g.dtype == torch.float64
    assert rel_err(s, s0) < F32_TOL
    assert rel_err(g, g0) < F32_TOL
    s1, g1 = T.pair_reduce(x, y, v, None, sig, kernel, False)
    assert g1.shape == (0, d) and g1.dtype == torch.float64
    assert rel_err(s1, s0) < F32_TOL


@pytest.mark.parametrize("n,d,p", [(1, 3, 1), (7, 2, 1), (129, 5, 3), (200, 64, 1), (9, 784, 3)])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_pair_reduce_exclude_diagonal(n, d, p, kernel):
    x, _, v, a = data(n, n, d, p, seed=1)
    v = v[:n]
    sig = sigmas_for(d, kernel == "imq")
    for aa in (a, None):
        s, g = T.pair_reduce(x, x, v, aa, sig, kernel, True)
        s0, g0 = ref_pair_reduce(x, x, v, aa, sig, kernel, True)
        assert rel_err(s, s0) < F32_TOL
        assert rel_err(g, g0) < F32_TOL or g0.abs().max() == 0


def test_sixteen_scales_and_limits():
    x, y, v, a = data(20, 30, 3, 1)
    sig = [0.25 * (i + 1) for i in range(16)]
    for kernel in ("rbf", "imq"):
        s, g = T.pair_reduce(x, y, v, a, sig, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, sig, kernel, False)
        assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    with pytest.raises(ValueError, match="scales"):
        T.pair_reduce(x, y, v, a, [1.0] * 17, "rbf", False)
    with pytest.raises(ValueError, match="kernel"):
        T.pair_reduce(x, y, v, a, [1.0], "gauss", False)
    with pytest.raises(ValueError, match="dtype"):
        T.pair_reduce(x, y.double(), v, a, [1.0], "rbf", False)


def test_empty_sizes():
    x, y, v, a = data(0, 5, 3, 2)
    s, g = T.pair_reduce(x, y, v, a, [1.0], "rbf", False)
    assert s.shape == (0, 2) and g.shape == (0, 3)
    K = T.rbf_gram(x, y, [1.0])
    assert K.shape == (0, 5)


# ------------------------------------------------------------------------------------ quad_form

@pytest.mark.parametrize("n,d,P", [(1, 1, 1), (7, 5, 3), (129, 2, 1), (200, 64, 3), (200, 3, 20), (9, 784, 2)])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("excl", [False, True])
def test_quad_form_matches_float64(n, d, P, kernel, excl):
    z, _, _, w = data(n, n, d, P, seed=2)
    sig = sigmas_for(d, P > 1)
    q = T.quad_form(z, w, sig, kernel, excl)
    q0 = R.quad_form(z.double(), w.double(), sig, kernel, excl)
    assert q.dtype == torch.float64 and q.shape == (P,)
    # quad forms of signed weights cancel: measure against sum |w| K |w| as the scale
    scale = R.quad_form(z.double(), w.double().abs(), sig, kernel, excl).abs().max()
    assert ((q.cpu() - q0).abs().max() / scale.clamp_min(1e-300)).item() < F32_TOL


def test_quad_form_mmd_column():
    """MMD^2 as w^T K w with w = [+1/N; -1/M] over the pooled sample (the permutation-test form)."""
    x, y, _, _ = data(60, 45, 4, 1, seed=3)
    z = torch.cat([x, y])
    w = torch.cat([torch.full((60, 1), 1 / 60), torch.full((45, 1), -1 / 45)]).to(z)
    q = T.quad_form(z, w, [1.5], "rbf", False)
    q0 = R.quad_form(z.double(), w.double(), [1.5], "rbf", False)
    assert abs(q.item() - q0.item()) < 1e-6 * (1 + abs(q0.item()))


# ------------------------------------------------------------------------------------ rbf_gram

@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 129, 2), (129, 7, 5), (40, 33, 64), (5, 7, 784)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_rbf_gram(n, m, d, dtype):
    x, y, _, _ = data(n, m, d, 1, dtype=dtype)
    sig = sigmas_for(d, n % 2 == 1)
    K = T.rbf_gram(x, y, sig)
    K0 = R.rbf_gram(x.double(), y.double(), sig)
    assert K.dtype == dtype and K.shape == (n, m)
    tol = {torch.float32: F32_TOL, torch.float64: F64_TOL, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    assert rel_err(K, K0) < tol


# ------------------------------------------------------------------------------------ dtypes, layouts

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [2, 64])
def test_half_inputs_upcast_in_kernel(dtype, d):
    """Half inputs are exact in float32: the result must match float64 math on the same values."""
    x, y, v, a = data(50, 70, d, 3, dtype=dtype)
    sig = sigmas_for(d, True)
    s, g = T.pair_reduce(x, y, v, a, sig, "rbf", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, sig, "rbf", False)
    assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    q = T.quad_form(x, a[:50], sig, "imq", True)
    q0 = R.quad_form(x.double(), a[:50].double(), sig, "imq", True)
    assert rel_err(q, q0) < 1e-4


@pytest.mark.parametrize("d", [3, 64])
def test_float64_computes_in_float64(d):
    x, y, v, a = data(40, 70, d, 3, dtype=torch.float64)
    sig = sigmas_for(d, True)
    for kernel in ("rbf", "imq"):
        s, g = T.pair_reduce(x, y, v, a, sig, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, sig, kernel, False)
        assert rel_err(s, s0) < F64_TOL and rel_err(g, g0) < F64_TOL
        q = T.quad_form(x, a[:40], sig, kernel, False)
        assert rel_err(q, R.quad_form(x, a[:40], sig, kernel, False)) < F64_TOL


def test_non_contiguous_inputs():
    xb, yb, vb, ab = data(60, 80, 10, 6, seed=4)
    x, y = xb[:, ::2], yb[::2, ::2]            # strided rows/columns: (60, 5), (40, 5)
    v, a = vb[::2, ::2].T.contiguous().T, ab[:, 1:4]  # column-major (40, 3) and a column slice (60, 3)
    assert not (x.is_contiguous() or y.is_contiguous() or v.is_contiguous() or a.is_contiguous())
    s, g = T.pair_reduce(x, y, v, a, [1.0, 2.0], "imq", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, [1.0, 2.0], "imq", False)
    assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    s_c, g_c = T.pair_reduce(x.contiguous(), y.contiguous(), v.contiguous(), a.contiguous(),
                             [1.0, 2.0], "imq", False)
    assert torch.equal(s, s_c) and torch.equal(g, g_c)
    K = T.rbf_gram(x.T.contiguous().T, y, [1.3])
    assert rel_err(K, R.rbf_gram(x.double(), y.double(), [1.3])) < F32_TOL
    q = T.quad_form(x, a, [1.0], "rbf", True)
    assert rel_err(q, R.quad_form(x.double(), a.double(), [1.0], "rbf", True)) < F32_TOL


def test_bitwise_deterministic():
    x, y, v, a = data(129, 200, 17, 3, seed=5)
    r1 = T.pair_reduce(x, y, v, a, [0.7, 2.0], "rbf", False)
    r2 = T.pair_reduce(x, y, v, a, [0.7, 2.0], "rbf", False)
    assert all(torch.equal(p, q) for p, q in zip(r1, r2))
    q1 = T.quad_form(x, a, [1.0], "imq", True)
    q2 = T.quad_form(x, a, [1.0], "imq", True)
    assert torch.equal(q1, q2)


def test_precision_setting():
    assert T.get_precision() == "ieee"
    with pytest.raises(ValueError):
        T.set_precision("fp16")
    T.set_precision("tf32x3")
    try:
        x, y, v, a = data(20, 30, 32, 1)
        s, _ = T.pair_reduce(x, y, v, a, [4.0], "rbf", False)
        assert rel_err(s, ref_pair_reduce(x, y, v, a, [4.0], "rbf", False)[0]) < 1e-3
    finally:
        T.set_precision("ieee")


# ------------------------------------------------------------------------------------ op contract

def test_opcheck_each_op():
    x, y, v, a = data(7, 9, 3, 2, seed=6)
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.rbf_gram.default, (x, y, [1.0, 2.0]))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, [1.0], "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, None, [1.0, 0.5], "imq", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, x, v[:7], a, [1.0], "rbf", True))
    torch.library.opcheck(ops.quad_form.default, (x, a, [1.0], "imq", True))


def test_compile_fullgraph():
    x, y, v, a = data(7, 9, 3, 2, seed=7)

    def f(x, y, v, a):
        s, g = torch.ops.infovae_triton.pair_reduce(x, y, v, a, [1.0], "rbf", False)
        return s.sum() + g.sum() + torch.ops.infovae_triton.quad_form(x, a, [1.0], "imq", False).sum()

    backend = "inductor" if DEV == "cuda" else "aot_eager"
    out = torch.compile(f, fullgraph=True, backend=backend)(x, y, v, a)
    torch.testing.assert_close(out, f(x, y, v, a))


def _schema_signature(schema):
    return ([(arg.name, str(arg.type), arg.default_value, arg.kwarg_only) for arg in schema.arguments],
            [str(r.type) for r in schema.returns])


def test_schemas_equal_the_cpp_schemas():
    try:
        from infovae_kernels import _C  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"C++ extension not importable: {exc}")
    for name in ("rbf_gram", "pair_reduce", "quad_form"):
        cpp = getattr(torch.ops.infovae, name).default._schema
        tri = getattr(torch.ops.infovae_triton, name).default._schema
        assert _schema_signature(cpp) == _schema_signature(tri), name


def test_schema_strings_match_ops_cpp():
    """Without the extension: compare against the schema text of csrc/ops.cpp."""
    import re

    src = os.path.join(os.path.dirname(__file__), "..", "csrc", "ops.cpp")
    if not os.path.exists(src):
        pytest.skip("csrc/ops.cpp not found")
    defs = ["".join(re.findall(r'"([^"]*)"', m)) for m in re.findall(r'm\.def\(\s*((?:"[^"]*"\s*)+)\)', open(src).read())]
    cpp = {d.split("(")[0]: torch._C.parse_schema("infovae::" + d) for d in defs}
    assert set(cpp) == {"rbf_gram", "pair_reduce", "quad_form"}
    for name, schema in cpp.items():
        tri = getattr(torch.ops.infovae_triton, name).default._schema
        assert _schema_signature(schema) == _schema_signature(tri), name


# ------------------------------------------------------------------------------------ GPU only

gpu = pytest.mark.gpu


def _randn(*shape, device="cuda", seed=0):
    return torch.randn(*shape, generator=torch.Generator(device).manual_seed(seed), device=device)


@gpu
@pytest.mark.parametrize("precision", ["ieee", "tf32x3", "tf32"])
def test_gpu_precision_errors(precision):
    """Prints the measured error of each precision (quoted in the backend's docstring)."""
    T.set_precision(precision)
    try:
        errs = {}
        for d in (2, 16, 64, 256):
            x, y = _randn(2048, d, seed=1), _randn(1536, d, seed=2)
            v, a = _randn(1536, 1, seed=3), _randn(2048, 1, seed=4)
            sig = [math.sqrt(d)]
            s, g = T.pair_reduce(x, y, v, a, sig, "rbf", False)
            s0, g0 = ref_pair_reduce(x, y, v, a, sig, "rbf", False)
            errs[d] = (rel_err(s, s0), rel_err(g, g0))
        print(f"\nprecision {precision}: " + ", ".join(f"d={d}: S {e[0]:.1e} G {e[1]:.1e}" for d, e in errs.items()))
        if precision != "tf32":
            assert max(max(e) for e in errs.values()) < (F32_TOL if precision == "ieee" else 1e-4)
    finally:
        T.set_precision("ieee")


@gpu
def test_gpu_matches_float64_large():
    x, y = _randn(5000, 64, seed=1), _randn(7001, 64, seed=2)
    v, a = _randn(7001, 3, seed=3), _randn(5000, 3, seed=4)
    s, g = T.pair_reduce(x, y, v, a, [4.0, 8.0], "imq", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, [4.0, 8.0], "imq", False)
    assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    q = T.quad_form(x, a, [8.0], "rbf", True)
    assert rel_err(q, R.quad_form(x.double(), a.double(), [8.0], "rbf", True)) < 1e-4


@gpu
def test_gpu_opcheck_and_inductor():
    x, y = _randn(300, 16, seed=1), _randn(257, 16, seed=2)
    v, a = _randn(257, 2, seed=3), _randn(300, 2, seed=4)
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.rbf_gram.default, (x, y, [1.0, 2.0]))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, [1.0], "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, None, [1.0], "imq", False))
    torch.library.opcheck(ops.quad_form.default, (x, a, [1.0], "imq", True))
    f = lambda x, y, v, a: ops.pair_reduce(x, y, v, a, [1.0], "rbf", False)[1].sum()  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, y, v, a), f(x, y, v, a))


@gpu
def test_gpu_cuda_graph_capture():
    x, y = _randn(1000, 8, seed=1), _randn(900, 8, seed=2)
    v, a = _randn(900, 1, seed=3), _randn(1000, 1, seed=4)
    f = lambda: (T.pair_reduce(x, y, v, a, [1.0, 2.0], "rbf", False), T.quad_form(x, a, [1.0], "imq", False))  # noqa: E731
    eager = f()  # warm up: compiles and autotunes outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = f()
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured[0][0], eager[0][0]) and torch.equal(captured[0][1], eager[0][1])
    assert torch.equal(captured[1], eager[1])


@gpu
def test_gpu_speed_sanity():
    """Fused pair_reduce is faster than the materialising reference at N = M = 8192, d = 64."""
    x, y = _randn(8192, 64, seed=1), _randn(8192, 64, seed=2)
    v, a = _randn(8192, 1, seed=3), _randn(8192, 1, seed=4)

    def timeit(fn, reps=5):
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / reps

    t_tri = timeit(lambda: T.pair_reduce(x, y, v, a, [8.0], "rbf", False))
    t_ref = timeit(lambda: R.pair_reduce(x, y, v, a, [8.0], "rbf", False))
    print(f"\npair_reduce 8192^2 d=64: triton {t_tri:.3f} ms, reference {t_ref:.3f} ms")
    assert t_tri < t_ref
