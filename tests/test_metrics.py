"""Streaming metrics: update/compute/reset equal the one-shot full-data value, spill to a memory-mapped
file past the size limit, and count every rank's features once under torch.distributed."""

import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import infovae_kernels as ik
from infovae_kernels import metrics


def _data(n=130, m=97, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(m, d, generator=g) + 0.3


@pytest.mark.parametrize("spill", ["1GiB", 600])
def test_batches_give_the_full_data_value(spill, tmp_path):
    x, y = _data()
    m = metrics.MMD(sigma=[0.7, 2.0], spill_bytes=spill, spill_dir=str(tmp_path))
    for xb in x.split(40):
        m.update(real=xb)
    for yb in y.split(40):
        m.update(fake=yb)
    spilled = os.listdir(tmp_path)
    assert (len(spilled) == 2) == (spill == 600)  # one file per set once past the limit
    want = float(ik.mmd(x.double(), y.double(), sigma=[0.7, 2.0], estimator="unbiased"))
    assert float(m.compute()) == pytest.approx(want, rel=1e-5)
    m.reset()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="no real features"):
        m.compute()


def test_bad_updates_are_named():
    m = metrics.MMD()
    with pytest.raises(ValueError, match="real=..., fake=..."):
        m.update()
    m.update(real=torch.randn(5, 3))
    with pytest.raises(ValueError, match="real: got 4 features"):
        m.update(real=torch.randn(5, 4))
    with pytest.raises(ValueError, match="fake contains NaN"):
        m.update(fake=torch.full((2, 3), float("nan")))
    with pytest.raises(TypeError, match="real must have a floating dtype"):
        m.update(real=torch.ones(2, 3, dtype=torch.int64))


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, y = _data()
        m = metrics.MMD(sigma=1.3, backend="torch")
        for xb in x.tensor_split(world)[rank].split(17):  # each rank sees its own shard
            m.update(real=xb)
        m.update(fake=y.tensor_split(world)[rank])
        np.save(os.path.join(out_dir, f"rank{rank}.npy"), m.compute().numpy())
    finally:
        dist.destroy_process_group()


def test_distributed_counts_every_rank_once(tmp_path):
    x, y = _data()
    want = float(ik.mmd(x.double(), y.double(), sigma=1.3, estimator="unbiased", backend="torch"))
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert float(np.load(tmp_path / f"rank{rank}.npy")) == pytest.approx(want, rel=1e-6)
