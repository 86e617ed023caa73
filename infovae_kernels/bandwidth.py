"""Bandwidth selection: the median heuristic, without N^2 memory, traceable by torch.compile."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from infovae_kernels.kernels import is_transformed, prepare

MEDIAN_SUBSAMPLE = 2048  # points; below this the median is exact
_STRIDE = 2654435761  # a prime (Knuth's multiplicative hash): i * _STRIDE mod n visits distinct rows


def subsample_rows(n: int, max_points: int, seed: int = 0) -> Tensor:
    """Indices of min(n, max_points) distinct rows, spread over [0, n) by a multiplicative hash
    (i * p + seed) mod n with a prime p: deterministic, no generator, so it traces under torch.compile."""
    k = min(n, max_points)
    if n % _STRIDE == 0:  # p must not divide n for the indices to be distinct
        return torch.arange(k)
    return (torch.arange(k, dtype=torch.int64) * _STRIDE + seed) % n


def median_distance(z: Tensor, *, max_points: int = MEDIAN_SUBSAMPLE, seed: int = 0) -> Tensor:
    """Median pairwise Euclidean distance between distinct rows of `z` (n, d), a float64 0-dim tensor
    on z's device; of each problem's rows for a batch z (B, n, d), a (B,) tensor.

    Exact when n <= max_points; otherwise estimated from `max_points` rows chosen by
    `subsample_rows` (the same rows on every call), which costs O(max_points^2) memory at most: about
    2e6 distances (16 MiB in float32) for the default 2048 (per problem). 1.0 when every distance is 0.
    """
    n = z.shape[-2]
    if n > max_points:
        z = z.index_select(-2, subsample_rows(n, max_points, seed).to(z.device))
        n = max_points
    if n < 2:
        return torch.ones(z.shape[:-2], dtype=torch.float64, device=z.device)
    z, _, scale = prepare(z.detach(), z.detach()[..., :1, :])  # centred, divided by a power of two: no overflow
    # The full matrix holds each pair twice and n diagonal zeros, which sort first: its entry of rank
    # n + m (m = n (n - 1) / 2 pairs) is the lower median of the pair distances, as Tensor.median gives.
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    dist = torch.cdist(z, z).masked_fill(eye, 0.0).flatten(-2)
    k = n + n * (n - 1) // 2 - 1
    if dist.device.type == "cpu" and not torch.compiler.is_compiling() and not is_transformed(dist):
        # numpy's introselect: several times faster than torch's CPU kthvalue, the same element
        med = torch.from_numpy(np.partition(dist.numpy(), k, axis=-1)[..., k]).to(torch.float64)
    else:
        med = dist.kthvalue(k + 1, dim=-1).values.to(torch.float64)
    med = med * scale
    return torch.where((med > 0) & torch.isfinite(med), med, torch.ones_like(med))


def svgd_sigma(x: Tensor) -> Tensor:
    """RBF sigma of the Liu & Wang SVGD rule h = med^2 / log(n + 1) in exp(-r2 / h), i.e. sigma^2 = h / 2."""
    h = median_distance(x).square() / math.log(x.shape[-2] + 1)
    return torch.sqrt(h / 2.0)
