"""Streaming two-sample metrics in the torchmetrics style: update(real=..., fake=...) / compute() /
reset(). Features are kept on the host (a memory-mapped temporary file past `spill_bytes`), so a loop
over a data set never holds them on the device; compute() is the exact full-data value through
ik.mmd_full / ik.kid (streamed tiles, never the N x M matrix). Under torch.distributed every rank's features
count once: compute() gathers them, and the ranks share the tile pairs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.types import Device

from infovae_kernels import _checks, kernels
from infovae_kernels.scale import kid, mmd_full
from infovae_kernels.scale.api import Memory
from infovae_kernels.scale.planning import parse_memory

_NP = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


class FeatureStore:
    """Rows of features appended in chunks: host tensors until `spill_bytes`, then a temporary file
    read back as a memory map. `array()` is an (n, d) tensor or np.memmap; `close()` frees the file."""

    def __init__(self, name: str, spill_bytes: int, spill_dir: str | None = None) -> None:
        self.name, self.spill_bytes, self.spill_dir = name, spill_bytes, spill_dir
        self.chunks: list[Tensor] = []
        self.n, self.d, self.dtype = 0, None, None
        self.file = None
        self.path: str | None = None

    def append(self, t: Tensor) -> None:
        _checks.floating(t, self.name)
        if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{self.name} must be a non-empty 2-D (n, features) tensor, got shape {tuple(t.shape)}")
        if self.d is not None and (t.shape[1] != self.d or t.dtype != self.dtype):
            raise ValueError(f"{self.name}: got {t.shape[1]} features of {t.dtype}, earlier updates had "
                             f"{self.d} of {self.dtype}")
        _checks.finite(t, self.name)
        self.d, self.dtype = t.shape[1], t.dtype
        t = t.detach().to("cpu", copy=True)
        self.n += t.shape[0]
        if self.file is None and self.n * self.d * t.element_size() > self.spill_bytes:
            fd, self.path = tempfile.mkstemp(prefix="infovae_features_", suffix=".bin", dir=self.spill_dir)
            self.file = os.fdopen(fd, "wb")
            for c in self.chunks:
                self.file.write(c.numpy().tobytes())
            self.chunks = []
        if self.file is not None:
            self.file.write(t.numpy().tobytes())
        else:
            self.chunks.append(t)

    def array(self) -> Tensor | np.memmap:
        if self.n == 0:
            raise ValueError(f"no {self.name} features: call update({self.name}=...) before compute()")
        if self.file is None:
            return torch.cat(self.chunks)
        self.file.flush()
        return np.memmap(self.path, dtype=_NP[self.dtype], mode="r", shape=(self.n, self.d))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            os.unlink(self.path)
        self.__init__(self.name, self.spill_bytes, self.spill_dir)


def _gather(local, group) -> object:
    """Every rank's rows, in rank order, on every rank (host tensors)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return local
    t = torch.as_tensor(np.asarray(local)) if not isinstance(local, Tensor) else local
    on_cuda = dist.get_backend(group) == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if on_cuda else torch.device("cpu")
    world = dist.get_world_size(group)
    n = torch.tensor([t.shape[0]], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), t.shape[1]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:s].cpu() for p, s in zip(parts, sizes)])


class _FeatureMetric:
    """update / reset and the feature stores every metric here shares; compute() is the metric's own."""

    def __init__(self, spill_bytes: Memory, spill_dir: str | None, group: ProcessGroup | None) -> None:
        self.group = group
        spill = parse_memory(spill_bytes)
        self.real = FeatureStore("real", spill, spill_dir)
        self.fake = FeatureStore("fake", spill, spill_dir)

    def update(self, real: Tensor | None = None, fake: Tensor | None = None) -> None:
        if real is None and fake is None:
            raise ValueError("update() needs real=..., fake=... or both")
        if real is not None:
            self.real.append(real)
        if fake is not None:
            self.fake.append(fake)

    def _sets(self):
        return _gather(self.real.array(), self.group), _gather(self.fake.array(), self.group)

    def reset(self) -> None:
        self.real.close()
        self.fake.close()

    def __del__(self):
        try:
            self.reset()
        except Exception:
            pass


class MMD(_FeatureMetric):
    """Exact squared MMD between all `real` and all `fake` features seen since the last reset().

        metric = ik.metrics.MMD(sigma="median")
        for batch in loader:
            metric.update(real=features(batch), fake=features(generator(batch)))
        value = metric.compute()          # float64 0-dim tensor

    Keyword arguments as ik.mmd_full (kernel, sigma, estimator, backend, device, max_memory; the default
    sigma "median" stands for None with a kernel that has no bandwidth); features beyond `spill_bytes`
    (per set, default "1GiB") go to a temporary file in `spill_dir`. With torch.distributed initialised,
    compute() is a collective: every rank must call it.
    """

    def __init__(self, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = "median",
                 estimator: str = "unbiased", backend: str = "auto", device: Device = None,
                 max_memory: Memory = "1GiB", spill_bytes: Memory = "1GiB", spill_dir: str | None = None,
                 group: ProcessGroup | None = None) -> None:
        kernel = _checks.kernel(kernel)
        if isinstance(sigma, str) and sigma == "median" and not kernels.has_bandwidth(kernel):
            sigma = None
        _checks.estimator(estimator)
        self.kwargs: dict[str, Any] = dict(kernel=kernel, sigma=sigma, estimator=estimator, backend=backend,
                                           device=device, max_memory=max_memory)
        super().__init__(spill_bytes, spill_dir, group)

    def compute(self) -> Tensor:
        real, fake = self._sets()
        return torch.tensor(mmd_full(real, fake, group=self.group, progress=False, **self.kwargs),
                            dtype=torch.float64)


class KID(_FeatureMetric):
    """Exact Kernel Inception Distance between all `real` and all `fake` features since the last reset(),
    as torchmetrics' KernelInceptionDistance is used (there: the mean over random subsets):

        metric = ik.metrics.KID()
        for batch in loader:
            metric.update(real=inception(batch), fake=inception(generator(batch)))
        kid_value, kid_std = metric.compute()   # float64 0-dim tensors: ik.kid's value and standard error

    Keyword arguments as ik.kid (degree, gamma, coef, subsets, subset_size, seed, backend, device,
    max_memory); spilling and torch.distributed as ik.metrics.MMD.
    """

    def __init__(self, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0,
                 subsets: int | None = None, subset_size: int = 1000, seed: int = 0, backend: str = "auto",
                 device: Device = None, max_memory: Memory = "1GiB", spill_bytes: Memory = "1GiB",
                 spill_dir: str | None = None, group: ProcessGroup | None = None) -> None:
        _checks.kernel(kernels.Polynomial(degree, gamma, coef))
        self.kwargs: dict[str, Any] = dict(degree=degree, gamma=gamma, coef=coef, subsets=subsets,
                                           subset_size=subset_size, seed=seed, backend=backend, device=device,
                                           max_memory=max_memory)
        super().__init__(spill_bytes, spill_dir, group)

    def compute(self) -> tuple[Tensor, Tensor]:
        real, fake = self._sets()
        result = kid(real, fake, group=self.group, progress=False, **self.kwargs)
        return torch.tensor(result.value, dtype=torch.float64), torch.tensor(result.std, dtype=torch.float64)
