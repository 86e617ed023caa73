"""Numerics that hold at any scale: each case here was a wrong number, a NaN or a raw error once.

Reference values are the float64 oracle (tests/oracle.py) on the same points."""

import math

import pytest
import torch

import infovae_kernels as ik
import oracle
from conftest import DEVICE_BACKENDS

PAIRS = sorted(set(DEVICE_BACKENDS))


def _pair(n=300, d=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n - 37, d, generator=g, dtype=torch.float64) + 0.3
    return x.to(dtype), y.to(dtype)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_bandwidth_far_below_the_data_spread(device, backend):
    """|x|^2 + |y|^2 - 2 x.y loses distances of 0.01 between points at 100: differences must be used."""
    g = torch.Generator().manual_seed(0)
    x = 100 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    y = x + 0.01 * torch.randn(500, 3, generator=g, dtype=torch.float64)
    want = float(oracle.mmd(x, y, [0.01]))
    got = float(ik.mmd(x.float().to(device), y.float().to(device), sigma=0.01, backend=backend))
    assert got == pytest.approx(want, rel=1e-3)
    v = torch.randn(500, generator=g, dtype=torch.float64)
    want_s = oracle.kernel_sum(x, y, v, [0.01])
    got_s = ik.kernel_sum(x.float().to(device), y.float().to(device), v.float().to(device), sigma=0.01,
                          backend=backend).double().cpu()
    assert (got_s - want_s).abs().max() <= 1e-3 * want_s.abs().max()


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("factor", [1e-20, 1e20])
def test_data_scale_does_not_matter(device, backend, factor):
    """MMD with sigma scaled like the data is scale-free: x 1e-20 and x 1e20 give the unit-scale value."""
    x, y = _pair()
    want = float(oracle.mmd(x.double(), y.double(), [0.8, 2.0]))
    got = ik.mmd((x * factor).to(device), (y * factor).to(device), sigma=[0.8 * factor, 2.0 * factor], backend=backend)
    assert float(got) == pytest.approx(want, rel=1e-4)
    gm = ik.mmd((x * factor).to(device), (y * factor).to(device), sigma="median", backend=backend)
    g1 = ik.mmd(x.to(device), y.to(device), sigma="median", backend=backend)
    assert float(gm) == pytest.approx(float(g1), rel=1e-4)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_bandwidths_give_the_limits(device, backend, dtype):
    """sigma -> 0: only the diagonal counts (biased MMD^2 = 1/N + 1/M); sigma -> inf: every k -> 1 (rbf and
    imq), so MMD^2 -> 0. Finite, never NaN, no raw OverflowError / ZeroDivisionError. (Small n: the limits
    do not depend on it, and the Triton interpreter pays per tile.)"""
    x, y = _pair(n=100, dtype=dtype)
    n, m = x.shape[0], y.shape[0]
    x, y = x.to(device), y.to(device)
    for kernel in ("rbf", "imq"):
        for tiny in (1e-20, 1e-300):
            got = float(ik.mmd(x, y, kernel=kernel, sigma=tiny, backend=backend))
            assert got == pytest.approx(1 / n + 1 / m, rel=1e-5), (kernel, tiny)
        for huge in (1e30, 1e300):
            got = float(ik.mmd(x, y, kernel=kernel, sigma=huge, backend=backend))
            assert math.isfinite(got) and abs(got) < 1e-6, (kernel, huge)
    xg = x.clone().requires_grad_(True)
    for sigma in (1e-20, 1e30):
        (g,) = torch.autograd.grad(ik.mmd(xg, y, sigma=sigma, backend=backend), xg)
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("device,backend", PAIRS)
def test_float16_weights_whose_sum_overflows(device, backend):
    x, y = _pair(n=200)
    w = torch.full((200,), 6e4, dtype=torch.float16)
    w[::3] = 3e4
    want = float(oracle.mmd(x.double(), y.double(), [1.0], wx=w.double()))
    got = ik.mmd(x.half().to(device), y.half().to(device), weights_x=w.to(device), backend=backend)
    assert float(got) == pytest.approx(want, rel=1e-2)  # float16 points: 1e-3 relative rounding
    full = ik.mmd_full(x.half(), y.half(), weights_x=w, backend=backend, device=device)
    assert full == pytest.approx(want, rel=1e-2)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_more_than_16_sigmas_is_a_clear_error_everywhere(device, backend):
    x, y = _pair(n=50)
    with pytest.raises(ValueError, match="at most 16"):
        ik.mmd(x.to(device), y.to(device), sigma=[1.0 + i for i in range(17)], backend=backend)
    ik.mmd(x.to(device), y.to(device), sigma=[1.0 + i for i in range(16)], backend=backend)


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_value_is_bitwise_the_same_with_and_without_grad(device, backend, estimator):
    x, y = _pair(n=257, d=8)
    x, y = x.to(device), y.to(device)
    plain = ik.mmd(x, y, sigma=[1.0, 2.5], estimator=estimator, backend=backend)
    xg, yg = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    trained = ik.mmd(xg, yg, sigma=[1.0, 2.5], estimator=estimator, backend=backend)
    assert torch.equal(plain, trained.detach())


@pytest.mark.parametrize("device,backend", PAIRS)
def test_self_distance_is_exactly_zero(device, backend):
    """A point paired with itself gives k = 1 exactly (rbf): the Gram diagonal of awkward data."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(37, 19, generator=g) * 1e3 + 5e3).to(device)
    k = ik.rbf_gram(x, sigma=0.5, backend=backend)
    assert torch.equal(torch.diagonal(k).cpu(), torch.ones(37))


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_gradient_of_one_set_alone(device, backend, estimator):
    """Only x needs grad (the MMD-VAE case: a's y rows are 0 and the engines skip them): the same
    gradient as when both sets need one, and the float64 oracle's."""
    x, y = _pair(n=97, d=5, dtype=torch.float64)
    x, y = x.to(device), y.to(device)
    xa, ya = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    (gx_both, _) = torch.autograd.grad(ik.mmd(xa, ya, sigma=1.1, estimator=estimator, backend=backend), (xa, ya))
    xb = x.clone().requires_grad_(True)
    (gx_alone,) = torch.autograd.grad(ik.mmd(xb, y, sigma=1.1, estimator=estimator, backend=backend), (xb,))
    xo = x.cpu().clone().requires_grad_(True)
    (gx_oracle,) = torch.autograd.grad(oracle.mmd(xo, y.cpu(), [1.1], unbiased=estimator == "unbiased"), (xo,))
    torch.testing.assert_close(gx_alone, gx_both, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(gx_alone.cpu(), gx_oracle, rtol=1e-9, atol=1e-12)
