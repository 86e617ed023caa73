"""Argument checks for the public functions: every bad input is a ValueError or TypeError that names
the argument. Checks that read tensor values (NaN/Inf, negative weights) need a host sync; they are
skipped while torch.compile traces, where they would break the graph."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from infovae_kernels.kernels import KERNELS, MAX_DEGREE, MAX_SCALES, Kernel, Polynomial, has_bandwidth, polynomial

ESTIMATORS = ("biased", "unbiased")
Sigma = Union[None, float, Sequence[float], str, Tensor]


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def finite(t: Tensor, name: str) -> None:
    if _tracing() or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.detach())  # NaN and Inf reach the extremes: one pass, no temporary (isfinite: 20x slower)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf")


def floating(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")


def _points_shape(t: Tensor, name: str) -> None:
    floating(t, name)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n_points, n_features), got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")


def points(x: Tensor, y: Tensor | None = None) -> None:
    """x (and y) non-empty (n, d) floating tensors of finite values, in one space (see same_space)."""
    _points_shape(x, "x")
    if y is not None:
        _points_shape(y, "y")
        same_space(x, y)
    finite(x, "x")
    if y is not None:
        finite(y, "y")


def same_device_dtype(a: Tensor, b: Tensor, aname: str, bname: str) -> None:
    """Same device and dtype. Mixed dtypes are refused, not promoted: an MMD between a float32 and a
    float64 set is almost always a mistake, and silent promotion hides it."""
    if a.device != b.device:
        raise ValueError(f"{aname} is on {a.device} but {bname} is on {b.device}; move them to one device")
    if a.dtype != b.dtype:
        raise TypeError(f"{aname} is {a.dtype} but {bname} is {b.dtype}; convert one, e.g. "
                        f"{bname}.to({aname}.dtype)")


def same_space(x: Tensor, y: Tensor, xname: str = "x", yname: str = "y") -> None:
    """Same device, dtype and feature dimension."""
    same_device_dtype(x, y, xname, yname)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"{xname} has {x.shape[-1]} features but {yname} has {y.shape[-1]}")


def kernel(name: Kernel) -> Kernel:
    """A kernel name, or a Polynomial; "polynomial" and "linear" come back as their Polynomial."""
    if isinstance(name, Polynomial):
        if isinstance(name.degree, bool) or not isinstance(name.degree, numbers.Integral) \
                or not 1 <= name.degree <= MAX_DEGREE:
            raise ValueError(f"kernel: the polynomial degree must be an int in 1..{MAX_DEGREE}, got {name.degree!r}")
        if name.gamma is not None:
            _positive_float(name.gamma, "kernel: the polynomial gamma")
        if isinstance(name.coef, bool) or not isinstance(name.coef, numbers.Real) or not math.isfinite(name.coef):
            raise ValueError(f"kernel: the polynomial coef must be a finite float, got {name.coef!r}")
        return name
    if not isinstance(name, str) or name not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or an ik.Polynomial(degree, gamma, coef), got {name!r}")
    return polynomial(name) if name in ("polynomial", "linear") else name


def estimator(name: str) -> bool:
    """True for the unbiased estimator."""
    if not isinstance(name, str) or name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {name!r}")
    return name == "unbiased"


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive float, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite float, got {value}")
    return value


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def sigmas(sigma: Sigma, like: Tensor, median: Callable[[], Tensor], kernel: Kernel = "rbf") -> Optional[Tensor]:
    """Bandwidths as a float64 tensor (S,) on like's device, 1 <= S <= MAX_SCALES, or None for a kernel
    without a bandwidth (energy, polynomial, linear: sigma must then be None). sigma=None means 1.0;
    "median" calls `median()` (a 0-dim tensor). A tensor sigma keeps its autograd graph (a bandwidth that
    requires grad gets a gradient); its values are checked outside torch.compile."""
    if not has_bandwidth(kernel):
        if sigma is not None:
            name = "polynomial" if isinstance(kernel, Polynomial) else kernel
            raise ValueError(f"sigma: the {name} kernel has no bandwidth; leave sigma=None, got {sigma!r}")
        return None
    if sigma is None:
        sigma = 1.0
    if isinstance(sigma, str):
        if sigma != "median":
            raise ValueError(f"sigma must be a positive float, a sequence of them, or 'median', got {sigma!r}")
        return median().to(torch.float64).reshape(1)
    if isinstance(sigma, Tensor):
        if not sigma.dtype.is_floating_point or sigma.dim() > 1:
            raise ValueError(f"a tensor sigma must be a floating 0-d or 1-d tensor, got {sigma.dtype} "
                             f"of shape {tuple(sigma.shape)}")
        values = sigma.to(device=like.device, dtype=torch.float64).reshape(-1)
        _scale_count(values.shape[0])
        if not _tracing() and not bool(((values > 0) & torch.isfinite(values)).all()):
            raise ValueError(f"sigma must hold positive finite bandwidths, got {sigma.tolist()}")
        return values
    if isinstance(sigma, (list, tuple)):
        values = [_positive_float(s, "sigma") for s in sigma]
    else:
        values = [_positive_float(sigma, "sigma")]
    _scale_count(len(values))
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def _scale_count(n: int) -> None:
    if n == 0:
        raise ValueError("sigma is an empty sequence; give at least one bandwidth")
    if n > MAX_SCALES:
        raise ValueError(f"sigma holds {n} bandwidths; at most {MAX_SCALES} scales are supported per call "
                         "(sum several calls for more)")


def weights(w: Optional[Tensor], n: int, like: Tensor, name: str) -> Tensor:
    """Non-negative weights of length n normalised to sum 1; uniform when w is None."""
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64, device=like.device)
    floating(w, name)
    if w.dim() != 1 or w.shape[0] != n:
        raise ValueError(f"{name} must be 1-D of length {n}, got shape {tuple(w.shape)}")
    if w.device != like.device:
        raise ValueError(f"{name} is on {w.device} but the points are on {like.device}")
    finite(w, name)
    if not _tracing():
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be non-negative")
        if not bool((w > 0).any()):
            raise ValueError(f"{name} are all zero; at least one weight must be positive")
    w64 = w.to(torch.float64)  # a float16 sum overflows long before its weights do
    return w64 / w64.sum()


def values(v: Tensor, m: int, like: Tensor, name: str) -> Tensor:
    """Per-point values (m,) or (m, p), same dtype and device as the points."""
    floating(v, name)
    if v.dim() not in (1, 2) or v.shape[0] != m:
        raise ValueError(f"{name} must have shape ({m},) or ({m}, p), got {tuple(v.shape)}")
    if v.dim() == 2 and v.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(v.shape)}")
    same_device_dtype(like, v, "y", name)
    finite(v, name)
    return v

