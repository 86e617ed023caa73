"""What every benchmark here shares: the plain-torch formulas they race against, the timer, the pair
count, peak resident memory, the load of other processes, and atomic CSV / markdown output."""

from __future__ import annotations

import csv
import ctypes
import os
import statistics
import tempfile
import threading
import time

import torch


def sqdist_cdist(x, y):
    """|x_i - y_j|^2 the way most code writes it: torch.cdist, squared."""
    return torch.cdist(x, y).square()


def sqdist_matmul(x, y):
    """|x_i|^2 + |y_j|^2 - 2 x_i . y_j, one GEMM (clamped at 0 against cancellation)."""
    return (x.square().sum(1, keepdim=True) + y.square().sum(1) - 2.0 * (x @ y.T)).clamp_min(0.0)


def formula(op: str, dist):
    """Plain-torch `op` ("mmd", "kernel_sum" or "svgd") of the RBF kernel exp(-r^2 / (2 sigma^2)), with
    squared distances from `dist`: every Gram matrix is materialised."""
    if op == "mmd":
        def f(x, y, sigma):
            c = -0.5 / (sigma * sigma)
            return (torch.exp(dist(x, x) * c).mean() + torch.exp(dist(y, y) * c).mean()
                    - 2.0 * torch.exp(dist(x, y) * c).mean())
    elif op == "kernel_sum":
        def f(x, y, sigma):
            return torch.exp(dist(x, y) * (-0.5 / (sigma * sigma))).sum(1)
    elif op == "svgd":
        def f(x, score, sigma):
            k = torch.exp(dist(x, x) * (-0.5 / (sigma * sigma)))
            rep = (x * k.sum(1, keepdim=True) - k @ x) / (sigma * sigma)
            return (k @ score + rep) / x.shape[0]
    else:
        raise ValueError(f"op must be 'mmd', 'kernel_sum' or 'svgd', got {op!r}")
    return f


naive_mmd = formula("mmd", sqdist_cdist)


def pairs(op: str, n: int, m: int) -> int:
    """Kernel evaluations the formula defines (mmd: N^2 + M^2 + NM, kernel_sum: NM, svgd: N^2)."""
    return {"mmd": n * n + m * m + n * m, "kernel_sum": n * m, "svgd": n * n}[op]


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, args, device, min_time_s=0.15, max_reps=15):
    """(median ms, reps, peak CUDA MB above the inputs or NaN on CPU, first-call seconds). The first call
    compiles, autotunes and warms up; it is not timed into the median. A call over a second ends it."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn(*args)
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    start_all = time.perf_counter()
    while len(times) < max_reps:
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn(*args)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t) * 1e3)
        spent = time.perf_counter() - start_all
        if (len(times) >= 3 and spent > min_time_s) or times[-1] > 1000.0:
            break
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20 if device.type == "cuda" else float("nan")
    return statistics.median(times), len(times), peak, first


def write_csv(path: str, rows, fields=None) -> None:
    """Rows (dicts) to `path` through a temporary file and os.replace: never half a file."""
    if not rows:
        return
    fields = fields or list(dict.fromkeys(k for r in rows for k in r))
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".csv.tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the published CSV private
    try:
        with os.fdopen(fd, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def markdown(rows, cols) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _trim_heap():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakRSS:
    """Peak resident memory above the start, sampled every 2 ms by a thread (the ops release the GIL)."""

    def __enter__(self):
        _trim_heap()
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def busy_cores(seconds: float = 1.0) -> float:
    """Cores kept busy by other processes over `seconds` while this one sleeps (from /proc/stat)."""
    def busy():
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
        return sum(v) - v[3] - v[4], sum(v)  # all but idle and iowait
    (b0, t0), _ = busy(), time.sleep(seconds)
    b1, t1 = busy()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)
