"""Bandwidth selection: the median heuristic, without N^2 memory."""

from __future__ import annotations

import math

import torch
from torch import Tensor

MEDIAN_SUBSAMPLE = 2048  # points; below this the median is exact


def median_distance(z: Tensor, *, max_points: int = MEDIAN_SUBSAMPLE, seed: int = 0) -> float:
    """Median pairwise Euclidean distance between distinct rows of `z` (n, d).

    Exact when n <= max_points; otherwise estimated from `max_points` rows drawn without replacement
    with a fixed seed (so repeated calls agree), which costs O(max_points^2) memory at most: about
    2e6 distances (16 MiB in float32) for the default 2048. Returns 1.0 when every distance is 0.
    """
    n = z.shape[0]
    if n > max_points:
        gen = torch.Generator().manual_seed(seed)
        idx = torch.randperm(n, generator=gen)[:max_points].to(z.device)
        z = z.index_select(0, idx)
        n = max_points
    z = z.detach().to(torch.float64 if z.dtype == torch.float64 else torch.float32)
    if n < 2:
        return 1.0
    iu = torch.triu_indices(n, n, offset=1, device=z.device)
    dist = torch.cdist(z, z)[iu[0], iu[1]]
    med = float(dist.median())
    return med if med > 0 and math.isfinite(med) else 1.0


def svgd_sigma(x: Tensor) -> float:
    """RBF sigma of the Liu & Wang SVGD rule h = med^2 / log(n + 1) in exp(-r2 / h), i.e. sigma^2 = h / 2."""
    n = x.shape[0]
    h = median_distance(x) ** 2 / math.log(n + 1)
    return math.sqrt(h / 2.0) if h > 0 else 1.0
