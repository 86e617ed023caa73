"""Argument checks for the public functions: every bad input is a ValueError or TypeError that names
the argument. Checks that read tensor values (NaN/Inf, negative weights) need a host sync; they are
skipped while torch.compile traces, where they would break the graph."""

from __future__ import annotations

import math
import numbers
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from infovae_kernels.kernels import (KERNELS, MAX_DEGREE, MAX_SCALES, Kernel, Polynomial, has_bandwidth, is_transformed,
                                     polynomial)

ESTIMATORS = ("biased", "unbiased")
Sigma = Union[None, float, Sequence[float], str, Tensor]


def _tracing(*tensors: Optional[Tensor]) -> bool:
    """Under torch.compile, or with tensors a torch.func transform (vmap, grad) wraps: values cannot be
    read on the host then, and the checks that need them are skipped."""
    return torch.compiler.is_compiling() or is_transformed(*tensors)


def finite(t: Tensor, name: str) -> None:
    if _tracing(t) or t.numel() == 0:
        return
    lo, hi = torch.aminmax(t.detach())  # NaN and Inf reach the extremes: one pass, no temporary (isfinite: 20x slower)
    if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or Inf")


def floating(t: Tensor, name: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {t.dtype}")


def _points_shape(t: Tensor, name: str, batch: bool) -> None:
    floating(t, name)
    if t.dim() != 2 and not (batch and t.dim() == 3):
        shapes = "2-D (n_points, n_features) or 3-D (batch, n_points, n_features)" if batch else \
            "2-D (n_points, n_features)"
        raise ValueError(f"{name} must be {shapes}, got shape {tuple(t.shape)}")
    if t.dim() == 3 and t.shape[0] == 0:
        raise ValueError(f"{name} is a batch of size 0: shape {tuple(t.shape)}")
    if t.shape[-2] == 0 or t.shape[-1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")


def points(x: Tensor, y: Tensor | None = None, batch: bool = False) -> None:
    """x (and y) non-empty (n, d) floating tensors of finite values, in one space (see same_space); with
    batch, also (B, n, d) batches of B >= 1 problems (x and y then both batched, with the same B)."""
    _points_shape(x, "x", batch)
    if y is not None:
        _points_shape(y, "y", batch)
        if x.dim() != y.dim():
            raise ValueError(f"x and y must both be 2-D (one problem) or both 3-D (a batch), got shapes "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        if x.dim() == 3 and x.shape[0] != y.shape[0]:
            raise ValueError(f"y has batch size {y.shape[0]} but x has {x.shape[0]}")
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


def sigmas(sigma: Sigma, like: Tensor, median: Callable[[], Tensor], kernel: Kernel = "rbf",
           batch: Optional[int] = None) -> Optional[Tensor]:
    """Bandwidths as a float64 tensor (S,) on like's device, 1 <= S <= MAX_SCALES, or None for a kernel
    without a bandwidth (energy, polynomial, linear: sigma must then be None). sigma=None means 1.0;
    "median" calls `median()` (a 0-dim tensor). A tensor sigma keeps its autograd graph (a bandwidth that
    requires grad gets a gradient); its values are checked outside torch.compile.
    For a batch of B problems (`batch`=B): floats, sequences and 0-dim tensors are shared (S,); a tensor
    (B,) is one bandwidth per problem and (B, S) S scales per problem, both returned (B, S); "median" is
    per problem: `median()` then returns (B,)."""
    if batch is not None and has_bandwidth(kernel) and \
            (isinstance(sigma, Tensor) and sigma.dim() > 0 or isinstance(sigma, str) and sigma == "median"):
        return _batch_sigmas(sigma, like, median, batch)
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
        return _tensor_sigmas(sigma, like, (-1,))
    if isinstance(sigma, (list, tuple)):
        values = [_positive_float(s, "sigma") for s in sigma]
    else:
        values = [_positive_float(sigma, "sigma")]
    _scale_count(len(values))
    return torch.tensor(values, dtype=torch.float64, device=like.device)


def _batch_sigmas(sigma: Sigma, like: Tensor, median: Callable[[], Tensor], batch: int) -> Tensor:
    if isinstance(sigma, str):
        return median().to(torch.float64).reshape(batch, 1)
    if not sigma.dtype.is_floating_point or sigma.dim() > 2 or sigma.shape[0] != batch:
        raise ValueError(f"sigma: with a batch of {batch} problems a tensor sigma is (B,) (one bandwidth per problem), "
                         f"(B, S) (S scales per problem) or 0-dim (shared), B = {batch}; got {sigma.dtype} of shape "
                         f"{tuple(sigma.shape)} (several shared scales: a list of floats)")
    return _tensor_sigmas(sigma, like, (batch, -1))


def _tensor_sigmas(sigma: Tensor, like: Tensor, shape: tuple) -> Tensor:
    """A tensor sigma as float64 of `shape` (scales last) on like's device, its autograd graph kept; its
    scale count and (outside tracing) its values checked."""
    values = sigma.to(device=like.device, dtype=torch.float64).reshape(shape)
    _scale_count(values.shape[-1])
    if not _tracing(sigma) and not bool(((values > 0) & torch.isfinite(values)).all()):
        raise ValueError(f"sigma must hold positive finite bandwidths, got {sigma.tolist()}")
    return values


def lengths(n_rows: Optional[Tensor], x: Tensor, name: str) -> Optional[Tensor]:
    """The real rows of a padded batch x (B, N, d) given their counts (B,) (rows 0 .. count - 1 of each
    problem), as a (B, N) bool mask; None when n_rows is None (every row is real)."""
    if n_rows is None:
        return None
    if x.dim() != 3:
        raise ValueError(f"{name} is for a padded batch: the points must be 3-D (B, N, d), got shape {tuple(x.shape)}")
    if not isinstance(n_rows, Tensor) or n_rows.dtype.is_floating_point or n_rows.dtype.is_complex \
            or n_rows.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of shape (B,), got {type(n_rows).__name__}"
                        + (f" of dtype {n_rows.dtype}" if isinstance(n_rows, Tensor) else ""))
    if n_rows.shape != (x.shape[0],):
        raise ValueError(f"{name} must have shape (B,) = ({x.shape[0]},), got {tuple(n_rows.shape)}")
    n_rows = n_rows.to(x.device)
    if not _tracing(n_rows) and not bool(((n_rows >= 1) & (n_rows <= x.shape[1])).all()):
        raise ValueError(f"{name} must be in 1..{x.shape[1]} (the padded size), got {n_rows.tolist()}")
    return torch.arange(x.shape[1], device=x.device) < n_rows[:, None]


def _scale_count(n: int) -> None:
    if n == 0:
        raise ValueError("sigma is an empty sequence; give at least one bandwidth")
    if n > MAX_SCALES:
        raise ValueError(f"sigma holds {n} bandwidths; at most {MAX_SCALES} scales are supported per call "
                         "(sum several calls for more)")


def weights(w: Optional[Tensor], n: int, like: Tensor, name: str, mask: Optional[Tensor] = None) -> Tensor:
    """Non-negative weights of length n normalised to sum 1; uniform when w is None. For points `like`
    batched (B, n, d) the weights are (B, n), normalised per problem, and `mask` (B, n) zeroes the
    padding rows first."""
    shape = like.shape[:-1]
    if w is None:
        if mask is None:
            return torch.full(shape, 1.0 / n, dtype=torch.float64, device=like.device)
        w64 = mask.to(torch.float64)
        return w64 / w64.sum(-1, keepdim=True)
    floating(w, name)
    if w.shape != shape:
        what = f"1-D of length {n}" if len(shape) == 1 else f"(B, N) = {tuple(shape)} like the points"
        raise ValueError(f"{name} must be {what}, got shape {tuple(w.shape)}")
    if w.device != like.device:
        raise ValueError(f"{name} is on {w.device} but the points are on {like.device}")
    finite(w, name)
    w64 = w.to(torch.float64)  # a float16 sum overflows long before its weights do
    if mask is not None:
        w64 = w64 * mask
    if not _tracing(w):
        if bool((w < 0).any()):
            raise ValueError(f"{name} must be non-negative")
        if not bool((w64 > 0).any(-1).all()):
            which = "" if w.dim() == 1 else " for some problem"
            raise ValueError(f"{name} are all zero{which}; at least one weight must be positive")
    return w64 / w64.sum(-1, keepdim=True)


def values(v: Tensor, rows: tuple, like: Tensor, name: str) -> Tensor:
    """Per-point values `rows` (m,) or (m, p) ((B, m) or (B, m, p) for a batch), same dtype and device as
    the points."""
    floating(v, name)
    if v.dim() not in (len(rows), len(rows) + 1) or tuple(v.shape[:len(rows)]) != tuple(rows):
        raise ValueError(f"{name} must have shape {tuple(rows)} or {tuple(rows)[:-1] + (rows[-1], 'p')}, "
                         f"got {tuple(v.shape)}".replace("'p'", "p"))
    if v.dim() > len(rows) and v.shape[-1] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(v.shape)}")
    same_device_dtype(like, v, "y", name)
    finite(v, name)
    return v

