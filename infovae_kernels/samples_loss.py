"""ik.SamplesLoss: GeomLoss' SamplesLoss calling conventions for its kernel losses, computed by ik.mmd.

GeomLoss (0.3) defines, for weights a (N,) on x and b (M,) on y (default 1/N and 1/M),

    loss = 1/2 sum_ij a_i a_j k(x_i, x_j) + 1/2 sum_ij b_i b_j k(y_i, y_j) - sum_ij a_i b_j k(x_i, y_j)

which for probability weights is 1/2 the biased MMD^2, so loss(a, x, b, y) = ik.mmd(x, y, kernel, sigma,
weights_x=a, weights_y=b) / 2, the same for every kernel, energy included:

    GeomLoss "gaussian"   exp(-r^2 / (2 blur^2))  ->  kernel "rbf", sigma = blur
    GeomLoss "laplacian"  exp(-r / blur)          ->  kernel "laplacian", sigma = blur
    GeomLoss "energy"     -r (blur unused)        ->  kernel "energy" (k = -r), no factor

This package's other kernels come by name: "imq" (C / (C + r^2), C = 2 d blur^2), "polynomial", "linear"
(blur unused), and "rbf" = "gaussian". blur may be anything ik.mmd takes as sigma: a float, a list of
floats (the kernels at those scales summed), a tensor (one that requires grad gets a gradient) or "median".
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

from infovae_kernels import backends
from infovae_kernels._checks import Sigma, _tracing
from infovae_kernels.ops import mmd

#: loss name -> ik.mmd kernel.
KERNEL_OF_LOSS = {"gaussian": "rbf", "rbf": "rbf", "laplacian": "laplacian", "energy": "energy", "imq": "imq",
                  "polynomial": "polynomial", "linear": "linear"}
#: GeomLoss' losses that are not kernel norms.
TRANSPORT_LOSSES = ("sinkhorn", "hausdorff")
#: GeomLoss' backends that compute the exact kernel loss: here, ik's "auto".
EXACT_GEOMLOSS_BACKENDS = ("tensorized", "online")


class SamplesLoss(nn.Module):
    """Kernel loss between sampled measures with GeomLoss' conventions: 1/2 biased MMD^2 (module docstring).

    SamplesLoss(loss="gaussian", blur=0.05, backend="auto")(x, y) or (...)(a, x, b, y):
    x (N, d), y (M, d) -> a 0-dim tensor; x (B, N, d), y (B, M, d) -> (B,), one loss per problem.
    a, b: weights (N,) / (M,), batched (B, N) / (B, M); GeomLoss' (N, 1) and (B, N, 1) are accepted too.
    Each must sum to 1 per problem (to sqrt(eps) of its dtype), as GeomLoss' defaults 1/N do: GeomLoss
    reads unnormalised weights as measures of mass sum(a), which ik.mmd (it normalises) does not compute,
    so they are a ValueError rather than a silently different value.

    Differences from GeomLoss, both on purpose:
    - GeomLoss clamps r^2 >= 1e-8 (in units of blur for laplacian) before its square root, so its
      laplacian and energy count each self-pair as k = exp(-1e-4) or -1e-4 instead of 1 or 0: its value
      is this one + 1/2 (k_clamped - k(0)) (sum a^2 + sum b^2). Without that, they agree to rounding.
    - The gradient in a is GeomLoss' minus its mean under a, g_a - (g_a . a): ik.mmd normalises a, so only
      directions that keep sum(a) fixed count; along those (through a softmax, say) they are equal. Same for b.
      Gradients in x, y (and a tensor blur) are GeomLoss'.

    GeomLoss' other arguments:
    - p, reach, scaling, cost, debias: GeomLoss' kernel losses ignore them; so does this one.
    - truncate, diameter, cluster_scale, verbose: used only by GeomLoss' "multiscale" backend; ignored.
    - backend: "tensorized" and "online" (exact in GeomLoss) mean "auto"; "multiscale" (a truncated kernel)
      is a ValueError; otherwise this package's names ("auto", "cpu", "torch", "cuda", "triton").
    - kernel (a custom Python kernel), potentials=True and the six-argument call with cluster labels:
      not supported, ValueError.
    """

    def __init__(self, loss: str = "gaussian", p: int = 2, blur: Sigma = 0.05, reach: Optional[float] = None,
                 diameter: Optional[float] = None, scaling: float = 0.5, truncate: Optional[float] = 5,
                 cost: Any = None, kernel: Any = None, cluster_scale: Optional[float] = None, debias: bool = True,
                 potentials: bool = False, verbose: bool = False, backend: str = "auto") -> None:
        super().__init__()
        del p, reach, diameter, scaling, truncate, cost, cluster_scale, debias, verbose  # ignored (docstring)
        if loss in TRANSPORT_LOSSES:
            raise ValueError(f"loss={loss!r} is an optimal-transport loss, which infovae-kernels does not have; "
                             f"its kernel losses are {tuple(KERNEL_OF_LOSS)}")
        if loss not in KERNEL_OF_LOSS:
            raise ValueError(f"loss must be one of {tuple(KERNEL_OF_LOSS)}, got {loss!r}")
        if kernel is not None:
            raise ValueError("kernel: custom kernel functions are not supported; pick a kernel by name with "
                             f"loss= (one of {tuple(KERNEL_OF_LOSS)})")
        if potentials:
            raise ValueError("potentials=True is not supported: SamplesLoss returns the loss value only")
        if backend == "multiscale":
            raise ValueError("backend='multiscale' truncates the kernel in GeomLoss; this package computes the "
                             "exact loss: use backend='auto'")
        if backend in EXACT_GEOMLOSS_BACKENDS:
            backend = "auto"
        if backend != "auto" and backend not in backends.NAMES:
            raise ValueError(f"backend must be 'auto', one of {backends.NAMES}, or GeomLoss' "
                             f"{EXACT_GEOMLOSS_BACKENDS} (meaning 'auto'), got {backend!r}")
        self.loss, self.kernel, self.backend = loss, KERNEL_OF_LOSS[loss], backend
        self.blur = blur if self.kernel in ("rbf", "laplacian", "imq") else None

    def forward(self, *args: Tensor) -> Tensor:
        if len(args) == 2:
            (x, y), a, b = args, None, None
        elif len(args) == 4:
            a, x, b, y = args
        elif len(args) == 6:
            raise ValueError("the six-argument call (l_x, a, x, l_y, b, y) gives cluster labels to GeomLoss' "
                             "multiscale backend, which this package does not have; call loss(a, x, b, y)")
        else:
            raise ValueError(f"SamplesLoss takes (x, y) or (a, x, b, y), got {len(args)} arguments")
        _check_points(x, y)
        a = _weights(a, x, "a", "x")
        b = _weights(b, y, "b", "y")
        return mmd(x, y, kernel=self.kernel, sigma=self.blur, weights_x=a, weights_y=b, backend=self.backend) / 2

    def extra_repr(self) -> str:
        return f"loss={self.loss!r}, blur={self.blur!r}, backend={self.backend!r}"


def _check_points(x: Tensor, y: Tensor) -> None:
    """x, y both (N, d) / (M, d), or both (B, N, d) / (B, M, d) with one B."""
    for t, name in ((x, "x"), (y, "y")):
        if not isinstance(t, Tensor) or t.dim() not in (2, 3):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a tensor (N, d) or (B, N, d), got {shape}; call as loss(x, y) or "
                             "loss(a, x, b, y)")
    if x.dim() != y.dim():
        raise ValueError(f"x and y must both be 2-D (N, d) or both 3-D (B, N, d), got x {tuple(x.shape)} "
                         f"and y {tuple(y.shape)}")
    if x.dim() == 3 and x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have one batch size, got x {tuple(x.shape)} and y {tuple(y.shape)}")


def _weights(w: Optional[Tensor], points: Tensor, name: str, of: str) -> Optional[Tensor]:
    """w with shape points.shape[:-1] (GeomLoss' trailing 1 dropped), summing to 1 per problem."""
    if w is None:
        return None
    expected = tuple(points.shape[:-1])
    if not isinstance(w, Tensor):
        raise ValueError(f"{name} (the weights of {of}) must be a tensor of shape {expected}, "
                         f"got {type(w).__name__}; call as loss(a, x, b, y)")
    if w.dim() == points.dim() and w.shape[-1] == 1:
        w = w.squeeze(-1)
    if tuple(w.shape) != expected:
        raise ValueError(f"{name} (the weights of {of}) must have shape {expected} for {of} of shape "
                         f"{tuple(points.shape)}, got {tuple(w.shape)}; call as loss(a, x, b, y)")
    if w.dtype.is_floating_point and not _tracing(w):
        tolerance = torch.finfo(w.dtype).eps ** 0.5
        total = w.detach().sum(-1, dtype=torch.float64)
        if not bool(((total - 1.0).abs() <= tolerance).all()):
            raise ValueError(f"{name} must sum to 1 (per problem), got sums {total.flatten()[:4].tolist()}: "
                             "GeomLoss reads other sums as the measures' masses, which this loss does not "
                             f"compute; pass {name} / {name}.sum(-1, keepdim=True)")
    return w
