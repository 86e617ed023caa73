"""CPU benchmark of the kernel Stein discrepancy ops (ik.ksd, ik.ksd_test, ik.stein_thinning), all in one run:

    python benchmarks/bench_ksd.py [--smoke] [--n 8192] [--dims 8,64] [--test-n 4096] [--n-bootstrap 1000]
        [--thinning-n 100000] [--thinning-d 10] [--thinning-m 1000] [--reps 3] [--threads 2]
        [--peer-python /work/peers/stein/bin/python] [--out benchmarks/results/cpu]

Every time is the median wall-clock of --reps (3) calls after one warm-up call (which is not timed into the
median; the peak resident-memory growth, sampled every 2 ms by a thread, is taken from it); a warm-up over
--long-s (2 s) is followed by one timed call only (the reps column says how many). torch runs on --threads
threads (2). The run warns, and every note records, how many cores other processes kept busy at the start:
on a shared machine the wall clock inflates (a run beside a CUDA build read 3-7x the idle times).

Cases (rows of OUT/ksd.csv, `case` column):
  ksd-value / ksd-grad: ik.ksd(x, -x, kernel="imq", sigma=None (1.0), estimator="unbiased") on float32
    x ~ N(0.5, I) (scores of N(0, I): KSD^2 well away from 0, so a relative check means something),
    n = --n (8192), d in --dims (8, 64); "grad" is x.requires_grad_() + backward. Provider "dense": the
    same U-statistic written here in plain torch, the n x n Stein kernel matrix built with matmuls,
        u = phi (S S^T) + 2 phi' cross - 2 d phi' - 4 phi'' r2,   phi = (1 + r2)^(-1/2),
        cross_ij = (s_j - s_i).(x_i - x_j),
    summed in float64 without its diagonal over n (n - 1). ratio = dense seconds / ours (> 1: ours is
    faster). The note gives the relative difference of the two values (checked against 1e-4; with --check-biased,
    on in --smoke, the biased V-statistics are compared too, untimed) and, for grad, of the two gradients (relative L2).
  ksd-test: ik.ksd_test(x, -x, n_bootstrap=B) at n = --test-n (4096), d = 8, x ~ N(0, I) float32.
    gflops = 2 B n^2 / seconds (the wild bootstrap's GEMM, one multiply-add per pair and draw), beside
    provider "torch.mm": an (n x n) @ (n x B) float32 product timed in the same run; ratio = the fraction
    ours / torch.mm.
  stein-thinning: ik.stein_thinning(x, -x, m, standardize=True, sigma=None) on float64
    x = numpy.random.default_rng(0).standard_normal((N, D)), N = --thinning-n (100,000), D = 10,
    m = 1,000, beside the stein-thinning package (0.2.0, preconditioner 'id' = our sigma 1), which lives in
    its own venv and runs as a subprocess: `<peer-python> <dir>/run_thin.py N D m 0 /tmp/bench_ksd_peer id`
    (one JSON line: seconds, and peak_rss_mib, which is replaced by the peer's VmHWM polled from /proc; the indices in /tmp/bench_ksd_peer_idx.npy). The peer runs
    once (its seconds are its own timer around thin(); its memory the subprocess's whole peak RSS); ratio
    = peer seconds / ours. The note counts how many of the m selected indices agree position by position
    (and as sets). A missing peer venv gives a row with note "not installed".

Writes OUT/ksd.csv (or OUT/ksd_smoke.csv with --smoke: tiny sizes, a logic check) atomically, and
prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import infovae_kernels as ik  # noqa: E402
from common import PeakRSS, busy_cores, markdown, write_csv  # noqa: E402

FIELDS = ["device", "threads", "case", "n", "d", "provider", "seconds", "reps", "ratio", "gflops", "peak_mem_mib",
          "value", "status", "note"]
VALUE_RTOL = 1e-4
PEER_DIR = "/work/peers/stein"


# ------------------------------------------------------------------------------------ measuring

LONG_S = 2.0


def timed(fn, reps: int):
    """(median seconds, timed calls, peak MiB of the warm-up call, the warm-up call's result): `reps` timed
    calls after the warm-up, only one when the warm-up took over LONG_S (--long-s)."""
    with PeakRSS() as mem:
        t = time.perf_counter()
        out = fn()
        first = time.perf_counter() - t
    times = []
    for _ in range(1 if first > LONG_S else reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times), mem.mib, out


# ------------------------------------------------------------------------------------ the dense formula

def dense_ksd(x: torch.Tensor, s: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Squared KSD with the IMQ Stein kernel (c = 1, beta = -1/2, sigma = 1) from the full n x n matrix."""
    n, d = x.shape
    xc = x - x.detach().mean(0)  # u is translation invariant; centring keeps the r2 expansion accurate
    xn = xc.square().sum(1)
    r2 = (xn[:, None] + xn[None, :] - 2.0 * (xc @ xc.T)).clamp_min(0.0)
    r2 = r2 * (1.0 - torch.eye(n, dtype=x.dtype))  # exactly 0 on the diagonal
    b = 1.0 + r2
    phi = b.rsqrt()
    d1 = -0.5 * phi / b                 # dphi/dr2   = -1/2 (1 + r2)^(-3/2)
    d2 = 0.75 * phi / (b * b)           # d2phi/dr2^2 = 3/4 (1 + r2)^(-5/2)
    xs = (xc * s).sum(1)
    cross = xc @ s.T + s @ xc.T - xs[None, :] - xs[:, None]  # (s_j - s_i).(x_i - x_j)
    u = phi * (s @ s.T) + 2.0 * d1 * cross - (2.0 * d) * d1 - 4.0 * d2 * r2
    total = u.sum(dtype=torch.float64)
    if unbiased:
        return ((total - u.diagonal().sum(dtype=torch.float64)) / (n * (n - 1))).to(x.dtype)
    return (total / (n * n)).to(x.dtype)


def value_fn(f):
    def run(x):
        with torch.no_grad():
            return f(x, -x).detach()
    return run


def grad_fn(f):
    def run(x):
        xg = x.detach().clone().requires_grad_(True)
        v = f(xg, -xg.detach())
        v.backward()
        return v.detach(), xg.grad
    return run


PROVIDERS = {"ours": lambda x, s: ik.ksd(x, s, kernel="imq"), "dense": dense_ksd}


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def bench_ksd(args, rows):
    threads = torch.get_num_threads()
    for d in args.dims:
        g = torch.Generator().manual_seed(d)
        x = torch.randn(args.n, d, generator=g) + 0.5
        vb = None
        if args.check_biased:  # the biased statistics, untimed: a second check of the formula
            with torch.no_grad():
                vb = float(ik.ksd(x, -x, estimator="biased")), float(dense_ksd(x, -x, unbiased=False))
        for mode in ("value", "grad"):
            got = {}
            for prov, f in PROVIDERS.items():
                fn = value_fn(f) if mode == "value" else grad_fn(f)
                secs, reps, mib, out = timed(lambda: fn(x), args.reps)
                got[prov] = out
                v = float(out if mode == "value" else out[0])
                rows.append(dict(device="cpu", threads=threads, case=f"ksd-{mode}", n=args.n, d=d, provider=prov,
                                 seconds=secs, reps=reps, peak_mem_mib=mib, value=v, status="ok"))
                print(f"  ksd-{mode} d={d} {prov}: {secs:.3f} s, {mib:.0f} MiB, value {v:.7g}", flush=True)
            ours, dense = rows[-2], rows[-1]
            ours["ratio"] = dense["seconds"] / ours["seconds"]
            dv = rel(ours["value"], dense["value"])
            ok = dv <= VALUE_RTOL and (vb is None or rel(*vb) <= VALUE_RTOL)
            note = f"U rel diff vs dense {dv:.2e}"
            if vb is not None:
                note += f", V rel diff {rel(*vb):.2e} (V ours {vb[0]:.7g}, dense {vb[1]:.7g})"
            note += f": {'agree' if ok else 'DISAGREE'} at {VALUE_RTOL:g}"
            if mode == "grad":
                ga, gb = got["ours"][1], got["dense"][1]
                note += f"; grad rel L2 diff {float((ga - gb).norm() / gb.norm()):.2e}"
            if not ok:
                ours["status"] = "mismatch"
            ours["note"] = note
            dense["note"] = "n x n matrices materialised"
            print(f"  ksd-{mode} d={d}: {note}", flush=True)


def mm_seconds(n: int, b: int, reps: int) -> float:
    a, m = torch.randn(n, n), torch.randn(n, b)
    torch.mm(a, m)
    times = []
    for _ in range(max(reps, 3)):
        t = time.perf_counter()
        torch.mm(a, m)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_test(args, rows):
    threads = torch.get_num_threads()
    n, d, b = args.test_n, 8, args.n_bootstrap
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    flops = 2.0 * b * n * n
    mm = mm_seconds(n, b, args.reps)
    secs, reps, mib, res = timed(lambda: ik.ksd_test(x, -x, n_bootstrap=b, seed=0, progress=False), args.reps)
    ours = dict(device="cpu", threads=threads, case="ksd-test", n=n, d=d, provider="ours", seconds=secs,
                reps=reps, gflops=flops / secs / 1e9, peak_mem_mib=mib, value=res.statistic, status="ok",
                note=f"B = {b}; p = {res.p_value:.4g}; gflops counts 2 B n^2")
    mm_row = dict(device="cpu", threads=threads, case="ksd-test", n=n, d=d, provider="torch.mm", seconds=mm,
                  reps=max(args.reps, 3), gflops=flops / mm / 1e9, status="ok",
                  note=f"float32 ({n} x {n}) @ ({n} x {b})")
    ours["ratio"] = ours["gflops"] / mm_row["gflops"]
    ours["note"] += f"; ratio = fraction of torch.mm's rate"
    rows += [ours, mm_row]
    print(f"  ksd-test n={n}: {secs:.3f} s = {ours['gflops']:.1f} GFLOP/s; torch.mm {mm_row['gflops']:.1f} "
          f"GFLOP/s; fraction {ours['ratio']:.3f}", flush=True)


def run_peer(args, n, d, m):
    """The peer's JSON answer plus its indices, or a dict with 'error'."""
    py = args.peer_python
    script = os.path.join(os.path.dirname(os.path.dirname(py)), "run_thin.py")
    if not (os.path.exists(py) and os.path.exists(script)):
        return {"error": "not installed", "why": f"no {py} or {script}"}
    prefix = "/tmp/bench_ksd_peer"
    # run_thin.py's peak_rss_mib is ru_maxrss, which after fork + exec carries this (large) process's peak
    # over; the peer's own VmHWM (a fresh mm after exec) is polled from /proc instead.
    p = subprocess.Popen([py, script, str(n), str(d), str(m), "0", prefix, "id"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    hwm, start = 0, time.perf_counter()
    while p.poll() is None:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                hwm = max([hwm] + [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")])
        except (OSError, ValueError):
            pass
        if time.perf_counter() - start > args.peer_timeout_s:
            p.kill()
            p.communicate()
            return {"error": "timeout", "why": f"killed after {args.peer_timeout_s:.0f} s"}
        time.sleep(0.05)
    stdout, stderr = p.communicate()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        return {"error": "error", "why": tail[:200]}
    out = json.loads(lines[-1])
    out["ru_maxrss_mib"], out["peak_rss_mib"] = out["peak_rss_mib"], hwm / 1024.0
    out["idx"] = np.load(prefix + "_idx.npy").astype(np.int64)
    out["x"] = np.load(prefix + "_x.npy", mmap_mode="r")
    return out


def bench_thinning(args, rows):
    threads = torch.get_num_threads()
    n, d, m = args.thinning_n, args.thinning_d, min(args.thinning_m, args.thinning_n)
    xn = np.random.default_rng(0).standard_normal((n, d))
    x = torch.from_numpy(xn)
    secs, reps, mib, idx = timed(lambda: ik.stein_thinning(x, -x, m, kernel="imq", sigma=None, standardize=True,
                                                     progress=False), args.reps)
    idx = idx.numpy()
    ours = dict(device="cpu", threads=threads, case="stein-thinning", n=n, d=d, provider="ours", seconds=secs,
                reps=reps, peak_mem_mib=mib, status="ok",
                note=f"m = {m}, float64; {len(np.unique(idx))} unique indices")
    peer = dict(device="cpu", threads=threads, case="stein-thinning", n=n, d=d, provider="stein-thinning")
    print(f"  stein-thinning n={n} d={d} m={m} ours: {secs:.3f} s; running the peer ...", flush=True)
    got = run_peer(args, n, d, m)
    if "error" in got:
        peer.update(status=got["error"], note=got["why"])
    else:
        same_x = got["x"].shape == xn.shape and np.array_equal(np.asarray(got["x"]), xn)
        agree = int((got["idx"] == idx).sum())
        first = next((i for i in range(m) if got["idx"][i] != idx[i]), None)
        sets = len(np.intersect1d(got["idx"], idx))
        peer.update(provider=f"stein-thinning {got.get('version', '')}".strip(), seconds=got["seconds"], reps=1,
                    peak_mem_mib=got["peak_rss_mib"], status="ok",
                    note=f"preconditioner 'id'; peak = the subprocess's whole VmHWM, polled every 50 ms (its "
                         f"ru_maxrss read {got['ru_maxrss_mib']:.0f} MiB: this process's peak, inherited); {len(np.unique(got['idx']))} "
                         f"unique indices; same x: {same_x}")
        ours["ratio"] = got["seconds"] / secs
        ours["note"] += (f"; indices agreeing with the peer in order: {agree}/{m}"
                         f" ({'all' if agree == m else 'first difference at step ' + str(first)}); as sets {sets}/"
                         f"{len(np.unique(idx))}")
        if agree != m:
            ours["status"] = "mismatch"
    rows += [ours, peer]
    print(f"  stein-thinning: {ours['note']}; peer: {peer.get('seconds', peer['status'])}", flush=True)


def bench_large(args, rows):
    """ik.ksd's value at n = --large-n (10^6), d = 8, float32, one call: what O(n d) memory means at a size
    whose n x n matrix would take 4 TB."""
    n, d = args.large_n, 8
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(0)) + 0.5
    s = -x
    with PeakRSS() as mem:
        t = time.perf_counter()
        value = float(ik.ksd(x, s))
        secs = time.perf_counter() - t
    rows.append(dict(device="cpu", threads=torch.get_num_threads(), case="ksd-value-large", n=n, d=d, provider="ours",
                     seconds=secs, reps=1, peak_mem_mib=mem.mib, value=value, status="ok",
                     note=f"{float(n) * n / secs:.3g} pairs/s; x and its scores hold {2 * n * d * 4 / 2**20:.0f} MiB"))
    print(f"  ksd-value-large n={n} d={d}: {secs:.1f} s, {mem.mib:.0f} MiB above the start, value {value:.6g}", flush=True)


def main(argv=None) -> int:
    global LONG_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (a logic check); writes ksd_smoke.csv")
    ap.add_argument("--n", type=int, default=8192, help="points for ik.ksd vs the dense formula")
    ap.add_argument("--dims", default="8,64")
    ap.add_argument("--test-n", type=int, default=4096)
    ap.add_argument("--n-bootstrap", type=int, default=1000)
    ap.add_argument("--thinning-n", type=int, default=100_000)
    ap.add_argument("--thinning-d", type=int, default=10)
    ap.add_argument("--thinning-m", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3, help="timed calls per measurement (after one warm-up)")
    ap.add_argument("--long-s", type=float, default=LONG_S, help="a warm-up longer than this: one timed call")
    ap.add_argument("--check-biased", action="store_true",
                    help="also compare the biased (V) statistics with the dense formula (untimed; on with --smoke)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-python", default=os.path.join(PEER_DIR, "bin", "python"))
    ap.add_argument("--peer-timeout-s", type=float, default=180.0)
    ap.add_argument("--cases", default="ksd,test,thinning",
                    help="ksd, test, thinning; or large alone (ik.ksd at --large-n, into ksd_large.csv)")
    ap.add_argument("--large-n", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    if args.smoke:
        args.n, args.test_n, args.n_bootstrap = 512, 512, 100
        args.thinning_n = min(args.thinning_n, 2000)
        args.thinning_m = min(args.thinning_m, 50)
        args.reps = min(args.reps, 2)
        args.check_biased = True
    args.dims = [int(v) for v in args.dims.split(",") if v]
    LONG_S = args.long_s
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, infovae_kernels {ik.__version__}, {torch.get_num_threads()} threads; "
          f"median of {args.reps} after a warm-up", flush=True)
    other = busy_cores()
    if other > 0.3:
        print(f"warning: other processes keep {other:.1f} of {os.cpu_count()} cores busy; wall-clock times will be "
              f"inflated (and the ratios noisy)", flush=True)
    t0 = time.perf_counter()
    rows = []
    cases = args.cases.split(",")
    if "ksd" in cases:
        bench_ksd(args, rows)
    if "test" in cases:
        bench_test(args, rows)
    if "thinning" in cases:
        bench_thinning(args, rows)
    if "large" in cases:
        bench_large(args, rows)
    for r in rows:
        r["note"] = (r.get("note", "") + f"; other processes busy at start: {other:.1f} cores").lstrip("; ")
    name = "ksd_large.csv" if cases == ["large"] else "ksd.csv"
    path = os.path.join(args.out, "ksd_smoke.csv" if args.smoke else name)
    write_csv(path, [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows], FIELDS)
    print(f"wrote {path} ({time.perf_counter() - t0:.0f} s)\n")
    print(markdown(rows, ["case", "n", "d", "provider", "seconds", "ratio", "gflops", "peak_mem_mib", "value",
                          "status"]))
    notes = [r for r in rows if r.get("note") and r["provider"] == "ours"]
    for r in notes:
        print(f"- {r['case']} d={r['d']}: {r['note']}")
    return 0 if all(r["status"] in ("ok", "not installed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
