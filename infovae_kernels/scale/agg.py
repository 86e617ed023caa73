"""mmd_agg: the aggregated MMD test over a collection of bandwidths (MMDAgg, Schrab et al. 2023).

No data splitting: every bandwidth's unbiased MMD^2 is tested on all the data, and the union of the
per-bandwidth tests is calibrated to the level by permutations. For each bandwidth lambda in the
collection one streamed pass of mmd_test gives the observed statistic and B1 + B2 permuted ones (every
permutation a column of W: the one-pass permutation trick). The permutations are the same for every
bandwidth (one seed), as the calibration of the max over bandwidths needs. With weights w_lambda
(uniform) and q_lambda(a) the a-quantile of {B1 permuted statistics + the observed one}:

    u* = the largest u in (0, min 1/w) with  mean_b [ max_lambda (M2_lambda,b - q_lambda(1 - u w_lambda)) > 0 ] <= level,
         M2 the other B2 permuted statistics, found by bisection (bisection_steps steps)
    reject when some lambda has  statistic_lambda > q_lambda(1 - u* w_lambda).

Defaults: the collection median x 2^k, k = -4..4 (the range of mmd_test(sigma="optimize")'s grid; median
of the pooled sample as mmd_full computes it), B1 = B2 = 500, 50 bisection steps.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.bandwidth import MEDIAN_SUBSAMPLE
from infovae_kernels.scale.api import _median_sigma, mmd_test
from infovae_kernels.scale.sources import Data, source

AGG_FACTORS = tuple(2.0 ** k for k in range(-4, 5))


class MMDAggResult(NamedTuple):
    """reject: the aggregated test's decision at `level`; bandwidths, statistics (unbiased MMD^2) and
    thresholds per bandwidth (reject iff some statistic exceeds its threshold); u: the level correction u*."""

    reject: bool
    bandwidths: list[float]
    statistics: list[float]
    thresholds: list[float]
    u: float
    level: float


def mmd_agg(x: Data, y: Data, *, kernel: kernels.Kernel = "rbf", bandwidths: Sequence[float] | None = None,
            level: float = 0.05, permutations: tuple[int, int] = (500, 500), bisection_steps: int = 50,
            seed: int = 0, **kwargs: Any) -> MMDAggResult:
    """Aggregated two-sample test (module docstring). bandwidths: the collection (default median x 2^k,
    k = -4..4); other keyword arguments (backend, device, max_memory, median_points, dtype, ...) as
    mmd_test."""
    kernel = _checks.kernel(kernel)
    if not kernels.has_bandwidth(kernel):
        raise ValueError(f"mmd_agg aggregates over bandwidths: the kernel needs one ({kernels.BANDWIDTH_KERNELS}), "
                         f"got {kernel!r}")
    b1, b2 = permutations
    check_aggregation(level, (b1, b2), "permutations", bisection_steps)
    if bandwidths is None:
        sx, sy = source(x, "x", kwargs.get("dtype")), source(y, "y", kwargs.get("dtype"))
        median = _median_sigma(sx, sy, kwargs.get("median_points", MEDIAN_SUBSAMPLE), kwargs.get("median_seed", 0),
                               kwargs.get("device") or "cpu")
        bandwidths = [float(median) * f for f in AGG_FACTORS]
    bandwidths = [_checks._positive_float(s, "bandwidths") for s in bandwidths]
    stats, perms = [], []
    for s in bandwidths:
        r = mmd_test(x, y, permutations=b1 + b2, seed=seed, kernel=kernel, sigma=s, estimator="unbiased", **kwargs)
        stats.append(r.statistic)
        perms.append(r.permutation_statistics.numpy())
    reject, t, u = aggregate(np.array(stats), np.stack(perms), b1, level, bisection_steps)
    return MMDAggResult(reject, bandwidths, stats, t.tolist(), u, level)


def check_aggregation(level, draws, draws_name: str, bisection_steps) -> tuple[int, int]:
    """(B1, B2) after checking the level, the two draw counts and the bisection steps of an aggregated test."""
    if not (isinstance(level, float) and 0.0 < level < 1.0):
        raise ValueError(f"level must be a float in (0, 1), got {level!r}")
    b1, b2 = (_checks.positive_int(b, f"{draws_name}[{i}]") for i, b in enumerate(draws))
    _checks.positive_int(bisection_steps, "bisection_steps")
    return b1, b2


def aggregate(stats: np.ndarray, draws: np.ndarray, b1: int, level: float, bisection_steps: int
              ) -> tuple[bool, np.ndarray, float]:
    """(reject, thresholds, u*) of the aggregated test (module docstring) from the observed statistics
    (L,) and the null draws (L, B1 + B2) of L tests with uniform weights; the same draws (permutations or
    bootstrap signs) for every test, the first b1 for the quantiles, the rest for the level correction."""
    n_tests = len(stats)
    m1 = np.sort(np.concatenate([draws[:, :b1], stats[:, None]], 1), 1)
    m2 = draws[:, b1:]
    weights = np.full(n_tests, 1.0 / n_tests)

    def thresholds(u: float) -> np.ndarray:
        index = np.ceil((b1 + 1) * (1.0 - u * weights)).astype(int) - 1
        return m1[np.arange(n_tests), np.clip(index, 0, b1)]

    lo, hi = 0.0, float(1.0 / weights.max())
    for _ in range(bisection_steps):
        u = (lo + hi) / 2
        exceed = (m2 - thresholds(u)[:, None] > 0).any(0).mean()
        lo, hi = (u, hi) if exceed <= level else (lo, u)
    t = thresholds(lo)
    return bool((stats > t).any()), t, lo
