"""mmd_power (MMD_u^2 and its H1 variance from fused row sums) against the dense formulas of Liu et al.
(2020), its gradient, and mmd_test(sigma="optimize") on the Blobs problem where the median fails."""

import pytest
import torch

import infovae_kernels as ik
import oracle
from conftest import DEVICE_BACKENDS

PAIRS = sorted(set(DEVICE_BACKENDS))


def _dense(x, y, sigmas, kernel):
    kx, ky, kxy = (oracle.kernel_matrix(a, b, sigmas, kernel) for a, b in ((x, x), (y, y), (x, y)))
    n = x.shape[0]
    hh = kx + ky - kxy - kxy.T
    mmd2 = (kx.sum() - kx.trace() + ky.sum() - ky.trace()) / (n * (n - 1)) - 2 * kxy.sum() / n**2
    h = hh.sum(1)
    return mmd2, 4 * (h @ h) / n**3 - 4 * hh.sum() ** 2 / n**4


def blobs(n, rho, gen):
    """Gretton et al. 2012 / Liu et al. 2020: a 3 x 3 grid of unit Gaussians 10 apart; rho != 0 skews them."""
    centre = torch.randint(0, 3, (n, 2), generator=gen, dtype=torch.float64) * 10
    e = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    e = torch.stack([e[:, 0], rho * e[:, 0] + (1 - rho**2) ** 0.5 * e[:, 1]], 1)
    return (centre + e).float()


@pytest.mark.parametrize("device,backend", PAIRS)
@pytest.mark.parametrize("kernel,sigmas", [("rbf", [1.3]), ("imq", [0.6, 2.0])])
@pytest.mark.parametrize("n", [2, 37])
def test_mmd_power_matches_dense(device, backend, kernel, sigmas, n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randn(n, 3, generator=g, dtype=torch.float64) + 0.4
    want_m, want_v = _dense(x, y, sigmas, kernel)
    got = ik.mmd_power(x.float().to(device), y.float().to(device), kernel=kernel, sigma=sigmas, backend=backend)
    assert float(got.mmd2) == pytest.approx(float(want_m), abs=1e-6)
    assert float(got.variance) == pytest.approx(float(want_v), rel=1e-4, abs=1e-7)
    assert float(got.criterion) == pytest.approx(float(want_m / torch.sqrt(want_v.clamp_min(0) + 1e-8)), rel=1e-3)


@pytest.mark.parametrize("backend", [b for d, b in PAIRS if d == "cpu" and b in ("cpu", "torch")])
def test_mmd_power_gradcheck(backend):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(15, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.randn(15, 3, generator=g, dtype=torch.float64) + 0.3).requires_grad_(True)
    for part in ("mmd2", "variance", "criterion"):
        assert torch.autograd.gradcheck(lambda a, b: getattr(ik.mmd_power(a, b, sigma=0.9, backend=backend), part),
                                        (x, y))


def test_mmd_power_needs_pairs():
    with pytest.raises(ValueError, match="paired samples"):
        ik.mmd_power(torch.randn(5, 2), torch.randn(6, 2))


@pytest.mark.slow
def test_optimized_bandwidth_finds_what_the_median_misses():
    """Blobs at n = 1000 per set: the median bandwidth (spread of the grid, ~10) cannot see the skewed
    unit blobs; the bandwidth chosen on held-out halves can (seeded, so the run is reproducible)."""
    gen = torch.Generator().manual_seed(0)
    x, y = blobs(1000, 0.0, gen), blobs(1000, 0.7, gen)
    report = {}
    optimized = ik.mmd_test(x, y, permutations=100, sigma="optimize", report=report)
    median = ik.mmd_test(x, y, permutations=100, sigma="median")
    assert optimized.p_value <= 0.05 < median.p_value
    assert report["optimized_sigma"] < 0.3 * report["optimize_grid"][16]  # far below the median
    same = ik.mmd_test(x, blobs(1000, 0.0, gen), permutations=100, sigma="optimize")
    assert same.p_value > 0.05


def test_optimize_needs_in_memory_data():
    with pytest.raises(TypeError, match="tensor or numpy array"):
        ik.mmd_test([torch.randn(10, 2)], torch.randn(10, 2), sigma="optimize")


def test_mmd_agg_detects_blobs_and_holds_its_level():
    """MMDAgg (no split, 9 bandwidths): Blobs with rho = 0.7 at n = 400 is rejected in at least 3 of 5
    trials; under the null (n = 150) at most 3 of 20 trials reject (expected 1 at level 0.05; P(>= 4) < 0.02)."""
    h1 = h0 = 0
    for t in range(20):
        gen = torch.Generator().manual_seed(500 + t)
        x, y = blobs(150, 0.0, gen), blobs(150, 0.0, gen)
        h0 += ik.mmd_agg(x, y, seed=t, permutations=(100, 100)).reject
    for t in range(5):
        gen = torch.Generator().manual_seed(700 + t)
        x, y = blobs(400, 0.0, gen), blobs(400, 0.7, gen)
        h1 += ik.mmd_agg(x, y, seed=t, permutations=(200, 200)).reject
    assert h0 <= 3
    assert h1 >= 3


def test_mmd_agg_collection_thresholds_and_errors():
    gen = torch.Generator().manual_seed(0)
    x, y = blobs(60, 0.0, gen), blobs(50, 0.0, gen) + 3.0
    r = ik.mmd_agg(x, y, permutations=(99, 99))
    med = float(ik.bandwidth.median_distance(torch.cat([x, y])))
    assert r.bandwidths == pytest.approx([med * 2.0**k for k in range(-4, 5)], rel=1e-6)
    assert r.reject and len(r.statistics) == len(r.thresholds) == 9 and 0 < r.u <= 9
    assert r.reject == any(s > t for s, t in zip(r.statistics, r.thresholds))
    one = ik.mmd_agg(x, y, bandwidths=[med], permutations=(99, 99))
    assert one.statistics[0] == pytest.approx(ik.mmd(x, y, sigma=med, estimator="unbiased").item(), rel=1e-5)
    for bad, match in ((dict(kernel="energy"), "bandwidth"), (dict(level=1.5), "level"),
                       (dict(permutations=(0, 10)), "permutations"), (dict(bandwidths=[-1.0]), "bandwidths")):
        with pytest.raises(ValueError, match=match):
            ik.mmd_agg(x, y, **bad)
