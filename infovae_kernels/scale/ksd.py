"""Goodness-of-fit tests with the kernel Stein discrepancy, every bootstrap draw a column of one pass.

ksd_test: the wild bootstrap (Chwialkowski, Strathmann & Gretton 2016; Liu, Lee & Jordan 2016). With
Rademacher signs e_b (n,), b = 1..B, drawn once from `seed`, each draw is the statistic of the signed sample,

    KSD_b^2 = e_b^T U e_b / n^2            (biased)
    KSD_b^2 = e_b^T U_0 e_b / (n (n - 1))  (unbiased; U_0 = U without its diagonal),

and p = (1 + #{b : KSD_b^2 >= KSD^2}) / (1 + B). A block of rows of U meets the (n, B) sign matrix in one
matrix product, so the B draws cost one GEMM's worth of flops (2 B per pair) on top of the statistic and
nothing n x n is stored: one stein_form pass over the columns [1, e_1, ..., e_B] (on the cpu backend a
symmetric sweep, so half the pairs).

ksd_agg: KSDAgg (Schrab, Guedj & Gretton 2022), the aggregated test over a collection of bandwidths with
the unbiased statistic and the wild bootstrap, calibrated as mmd_agg (scale/agg.py's `aggregate`): B1 draws
for the quantiles and B2 for the level correction, the same signs for every bandwidth. The default
collection is the median pair distance of x times 2^k, k = -4..4 (mmd_agg's; a choice of this package).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.bandwidth import median_distance
from infovae_kernels.ops.ksd import (Score, centred, score_values, stein_args, stein_params, stein_primitive,
                                     stein_sigmas)
from infovae_kernels.scale.agg import AGG_FACTORS, aggregate, check_aggregation
from infovae_kernels.scale.planning import progress_bar


class KSDTestResult(NamedTuple):
    """statistic: the squared KSD of x; p_value = (1 + #{draw >= statistic}) / (1 + B);
    bootstrap_statistics: float64 tensor (B,), the statistic under each Rademacher sign draw."""

    statistic: float
    p_value: float
    bootstrap_statistics: Tensor


class KSDAggResult(NamedTuple):
    """reject: the aggregated test's decision at `level`; bandwidths, statistics (unbiased KSD^2) and
    thresholds per bandwidth (reject iff some statistic exceeds its threshold); u: the level correction u*."""

    reject: bool
    bandwidths: list[float]
    statistics: list[float]
    thresholds: list[float]
    u: float
    level: float


def _signs(n: int, draws: int, seed: int, dtype: torch.dtype, device) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (n, draws), generator=g, dtype=torch.int8) * 2 - 1).to(device=device, dtype=dtype)


def _bootstrap_pass(x: Tensor, s: Tensor, sigma_sets: list[Tensor], kernel: str, beta: float, c: float,
                    unbiased: bool, signs: Tensor, stein_form, progress: Optional[bool]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(statistics (L,), draws (L, B)) for L bandwidth sets: per set one stein_form pass over the columns
    [1, e_1, ..., e_B] (q_0 = 1^T U 1, q_b = e_b^T U e_b)."""
    n = x.shape[0]
    xc, sc = centred(x), s.to(kernels.compute_dtype(x.dtype))
    columns = torch.cat([signs.new_ones((n, 1)), signs], 1)
    norm = n * (n - 1) if unbiased else n * n
    stats, draws = [], []
    bar = progress_bar(progress, len(sigma_sets))
    for sigmas in sigma_sets:
        q = stein_form(xc, sc, columns, stein_params(sigmas, beta, c), kernel, unbiased) / norm
        stats.append(float(q[0]))
        draws.append(q[1:].cpu().numpy())
        bar.update(1)
    bar.close()
    return np.array(stats), np.stack(draws)


def _setup(x: Tensor, score: Score, kernel: str, beta: float, c: float, estimator: str, backend: str):
    beta, c = stein_args(x, kernel, beta, c)
    unbiased = _checks.estimator(estimator)
    stein_form = stein_primitive(backend, x.device)
    if x.shape[0] < 2:
        raise ValueError(f"x: a goodness-of-fit test needs at least 2 points, got {x.shape[0]}")
    with torch.no_grad():
        s = score_values(score, x.detach())
    return x.detach(), s.detach(), beta, c, unbiased, stein_form


def ksd_test(x: Tensor, score: Score, n_bootstrap: int = 1000, seed: int = 0, *, kernel: str = "imq",
             sigma: _checks.Sigma = None, beta: float = -0.5, c: float = 1.0, estimator: str = "unbiased",
             backend: str = "auto", progress: Optional[bool] = None) -> KSDTestResult:
    """Goodness-of-fit test of x (n, d) against the density with score `score` by the wild bootstrap
    (module docstring); kernel, sigma, beta, c, estimator, backend as ik.ksd. progress: a bar over the
    passes (one per bandwidth; None: only when long)."""
    x, s, beta, c, unbiased, stein_form = _setup(x, score, kernel, beta, c, estimator, backend)
    _checks.positive_int(n_bootstrap, "n_bootstrap")
    sigmas = stein_sigmas(sigma, x, kernel).detach()
    signs = _signs(x.shape[0], n_bootstrap, seed, kernels.compute_dtype(x.dtype), x.device)
    stats, draws = _bootstrap_pass(x, s, [sigmas], kernel, beta, c, unbiased, signs, stein_form, progress)
    stat, boot = float(stats[0]), draws[0]
    p = (1.0 + float((boot >= stat).sum())) / (1.0 + n_bootstrap)
    return KSDTestResult(stat, p, torch.from_numpy(boot))


def ksd_agg(x: Tensor, score: Score, *, kernel: str = "imq", bandwidths: Sequence[float] | None = None,
            beta: float = -0.5, c: float = 1.0, level: float = 0.05, n_bootstrap: tuple[int, int] = (500, 500),
            bisection_steps: int = 50, seed: int = 0, backend: str = "auto",
            progress: Optional[bool] = None) -> KSDAggResult:
    """KSDAgg: the aggregated goodness-of-fit test over `bandwidths` (default: the median pair distance of
    x times 2^k, k = -4..4) with the unbiased KSD^2, in one pass (module docstring)."""
    x, s, beta, c, _, stein_form = _setup(x, score, kernel, beta, c, "unbiased", backend)
    if not isinstance(n_bootstrap, (tuple, list)) or len(n_bootstrap) != 2:
        raise ValueError(f"n_bootstrap must be a pair (B1, B2), got {n_bootstrap!r}")
    b1, b2 = check_aggregation(level, n_bootstrap, "n_bootstrap", bisection_steps)
    if bandwidths is None:
        median = float(median_distance(x))
        bandwidths = [median * f for f in AGG_FACTORS]
    if isinstance(bandwidths, (str, Tensor)) or len(bandwidths) == 0:
        raise ValueError(f"bandwidths must be a non-empty sequence of positive floats, got {bandwidths!r}")
    bandwidths = [_checks._positive_float(b, "bandwidths") for b in bandwidths]
    sigma_sets = [torch.tensor([b], dtype=torch.float64, device=x.device) for b in bandwidths]
    signs = _signs(x.shape[0], b1 + b2, seed, kernels.compute_dtype(x.dtype), x.device)
    stats, draws = _bootstrap_pass(x, s, sigma_sets, kernel, beta, c, True, signs, stein_form, progress)
    reject, t, u = aggregate(stats, draws, b1, level, bisection_steps)
    return KSDAggResult(reject, bandwidths, stats.tolist(), t.tolist(), u, level)
