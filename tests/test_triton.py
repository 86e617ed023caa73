"""The "triton" backend's three primitives against the float64 oracle.

Without a GPU the kernels run on CPU tensors under TRITON_INTERPRET=1 (set here, before triton is first
imported; conftest.py does the same). The oracle is backends/reference.py run on float64 copies of the
inputs, with the same params; the Triton ops compute in float32 (float64 inputs: float64). Tests marked
gpu need CUDA (benchmarks/gpu_check.sh runs them).

Tolerances. Error = max |out - ref| / max |ref| (quad forms of signed weights: / max |w|^T K |w|).
Largest measured under the interpreter over these tests' cases (float32 compute; `python
tests/test_triton.py` prints them): gram k 1.4e-7, g 2.1e-7; pair_reduce S 7.3e-7,
G 3.1e-7; quad_form q 2.4e-8, S 3.0e-7, G 2.3e-7. The interpreter's float32 is numpy's (exp correctly
rounded), so this is the formulas' rounding, not the GPU's exp (gpu tests print that). The tests allow
F32_TOL = 2e-5 (27x the largest); float64 inputs 1e-11. The lossy case (issue's data, d = 3): float32
5.9e-6 relative to float64; d = 20: 1.4e-5 (with the rule off: 64% off); the test allows 1e-4.
"""

import math
import os
import subprocess
import sys

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
F32_TOL = 2e-5
F64_TOL = 1e-11


def rel_err(out, ref, scale=None):
    out, ref = out.double().cpu(), ref.double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.numel() == 0:
        return 0.0
    scale = ref.abs().max() if scale is None else scale.double().cpu().abs().max()
    return ((out - ref).abs().max() / scale.clamp_min(1e-300)).item()


def data(n, m, d, p, seed=0, dtype=torch.float32, device=DEV):
    """Points with max |coord| below 1 (as the op layer prepares them), signed values/weights."""
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x, y = 0.25 * mk(n, d), 0.25 * mk(m, d) + 0.05
    return [t.to(dtype).to(device) for t in (x, y, mk(m, p), mk(n, p))]


def params_for(kernel, d, n_scales, device=DEV):
    """Bandwidths around the data's spread (0.25 sqrt(2 d)), as kernel params."""
    base = 0.25 * math.sqrt(2 * d)
    sig = torch.tensor([base, 0.5 * base, 3.0 * base][:n_scales], dtype=torch.float64)
    return KS.kernel_params(kernel, sig, d, torch.tensor(1.0, dtype=torch.float64), torch.float32).to(device)


def d64(*ts):
    return [None if t is None else t.double() for t in ts]


def ref_pair_reduce(x, y, v, a, params, kernel, excl):
    x, y, v, a = d64(x, y, v, a)
    return R.pair_reduce(x, y, v, a, params, kernel, excl)


def ref_quad_form(z, w, a, params, kernel, excl, row_sums):
    z, w, a = d64(z, w, a)
    return R.quad_form(z, w, a, params, kernel, excl, row_sums)


# ------------------------------------------------------------------------------------ gram

@pytest.mark.parametrize("n,m,d", [(1, 1, 1), (7, 33, 2), (33, 7, 5), (40, 33, 64), (5, 7, 784)])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("derivative", [False, True])
def test_gram_matches_float64(n, m, d, kernel, derivative):
    x, y, _, _ = data(n, m, d, 1)
    params = params_for(kernel, d, 3 if n % 2 else 1)
    K = T.gram(x, y, params, kernel, derivative)
    K0 = R.gram(x.double(), y.double(), params, kernel, derivative)
    assert K.dtype == x.dtype and K.shape == (n, m)
    assert rel_err(K, K0) < F32_TOL


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_gram_dtypes(dtype):
    x, y, _, _ = data(9, 40, 3, 1, dtype=dtype)
    params = params_for("rbf", 3, 3)
    K = T.gram(x, y, params, "rbf", False)
    K0 = R.gram(x.double(), y.double(), params, "rbf", False)
    assert K.dtype == dtype
    tol = {torch.float64: F64_TOL, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]  # output rounding
    assert rel_err(K, K0) < tol


def test_gram_derivative_zero_at_zero_distance():
    """g(0) = 0: a point and its copy have weight 0 (the kernel value stays k(0))."""
    x, _, _, _ = data(5, 5, 3, 1)
    params = params_for("rbf", 3, 1)
    G = T.gram(x, x, params, "rbf", True)
    K = T.gram(x, x, params, "rbf", False)
    assert torch.all(torch.diagonal(G) == 0)
    assert torch.all(torch.diagonal(K) == 1)


# ------------------------------------------------------------------------------------ pair_reduce

PAIR_CASES = [  # n, m, d, p
    (1, 1, 1, 1),
    (7, 7, 2, 3),
    (7, 65, 5, 1),
    (65, 7, 1, 3),
    (33, 40, 64, 3),
    (40, 33, 17, 1),
    (7, 5, 784, 3),
]


@pytest.mark.parametrize("n,m,d,p", PAIR_CASES)
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_pair_reduce_matches_float64(n, m, d, p, kernel):
    x, y, v, a = data(n, m, d, p)
    params = params_for(kernel, d, 3 if (n + d) % 2 == 0 else 1)
    s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
    assert s.dtype == g.dtype == torch.float64
    assert rel_err(s, s0) < F32_TOL
    assert rel_err(g, g0) < F32_TOL
    s1, g1 = T.pair_reduce(x, y, v, None, params, kernel, False)
    assert g1.shape == (0, d) and g1.dtype == torch.float64
    assert rel_err(s1, s0) < F32_TOL


@pytest.mark.parametrize("n,d,p", [(1, 3, 1), (7, 2, 1), (65, 5, 3), (40, 64, 1), (9, 300, 3)])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_pair_reduce_exclude_diagonal(n, d, p, kernel):
    x, _, v, a = data(n, n, d, p, seed=1)
    v = v[:n]
    params = params_for(kernel, d, 3 if kernel == "imq" else 1)
    for aa in (a, None):
        s, g = T.pair_reduce(x, x, v, aa, params, kernel, True)
        s0, g0 = ref_pair_reduce(x, x, v, aa, params, kernel, True)
        assert rel_err(s, s0) < F32_TOL or s0.abs().max() == 0
        assert rel_err(g, g0) < F32_TOL or g0.abs().max() == 0


# ------------------------------------------------------------------------------------ quad_form

QUAD_CASES = [  # n, d, P: tile counts 1, 2 (even), 3, 4 (even), 5 at 32-row tiles
    (1, 1, 1),
    (7, 5, 3),
    (33, 2, 1),
    (65, 17, 1),
    (100, 3, 3),
    (129, 64, 1),
    (9, 784, 3),
]


@pytest.mark.parametrize("n,d,P", QUAD_CASES)
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("excl", [False, True])
def test_quad_form_matches_float64(n, d, P, kernel, excl):
    z, _, w, a = data(n, n, d, P, seed=2)
    w = w[:n]
    params = params_for(kernel, d, 3 if P > 1 else 1)
    q, s, g = T.quad_form(z, w, a, params, kernel, excl, True)
    q0, s0, g0 = ref_quad_form(z, w, a, params, kernel, excl, True)
    assert q.dtype == s.dtype == g.dtype == torch.float64
    assert q.shape == (P,) and s.shape == (n, P) and g.shape == (n, d)
    # quad forms of signed weights cancel: measure against |w|^T K |w|
    scale = ref_quad_form(z, w.abs(), None, params, kernel, excl, False)[0]
    assert rel_err(q, q0, scale) < F32_TOL
    assert rel_err(s, s0) < F32_TOL or s0.abs().max() == 0
    assert rel_err(g, g0) < F32_TOL or g0.abs().max() == 0


@pytest.mark.parametrize("n,d,P", [(7, 5, 1), (100, 3, 3), (65, 17, 1)])
def test_quad_form_value_bitwise_the_same_with_and_without_s_and_g(n, d, P):
    z, _, w, a = data(n, n, d, P, seed=3)
    w = w[:n]
    params = params_for("rbf", d, 3)
    q, s, g = T.quad_form(z, w, None, params, "rbf", False, False)
    assert s.shape == (0, P) and g.shape == (0, d)
    for aa, rs in ((a, False), (None, True), (a, True)):
        q1, s1, g1 = T.quad_form(z, w, aa, params, "rbf", False, rs)
        assert torch.equal(q, q1)
        assert s1.shape == ((n if rs else 0), P) and g1.shape == ((n if aa is not None else 0), d)


def test_quad_form_rounds_per_launch_do_not_matter_for_q(monkeypatch):
    """The value+gradient sweep in several launches (a small slot budget) gives the same q bits and
    S, G equal to float64 accuracy."""
    z, _, w, a = data(129, 129, 5, 1, seed=4)
    w = w[:129]
    params = params_for("imq", 5, 1)
    q, s, g = T.quad_form(z, w, a, params, "imq", True, True)
    monkeypatch.setattr(T, "_SLOT_BYTES", 1)  # one round per launch
    q1, s1, g1 = T.quad_form(z, w, a, params, "imq", True, True)
    assert torch.equal(q, q1)
    assert rel_err(s1, s) < 1e-12 and rel_err(g1, g) < 1e-12
    # q partial rows folded modulo TQ = 2 (what bounds q's memory at large N): value-only launches in
    # blocks of 2 rounds, S/G in blocks of 1; q bitwise the same in both, and equal to float64 accuracy
    monkeypatch.setattr(T, "_Q_CELLS", 2 * 5)  # 129 rows: 5 tiles of 32, 3 rounds
    q2 = T.quad_form(z, w, None, params, "imq", True, False)[0]
    q3, s3, g3 = T.quad_form(z, w, a, params, "imq", True, True)
    assert torch.equal(q2, q3)
    assert rel_err(q2, q) < 1e-12 and rel_err(s3, s) < 1e-12 and rel_err(g3, g) < 1e-12


def test_quad_form_self_distance_exactly_zero():
    """r2(i, i) = 0 exactly even where the expansion |z|^2 + |z|^2 - 2 z.z does not cancel (d > 16, large
    norms, narrow kernel): with W = identity (P = n columns) q_p = k(z_p, z_p) = number of scales, exactly."""
    g = torch.Generator().manual_seed(5)
    n = 40
    z = (torch.randn(n, 64, generator=g) * 0.1 + 0.9).to(DEV)
    params = torch.tensor([30.0, 10.0], dtype=torch.float64, device=DEV)  # rbf c_s, below the lossy switch
    q, _, _ = T.quad_form(z, torch.eye(n, device=DEV), None, params, "rbf", False, False)
    assert torch.equal(q, torch.full_like(q, 2.0))


def test_quad_form_duplicate_points_have_zero_gradient_weight():
    """g(0) = 0: two copies of a point add nothing to each other's G, and nothing is NaN."""
    z, _, w, a = data(20, 20, 3, 1, seed=6)
    z = torch.cat([z, z[:5]])
    w, a = torch.cat([w[:20], w[:5]]), torch.cat([a, a[:5]])
    params = torch.tensor([1.0e30], dtype=torch.float64, device=DEV)  # so narrow that only r2 == 0 counts
    q, s, g = T.quad_form(z, w, a, params, "rbf", False, True)
    assert torch.isfinite(g).all() and torch.equal(g, torch.zeros_like(g))
    q0, s0, _ = ref_quad_form(z, w, a, params, "rbf", False, True)
    assert rel_err(s, s0) < F32_TOL and rel_err(q, q0) < F32_TOL


def test_quad_form_mmd_column():
    """MMD^2 as w^T K w with w = [+1/N; -1/M] over the pooled sample (the permutation-test form)."""
    x, y, _, _ = data(60, 45, 4, 1, seed=7)
    z = torch.cat([x, y])
    w = torch.cat([torch.full((60, 1), 1 / 60), torch.full((45, 1), -1 / 45)]).to(z)
    params = params_for("rbf", 4, 1)
    q, _, _ = T.quad_form(z, w, None, params, "rbf", False, False)
    q0 = ref_quad_form(z, w, None, params, "rbf", False, False)[0]
    assert abs(q.item() - q0.item()) < 1e-6 * (1 + abs(q0.item()))


# ------------------------------------------------------------------------------------ lossy distances

def _lossy_case(n, d, sigma, seed):
    g = torch.Generator().manual_seed(seed)
    x = 100.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x + 0.01 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, y, sigma


@pytest.mark.parametrize("d,n,sigma", [(3, 500, 0.01), (20, 120, 0.03)])
def test_lossy_distances_float32_matches_float64(d, n, sigma):
    """The issue's case (d = 3: the MMD^2 is 2.56e-3) and a d > 16 one (the per-tile switch from the
    expansion to differences). The op layer's preparation (centre, power-of-two scale) then quad_form."""
    x, y, sigma = _lossy_case(n, d, sigma, seed=8)
    sig = torch.tensor([sigma], dtype=torch.float64)
    w = torch.cat([torch.full((n, 1), 1.0 / n), torch.full((n, 1), -1.0 / n)]).double()

    def value(dtype):
        xp, yp, scale = KS.prepare(x.to(dtype), y.to(dtype))
        params = KS.kernel_params("rbf", sig, d, scale, dtype).to(DEV)
        z = torch.cat([xp, yp]).to(DEV)
        if dtype == torch.float64:
            return R.quad_form(z, w.to(DEV), None, params, "rbf", False, False)[0].item()
        return T.quad_form(z, w.to(z.dtype).to(DEV), None, params, "rbf", False, False)[0].item()

    v64, v32 = value(torch.float64), value(torch.float32)
    assert v64 > 1e-3  # the value is not lost in float64 either
    assert abs(v32 - v64) < 1e-4 * abs(v64), (v32, v64)


# ------------------------------------------------------------------------------------ dtypes, layouts

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [2, 64])
def test_half_inputs_upcast_in_kernel(dtype, d):
    """Half inputs are exact in float32: the result must match float64 math on the same values."""
    x, y, v, a = data(40, 50, d, 3, dtype=dtype)
    params = params_for("rbf", d, 3)
    s, g = T.pair_reduce(x, y, v, a, params, "rbf", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, "rbf", False)
    assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    q, s, g = T.quad_form(x, a, a, params, "imq", True, True)
    q0, s0, g0 = ref_quad_form(x, a, a, params, "imq", True, True)
    assert rel_err(q, q0) < F32_TOL and rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    for kernel, ps in (("polynomial", (None, 1.0, 3.0)), ("laplacian", (1.6, 0.7))):  # contract v3 kernels
        params = new_params(kernel, ps, d)
        k0, w0 = _weights(x, x, params, kernel, True)
        q, s, g = T.quad_form(x, a, a, params, kernel, True, True)
        q0, s0, g0 = ref_quad_form(x, a, a, params, kernel, True, True)
        ad = a.double().abs()
        assert err(q, q0, (ad * (k0.abs() @ ad)).sum(0)) < 1e-4 and err(s, s0, k0.abs() @ ad) < 1e-4
        assert err(g, g0, _g_magnitude(x, x, w0, a.double() @ a.double().T, kernel)) < 1e-4


@pytest.mark.parametrize("d", [3, 64])
def test_float64_computes_in_float64(d):
    x, y, v, a = data(40, 50, d, 3, dtype=torch.float64)
    for kernel in ("rbf", "imq"):
        params = params_for(kernel, d, 3)
        s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
        assert rel_err(s, s0) < F64_TOL and rel_err(g, g0) < F64_TOL
        out = T.quad_form(x, a, a, params, kernel, False, True)
        ref = ref_quad_form(x, a, a, params, kernel, False, True)
        assert all(rel_err(o, r) < F64_TOL for o, r in zip(out, ref))


def test_non_contiguous_inputs():
    xb, yb, vb, ab = data(60, 80, 10, 6, seed=9)
    x, y = xb[:, ::2], yb[::2, ::2]  # strided rows/columns: (60, 5), (40, 5)
    v, a = vb[::2, ::2].T.contiguous().T, ab[:, 1:4]  # column-major (40, 3) and a column slice (60, 3)
    assert not (x.is_contiguous() or y.is_contiguous() or v.is_contiguous() or a.is_contiguous())
    params = params_for("imq", 5, 3)
    s, g = T.pair_reduce(x, y, v, a, params, "imq", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, "imq", False)
    assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    s_c, g_c = T.pair_reduce(x.contiguous(), y.contiguous(), v.contiguous(), a.contiguous(), params, "imq", False)
    assert torch.equal(s, s_c) and torch.equal(g, g_c)
    K = T.gram(x.T.contiguous().T, y, params, "imq", False)
    assert rel_err(K, R.gram(x.double(), y.double(), params, "imq", False)) < F32_TOL
    out = T.quad_form(x, a, a, params, "rbf", True, True)
    out_c = T.quad_form(x.contiguous(), a.contiguous(), a.contiguous(), params, "rbf", True, True)
    assert all(torch.equal(o, c) for o, c in zip(out, out_c))


def test_sixteen_scales_and_errors():
    x, y, v, a = data(20, 30, 3, 1)
    params = torch.linspace(0.5, 8.0, 16, dtype=torch.float64, device=DEV)
    for kernel in ("rbf", "imq"):
        s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
        assert rel_err(s, s0) < F32_TOL and rel_err(g, g0) < F32_TOL
    with pytest.raises(ValueError, match="scales"):
        T.pair_reduce(x, y, v, a, torch.ones(17, dtype=torch.float64, device=DEV), "rbf", False)
    with pytest.raises(ValueError, match="params"):
        T.pair_reduce(x, y, v, a, torch.ones(1, device=DEV), "rbf", False)
    with pytest.raises(ValueError, match="kernel"):
        T.pair_reduce(x, y, v, a, params[:1], "gauss", False)
    with pytest.raises(ValueError, match="dtype"):
        T.pair_reduce(x, y.double(), v, a, params[:1], "rbf", False)
    with pytest.raises(ValueError, match="exclude_diagonal"):
        T.pair_reduce(x, y, v, a, params[:1], "rbf", True)


def test_empty_sizes():
    x, y, v, a = data(0, 5, 3, 2)
    p = params_for("rbf", 3, 1)
    s, g = T.pair_reduce(x, y, v, a, p, "rbf", False)
    assert s.shape == (0, 2) and g.shape == (0, 3)
    assert T.gram(x, y, p, "rbf", False).shape == (0, 5)
    q, s, g = T.quad_form(x, a, a, p, "rbf", False, True)
    assert q.shape == (2,) and torch.equal(q, torch.zeros_like(q)) and s.shape == (0, 2) and g.shape == (0, 3)


# ------------------------------------------------------------------------------------ contract v3 kernels
# laplacian (1 and 3 scales), energy and polynomial (degree 1, 2, 3; coef 0 and 1) in every primitive,
# against the oracle in float64. Errors are measured against the magnitudes the sums add up (|K| |v|,
# |W| |a.v| |points|, |w|^T |K| |w|), so the tolerance is the rounding of the compute type, not the
# cancellation of signed weights: float32 1e-4, float64 1e-10 (largest measured under the interpreter,
# `python tests/test_triton.py` prints them: float32 2.5e-7, float64 5.4e-16; both in gram).

NEW_KERNELS = [  # (kernel, params)
    ("laplacian", (1.6,)),
    ("laplacian", (1.6, 0.7, 5.0)),
    ("energy", (0.75,)),
    ("polynomial", (None, 0.0, 1.0)),  # gamma None: 1 / d
    ("polynomial", (None, 1.0, 1.0)),
    ("polynomial", (None, 0.0, 2.0)),
    ("polynomial", (None, 1.0, 2.0)),
    ("polynomial", (None, 0.0, 3.0)),
    ("polynomial", (None, 1.0, 3.0)),
]
NEW_KERNEL_IDS = [f"{k}-{'-'.join('g' if p is None else f'{p:g}' for p in ps)}" for k, ps in NEW_KERNELS]
NEW_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def new_params(kernel, ps, d, device=DEV):
    """The primitives' params: laplacian c_s = 1 / sigma_s, energy [p], polynomial [gamma, coef, n]."""
    return torch.tensor([1.0 / d if p is None else p for p in ps], dtype=torch.float64, device=device)


def _weights(x, y, params, kernel, excl):
    """float64 K and W (g, or h for polynomial) from the oracle, diagonal dropped when excl."""
    x, y = x.double(), y.double()
    k, w = R.gram(x, y, params, kernel, False), R.gram(x, y, params, kernel, True)
    if excl:
        k, w = k.clone().fill_diagonal_(0.0), w.clone().fill_diagonal_(0.0)
    return k, w


def _g_magnitude(x, y, w, av, kernel):
    """Elementwise bound of G's terms: sum_j |W_ij| |a_i.v_j| (|x_i| + |y_j|) (|y_j| for polynomial)."""
    m = w.abs() * av.abs()
    ax, ay = x.double().abs(), y.double().abs()
    return m @ ay if kernel == "polynomial" else m.sum(1, keepdim=True) * ax + m @ ay


def err(out, ref, magnitude):
    """max |out - ref| / max magnitude."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if ref.numel() == 0:
        return 0.0
    return ((out.double().cpu() - ref.double().cpu()).abs().max() / magnitude.double().cpu().abs().max()).item()


NEW_CASES = [(k, ps, d, dt) for (k, ps) in NEW_KERNELS for d, dt in ((5, torch.float32), (20, torch.float32))] + [
    (k, ps, 5 if i % 2 else 20, torch.float64) for i, (k, ps) in enumerate(NEW_KERNELS)]
NEW_CASE_IDS = [f"{k}-{'-'.join('g' if p is None else f'{p:g}' for p in ps)}-d{d}-{str(dt)[6:]}"
                for k, ps, d, dt in NEW_CASES]


@pytest.mark.parametrize("kernel,ps,d,dtype", NEW_CASES, ids=NEW_CASE_IDS)
def test_new_kernels_gram_and_pair_reduce_match_float64(kernel, ps, d, dtype):
    """gram (k and its weight), pair_reduce (S; G with a; exclude_diagonal) on 2 x 2 tiles of 32 rows."""
    tol = NEW_TOL[dtype]
    x, y, v, a = data(37, 45, d, 3, seed=20, dtype=dtype)
    params = new_params(kernel, ps, d)
    k0, w0 = _weights(x, y, params, kernel, False)
    for deriv, ref in ((False, k0), (True, w0)):
        K = T.gram(x, y, params, kernel, deriv)
        assert K.dtype == dtype and K.shape == ref.shape
        assert err(K, ref, ref) < tol, deriv
    s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
    av = a.double() @ v.double().T
    assert err(s, s0, k0.abs() @ v.double().abs()) < tol
    assert err(g, g0, _g_magnitude(x, y, w0, av, kernel)) < tol
    assert s0.abs().max() > 0 and g0.abs().max() > 0
    # exclude_diagonal (x against itself): for polynomial the dropped k(x_i, x_i) is not a constant
    vx = v[:37]
    k1, w1 = _weights(x, x, params, kernel, True)
    s, g = T.pair_reduce(x, x, vx, a, params, kernel, True)
    s0, g0 = ref_pair_reduce(x, x, vx, a, params, kernel, True)
    assert err(s, s0, k1.abs() @ vx.double().abs()) < tol
    assert err(g, g0, _g_magnitude(x, x, w1, a.double() @ vx.double().T, kernel)) < tol
    if kernel != "energy":  # k(x, x) = 0 for energy: nothing to drop
        s_all = ref_pair_reduce(x, x, vx, a, params, kernel, False)[0]
        assert (s_all - s0).abs().max() > 100 * tol * (k1.abs() @ vx.double().abs()).max()  # the diagonal shows


@pytest.mark.parametrize("kernel,ps,d,dtype", NEW_CASES, ids=NEW_CASE_IDS)
def test_new_kernels_quad_form_matches_float64(kernel, ps, d, dtype):
    """q, S, G for P = 1 and P = 3, exclude_diagonal both ways; 65 rows: 3 row tiles, 2 rounds."""
    tol = NEW_TOL[dtype]
    z, _, w3, a3 = data(65, 65, d, 3, seed=21, dtype=dtype)
    params = new_params(kernel, ps, d)
    for P in (1, 3):
        w, a = w3[:, :P], a3[:, :P]
        for excl in (False, True):
            k0, g0w = _weights(z, z, params, kernel, excl)
            q, s, g = T.quad_form(z, w, a, params, kernel, excl, True)
            q0, s0, g0 = ref_quad_form(z, w, a, params, kernel, excl, True)
            assert q.shape == (P,) and s.shape == (65, P) and g.shape == (65, d)
            wd = w.double().abs()
            assert err(q, q0, (wd * (k0.abs() @ wd)).sum(0)) < tol, (P, excl)
            assert err(s, s0, k0.abs() @ wd) < tol, (P, excl)
            assert err(g, g0, _g_magnitude(z, z, g0w, a.double() @ w.double().T, kernel)) < tol, (P, excl)
            if P == 3 and excl:
                assert torch.equal(q, T.quad_form(z, w, None, params, kernel, excl, False)[0])  # value only: same bits


@pytest.mark.parametrize("kernel", ["laplacian", "energy"])
@pytest.mark.parametrize("d", [3, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kinked_kernels_duplicate_points(kernel, d, dtype):
    """laplacian and energy at zero distance: weight exactly 0 (the subgradient), k(x, x) exact (energy
    0, laplacian the scale count), finite G equal to the oracle's with duplicated and near-duplicated
    points. At d = 20 a self-distance through the expansion would be ~1e-4 (sqrt of its rounding), not
    0: these kernels always use differences."""
    ps = (1.6, 0.7) if kernel == "laplacian" else (0.75,)
    x, y, v, a = data(20, 24, d, 2, seed=22, dtype=dtype)
    x[5] = x[2]
    y[:4] = x[:4]  # pairs (i, i) for i < 4 coincide
    y[7] = x[9]
    y[7, 0] += 1e-20  # a near-duplicate: r2 subnormal in float32
    params = new_params(kernel, ps, d)
    K = T.gram(x, x, params, kernel, False)
    W = T.gram(x, x, params, kernel, True)
    k_self = 0.0 if kernel == "energy" else float(len(ps))
    assert torch.all(torch.diagonal(K) == k_self) and K[5, 2] == k_self
    assert torch.all(torch.diagonal(W) == 0) and W[5, 2] == 0 and W[2, 5] == 0
    Wxy = T.gram(x, y, params, kernel, True)
    assert torch.all(torch.diagonal(Wxy)[:4] == 0) and torch.isfinite(Wxy).all()
    s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
    assert torch.isfinite(g).all() and torch.isfinite(s).all()
    tol = NEW_TOL[dtype]
    k0, w0 = _weights(x, y, params, kernel, False)
    w0 = torch.where(torch.isfinite(w0), w0, torch.zeros_like(w0))
    assert err(s, s0, k0.abs() @ v.double().abs()) < tol
    assert err(g, g0, _g_magnitude(x, y, w0, a.double() @ v.double().T, kernel)) < tol
    # a quad form over one point and its copy: every pair at distance 0, G exactly 0
    z = torch.cat([x[:1], x[:1]])
    q, s, g = T.quad_form(z, v[:2], a[:2], params, kernel, False, True)
    assert torch.equal(g, torch.zeros_like(g))
    assert torch.allclose(q, (v[:2].double().sum(0) ** 2) * k_self, rtol=1e-6, atol=0)
    q, s, g = T.quad_form(x, a, a, params, kernel, True, True)
    assert torch.isfinite(g).all()
    assert err(g, ref_quad_form(x, a, a, params, kernel, True, True)[2], _g_magnitude(
        x, x, _weights(x, x, params, kernel, True)[1], a.double() @ a.double().T, kernel)) < tol


def test_new_kernel_argument_errors():
    x, y, v, a = data(6, 7, 3, 1)
    for kernel, params, match in (("energy", [1.0, 2.0], "1 value"), ("polynomial", [1.0, 1.0], "3 values"),
                                  ("polynomial", [1.0, 1.0, 2.5], "degree"), ("polynomial", [1.0, 1.0, 0.0], "degree"),
                                  ("polynomial", [1.0, 1.0, 17.0], "degree"), ("linear", [1.0, 0.0, 1.0], "kernel"),
                                  ("laplacian", [1.0] * 17, "scales")):
        p = torch.tensor(params, dtype=torch.float64, device=DEV)
        with pytest.raises(ValueError, match=match):
            T.pair_reduce(x, y, v, a, p, kernel, False)
        with pytest.raises(ValueError, match=match):
            T.quad_form(x, a, a, p, kernel, False, False)
    p16 = torch.tensor([0.5, 1.0, 16.0], dtype=torch.float64, device=DEV)  # the largest degree
    assert rel_err(T.gram(x, y, p16, "polynomial", False), R.gram(x.double(), y.double(), p16, "polynomial",
                                                                  False)) < F32_TOL

# ------------------------------------------------------------------------------------ determinism

def _all_outputs(seed=10):
    """Every primitive on shapes that exercise several tiles, splits and rounds, d <= 16 and d > 16."""
    outs = []
    for d in (5, 40):
        x, y, v, a = data(40, 70, d, 3, seed=seed)
        params = params_for("rbf", d, 3)
        outs.append(T.gram(x, y, params, "rbf", True))
        outs.extend(T.pair_reduce(x, y, v, a, params, "imq", False))
        outs.extend(T.quad_form(y, v, v, params, "rbf", False, True))
        outs.extend(T.quad_form(y, v[:, :1], v[:, :1], params, "imq", True, True))
        # contract v3: the dot kernel (loop / tl.dot dot, G without the x_i term) and an always-differences one
        outs.extend(T.quad_form(y, v, v, new_params("polynomial", (None, 1.0, 3.0), d), "polynomial", True, True))
        outs.extend(T.pair_reduce(x, y, v, a, new_params("laplacian", (1.6, 0.7), d), "laplacian", False))
    return outs


def _bitwise_equal(a, b):
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b))


def test_bitwise_reproducible_run_to_run():
    assert _bitwise_equal(_all_outputs(), _all_outputs())


def test_every_tuned_configuration_gives_the_same_bits(monkeypatch):
    """Results do not depend on the autotuned choice: each (num_warps, num_stages) of the GPU tuning
    space, forced through the module hook, gives the bits of the untuned default
    (INFOVAE_TRITON_AUTOTUNE=0). Under the interpreter the configurations run the same arithmetic, so
    what this checks there is that the tuning space holds no tile shape: the control below shows that a
    tile-shape change does change the bits."""
    monkeypatch.setenv("INFOVAE_TRITON_AUTOTUNE", "0")
    base = _all_outputs()
    spaces = {T._plan(kind, d, dt, gpu=True)["space"] for kind in ("gram", "pair", "quad") for d in (5, 40)
              for dt in (torch.float32, torch.float64)}
    configs = sorted({c for space in spaces for c in space})
    assert len(configs) >= 2
    for nw, ns in configs:
        with T._forced_config(nw, ns):
            assert _bitwise_equal(_all_outputs(), base), (nw, ns)
    for space in spaces:  # one num_warps per space: it fixes the reduction layout
        assert len({w for w, _ in space}) == 1
    with T._forced_tiles(BM=16, BN=16):  # control: a different tile shape (what must never be tuned) shows
        assert not _bitwise_equal(_all_outputs(), base)


def test_results_independent_of_the_process(tmp_path):
    """A second Python process computes the same bits (no per-process tuning or device-count input)."""
    x, y, v, a = data(40, 70, 40, 3, seed=11)
    params = params_for("rbf", 40, 3)
    here = T.quad_form(y, v, v, params, "rbf", False, True) + T.pair_reduce(x, y, v, a, params, "imq", False)
    path = tmp_path / "inputs.pt"
    torch.save({"x": x.cpu(), "y": y.cpu(), "v": v.cpu(), "a": a.cpu(), "params": params.cpu()}, path)
    code = (
        "import torch, sys\n"
        "from infovae_kernels.backends import triton as T\n"
        f"t = torch.load({str(path)!r}); dev = {DEV!r}\n"
        "x, y, v, a, p = (t[k].to(dev) for k in ('x', 'y', 'v', 'a', 'params'))\n"
        "out = T.quad_form(y, v, v, p, 'rbf', False, True) + T.pair_reduce(x, y, v, a, p, 'imq', False)\n"
        f"torch.save([o.cpu() for o in out], {str(tmp_path / 'out.pt')!r})\n")
    env = dict(os.environ, INFOVAE_TRITON_AUTOTUNE="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    there = torch.load(tmp_path / "out.pt")
    assert _bitwise_equal([o.cpu() for o in here], there)


def test_precision_setting():
    assert T.get_precision() == "ieee"
    with pytest.raises(ValueError):
        T.set_precision("fp16")
    T.set_precision("tf32x3")
    try:
        x, y, v, a = data(20, 30, 32, 1)
        params = params_for("rbf", 32, 1)
        s, _ = T.pair_reduce(x, y, v, a, params, "rbf", False)
        assert rel_err(s, ref_pair_reduce(x, y, v, a, params, "rbf", False)[0]) < 1e-3
    finally:
        T.set_precision("ieee")


# ------------------------------------------------------------------------------------ op contract

def test_opcheck_each_op():
    x, y, v, a = data(7, 9, 3, 2, seed=12)
    p1, p2 = params_for("rbf", 3, 1), params_for("imq", 3, 3)
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.gram.default, (x, y, p2, "imq", False))
    torch.library.opcheck(ops.gram.default, (x, y, p1, "rbf", True))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, p1, "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, None, p2, "imq", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, x, v[:7], a, p1, "rbf", True))
    torch.library.opcheck(ops.quad_form.default, (x, a, a, p2, "imq", True, True))
    torch.library.opcheck(ops.quad_form.default, (x, a[:, :1], None, p1, "rbf", False, False))
    poly, lap = new_params("polynomial", (None, 1.0, 2.0), 3), new_params("laplacian", (1.6,), 3)
    torch.library.opcheck(ops.quad_form.default, (x, a, a, poly, "polynomial", True, True))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, lap, "laplacian", False))


def test_compile_fullgraph():
    x, y, v, a = data(7, 9, 3, 2, seed=13)
    params = params_for("rbf", 3, 1)

    def f(x, y, v, a, params):
        s, g = torch.ops.infovae_triton.pair_reduce(x, y, v, a, params, "rbf", False)
        q, s2, g2 = torch.ops.infovae_triton.quad_form(x, a, a, params, "imq", False, True)
        return s.sum() + g.sum() + q.sum() + s2.sum() + g2.sum()

    backend = "inductor" if DEV == "cuda" else "aot_eager"
    out = torch.compile(f, fullgraph=True, backend=backend)(x, y, v, a, params)
    torch.testing.assert_close(out, f(x, y, v, a, params))


def _schema_signature(schema):
    return ([(arg.name, str(arg.type), arg.default_value, arg.kwarg_only) for arg in schema.arguments],
            [str(r.type) for r in schema.returns])


def test_schemas_equal_ops_cpp():
    """The infovae_triton schemas are the text of csrc/ops.cpp (the source of the C++ ops' schemas)."""
    import re

    src = os.path.join(os.path.dirname(__file__), "..", "csrc", "ops.cpp")
    if not os.path.exists(src):
        pytest.skip("csrc/ops.cpp not found")
    text = open(src).read()
    defs = ["".join(re.findall(r'"([^"]*)"', m)) for m in re.findall(r'm\.def\(\s*((?:"[^"]*"\s*)+)\)', text)]
    cpp = {d.split("(")[0]: torch._C.parse_schema("infovae::" + d) for d in defs}
    shared = {"gram", "pair_reduce", "quad_form"}
    assert set(cpp) == shared | {"stein_form", "stein_moments", "stein_thin"}  # the Stein primitives (Triton has its own two)
    for name in shared:
        schema = cpp[name]
        tri = getattr(torch.ops.infovae_triton, name).default._schema
        assert _schema_signature(schema) == _schema_signature(tri), name


def test_production_code_does_not_import_the_oracle():
    folder = os.path.dirname(T.__file__)
    for path in sorted(f for f in os.listdir(folder) if f.endswith(".py")):
        src = open(os.path.join(folder, path)).read()
        assert "reference" not in src.replace("backends/reference.py", ""), path


@pytest.mark.slow
def test_kernels_fit_in_registers_on_sm90():
    """Compiled for sm_90 without a GPU (ptxas from Triton's wheel, in a process without the
    interpreter): the plan's main variants use at most 64 B of local memory (register spills) per
    thread, which the tile shapes were chosen for (backends/triton/aot.py; 4 warps at 64 x 64 spilled
    KBs)."""
    from infovae_kernels.backends.triton import aot

    ok, why = aot.available()
    if not ok:
        pytest.skip(why)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "infovae_kernels.backends.triton.aot", "90", "--check"], env=env,
                         capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    assert run.stdout.count(" B local") == len(aot.MAIN_VARIANTS), run.stdout


# ------------------------------------------------------------------------------------ GPU only

gpu = pytest.mark.gpu


def _randn(*shape, device="cuda", seed=0, scale=0.25):
    return scale * torch.randn(*shape, generator=torch.Generator(device).manual_seed(seed), device=device)


@gpu
@pytest.mark.parametrize("precision", ["ieee"])
def test_gpu_precision_errors(precision):
    """The default precision against float64 on the GPU (its exp is ex2.approx); benchmarks/bench_gpu.py
    measures all three tl.dot precisions (precision_<gpu>.csv)."""
    T.set_precision(precision)
    try:
        errs = {}
        for d in (2, 64, 256):
            x, y = _randn(2048, d, seed=1), _randn(1536, d, seed=2)
            v, a = _randn(1536, 1, seed=3, scale=1.0), _randn(2048, 1, seed=4, scale=1.0)
            params = params_for("rbf", d, 1, device="cuda")
            s, g = T.pair_reduce(x, y, v, a, params, "rbf", False)
            s0, g0 = ref_pair_reduce(x, y, v, a, params, "rbf", False)
            q, qs, qg = T.quad_form(x, a, a, params, "rbf", False, True)
            q0, qs0, qg0 = ref_quad_form(x, a, a, params, "rbf", False, True)
            errs[d] = (rel_err(s, s0), rel_err(g, g0), rel_err(qs, qs0), rel_err(qg, qg0))
        print(f"\nprecision {precision}: " + ", ".join(
            f"d={d}: S {e[0]:.1e} G {e[1]:.1e} qS {e[2]:.1e} qG {e[3]:.1e}" for d, e in errs.items()))
        assert max(max(e) for e in errs.values()) < 1e-4  # GPU exp (ex2.approx) adds to the formula's error
    finally:
        T.set_precision("ieee")


@gpu
def test_gpu_matches_float64_large():
    x, y = _randn(5000, 64, seed=1), _randn(7001, 64, seed=2)
    v, a = _randn(7001, 3, seed=3, scale=1.0), _randn(5000, 3, seed=4, scale=1.0)
    params = params_for("imq", 64, 3, device="cuda")
    s, g = T.pair_reduce(x, y, v, a, params, "imq", False)
    s0, g0 = ref_pair_reduce(x, y, v, a, params, "imq", False)
    assert rel_err(s, s0) < 1e-4 and rel_err(g, g0) < 1e-4
    out = T.quad_form(x, a, a, params, "rbf", True, True)
    ref = ref_quad_form(x, a, a, params, "rbf", True, True)
    assert all(rel_err(o, r) < 1e-4 for o, r in zip(out, ref))


@gpu
@pytest.mark.parametrize("kernel,ps", [("laplacian", (1.6, 0.7, 5.0)), ("energy", (0.75,)),
                                       ("polynomial", (None, 1.0, 3.0)), ("polynomial", (None, 0.0, 2.0))])
def test_gpu_new_kernels_match_float64_large(kernel, ps):
    """The GPU's exp, sqrt (sqrt.approx) and division on several thousand points, d = 8 and 64 (the
    polynomial's loop and tl.dot forms), against float64: errors against the summed magnitudes."""
    for d in (8, 64):
        x, y = _randn(3000, d, seed=1), _randn(2501, d, seed=2)
        v, a = _randn(2501, 3, seed=3, scale=1.0), _randn(3000, 3, seed=4, scale=1.0)
        y[:100] = x[:100]  # coincident pairs: the kink
        params = new_params(kernel, ps, d, device="cuda")
        k0, w0 = _weights(x, y, params, kernel, False)
        s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
        assert err(s, s0, k0.abs() @ v.double().abs()) < 1e-4
        assert err(g, g0, _g_magnitude(x, y, w0, a.double() @ v.double().T, kernel)) < 1e-4
        kz, wz = _weights(x, x, params, kernel, True)
        q, qs, qg = T.quad_form(x, a, a, params, kernel, True, True)
        q0, qs0, qg0 = ref_quad_form(x, a, a, params, kernel, True, True)
        ad = a.double().abs()
        assert err(q, q0, (ad * (kz.abs() @ ad)).sum(0)) < 1e-4
        assert err(qs, qs0, kz.abs() @ ad) < 1e-4
        assert err(qg, qg0, _g_magnitude(x, x, wz, a.double() @ a.double().T, kernel)) < 1e-4


@gpu
def test_gpu_value_bitwise_with_and_without_gradient():
    for d in (8, 64):
        z = _randn(3001, d, seed=5)
        w = torch.cat([torch.full((1500, 1), 1 / 1500), torch.full((1501, 1), -1 / 1501)]).cuda()
        params = params_for("rbf", d, 3, device="cuda")
        q = T.quad_form(z, w, None, params, "rbf", False, False)[0]
        assert torch.equal(q, T.quad_form(z, w, w, params, "rbf", False, True)[0])
        assert torch.equal(q, T.quad_form(z, w, w, params, "rbf", False, False)[0])


@gpu
def test_gpu_every_tuned_configuration_gives_the_same_bits():
    """On the GPU the configurations compile to different pipelines: bits must still agree."""
    outs = {}
    for d in (8, 64):
        x, y = _randn(1000, d, seed=1), _randn(777, d, seed=2)
        v, a = _randn(777, 3, seed=3, scale=1.0), _randn(1000, 3, seed=4, scale=1.0)
        params = params_for("rbf", d, 2, device="cuda")
        for cfg in sorted(set(T._plan("pair", d, torch.float32)["space"] + T._plan("gram", d, torch.float32)["space"])):
            with T._forced_config(*cfg):
                poly = new_params("polynomial", (None, 1.0, 3.0), d, device="cuda")
                outs.setdefault(d, []).append(list(T.pair_reduce(x, y, v, a, params, "rbf", False))
                                              + [T.gram(x, y, params, "imq", True)]
                                              + list(T.pair_reduce(x, y, v, a, poly, "polynomial", False)))
    for d, runs in outs.items():
        for r in runs[1:]:
            assert _bitwise_equal(r, runs[0]), d


@gpu
def test_gpu_opcheck_and_inductor():
    x, y = _randn(300, 16, seed=1), _randn(257, 16, seed=2)
    v, a = _randn(257, 2, seed=3), _randn(300, 2, seed=4)
    p = params_for("rbf", 16, 2, device="cuda")
    ops = torch.ops.infovae_triton
    torch.library.opcheck(ops.gram.default, (x, y, p, "rbf", True))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, p, "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, None, p, "imq", False))
    torch.library.opcheck(ops.quad_form.default, (x, a, a, p, "imq", True, True))
    f = lambda x, a, p: ops.quad_form(x, a, a, p, "rbf", False, False)[2].sum()  # noqa: E731
    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, a, p), f(x, a, p))


@gpu
def test_gpu_cuda_graph_capture():
    x, y = _randn(1000, 8, seed=1), _randn(900, 8, seed=2)
    v, a = _randn(900, 1, seed=3), _randn(1000, 1, seed=4)
    p = params_for("rbf", 8, 2, device="cuda")
    f = lambda: (T.pair_reduce(x, y, v, a, p, "rbf", False), T.quad_form(x, a, a, p, "imq", False, True))  # noqa: E731
    eager = f()  # warm up: compiles and autotunes outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = f()
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(c, e) for c, e in zip(captured[0], eager[0]))
    assert all(torch.equal(c, e) for c, e in zip(captured[1], eager[1]))


def measured_errors() -> dict:
    """The largest float32 errors over the gram, pair_reduce and quad_form cases above (the docstring)."""
    errs = {}

    def upd(key, value):
        errs[key] = max(errs.get(key, 0.0), value)

    for n, m, d, p in PAIR_CASES:
        for kernel in ("rbf", "imq"):
            x, y, v, a = data(n, m, d, p)
            params = params_for(kernel, d, 3 if (n + d) % 2 == 0 else 1)
            s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
            s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
            upd("pair_reduce S", rel_err(s, s0))
            upd("pair_reduce G", rel_err(g, g0))
            for deriv in (False, True):
                K = T.gram(x, y, params, kernel, deriv)
                upd(f"gram {'g' if deriv else 'k'}", rel_err(K, R.gram(x.double(), y.double(), params, kernel, deriv)))
    for n, d, P in QUAD_CASES:
        for kernel in ("rbf", "imq"):
            for excl in (False, True):
                z, _, w, a = data(n, n, d, P, seed=2)
                w = w[:n]
                params = params_for(kernel, d, 3 if P > 1 else 1)
                q, s, g = T.quad_form(z, w, a, params, kernel, excl, True)
                q0, s0, g0 = ref_quad_form(z, w, a, params, kernel, excl, True)
                upd("quad_form q", rel_err(q, q0, ref_quad_form(z, w.abs(), None, params, kernel, excl, False)[0]))
                if s0.abs().max() > 0:
                    upd("quad_form S", rel_err(s, s0))
                if g0.abs().max() > 0:
                    upd("quad_form G", rel_err(g, g0))
    for kernel, ps, d, dtype in NEW_CASES:  # contract v3 kernels, errors against the summed magnitudes
        name = kernel if kernel != "polynomial" else f"polynomial n={ps[2]:g}"
        x, y, v, a = data(37, 45, d, 3, seed=20, dtype=dtype)
        params = new_params(kernel, ps, d)
        k0, w0 = _weights(x, y, params, kernel, False)
        upd(f"{name} {str(dtype)[6:]} gram k", err(T.gram(x, y, params, kernel, False), k0, k0))
        upd(f"{name} {str(dtype)[6:]} gram w", err(T.gram(x, y, params, kernel, True), w0, w0))
        s, g = T.pair_reduce(x, y, v, a, params, kernel, False)
        s0, g0 = ref_pair_reduce(x, y, v, a, params, kernel, False)
        upd(f"{name} {str(dtype)[6:]} pair_reduce S", err(s, s0, k0.abs() @ v.double().abs()))
        upd(f"{name} {str(dtype)[6:]} pair_reduce G",
            err(g, g0, _g_magnitude(x, y, w0, a.double() @ v.double().T, kernel)))
        z, w = x, a
        kz, wz = _weights(z, z, params, kernel, True)
        q, s, g = T.quad_form(z, w, w, params, kernel, True, True)
        q0, s0, g0 = ref_quad_form(z, w, w, params, kernel, True, True)
        wd = w.double().abs()
        upd(f"{name} {str(dtype)[6:]} quad_form q", err(q, q0, (wd * (kz.abs() @ wd)).sum(0)))
        upd(f"{name} {str(dtype)[6:]} quad_form S", err(s, s0, kz.abs() @ wd))
        upd(f"{name} {str(dtype)[6:]} quad_form G",
            err(g, g0, _g_magnitude(z, z, wz, w.double() @ w.double().T, kernel)))
    return errs


if __name__ == "__main__":
    for key, value in measured_errors().items():
        print(f"{key}: {value:.2e}")
