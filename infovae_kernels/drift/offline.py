"""MMDDrift: the offline detector. Is a batch x distributed like the reference x_ref?

The statistic is the unbiased squared MMD between x_ref's and x's features (alibi-detect's distance),
its p-value from n_permutations random relabellings of the pooled set, all of them columns of one
streamed, symmetric pass of the fused kernel (ik.mmd_test): nothing N x N is ever stored, so the
reference can have hundreds of thousands of rows on a CPU.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.bandwidth import median_distance
from infovae_kernels.drift._base import (BATCH_SIZE, Detector, DriftResult, Preprocess, check_like, features,
                                         p_value_level, register)
from infovae_kernels.scale import DEFAULT_MAX_MEMORY, mmd_test
from infovae_kernels.scale.sources import Data
from torch.types import Device

SigmaArg = Union[None, str, float, Sequence[float], Tensor]


def kernel_config(kernel: kernels.Kernel) -> Any:
    """A kernel as plain data for a saved file (a name, or a Polynomial's fields)."""
    if isinstance(kernel, kernels.Polynomial):
        return {"degree": kernel.degree, "gamma": kernel.gamma, "coef": kernel.coef}
    return kernel


def kernel_from_config(cfg: Any) -> kernels.Kernel:
    return kernels.Polynomial(**cfg) if isinstance(cfg, dict) else cfg


def reference_bandwidth(sigma: SigmaArg, kernel: kernels.Kernel, ref: Tensor) -> Optional[list[float]]:
    """The bandwidths (floats) a detector keeps: sigma as ik.mmd takes it, except that None means "median":
    the median pairwise distance of the reference features (exact up to 2,048 rows, else on a fixed
    subsample of them), set once. None for the kernels without a bandwidth."""
    if sigma is None and kernels.has_bandwidth(kernel):
        sigma = "median"
    values = _checks.sigmas(sigma, ref, lambda: median_distance(ref), kernel)
    return None if values is None else values.detach().cpu().tolist()


@register
class MMDDrift(Detector):
    """Offline MMD drift detector (alibi-detect's MMDDrift, on the fused engine).

    x_ref: the reference data: a tensor, a numpy array (memory-mapped included) or chunks; its features
        (preprocess_fn of its rows, or the rows) are computed once and kept.
    p_val: the level: predict(x).is_drift when the permutation p-value is below it.
    preprocess_fn: a callable or torch module mapping a batch of rows to (rows, d) features (an encoder, a
        random projection, a model's penultimate layer), run under torch.no_grad() on `device` in batches
        of batch_size; x_ref's once, each x's at predict.
    kernel, sigma: any kernel of the package (ik.mmd's names, or ik.Polynomial) and its bandwidth(s): a
        positive float, a sequence (a sum over scales) or a tensor; None or "median" is the median pairwise
        distance of x_ref's features, set once here. alibi-detect's default GaussianRBF bandwidth is that
        median / sqrt(2) (its kernel is exp(-r^2 / median(r^2))); pass sigma=median / 2 ** 0.5 to match it.
    n_permutations, seed: the permutation test (one fused pass whatever their number); the same x gives the
        same p-value on every call and after save / load.
    device, backend, max_memory, batch_size: where the features and the test are computed, with which
        backend, the test's memory budget (blocks of the pooled set), and preprocess_fn's batch size.
    """

    def __init__(self, x_ref: Data, p_val: float = 0.05, preprocess_fn: Optional[Preprocess] = None, *,
                 kernel: kernels.Kernel = "rbf", sigma: SigmaArg = None, n_permutations: int = 100, seed: int = 0,
                 device: Device = None, backend: str = "auto", max_memory: Union[int, str] = DEFAULT_MAX_MEMORY,
                 batch_size: int = BATCH_SIZE) -> None:
        self.p_val = p_value_level(p_val)
        self.kernel = _checks.kernel(kernel)
        if isinstance(n_permutations, bool) or not isinstance(n_permutations, numbers.Integral) or n_permutations < 1:
            raise ValueError(f"n_permutations must be a positive int, got {n_permutations!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.n_permutations, self.seed, self.batch_size = int(n_permutations), int(seed), int(batch_size)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.backend, self.max_memory = backend, max_memory
        self.preprocess_fn = preprocess_fn
        self._ref_file = _memmap_reference(x_ref) if preprocess_fn is None else None
        self.x_ref = features(x_ref, name="x_ref", preprocess_fn=preprocess_fn, device=self.device,
                              batch_size=self.batch_size)
        if self.x_ref.shape[0] < 2:
            raise ValueError(f"x_ref needs at least 2 rows for the unbiased MMD^2, got {self.x_ref.shape[0]}")
        self.sigma = reference_bandwidth(sigma, self.kernel, self.x_ref)

    def predict(self, x: Data, return_p_val: bool = True, return_distance: bool = True,
                progress: Optional[bool] = False) -> DriftResult:
        """Test x (the same kinds of data as x_ref) against the reference; nothing is stored."""
        feats = features(x, name="x", preprocess_fn=self.preprocess_fn, device=self.device,
                         batch_size=self.batch_size)
        check_like(feats, self.x_ref)
        if feats.shape[0] < 2:
            raise ValueError(f"x needs at least 2 rows for the unbiased MMD^2, got {feats.shape[0]}")
        r = mmd_test(self.x_ref, feats, permutations=self.n_permutations, seed=self.seed, kernel=self.kernel,
                     sigma=self.sigma, estimator="unbiased", backend=self.backend, device=self.device,
                     max_memory=self.max_memory, progress=progress, names=("x_ref", "x"))
        threshold = distance_threshold(r.permutation_statistics, self.p_val)
        return DriftResult(is_drift=r.p_value < self.p_val, p_val=r.p_value if return_p_val else None,
                           threshold=self.p_val, distance=r.statistic if return_distance else None,
                           distance_threshold=threshold if return_distance else None)

    # ---- saving
    def _payload(self):
        config = dict(p_val=self.p_val, kernel=kernel_config(self.kernel), sigma=self.sigma,
                      n_permutations=self.n_permutations, seed=self.seed, device=str(self.device),
                      backend=self.backend, max_memory=self.max_memory, batch_size=self.batch_size,
                      preprocess=self.preprocess_fn is not None)
        if self._ref_file is not None:
            state = {"x_ref_file": self._ref_file, "x_ref_sum": float(self.x_ref.double().sum())}
        else:
            state = {"x_ref": self.x_ref.cpu()}
        return config, state

    @classmethod
    def _restore(cls, config, state, **objects):
        preprocess_fn = _needed_preprocess(config, objects)
        det = cls.__new__(cls)
        det.p_val, det.kernel, det.sigma = config["p_val"], kernel_from_config(config["kernel"]), config["sigma"]
        det.n_permutations, det.seed, det.batch_size = config["n_permutations"], config["seed"], config["batch_size"]
        det.device, det.backend, det.max_memory = torch.device(config["device"]), config["backend"], config["max_memory"]
        det.preprocess_fn = preprocess_fn
        det._ref_file, det.x_ref = _restore_reference(state, det.device)
        return det


def distance_threshold(permutation_statistics: Tensor, p_val: float) -> float:
    """The distance above which the test says drift at level p_val: with the p-value (1 + #{permuted >=
    stat}) / (1 + P), a statistic is drift exactly when at most K = ceil(p_val (1 + P)) - 2 permuted ones
    reach it, i.e. when it exceeds the (K + 1)-th largest; inf when even K = 0 is out of reach (too few
    permutations for this level)."""
    stats = torch.as_tensor(permutation_statistics, dtype=torch.float64).sort(descending=True).values
    k = math.ceil(p_val * (1 + stats.numel()) - 1e-12) - 2
    return float(stats[k]) if 0 <= k < stats.numel() else math.inf


def _memmap_reference(x_ref: Data) -> Optional[dict[str, Any]]:
    """A memory-mapped .npy reference is saved as a reference to its file, not copied into the detector."""
    if isinstance(x_ref, np.memmap) and x_ref.filename and x_ref.ndim == 2:
        return {"path": str(x_ref.filename), "shape": list(x_ref.shape), "dtype": str(x_ref.dtype)}
    return None


def _restore_reference(state: dict[str, Any], device: torch.device) -> tuple[Optional[dict[str, Any]], Tensor]:
    if "x_ref" in state:
        return None, state["x_ref"].to(device)
    ref = state["x_ref_file"]
    try:
        arr = np.load(ref["path"], mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise ValueError(f"the detector's reference file {ref['path']} cannot be read ({exc})") from None
    if list(arr.shape) != list(ref["shape"]) or str(arr.dtype) != ref["dtype"]:
        raise ValueError(f"the detector's reference file {ref['path']} changed: shape {arr.shape} {arr.dtype}, saved "
                         f"with {tuple(ref['shape'])} {ref['dtype']}")
    x_ref = features(arr, name="x_ref", device=device)
    if float(x_ref.double().sum()) != state["x_ref_sum"]:
        raise ValueError(f"the detector's reference file {ref['path']} changed since the detector was saved")
    return ref, x_ref


def _needed_preprocess(config: dict[str, Any], objects: dict[str, Any]) -> Optional[Preprocess]:
    unknown = set(objects) - {"preprocess_fn"}
    if unknown:
        raise TypeError(f"load() got unexpected arguments {sorted(unknown)} for this detector")
    fn = objects.get("preprocess_fn")
    if config["preprocess"] and fn is None:
        raise ValueError("this detector was saved with a preprocess_fn, which a file cannot hold: pass it again, "
                         "load(path, preprocess_fn=...)")
    if not config["preprocess"] and fn is not None:
        raise ValueError("this detector was saved without a preprocess_fn; load(path) takes none")
    return fn
