"""The kernels beyond rbf against their peers, in one run on this machine:

  kid       exact KID (ik.kid, value + standard error) over 10,000 + 10,000 features, d = 2048, vs
            torchmetrics' KernelInceptionDistance default estimate (100 subsets of 1,000) on the same
            features; values vs torchmetrics' poly_mmd on the full sets (float32 and float64)
  poly_rate the polynomial kernel's evaluated pairs per second (ik.mmd, value only, one symmetric pass)
            over the float32 matmul's (x @ y.T) at d = 2048
  geomloss  laplacian and energy at d = 8, N = M = 4096: ik.mmd vs GeomLoss' SamplesLoss(backend=
            "tensorized") (their loss is MMD^2 / 2), time and value; both against the exact float64 formula
            (GeomLoss clamps r^2 >= 1e-8 before its sqrt, so even its float64 differs from the formula)
  power     ik.mmd_power forward + backward at N = 100,000 pairs, d = 64 (float32): seconds and the
            process's peak resident memory (a subprocess), where the dense formula needs 3 x 40 GB

    python benchmarks/bench_kernels.py [--quick] [--only kid,poly_rate,geomloss,power]
    -> benchmarks/results/cpu/kernels.csv

torchmetrics and geomloss are optional: `pip install --no-deps torchmetrics lightning-utilities geomloss`
(rows needing a missing one are skipped and say so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import infovae_kernels as ik  # noqa: E402
from common import markdown, write_csv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _time(fn, reps=1):
    best = float("inf")
    out = None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def bench_kid(n, d, subsets, subset_size):
    from torchmetrics.image.kid import KernelInceptionDistance, poly_mmd

    class Features(torch.nn.Module):  # the features are given: identity "extractor"
        num_features = d

        def forward(self, x):
            return x

    g = torch.Generator().manual_seed(0)
    real = torch.rand(n, d, generator=g) * 2.0  # non-negative, like pooled Inception activations
    fake = torch.rand(n, d, generator=g) * 2.1
    t_ik, r = _time(lambda: ik.kid(real, fake, progress=False), reps=2)  # best of 2 for both: first-call costs
    def torchmetrics_kid():  # a fresh metric per call: compute() caches its result
        metric = KernelInceptionDistance(feature=Features(), subsets=subsets, subset_size=subset_size)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        torch.manual_seed(0)
        return metric.compute()

    t_tm, (tm_mean, tm_std) = _time(torchmetrics_kid, reps=2)
    full32 = float(poly_mmd(real, fake))
    full64 = float(poly_mmd(real.double(), fake.double()))
    r64 = ik.kid(real.double(), fake.double(), progress=False)
    return [dict(bench="kid", n=n, d=d, dtype="float32", ik_seconds=t_ik, peer="torchmetrics subsets",
                 peer_seconds=t_tm, speedup=t_tm / t_ik, ik_value=r.value, ik_std=r.std,
                 peer_value=float(tm_mean), peer_std=float(tm_std), full_formula=full32,
                 rel_diff=abs(r.value - full32) / abs(full32), ik_err_vs_float64=abs(r.value - full64) / abs(full64),
                 peer_err_vs_float64=abs(full32 - full64) / abs(full64)),
            dict(bench="kid", n=n, d=d, dtype="float64", ik_value=r64.value, ik_std=r64.std, full_formula=full64,
                 rel_diff=abs(r64.value - full64) / abs(full64))]


def bench_poly_rate(n, d):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, d, generator=g), torch.rand(n, d, generator=g)
    ik.mmd(x[:64], y[:64], kernel="polynomial")  # load the backend
    t_mm, _ = _time(lambda: x @ y.T, reps=3)
    t_ik, _ = _time(lambda: ik.mmd(x, y, kernel="polynomial"), reps=2)
    pairs_ik = (2 * n) * (2 * n + 1) / 2  # one symmetric pass over the pooled 2n points
    rate_mm, rate_ik = n * n / t_mm, pairs_ik / t_ik
    return [dict(bench="poly_rate", n=n, d=d, dtype="float32", ik_seconds=t_ik, peer="x @ y.T", peer_seconds=t_mm,
                 ik_pairs_per_s=rate_ik, peer_pairs_per_s=rate_mm, rate_ratio=rate_ik / rate_mm)]


def bench_geomloss(n, d):
    from geomloss import SamplesLoss

    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g) + 0.1
    rows = []
    for kernel, sigma in (("laplacian", 1.0), ("energy", None)):  # sigma = GeomLoss' blur
        loss = SamplesLoss(kernel, blur=sigma or 1.0, backend="tensorized")
        t_peer, peer = _time(lambda: loss(x, y), reps=2)
        t_ik, got = _time(lambda: ik.mmd(x, y, kernel=kernel, sigma=sigma) / 2, reps=3)
        ref = float(ik.mmd(x.double(), y.double(), kernel=kernel, sigma=sigma, backend="torch")) / 2
        rows.append(dict(bench="geomloss", kernel=kernel, n=n, d=d, dtype="float32", ik_seconds=t_ik,
                         peer="geomloss tensorized", peer_seconds=t_peer, speedup=t_peer / t_ik,
                         ik_value=float(got), peer_value=float(peer), full_formula=ref,
                         rel_diff=abs(float(got) - float(peer)) / abs(float(peer)),
                         ik_err_vs_float64=abs(float(got) - ref) / abs(ref),
                         peer_err_vs_float64=abs(float(peer) - ref) / abs(ref),
                         peer64_err_vs_float64=abs(float(loss(x.double(), y.double())) - ref) / abs(ref)))
    return rows


POWER_CHILD = """
import json, sys, time, torch, infovae_kernels as ik


def peak_mb():  # VmHWM: this process's peak resident set (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

n, d = int(sys.argv[1]), int(sys.argv[2])
g = torch.Generator().manual_seed(3)
x = torch.randn(n, d, generator=g).requires_grad_(True)
y = (torch.randn(n, d, generator=g) * 1.05).requires_grad_(True)
base = peak_mb()
t = time.perf_counter()
p = ik.mmd_power(x, y, sigma=float(d) ** 0.5)
t_fwd = time.perf_counter() - t
p.criterion.backward()
t_all = time.perf_counter() - t
print(json.dumps(dict(fwd=t_fwd, total=t_all, peak_mb=peak_mb(), inputs_mb=2 * n * d * 4 / 2**20,
                      base_mb=base, criterion=float(p.criterion))))
"""


def bench_power(n, d):
    out = subprocess.run([sys.executable, "-c", POWER_CHILD, str(n), str(d)], capture_output=True, text=True,
                         check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return [dict(bench="mmd_power", n=n, d=d, dtype="float32", ik_seconds=r["total"], forward_seconds=r["fwd"],
                 peak_rss_mb=r["peak_mb"], baseline_rss_mb=r["base_mb"], above_baseline_mb=r["peak_mb"] - r["base_mb"],
                 inputs_mb=r["inputs_mb"],
                 dense_formula_gb=3 * n * n * 4 / 1e9, ik_value=r["criterion"])]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets)")
    ap.add_argument("--only", default="kid,poly_rate,geomloss,power")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu", "kernels.csv"))
    args = ap.parse_args(argv)
    q = args.quick
    jobs = {"kid": lambda: bench_kid(1000 if q else 10_000, 256 if q else 2048, 10 if q else 100, 100 if q else 1000),
            "poly_rate": lambda: bench_poly_rate(1024 if q else 4096, 2048),
            "geomloss": lambda: bench_geomloss(512 if q else 4096, 8),
            "power": lambda: bench_power(5_000 if q else 100_000, 64)}
    rows = []
    for name in args.only.split(","):
        try:
            new = jobs[name]()
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
            continue
        except subprocess.CalledProcessError as exc:
            print(f"{name}: failed\n{exc.stderr}")
            continue
        for r in new:
            r.update(device="cpu", threads=torch.get_num_threads(), torch=torch.__version__)
            print({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        rows += new
    write_csv(args.out, rows)
    print(markdown(rows, ["bench", "kernel", "n", "d", "dtype", "ik_seconds", "peer_seconds", "speedup",
                          "rate_ratio", "rel_diff", "peak_rss_mb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
