"""Bandwidth selection: the median heuristic, without N^2 memory."""

from __future__ import annotations

import math

import numpy as np
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
    # The full matrix holds each pair twice and n diagonal zeros, which sort first: its entry of rank
    # n + m (m = n (n - 1) / 2 pairs) is the lower median of the pair distances, as Tensor.median gives.
    dist = torch.cdist(z, z).fill_diagonal_(0.0).view(-1)
    k = n + n * (n - 1) // 2 - 1
    if dist.device.type == "cpu":  # numpy's introselect: several times faster than torch's CPU median
        med = float(np.partition(dist.numpy(), k)[k])
    else:
        med = float(dist.kthvalue(k + 1).values)
    return med if med > 0 and math.isfinite(med) else 1.0


def svgd_sigma(x: Tensor) -> float:
    """RBF sigma of the Liu & Wang SVGD rule h = med^2 / log(n + 1) in exp(-r2 / h), i.e. sigma^2 = h / 2."""
    n = x.shape[0]
    h = median_distance(x) ** 2 / math.log(n + 1)
    return math.sqrt(h / 2.0) if h > 0 else 1.0
