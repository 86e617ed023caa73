"""kid: the Kernel Inception Distance over whole feature sets, exact, with its standard error.

KID (Binkowski et al. 2018) is the unbiased squared MMD with the polynomial kernel
k(x, y) = (gamma x.y + coef)^degree, defaults gamma = 1/d, coef = 1, degree = 3 (torchmetrics' poly_mmd).
The usual implementations average it over 100 random subsets of 1,000 features because their dense
formula needs the N x M matrices; here the exact full-data value comes from the streamed tiles of
mmd_full (any size, memory-mapped, distributed), and its standard error from the same pass.

Standard error ("exact" mode): the first-order term of the two-sample U-statistic's variance,
    Var ~ 4 Var_i(a_i) / n + 4 Var_j(b_j) / m,
    a_i = sum_{i' != i} k(x_i, x_i') / (n - 1) - sum_j k(x_i, y_j) / m      (x rows)
    b_j = sum_{j' != j} k(y_j, y_j') / (m - 1) - sum_i k(x_i, y_j) / n      (y rows),
the sample variances of the estimated projections (Hoeffding). The row sums come from the same pass: when
the pooled features fit in one block of the memory budget (one process), a single symmetric quad_form
over them gives the three kernel sums and every row sum, each pair evaluated once; otherwise the tile
loop (an off-diagonal tile pair then costs two pair_reduce calls instead of one). The first-order term
vanishes when the two distributions are equal (a degenerate U-statistic, whose spread is O(1/n) and
comes from the second-order term): there this standard error understates the spread.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.types import Device

from infovae_kernels import _checks
from infovae_kernels.kernels import Polynomial
from infovae_kernels.scale.api import Memory, _info, _job, _setup, signed_value
from infovae_kernels.scale.planning import DEFAULT_MAX_MEMORY, block_rows, dist_info, parse_memory, plan_tiles, \
    progress_bar, run_tiles
from infovae_kernels.scale.sources import Data


class KIDResult(NamedTuple):
    """value: KID (unbiased MMD^2, polynomial kernel). std: for method "exact" the standard error of value
    (module docstring); for "subsets" the standard deviation of the subset values (torchmetrics' kid_std,
    the spread of one subset's estimate, not an error of their mean)."""

    value: float
    std: float
    method: str


def kid(x: Data, y: Data, *, degree: int = 3, gamma: float | None = None, coef: float = 1.0,
        subsets: int | None = None, subset_size: int = 1000, seed: int = 0, backend: str = "auto",
        device: Device = None, max_memory: Memory = DEFAULT_MAX_MEMORY, block_size: int | None = None,
        progress: bool | None = None, dtype: torch.dtype | None = None, group: ProcessGroup | None = None,
        names: tuple[str, str] | None = None, report: dict[str, Any] | None = None) -> KIDResult:
    """Kernel Inception Distance between the feature sets x (n, d) and y (m, d).

    Exact by default: the unbiased MMD^2 over all n + m features with k = (gamma x.y + coef)^degree
    (gamma None: 1/d), streamed as mmd_full (inputs, device, memory, distributed, names and report as
    there), and its standard error (module docstring).

    subsets=S reproduces torchmetrics' KernelInceptionDistance estimate for comparison: S times, a random
    subset_size rows of x and of y (torch.randperm with a torch.Generator seeded by `seed`, x's draw then
    y's, as torchmetrics draws from the global generator after torch.manual_seed(seed)), the unbiased MMD^2
    of the pair; value = their mean, std = their standard deviation (population, as torchmetrics 1.x:
    std(unbiased=False)). x and y must then be tensors or arrays.
    """
    spec = _checks.kernel(Polynomial(degree, gamma, coef))
    if subsets is not None:
        return _kid_subsets(x, y, spec, subsets, subset_size, seed, backend, device, dtype, progress)
    t0 = time.perf_counter()
    st = _setup(x, y, sigma=None, kernel=spec, backend=backend, device=device, max_memory=max_memory,
                block_size=block_size, median_points=None, median_seed=0, dtype=dtype, names=names, ncols=3)
    n, m = st.sx.n, st.sy.n
    if n < 2 or m < 2:
        raise ValueError(f"kid needs at least 2 features in each set, got {n} and {m}")

    rank, world, group = dist_info(group)
    plan = plan_tiles(n, m, st.block, world)
    if block_size is None:
        itemsize = torch.empty((), dtype=st.sx.dtype).element_size()
        fits = block_rows(parse_memory(max_memory), st.sx.d, itemsize, 2, st.backend, st.device, n + m,
                          capped=False) >= n + m
    else:
        fits = n + m <= st.block
    if world == 1 and fits:  # everything fits at once: one symmetric sweep over the pooled set
        value, sums = _one_sweep(st, plan, n, m)
    else:
        def columns(s: int, e: int) -> Tensor:  # [signed uniform weights, 1 on x rows, 1 on y rows]
            ind = _indicators(s, e, n)
            return torch.cat([ind[:, :1] / n - ind[:, 1:] / m, ind], 1)

        partials, sums = run_tiles(_job(st, columns, 3, True), plan, rank, world, group, progress, row_sums=True)
        value = signed_value(partials[:, 0], plan, 1.0 / n, 1.0 / m, True)
        sums = sums[:, 1:]
    a = sums[:n, 0] / (n - 1) - sums[:n, 1] / m
    b = sums[n:, 1] / (m - 1) - sums[n:, 0] / n
    std = math.sqrt(max(4.0 * a.var(ddof=1) / n + 4.0 * b.var(ddof=1) / m, 0.0))
    if report is not None:
        report.update(_info(st, plan, world, t0), value=value, std=std, method="exact")
    return KIDResult(value, std, "exact")


def _indicators(s: int, e: int, n: int) -> Tensor:
    """Columns [1 on x rows, 1 on y rows] (float64) for pooled rows [s, e), x being the first n."""
    on_x = (torch.arange(s, e) < n).double()
    return torch.stack([on_x, 1.0 - on_x], 1)


def _one_sweep(st, plan, n: int, m: int) -> tuple[float, np.ndarray]:
    """(KID, row sums [K 1_x, K 1_y] without the diagonal) from one quad_form over the pooled points: each
    pair evaluated once, against twice for the tiled path's off-diagonal tiles with row sums."""
    job = _job(st, lambda s, e: _indicators(s, e, n), 2, True)
    parts = list(job.load(plan.blocks, list(range(len(plan.blocks)))))
    z, w = torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])
    q, s, _ = job.ops.quad_form(z, w, None, job.params, job.kernel, True, True)
    s = s.cpu().numpy()
    cross = math.fsum(s[:n, 1])
    value = float(q[0]) / (n * (n - 1.0)) + float(q[1]) / (m * (m - 1.0)) - 2.0 * cross / (n * float(m))
    return value, s


def _kid_subsets(x, y, spec, subsets, subset_size, seed, backend, device, dtype, progress) -> KIDResult:
    from infovae_kernels.ops.mmd import mmd

    for value, name in ((subsets, "subsets"), (subset_size, "subset_size")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an int >= 2, got {value!r}")
    sets = []
    for t, name in ((x, "x"), (y, "y")):
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.asarray(t))
        if not isinstance(t, Tensor):
            raise TypeError(f"kid(subsets=...) needs {name} as a tensor or numpy array, got {type(t).__name__}")
        if t.dim() != 2 or t.shape[0] < subset_size:
            raise ValueError(f"kid(subsets=...): {name} has shape {tuple(t.shape)}, fewer rows than "
                             f"subset_size={subset_size}")
        t = t.detach().to(dtype) if dtype is not None else t.detach()
        sets.append(t.to(device) if device is not None else t)
    x, y = sets
    gen = torch.Generator().manual_seed(int(seed))
    values = []
    bar = progress_bar(progress, subsets)
    try:
        for _ in range(subsets):
            ix = torch.randperm(x.shape[0], generator=gen)[:subset_size].to(x.device)
            iy = torch.randperm(y.shape[0], generator=gen)[:subset_size].to(y.device)
            values.append(float(mmd(x[ix], y[iy], kernel=spec, estimator="unbiased", backend=backend)))
            bar.update(1)
    finally:
        bar.close()
    v = torch.tensor(values, dtype=torch.float64)
    return KIDResult(float(v.mean()), float(v.std(unbiased=False)), "subsets")
