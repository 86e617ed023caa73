"""Data sources of the full-dataset MMD: rows of one data set read in increasing row ranges.

A source is made from a torch tensor (any device), a numpy array (memory-mapped .npy included), or
chunked data: a callable returning a fresh iterator of (rows, d) chunks, or a re-iterable object. The
data are read several times (one scan for the pooled mean and range, then about one pass per row
block), so a one-shot iterator is refused with a TypeError.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks

_SCAN_ROWS = 65536  # rows per block in the first (scan) pass over array sources

#: One chunk of chunked data: a (rows, d) tensor or numpy array.
Chunk = Union[Tensor, np.ndarray]
#: What the full-dataset functions read as one data set: a tensor (any device), a numpy array (an
#: np.memmap, e.g. np.load(path, mmap_mode="r"), is one), a callable returning a fresh iterator of
#: chunks, or a re-iterable of chunks.
Data = Union[Tensor, np.ndarray, Callable[[], Iterable[Chunk]], Iterable[Chunk]]
#: Per-point weights of one data set: a 1-D tensor or numpy array (memory-mapped included).
Weights = Union[Tensor, np.ndarray]


_NP_TO_TORCH = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
                np.dtype(np.float64): torch.float64}


def _bad_row(block: Tensor) -> Optional[int]:
    bad = ~torch.isfinite(block).all(1)
    if bool(bad.any()):
        return int(bad.nonzero()[0, 0])
    return None


class Source:
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

    def scan(self) -> tuple[Tensor, Tensor, Tensor]:
        """One pass: checks every row is finite (naming the first bad row) and returns the float64 column
        sums, minima and maxima (on the host)."""
        total = lo = hi = None
        pos = 0
        for blk in self.scan_blocks():
            row = _bad_row(blk)
            if row is not None:
                raise ValueError(f"{self.name} contains NaN or Inf at row {pos + row}")
            s, mn, mx = blk.sum(0, dtype=torch.float64).cpu(), blk.amin(0).double().cpu(), blk.amax(0).double().cpu()
            total = s if total is None else total + s
            lo = mn if lo is None else torch.minimum(lo, mn)
            hi = mx if hi is None else torch.maximum(hi, mx)
            pos += blk.shape[0]
        return total, lo, hi

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


class TensorSource(Source):
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


class ArraySource(Source):
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


class ChunkSource(Source):
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


def source(obj, name: str, dtype: Optional[torch.dtype] = None) -> Source:
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, Tensor):
        if dtype is not None:
            obj = obj.to(dtype)
        return TensorSource(obj, name)
    if isinstance(obj, np.ndarray):
        return ArraySource(obj, name, dtype)
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        raise TypeError(f"{name} is a path; load it first, e.g. np.load(path, mmap_mode='r') for a .npy file")
    if callable(obj):
        return ChunkSource(obj, name, dtype)
    if isinstance(obj, Iterable):
        if iter(obj) is obj:  # an iterator: it can be traversed only once
            raise TypeError(
                f"{name} is a one-shot iterator ({type(obj).__name__}); the data are read several times (one "
                "pass for the pooled mean, then about one per row block), so pass a re-iterable (a list of "
                "chunks, an object whose __iter__ returns a fresh iterator) or a callable that returns a fresh "
                "iterator, e.g. lambda: read_chunks(path)")
        return ChunkSource(obj, name, dtype)
    raise TypeError(f"{name} must be a tensor, a numpy array (memory-mapped .npy included), a callable returning "
                    f"an iterator of chunks, or a re-iterable of chunks; got {type(obj).__name__}")


class WeightSource:
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


class UniformWeights:
    def __init__(self, n: int):
        self.n, self.total, self.sum_sq = n, float(n), 1.0 / n

    def get(self, s: int, e: int) -> Tensor:
        return torch.full((e - s,), 1.0 / self.n, dtype=torch.float64)




def pooled_rows(sx: Source, sy: Source, index: Tensor) -> Tensor:
    """Rows of the pooled set [x; y] at `index` (int64), in that order, on the host, in x's dtype."""
    in_x = index < sx.n
    rows = torch.empty((len(index), sx.d), dtype=sx.dtype)
    if bool(in_x.any()):
        rows[in_x] = sx.gather(index[in_x]).to(sx.dtype)
    if bool((~in_x).any()):
        rows[~in_x] = sy.gather(index[~in_x] - sx.n).to(sx.dtype)
    return rows
