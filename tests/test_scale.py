"""Full-dataset MMD (infovae_kernels.scale): streamed tiles against ik.mmd, memory-mapped and chunked
inputs, torch.distributed (gloo, spawned processes) against one process, the one-pass permutation test."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import infovae_kernels as ik
from infovae_kernels import backends
from infovae_kernels.scale import mmd_full, mmd_test, parse_memory
from infovae_kernels.scale.api import _labels


def _cpu_backend_available() -> bool:
    try:
        return ik.backends.available()["cpu"].available
    except Exception:  # a half-installed optional backend must not hide the cpu one
        return backends._status("cpu").available


BACKENDS = ["torch"] + (["cpu"] if _cpu_backend_available() else [])


def _data(n=37, m=29, d=5, shift=0.3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + shift
    return x.to(dtype), y.to(dtype)


# ------------------------------------------------------------------------------- mmd_full == ik.mmd

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel", ["rbf", "imq"])
@pytest.mark.parametrize("sigma", [1.0, [0.5, 2.0], "median"])
def test_streamed_equals_mmd_float64(backend, estimator, kernel, sigma):
    x, y = _data()
    ref = float(ik.mmd(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend))
    for kw in (dict(block_size=7), dict(block_size=1), dict(max_memory=4096), dict()):
        got = mmd_full(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend, **kw)
        assert got == pytest.approx(ref, abs=1e-13, rel=1e-12), kw


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_close_to_mmd(backend):
    x, y = _data(n=200, m=131, d=7, dtype=torch.float32)
    ref = float(ik.mmd(x.double(), y.double(), backend="torch"))
    got = mmd_full(x, y, backend=backend, block_size=50)
    assert got == pytest.approx(ref, abs=2e-6)


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_weights(estimator, tmp_path):
    x, y = _data()
    g = torch.Generator().manual_seed(3)
    wx, wy = torch.rand(37, generator=g, dtype=torch.float64), torch.rand(29, generator=g, dtype=torch.float64)
    ref = float(ik.mmd(x, y, weights_x=wx, weights_y=wy, estimator=estimator, backend="torch"))
    np.save(tmp_path / "wy.npy", wy.numpy())
    got = mmd_full(x, y, weights_x=wx, weights_y=np.load(tmp_path / "wy.npy", mmap_mode="r"),
                   estimator=estimator, backend="torch", block_size=6)
    assert got == pytest.approx(ref, abs=1e-14, rel=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        mmd_full(x, y, weights_x=-wx, backend="torch")
    with pytest.raises(ValueError, match="length 37"):
        mmd_full(x, y, weights_x=wy, backend="torch")


def test_memmap_and_chunks(tmp_path):
    x, y = _data(n=53, m=41, d=3)
    ref = float(ik.mmd(x, y, sigma=[0.7, 1.5], estimator="unbiased", backend="torch"))
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    xm, ym = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    kw = dict(sigma=[0.7, 1.5], estimator="unbiased", backend="torch", block_size=10)
    assert mmd_full(xm, ym, **kw) == pytest.approx(ref, abs=1e-14, rel=1e-12)
    # a list of uneven chunks (re-iterable) and a callable returning a fresh generator
    chunks = [x[:3], x[3:20].numpy(), x[20:]]

    def fresh():
        return (y[i:i + 9] for i in range(0, 41, 9))

    assert mmd_full(chunks, fresh, **kw) == pytest.approx(ref, abs=1e-14, rel=1e-12)
    assert mmd_full(x, fresh, sigma="median", backend="torch", block_size=8) == pytest.approx(
        float(ik.mmd(x, y, sigma="median", backend="torch")), abs=1e-14, rel=1e-12)
    with pytest.raises(TypeError, match="one-shot iterator"):
        mmd_full(x, fresh(), backend="torch")
    with pytest.raises(TypeError, match="is a path"):
        mmd_full(str(tmp_path / "x.npy"), y, backend="torch")


def test_median_subsample_matches_mmd():
    # 2500 pooled points > 2048: both draw the same seeded subsample
    x, y = _data(n=1400, m=1100, d=4)
    ref = float(ik.mmd(x, y, sigma="median", backend="torch"))
    assert mmd_full(x, y, sigma="median", backend="torch", block_size=900) == pytest.approx(ref, rel=1e-12)
    exact = mmd_full(x[:300], y[:200], sigma="median", median_points=None, backend="torch")
    assert exact == pytest.approx(float(ik.mmd(x[:300], y[:200], sigma="median", backend="torch")), rel=1e-12)


def test_errors():
    x, y = _data()
    bad = x.clone()
    bad[13, 2] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN or Inf at row 13"):
        mmd_full(bad, y, backend="torch")
    with pytest.raises(ValueError, match="row 23"):
        mmd_full(x, [y[:20], bad[10:15]], backend="torch")  # row 20 + 3 of y
    with pytest.raises(ValueError, match="features"):
        mmd_full(x, y[:, :3], backend="torch")
    with pytest.raises(TypeError, match="float32"):
        mmd_full(x, y.float(), backend="torch")
    with pytest.raises(ValueError, match="estimator"):
        mmd_full(x, y, estimator="nope")
    with pytest.raises(ValueError, match="2 points"):
        mmd_full(x[:1], y, estimator="unbiased", backend="torch")
    with pytest.raises(ValueError, match="block_size"):
        mmd_full(x, y, block_size=0)
    assert parse_memory("2GB") == 2 * 10**9 and parse_memory("1GiB") == 2**30 and parse_memory(4096) == 4096
    with pytest.raises(ValueError, match="memory size"):
        parse_memory("lots")


# ------------------------------------------------------------------------------- permutation test

@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel,sigma", [("rbf", 1.0), ("imq", [0.5, 2.0])])
def test_one_pass_equals_loop(estimator, kernel, sigma):
    x, y = _data(n=23, m=17)
    perms = 15
    res = mmd_test(x, y, permutations=perms, seed=5, kernel=kernel, sigma=sigma, estimator=estimator,
                   backend="torch", block_size=6)
    lab = _labels(23, 17, perms, 5)
    z = torch.cat([x, y])
    loop = [float(ik.mmd(z[lab[:, p]], z[~lab[:, p]], kernel=kernel, sigma=sigma, estimator=estimator,
                         backend="torch")) for p in range(perms + 1)]
    assert res.statistic == pytest.approx(loop[0], abs=1e-14)
    torch.testing.assert_close(res.permutation_statistics, torch.tensor(loop[1:], dtype=torch.float64),
                               atol=1e-14, rtol=0)
    assert res.p_value == (1 + sum(v >= loop[0] - 1e-12 for v in loop[1:])) / (1 + perms)
    again = mmd_test(x, y, permutations=perms, seed=5, kernel=kernel, sigma=sigma, estimator=estimator,
                     backend="torch")  # one block: same numbers
    torch.testing.assert_close(again.permutation_statistics, res.permutation_statistics, atol=1e-14, rtol=0)
    other = mmd_test(x, y, permutations=perms, seed=6, backend="torch")
    assert not torch.equal(other.permutation_statistics, res.permutation_statistics)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pvalues_uniform_under_null_small_under_shift(backend):
    from scipy import stats

    pvals = []
    for seed in range(40):
        g = torch.Generator().manual_seed(1000 + seed)
        x, y = torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g)
        pvals.append(mmd_test(x, y, permutations=49, seed=seed, backend=backend).p_value)
    assert stats.kstest(pvals, "uniform").pvalue > 1e-3, pvals
    g = torch.Generator().manual_seed(7)
    x, y = torch.randn(30, 2, generator=g), torch.randn(30, 2, generator=g) + 1.5
    assert mmd_test(x, y, permutations=99, seed=0, backend=backend).p_value <= 0.02


# ----------------------------------------------------------------------------- torch.distributed

def _dist_worker(rank, world, init_file, xpath, ypath, out_dir, block):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = np.load(xpath, mmap_mode="r"), np.load(ypath, mmap_mode="r")
        v = mmd_full(x, y, sigma="median", estimator="unbiased", backend="torch", block_size=block)
        r = mmd_test(x, y, permutations=11, seed=3, backend="torch", block_size=block)
        np.save(os.path.join(out_dir, f"rank{rank}.npy"),
                np.array([v, r.statistic, r.p_value] + r.permutation_statistics.tolist()))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world,block", [(2, 5), (3, 6)])  # 45 and 28 tile pairs: not divisible by world
def test_distributed_equals_one_process(world, block, tmp_path):
    x, y = _data(n=23, m=17, d=3)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", y.numpy())
    xm, ym = np.load(tmp_path / "x.npy", mmap_mode="r"), np.load(tmp_path / "y.npy", mmap_mode="r")
    v = mmd_full(xm, ym, sigma="median", estimator="unbiased", backend="torch", block_size=block)
    r = mmd_test(xm, ym, permutations=11, seed=3, backend="torch", block_size=block)
    single = np.array([v, r.statistic, r.p_value] + r.permutation_statistics.tolist())
    mp.spawn(_dist_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "x.npy"),
                                 str(tmp_path / "y.npy"), str(tmp_path), block), nprocs=world, join=True)
    for rank in range(world):
        got = np.load(tmp_path / f"rank{rank}.npy")
        np.testing.assert_array_equal(got, single)  # bitwise
