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
backend primitives (backends/reference.py): a diagonal tile by ``quad_form(Z_I, W_I)``, an off-diagonal
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
import re
import sys
import time
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks, backends
from infovae_kernels.backends import reference
from infovae_kernels.bandwidth import MEDIAN_SUBSAMPLE, median_distance

__all__ = ["mmd_full", "mmd_test", "MMDTestResult", "parse_memory", "DEFAULT_MAX_MEMORY"]

DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB
MEDIAN_EXACT_LIMIT = 20_000  # pooled points above which median_points=None (exact median) is refused
_MAX_BLOCK = {"cpu": 16384, "cuda": 65536}
_SCAN_ROWS = 65536  # rows per block in the first (mean) pass over array sources

Data = Union[Tensor, np.ndarray, Callable[[], Iterable[Any]], Iterable[Any]]


class MMDTestResult(NamedTuple):
    """statistic: the MMD^2 of the observed labelling; p_value = (1 + #{perm >= statistic}) / (1 + P);
    permutation_statistics: float64 tensor (P,), the statistic under each random relabelling."""

    statistic: float
    p_value: float
    permutation_statistics: Tensor


# ------------------------------------------------------------------------------------- memory sizes

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_memory(value: Union[int, float, str]) -> int:
    """Bytes from an int/float or a string: "512MB" and "2GB" are decimal (10^6, 10^9), "2GiB" and
    "2G" binary (2^30); a bare number is bytes."""
    if isinstance(value, bool):
        raise TypeError("max_memory must be a number of bytes or a string like '2GB'")
    if isinstance(value, numbers.Real):
        out = float(value)
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read the memory size {value!r}; use e.g. 2GB, 512MiB, 1e9")
        out = float(m.group(1)) * _UNITS[m.group(2).lower()]
    else:
        raise TypeError(f"max_memory must be a number of bytes or a string like '2GB', got {type(value).__name__}")
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"max_memory must be positive, got {value!r}")
    return int(out)


# ------------------------------------------------------------------------------------------ sources

_NP_TO_TORCH = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                np.dtype(np.float64): torch.float64}


def _bad_row(block: Tensor) -> Optional[int]:
    bad = ~torch.isfinite(block).all(1)
    if bool(bad.any()):
        return int(bad.nonzero()[0, 0])
    return None


class _Source:
    """Rows of one data set, read in increasing row ranges; n, d, dtype are known after scan()."""

    name: str
    n: int = -1
    d: int = -1
    dtype: Optional[torch.dtype] = None
    device: Optional[torch.device] = None  # device the data already live on (tensors), else None

    def ranges(self, bounds: Sequence[tuple[int, int]]) -> Iterator[Tensor]:
        raise NotImplementedError

    def scan_blocks(self) -> Iterator[Tensor]:
        """The whole data once, in order, in blocks of any size (for the mean pass)."""
        bounds = [(s, min(s + _SCAN_ROWS, self.n)) for s in range(0, self.n, _SCAN_ROWS)]
        return self.ranges(bounds)

    def scan(self) -> Tensor:
        """One pass: checks every row is finite (naming the first bad row) and returns the float64 sum."""
        total = None
        pos = 0
        for blk in self.scan_blocks():
            row = _bad_row(blk)
            if row is not None:
                raise ValueError(f"{self.name} contains NaN or Inf at row {pos + row}")
            s = blk.sum(0, dtype=torch.float64)
            total = s if total is None else total + s
            pos += blk.shape[0]
        return total

    def gather(self, index: Tensor) -> Tensor:
        """Rows at `index` (int64, any order), in that order."""
        order = torch.argsort(index)
        sorted_idx = index[order]
        # read the needed rows block by block in one pass
        rows = []
        b = max(1, _SCAN_ROWS)
        starts = torch.unique(torch.div(sorted_idx, b, rounding_mode="floor")).tolist()
        bounds = [(s * b, min((s + 1) * b, self.n)) for s in starts]
        for (lo, _hi), blk in zip(bounds, self.ranges(bounds)):
            sel = sorted_idx[(sorted_idx >= lo) & (sorted_idx < lo + blk.shape[0])]
            rows.append(blk[(sel - lo).to(blk.device)].cpu())
        picked = torch.cat(rows)
        out = torch.empty_like(picked)
        out[order] = picked
        return out


class _TensorSource(_Source):
    def __init__(self, t: Tensor, name: str):
        _checks.floating(t, name)
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {tuple(t.shape)}")
        if t.shape[0] == 0 or t.shape[1] == 0:
            raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
        self.t, self.name = t.detach(), name
        self.n, self.d, self.dtype, self.device = t.shape[0], t.shape[1], t.dtype, t.device

    def ranges(self, bounds):
        for s, e in bounds:
            yield self.t[s:e]


class _ArraySource(_Source):
    def __init__(self, a: np.ndarray, name: str, dtype: Optional[torch.dtype] = None):
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {a.shape}")
        if a.shape[0] == 0 or a.shape[1] == 0:
            raise ValueError(f"{name} is empty: shape {a.shape}")
        if dtype is None:
            if a.dtype not in _NP_TO_TORCH:
                raise TypeError(f"{name} must have a floating dtype (float16, float32, float64), got {a.dtype}")
            dtype = _NP_TO_TORCH[a.dtype]
        self.np_dtype = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}.get(dtype)
        if self.np_dtype is None:
            raise TypeError(f"{name}: cannot read numpy data as {dtype}")
        self.a, self.name, self.dtype = a, name, dtype
        self.n, self.d = a.shape

    def ranges(self, bounds):
        for s, e in bounds:
            # np.array copies (memory-mapped pages are read here) into a writable, contiguous block
            yield torch.from_numpy(np.array(self.a[s:e], dtype=self.np_dtype, copy=True))


class _ChunkSource(_Source):
    """A callable returning a fresh iterator of chunks, or a re-iterable of chunks."""

    def __init__(self, obj, name: str, dtype: Optional[torch.dtype] = None):
        self.obj, self.name, self.want_dtype = obj, name, dtype

    def _chunks(self) -> Iterator[Tensor]:
        it = self.obj() if callable(self.obj) else iter(self.obj)
        for i, c in enumerate(it):
            if isinstance(c, np.ndarray):
                if self.want_dtype is None and c.dtype not in _NP_TO_TORCH:
                    raise TypeError(f"{self.name}: chunk {i} must have a floating dtype, got {c.dtype}")
                c = torch.from_numpy(np.array(c, copy=True))
            elif not isinstance(c, Tensor):
                raise TypeError(f"{self.name}: chunk {i} must be a tensor or numpy array, got {type(c).__name__}")
            if self.want_dtype is not None:
                c = c.to(self.want_dtype)
            _checks.floating(c, f"{self.name} chunk {i}")
            if c.dim() != 2:
                raise ValueError(f"{self.name}: chunk {i} must be 2-D (rows, n_features), got shape {tuple(c.shape)}")
            if self.d >= 0 and c.shape[1] != self.d:
                raise ValueError(f"{self.name}: chunk {i} has {c.shape[1]} features, earlier chunks {self.d}")
            if self.dtype is not None and c.dtype != self.dtype:
                raise TypeError(f"{self.name}: chunk {i} is {c.dtype}, earlier chunks {self.dtype}")
            if c.shape[0]:
                yield c.detach()

    def scan_blocks(self):
        n = 0
        for c in self._chunks():
            if self.d < 0:
                self.d, self.dtype = c.shape[1], c.dtype
            n += c.shape[0]
            yield c
        if n == 0:
            raise ValueError(f"{self.name} is empty: its iterator yielded no rows")
        self.n = n

    def ranges(self, bounds):
        it = iter(bounds)
        cur = next(it, None)
        buf: list[Tensor] = []
        pos = 0
        if cur is not None:
            for c in self._chunks():
                c0, c1 = pos, pos + c.shape[0]
                pos = c1
                while cur is not None and cur[0] < c1:
                    s, e = cur
                    lo, hi = max(s, c0), min(e, c1)
                    if hi > lo:
                        buf.append(c[lo - c0:hi - c0])
                    if e > c1:
                        break
                    yield buf[0] if len(buf) == 1 else torch.cat(buf)
                    buf = []
                    cur = next(it, None)
                if cur is None:
                    break
        if cur is not None:
            raise RuntimeError(f"{self.name} yielded fewer rows on a later pass ({pos}) than on the first "
                               f"({self.n}); a chunked input must yield the same data on every pass")


def _source(obj, name: str, dtype: Optional[torch.dtype] = None) -> _Source:
    if isinstance(obj, _Source):
        return obj
    if isinstance(obj, Tensor):
        if dtype is not None:
            obj = obj.to(dtype)
        return _TensorSource(obj, name)
    if isinstance(obj, np.ndarray):
        return _ArraySource(obj, name, dtype)
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        raise TypeError(f"{name} is a path; load it first, e.g. np.load(path, mmap_mode='r') for a .npy file")
    if callable(obj):
        return _ChunkSource(obj, name, dtype)
    if isinstance(obj, Iterable):
        if iter(obj) is obj:  # an iterator: it can be traversed only once
            raise TypeError(
                f"{name} is a one-shot iterator ({type(obj).__name__}); the data are read several times (one "
                "pass for the pooled mean, then about one per row block), so pass a re-iterable (a list of "
                "chunks, an object whose __iter__ returns a fresh iterator) or a callable that returns a fresh "
                "iterator, e.g. lambda: read_chunks(path)")
        return _ChunkSource(obj, name, dtype)
    raise TypeError(f"{name} must be a tensor, a numpy array (memory-mapped .npy included), a callable returning "
                    f"an iterator of chunks, or a re-iterable of chunks; got {type(obj).__name__}")


class _WeightSource:
    """Non-negative weights of one set, read by row range; normalised by the total from a first pass."""

    def __init__(self, w, n: int, name: str):
        if isinstance(w, Tensor):
            _checks.floating(w, name)
            w = w.detach()
        elif isinstance(w, np.ndarray):
            if w.dtype.kind != "f":
                raise TypeError(f"{name} must have a floating dtype, got {w.dtype}")
        else:
            raise TypeError(f"{name} must be a 1-D tensor or numpy array (memory-mapped included), "
                            f"got {type(w).__name__}")
        if w.ndim != 1 or w.shape[0] != n:
            raise ValueError(f"{name} must be 1-D of length {n}, got shape {tuple(w.shape)}")
        self.w, self.name = w, name
        parts = []
        for s in range(0, n, _SCAN_ROWS):
            b = self._raw(s, min(n, s + _SCAN_ROWS))
            bad = ~torch.isfinite(b)
            if bool(bad.any()):
                raise ValueError(f"{name} contains NaN or Inf at index {s + int(bad.nonzero()[0, 0])}")
            if bool((b < 0).any()):
                raise ValueError(f"{name} must be non-negative (index {s + int((b < 0).nonzero()[0, 0])})")
            parts.append(float(b.sum()))
        total = math.fsum(parts)
        if not total > 0:
            raise ValueError(f"{name} are all zero; at least one weight must be positive")
        self.total = total  # a second pass for sum(w^2) keeps host memory bounded for memory-mapped weights
        self.sum_sq = math.fsum(float((self._raw(s, min(n, s + _SCAN_ROWS)) / total).square().sum())
                                for s in range(0, n, _SCAN_ROWS))

    def _raw(self, s: int, e: int) -> Tensor:
        if isinstance(self.w, Tensor):
            return self.w[s:e].double().cpu()
        return torch.from_numpy(np.array(self.w[s:e], dtype=np.float64, copy=True))

    def get(self, s: int, e: int) -> Tensor:
        return self._raw(s, e) / self.total


class _Uniform:
    def __init__(self, n: int):
        self.n, self.total, self.sum_sq = n, float(n), 1.0 / n

    def get(self, s: int, e: int) -> Tensor:
        return torch.full((e - s,), 1.0 / self.n, dtype=torch.float64)


# --------------------------------------------------------------------------------------- the plan

def _compute_device(device, sx: _Source, sy: _Source) -> torch.device:
    if device is None:
        for s in (sx, sy):
            if s.device is not None:
                return s.device
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _block_rows(max_memory: int, d: int, itemsize: int, cols: int, backend: str, device: torch.device,
                n_total: int) -> int:
    """Largest block (rows) whose working set fits in max_memory: per row, two data blocks on the host
    (staging) and on the device, their W slices (float64 host + device) and the float64 S output; for the
    plain-torch backend also ~5 block x block matrices (distances, kernel, weights, products)."""
    ct_size = 8 if itemsize == 8 else 4
    lin = 4 * d * max(itemsize, ct_size) + 5 * cols * 8
    quad = 5 * ct_size if backend == "torch" else 0
    if quad:
        b = (-lin + math.sqrt(lin * lin + 4.0 * quad * max_memory)) / (2.0 * quad)
    else:
        b = max_memory / lin
    cap = _MAX_BLOCK.get(device.type, _MAX_BLOCK["cuda"])
    return int(max(1, min(b, cap, n_total)))


class _Plan(NamedTuple):
    blocks: list  # (source index 0 = x / 1 = y, start, stop, pooled offset)
    pairs: list  # (I, J) with I <= J, in row-major order
    owner: list  # rank of each pair


def _plan(nx: int, ny: int, block: int, world: int) -> _Plan:
    blocks = []
    for src, n, off in ((0, nx, 0), (1, ny, nx)):
        for s in range(0, n, block):
            e = min(n, s + block)
            blocks.append((src, s, e, off + s))
    nb = len(blocks)
    pairs = [(i, j) for i in range(nb) for j in range(i, nb)]
    sizes = [b[2] - b[1] for b in blocks]
    cost = [sizes[i] * sizes[j] * (0.5 if i == j else 1.0) for i, j in pairs]
    total = sum(cost)
    owner, acc = [], 0.0
    for c in cost:  # contiguous runs of about equal cost; the midpoint of each pair decides its rank
        owner.append(min(world - 1, int(world * (acc + 0.5 * c) / total)))
        acc += c
    return _Plan(blocks, pairs, owner)


def _dist_info(group) -> tuple[int, int, Any]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group), group
    return 0, 1, None


def _device_blocks(host_blocks: Iterator[Tensor], device: torch.device) -> Iterator[Tensor]:
    """Move blocks to `device`. On CUDA: pinned host memory, non_blocking copies on a side stream issued
    one block ahead, so the copy of block k+1 overlaps the kernels on block k."""
    if device.type != "cuda":
        for b in host_blocks:
            yield b.to(device)
        return
    side = torch.cuda.Stream(device)
    main = torch.cuda.current_stream(device)

    def issue(b):
        if b.device == device:
            return b, None
        if b.device.type == "cpu" and not b.is_pinned():
            b = b.pin_memory()
        side.wait_stream(main)  # the destination memory may be recycled from the main stream
        with torch.cuda.stream(side):
            out = b.to(device, non_blocking=True)
            ev = torch.cuda.Event()
            ev.record(side)
        return out, ev

    it = iter(host_blocks)
    first = next(it, None)
    pending = issue(first) if first is not None else None
    while pending is not None:
        out, ev = pending
        nxt = next(it, None)
        pending = issue(nxt) if nxt is not None else None
        if ev is not None:
            main.wait_event(ev)
            out.record_stream(main)
        yield out


class _Job:
    """Everything the tile loop needs: the two sources, their pooled mean, W columns by pooled rows."""

    def __init__(self, sx, sy, mean, columns: Callable[[int, int], Tensor], ncols: int, sigmas, kernel,
                 exclude, ops, device, ct, block):
        self.sx, self.sy, self.mean, self.columns, self.ncols = sx, sy, mean, columns, ncols
        self.sigmas, self.kernel, self.exclude, self.ops, self.device, self.ct = \
            sigmas, kernel, exclude, ops, device, ct
        self.block = block
        self.mean_ct = mean.to(device=device, dtype=ct)

    def load(self, blocks: list, which: list[int]) -> Iterator[tuple[int, Tensor, Tensor]]:
        """(block id, centred Z block, W block) on the device for the block ids `which` (increasing)."""
        by_src = {0: [b for b in which if blocks[b][0] == 0], 1: [b for b in which if blocks[b][0] == 1]}
        for src_id, src in ((0, self.sx), (1, self.sy)):
            ids = by_src[src_id]
            if not ids:
                continue
            host = src.ranges([(blocks[b][1], blocks[b][2]) for b in ids])
            dev = _device_blocks(host, self.device)
            for b, z in zip(ids, dev):
                off = blocks[b][3]
                w = self.columns(off, off + (blocks[b][2] - blocks[b][1]))
                w = w.to(self.ct).to(self.device, non_blocking=True)
                yield b, z.to(self.ct) - self.mean_ct, w


def _run_tiles(job: _Job, plan: _Plan, rank: int, world: int, group, progress) -> np.ndarray:
    """Per-pair float64 partials (n_pairs, ncols), complete on every rank."""
    ops = job.ops
    npairs = len(plan.pairs)
    partials = torch.zeros((npairs, job.ncols), dtype=torch.float64, device=job.device)
    mine: dict[int, list[tuple[int, int]]] = {}
    for k, ((i, j), r) in enumerate(zip(plan.pairs, plan.owner)):
        if r == rank:
            mine.setdefault(i, []).append((k, j))
    sizes = [b[2] - b[1] for b in plan.blocks]
    my_pairs = sum(sizes[plan.pairs[k][0]] * sizes[j] * (1 if plan.pairs[k][0] == j else 2)
                   for lst in mine.values() for k, j in lst)
    bar = _progress_bar(progress, my_pairs)
    try:
        for i, lst in mine.items():
            [(_, zi, wi)] = list(job.load(plan.blocks, [i]))
            wi64 = wi.double()
            by_j = {j: k for k, j in lst}
            if i in by_j:
                partials[by_j[i]] = ops.quad_form(zi, wi, job.sigmas, job.kernel, job.exclude)
                bar.update(sizes[i] * sizes[i])
            others = [j for j in sorted(by_j) if j != i]
            for j, zj, wj in job.load(plan.blocks, others):
                s, _ = ops.pair_reduce(zi, zj, wj, None, job.sigmas, job.kernel, False)
                partials[by_j[j]] = 2.0 * (wi64 * s).sum(0)
                bar.update(2 * sizes[i] * sizes[j])
    finally:
        bar.close()
    if world > 1:
        dist = torch.distributed
        if dist.get_backend(group) == "nccl":
            partials = partials.to(job.device if job.device.type == "cuda" else "cuda")
        else:
            partials = partials.cpu()
        dist.all_reduce(partials, op=dist.ReduceOp.SUM, group=group)
    return partials.cpu().numpy()


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(progress, total: int):
    if progress is False or progress is None and not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    # delay: a bar only appears on runs longer than 2 s
    return tqdm(total=total, unit="pair", unit_scale=True, delay=0.0 if progress else 2.0,
                desc="kernel pairs", leave=False, dynamic_ncols=True)


# ------------------------------------------------------------------------------------- the shared setup

def _median_sigma(sx: _Source, sy: _Source, max_points: Optional[int], seed: int, device) -> float:
    """median_distance of the pooled sample, on the same seeded subsample ik.mmd would draw."""
    n = sx.n + sy.n
    if max_points is None:
        if n > MEDIAN_EXACT_LIMIT:
            raise ValueError(f"the exact median (median_points=None) needs O(n^2) memory and is refused above "
                             f"{MEDIAN_EXACT_LIMIT} pooled points (got {n}); give median_points")
        max_points = n
    if n > max_points:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:max_points]
    else:
        idx = torch.arange(n)
    in_x = idx < sx.n
    rows = torch.empty((len(idx), sx.d), dtype=sx.dtype)
    if bool(in_x.any()):
        rows[in_x] = sx.gather(idx[in_x]).to(sx.dtype)
    if bool((~in_x).any()):
        rows[~in_x] = sy.gather(idx[~in_x] - sx.n).to(sx.dtype)
    return median_distance(rows.to(device), max_points=len(idx))


def _setup(x, y, *, sigma, kernel, backend, device, max_memory, block_size, median_points, median_seed,
           dtype, names, ncols):
    names = names or ("x", "y")
    sx, sy = _source(x, names[0], dtype), _source(y, names[1], dtype)
    kernel = _checks.kernel(kernel)
    sums = [sx.scan(), sy.scan()]
    if sx.d != sy.d:
        raise ValueError(f"{names[0]} has {sx.d} features but {names[1]} has {sy.d}")
    if sx.dtype != sy.dtype:
        raise TypeError(f"{names[0]} is {sx.dtype} but {names[1]} is {sy.dtype}; convert one (or pass dtype=)")
    dev = _compute_device(device, sx, sy)
    name, ops = backends.resolve(backend, dev)
    mean = (sums[0].cpu() + sums[1].cpu()) / (sx.n + sy.n)  # float64, like autograd._centred
    sigmas = _checks.sigmas(sigma, lambda: _median_sigma(sx, sy, median_points, median_seed, dev))
    ct = reference.compute_dtype(sx.dtype)
    if block_size is None:
        itemsize = torch.empty((), dtype=sx.dtype).element_size()
        block = _block_rows(parse_memory(max_memory), sx.d, itemsize, ncols, name, dev, sx.n + sy.n)
    else:
        if isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral) or block_size < 1:
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        block = int(block_size)
    return sx, sy, mean, sigmas, kernel, name, ops, dev, ct, block


# --------------------------------------------------------------------------------------- public API

def mmd_full(x: Data, y: Data, *, kernel: str = "rbf", sigma: _checks.Sigma = 1.0, estimator: str = "biased",
             weights_x=None, weights_y=None, backend: str = "auto", device=None,
             max_memory: Union[int, str] = DEFAULT_MAX_MEMORY, block_size: Optional[int] = None,
             progress: Optional[bool] = None, median_points: Optional[int] = MEDIAN_SUBSAMPLE,
             median_seed: int = 0, dtype: Optional[torch.dtype] = None, group=None) -> float:
    """Exact squared MMD between two whole data sets, streamed in tiles; a Python float (float64).

    Same estimators, kernels, bandwidths and weights as ik.mmd (see its docstring), and the same value up
    to float64 rounding of the partials; not differentiable. x, y: tensors (any device), numpy arrays or
    memory-mapped .npy files, or chunked data (module docstring). weights_x / weights_y: 1-D tensors or
    numpy arrays (memory-mapped included), normalised to sum 1.

    sigma="median": the median pairwise distance of the pooled sample, from a seeded subsample of
    `median_points` rows (default 2048, drawn with torch.randperm(seed=median_seed): the subsample ik.mmd
    draws, so the two agree), exact when the pooled sample has at most that many points;
    median_points=None asks for the exact median (O(n^2) memory, refused above 20000 points).

    device: where tiles are reduced (default: the device of a tensor input, else CPU); backend: as in
    ik.mmd, resolved for that device. max_memory (bytes or "2GB"/"512MiB") bounds the working set and
    sets the block size unless block_size (rows) is given. progress: a tqdm bar with pairs/s (None: only
    on a terminal and after 2 s). dtype: convert the data to this dtype while reading. group: the
    torch.distributed process group (default: the world, when initialised).
    """
    unbiased = _checks.estimator(estimator)
    return _mmd_full(x, y, kernel=kernel, sigma=sigma, unbiased=unbiased, weights_x=weights_x,
                     weights_y=weights_y, backend=backend, device=device, max_memory=max_memory,
                     block_size=block_size, progress=progress, median_points=median_points,
                     median_seed=median_seed, dtype=dtype, group=group)["value"]


def _mmd_full(x, y, *, kernel, sigma, unbiased, weights_x, weights_y, backend, device, max_memory, block_size,
              progress, median_points, median_seed, dtype, group, names=None) -> dict:
    t0 = time.perf_counter()
    sx, sy, mean, sigmas, kernel, name, ops, dev, ct, block = _setup(
        x, y, sigma=sigma, kernel=kernel, backend=backend, device=device, max_memory=max_memory,
        block_size=block_size, median_points=median_points, median_seed=median_seed, dtype=dtype,
        names=names, ncols=1)
    wx = _Uniform(sx.n) if weights_x is None else _WeightSource(weights_x, sx.n, "weights_x")
    wy = _Uniform(sy.n) if weights_y is None else _WeightSource(weights_y, sy.n, "weights_y")
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

    rank, world, group = _dist_info(group)
    plan = _plan(sx.n, sy.n, block, world)
    job = _Job(sx, sy, mean, columns, 1, sigmas, kernel, unbiased, ops, dev, ct, block)
    partials = _run_tiles(job, plan, rank, world, group, progress)[:, 0]
    kinds = [plan.blocks[i][0] + plan.blocks[j][0] for i, j in plan.pairs]  # 0: xx, 1: xy, 2: yy
    qxx = math.fsum(p for p, k in zip(partials, kinds) if k == 0)
    qxy = math.fsum(p for p, k in zip(partials, kinds) if k == 1)  # already -2 w_x K w_y
    qyy = math.fsum(p for p, k in zip(partials, kinds) if k == 2)
    cxx = 1.0 / (1.0 - wx.sum_sq) if unbiased else 1.0
    cyy = 1.0 / (1.0 - wy.sum_sq) if unbiased else 1.0
    value = cxx * qxx + cyy * qyy + qxy
    return dict(value=value, n_x=sx.n, n_y=sy.n, d=sx.d, dtype=str(sx.dtype).replace("torch.", ""),
                sigmas=sigmas, kernel=kernel, backend=name, device=str(dev), block_size=block,
                tile_pairs=len(plan.pairs), world_size=world, seconds=time.perf_counter() - t0)


def mmd_test(x: Data, y: Data, permutations: int = 200, seed: int = 0, *, kernel: str = "rbf",
             sigma: _checks.Sigma = 1.0, estimator: str = "biased", backend: str = "auto", device=None,
             max_memory: Union[int, str] = DEFAULT_MAX_MEMORY, block_size: Optional[int] = None,
             progress: Optional[bool] = None, median_points: Optional[int] = MEDIAN_SUBSAMPLE,
             median_seed: int = 0, dtype: Optional[torch.dtype] = None, group=None) -> MMDTestResult:
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
    arguments as in mmd_full; distributed like mmd_full.
    """
    unbiased = _checks.estimator(estimator)
    return _mmd_test(x, y, permutations=permutations, seed=seed, kernel=kernel, sigma=sigma, unbiased=unbiased,
                     backend=backend, device=device, max_memory=max_memory, block_size=block_size,
                     progress=progress, median_points=median_points, median_seed=median_seed, dtype=dtype,
                     group=group)["result"]


def _labels(n: int, m: int, permutations: int, seed: int) -> Tensor:
    """(n + m, 1 + P) bool, True where the point is labelled X; column 0 is the observed labelling."""
    gen = torch.Generator().manual_seed(int(seed))
    lab = torch.zeros((1 + permutations, n + m), dtype=torch.bool)
    lab[0, :n] = True
    for p in range(1, permutations + 1):
        lab[p, torch.randperm(n + m, generator=gen)[:n]] = True
    return lab.T  # rows = points; sliced and made contiguous per block


def _mmd_test(x, y, *, permutations, seed, kernel, sigma, unbiased, backend, device, max_memory, block_size,
              progress, median_points, median_seed, dtype, group, names=None) -> dict:
    if isinstance(permutations, bool) or not isinstance(permutations, numbers.Integral) or permutations < 1:
        raise ValueError(f"permutations must be a positive int, got {permutations!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    t0 = time.perf_counter()
    ncols = 1 + permutations + (1 if unbiased else 0)
    sx, sy, mean, sigmas, kernel, name, ops, dev, ct, block = _setup(
        x, y, sigma=sigma, kernel=kernel, backend=backend, device=device, max_memory=max_memory,
        block_size=block_size, median_points=median_points, median_seed=median_seed, dtype=dtype,
        names=names, ncols=ncols)
    n, m = sx.n, sy.n
    if unbiased and (n < 2 or m < 2):
        raise ValueError(f"the unbiased estimator needs at least 2 points in each set, got {n} and {m}")
    labels = _labels(n, m, int(permutations), int(seed))
    if unbiased:
        wpos, wneg = 1.0 / (n - 1), -1.0 / (m - 1)
    else:
        wpos, wneg = 1.0 / n, -1.0 / m

    def columns(s: int, e: int) -> Tensor:
        lab = labels[s:e]
        w = torch.full(lab.shape, wneg, dtype=torch.float64).masked_fill_(lab, wpos)
        if unbiased:
            w = torch.cat([w, w.new_ones((e - s, 1))], 1)
        return w

    rank, world, group = _dist_info(group)
    plan = _plan(n, m, block, world)
    job = _Job(sx, sy, mean, columns, ncols, sigmas, kernel, unbiased, ops, dev, ct, block)
    partials = _run_tiles(job, plan, rank, world, group, progress)
    q = np.array([math.fsum(partials[:, c]) for c in range(ncols)])
    if unbiased:
        t = q[-1]
        q = q[:-1]
        a = (n + m - 1) / (n * (n - 1) * m)
        c1 = (n + m - 2) / ((n - 1) ** 2 * (m - 1))
        stats = (a / c1) * (q + t / ((n - 1) * (m - 1))) - t / (n * m)
    else:
        stats = q
    stat, perm = float(stats[0]), torch.from_numpy(stats[1:].copy())
    tol = 16 * torch.finfo(ct).eps * len(sigmas)
    p_value = (1 + int((perm >= stat - tol).sum())) / (1 + permutations)
    info = dict(value=stat, p_value=p_value, permutations=int(permutations), seed=int(seed), n_x=n, n_y=m,
                d=sx.d, dtype=str(sx.dtype).replace("torch.", ""), sigmas=sigmas, kernel=kernel, backend=name,
                device=str(dev), block_size=block, tile_pairs=len(plan.pairs), world_size=world,
                seconds=time.perf_counter() - t0)
    info["result"] = MMDTestResult(stat, p_value, perm)
    return info
