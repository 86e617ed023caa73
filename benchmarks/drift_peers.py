"""The peers of benchmarks/bench_drift.py, one function per peer drift detector, each run by bench_drift in
that peer's own virtual environment (outside this repository: /work/peers/<peer> by default), so that none
of them is ever installed next to infovae-kernels or imported by it:

    <peer venv>/bin/python benchmarks/drift_peers.py PEER CASE --ref REF.npy --x X.npy --sigma S [options]
    <peer venv>/bin/python benchmarks/drift_peers.py --versions PEER

PEER CASE is one of: alibi offline, alibi online, torchdrift offline, frouros offline. The last line of
stdout is `DRIFT_RESULT {json}`: seconds (constructor + predict, after a warm-up on 64 rows that the
numbers exclude; a call under 1 s is repeated, at least 3 and 0.5 s, at most 7 times, and the median kept), peak_mem_mib (resident memory above the start, sampled every 2 ms by a
thread; worker processes add their private memory), distance (the unbiased MMD^2), p_val, is_drift,
status, note; for online detectors also calib_seconds, calib_peak_mib and the mean per-instance predict
time over two stretches of the stream (update_ms_early: t = 1 .. n_update; update_ms_late: t = late_at+1 ..
late_at+n_update).

Every peer gets the Gaussian RBF exp(-r^2 / (2 sigma^2)) with the same sigma, through its own mapping:
alibi-detect `sigma=np.array([sigma], float32)` (its default kernel class GaussianRBF, built from that
sigma: a GaussianRBF *instance* would be re-fitted by the median heuristic at construction while
configure_kernel_from_x_ref is True, and a float64 sigma makes the whole computation float64);
TorchDrift `GaussianKernel(lengthscale=sigma)` (it takes distances, not squared ones); frouros
`partial(rbf_kernel, sigma=sigma)` (its default is a fixed sigma = 1, no median).

This file imports only the standard library and numpy at the top: bench_drift imports it (in the project's
venv) for PeakMemory and the measuring loops, and a peer is imported only inside its own function.
alibi-detect (Business Source License) is run here, never copied.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.metadata
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

MARKER = "DRIFT_RESULT "
PACKAGES = {"alibi": "alibi-detect", "torchdrift": "torchdrift", "frouros": "frouros"}


# --------------------------------------------------------------------------------------------- memory

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(pid="self") -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _private_bytes(pid: int) -> int:
    """A worker's private memory (what it adds beyond the pages it shares with its parent after fork)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def _descendants(root: int) -> list[int]:
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
                parent[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
            except (OSError, ValueError):
                pass
    out, frontier = [], {root}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier}
        out += sorted(frontier)
    return out


def _trim_heap() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak resident memory above the start, sampled every 2 ms by a thread (torch, numpy and scipy release
    the GIL in their kernels), plus the private memory of any worker processes (frouros' multiprocessing
    pool), looked for every 20 ms. `cap_bytes`: above it the on_cap callback runs (the runner uses it to
    stop itself before the machine runs out of memory)."""

    def __init__(self, cap_bytes: float = math.inf, on_cap=None):
        self.cap, self.on_cap = cap_bytes, on_cap
        self.workers_seen = 0

    def __enter__(self):
        _trim_heap()
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        me, kids, tick = os.getpid(), [], 0
        while not self._stop.is_set():
            if tick % 10 == 0:
                kids = _descendants(me)
                self.workers_seen = max(self.workers_seen, len(kids))
            tick += 1
            now = _rss_bytes()
            for k in kids:
                try:
                    now += _private_bytes(k)
                except OSError:
                    pass
            self.peak = max(self.peak, now)
            if now - self.base > self.cap and self.on_cap is not None:
                self.on_cap(now - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


# --------------------------------------------------------------------------------------------- measuring

def measure_offline(run, x_ref, x, **kw) -> dict:
    """run(x_ref, x, **kw) -> dict(distance, p_val, is_drift[, fit_seconds, note, ...]): one warm-up on 64
    rows (imports, JIT compiles, worker pools), then the measured call under PeakMemory."""
    run(x_ref[:64], x[:64], **kw)
    with PeakMemory(**_CAP) as mem:
        c0, t0 = _cpu(), time.perf_counter()
        out = run(x_ref, x, **kw)
        seconds, cpu = time.perf_counter() - t0, _cpu() - c0
    times = [seconds]
    start = time.perf_counter()
    while seconds < 1.0 and len(times) < 7 and (len(times) < 3 or time.perf_counter() - start < 0.5):
        t0 = time.perf_counter()
        run(x_ref, x, **kw)
        times.append(time.perf_counter() - t0)
    out.update(seconds=float(np.median(times)), peak_mem_mib=mem.mib, status="ok")
    out["note"] = _join(out.get("note"), f"first call {seconds:.3g} s wall, {cpu:.3g} s CPU"
                        + (f", median of {len(times)} calls" if len(times) > 1 else ""))
    if mem.workers_seen:
        out["note"] = _join(out.get("note"), f"memory includes {mem.workers_seen} worker processes")
    return out


def measure_online(make, x_ref, stream, n_update: int, late_at: int, **kw) -> dict:
    """make(x_ref, **kw) -> (detector, step) with step(x_t) -> (is_drift, test_stat, threshold). A warm-up
    detector on 200 rows and 5 steps first; then the calibration (the constructor) under PeakMemory, then
    late_at + n_update single-instance predictions, each timed; update_ms_early is the mean over
    t = 1..n_update, update_ms_late over t = late_at+1..late_at+n_update."""
    _, warm = make(x_ref[:200], **kw)
    for i in range(5):
        warm(stream[i])
    del warm
    with PeakMemory(**_CAP) as mem:
        c0, t0 = _cpu(), time.perf_counter()
        det, step = make(x_ref, **kw)
        calib, calib_cpu = time.perf_counter() - t0, _cpu() - c0
        calib_mib = mem.mib
        length = late_at + n_update
        if len(stream) < length:
            raise ValueError(f"the stream has {len(stream)} rows, {length} are needed")
        times, flags, last = np.empty(length), [], None
        for t in range(length):
            s = time.perf_counter()
            last = step(stream[t])
            times[t] = time.perf_counter() - s
            flags.append(bool(last[0]))
    hits = [i + 1 for i, f in enumerate(flags) if f]
    note = f"{len(hits)} detections in {length} steps" + (f" (first at t={hits[0]})" if hits else "")
    note += f"; last test_stat {last[1]:.4g} vs threshold {last[2]:.4g}; calibration {calib_cpu:.3g} s CPU"
    return dict(calib_seconds=calib, calib_peak_mib=calib_mib, seconds=calib + float(times.sum()),
                peak_mem_mib=mem.mib, update_ms_early=1e3 * float(times[:n_update].mean()),
                update_ms_late=1e3 * float(times[late_at:].mean()), is_drift=bool(hits),
                status="ok", note=note)


_CAP: dict = {}


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the figure that a busy machine inflates less)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _join(*parts) -> str:
    return "; ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------- peers

def alibi_offline(x_ref, x, *, sigma, n_perm, p_val, threads):
    """alibi-detect MMDDrift, backend='pytorch', GaussianRBF(sigma) through `sigma=` (see the module doc)."""
    import torch
    from alibi_detect.cd import MMDDrift

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    det = MMDDrift(x_ref, backend="pytorch", p_val=p_val, sigma=np.array([sigma], dtype=np.float32),
                   n_permutations=n_perm, device="cpu")
    fit = time.perf_counter() - t0
    data = det.predict(x, return_p_val=True, return_distance=True)["data"]
    used = float(det._detector.kernel.sigma.reshape(-1)[0])
    if not math.isclose(used, sigma, rel_tol=1e-5):
        raise RuntimeError(f"alibi's kernel ended with sigma {used}, not {sigma}")
    return dict(distance=float(data["distance"]), p_val=float(data["p_val"]), is_drift=bool(data["is_drift"]),
                distance_threshold=float(data["distance_threshold"]), fit_seconds=fit,
                note=f"fit {fit:.3g} s; p = #(perm >= stat) / {n_perm}")


def alibi_online(x_ref, *, sigma, ert, window, n_bootstraps, threads):
    import torch
    from alibi_detect.cd import MMDDriftOnline

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    det = MMDDriftOnline(x_ref, ert=ert, window_size=window, backend="pytorch",
                         sigma=np.array([sigma], dtype=np.float32), n_bootstraps=n_bootstraps, device="cpu",
                         verbose=False)

    def step(x_t):
        d = det.predict(x_t, return_test_stat=True)["data"]
        return d["is_drift"], float(d["test_stat"]), float(d["threshold"])
    return det, step


def torchdrift_offline(x_ref, x, *, sigma, n_perm, p_val, threads):
    """TorchDrift KernelMMDDriftDetector(kernel=GaussianKernel(lengthscale=sigma), n_perm): fit(x_ref), then
    one predict_shift_from_features call for both the score and the p-value (det(x) and compute_p_value(x)
    would each build the kernel matrix). Its score keeps the kernel's diagonal (k = 1) in the within-sample
    sums: distance = score - (1/(n-1) + 1/(m-1)) is the unbiased MMD^2."""
    import torch
    from torchdrift.detectors import KernelMMDDriftDetector
    from torchdrift.detectors.mmd import GaussianKernel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    xr, xt = torch.from_numpy(x_ref), torch.from_numpy(x)
    t0 = time.perf_counter()
    det = KernelMMDDriftDetector(kernel=GaussianKernel(lengthscale=sigma), n_perm=n_perm)
    det.fit(xr)
    fit = time.perf_counter() - t0
    with torch.no_grad():
        score, p = det.predict_shift_from_features(det.base_outputs, xt, compute_score=True, compute_p_value=True)
    raw = float(score)
    offset = 1.0 / (len(x) - 1) + 1.0 / (len(x_ref) - 1)
    return dict(distance=raw - offset, raw_statistic=raw, p_val=float(p), is_drift=float(p) < p_val,
                fit_seconds=fit, note=f"raw score {raw:.6g} = MMD^2_u + {offset:.4g} (diagonal kept); "
                                      f"p = #(perm > stat) / {n_perm}; is_drift = p < {p_val}")


def frouros_offline(x_ref, x, *, sigma, n_perm, p_val, threads):
    """frouros MMD(kernel=partial(rbf_kernel, sigma)) with PermutationTestDistanceBased(n_perm) (its defaults:
    num_jobs=-1, i.e. one worker process per CPU; method 'auto' = Phipson & Smyth's exact p-value);
    scipy's cdist makes it float64."""
    from functools import partial

    from frouros.callbacks import PermutationTestDistanceBased
    from frouros.detectors.data_drift import MMD
    from frouros.utils.kernels import rbf_kernel

    t0 = time.perf_counter()
    det = MMD(kernel=partial(rbf_kernel, sigma=sigma),
              callbacks=[PermutationTestDistanceBased(num_permutations=n_perm, random_state=0, name="perm")])
    det.fit(X=x_ref)
    fit = time.perf_counter() - t0
    result, logs = det.compare(X=x)
    p = float(logs["perm"]["p_value"])
    return dict(distance=float(result.distance), p_val=p, is_drift=p < p_val, fit_seconds=fit,
                note=f"fit {fit:.3g} s; float64; {det.callbacks[0].num_jobs} jobs; p ~ (#(perm >= stat) + 1) / "
                     f"({n_perm} + 1) (exact); is_drift = p < {p_val}")


OFFLINE = {"alibi": alibi_offline, "torchdrift": torchdrift_offline, "frouros": frouros_offline}
ONLINE = {"alibi": alibi_online}


def versions(peer: str) -> dict:
    out = {"python": sys.version.split()[0]}
    for name in (PACKAGES[peer], "torch", "numpy", "scipy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    out["version"] = out.get(PACKAGES[peer], "")
    return out


# --------------------------------------------------------------------------------------------- main

def _emit(out: dict) -> None:
    sys.stdout.write("\n" + MARKER + json.dumps(out) + "\n")
    sys.stdout.flush()


def _stop_over_cap(used: int) -> None:
    """Called from the sampler thread: stop the workers and this process before the machine runs out."""
    for k in _descendants(os.getpid()):
        try:
            os.kill(k, signal.SIGKILL)
        except OSError:
            pass
    _emit(dict(status="out of memory", note=f"stopped at {used / 2**30:.1f} GiB above the start "
                                              f"(cap {_CAP['cap_bytes'] / 2**30:.1f} GiB)"))
    os._exit(3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("peer", nargs="?", choices=sorted(PACKAGES))
    ap.add_argument("case", nargs="?", choices=("offline", "online"))
    ap.add_argument("--versions", metavar="PEER", choices=sorted(PACKAGES))
    ap.add_argument("--ref"), ap.add_argument("--x")
    ap.add_argument("--sigma", type=float)
    ap.add_argument("--n-perm", type=int, default=100)
    ap.add_argument("--p-val", type=float, default=0.05)
    ap.add_argument("--ert", type=float, default=500)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--n-bootstraps", type=int, default=1000)
    ap.add_argument("--n-update", type=int, default=200)
    ap.add_argument("--late-at", type=int, default=200)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-mem-gib", type=float, default=20.0, help="stop (status 'out of memory') above this")
    a = ap.parse_args(argv)
    if a.versions:
        _emit(versions(a.versions))
        return 0
    if not (a.peer and a.case and a.ref and a.x and a.sigma):
        ap.error("PEER CASE --ref --x --sigma are needed")
    _CAP.update(cap_bytes=a.max_mem_gib * 2**30, on_cap=_stop_over_cap)
    x_ref, x = np.load(a.ref), np.load(a.x)
    try:
        if a.case == "offline":
            if a.peer not in OFFLINE:
                raise SystemExit(f"{a.peer} has no offline runner")
            out = measure_offline(OFFLINE[a.peer], x_ref, x, sigma=a.sigma, n_perm=a.n_perm, p_val=a.p_val,
                                  threads=a.threads)
        else:
            if a.peer not in ONLINE:
                raise SystemExit(f"{a.peer} has no online runner")
            out = measure_online(ONLINE[a.peer], x_ref, x, a.n_update, a.late_at, sigma=a.sigma, ert=a.ert,
                                 window=a.window, n_bootstraps=a.n_bootstraps, threads=a.threads)
    except MemoryError as exc:
        out = dict(status="out of memory", note=f"MemoryError: {exc}"[:200])
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        out = dict(status="out of memory" if "memory" in msg.lower() else "error", note=msg)
    out.update(versions(a.peer), threads=a.threads)
    _emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
