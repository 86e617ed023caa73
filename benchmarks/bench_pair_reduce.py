"""CPU benchmark of the ops on the unsymmetric primitive pair_reduce, in one run: ik.kernel_sum value
(no grad) and "full" (x requires grad: forward + backward), and ik.svgd_direction, against the naive
formulas (the N x M matrix from torch.cdist, exp; autograd for the gradient).

    python benchmarks/bench_pair_reduce.py [--out benchmarks/results/cpu] [--n 8192] [--dims 2,5,8,10]
                                           [--reps 7] [--threads 1]

Data: x, y ~ N(0, I_d), N = M = n, v ~ N(0, 1), score = -x, sigma = sqrt(d), float32. The fused calls
are timed with the process's CPU time, value / full / svgd interleaved --reps times: "seconds" is the
median, and full_over_value / svgd_over_value the median of the per-round ratios (a figure that
survives a machine shared with other work). The naive formulas run 3 times each (median). rel_diff is
the fused result against the naive one (max |difference| over max |naive|). Writes OUT/pair_reduce.csv
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import infovae_kernels as ik  # noqa: E402
from common import markdown, write_csv  # noqa: E402


def _cpu_seconds(fn):
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def _naive_k(x, y, sigma):
    return torch.exp(-torch.cdist(x, y).square() / (2 * sigma**2))


def _rel_diff(a, b):
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


def run_dim(n: int, d: int, reps: int, threads: int) -> list[dict]:
    g = torch.Generator().manual_seed(d)
    x, y, v = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    sigma = d**0.5
    xr = x.clone().requires_grad_(True)

    def value():
        with torch.no_grad():
            return ik.kernel_sum(x, y, v, sigma=sigma, backend="cpu")

    def full():
        return torch.autograd.grad(ik.kernel_sum(xr, y, v, sigma=sigma, backend="cpu").sum(), xr)[0]

    def svgd():
        return ik.svgd_direction(x, -x, sigma=sigma, backend="cpu")

    def naive_value():
        with torch.no_grad():
            return _naive_k(x, y, sigma) @ v

    def naive_full():
        return torch.autograd.grad((_naive_k(xr, y, sigma) @ v).sum(), xr)[0]

    def naive_svgd():  # phi_i = (1/n) sum_j [k_ij score_j + (x_i - x_j) k_ij / sigma^2]
        with torch.no_grad():
            k = _naive_k(x, x, sigma)
            return (k @ -x + (x * k.sum(1, keepdim=True) - k @ x) / sigma**2) / n

    fused = {"value": value, "full": full, "svgd": svgd}
    outs = {name: fn() for name, fn in fused.items()}  # warm-up
    times = {name: [] for name in fused}
    for _ in range(reps):
        for name, fn in fused.items():
            times[name].append(_cpu_seconds(fn)[0])
    ratio = {name: statistics.median(t / v for t, v in zip(times[name], times["value"])) for name in fused}
    naive = {"value": naive_value, "full": naive_full, "svgd": naive_svgd}
    rows = []
    for name in fused:
        runs = [_cpu_seconds(naive[name]) for _ in range(3)]
        t_naive = statistics.median(t for t, _ in runs)
        t_fused = statistics.median(times[name])
        rows.append({"device": "cpu", "threads": threads, "clock": "cpu", "op": "svgd_direction" if name == "svgd"
                     else "kernel_sum", "mode": "value" if name == "svgd" else name, "n": n, "d": d,
                     "seconds": t_fused, "over_kernel_sum_value": ratio[name], "naive_seconds": t_naive,
                     "speedup_vs_naive": t_naive / t_fused, "rel_diff": _rel_diff(outs[name], runs[0][1])})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--dims", default="2,5,8,10")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for d in (int(s) for s in args.dims.split(",")):
        rows += run_dim(args.n, d, args.reps, args.threads)
    write_csv(os.path.join(args.out, "pair_reduce.csv"), rows)
    print(markdown(rows, ["op", "mode", "d", "seconds", "over_kernel_sum_value", "naive_seconds",
                          "speedup_vs_naive", "rel_diff"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
