"""Hypothesis property tests of the MMD algebra, on every CPU backend here."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import infovae_kernels as ik
from conftest import backends_for

BACKENDS = backends_for("cpu")
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def samples(draw):
    n = draw(st.integers(2, 40))
    m = draw(st.integers(2, 40))
    d = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    shift = draw(st.floats(-3.0, 3.0))
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    sigma = draw(st.sampled_from([0.5, 1.0, [0.3, 2.0]]))
    kernel = draw(st.sampled_from(["rbf", "imq"]))
    estimator = draw(st.sampled_from(["biased", "unbiased"]))
    return x, y, dict(sigma=sigma, kernel=kernel, estimator=estimator), g


def _close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(a)), abs(float(b)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@SETTINGS
@given(data=samples())
def test_mmd_properties(backend, dtype, data):
    x, y, kw, g = data
    if dtype == torch.float64 and backend == "triton":
        dtype = torch.float32  # the Triton kernels compute in float32
    x, y = x.to(dtype), y.to(dtype)
    value = ik.mmd(x, y, backend=backend, **kw)
    assert _close(value, ik.mmd(y, x, backend=backend, **kw), dtype), "symmetry"
    shift = torch.randn(1, x.shape[1], generator=g, dtype=torch.float64).to(dtype) * 5
    assert _close(value, ik.mmd(x + shift, y + shift, backend=backend, **kw), dtype), "translation"
    px, py = torch.randperm(x.shape[0], generator=g), torch.randperm(y.shape[0], generator=g)
    assert _close(value, ik.mmd(x[px], y[py], backend=backend, **kw), dtype), "row permutation"
    assert _close(value, ik.mmd(x, y, backend="torch", **kw), dtype), "agreement with the reference"
    if kw["estimator"] == "biased":
        assert float(value) >= -1e-6
        assert abs(float(ik.mmd(x, x, backend=backend, **kw))) <= 1e-5, "MMD(x, x) = 0"


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=samples())
def test_gram_and_kernel_sum_properties(backend, data):
    x, y, kw, g = data
    x, y = x.float(), y.float()
    k = ik.rbf_gram(x, y, sigma=kw["sigma"], backend=backend)
    torch.testing.assert_close(k.T, ik.rbf_gram(y, x, sigma=kw["sigma"], backend=backend), atol=1e-6, rtol=1e-5)
    v = torch.randn(y.shape[0], generator=g)
    torch.testing.assert_close(ik.kernel_sum(x, y, v, sigma=kw["sigma"], backend=backend), k @ v,
                               atol=1e-5, rtol=1e-4)
