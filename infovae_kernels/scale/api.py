"""Full-dataset MMD at scale: streamed symmetric tiles, torch.distributed, one-pass permutation tests.

    mmd_full(x, y, ...)          exact MMD^2 over whole data sets that need not fit in (device) memory
    mmd_test(x, y, permutations) MMD^2 and its permutation p-value, every permutation in one pass

Inputs x, y (each (n, d)) may be
  - torch tensors on any device,
  - numpy arrays, including memory-mapped .npy files (``np.load(path, mmap_mode="r")``),
  - chunked data: a callable returning a fresh iterator of (rows, d) chunks (tensors or arrays), or a
    re-iterable object (a list of chunks, or any object whose ``__iter__`` returns a new iterator).
    The data are read several times (one pass for the pooled mean, then about one pass per row block),
    so a one-shot iterator or generator is refused with a TypeError: wrap it, e.g.
    ``lambda: read_chunks(path)``.

How it works. The pooled set Z = [X; Y] is cut into row blocks of ``block_size`` rows (a block never
straddles X and Y). Every tile pair (I, J) with I <= J of the pooled Gram matrix is reduced once by the
backend primitives (see backends/reference.py): a diagonal tile by ``quad_form(Z_I, W_I)``, an off-diagonal
one by ``pair_reduce(Z_I, Z_J, W_J)`` -> S, giving ``2 * W_I . S`` (it is counted twice: K is symmetric).
W holds one column per quantity: the signed weights [w_x; -w_y] for mmd_full, one +-label column per
permutation for mmd_test. Each tile pair's float64 partial is stored at its pair index and the partials
are summed exactly (math.fsum), so the result does not depend on the order tiles ran in, on which
process ran them, or on the block schedule across processes. Points are centred on the pooled mean,
computed in float64 in a first streaming pass (the kernels are translation invariant), exactly as ik.mmd
centres them, so mmd_full equals ik.mmd on the same data up to float64 rounding of the partials.

Blocks are read on the host, pinned and copied to a CUDA device with non_blocking copies on a side
stream, one block ahead of the compute, so copies overlap the kernels. ``max_memory`` bounds the working
set: two data blocks (host staging and device copies), their W slices and, for the plain-torch backend,
the block x block matrices it materialises. The block size depends on max_memory, d, the dtype, the
number of W columns and the backend, never on the number of processes.

Distributed: when torch.distributed is initialised (gloo on CPUs, NCCL on GPUs; torchrun), the tile
pairs are split among the ranks in contiguous runs of about equal cost (any world size works; a rank
may get no work), each rank reduces its share, and one all_reduce of the vector of per-pair float64
partials gives every rank every partial; the exact sum then makes the answer bitwise equal to the
one-process answer. Every rank must call with the same data and arguments. Each rank reads the data
once itself for the pooled mean (no communication).
"""


from __future__ import annotations

import math
import numbers
import time
from typing import Any, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.distributed import ProcessGroup
from torch.types import Device

from infovae_kernels import _checks, backends, kernels
from infovae_kernels.bandwidth import MEDIAN_SUBSAMPLE, median_distance, subsample_rows
from infovae_kernels.scale.planning import DEFAULT_MAX_MEMORY, Job, block_rows, compute_device, dist_info, \
    parse_memory, plan_tiles, run_tiles
from infovae_kernels.scale.sources import Data, Source, UniformWeights, Weights, WeightSource, pooled_rows, source

MEDIAN_EXACT_LIMIT = 20_000  # pooled points above which median_points=None (exact median) is refused
#: A memory size: bytes, or a string such as "2GB" or "512MiB" (planning.parse_memory).
Memory = Union[int, str]


class MMDTestResult(NamedTuple):
    """statistic: the MMD^2 of the observed labelling; p_value = (1 + #{perm >= statistic}) / (1 + P);
    permutation_statistics: float64 tensor (P,), the statistic under each random relabelling."""

    statistic: float
    p_value: float
    permutation_statistics: Tensor


class _Setup(NamedTuple):
    """What mmd_full and mmd_test share: the sources, where and how tiles are reduced."""

    sx: Source
    sy: Source
    mean: Tensor  # float64 (d,), pooled column means
    scale: Tensor  # float64 0-dim, the power of two the centred points are divided by
    sigmas: Optional[Tensor]  # float64 (S,), None for a kernel without a bandwidth
    kernel: kernels.Kernel
    backend: str
    ops: object  # the backend's primitives
    device: torch.device
    ct: torch.dtype  # compute dtype
    block: int  # rows per block


def _median_sigma(sx: Source, sy: Source, max_points: Optional[int], seed: int, device) -> Tensor:
    """median_distance of the pooled sample, on the rows ik.mmd would pick (bandwidth.subsample_rows)."""
    n = sx.n + sy.n
    if max_points is None:
        if n > MEDIAN_EXACT_LIMIT:
            raise ValueError(f"the exact median (median_points=None) needs O(n^2) memory and is refused above "
                             f"{MEDIAN_EXACT_LIMIT} pooled points (got {n}); give median_points")
        max_points = n
    rows = pooled_rows(sx, sy, subsample_rows(n, max_points, seed))
    return median_distance(rows.to(device), max_points=rows.shape[0])


def _setup(x, y, *, sigma, kernel, backend, device, max_memory, block_size, median_points, median_seed,
           dtype, names, ncols) -> _Setup:
    names = names or ("x", "y")
    sx, sy = source(x, names[0], dtype), source(y, names[1], dtype)
    kernel = _checks.kernel(kernel)
    (sum_x, lo_x, hi_x), (sum_y, lo_y, hi_y) = sx.scan(), sy.scan()
    if sx.d != sy.d:
        raise ValueError(f"{names[0]} has {sx.d} features but {names[1]} has {sy.d}")
    if sx.dtype != sy.dtype:
        raise TypeError(f"{names[0]} is {sx.dtype} but {names[1]} is {sy.dtype}; convert one (or pass dtype=)")
    dev = compute_device(device, sx, sy)
    name = backends.resolve(backend, dev)
    mean = (sum_x + sum_y) / (sx.n + sy.n)  # float64, as kernels.prepare centres
    if kernels.is_dot(kernel):
        mean = torch.zeros_like(mean)  # dot kernels are not translation invariant: not centred
    peak = torch.maximum(torch.maximum(hi_x, hi_y) - mean, mean - torch.minimum(lo_x, lo_y)).amax()
    scale = kernels.power_of_two_scale(peak)
    sigmas = _checks.sigmas(sigma, torch.empty(0, device=dev),
                            lambda: _median_sigma(sx, sy, median_points, median_seed, dev), kernel)
    if sigmas is not None:
        sigmas = sigmas.detach().cpu()
    ct = kernels.compute_dtype(sx.dtype)
    if block_size is None:
        itemsize = torch.empty((), dtype=sx.dtype).element_size()
        block = block_rows(parse_memory(max_memory), sx.d, itemsize, ncols, name, dev, sx.n + sy.n)
    else:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        block = int(block_size)
    return _Setup(sx, sy, mean, scale, sigmas, kernel, name, backends.primitives(name), dev, ct, block)


def _job(st: _Setup, columns, ncols: int, exclude: bool) -> Job:
    params = kernels.kernel_params(st.kernel, st.sigmas, st.sx.d, st.scale, st.sx.dtype)
    return Job(st.sx, st.sy, st.mean, st.scale, columns, ncols, params, kernels.primitive_name(st.kernel), exclude,
               st.ops, st.device, st.ct, st.block)


def _info(st: _Setup, plan, world: int, t0: float) -> dict:
    return dict(n_x=st.sx.n, n_y=st.sy.n, d=st.sx.d, dtype=str(st.sx.dtype).replace("torch.", ""),
                sigmas=None if st.sigmas is None else st.sigmas.tolist(), kernel=str(st.kernel),
                backend=st.backend, device=str(st.device),
                block_size=st.block, tile_pairs=len(plan.pairs), world_size=world,
                seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------------------- public API

def mmd_full(x: Data, y: Data, *, kernel: kernels.Kernel = "rbf", sigma: _checks.Sigma = None, estimator: str = "biased",
             weights_x: Weights | None = None, weights_y: Weights | None = None, backend: str = "auto",
             device: Device = None, max_memory: Memory = DEFAULT_MAX_MEMORY, block_size: int | None = None,
             progress: bool | None = None, median_points: int | None = MEDIAN_SUBSAMPLE,
             median_seed: int = 0, dtype: torch.dtype | None = None, group: ProcessGroup | None = None,
             names: tuple[str, str] | None = None, report: dict[str, Any] | None = None) -> float:
    """Exact squared MMD between two whole data sets, streamed in tiles; a Python float (float64).

    Same estimators, kernels, bandwidths and weights as ik.mmd (see its docstring), and the same value up
    to float64 rounding of the partials; not differentiable. x, y: tensors (any device), numpy arrays or
    memory-mapped .npy files, or chunked data (module docstring). weights_x / weights_y: 1-D tensors or
    numpy arrays (memory-mapped included), normalised to sum 1.

    sigma="median": the median pairwise distance of the pooled sample, from a seeded subsample of
    `median_points` rows (default 2048, chosen by bandwidth.subsample_rows(seed=median_seed): the rows
    ik.mmd picks, so the two agree), exact when the pooled sample has at most that many points;
    median_points=None asks for the exact median (O(n^2) memory, refused above 20000 points).

    device: where tiles are reduced (default: the device of a tensor input, else CPU); backend: as in
    ik.mmd, resolved for that device. max_memory (bytes or "2GB"/"512MiB") bounds the working set and
    sets the block size unless block_size (rows) is given. progress: a tqdm bar with pairs/s when tqdm
    is installed (None: only on a terminal and after 2 s; True without tqdm: one warning, no bar). dtype: convert the data to this dtype while reading. group: the
    torch.distributed process group (default: the world, when initialised). names: how x and y are
    called in error messages (e.g. file names). report: a dict to fill with the run's details (backend,
    device, dtype, sigmas, block size, tile pairs, world size, seconds).
    """
    unbiased = _checks.estimator(estimator)
    t0 = time.perf_counter()
    st = _setup(x, y, sigma=sigma, kernel=kernel, backend=backend, device=device, max_memory=max_memory,
                block_size=block_size, median_points=median_points, median_seed=median_seed, dtype=dtype,
                names=names, ncols=1)
    sx, sy = st.sx, st.sy
    wx = UniformWeights(sx.n) if weights_x is None else WeightSource(weights_x, sx.n, "weights_x")
    wy = UniformWeights(sy.n) if weights_y is None else WeightSource(weights_y, sy.n, "weights_y")
    if unbiased:
        for w, s, wname in ((wx, sx, "x"), (wy, sy, "y")):
            if s.n < 2:
                raise ValueError(f"the unbiased estimator needs at least 2 points in {wname}, got {s.n}")
            if w.sum_sq >= 1.0 - 1e-12:
                raise ValueError(f"the unbiased estimator needs at least 2 positive weights for {wname}")
    nx = sx.n

    def columns(s: int, e: int) -> Tensor:  # signed weights [w_x; -w_y] for pooled rows [s, e)
        if s >= nx:
            return -wy.get(s - nx, e - nx)[:, None]
        return wx.get(s, e)[:, None]

    rank, world, group = dist_info(group)
    plan = plan_tiles(sx.n, sy.n, st.block, world)
    partials = run_tiles(_job(st, columns, 1, unbiased), plan, rank, world, group, progress)[0][:, 0]
    value = signed_value(partials, plan, wx.sum_sq, wy.sum_sq, unbiased)
    if report is not None:
        report.update(_info(st, plan, world, t0), value=value)
    return value


def signed_value(partials: np.ndarray, plan, sum_sq_x: float, sum_sq_y: float, unbiased: bool) -> float:
    """MMD^2 from the per-pair partials of the signed column [w_x; -w_y], summed exactly per kind."""
    kinds = [plan.blocks[i][0] + plan.blocks[j][0] for i, j in plan.pairs]  # 0: xx, 1: xy, 2: yy
    qxx = math.fsum(p for p, k in zip(partials, kinds) if k == 0)
    qxy = math.fsum(p for p, k in zip(partials, kinds) if k == 1)  # already -2 w_x K w_y
    qyy = math.fsum(p for p, k in zip(partials, kinds) if k == 2)
    cxx = 1.0 / (1.0 - sum_sq_x) if unbiased else 1.0
    cyy = 1.0 / (1.0 - sum_sq_y) if unbiased else 1.0
    return cxx * qxx + cyy * qyy + qxy


def mmd_test(x: Data, y: Data, permutations: int = 200, seed: int = 0, *, kernel: kernels.Kernel = "rbf",
             sigma: _checks.Sigma = None, estimator: str = "biased", backend: str = "auto", device: Device = None,
             max_memory: Memory = DEFAULT_MAX_MEMORY, block_size: int | None = None,
             progress: bool | None = None, median_points: int | None = MEDIAN_SUBSAMPLE,
             median_seed: int = 0, dtype: torch.dtype | None = None, group: ProcessGroup | None = None,
             names: tuple[str, str] | None = None, report: dict[str, Any] | None = None
             ) -> MMDTestResult | list[MMDTestResult]:
    """Two-sample permutation test with the MMD^2 statistic; every permutation in one pass.

    The pooled Z = [X; Y] (N + M rows) and W (N + M, 1 + P): column 0 labels the observed split, column p
    a random relabelling (N points drawn as "X" by torch.randperm with a torch.Generator seeded by
    `seed`, so results are reproducible and identical on every rank). One streamed, symmetric pass over
    the tiles of Z computes q = diag(W^T K W) for all columns at once: one pass, not P.

    biased:   W_ip = +1/N for points labelled X, -1/M for points labelled Y; q_p is the V-statistic.
    unbiased: the U-statistic is also one quadratic form per permutation. With A, B the off-diagonal
              within-X and within-Y kernel sums of a labelling and T = 1^T K 1 - tr K (the same for every
              labelling), MMD_u = a A + b B - T / (N M), a = (N+M-1) / (N (N-1) M), b = (N+M-1) / (M (M-1) N);
              the column +1/(N-1) (X) / -1/(M-1) (Y) gives, with the diagonal excluded,
              q = c1 A + c2 B - T / ((N-1)(M-1)) with c1 / c2 = a / b, so MMD_u = (a / c1)(q + T/((N-1)(M-1)))
              - T / (N M); one extra all-ones column gives T. The biased and unbiased statistics of a
              labelling differ by an affine map only when N == M (then their p-values coincide); for
              N != M they order permutations differently, so the estimator is a real choice.

    p_value = (1 + #{p : stat_p >= statistic - tol}) / (1 + P), tol = 16 eps(compute dtype) * n_scales
    (rounding must not turn a tie into an exceedance). Weights are not supported (a permutation of
    weighted samples is not a valid null). Host memory: an (N + M) x (P + 1) bool label matrix. Other
    arguments (names and report included) as in mmd_full; distributed like mmd_full.

    sigma="optimize" (x, y tensors or arrays): each set is split in two halves by a permutation seeded
    with `seed`; on the first halves the bandwidth maximising the test-power criterion
    MMD_u^2 / sigma_H1 (ik.mmd_power, on min(N, M) // 2 pairs) is chosen from a grid of 33 values
    median * 2^(k/4), k = -16..16 (median: the pooled median distance of those halves); the test then
    runs on the second halves only (held-out data, so the p-value stays valid). report gets the grid
    and the choice.
    """
    unbiased = _checks.estimator(estimator)
    if isinstance(permutations, bool) or not isinstance(permutations, numbers.Integral) or permutations < 1:
        raise ValueError(f"permutations must be a positive int, got {permutations!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if isinstance(x, Tensor) and x.dim() == 3:
        given = dict(device=device, block_size=block_size, group=group, names=names, report=report, dtype=dtype,
                     median_points=median_points != MEDIAN_SUBSAMPLE or None, median_seed=median_seed or None,
                     progress=progress, max_memory=max_memory != DEFAULT_MAX_MEMORY or None,
                     sigma_optimize=isinstance(sigma, str) and sigma == "optimize" or None)
        unsupported = [k for k, v in given.items() if v is not None]
        if unsupported:
            raise ValueError(f"a batch of tests (x of shape (B, N, d)) runs in memory in one call; "
                             f"{', '.join(unsupported)} apply to one streamed test only")
        return _mmd_test_batch(x, y, int(permutations), int(seed), kernel, sigma, unbiased, backend)
    if isinstance(sigma, str) and sigma == "optimize":
        if not kernels.has_bandwidth(_checks.kernel(kernel)):
            raise ValueError(f'sigma="optimize" needs a kernel with a bandwidth ({kernels.BANDWIDTH_KERNELS}), '
                             f"got {kernel!r}")
        x, y, sigma, chosen = _optimize_bandwidth(x, y, int(seed), kernel, backend, device, dtype)
        if report is not None:
            report.update(chosen)
    t0 = time.perf_counter()
    ncols = 1 + permutations + (1 if unbiased else 0)
    st = _setup(x, y, sigma=sigma, kernel=kernel, backend=backend, device=device, max_memory=max_memory,
                block_size=block_size, median_points=median_points, median_seed=median_seed, dtype=dtype,
                names=names, ncols=ncols)
    n, m = st.sx.n, st.sy.n
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"the unbiased estimator needs at least 2 points in each set, got {n} and {m}")
    labels = _labels(n, m, int(permutations), int(seed))

    def columns(s: int, e: int) -> Tensor:
        return _columns(labels[s:e], n, m, unbiased)

    rank, world, group = dist_info(group)
    plan = plan_tiles(n, m, st.block, world)
    partials, _ = run_tiles(_job(st, columns, ncols, unbiased), plan, rank, world, group, progress)
    q = np.array([math.fsum(partials[:, c]) for c in range(ncols)])
    result = _test_result(q, n, m, unbiased, st.ct, 1 if st.sigmas is None else len(st.sigmas))
    if report is not None:
        report.update(_info(st, plan, world, t0), value=result.statistic, p_value=result.p_value,
                      permutations=int(permutations), seed=int(seed))
    return result


def _columns(labels: Tensor, n: int, m: int, unbiased: bool) -> Tensor:
    """mmd_test's float64 columns for the rows of `labels` (rows, 1 + P): 1/n on the points labelled X and
    -1/m on the others (1/(n-1), -1/(m-1) unbiased, then an all-ones column)."""
    wpos, wneg = (1.0 / (n - 1), -1.0 / (m - 1)) if unbiased else (1.0 / n, -1.0 / m)
    w = torch.full(labels.shape, wneg, dtype=torch.float64).masked_fill_(labels, wpos)
    return torch.cat([w, w.new_ones((labels.shape[0], 1))], 1) if unbiased else w


def _test_result(q: np.ndarray, n: int, m: int, unbiased: bool, ct: torch.dtype, scales: int) -> MMDTestResult:
    """The statistic, p-value and permutation statistics from q (every column's quadratic form, the
    all-ones column last when unbiased; see mmd_test). A permuted statistic within
    16 eps(ct) max(scales, |statistic|) below the observed one counts as reaching it (rounding must not turn
    a tie into an exceedance)."""
    if unbiased:
        t = q[-1]
        q = q[:-1]
        a = (n + m - 1) / (n * (n - 1) * m)
        c1 = (n + m - 2) / ((n - 1) ** 2 * (m - 1))
        stats = (a / c1) * (q + t / ((n - 1) * (m - 1))) - t / (n * m)
    else:
        stats = q
    stat, perm = float(stats[0]), torch.from_numpy(stats[1:].copy())
    tol = 16 * torch.finfo(ct).eps * max(scales, abs(stat))
    return MMDTestResult(stat, (1 + int((perm >= stat - tol).sum())) / (1 + perm.shape[0]), perm)


def _mmd_test_batch(x: Tensor, y: Tensor, permutations: int, seed: int, kernel: kernels.Kernel, sigma: _checks.Sigma,
                    unbiased: bool, backend: str) -> list[MMDTestResult]:
    """mmd_test of each problem of a batch x (B, N, d), y (B, M, d), in one batched quad_form call over the
    columns of the 2-D test (the same labellings for every problem: `seed`'s)."""
    from infovae_kernels.ops._common import bandwidths, prepared_pooled, primitives

    _checks.points(x, y, batch=True)
    kernel = _checks.kernel(kernel)
    n, m = x.shape[1], y.shape[1]
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"the unbiased estimator needs at least 2 points in each set, got {n} and {m}")
    w = _columns(_labels(n, m, int(permutations), int(seed)), n, m, unbiased)
    sigmas = bandwidths(sigma, kernel, x.detach(), y.detach())
    z, _, params = prepared_pooled(x.detach(), y.detach(), sigmas, kernel)
    w = w.to(device=z.device, dtype=z.dtype).expand(x.shape[0], -1, -1)
    q, _, _ = primitives(backend, x.device).quad_form(z, w, None, params, kernels.primitive_name(kernel), unbiased,
                                                      False)
    ct, scales = kernels.compute_dtype(x.dtype), 1 if sigmas is None else sigmas.shape[-1]
    return [_test_result(qb, n, m, unbiased, ct, scales) for qb in q.cpu().numpy()]


def _labels(n: int, m: int, permutations: int, seed: int) -> Tensor:
    """(n + m, 1 + P) bool, True where the point is labelled X; column 0 is the observed labelling."""
    gen = torch.Generator().manual_seed(int(seed))
    lab = torch.zeros((1 + permutations, n + m), dtype=torch.bool)
    lab[0, :n] = True
    for p in range(1, permutations + 1):
        lab[p, torch.randperm(n + m, generator=gen)[:n]] = True
    return lab.T  # rows = points; sliced and made contiguous per block


OPTIMIZE_GRID = tuple(2.0 ** (k / 4) for k in range(-16, 17))


def _optimize_bandwidth(x, y, seed, kernel, backend, device, dtype):
    """(x_test, y_test, sigma, details): the split and grid search of mmd_test(sigma="optimize")."""
    from infovae_kernels.ops.mmd_power import mmd_power

    halves = []
    gen = torch.Generator().manual_seed(seed)
    for t, name in ((x, "x"), (y, "y")):
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.asarray(t))
        if not isinstance(t, Tensor):
            raise TypeError(f'sigma="optimize" needs {name} as a tensor or numpy array, got {type(t).__name__}')
        t = t.detach().to(dtype) if dtype is not None else t.detach()
        if t.dim() != 2 or t.shape[0] < 4:
            raise ValueError(f'sigma="optimize" needs at least 4 points in {name} (half to choose sigma, half '
                             f"to test), got shape {tuple(t.shape)}")
        perm = torch.randperm(t.shape[0], generator=gen).to(t.device)
        k = t.shape[0] // 2
        halves.append((t[perm[:k]], t[perm[k:]]))
    (x_train, x_test), (y_train, y_test) = halves
    pairs = min(x_train.shape[0], y_train.shape[0])
    xt, yt = x_train[:pairs], y_train[:pairs]
    if device is not None:
        xt, yt = xt.to(device), yt.to(device)
    med = float(median_distance(torch.cat([xt, yt])))
    grid = [med * f for f in OPTIMIZE_GRID]
    with torch.no_grad():
        crit = [float(mmd_power(xt, yt, kernel=kernel, sigma=s, backend=backend).criterion) for s in grid]
    best = int(np.nanargmax(crit))
    details = dict(optimized_sigma=grid[best], optimize_grid=grid, optimize_criterion=crit,
                   optimize_split=f"seeded halves: {x_train.shape[0]}/{x_test.shape[0]} of x, "
                                  f"{y_train.shape[0]}/{y_test.shape[0]} of y; {pairs} pairs to choose sigma")
    return x_test, y_test, grid[best], details
