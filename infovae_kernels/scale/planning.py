"""Tile planning and execution for the full-dataset MMD: memory budget -> block size, the tile pairs
(I <= J) of the pooled Gram matrix and their split among torch.distributed ranks, streaming blocks to
the device, and the tile loop over the backend primitives."""

from __future__ import annotations

import math
import numbers
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Optional, Union

import numpy as np
import torch
from torch import Tensor

from infovae_kernels.scale.sources import Source

DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB
_MAX_BLOCK = {"cpu": 16384, "cuda": 65536}

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


# --------------------------------------------------------------------------------------- the plan

def compute_device(device, sx: Source, sy: Source) -> torch.device:
    if device is None:
        for s in (sx, sy):
            if s.device is not None:
                return s.device
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def block_rows(max_memory: int, d: int, itemsize: int, cols: int, backend: str, device: torch.device,
                n_total: int, capped: bool = True) -> int:
    """Largest block (rows) whose working set fits in max_memory: per row, two data blocks on the host
    (staging) and on the device, their W slices (float64 host + device) and the float64 S output; for the
    plain-torch backend also ~5 block x block matrices (distances, kernel, weights, products). capped:
    at most _MAX_BLOCK rows (the tile loop's granularity), else only the memory bound."""
    ct_size = 8 if itemsize == 8 else 4
    lin = 4 * d * max(itemsize, ct_size) + 5 * cols * 8
    quad = 5 * ct_size if backend == "torch" else 0
    if quad:
        b = (-lin + math.sqrt(lin * lin + 4.0 * quad * max_memory)) / (2.0 * quad)
    else:
        b = max_memory / lin
    cap = _MAX_BLOCK.get(device.type, _MAX_BLOCK["cuda"]) if capped else n_total
    return int(max(1, min(b, cap, n_total)))


class Plan(NamedTuple):
    blocks: list  # (source index 0 = x / 1 = y, start, stop, pooled offset)
    pairs: list  # (I, J) with I <= J, in row-major order
    owner: list  # rank of each pair


def plan_tiles(nx: int, ny: int, block: int, world: int) -> Plan:
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
    return Plan(blocks, pairs, owner)


def dist_info(group) -> tuple[int, int, Any]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group), group
    return 0, 1, None


def device_blocks(host_blocks: Iterator[Tensor], device: torch.device) -> Iterator[Tensor]:
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


class Job:
    """Everything the tile loop needs: the two sources, their pooled mean and the power-of-two scale
    (points reach the primitives centred and scaled, as ik.mmd prepares them), the kernel parameters
    for the scaled points, W columns by pooled rows."""

    def __init__(self, sx, sy, mean, scale, columns: Callable[[int, int], Tensor], ncols: int, params, kernel,
                 exclude, ops, device, ct, block):
        self.sx, self.sy, self.columns, self.ncols = sx, sy, columns, ncols
        self.params, self.kernel, self.exclude, self.ops, self.device, self.ct = \
            params.to(device), kernel, exclude, ops, device, ct
        self.block = block
        self.mean_ct = mean.to(device=device, dtype=ct)
        self.inv_scale = (1.0 / scale).to(device=device, dtype=ct)  # a power of two: exact

    def load(self, blocks: list, which: list[int]) -> Iterator[tuple[int, Tensor, Tensor]]:
        """(block id, centred Z block, W block) on the device for the block ids `which` (increasing)."""
        by_src = {0: [b for b in which if blocks[b][0] == 0], 1: [b for b in which if blocks[b][0] == 1]}
        for src_id, src in ((0, self.sx), (1, self.sy)):
            ids = by_src[src_id]
            if not ids:
                continue
            host = src.ranges([(blocks[b][1], blocks[b][2]) for b in ids])
            dev = device_blocks(host, self.device)
            for b, z in zip(ids, dev):
                off = blocks[b][3]
                w = self.columns(off, off + (blocks[b][2] - blocks[b][1]))
                w = w.to(self.ct).to(self.device, non_blocking=True)
                yield b, (z.to(self.ct) - self.mean_ct) * self.inv_scale, w


def run_tiles(job: Job, plan: Plan, rank: int, world: int, group, progress,
              row_sums: bool = False) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Per-pair float64 partials (n_pairs, ncols), complete on every rank; with row_sums also the
    pooled row sums S = K W (n_x + n_y, ncols), float64 (an off-diagonal tile pair then costs two
    pair_reduce calls, one per side). Partials are summed exactly by the caller; row sums are all-reduced,
    so they agree across world sizes to rounding only."""
    ops = job.ops
    npairs = len(plan.pairs)
    partials = torch.zeros((npairs, job.ncols), dtype=torch.float64, device=job.device)
    sums = torch.zeros((job.sx.n + job.sy.n, job.ncols), dtype=torch.float64, device=job.device) if row_sums else None
    mine: dict[int, list[tuple[int, int]]] = {}
    for k, ((i, j), r) in enumerate(zip(plan.pairs, plan.owner)):
        if r == rank:
            mine.setdefault(i, []).append((k, j))
    sizes = [b[2] - b[1] for b in plan.blocks]
    rows = [slice(b[3], b[3] + b[2] - b[1]) for b in plan.blocks]  # pooled rows of each block
    my_pairs = sum(sizes[plan.pairs[k][0]] * sizes[j] * (1 if plan.pairs[k][0] == j else 2)
                   for lst in mine.values() for k, j in lst)
    bar = progress_bar(progress, my_pairs)
    try:
        for i, lst in mine.items():
            [(_, zi, wi)] = list(job.load(plan.blocks, [i]))
            wi64 = wi.double()
            by_j = {j: k for k, j in lst}
            if i in by_j:
                q, s, _ = ops.quad_form(zi, wi, None, job.params, job.kernel, job.exclude, row_sums)
                partials[by_j[i]] = q
                if row_sums:
                    sums[rows[i]] += s
                bar.update(sizes[i] * sizes[i])
            others = [j for j in sorted(by_j) if j != i]
            for j, zj, wj in job.load(plan.blocks, others):
                s, _ = ops.pair_reduce(zi, zj, wj, None, job.params, job.kernel, False)
                partials[by_j[j]] = 2.0 * (wi64 * s).sum(0)
                if row_sums:
                    sums[rows[i]] += s
                    sums[rows[j]] += ops.pair_reduce(zj, zi, wi, None, job.params, job.kernel, False)[0]
                bar.update(2 * sizes[i] * sizes[j])
    finally:
        bar.close()
    if world > 1:
        dist = torch.distributed
        if dist.get_backend(group) == "nccl":
            dev = job.device if job.device.type == "cuda" else "cuda"
        else:
            dev = "cpu"
        partials = partials.to(dev)
        dist.all_reduce(partials, op=dist.ReduceOp.SUM, group=group)
        if row_sums:
            sums = sums.to(dev)
            dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return partials.cpu().numpy(), (sums.cpu().numpy() if row_sums else None)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


_TQDM_WARNED = False


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside infovae_kernels (the user's call), for warnings."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def progress_bar(progress: Optional[bool], total: int):
    """A tqdm bar counting `total` pairs, or a bar that shows nothing. tqdm is optional (not a core
    dependency): progress=False shows nothing; None (the default) a bar only on a terminal, after 2 s,
    and only when tqdm is installed; True a bar from the start, or, without tqdm, one warning per
    process that names the package to install, and the computation goes on without a bar."""
    global _TQDM_WARNED
    if progress is False or progress is None and not sys.stderr.isatty():
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress and not _TQDM_WARNED:
            _TQDM_WARNED = True
            warnings.warn("progress=True shows a bar with tqdm, which is not installed: pip install tqdm "
                          "(it comes with the [model] extra); continuing without a progress bar",
                          stacklevel=_caller_stacklevel())
        return _NoBar()

    # delay: a bar only appears on runs longer than 2 s
    return tqdm(total=total, unit="pair", unit_scale=True, delay=0.0 if progress else 2.0,
                desc="kernel pairs", leave=False, dynamic_ncols=True)
