"""stein_thinning: the greedy Stein thinning of Riabiz et al. (2022, "Optimal thinning of MCMC output").

Step t selects, with replacement, the point that minimises the KSD of the selected set:

    pi_t = argmin_i  u(x_i, x_i) + 2 sum_{s < t} u(x_i, x_pi_s)

(twice the paper's u_ii / 2 + sum: the same argmin; ties go to the lowest index). The running objective
is one vector of n entries, updated each step by one column of the Stein kernel (the new point against
every point: 4d multiply-adds a point and elementwise terms), so memory is O(n d) and time O(n m d). The
steps run in chunks (for the progress bar) in a stein_thin primitive: the cpu backend's (csrc/cpu/stein.cpp:
one pass a step adds the column and finds the next argmin), else the plain-torch one of backends/reference.py.

With standardize=True (the default, as in the stein-thinning package), every coordinate is divided by
its mean absolute deviation and the scores multiplied by it first; sigma=1 is that package's
preconditioner 'id' (its kernel is the imq base with c = 1, beta = -1/2 and sigma^2 I as Gamma).
"""

from __future__ import annotations

import numbers
from typing import Optional

import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.backends import reference
from infovae_kernels.ops.ksd import Score, score_values, stein_args, stein_module, stein_params, stein_sigmas

#: Steps per call of the fused selection: m / THIN_CHUNKS (progress-bar updates), at least THIN_MIN_STEPS
#: (each call's set-up, a transposed copy of the points, costs about two steps).
THIN_CHUNKS, THIN_MIN_STEPS = 50, 64


def stein_thinning(x: Tensor, score: Score, m: int, *, kernel: str = "imq", sigma: _checks.Sigma = None,
                   beta: float = -0.5, c: float = 1.0, standardize: bool = True, backend: str = "auto",
                   progress: Optional[bool] = None) -> Tensor:
    """Indices (m,) int64 of the points of x (n, d) that greedy Stein thinning selects, in selection order
    (module docstring); kernel, sigma, beta, c as ik.ksd (sigma=None: 1.0, "median": the median pair
    distance of the standardised points)."""
    from infovae_kernels.scale.planning import progress_bar

    beta, c = stein_args(x, kernel, beta, c)
    module = stein_module(backend, x.device)
    n = x.shape[0]
    if isinstance(m, numbers.Integral) and not isinstance(m, bool):
        m = int(m)  # numpy integers too
    _checks.positive_int(m, "m")
    if m > n:
        raise ValueError(f"m = {m} exceeds the number of points n = {n}")
    if not isinstance(standardize, bool):
        raise TypeError(f"standardize must be a bool, got {type(standardize).__name__}")
    with torch.no_grad():
        s = score_values(score, x.detach()).to(kernels.compute_dtype(x.dtype))
        z = x.detach().to(s.dtype)
        z = z - z.mean(0)
        if standardize:
            mad = z.abs().mean(0)
            mad = torch.where(mad > 0, mad, torch.ones_like(mad))
            z, s = z / mad, s * mad
        sigmas = stein_sigmas(sigma, z, kernel)
        objective = kernels.stein_diagonal(z, s, sigmas, kernel, beta, c)
        bar = progress_bar(progress, m)
        thin = getattr(module, "stein_thin", reference.stein_thin)
        parts, params, chunk = [], stein_params(sigmas, beta, c), max(THIN_MIN_STEPS, -(-m // THIN_CHUNKS))
        for start in range(0, m, chunk):
            steps = min(chunk, m - start)
            chosen, objective = thin(z, s, objective, params, kernel, steps)
            parts.append(chosen)
            bar.update(steps)
        bar.close()
    return torch.cat(parts).to(x.device)
