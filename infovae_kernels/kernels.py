"""The kernel family, written once in Python: names, per-scale parameters, per-pair formulas and the
numerical rules every backend follows. The C++ twin of this module is csrc/include/infovae/pair_math.h.

Kernels are functions of the squared distance r2 = |x - y|^2, summed over scales s:

    rbf:  k = sum_s exp(-c_s r2),        c_s = 1 / (2 sigma_s^2),   g = sum_s 2 c_s exp(-c_s r2)
    imq:  k = sum_s C_s / (C_s + r2),    C_s = 2 d sigma_s^2,       g = sum_s 2 (C_s / (C_s + r2))^2 / C_s

g = -2 dk/dr2 is the gradient weight: grad_x k(x, y) = -g (x - y). At r2 == 0 the weight is taken as
0 (the pair's gradient term g (x - y) is 0 there anyway; defining it so keeps 0 * inf away).

The primitives receive `params` (float64, one entry per scale, on the points' device), not sigmas:
the op layer centres and scales the points (see `prepare`) and converts sigmas to params with
`kernel_params`, clamped into the compute dtype's range, so that no backend needs to know about
bandwidth conventions, overflow or the data scale.
"""

from __future__ import annotations

import torch
from torch import Tensor

KERNELS = ("rbf", "imq")
MAX_SCALES = 16

#: A tile of pairs computes r2 from coordinate differences, not from |x|^2 + |y|^2 - 2 x.y, when
#:     u * (max_i |x_i|^2 + max_j |y_j|^2) * kappa > LOSSY_TOLERANCE,
#: u the unit roundoff of the compute dtype, kappa = max_s c_s (rbf) or max_s 1 / C_s (imq): the
#: expansion's rounding error of r2, in units of the narrowest kernel's length scale squared, would
#: exceed about 2.4e-4. Backends may use differences more often (never less).
LOSSY_TOLERANCE = 2.0 ** -12


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 computes in float64; float32, float16 and bfloat16 in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_roundoff(dtype: torch.dtype) -> float:
    return 2.0 ** -53 if compute_dtype(dtype) == torch.float64 else 2.0 ** -24


def kernel_params(kernel: str, sigmas: Tensor, d: int, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """Per-scale parameters (float64) for points divided by `scale`, clamped to the compute dtype.

    sigmas: float64 (S,) bandwidths in the units of the original points; scale: float64 0-dim.
    Clamping keeps every parameter and 4x it finite and nonzero in the compute dtype: a bandwidth
    far below the data's resolution then gives k = 0 off the diagonal (its limit), one far above it
    gives k = 1 (rbf) or k = 1 (imq), never inf * 0.
    """
    info = torch.finfo(compute_dtype(dtype))
    s = sigmas.to(torch.float64) / scale
    if kernel == "rbf":
        p = 0.5 / (s * s)
    elif kernel == "imq":
        p = 2.0 * d * (s * s)
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return p.clamp(info.tiny, info.max / 4)


def kappa(kernel: str, params: Tensor) -> Tensor:
    """Inverse squared length scale of the narrowest scale (see LOSSY_TOLERANCE)."""
    return params.max() if kernel == "rbf" else 1.0 / params.min()


def kernel_and_weight(r2: Tensor, params: Tensor, kernel: str) -> tuple[Tensor, Tensor]:
    """k(r2) and g(r2) = -2 dk/dr2 (0 where r2 == 0), elementwise, summed over scales, in r2's dtype."""
    k = torch.zeros_like(r2)
    g = torch.zeros_like(r2)
    for p in params.to(r2.dtype).unbind():
        if kernel == "rbf":
            e = torch.exp(-p * r2)
            k = k + e
            g = g + 2.0 * p * e
        elif kernel == "imq":
            ks = p / (p + r2)
            k = k + ks
            g = g + 2.0 * ks * ks / p
        else:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return k, torch.where(r2 == 0, torch.zeros_like(g), g)


def prepare(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x', y', scale): x and y in the compute dtype, centred on their pooled mean (the kernels are
    translation invariant; centring shrinks the norms, and so the cancellation in the expansion) and
    divided by scale = 2^e, a power of two near the largest centred coordinate (exact: it only moves
    the exponent), so that distances neither overflow nor underflow whatever the data's magnitude.
    scale is a float64 0-dim tensor on the points' device. Traceable (no host sync)."""
    ct = compute_dtype(x.dtype)
    mean = (x.sum(0, dtype=torch.float64) + y.sum(0, dtype=torch.float64)) / (x.shape[0] + y.shape[0])
    xc, yc = x.to(ct) - mean.to(ct), y.to(ct) - mean.to(ct)
    scale = power_of_two_scale(torch.maximum(xc.abs().amax(), yc.abs().amax()))
    inv = (1.0 / scale).to(ct)  # a power of two: exact in ct too
    return xc * inv, yc * inv, scale


def power_of_two_scale(peak: Tensor) -> Tensor:
    """2^e with peak / 2^e in [0.5, 1) (1 when peak is 0), float64 0-dim: the divisor of `prepare`."""
    peak = peak.to(torch.float64)
    exponent = torch.frexp(torch.where(peak > 0, peak, torch.ones_like(peak))).exponent
    return torch.ldexp(torch.ones_like(peak), exponent)
