"""MMDDriftOnline: the sequential MMD change detector of Cobb, Van Looveren & Klaise, "Sequential
multivariate change detection with calibrated and memoryless false detection rates" (AISTATS 2022), the
method of alibi-detect's MMDDriftOnline, written from the paper's description and our own derivations
(no code copied from alibi-detect or from the authors' repository).

The statistic. x_ref (N rows) is split once into a sub-reference R of n_r = N - (2W - 1) rows and 2W - 1
held-out rows. After each instance the statistic is the unbiased (U-statistic) squared MMD between R and
the window of the last W instances:

    MMD2_t = sum_{i != j in R} k / (n_r (n_r - 1)) + sum_{a != b in window} k / (W (W - 1)) - 2 mean_{R x window} k

It is updated with running sums: the constant R x R term is set once; each new point costs one kernel row
against R (O(n_r d), plain torch: one `torch.cdist` row or one matrix-vector product) and one against the
window (O(W d)); the window is never recomputed. Per instance: O((n_r + W) d) time, O(W d) memory.

Thresholds (the ERT). Under no change the detector aims at a run length with mean `ert` and the same
probability q = 1/ert of a detection at every step given none before (Geometric(q), "memoryless").
Thresholds b_0 .. b_{W-1} are set by simulation: n_bootstraps streams, each with its own random split of
x_ref into a sub-reference R_b and 2W - 1 held-out points e_0 .. e_{2W-2} (drawn without replacement),
whose statistic at simulated step w is the unbiased MMD^2 between R_b and (e_w .. e_{w+W-1}); b_w is the
type-7 (linear, torch.quantile's default) quantile at level 1 - q of the statistics of the streams still
alive at step w, and a stream stays alive while its statistic is strictly below the threshold (`<`). A
detection is a statistic strictly above the threshold (`>`). The thresholds reach W steps; after that
b_{W-1} is used for ever.

Calibration cost. All that depends on a stream's sub-reference comes from r = K 1, the row sums of the
reference kernel matrix over all N rows, computed once by the fused `ik.kernel_sum` (in row blocks, for
the progress bar), and T = sum(r) - trace(K): with G_b the (2W-1) x (2W-1) kernel block of the stream's
held-out points, c_bj = r_{e_j} - sum_l G_b[l, j] = sum_{i in R_b} k(x_i, e_j) and
sum_{i != j in R_b} k = T - offdiag(G_b) - 2 sum_j c_bj. So calibration is one O(N^2 d) fused pass plus
O(B W^2 d) for the blocks (batched plain torch, in chunks of streams of bounded memory), in O(N d + B W)
memory; nothing N x N, and no O(N B) term. The operational split uses the same formulas with its own
held-out block, so R's R x R term needs no second pass.

Conventions (decisions):
* Start (alibi-detect's): at t = 0 the window holds W of the 2W - 1 held-out reference points; every
  predict is a test, from t = 1; the ERT counts from t = 0; predict at time t uses b_t for t < W and
  b_{W-1} from t = W on (b_0 belongs to the starting window: t = 0 is simulated step 0).
* The split is drawn once from the detector's own torch.Generator, seeded by `seed`, after the bootstrap
  streams, and redrawn (as alibi-detect does) while the starting statistic is not below b_0 (>= b_0:
  exactly the streams the calibration drops at step 0).
* reset_state() draws a new starting window: W random points (in random order) of the 2W - 1 held-out
  ones, again while its statistic is not below b_0 (after 1,000 draws it falls back to the construction's
  window, which passed). alibi-detect reuses one starting window for every reset; the numpy check of the
  specification suggested (not conclusively) that reuse lowers the hazard at t = 1, and a redrawn window
  matches the simulated streams, whose starting windows are all different.
* n_bootstraps defaults to the authors' int(10 ert / (1 - 1/ert)^W) (about 10 ert streams reach the last
  step; alibi-detect's default is 1000) and is refused when n_bootstraps (1 - 1/ert)^(W - 1) < ert: fewer
  than about ert streams would be left for the last quantile, which could not resolve level 1 - 1/ert.
* Bandwidth: sigma=None is the package's median heuristic on all of x_ref's features (before the split),
  set once (`offline.reference_bandwidth`): the median pairwise distance, where alibi-detect's GaussianRBF
  uses that median / sqrt(2) (pass sigma=median / 2 ** 0.5 to match it) and the authors' code median * 1.
* Any kernel of the package works (rbf with one or several bandwidths, imq, laplacian, energy, polynomial,
  linear): kernel values come from the package's formulas (kernels.kernel_params on points centred and
  scaled as kernels.prepare does, and kernels.kernel_values).

Differences from alibi-detect: the per-step update is O(n_r + W) (running sums; alibi-detect recomputes
the window's W x W block and an n_r x W mean at each step); calibration needs neither the N x N matrix
nor per-stream passes over the sub-reference; a redrawn starting window at each reset; the default
n_bootstraps above; the default bandwidth (median, not median / sqrt 2); every draw (streams, split,
starting windows) from the detector's own generator seeded by `seed`, not torch's global one; predict
refuses a batch, NaN/Inf, another width or dtype, and a refused call leaves the state untouched; predict
always returns the statistic (no return_test_stat); `thresholds` is the W calibrated values (b_t of
predict at time t is thresholds[min(t, W - 1)]); results are OnlineDriftResult (to_dict() gives
alibi-detect's keys, is_drift as 0 / 1); no x_ref_preprocessed / input_shape / data_type / verbose
arguments (preprocess_fn=None means x_ref is features already). Differences from the authors' code: the
start convention above (theirs starts with an empty window and tests from t = W, with b_0 at the first
test), the running-sum update (theirs is O(n_r W) per step, as alibi-detect's) and the bandwidth.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from infovae_kernels import _checks, kernels
from infovae_kernels.drift._base import (BATCH_SIZE, Detector, OnlineDriftResult, Preprocess, check_like, features,
                                         register)
from infovae_kernels.drift.offline import (SigmaArg, _memmap_reference, _needed_preprocess, _restore_reference,
                                           kernel_config, kernel_from_config, reference_bandwidth)
from infovae_kernels.ops.kernel_sum import kernel_sum
from infovae_kernels.scale.planning import progress_bar
from infovae_kernels.scale.sources import Data
from torch.types import Device

ROW_PAIRS = 1 << 28  # kernel pairs per ik.kernel_sum call of the r = K 1 pass (one progress step)
CHUNK_BYTES = 1 << 25  # working memory of one chunk of bootstrap streams (about 32 MiB)
MAX_DRAWS = 1000  # starting windows (or splits) drawn before giving up on one below b_0


def _draw_streams(gen: torch.Generator, count: int, n: int, k: int) -> Tensor:
    """(count, k) row indices: per row k distinct indices of range(n) in uniformly random order (Floyd's
    sampling of a k-subset, then a random order), O(count k^2) work and no O(count n) memory."""
    out = torch.empty((count, k), dtype=torch.long)
    for i, j in enumerate(range(n - k, n)):
        t = torch.randint(0, j + 1, (count,), generator=gen)
        taken = (out[:, :i] == t[:, None]).any(1)
        out[:, i] = torch.where(taken, torch.full_like(t, j), t)
    return out.gather(1, torch.rand((count, k), generator=gen).argsort(1))


def _quantile7(values: Tensor, level: float) -> float:
    """Hyndman-Fan type 7 (torch.quantile's linear interpolation), float64; also above torch.quantile's
    input size limit."""
    values = values.double()
    if values.numel() <= 1 << 24:
        return float(torch.quantile(values, level))
    s = values.sort().values
    h = (s.numel() - 1) * level
    lo = int(math.floor(h))
    hi = min(lo + 1, s.numel() - 1)
    return float(s[lo] + (h - lo) * (s[hi] - s[lo]))


def _offdiag_sum(g: Tensor) -> Tensor:
    return g.sum((-2, -1)) - g.diagonal(dim1=-2, dim2=-1).sum(-1)


@register
class MMDDriftOnline(Detector):
    """Online MMD drift detector (Cobb, Van Looveren & Klaise 2022; alibi-detect's MMDDriftOnline), with
    thresholds calibrated so that the expected run time without change is `ert`. See the module docstring
    for the statistic, the calibration, the conventions and the differences from alibi-detect.

    x_ref: the reference data (a tensor, a numpy array, memory-mapped included, or chunks), assumed i.i.d.
        from the pre-change distribution; its features (preprocess_fn of its rows, or the rows) are kept.
    ert: the expected run time (in instances) without change, > 1; the per-step false positive rate is 1/ert.
    window_size: W, the instances per window: an int with 2 <= W <= (N - 1) / 2 for N reference rows (the
        unbiased statistic needs W >= 2 window points and n_r = N - (2W - 1) >= 2 sub-reference points).
        A small W detects large changes fast, a large W small changes more surely.
    preprocess_fn: maps a batch of raw rows to (rows, d) features under torch.no_grad() on `device`; x_ref's
        in batches of batch_size, each predict's instance as a batch of one.
    kernel, sigma: any kernel of the package and its bandwidth(s) (as ik.mmd; None: the median pairwise
        distance of x_ref's features, set once; alibi-detect's default is that / sqrt(2)).
    n_bootstraps: simulated streams for the thresholds; None: int(10 ert / (1 - 1/ert)^W) (the authors'
        default, about 10 ert survivors at the last step). Refused below ert / (1 - 1/ert)^(W - 1).
    seed: the detector's torch.Generator (streams, split, starting windows); the same arguments give the
        same detector, and a saved one continues bitwise.
    device, backend, batch_size: where features, calibration and updates run; the fused op's backend for
        the r = K 1 pass; preprocess_fn's batch size.
    progress: a bar (tqdm, optional) over the calibration's kernel pairs; None: only on a terminal, after 2 s.

    Cost, measured on a shared 2-core CPU (d = 32 float32, W = 20, ert = 500, the default 5,204 streams; 1
    thread / 2 threads): calibration 0.37 / 0.22 s at N = 1,000, 0.44 / 0.25 s at 5,000, 10 / 5.4 s at
    100,000, with 40-130 MiB of memory growth; an update 0.14 ms at N = 1,000, 0.26 ms at 10,000, 1.4 / 0.86
    ms at 100,000, the same at t = 1 and t = 20,000.

    Attributes: t (instances since the last reset), test_stats (float64 tensor of their statistics),
    thresholds (float64 (W,): b_0 .. b_{W-1}), survivors (streams alive at each calibrated step, and after
    the last), sigma, n_bootstraps.
    """

    def __init__(self, x_ref: Data, ert: float, window_size: int, preprocess_fn: Optional[Preprocess] = None, *,
                 kernel: kernels.Kernel = "rbf", sigma: SigmaArg = None, n_bootstraps: Optional[int] = None,
                 seed: int = 0, device: Device = None, backend: str = "auto", batch_size: int = BATCH_SIZE,
                 progress: Optional[bool] = None) -> None:
        if isinstance(ert, bool) or not isinstance(ert, numbers.Real) or not math.isfinite(float(ert)) \
                or float(ert) <= 1.0:
            raise ValueError(f"ert must be a finite number > 1 (the expected run time; the per-step false positive "
                             f"rate 1/ert must be below 1), got {ert!r}")
        if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size < 2:
            raise ValueError(f"window_size must be an int >= 2 (the unbiased MMD^2 needs 2 window points), got "
                             f"{window_size!r}")
        integral = isinstance(n_bootstraps, numbers.Integral) and not isinstance(n_bootstraps, bool)
        if n_bootstraps is not None and (not integral or n_bootstraps < 1):
            raise ValueError(f"n_bootstraps must be a positive int or None, got {n_bootstraps!r}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be None, True or False, got {progress!r}")
        self.ert, self.window_size = float(ert), int(window_size)
        self.kernel = _checks.kernel(kernel)
        self.seed, self.batch_size, self.progress = int(seed), int(batch_size), progress
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self.backend, self.preprocess_fn = backend, preprocess_fn
        self._ref_file = _memmap_reference(x_ref) if preprocess_fn is None else None
        self.x_ref = features(x_ref, name="x_ref", preprocess_fn=preprocess_fn, device=self.device,
                              batch_size=self.batch_size)
        n, w = self.x_ref.shape[0], self.window_size
        if n - (2 * w - 1) < 2:
            raise ValueError(f"window_size={w} is too large for {n} reference rows: it must be at most (N - 1) / 2 = "
                             f"{(n - 1) // 2}, so that the sub-reference keeps n_r = N - (2W - 1) >= 2 rows")
        q = 1.0 / self.ert
        self.n_bootstraps = int(10 * self.ert / (1 - q) ** w) if n_bootstraps is None else int(n_bootstraps)
        left = self.n_bootstraps * (1 - q) ** (w - 1)
        if left < self.ert:
            raise ValueError(f"n_bootstraps={self.n_bootstraps} is too small for ert={self.ert:g} and window_size={w}: "
                             f"about {left:.0f} streams would reach the last calibrated step, and its (1 - 1/ert) "
                             f"quantile needs at least ert of them; use n_bootstraps >= "
                             f"{math.ceil(self.ert / (1 - q) ** (w - 1))} (None: int(10 ert / (1 - 1/ert)^W) = "
                             f"{int(10 * self.ert / (1 - q) ** w)})")
        self.sigma = reference_bandwidth(sigma, self.kernel, self.x_ref)
        self._gen = torch.Generator().manual_seed(self.seed)
        self._setup_geometry()
        with torch.no_grad():
            z = self._prepare(self.x_ref)
            bar = progress_bar(self.progress, n * n + self.n_bootstraps * (2 * w - 1) ** 2)
            try:
                r, total = self._reference_row_sums(bar)
                thresholds, self.survivors = self._calibrate(z, r, total, bar)
            finally:
                bar.close()
            self.thresholds = torch.tensor(thresholds, dtype=torch.float64)
            self._choose_split(z, r, total)
        self._stats: list[float] = []

    # ---- kernel values on prepared points
    def _setup_geometry(self) -> None:
        """The centre and power-of-two scale of kernels.prepare, fixed by x_ref (new points get the same), and
        the kernel's parameters for points so prepared, in the compute dtype."""
        x = self.x_ref
        ct = kernels.compute_dtype(x.dtype)
        self._dot = kernels.is_dot(self.kernel)
        self._name = kernels.primitive_name(self.kernel)
        centre = None if self._dot else (x.sum(0, dtype=torch.float64) / x.shape[0]).to(ct)
        peak = (x.to(ct) if centre is None else x.to(ct) - centre).abs().max()
        scale = kernels.power_of_two_scale(peak)
        sigmas = None if self.sigma is None else torch.tensor(self.sigma, dtype=torch.float64, device=x.device)
        params = kernels.kernel_params(self.kernel, sigmas, x.shape[1], scale, x.dtype)
        self._set_geometry(centre, scale, params)

    def _set_geometry(self, centre: Optional[Tensor], scale: Tensor, params: Tensor) -> None:
        ct = kernels.compute_dtype(self.x_ref.dtype)
        self._centre, self._scale, self._params = centre, scale, params
        self._inv = (1.0 / scale).to(ct)
        self._pk = params.to(ct)

    def _prepare(self, x: Tensor) -> Tensor:
        ct = kernels.compute_dtype(x.dtype)
        x = x.to(ct)
        return (x if self._centre is None else x - self._centre) * self._inv

    def _k(self, a: Tensor, b: Tensor) -> Tensor:
        """k(a_i, b_j) for prepared points, (..., m, d) x (..., n, d) -> (..., m, n) in the compute dtype:
        squared distances from coordinate differences (torch.cdist without its matmul shortcut: exact 0
        between a point and itself, no cancellation), or dot products for the polynomial kernels."""
        if self._dot:
            return kernels.kernel_values(a @ b.mT, self._pk, self._name)
        r2 = torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").square_()
        return kernels.kernel_values(r2, self._pk, self._name)

    def _self_k(self, a: Tensor) -> Tensor:
        """k(a_i, a_i), (m,)."""
        u = (a * a).sum(-1) if self._dot else a.new_zeros(a.shape[:-1])
        return kernels.kernel_values(u, self._pk, self._name)

    # ---- calibration
    def _reference_row_sums(self, bar) -> tuple[Tensor, float]:
        """r = K 1 over all of x_ref (float64, (N,)) by the fused op in row blocks, and T = sum_{i != j} K_ij."""
        x = self.x_ref.to(kernels.compute_dtype(self.x_ref.dtype))  # half precision: r in float32, not rounded to half
        n = x.shape[0]
        rows = max(1, ROW_PAIRS // n)
        parts = []
        for s in range(0, n, rows):
            parts.append(kernel_sum(x[s:s + rows], x, kernel=self.kernel, sigma=self.sigma,
                                    backend=self.backend).double())
            bar.update(parts[-1].shape[0] * n)
        r = torch.cat(parts)
        trace = self._self_k(self._prepare(x)).sum(dtype=torch.float64)
        return r, float(r.sum() - trace)

    def _stream_statistics(self, z: Tensor, r: Tensor, total: float, e: Tensor) -> Tensor:
        """(C, W) float64: the unbiased MMD^2 of each stream (row of e: its 2W - 1 held-out indices in
        order; its sub-reference is the rest of x_ref) at simulated steps w = 0 .. W - 1, from r, T and the
        stream's (2W - 1) x (2W - 1) block only."""
        w_ = self.window_size
        n_r = z.shape[0] - (2 * w_ - 1)
        ze = z[e]
        g = self._k(ze, ze).double()  # (C, k, k)
        c = r[e] - g.sum(1)  # sum over the stream's sub-reference of k(x_i, e_j)
        sxx = (total - _offdiag_sum(g) - 2.0 * c.sum(1)) / (n_r * (n_r - 1))
        g = g - torch.diag_embed(g.diagonal(dim1=1, dim2=2))
        cnt, k = e.shape
        p = g.new_zeros((cnt, k + 1, k + 1))
        p[:, 1:, 1:] = g.cumsum(1).cumsum(2)
        pc = c.new_zeros((cnt, k + 1))
        pc[:, 1:] = c.cumsum(1)
        lo = torch.arange(w_, device=e.device)
        hi = lo + w_
        syy = (p[:, hi, hi] - p[:, lo, hi] - p[:, hi, lo] + p[:, lo, lo]) / (w_ * (w_ - 1))
        sxy = (pc[:, hi] - pc[:, lo]) / (n_r * w_)
        return sxx[:, None] + syy - 2.0 * sxy

    def _calibrate(self, z: Tensor, r: Tensor, total: float, bar=None, keep_streams: bool = False):
        """(thresholds, survivors) (and the streams' indices and statistics when keep_streams)."""
        n, d = z.shape
        k = 2 * self.window_size - 1
        count = self.n_bootstraps
        per_stream = k * k * 40 + k * d * z.element_size() * 2 + 64
        chunk = max(1, min(count, CHUNK_BYTES // per_stream))
        stats = torch.empty((count, self.window_size), dtype=torch.float64)
        streams = []
        for s in range(0, count, chunk):
            e = _draw_streams(self._gen, min(chunk, count - s), n, k)
            if keep_streams:
                streams.append(e)
            stats[s:s + e.shape[0]] = self._stream_statistics(z, r, total, e.to(z.device)).cpu()
            if bar is not None:
                bar.update(e.shape[0] * k * k)
        level = 1.0 - 1.0 / self.ert
        alive = torch.ones(count, dtype=torch.bool)
        thresholds, survivors = [], []
        for w in range(self.window_size):
            survivors.append(int(alive.sum()))
            if survivors[-1] == 0:
                raise ValueError(f"calibration: no simulated stream survived step {w - 1}: the statistic takes the "
                                 "same value on (nearly) every stream; is x_ref degenerate (constant rows)?")
            b = _quantile7(stats[alive, w], level)
            thresholds.append(b)
            alive &= stats[:, w] < b
        survivors.append(int(alive.sum()))
        if keep_streams:
            return thresholds, survivors, torch.cat(streams), stats
        return thresholds, survivors

    # ---- the operational split and the window
    def _choose_split(self, z: Tensor, r: Tensor, total: float) -> None:
        n, w = z.shape[0], self.window_size
        n_r = n - (2 * w - 1)
        for _ in range(MAX_DRAWS):
            perm = torch.randperm(n, generator=self._gen)
            ref, held = perm[:n_r], perm[n_r:]
            zh = z[held.to(z.device)]
            g = self._k(zh, zh).double()
            c = r[held.to(r.device)] - g.sum(0)
            self._ref_idx, self._held_idx = ref, held
            self._held_k, self._held_s = g, c
            self._a = float((total - _offdiag_sum(g) - 2.0 * c.sum()) / (n_r * (n_r - 1)))
            self._zh = zh
            start = torch.randperm(2 * w - 1, generator=self._gen)[:w]
            if self._start(start) < float(self.thresholds[0]):
                break
        else:
            raise ValueError(f"no split of x_ref in {MAX_DRAWS} draws had a starting statistic below b_0; is x_ref "
                             "degenerate?")
        self._start0 = start
        self._zr = z[ref.to(z.device)].contiguous()

    def _start(self, start: Tensor) -> float:
        """Put the held-out points `start` (positions in the held-out set) in the window at t = 0; its statistic."""
        w = self.window_size
        idx = start.to(self._held_s.device)
        self._ring = self._zh[idx].clone()
        self._ring_s = self._held_s[idx].clone()
        self._q = float(_offdiag_sum(self._held_k[idx][:, idx]))
        self._pos, self.t, self._stats = 0, 0, []
        self._start_idx = start
        return self._statistic(self._q, float(self._ring_s.sum()))

    def _statistic(self, q: float, sxy: float) -> float:
        w, n_r = self.window_size, self._zr_rows()
        return self._a + q / (w * (w - 1)) - 2.0 * sxy / (n_r * w)

    def _zr_rows(self) -> int:
        return self.x_ref.shape[0] - (2 * self.window_size - 1)

    def reset_state(self) -> None:
        """t = 0 and a new starting window: W random held-out points (in random order) whose statistic is below
        b_0 (the construction's window after MAX_DRAWS failures). The thresholds are not recalibrated."""
        b0 = float(self.thresholds[0])
        for _ in range(MAX_DRAWS):
            if self._start(torch.randperm(2 * self.window_size - 1, generator=self._gen)[:self.window_size]) < b0:
                return
        self._start(self._start0)

    # ---- the stream
    @property
    def test_stats(self) -> Tensor:
        """The statistics of the instances since the last reset (float64, length t)."""
        return torch.tensor(self._stats, dtype=torch.float64)

    def threshold(self, t: int) -> float:
        """The threshold in force at time t >= 0: b_t for t < W, b_{W-1} after."""
        return float(self.thresholds[min(t, self.window_size - 1)])

    def predict(self, x_t: Any) -> OnlineDriftResult:
        """Add one instance to the window and test: is_drift when the statistic is above the threshold of this
        time. x_t: one instance, (d,) or (1, d) features, or with a preprocess_fn one raw instance (no batch
        dimension). A refused x_t (another width or dtype than x_ref's features, NaN/Inf, a batch, a failing
        preprocess_fn) raises and leaves the detector unchanged. Nothing stops after a detection: call
        reset_state() to start again."""
        if not isinstance(x_t, (Tensor, np.ndarray)):
            raise TypeError(f"x_t must be one instance as a tensor or a numpy array, got {type(x_t).__name__}")
        if self.preprocess_fn is None:
            if x_t.ndim == 1:
                x_t = x_t[None]
            elif x_t.ndim != 2 or x_t.shape[0] != 1:
                what = f"a batch of {x_t.shape[0]} instances" if x_t.ndim == 2 else f"shape {tuple(x_t.shape)}"
                raise ValueError(f"x_t must be one instance, (d,) or (1, d) features, got {what}; predict one row "
                                 "at a time")
        else:
            x_t = x_t[None]
        feats = features(x_t, name="x_t", preprocess_fn=self.preprocess_fn, device=self.device,
                         batch_size=self.batch_size)
        if feats.shape[0] != 1:
            raise ValueError(f"x_t must be one instance, got {feats.shape[0]} rows of features")
        check_like(feats, self.x_ref, "x_t")
        with torch.no_grad():
            y = self._prepare(feats)
            o = self._pos
            s_new = self._k(y, self._zr).sum(dtype=torch.float64)
            pair = self._k(torch.cat([y, self._ring[o:o + 1]]), self._ring).double()
            sums = pair.sum(1) - pair[:, o]  # k(y, stayers), k(leaver, stayers)
            ring_s = self._ring_s.clone()
            ring_s[o] = s_new
            q = self._q + 2.0 * float(sums[0] - sums[1])
            stat = self._statistic(q, float(ring_s.sum()))
            if not math.isfinite(stat):
                raise ValueError("x_t gives a non-finite statistic (kernel values overflow: for a polynomial kernel "
                                 "pass float64 features or a smaller gamma)")
            self._ring[o] = y[0]
            self._ring_s, self._q = ring_s, q
        self._pos = (o + 1) % self.window_size
        self.t += 1
        self._stats.append(stat)
        threshold = self.threshold(self.t)
        return OnlineDriftResult(is_drift=stat > threshold, time=self.t, ert=self.ert, test_stat=stat,
                                 threshold=threshold)

    # ---- saving
    def _payload(self):
        config = dict(ert=self.ert, window_size=self.window_size, kernel=kernel_config(self.kernel), sigma=self.sigma,
                      n_bootstraps=self.n_bootstraps, seed=self.seed, device=str(self.device), backend=self.backend,
                      batch_size=self.batch_size, progress=self.progress, preprocess=self.preprocess_fn is not None)
        if self._ref_file is not None:
            state = {"x_ref_file": self._ref_file, "x_ref_sum": float(self.x_ref.double().sum())}
        else:
            state = {"x_ref": self.x_ref.cpu()}
        cpu = lambda v: None if v is None else v.detach().cpu().clone()  # noqa: E731
        state.update(
            thresholds=self.thresholds.clone(), survivors=list(self.survivors),
            centre=cpu(self._centre), scale=cpu(self._scale), params=cpu(self._params),
            ref_idx=self._ref_idx.clone(), held_idx=self._held_idx.clone(), held_k=cpu(self._held_k),
            held_s=cpu(self._held_s), a=self._a, start0=self._start0.clone(), start_idx=self._start_idx.clone(),
            t=self.t, stats=list(self._stats), ring=cpu(self._ring), ring_s=cpu(self._ring_s), q=self._q,
            pos=self._pos, generator=self._gen.get_state())
        return config, state

    @classmethod
    def _restore(cls, config, state, **objects):
        preprocess_fn = _needed_preprocess(config, objects)
        det = cls.__new__(cls)
        det.ert, det.window_size = config["ert"], config["window_size"]
        det.kernel, det.sigma = kernel_from_config(config["kernel"]), config["sigma"]
        for key in ("n_bootstraps", "seed", "backend", "batch_size", "progress"):
            setattr(det, key, config[key])
        det.device, det.preprocess_fn = torch.device(config["device"]), preprocess_fn
        det._ref_file, det.x_ref = _restore_reference(state, det.device)
        dev = det.device
        det._dot = kernels.is_dot(det.kernel)
        det._name = kernels.primitive_name(det.kernel)
        det._set_geometry(None if state["centre"] is None else state["centre"].to(dev), state["scale"].to(dev),
                          state["params"].to(dev))
        det.thresholds, det.survivors = state["thresholds"].clone(), list(state["survivors"])
        det._ref_idx, det._held_idx = state["ref_idx"], state["held_idx"]
        with torch.no_grad():
            z = det._prepare(det.x_ref)
            det._zr = z[det._ref_idx.to(dev)].contiguous()
            det._zh = z[det._held_idx.to(dev)]
        det._held_k, det._held_s, det._a = state["held_k"].to(dev), state["held_s"].to(dev), state["a"]
        det._start0, det._start_idx = state["start0"], state["start_idx"]
        det.t, det._stats, det._q, det._pos = state["t"], list(state["stats"]), state["q"], state["pos"]
        det._ring, det._ring_s = state["ring"].to(dev), state["ring_s"].to(dev)
        det._gen = torch.Generator()
        det._gen.set_state(state["generator"])
        return det
