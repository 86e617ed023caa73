"""LearnedKernelDrift: the offline MMD test with a kernel trained for test power on a split of the data
(Liu et al. 2020, "Learning deep kernels for non-parametric two-sample tests"; alibi-detect's
LearnedKernelDrift), and DeepKernel, the kernel it trains.

Each predict(x) splits x_ref's and x's features (seeded) into a training and a held-out part, trains a
fresh copy of the detector's kernel on the training parts to maximise Liu et al.'s criterion
J = MMD_u^2 / sqrt(sigma_H1^2 + var_reg), then runs the permutation test with the trained kernel on the
held-out parts only, so the p-value stays valid whatever the training did. The kernel is a sum of
unit-bandwidth RBF kernels on scaled feature maps (see DeepKernel), so the criterion and its gradient
(ops.mmd_power.mmd_terms, one fused pass per term) and the test's permutation statistics (ik.mmd_test, one
pass per term, the same permutations) never build anything N x N.
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
import time
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from infovae_kernels import kernels
from infovae_kernels.bandwidth import median_distance
from infovae_kernels.drift._base import (Detector, DriftResult, Preprocess, check_like, features, p_value_level,
                                         register)
from infovae_kernels.drift.offline import _needed_preprocess, distance_threshold
from infovae_kernels.ops.mmd_power import MMDPower, MMDTerms, mmd_terms, power_from_terms
from infovae_kernels.scale import mmd_test
from infovae_kernels.scale.planning import progress_bar
from infovae_kernels.scale.sources import Data
from torch.types import Device

# Training defaults, chosen on the Blobs problem of tests/test_drift_learned.py on a 2-core CPU (see
# LearnedKernelDrift's docstring); Liu et al.'s Blob script: Adam 5e-4, 1000 full-batch steps;
# alibi-detect: Adam 1e-3, batches of 32 pairs, 3 epochs.
LEARNING_RATE = 1e-2
EPOCHS = 50
BATCH_SIZE = 100  # pairs per step
GRID_PAIRS = 1024  # training pairs (at most) on which a lone Gaussian kernel's starting bandwidth is chosen


def _positive(value: Any, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)) \
            or float(value) < 0 or (float(value) == 0 and not allow_zero):
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} float, got {value!r}")
    return float(value)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _log_bandwidth(sigma: Optional[float], name: str) -> nn.Parameter:
    value = math.nan if sigma is None else math.log(_positive(sigma, name))
    return nn.Parameter(torch.tensor(value, dtype=torch.float64))


class DeepKernel(nn.Module):
    """Liu et al. 2020's deep kernel, in their product form:

        k(x, y) = ((1 - eps) k_a(f(x), f(y)) + eps) k_b(x, y)

    with k_a(u, v) = exp(-|u - v|^2 / (2 sigma_a^2)) on the projection f = proj and k_b(x, y) =
    exp(-|x - y|^2 / (2 sigma_b^2)) on the inputs. eps keeps k characteristic whatever f does (k_b alone
    is). Because exp(a) exp(b) = exp(a + b),

        k = (1 - eps) rbf_1([f(x) / sigma_a, x / sigma_b]) + eps rbf_1(x / sigma_b),

    rbf_1 the unit-bandwidth Gaussian kernel: a weighted sum of two RBF kernels on scaled feature maps
    (feature_maps), which the fused ops evaluate one pass per term without building the kernel matrix.

    alibi-detect's DeepKernel is additive instead, (1 - eps) k_a(f(x), f(y)) + eps k_b(x, y); here the
    eps term is k_b and the deep term is k_a k_b, as in Liu et al.'s code (utils.MMDu).

    proj: a torch module mapping (n, d) inputs to (n, d') features, or None: then k = k_b alone (one
        learned bandwidth; eps plays no role and must stay "trainable", its default).
    eps: "trainable" (eps = sigmoid(raw), raw starting at 0: eps = 0.5, as in Liu et al.'s Blob script and
        alibi-detect) or a fixed float in [0, 1].
    sigma_a, sigma_b: starting bandwidths (positive floats); None: the median pairwise distance of the
        projected / raw inputs, set on first use (initialize). Both are trained as log-bandwidths.

    Bandwidths follow ik.mmd's convention (exp(-r^2 / (2 sigma^2))); Liu et al.'s sigma (in
    exp(-r^2 / sigma)) is 2 sigma_b^2 here. forward(x, y) gives the dense (n, m) matrix, for inspection on
    small inputs only; terms(x, y) / power(x, y) are what training uses.
    """

    def __init__(self, proj: Optional[nn.Module] = None, eps: Union[str, float] = "trainable",
                 sigma_a: Optional[float] = None, sigma_b: Optional[float] = None) -> None:
        super().__init__()
        if proj is not None and not isinstance(proj, nn.Module):
            raise TypeError(f"proj must be a torch.nn.Module or None, got {type(proj).__name__}")
        self.proj = proj
        if isinstance(eps, str):
            if eps != "trainable":
                raise ValueError(f'eps must be "trainable" or a float in [0, 1], got {eps!r}')
            self.fixed_eps: Optional[float] = None
        else:
            if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 <= float(eps) <= 1.0:
                raise ValueError(f'eps must be "trainable" or a float in [0, 1], got {eps!r}')
            if proj is None:
                raise ValueError("eps weighs the projection's term: without a projection (proj=None) k = k_b and "
                                 "eps has no role; leave it at its default")
            self.fixed_eps = float(eps)
        if proj is None:
            if sigma_a is not None:
                raise ValueError("sigma_a is the bandwidth on the projection; proj is None")
            self.raw_eps = None
            self.log_sigma_a = None
        else:
            self.raw_eps = nn.Parameter(torch.zeros((), dtype=torch.float64)) if self.fixed_eps is None else None
            self.log_sigma_a = _log_bandwidth(sigma_a, "sigma_a")
        self.log_sigma_b = _log_bandwidth(sigma_b, "sigma_b")

    # ---- parameters
    @property
    def eps(self) -> Union[Tensor, float]:
        """The weight of the k_b-only term: sigmoid(raw_eps) (a tensor) or the fixed float; 1.0 without proj."""
        if self.proj is None:
            return 1.0
        return torch.sigmoid(self.raw_eps) if self.fixed_eps is None else self.fixed_eps

    @property
    def sigma_a(self) -> Optional[float]:
        return None if self.log_sigma_a is None else float(self.log_sigma_a.detach().exp())

    @property
    def sigma_b(self) -> float:
        return float(self.log_sigma_b.detach().exp())

    def config(self) -> dict[str, Any]:
        """The constructor's choices as plain data (the values are in state_dict)."""
        return {"proj": self.proj is not None, "eps": "trainable" if self.fixed_eps is None else self.fixed_eps}

    def extra_repr(self) -> str:
        eps = "trainable" if self.fixed_eps is None else self.fixed_eps
        return f"eps={eps}, sigma_a={self.sigma_a}, sigma_b={self.sigma_b}" if self.proj is not None \
            else f"sigma_b={self.sigma_b}"

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the bandwidths not given yet (NaN) to the median pairwise distance of x's rows (sigma_b) and
        of proj(x)'s (sigma_a): x is the pooled data the kernel is first used on."""
        if torch.isnan(self.log_sigma_b):
            self.log_sigma_b.copy_(median_distance(x.detach()).log())
        if self.log_sigma_a is not None and torch.isnan(self.log_sigma_a):
            self.log_sigma_a.copy_(median_distance(self._project(x).detach()).log())

    def _project(self, x: Tensor) -> Tensor:
        want = f"({x.shape[0]}, d') {x.dtype} features for ({x.shape[0]}, {x.shape[1]}) {x.dtype} inputs"
        try:
            fa = self.proj(x)
        except Exception as exc:
            raise ValueError(f"proj failed: it must give {want} ({type(exc).__name__}: {exc})") from exc
        if not isinstance(fa, Tensor) or fa.ndim != 2 or fa.shape[0] != x.shape[0] or fa.dtype != x.dtype:
            raise ValueError(f"proj must give {want}, got {getattr(fa, 'shape', type(fa).__name__)} "
                             f"{getattr(fa, 'dtype', '')}")
        return fa

    # ---- the kernel as weighted unit-bandwidth RBF kernels on feature maps
    def feature_maps(self, x: Tensor) -> list[tuple[Union[Tensor, float], Tensor]]:
        """[(weight, features)]: k(x, y) = sum weight * exp(-|features(x) - features(y)|^2 / 2); the
        features are differentiable in proj's parameters and the log-bandwidths (terms of weight 0 are
        left out)."""
        if bool(torch.isnan(self.log_sigma_b)) or (self.log_sigma_a is not None and bool(torch.isnan(self.log_sigma_a))):
            self.initialize(x)
        xb = x * torch.exp(-self.log_sigma_b).to(x.dtype)
        if self.proj is None:
            return [(1.0, xb)]
        fa = self._project(x) * torch.exp(-self.log_sigma_a).to(x.dtype)
        eps = self.eps
        maps = [(1.0 - eps, torch.cat([fa, xb], 1)), (eps, xb)]
        return [(w, f) for w, f in maps if not (isinstance(w, float) and w == 0.0)]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The dense kernel matrix k(x_i, y_j), (n, m), in float64: for small inputs and checks only."""
        out = 0.0
        for (w, fx), (_, fy) in zip(self.feature_maps(x), self.feature_maps(y)):
            out = out + w * torch.exp(-torch.cdist(fx.double(), fy.double()).square() / 2)
        return out

    def terms(self, x: Tensor, y: Tensor, backend: str = "auto") -> MMDTerms:
        """MMDTerms (unbiased MMD^2, row sums h) of paired samples x, y (n, d) with this kernel: the
        weighted sum of one fused pass per term (ops.mmd_power.mmd_terms), differentiable."""
        mmd2, h = 0.0, 0.0
        for (w, fx), (_, fy) in zip(self.feature_maps(x), self.feature_maps(y)):
            t = mmd_terms(fx, fy, sigma=1.0, backend=backend)
            mmd2, h = mmd2 + w * t.mmd2, h + w * t.h
        return MMDTerms(mmd2, h)

    def power(self, x: Tensor, y: Tensor, var_reg: float = 1e-8, backend: str = "auto") -> MMDPower:
        """MMDPower (mmd2, sigma_H1^2, J = mmd2 / sqrt(sigma_H1^2 + var_reg)) with this kernel, as ik.mmd_power."""
        t = self.terms(x, y, backend)
        return power_from_terms(t.mmd2, t.h, var_reg)


def _fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a float in (0, 1), got {value!r}")
    return float(value)


@register
class LearnedKernelDrift(Detector):
    """Offline MMD drift detector with a kernel trained for test power (Liu et al. 2020; alibi-detect's
    LearnedKernelDrift, on the fused engine).

    x_ref: the reference data (any form MMDDrift takes); its features (preprocess_fn of its rows, or the
        rows) are computed once and kept.
    kernel: a DeepKernel (its state at construction is where every training starts; it is copied, not
        changed); None: DeepKernel(proj=None), a Gaussian kernel whose bandwidth alone is learned, so
        LearnedKernelDrift(x_ref).predict(x) works without choosing anything.
    p_val: the level: predict(x).is_drift when the permutation p-value is below it.
    preprocess_fn: as MMDDrift's (batches of 1,024 rows under no_grad); the kernel works on its output.
    n_permutations, seed: the test on the held-out parts (one pass per kernel term); seed also draws the
        split and the training batches, so the same x gives the same answer on every call and after load.
    train_size: the fraction of x_ref's rows and of x's rows trained on (floor(n train_size), each part
        needing at least 2 rows); the rest is tested.
    var_reg: lambda in J = MMD_u^2 / sqrt(sigma_H1^2 + lambda) (Liu et al.: 1e-8; alibi-detect 1e-5).
    learning_rate, epochs, batch_size: Adam's step, the passes over the training pairs, and the pairs per
        step (None: all of them, one step per epoch, as Liu et al.). Defaults: 1e-2, 50 epochs of batches of
        100 pairs. On the Blobs problem of tests/test_drift_learned.py (1,000 rows per set, 750 trained on,
        a 50-wide MLP projection) they take about 1 s per predict on one CPU thread (350 steps) and detected
        9/10 drifts (1,200 rows: 10/10), where Liu et al.'s Adam 5e-4 with 1,000 full-batch steps took 17 s
        for 2/3 and alibi-detect's Adam 1e-3, batches of 32, 3 epochs, learned nothing in its 69 steps
        (0/5). Liu et al.'s Blob bandwidths start small; here they start at the median, and larger steps
        on smaller batches move them in less time.
    device, backend: where the features, the training and the test run, and the fused ops' backend.
    progress: a bar over the training steps (tqdm, optional; None: only on a terminal, after 2 s).

    Pairing. The criterion needs paired samples of equal size: each step takes b = min(batch_size, n_tr,
    m_tr) rows of each training part from a fresh seeded shuffle per epoch, and an epoch is
    min(n_tr, m_tr) // b steps; when the parts differ in size, the larger one contributes a different
    random subset at every epoch.

    Retraining. Every predict trains a fresh copy of the constructor's kernel (median bandwidths set on
    that call's training data) and tests with that trained kernel, as alibi-detect means to by default:
    the kernel is fitted to the change in this x, and the answer depends on x alone, not on the calls
    before it. (Training once is not possible at construction, with no x to contrast; training once at
    the first predict would fit the kernel to that batch's change and make answers depend on call order.)
    The last trained kernel is `self.kernel`; `self.last_fit` holds its training criterion per step, the
    pairs per step and the seconds it took. A kernel=None Gaussian starts from the best bandwidth of a
    grid around the median (see _grid_start), its criterion not being unimodal in the bandwidth.
    """

    def __init__(self, x_ref: Data, kernel: Optional[DeepKernel] = None, p_val: float = 0.05,
                 preprocess_fn: Optional[Preprocess] = None, *, n_permutations: int = 100, train_size: float = 0.75,
                 var_reg: float = 1e-8, learning_rate: float = LEARNING_RATE, epochs: int = EPOCHS,
                 batch_size: Optional[int] = BATCH_SIZE, seed: int = 0, device: Device = None,
                 backend: str = "auto", progress: Optional[bool] = None) -> None:
        self.p_val = p_value_level(p_val)
        if kernel is None:
            kernel = DeepKernel()
        if not isinstance(kernel, DeepKernel):
            raise TypeError(f"kernel must be a DeepKernel or None, got {type(kernel).__name__}")
        self.n_permutations = _positive_int(n_permutations, "n_permutations")
        self.train_size = _fraction(train_size, "train_size")
        self.var_reg = _positive(var_reg, "var_reg", allow_zero=True)
        self.learning_rate = _positive(learning_rate, "learning_rate")
        self.epochs = _positive_int(epochs, "epochs")
        self.batch_size = None if batch_size is None else _positive_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = int(seed)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.backend, self.progress, self.preprocess_fn = backend, progress, preprocess_fn
        self.x_ref = features(x_ref, name="x_ref", preprocess_fn=preprocess_fn, device=self.device)
        self._split_sizes(self.x_ref.shape[0], "x_ref")
        self._initial = copy.deepcopy(kernel).to(self.device)
        self.kernel: Optional[DeepKernel] = None
        self.last_fit: Optional[dict[str, Any]] = None

    def _split_sizes(self, n: int, name: str) -> tuple[int, int]:
        n_train = int(math.floor(n * self.train_size))
        if n_train < 2 or n - n_train < 2:
            raise ValueError(f"{name} has {n} rows: train_size={self.train_size} leaves {n_train} to train on and "
                             f"{n - n_train} to test; each part needs at least 2")
        return n_train, n - n_train

    def predict(self, x: Data, return_p_val: bool = True, return_distance: bool = True) -> DriftResult:
        """Train the kernel on the training parts of x_ref and x, test on their held-out parts."""
        feats = features(x, name="x", preprocess_fn=self.preprocess_fn, device=self.device)
        check_like(feats, self.x_ref)
        n_tr, _ = self._split_sizes(self.x_ref.shape[0], "x_ref")
        m_tr, _ = self._split_sizes(feats.shape[0], "x")
        gen = torch.Generator().manual_seed(self.seed)
        ref = self.x_ref[torch.randperm(self.x_ref.shape[0], generator=gen).to(self.device)]
        cur = feats[torch.randperm(feats.shape[0], generator=gen).to(self.device)]
        kernel = copy.deepcopy(self._initial)
        self.last_fit = self._train(kernel, ref[:n_tr], cur[:m_tr], gen)
        self.kernel = kernel
        stat, perm = self._test(kernel, ref[n_tr:], cur[m_tr:])
        tol = 16 * torch.finfo(kernels.compute_dtype(ref.dtype)).eps * max(1.0, abs(stat))
        p_value = (1 + int((perm >= stat - tol).sum())) / (1 + self.n_permutations)
        threshold = distance_threshold(perm, self.p_val)
        return DriftResult(is_drift=p_value < self.p_val, p_val=p_value if return_p_val else None,
                           threshold=self.p_val, distance=stat if return_distance else None,
                           distance_threshold=threshold if return_distance else None)

    def _train(self, kernel: DeepKernel, ref: Tensor, cur: Tensor, gen: torch.Generator) -> dict[str, Any]:
        t0 = time.perf_counter()
        n, m = ref.shape[0], cur.shape[0]
        pairs = min(n, m) if self.batch_size is None else min(self.batch_size, n, m)
        steps = min(n, m) // pairs
        grid_start = kernel.proj is None and bool(torch.isnan(kernel.log_sigma_b))
        kernel.initialize(torch.cat([ref, cur]))
        if grid_start:
            g = min(n, m, max(pairs, GRID_PAIRS))
            self._grid_start(kernel, ref[:g], cur[:g])
        opt = torch.optim.Adam([p for p in kernel.parameters() if p.requires_grad], lr=self.learning_rate)
        criterion = []
        bar = _steps_bar(self.progress, self.epochs * steps)
        try:
            for _ in range(self.epochs):
                pr = torch.randperm(n, generator=gen).to(self.device)
                pc = torch.randperm(m, generator=gen).to(self.device)
                for s in range(steps):
                    rows = slice(s * pairs, (s + 1) * pairs)
                    j = kernel.power(ref[pr[rows]], cur[pc[rows]], self.var_reg, self.backend).criterion
                    if not torch.isfinite(j):
                        raise ValueError(f"the training criterion became {float(j)} at step {len(criterion)}; try a "
                                         "smaller learning_rate or a larger var_reg")
                    opt.zero_grad()
                    (-j).backward()
                    opt.step()
                    criterion.append(float(j.detach()))
                    bar.update(1)
        finally:
            bar.close()
        return {"criterion": criterion, "pairs": pairs, "steps": len(criterion),
                "seconds": time.perf_counter() - t0}

    @torch.no_grad()
    def _grid_start(self, kernel: DeepKernel, ref: Tensor, cur: Tensor) -> None:
        """A Gaussian kernel alone (proj=None, no sigma_b given): J is not unimodal in the bandwidth (on
        Blobs it peaks near the blob width and again at huge bandwidths), so gradient steps from the median
        often climb the wrong peak. Start instead from the best of median * 2^(k/4), k = -16..16 (mmd_test's
        sigma="optimize" grid) by J on (up to GRID_PAIRS of) the training pairs, then refine by gradient."""
        from infovae_kernels.scale.api import OPTIMIZE_GRID

        median = kernel.log_sigma_b.clone()
        best, best_j = median, -math.inf
        for f in OPTIMIZE_GRID:
            kernel.log_sigma_b.copy_(median + math.log(f))
            j = float(kernel.power(ref, cur, self.var_reg, self.backend).criterion)
            if j > best_j:
                best, best_j = kernel.log_sigma_b.clone(), j
        kernel.log_sigma_b.copy_(best)

    @torch.no_grad()
    def _test(self, kernel: DeepKernel, ref: Tensor, cur: Tensor) -> tuple[float, Tensor]:
        """The held-out unbiased MMD^2 and its permutation statistics with the trained kernel: one
        ik.mmd_test per term, on that term's feature map, all with the same seed (the permutations depend
        only on the sizes, their number and the seed), so the weighted sums are the statistics of the sum
        of the terms, i.e. of k, under the same relabellings."""
        stat, perm = 0.0, torch.zeros(self.n_permutations, dtype=torch.float64)
        for (w, fr), (_, fc) in zip(kernel.feature_maps(ref), kernel.feature_maps(cur)):
            r = mmd_test(fr, fc, permutations=self.n_permutations, seed=self.seed, sigma=1.0, estimator="unbiased",
                         backend=self.backend, device=self.device, progress=False, names=("x_ref", "x"))
            w = float(w)
            stat, perm = stat + w * r.statistic, perm + w * r.permutation_statistics
        return stat, perm

    # ---- saving
    def _payload(self):
        config = dict(p_val=self.p_val, n_permutations=self.n_permutations, train_size=self.train_size,
                      var_reg=self.var_reg, learning_rate=self.learning_rate, epochs=self.epochs,
                      batch_size=self.batch_size, seed=self.seed, device=str(self.device), backend=self.backend,
                      progress=self.progress, preprocess=self.preprocess_fn is not None,
                      kernel=self._initial.config())
        state = {"x_ref": self.x_ref.cpu(), "kernel_initial": _cpu_state(self._initial),
                 "kernel_trained": None if self.kernel is None else _cpu_state(self.kernel)}
        return config, state

    @classmethod
    def _restore(cls, config, state, **objects):
        objects = dict(objects)
        given = objects.pop("kernel", None)
        preprocess_fn = _needed_preprocess(config, objects)
        kcfg = config["kernel"]
        if kcfg["proj"]:
            if given is None:
                raise ValueError("this detector's kernel has a projection, which a file cannot hold: pass a "
                                 "DeepKernel with a projection of the same architecture, load(path, "
                                 "kernel=DeepKernel(proj))")
            if not isinstance(given, DeepKernel) or given.proj is None or given.config() != kcfg:
                raise ValueError(f"kernel= must be a DeepKernel with a projection and eps={kcfg['eps']!r}, as the "
                                 f"saved one, got {given!r}")
            template = copy.deepcopy(given)
        else:
            if given is not None:
                raise ValueError("this detector's kernel has no projection; load(path) takes no kernel=")
            template = DeepKernel()
        device = torch.device(config["device"])
        det = cls.__new__(cls)
        for key in ("p_val", "n_permutations", "train_size", "var_reg", "learning_rate", "epochs", "batch_size",
                    "seed", "backend", "progress"):
            setattr(det, key, config[key])
        det.device, det.preprocess_fn = device, preprocess_fn
        det.x_ref = state["x_ref"].to(device)
        det._initial = _loaded(template, state["kernel_initial"], device)
        det.kernel = None if state["kernel_trained"] is None else _loaded(template, state["kernel_trained"], device)
        det.last_fit = None
        return det


def _steps_bar(progress: Optional[bool], total: int):
    """A tqdm bar over training steps, with scale.planning.progress_bar's policy (False: none; None: on a
    terminal, after 2 s; True: from the start; no tqdm: none, and one warning when True)."""
    if progress is False or progress is None and not sys.stderr.isatty():
        return progress_bar(False, total)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return progress_bar(progress, total)  # no bar, and the package's one warning for progress=True
    return tqdm(total=total, unit="step", desc="training the kernel", delay=0.0 if progress else 2.0, leave=False,
                dynamic_ncols=True)


def _cpu_state(kernel: DeepKernel) -> dict[str, Tensor]:
    return {k: v.detach().cpu().clone() for k, v in kernel.state_dict().items()}


def _loaded(template: DeepKernel, sd: dict[str, Tensor], device: torch.device) -> DeepKernel:
    kernel = copy.deepcopy(template)
    try:
        kernel.load_state_dict(sd)
    except RuntimeError as exc:
        raise ValueError(f"kernel= does not have the saved kernel's architecture: {exc}") from None
    return kernel.to(device)
