"""Every public function on every backend here against the float64 oracle (tests/oracle.py).

Tolerances follow flash-attention: a float32 result may be off the float64 oracle by a small multiple
of what the plain-torch backend computing in float32 is off by on the same input, plus a floor of a
few float32 ulps of the result's scale.
"""

import pytest
import torch

import infovae_kernels as ik
import oracle
from conftest import DEVICE_BACKENDS

# (N, M, d): sizes 1, 2, 7, 129, 1000 and d 1, 2, 5, 64, 784
CASES = [(1, 2, 1), (2, 7, 2), (7, 129, 5), (129, 7, 64), (33, 20, 784), (1000, 129, 3)]
SIGMAS = [1.0, [0.5, 2.0], "median"]
FLOAT64_BACKENDS = {"torch", "cpu", "cuda"}


def _data(n, m, d, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed + 1000 * n + 10 * m + d)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.8 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
    scale = d**0.5  # keep distances O(sigma) whatever d is, so kernel values are not all 0 or 1
    return (x / scale * 2).to(device, dtype), (y / scale * 2).to(device, dtype)


def assert_close(out, want64, ref_lowp=None, floor=2e-6):
    """|out - want64| <= 8 |ref_lowp - want64| + floor * scale, elementwise maximum over the tensor."""
    out, want64 = out.detach().double().cpu(), want64.detach().double().cpu()
    assert out.shape == want64.shape
    scale = max(1.0, float(want64.abs().max())) if want64.numel() else 1.0
    allowed = floor * scale
    if ref_lowp is not None:
        allowed += 8 * float((ref_lowp.detach().double().cpu() - want64).abs().max())
    err = float((out - want64).abs().max()) if out.numel() else 0.0
    assert err <= allowed, f"max error {err:.3g} > allowed {allowed:.3g}"


def _sigma_list(sigma, x, y):
    if sigma == "median":
        return [float(torch.cdist(*(2 * [torch.cat([x, y]).double()])).triu(1)[
            torch.triu(torch.ones(x.shape[0] + y.shape[0], x.shape[0] + y.shape[0]), 1) > 0].median())]
    return sigma if isinstance(sigma, list) else [sigma]


def _skip_for_interpreter(backend, n, m, d):
    return backend == "triton" and not torch.cuda.is_available() and n * m * d > 300_000


def _params():
    for device, backend in DEVICE_BACKENDS:
        for n, m, d in CASES:
            if not _skip_for_interpreter(backend, n, m, d):
                yield pytest.param(device, backend, n, m, d, id=f"{device}-{backend}-{n}x{m}x{d}")


PARAMS = list(_params())


@pytest.mark.parametrize("device,backend,n,m,d", PARAMS)
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("sigma", SIGMAS, ids=["s1", "multi", "median"])
def test_mmd_value(device, backend, n, m, d, kernel, estimator, sigma):
    x, y = _data(n, m, d, device)
    if estimator == "unbiased" and min(n, m) < 2:
        with pytest.raises(ValueError, match="the unbiased estimator needs at least 2 points"):
            ik.mmd(x, y, estimator=estimator, backend=backend)
        return
    sig = _sigma_list(sigma, x, y)
    want = oracle.mmd(x.cpu(), y.cpu(), sig, kernel, estimator == "unbiased")
    got = ik.mmd(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend)
    ref32 = ik.mmd(x, y, kernel=kernel, sigma=sig, estimator=estimator, backend="torch")
    assert got.dtype == x.dtype and got.dim() == 0
    assert_close(got, want, ref32)


@pytest.mark.parametrize("device,backend,n,m,d", PARAMS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_gradients_and_weights(device, backend, n, m, d, estimator):
    x, y = _data(n, m, d, device)
    if estimator == "unbiased" and min(n, m) < 2:
        with pytest.raises(ValueError, match="the unbiased estimator needs at least 2 points"):
            ik.mmd(x, y, estimator=estimator, backend=backend)
        return
    g = torch.Generator().manual_seed(n + m)
    wx, wy = torch.rand(n, generator=g) + 0.1, torch.rand(m, generator=g) + 0.1
    sig = [0.7, 1.9]

    def run(xx, yy, wxx, wyy, be):
        leaves = [t.detach().clone().requires_grad_(True) for t in (xx, yy, wxx, wyy)]
        if be is None:
            val = oracle.mmd(*leaves[:2], sig, "rbf", estimator == "unbiased", *leaves[2:])
        else:
            val = ik.mmd(*leaves[:2], sigma=sig, estimator=estimator, weights_x=leaves[2],
                         weights_y=leaves[3], backend=be)
        val.backward()
        return [val] + [t.grad for t in leaves]

    want = run(x.cpu().double(), y.cpu().double(), wx.double(), wy.double(), None)
    ref32 = run(x, y, wx.to(device), wy.to(device), "torch")
    got = run(x, y, wx.to(device), wy.to(device), backend)
    for name, a, b, r in zip(["value", "x", "y", "wx", "wy"], got, want, ref32):
        assert_close(a, b, r), name


@pytest.mark.parametrize("device,backend,n,m,d", PARAMS)
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("vshape", ["none", "vector", "matrix"])
def test_kernel_sum(device, backend, n, m, d, kernel, vshape):
    x, y = _data(n, m, d, device)
    g = torch.Generator().manual_seed(3)
    v = {"none": None, "vector": torch.randn(m, generator=g), "matrix": torch.randn(m, 3, generator=g)}[vshape]
    v = None if v is None else v.to(device)
    sig = [0.6, 1.7]
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, y)] + (
        [] if v is None else [v.detach().clone().requires_grad_(True)])
    vv = leaves[2] if v is not None else None
    got = ik.kernel_sum(leaves[0], leaves[1], vv, kernel=kernel, sigma=sig, backend=backend)
    ones = torch.ones(m, dtype=torch.float64)
    o_leaves = [t.detach().cpu().double().requires_grad_(True) for t in leaves]
    want = oracle.kernel_sum(o_leaves[0], o_leaves[1], o_leaves[2] if v is not None else ones, sig, kernel)
    ref32 = ik.kernel_sum(x, y, v, kernel=kernel, sigma=sig, backend="torch")
    assert got.shape == want.shape and got.dtype == x.dtype
    assert_close(got, want, ref32)
    cot = torch.randn(got.shape, generator=g, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, leaves, cot.to(device, got.dtype))
    want_grads = torch.autograd.grad(want, o_leaves, cot)
    r_leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    ref_out = ik.kernel_sum(r_leaves[0], r_leaves[1], r_leaves[2] if v is not None else None,
                            kernel=kernel, sigma=sig, backend="torch")
    ref_grads = torch.autograd.grad(ref_out, r_leaves, cot.to(device, got.dtype))
    for a, b, r in zip(got_grads, want_grads, ref_grads):
        assert_close(a, b, r)


@pytest.mark.parametrize("wanted,passes", [("x", 2), ("y", 2), ("v", 2), ("xy", 3), ("xv", 3), ("xyv", 3)])
def test_kernel_sum_backward_runs_only_the_passes_it_needs(monkeypatch, wanted, passes):
    """forward + backward = 1 pass + one per side whose inputs need a gradient (y and v share one);
    the gradients asked for still match the oracle."""
    import infovae_kernels.backends as backends
    ops = backends.primitives("torch")
    calls = []
    real = ops.pair_reduce
    monkeypatch.setattr(ops, "pair_reduce", lambda *a: calls.append(1) or real(*a))
    x, y = _data(7, 129, 5, "cpu")
    v = torch.randn(129, generator=torch.Generator().manual_seed(3))
    leaves = {k: t.detach().clone().requires_grad_(k in wanted) for k, t in zip("xyv", (x, y, v))}
    got = ik.kernel_sum(leaves["x"], leaves["y"], leaves["v"], sigma=0.9, backend="torch")
    asked = [leaves[k] for k in wanted]
    got_grads = torch.autograd.grad(got.sum(), asked)
    assert len(calls) == passes
    o_leaves = {k: t.detach().double().requires_grad_(k in wanted) for k, t in leaves.items()}
    want = oracle.kernel_sum(o_leaves["x"], o_leaves["y"], o_leaves["v"], [0.9], "rbf")
    want_grads = torch.autograd.grad(want.sum(), [o_leaves[k] for k in wanted])
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b, floor=1e-5)


@pytest.mark.parametrize("wanted", ["x", "y"])
def test_rbf_gram_gradient_of_one_side_alone(wanted):
    """backward forms only the side asked for; that side still matches the oracle."""
    x, y = _data(7, 129, 5, "cpu", torch.float64)
    leaves = [t.clone().requires_grad_(k == wanted) for k, t in zip("xy", (x, y))]
    (got,) = torch.autograd.grad(ik.rbf_gram(*leaves, sigma=0.8, backend="cpu").sin().sum(),
                                 [t for t in leaves if t.requires_grad])
    o_leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in leaves]
    (want,) = torch.autograd.grad(oracle.kernel_matrix(*o_leaves, [0.8]).sin().sum(),
                                  [t for t in o_leaves if t.requires_grad])
    assert (got - want).abs().max() <= 1e-12 * want.abs().max()


@pytest.mark.parametrize("device,backend,n,m,d", PARAMS)
def test_rbf_gram(device, backend, n, m, d):
    x, y = _data(n, m, d, device)
    sig = [0.8, 2.5]
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, y)]
    got = ik.rbf_gram(*leaves, sigma=sig, backend=backend)
    o_leaves = [t.detach().cpu().double().requires_grad_(True) for t in (x, y)]
    want = oracle.kernel_matrix(*o_leaves, sig)
    assert got.shape == (n, m) and got.dtype == x.dtype
    assert_close(got, want, ik.rbf_gram(x, y, sigma=sig, backend="torch"))
    cot = torch.randn(n, m, dtype=torch.float64)
    got_grads = torch.autograd.grad(got, leaves, cot.to(device, got.dtype))
    want_grads = torch.autograd.grad(want, o_leaves, cot)
    for a, b in zip(got_grads, want_grads):
        assert_close(a, b, floor=1e-5)
    assert_close(ik.rbf_gram(x, sigma=sig, backend=backend), oracle.kernel_matrix(x.cpu(), x.cpu(), sig),
                 ik.rbf_gram(x, sigma=sig, backend="torch"))


@pytest.mark.parametrize("device,backend,n,m,d", PARAMS)
@pytest.mark.parametrize("sigma", [0.9, "median"])
def test_svgd_direction(device, backend, n, m, d, sigma):
    x, _ = _data(n, m, d, device)
    score = -2.0 * x + 0.1
    if sigma == "median":
        from infovae_kernels.bandwidth import svgd_sigma
        sig = svgd_sigma(x)
    else:
        sig = sigma
    got = ik.svgd_direction(x, score, sigma=sigma, backend=backend)
    want = oracle.svgd_direction(x.cpu(), score.cpu(), sig)
    ref32 = ik.svgd_direction(x, score, sigma=sig, backend="torch")
    assert got.shape == x.shape and got.dtype == x.dtype and not got.requires_grad
    assert_close(got, want, ref32)


FLOAT64_PARAMS = [p for p in PARAMS if p.values[1] in FLOAT64_BACKENDS]


@pytest.mark.parametrize("device,backend,n,m,d", [p for p in FLOAT64_PARAMS if p.values[2] * p.values[3] < 20_000])
def test_float64_matches_oracle_tightly(device, backend, n, m, d):
    x, y = _data(n, m, d, device, torch.float64)
    for kernel in ("rbf", "imq"):
        want = oracle.mmd(x.cpu(), y.cpu(), [0.5, 1.5], kernel)
        got = ik.mmd(x, y, kernel=kernel, sigma=[0.5, 1.5], backend=backend)
        assert abs(float(got) - float(want)) <= 1e-12 * max(1.0, abs(float(want)))


@pytest.mark.parametrize("device,backend", sorted({(p.values[0], p.values[1]) for p in FLOAT64_PARAMS}))
def test_gradcheck_float64(device, backend):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    y = (torch.randn(5, 3, generator=g, dtype=torch.float64) + 0.4).to(device).requires_grad_(True)
    w = (torch.rand(5, generator=g, dtype=torch.float64) + 0.2).to(device).requires_grad_(True)
    v = torch.randn(5, 2, generator=g, dtype=torch.float64).to(device).requires_grad_(True)
    for est in ("biased", "unbiased"):
        for kernel in ("rbf", "imq"):
            assert torch.autograd.gradcheck(
                lambda a, b, c: ik.mmd(a, b, kernel=kernel, sigma=[0.7, 1.3], estimator=est, weights_y=c,
                                       backend=backend), (x, y, w))
    assert torch.autograd.gradcheck(
        lambda a, b, c: ik.kernel_sum(a, b, c, kernel="imq", sigma=0.9, backend=backend), (x, y, v))
    assert torch.autograd.gradcheck(lambda a, b: ik.rbf_gram(a, b, sigma=[0.5, 2.0], backend=backend), (x, y))


@pytest.mark.parametrize("device,backend", sorted({(d, b) for d, b in DEVICE_BACKENDS}))
def test_deterministic_and_layout_invariant(device, backend):
    x, y = _data(129, 66, 5, device)
    first = ik.mmd(x, y, sigma=[0.5, 1.0], backend=backend)
    assert torch.equal(first, ik.mmd(x, y, sigma=[0.5, 1.0], backend=backend))
    s1 = ik.kernel_sum(x, y, y[:, 0].contiguous(), backend=backend)
    assert torch.equal(s1, ik.kernel_sum(x, y, y[:, 0].contiguous(), backend=backend))
    # transposed, sliced and expanded views give the same answer as contiguous copies
    xt = x.T.contiguous().T
    ys = torch.stack([y, y], 2)[:, :, 0]
    assert not xt.is_contiguous() and not ys.is_contiguous()
    assert_close(ik.mmd(xt, ys, sigma=[0.5, 1.0], backend=backend), first.double(), floor=1e-6)
    xe = x[:1].expand(40, 5)
    assert_close(ik.mmd(xe, y, backend=backend), ik.mmd(xe.contiguous(), y, backend=backend).double(), floor=1e-6)


@pytest.mark.parametrize("device,backend", sorted({(d, b) for d, b in DEVICE_BACKENDS}))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(device, backend, dtype):
    x, y = _data(64, 33, 8, device, dtype)
    want = oracle.mmd(x.cpu(), y.cpu(), [1.0])  # on the rounded half values
    got = ik.mmd(x, y, backend=backend)
    assert got.dtype == dtype
    eps = torch.finfo(dtype).eps
    assert abs(float(got) - float(want)) <= 2 * eps * max(1.0, abs(float(want))) + 1e-5
    ks = ik.kernel_sum(x, y, backend=backend)
    assert_close(ks.float(), oracle.kernel_sum(x.cpu(), y.cpu(), torch.ones(33), [1.0]), floor=2 * eps)


def test_mmd_loss_module_and_zero_distance():
    x, y = _data(50, 40, 4, "cpu")
    loss = ik.MMDLoss(sigma=[0.5, 1.0])
    assert torch.equal(loss(x, y), ik.mmd(x, y, sigma=[0.5, 1.0]))
    assert "sigma=[0.5, 1.0]" in repr(loss)
    assert abs(float(ik.mmd(x, x))) < 1e-6
    assert torch.equal(ik.RBFKernel(sigma=0.7)(x, y), ik.rbf_gram(x, y, sigma=0.7))


def test_second_derivative_raises():
    x, y = _data(10, 8, 3, "cpu")
    x.requires_grad_(True)
    val = ik.mmd(x, y)
    with pytest.raises((NotImplementedError, RuntimeError), match="second derivatives|does not require grad"):
        (g,) = torch.autograd.grad(val, x, create_graph=True)
        g.sum().backward()


def test_public_names():
    want = {"rbf_gram", "kernel_sum", "mmd", "svgd_direction", "MMDLoss", "backends",
            "mmd_full", "mmd_test", "MMDTestResult"}
    assert want <= set(ik.__all__)
    assert all(callable(getattr(ik, name)) for name in want - {"backends"})


def test_broken_triton_install_is_reported_not_raised(monkeypatch):
    import importlib

    real_import = importlib.import_module

    def broken(name, *args):
        if name == "infovae_kernels.backends.triton":
            raise RuntimeError("libtriton.so: undefined symbol")
        return real_import(name, *args)

    monkeypatch.setattr(ik.backends.importlib, "import_module", broken)
    monkeypatch.setattr(ik.backends, "_LOADED", {})  # forget what was loaded
    status = ik.backends.available()["triton"]
    assert not status.available and "undefined symbol" in status.reason
    assert ik.backends.available()["torch"].available


@pytest.mark.parametrize("n", [3, 4, 7, 50])
def test_median_distance_is_lower_median_of_pair_distances(n):
    from infovae_kernels.bandwidth import median_distance

    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    z[-1] = z[0]  # a duplicate point: its zero distance is a pair and counts
    iu = torch.triu_indices(n, n, 1)
    d = (z[iu[0]] - z[iu[1]]).norm(dim=1).sort().values
    assert median_distance(z) == pytest.approx(float(d[(len(d) - 1) // 2]), rel=1e-12)
