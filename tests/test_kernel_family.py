"""The kernels beyond rbf/imq (laplacian, energy, polynomial, linear), differentiable bandwidths and KID,
through the public functions on every backend that runs here, against the textbook float64 oracle."""

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import infovae_kernels as ik
from infovae_kernels import Polynomial
import oracle
from conftest import backends_for

BACKENDS = backends_for("cpu")
# (public kernel, sigma, oracle kernel)
FAMILY = [("laplacian", 0.8, "laplacian"), ("laplacian", [0.5, 2.0], "laplacian"), ("energy", None, "energy"),
          ("polynomial", None, Polynomial()), ("linear", None, Polynomial(1, 1.0, 0.0)),
          (Polynomial(2, 0.3, 0.0), None, Polynomial(2, 0.3, 0.0))]
IDS = ["laplacian", "laplacian-2scales", "energy", "polynomial", "linear", "poly2"]


def _sigmas(sigma):
    return [] if sigma is None else (sigma if isinstance(sigma, list) else [sigma])


def _points(n=23, m=17, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = 0.8 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,sigma,okernel", FAMILY, ids=IDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_value_and_gradient_match_the_oracle(backend, kernel, sigma, okernel, estimator):
    x, y = _points()
    x.requires_grad_(True)
    y.requires_grad_(True)
    got = ik.mmd(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend)
    gx, gy = torch.autograd.grad(got, (x, y))
    want = oracle.mmd(x, y, _sigmas(sigma), okernel, unbiased=estimator == "unbiased")
    wx, wy = torch.autograd.grad(want, (x, y))
    assert got.item() == pytest.approx(want.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(gx, wx, rtol=1e-8, atol=1e-11)
    torch.testing.assert_close(gy, wy, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,sigma,okernel", FAMILY, ids=IDS)
def test_float32_within_float32_rounding(backend, kernel, sigma, okernel):
    x, y = _points(31, 29, 7, seed=1)
    got = ik.mmd(x.float(), y.float(), kernel=kernel, sigma=sigma, backend=backend)
    want = oracle.mmd(x, y, _sigmas(sigma), okernel)
    scale = oracle.kernel_matrix(x, y, _sigmas(sigma), okernel).abs().max().item()  # cancellation reference
    assert abs(got.item() - want.item()) <= 1e-5 * max(scale, 1.0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel,sigma,okernel", FAMILY, ids=IDS)
def test_kernel_sum_matches_the_oracle(backend, kernel, sigma, okernel):
    x, y = _points(13, 11, 4, seed=2)
    v = torch.randn(11, 3, dtype=torch.float64)
    got = ik.kernel_sum(x, y, v, kernel=kernel, sigma=sigma, backend=backend)
    torch.testing.assert_close(got, oracle.kernel_sum(x, y, v, _sigmas(sigma), okernel), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kernel", ["laplacian", "energy"])
def test_kink_at_zero_distance_gives_subgradient_zero(backend, kernel):
    """Duplicated points (within and across the sets): finite gradients, equal to the textbook gradient
    with the kink's subgradient 0 (the oracle on points nudged apart would differ only in those pairs)."""
    x, y = _points(9, 7, 3, seed=3)
    x[4] = x[1]
    y[2] = x[1]
    sigma = 0.7 if kernel == "laplacian" else None
    xr, yr = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    gx, gy = torch.autograd.grad(ik.mmd(xr, yr, kernel=kernel, sigma=sigma, backend=backend), (xr, yr))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    # the duplicated pair adds nothing: removing one of its two forces by hand gives the same x[1] gradient
    # as the textbook formula over all other pairs
    xa, ya = x.clone().requires_grad_(True), y.clone()
    r = torch.cdist(xa, torch.cat([x, y]), compute_mode="donot_use_mm_for_euclid_dist")
    k = torch.exp(-r / 0.7) if kernel == "laplacian" else -r
    coef = torch.cat([torch.full((9,), 1 / 81.0, dtype=torch.float64), torch.full((7,), -1 / 63.0, dtype=torch.float64)])
    mask = r > 0
    (g1,) = torch.autograd.grad((k * coef * mask).sum(), xa)
    torch.testing.assert_close(gx[1], 2 * g1[1], rtol=1e-9, atol=1e-12)


def test_energy_self_distance_is_exactly_zero():
    x, _ = _points(6, 1, 3)
    for backend in BACKENDS:
        k = ik.kernel_sum(x, x, kernel="energy", backend=backend)  # sum_j -|x_i - x_j|, j == i adds exactly 0
        want = -torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").sum(1)
        torch.testing.assert_close(k, want, rtol=1e-12, atol=0)


def test_translation_rules():
    """laplacian/energy are translation invariant; the dot kernels are not (and are not centred)."""
    x, y = _points()
    for kernel, sigma in (("laplacian", 1.0), ("energy", None)):
        a = ik.mmd(x, y, kernel=kernel, sigma=sigma, backend="torch")
        b = ik.mmd(x + 1e3, y + 1e3, kernel=kernel, sigma=sigma, backend="torch")
        assert b.item() == pytest.approx(a.item(), rel=1e-9)
    a = ik.mmd(x, y, kernel="polynomial", backend="torch")
    b = ik.mmd(x + 1.0, y + 1.0, kernel="polynomial", backend="torch")
    assert b.item() == pytest.approx(oracle.mmd(x + 1.0, y + 1.0, [], Polynomial()).item(), rel=1e-9)
    assert abs(b.item() - a.item()) > 1e-3 * abs(a.item())


def test_scale_invariance_of_the_numerics():
    """Data at 1e-20 and 1e20: the dot kernels fold the power-of-two scale into gamma exactly."""
    x, y = _points()
    for factor in (1e-20, 1e20):
        got = ik.mmd(x * factor, y * factor, kernel=Polynomial(3, 1.0 / factor**2, 1.0), backend="torch")
        want = ik.mmd(x, y, kernel=Polynomial(3, 1.0, 1.0), backend="torch")
        assert got.item() == pytest.approx(want.item(), rel=1e-9)
        e = ik.mmd(x * factor, y * factor, kernel="energy", backend="torch") / factor
        assert e.item() == pytest.approx(ik.mmd(x, y, kernel="energy", backend="torch").item(), rel=1e-9)


@pytest.mark.parametrize("bad,match", [
    (dict(kernel="energy", sigma=1.0), "no bandwidth"),
    (dict(kernel="polynomial", sigma="median"), "no bandwidth"),
    (dict(kernel=Polynomial(degree=0)), "degree"),
    (dict(kernel=Polynomial(degree=2.5)), "degree"),
    (dict(kernel=Polynomial(degree=17)), "degree"),
    (dict(kernel=Polynomial(gamma=-1.0)), "gamma"),
    (dict(kernel=Polynomial(coef=float("nan"))), "coef"),
    (dict(kernel="poly"), "kernel must be one of"),
])
def test_bad_kernel_arguments_name_the_argument(bad, match):
    x, y = _points()
    with pytest.raises(ValueError, match=match):
        ik.mmd(x, y, **bad)


def test_polynomial_overflow_in_float32_is_a_clear_error():
    x, y = _points(dtype=torch.float32)
    with pytest.raises(ValueError, match="beyond the range"):
        ik.mmd(x * 1e4, y * 1e4, kernel=Polynomial(16, 1.0, 1.0))
    assert torch.isfinite(ik.mmd((x * 1e4).double(), (y * 1e4).double(), kernel=Polynomial(16, 1.0, 1.0),
                                 backend="torch"))


# --------------------------------------------------------------------------- differentiable bandwidths

@pytest.mark.parametrize("kernel", ["rbf", "imq", "laplacian"])
def test_bandwidth_gradcheck(kernel):
    x, y = _points(8, 7, 3)
    x.requires_grad_(True)
    s1 = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    s3 = torch.tensor([0.4, 1.0, 2.5], dtype=torch.float64, requires_grad=True)
    for est in ("biased", "unbiased"):
        assert gradcheck(lambda x, s: ik.mmd(x, y, kernel=kernel, sigma=s, estimator=est, backend="torch"), (x, s1))
        assert gradcheck(lambda x, s: ik.mmd(x, y, kernel=kernel, sigma=s, estimator=est, backend="torch"), (x, s3))
    v = torch.randn(7, 2, dtype=torch.float64)
    assert gradcheck(lambda x, s: ik.kernel_sum(x, y, v, kernel=kernel, sigma=s, backend="torch"), (x, s3))
    y8 = y[:7]
    assert gradcheck(lambda x, s: ik.mmd_power(x[:7], y8, kernel=kernel, sigma=s, backend="torch").criterion, (x, s3))
    if kernel == "rbf":
        assert gradcheck(lambda x, s: ik.rbf_gram(x, y, sigma=s, backend="torch"), (x, s3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bandwidth_gradient_on_every_backend(backend):
    x, y = _points(12, 10, 4)
    for kernel in ("rbf", "laplacian"):
        s = torch.tensor([0.6, 1.7], dtype=torch.float64, requires_grad=True)
        (got,) = torch.autograd.grad(ik.mmd(x, y, kernel=kernel, sigma=s, backend=backend), s)
        so = s.detach().clone().requires_grad_(True)
        (want,) = torch.autograd.grad(oracle.mmd(x, y, so, kernel), so)
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_learnable_bandwidth_in_mmdloss():
    """MMDLoss(sigma=nn.Parameter): gradient ascent on MMD^2 moves sigma to the maximiser found on a grid."""
    x, y = _points(40, 40, 2)
    loss = ik.MMDLoss(sigma=torch.nn.Parameter(torch.tensor(0.2, dtype=torch.float64)), backend="torch")
    assert [p is loss.sigma for p in loss.parameters()] == [True]
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        (-loss(x, y)).backward()
        opt.step()
    grid = torch.linspace(0.1, 5.0, 491, dtype=torch.float64)
    best = grid[int(torch.stack([oracle.mmd(x, y, [float(s)]) for s in grid]).argmax())]
    assert loss.sigma.item() == pytest.approx(best.item(), abs=0.05)


# --------------------------------------------------------------------------------------------- KID

def _poly_mmd(a, b, degree=3, gamma=None, coef=1.0):
    """torchmetrics' poly_mmd (unbiased, equal or unequal sizes), transcribed as a second oracle."""
    g = 1.0 / a.shape[1] if gamma is None else gamma
    k11, k22, k12 = ((p @ q.T * g + coef) ** degree for p, q in ((a, a), (b, b), (a, b)))
    n, m = a.shape[0], b.shape[0]
    return ((k11.sum() - k11.diag().sum()) / (n * (n - 1)) + (k22.sum() - k22.diag().sum()) / (m * (m - 1))
            - 2 * k12.sum() / (n * m))


def _features(n, m, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=torch.float64), 1.1 * torch.rand(m, d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kid_exact_equals_the_full_formula(backend):
    x, y = _features(150, 130)
    r = ik.kid(x, y, backend=backend, block_size=40)  # tiles, row sums from both sides of each pair
    one = ik.kid(x, y, backend=backend)  # everything fits: one symmetric sweep
    assert r.method == "exact"
    assert r.value == pytest.approx(_poly_mmd(x, y).item(), rel=1e-10)
    assert one.value == pytest.approx(r.value, rel=1e-12) and one.std == pytest.approx(r.std, rel=1e-10)
    r32 = ik.kid(x.float(), y.float(), backend=backend)
    assert r32.value == pytest.approx(_poly_mmd(x, y).item(), rel=1e-4)


def test_kid_from_memory_mapped_files_and_chunks(tmp_path):
    x, y = _features(90, 70, 8, seed=4)
    np.save(tmp_path / "x.npy", x.numpy())
    xm = np.load(tmp_path / "x.npy", mmap_mode="r")
    chunks = [y[:33], y[33:]]
    r = ik.kid(xm, chunks, gamma=0.5, coef=0.25, degree=2, block_size=32)
    assert r.value == pytest.approx(_poly_mmd(x, y, 2, 0.5, 0.25).item(), rel=1e-10)


def test_kid_standard_error_tracks_the_spread_over_draws():
    """The standard error against the empirical standard deviation of KID over 100 independent draws
    (the quantity it estimates): within a factor of 1.5 either way, fixed before the run."""
    values = [_poly_mmd(*_features(200, 180, 8, seed=s)).item() for s in range(1, 101)]
    spread = float(np.std(values, ddof=1))
    se = ik.kid(*_features(200, 180, 8, seed=0), backend="torch").std
    assert spread / 1.5 < se < spread * 1.5, (se, spread)


def test_kid_subsets_reproduces_torchmetrics_draws():
    x, y = _features(60, 50, 8)
    r = ik.kid(x, y, subsets=7, subset_size=20, seed=3, backend="torch")
    torch.manual_seed(3)  # torchmetrics draws from the global generator: x's randperm, then y's
    vals = []
    for _ in range(7):
        px = torch.randperm(60)[:20]
        py = torch.randperm(50)[:20]
        vals.append(_poly_mmd(x[px], y[py]).item())
    assert r.method == "subsets"
    assert r.value == pytest.approx(float(np.mean(vals)), rel=1e-10)
    assert r.std == pytest.approx(float(np.std(vals)), rel=1e-9)  # torchmetrics: std(unbiased=False)
    with pytest.raises(ValueError, match="subset_size"):
        ik.kid(x, y, subsets=3, subset_size=100)


def test_kid_metric_streams_and_matches_kid(tmp_path):
    x, y = _features(80, 60, 8, seed=5)
    metric = ik.metrics.KID(spill_bytes=2000, spill_dir=str(tmp_path))
    for i in range(0, 80, 25):
        metric.update(real=x[i:i + 25])
    metric.update(fake=y)
    value, std = metric.compute()
    ref = ik.kid(x, y)
    assert value.item() == pytest.approx(ref.value, rel=1e-12) and std.item() == pytest.approx(ref.std, rel=1e-9)
    assert metric.real.path is not None  # spilled to a file past 2000 bytes
    metric.reset()
    with pytest.raises(ValueError, match="no real features"):
        metric.compute()


def test_mmd_metric_with_a_kernel_without_bandwidth():
    x, y = _features(30, 20, 4)
    metric = ik.metrics.MMD(kernel="energy")
    metric.update(real=x, fake=y)
    assert metric.compute().item() == pytest.approx(oracle.mmd(x, y, [], "energy", unbiased=True).item(), rel=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("kernel,sigma,okernel", FAMILY, ids=IDS)
def test_new_kernels_on_gpu_backends(kernel, sigma, okernel):
    """Every CUDA backend (triton, cuda) against the float64 oracle: value and gradient, float64 and float32."""
    x, y = _points(301, 257, 7, seed=11)
    want = oracle.mmd(x, y, _sigmas(sigma), okernel, unbiased=True)
    xo = x.clone().requires_grad_(True)
    (wgrad,) = torch.autograd.grad(oracle.mmd(xo, y, _sigmas(sigma), okernel, unbiased=True), xo)
    for backend in backends_for("cuda"):
        for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
            xc = x.to("cuda", dtype).requires_grad_(True)
            got = ik.mmd(xc, y.to("cuda", dtype), kernel=kernel, sigma=sigma, estimator="unbiased", backend=backend)
            (g,) = torch.autograd.grad(got, xc)
            scale = oracle.kernel_matrix(x, y, _sigmas(sigma), okernel).abs().max().item()
            assert abs(got.item() - want.item()) <= rtol * max(scale, 1.0), (backend, dtype)
            torch.testing.assert_close(g.double().cpu(), wgrad, rtol=rtol, atol=rtol * max(scale, 1.0) / x.shape[0])
