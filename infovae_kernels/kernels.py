"""The kernel family, written once in Python: names, per-scale parameters, per-pair formulas and the
numerical rules every backend follows. The C++ twin of this module is csrc/include/infovae/pair_math.h.

Distance kernels are functions of the squared distance r2 = |x - y|^2 (r = sqrt(r2)), summed over scales s:

    rbf:        k = sum_s exp(-c_s r2),      c_s = 1 / (2 sigma_s^2),  g = sum_s 2 c_s exp(-c_s r2)
    imq:        k = sum_s C_s / (C_s + r2),  C_s = 2 d sigma_s^2,      g = sum_s 2 (C_s / (C_s + r2))^2 / C_s
    laplacian:  k = sum_s exp(-c_s r),       c_s = 1 / sigma_s,        g = sum_s c_s exp(-c_s r) / r
    energy:     k = -p r,                    p = 1 (no bandwidth),     g = p / r

g = -2 dk/dr2 is the gradient weight: grad_x k(x, y) = -g (x - y). At r2 == 0 the weight is taken as
0 (the pair's gradient term g (x - y) is 0 there anyway; for laplacian and energy, whose derivative has
a kink there, 0 is the subgradient; defining it so keeps 0 * inf away).

Dot kernels are functions of t = gamma x.y + coef (torchmetrics' / scikit-learn's convention):

    polynomial: k = t^n,   n = degree (an integer 1..16), gamma = 1/d and coef = 1 unless given,
                           h = n gamma t^(n-1),   grad_x k(x, y) = h y
    linear:     k = x.y    (polynomial with gamma 1, coef 0, degree 1)

They are not translation invariant: their points are not centred (see `prepare`). Pass
kernel=Polynomial(degree, gamma, coef) for other parameters than the defaults.

The primitives receive `params` (float64, one entry per scale, on the points' device), not sigmas:
the op layer centres and scales the points (see `prepare`) and converts sigmas to params with
`kernel_params`, clamped into the compute dtype's range, so that no backend needs to know about
bandwidth conventions, overflow or the data scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

#: Kernel names the primitives receive, in the order of pair_math.h's KernelKind.
PRIMITIVE_KERNELS = ("rbf", "imq", "laplacian", "energy", "polynomial")
#: Kernel names the public functions accept ("linear" is polynomial [1, 0, 1] for the primitives).
KERNELS = PRIMITIVE_KERNELS + ("linear",)
#: Kernels with a bandwidth sigma (the others take sigma=None).
BANDWIDTH_KERNELS = ("rbf", "imq", "laplacian")
MAX_SCALES = 16
MAX_DEGREE = 16


@dataclass(frozen=True)
class Polynomial:
    """The polynomial kernel k(x, y) = (gamma x.y + coef)^degree; gamma None means 1/d."""

    degree: int = 3
    gamma: Optional[float] = None
    coef: float = 1.0


Kernel = Union[str, Polynomial]
LINEAR = Polynomial(degree=1, gamma=1.0, coef=0.0)


def primitive_name(kernel: Kernel) -> str:
    """The name the primitives receive: the kernel's own, or "polynomial" for the dot kernels."""
    return "polynomial" if is_dot(kernel) else kernel


def is_dot(kernel: Kernel) -> bool:
    return isinstance(kernel, Polynomial) or kernel in ("polynomial", "linear")


def has_bandwidth(kernel: Kernel) -> bool:
    return isinstance(kernel, str) and kernel in BANDWIDTH_KERNELS

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


def polynomial(kernel: Kernel) -> Polynomial:
    """The Polynomial spec of a dot kernel ("polynomial": the defaults; "linear": LINEAR)."""
    if isinstance(kernel, Polynomial):
        return kernel
    return LINEAR if kernel == "linear" else Polynomial()


def kernel_params(kernel: Kernel, sigmas: Optional[Tensor], d: int, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """The float64 params the primitives receive, for points divided by `scale` (see `prepare`).

    Bandwidth kernels: one entry per scale from sigmas (float64 (S,), in the units of the original
    points), clamped so that every parameter and 4x it is finite and nonzero in the compute dtype: a
    bandwidth far below the data's resolution then gives k = 0 off the diagonal (its limit), one far above
    it k = 1 per scale, never inf * 0. energy: [scale] (k = -|x - y| in the original units). Dot kernels:
    [gamma scale^2, coef, degree] (x.y = scale^2 x'.y'). Differentiable in sigmas.
    A batch of problems has a scale (B,) and gives params (B, S'), a row per problem; sigmas are then
    (S,) for all or (B, S) per problem.
    """
    info = torch.finfo(compute_dtype(dtype))
    scale = scale.to(torch.float64)[..., None]
    if is_dot(kernel):
        spec = polynomial(kernel)
        gamma = 1.0 / d if spec.gamma is None else spec.gamma
        return torch.cat([gamma * scale * scale, torch.full_like(scale, float(spec.coef)),
                          torch.full_like(scale, float(spec.degree))], -1)
    if kernel == "energy":
        return scale
    s = sigmas.to(torch.float64) / scale
    if kernel == "rbf":
        p = 0.5 / (s * s)
    elif kernel == "imq":
        p = 2.0 * d * (s * s)
    elif kernel == "laplacian":
        p = 1.0 / s
    else:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return p.clamp(info.tiny, info.max / 4)


def _per_pair(p: Tensor, like: Tensor) -> Tensor:
    """A parameter (one scale's: () for one problem, (B,) for a batch) shaped to broadcast against the
    pair values `like` ((..., N, M) or a vector of them)."""
    return p.reshape(p.shape + (1,) * (like.dim() - p.dim()))


def kappa(kernel: str, params: Tensor) -> Tensor:
    """Inverse squared length scale of the narrowest scale (see LOSSY_TOLERANCE; rbf and imq only:
    laplacian and energy always use coordinate differences, dot kernels no distances)."""
    return params.max() if kernel == "rbf" else 1.0 / params.min()


def always_differences(kernel: str) -> bool:
    """laplacian and energy take r = sqrt(r2) from coordinate differences on every backend: near 0 the
    expansion's absolute error u |x|^2 in r2 would become sqrt(u) |x| in r."""
    return kernel in ("laplacian", "energy")


def kernel_and_weight(r2: Tensor, params: Tensor, kernel: str, weight: bool = True) -> tuple[Tensor, Optional[Tensor]]:
    """Distance kernels: k(r2) and g(r2) = -2 dk/dr2 (0 where r2 == 0), elementwise, summed over
    scales, in r2's dtype; g is None (and not computed) when weight is False. params (S,), or (B, S)
    with r2 (B, N, M): a row per problem."""
    k = torch.zeros_like(r2)
    g = torch.zeros_like(r2)
    r = r2.sqrt() if always_differences(kernel) else None
    for p in params.to(r2.dtype).unbind(-1):
        p = _per_pair(p, r2)
        if kernel == "rbf":
            e = torch.exp(-p * r2)
            k = k + e
            if weight:
                g = g + 2.0 * p * e
        elif kernel == "imq":
            ks = p / (p + r2)
            k = k + ks
            if weight:
                g = g + 2.0 * ks * ks / p
        elif kernel == "laplacian":
            e = torch.exp(-p * r)
            k = k + e
            if weight:
                g = g + p * e
        elif kernel == "energy":
            k = k - p * r
            if weight:
                g = g + p
        else:
            raise ValueError(f"kernel must be one of {PRIMITIVE_KERNELS[:4]}, got {kernel!r}")
    if not weight:
        return k, None
    if r is not None:
        g = g / r
    return k, torch.where(r2 == 0, torch.zeros_like(g), g)


def kernel_values(u: Tensor, params: Tensor, kernel: str) -> Tensor:
    """k alone, elementwise in u's dtype: of u = r2 for the distance kernels, of u = x.y for "polynomial"
    (the primitive name of the dot kernels); what kernel_and_weight and dot_kernel_and_weight give as k,
    without the distance kernels' gradient weight (which costs more than k on a long row)."""
    if kernel == "polynomial":
        return dot_kernel_and_weight(u, params)[0]
    return kernel_and_weight(u, params, kernel, weight=False)[0]


def dot_kernel_and_weight(dot: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """polynomial: k = t^n and h = n gamma t^(n-1) (grad_x k = h y), t = gamma dot + coef, params
    [gamma, coef, n], elementwise in dot's dtype (an integral float power: exact sign for t < 0)."""
    gamma, coef, degree = (_per_pair(p, dot) for p in params.to(dot.dtype).unbind(-1))
    t = dot * gamma + coef
    power = torch.pow(t, degree - 1.0)
    return power * t, power * (degree * gamma)


def prepare(x: Tensor, y: Tensor, kernel: Kernel = "rbf") -> tuple[Tensor, Tensor, Tensor]:
    """(x', y', scale): x and y in the compute dtype, divided by scale = 2^e, a power of two near the
    largest coordinate (exact: it only moves the exponent), so that distances and dot products neither
    overflow nor underflow whatever the data's magnitude. Distance kernels first centre the points on
    their pooled mean (the kernels are translation invariant; centring shrinks the norms, and so the
    cancellation in the expansion); dot kernels are not translation invariant and are not centred (their
    dot product has no cancellation to lose beyond the product's own rounding).
    scale is a float64 0-dim tensor on the points' device. Traceable (no host sync). x' and y' are the
    two halves of prepare_pooled's z."""
    z, scale = prepare_pooled(x, y, kernel)
    return z[..., : x.shape[-2], :], z[..., x.shape[-2]:, :], scale


def prepare_pooled(x: Tensor, y: Tensor, kernel: Kernel = "rbf", mask: Optional[Tensor] = None
                   ) -> tuple[Tensor, Tensor]:
    """(z, scale): z = [x'; y'] of `prepare` in one buffer, written in one pass (and scaled in place) unless
    autograd, torch.compile or torch.func needs the differentiable, functional form (same values, bit for
    bit). A batch x (B, N, d), y (B, M, d) is B problems, each with its own mean and scale (B,). `mask`
    (B, N + M) bool marks the real rows of a padded batch: the others are left out of the mean and the
    scale and put at the centre (0 in z), a finite point the op gives zero weight."""
    ct = compute_dtype(x.dtype)
    n = x.shape[-2]
    mean = None
    if not is_dot(kernel):
        if mask is None:
            total, count = x.sum(-2, dtype=torch.float64) + y.sum(-2, dtype=torch.float64), n + y.shape[-2]
        else:
            weight = mask.to(torch.float64)[..., None]
            total = (x * weight[..., :n, :]).sum(-2) + (y * weight[..., n:, :]).sum(-2)
            count = mask.sum(-1, keepdim=True)
        mean = (total / count).to(ct).unsqueeze(-2)
    functional = torch.compiler.is_compiling() or is_transformed(x, y) or \
        (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad))
    if functional:
        z = torch.cat([x.to(ct), y.to(ct)], -2)
        z = z if mean is None else z - mean
        if mask is not None:
            z = z.masked_fill(~mask[..., None], 0.0)
    else:
        z = torch.empty(x.shape[:-2] + (n + y.shape[-2], x.shape[-1]), dtype=ct, device=x.device)
        for part, src in ((z[..., :n, :], x), (z[..., n:, :], y)):
            if mean is None:
                part.copy_(src)
            else:
                torch.sub(src, mean, out=part)
        if mask is not None:
            z.masked_fill_(~mask[..., None], 0.0)
    if z.dim() == 2:
        lo, hi = torch.aminmax(z)  # one pass, no temporary
        peak = torch.maximum(hi, -lo)
    else:  # per problem: ATen's aminmax over a dim took 10x this (256 x 256 x 3: 218 vs 20 us)
        peak = z.abs().amax((-2, -1))
    scale = power_of_two_scale(peak)
    inv = (1.0 / scale).to(ct)[..., None, None]  # a power of two: exact in ct too
    return (z * inv if functional else z.mul_(inv)), scale


def is_transformed(*tensors: Optional[Tensor]) -> bool:
    """Whether a torch.func transform (vmap, grad, ...) wraps any of the tensors: in-place writes into
    plain buffers and host reads of values are then impossible. False under torch.compile, which traces
    the transforms itself (and cannot trace this query)."""
    if torch.compiler.is_compiling():
        return False
    return any(t is not None and torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def power_of_two_scale(peak: Tensor) -> Tensor:
    """2^e with peak / 2^e in [0.5, 1) (2 when peak is 0), float64 (0-dim, or (B,) for a batch): the divisor
    of `prepare`."""
    peak = peak.to(torch.float64)
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))
    return peak / torch.frexp(peak).mantissa  # exact: peak = mantissa 2^e (no int exponent: Inductor's CPU
    # code for a batch of them, int32 to float64 vectors, does not compile in torch 2.13)


# ---------------------------------------------------------------------------------------- Stein kernels
#
# The Langevin Stein kernel of a radial base kernel k(x, y) = phi(r2) for a density p with score
# s(x) = grad log p(x), points carrying their scores (x, s) and (y, t), delta = x - y:
#
#     u(x, y) = s.t k + s.grad_y k + t.grad_x k + tr(grad_x grad_y k)
#             = phi s.t + 2 phi' (t - s).delta - 2 d phi' - 4 phi'' r2        (phi' = dphi/dr2)
#
# Bases, summed over scales sigma_s:
#     rbf:  phi = exp(-r2 / (2 sigma^2))
#     imq:  phi = (c^2 + r2 / sigma^2)^beta, beta in (-1, 0)   (Gorham & Mackey 2017; defaults beta = -1/2,
#           c = 1, sigma = 1). Not the MMD kernels' "imq", C / (C + r2) with C = 2 d sigma^2 (beta = -1,
#           the InfoVAE / WAE form), whose Stein discrepancy does not control convergence.

#: The base kernels of the Stein kernel.
STEIN_BASES = ("imq", "rbf")


def stein_radial(r2: Tensor, sigmas: Tensor, base: str, beta: float = -0.5, c: float = 1.0
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """(phi, phi', phi'') of the Stein kernel's base at r2, summed over the scales sigmas (S,);
    differentiable in r2 and sigmas."""
    phi = d1 = d2 = None
    for s in sigmas.to(r2.dtype).unbind():
        inv = 1.0 / (s * s)
        if base == "rbf":
            a = 0.5 * inv
            e = torch.exp(-a * r2)
            terms = (e, -a * e, a * a * e)
        else:
            b = c * c + r2 * inv
            p = torch.pow(b, beta - 2.0)
            terms = (p * b * b, (beta * inv) * p * b, (beta * (beta - 1.0) * inv * inv) * p)
        phi, d1, d2 = terms if phi is None else (phi + terms[0], d1 + terms[1], d2 + terms[2])
    return phi, d1, d2


def diagonal_mask(rows: int, cols: int, offset: int, device) -> Tensor:
    """(rows, cols) bool, True at (i, offset + i): where a block of rows starting at row `offset` of a
    point set meets the same points among the columns."""
    return (torch.arange(rows, device=device)[:, None] + offset) == torch.arange(cols, device=device)[None, :]


def stein_kernel(x: Tensor, sx: Tensor, y: Tensor, sy: Tensor, sigmas: Tensor, base: str, beta: float = -0.5,
                 c: float = 1.0, diagonal: Optional[Tensor] = None) -> Tensor:
    """u(x_i, y_j) as an (N, M) matrix from three products of the tile (x.y, s.t and the cross terms),
    r2 by the expansion |x|^2 + |y|^2 - 2 x.y (centre the points first: u is translation invariant);
    `diagonal` (a diagonal_mask) marks the pairs of a point with itself, where r2 is exactly 0.
    Differentiable in every tensor argument."""
    d = x.shape[1]
    xn, yn = x.square().sum(1), y.square().sum(1)
    r2 = (xn[:, None] + yn[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)
    if diagonal is not None:
        r2 = r2.masked_fill(diagonal, 0.0)
    # (t - s).(x - y) = x.t - y.t - x.s + s.y
    cross = x @ sy.T + sx @ y.T - (y * sy).sum(1)[None, :] - (x * sx).sum(1)[:, None]
    phi, d1, d2 = stein_radial(r2, sigmas, base, beta, c)
    return phi * (sx @ sy.T) + 2.0 * d1 * cross - (2.0 * d) * d1 - 4.0 * d2 * r2


def stein_diagonal(x: Tensor, sx: Tensor, sigmas: Tensor, base: str, beta: float = -0.5, c: float = 1.0) -> Tensor:
    """u(x_i, x_i) = phi(0) |s_i|^2 - 2 d phi'(0) (N,)."""
    zero = x.new_zeros(())
    phi, d1, _ = stein_radial(zero, sigmas, base, beta, c)
    return phi * sx.square().sum(1) - 2.0 * x.shape[1] * d1
