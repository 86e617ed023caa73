"""CPU benchmark of ik.mmd: the fused "cpu" backend against the naive formula (torch.cdist, square, exp,
mean), the matmul formula (|x|^2 + |y|^2 - 2 x y^T, exp, mean) and, when installed, KeOps (LazyTensor
sums) and GeomLoss (SamplesLoss("gaussian", backend="online"), times 2), all in one run, in two modes
(Liger style): "value" (no grad) and "full" (x and y require grad: forward + backward).

    python benchmarks/bench_mmd.py [--out benchmarks/results/cpu] [--sizes 1024,...,65536]
                                   [--dims 64,8,2,784] [--modes value,full] [--budget-s 1500] [--per-size-s 8]
                                   [--threads T] [--clock wall|cpu] [--capabilities baseline,avx2,avx512]

Ladder: N = M doubling from 1024 to 65536 for each d (d = 64 and 8 first: they carry the targets). A
provider leaves a ladder after a size slower than --per-size-s, or before a size whose Gram matrices
would need more than --max-gram-gib. Data: x ~ N(0, I_d), y ~ N(0.1, I_d), sigma = sqrt(d).

Per (d, N, provider): median seconds (the first call is a warm-up, unless it alone took over 2 s),
kernel pairs per second (N^2 + M^2 + NM, the count the formula defines; the fused backend evaluates
about half of the within-set pairs, by symmetry), peak memory (resident set sampled every 2 ms during
the warm-up call, above what it was before: it includes everything the call allocates) and the value
against the cpu backend's. torch.mm's float32 rate on a 4096^2 product is measured at the start and end
of the same run; "mm_fraction" = pairs/s x 2d / that rate. "best_seconds" is the fastest timed call
(the figure to compare on a loaded machine). A "full" row also holds full_over_value: its seconds over
the same provider's value-only seconds at the same size. Writes OUT/mmd.csv and OUT/mmd.png and prints a
markdown table for the README. --clock cpu times with the process's CPU time instead of the wall clock:
with --threads 1 that is the figure that survives a machine shared with other work (the CSV says which
clock, in the "clock" column). --capabilities measures the cpu backend once per CPU kernel variant, as
providers "cpu[baseline]", "cpu[avx2]", "cpu[avx512]" in the same run (what an older CPU gets); without
it "cpu" is the variant chosen at import.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import infovae_kernels as ik  # noqa: E402
from common import PeakRSS, formula, markdown, pairs, sqdist_cdist, sqdist_matmul, write_csv  # noqa: E402

FIELDS = ["device", "threads", "clock", "provider", "mode", "n", "m", "d", "status", "seconds", "best_seconds", "reps",
          "pairs_per_s", "flops_per_s", "mm_fraction", "speedup_vs_naive", "full_over_value", "peak_mem_mib", "value",
          "rel_diff_vs_cpu", "note"]


# ------------------------------------------------------------------------------------ providers

def _keops_mmd():
    from pykeops.torch import LazyTensor

    def ksum(a, b, c):
        return (LazyTensor(a[:, None, :]).sqdist(LazyTensor(b[None, :, :])) * c).exp().sum_reduction(axis=1).sum()

    def f(x, y, sigma):
        c = -0.5 / (sigma * sigma)
        n, m = len(x), len(y)
        return ksum(x, x, c) / (n * n) + ksum(y, y, c) / (m * m) - 2 * ksum(x, y, c) / (n * m)
    return f


def _geomloss_mmd():
    from geomloss import SamplesLoss

    def f(x, y, sigma):  # GeomLoss's kernel loss is MMD^2 / 2 with exp(-|x - y|^2 / (2 blur^2))
        return 2 * SamplesLoss("gaussian", blur=sigma, backend="online")(x, y)
    return f


def _cpu_mmd(capability):
    """ik.mmd on the cpu backend with the CPU kernel variant `capability` installed (None: the one in use)."""
    from infovae_kernels.backends import native

    def f(x, y, sigma):
        if capability:
            native.set_cpu_capability(capability)
        return ik.mmd(x, y, sigma=sigma, backend="cpu")
    return f


def providers(with_peers: bool, capabilities=None) -> dict:
    out = {f"cpu[{c}]": _cpu_mmd(c) for c in capabilities} if capabilities else {"cpu": _cpu_mmd(None)}
    out.update(naive=formula("mmd", sqdist_cdist), matmul=formula("mmd", sqdist_matmul))
    if with_peers:
        for name, make in (("keops", _keops_mmd), ("geomloss", _geomloss_mmd)):
            try:
                out[name] = make()
            except ImportError as exc:
                print(f"{name}: not installed ({exc}); not measured")
    return out


def full_mode(fn):
    """fn's forward + backward with x and y requiring grad (what a training step pays)."""
    def f(x, y, sigma):
        xg, yg = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        value = fn(xg, yg, sigma)
        value.backward()
        return value.detach()
    return f


GRAM_PROVIDERS = {"naive", "matmul"}  # materialise N x M float32 matrices (about 3 alive at once)


# ------------------------------------------------------------------------------------ measuring

def mm_flops(size: int = 4096, reps: int = 3) -> float:
    """float32 FLOP/s of torch.mm on a size x size product."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    times = []
    for _ in range(reps):
        t = CLOCK()
        torch.mm(a, b)
        times.append(CLOCK() - t)
    return 2 * size**3 / statistics.median(times)


CLOCK = time.perf_counter


def time_one(fn, x, y, sigma):
    """(median seconds, best seconds, reps, peak MiB, value): warm-up call under PeakRSS, then timed calls
    (at least 3 and 0.5 s, at most 7)."""
    with PeakRSS() as mem:
        t0 = CLOCK()
        value = float(fn(x, y, sigma))
        first = CLOCK() - t0
    if first > 2.0:
        return first, first, 1, mem.mib, value
    times = []
    start = CLOCK()
    while len(times) < 7 and (len(times) < 3 or CLOCK() - start < 0.5):
        t = CLOCK()
        fn(x, y, sigma)
        times.append(CLOCK() - t)
    return statistics.median(times), min(times), len(times), mem.mib, value


# ------------------------------------------------------------------------------------ ladder

def run(args, provs):
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    modes = [m for m in args.modes.split(",") if m]
    threads = torch.get_num_threads()
    rows = []
    deadline = time.perf_counter() + args.budget_s
    from tqdm.auto import tqdm

    bar = tqdm(total=len(sizes) * len(dims) * len(provs) * len(modes), desc="bench_mmd", unit="case")
    for d in dims:
        alive = {(name, mode): True for name in provs for mode in modes}
        sigma = math.sqrt(d)
        warm = torch.randn(64, d)
        for fn in provs.values():  # KeOps / GeomLoss compile a module per formula and d: not timed
            fn(warm, warm + 0.1, sigma)
            if "full" in modes:
                full_mode(fn)(warm, warm + 0.1, sigma)
        for n in sizes:
            g = torch.Generator().manual_seed(n + d)
            x = torch.randn(n, d, generator=g)
            y = torch.randn(n, d, generator=g) + 0.1
            size_rows = []
            for mode in modes:
                for name, fn in provs.items():
                    bar.update()
                    if not alive[(name, mode)]:
                        continue
                    row = dict(device="cpu", threads=threads, clock=args.clock, provider=name, mode=mode, n=n, m=n, d=d, status="ok")
                    size_rows.append(row)
                    gram_gib = (3 if mode == "value" else 6) * n * n * 4 / 2**30
                    if time.perf_counter() > deadline:
                        row.update(status="skipped", note="time budget")
                    elif name in GRAM_PROVIDERS and gram_gib > args.max_gram_gib:
                        row.update(status="skipped", note=f"would need ~{gram_gib:.0f} GiB of Gram matrices")
                    else:
                        try:
                            if mode == "value":
                                with torch.no_grad():
                                    secs, best, reps, mib, value = time_one(fn, x, y, sigma)
                            else:
                                secs, best, reps, mib, value = time_one(full_mode(fn), x, y, sigma)
                            rate = pairs("mmd", n, n) / secs
                            row.update(seconds=secs, best_seconds=best, reps=reps, pairs_per_s=rate,
                                       flops_per_s=rate * 2 * d, peak_mem_mib=mib, value=value)
                        except (RuntimeError, MemoryError) as exc:
                            row.update(status="error", note=str(exc).splitlines()[0][:160])
                    if row["status"] != "ok" or row["seconds"] > args.per_size_s:
                        alive[(name, mode)] = False
            ok = {(r["provider"], r["mode"]): r for r in size_rows if r["status"] == "ok"}
            first_cpu = next(iter(provs))
            for (name, mode), r in ok.items():
                if (first_cpu, "value") in ok:
                    ref = ok[(first_cpu, "value")]["value"]
                    r["rel_diff_vs_cpu"] = abs(r["value"] - ref) / max(abs(ref), 1e-30)
                if ("naive", mode) in ok:
                    r["speedup_vs_naive"] = ok[("naive", mode)]["seconds"] / r["seconds"]
                if mode == "full" and (name, "value") in ok:
                    r["full_over_value"] = r["seconds"] / ok[(name, "value")]["seconds"]
            rows += size_rows
            bar.set_postfix_str(f"d={d} n={n}")
    bar.close()
    return rows


def plot(rows, path, mm_rate):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    dims = sorted({r["d"] for r in ok})
    fig, axes = plt.subplots(1, len(dims), figsize=(3.6 * len(dims), 3.3), squeeze=False)
    for ax, d in zip(axes[0], dims):
        for i, prov in enumerate(dict.fromkeys(r["provider"] for r in ok)):
            for mode, style in (("value", "-"), ("full", "--")):
                pts = sorted((r["n"], r["pairs_per_s"]) for r in ok
                             if r["d"] == d and r["provider"] == prov and r["mode"] == mode)
                if pts:
                    ax.loglog(*zip(*pts), marker="o", ms=3, ls=style, color=f"C{i}",
                              label=prov if mode == "value" else f"{prov} (fwd+bwd)")
        ax.axhline(mm_rate / (2 * d), color="gray", ls="--", lw=0.8, label="torch.mm rate / 2d")
        ax.set_title(f"ik.mmd on CPU, d={d}", fontsize=9)
        ax.set_xlabel("N = M", fontsize=8)
        ax.set_ylabel("kernel pairs / s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    ap.add_argument("--sizes", default=",".join(str(1024 << i) for i in range(7)))
    ap.add_argument("--dims", default="64,8,2,784")
    ap.add_argument("--modes", default="value,full", help="value (no grad) and/or full (forward + backward)")
    ap.add_argument("--budget-s", type=float, default=1500.0, help="wall-clock budget of the whole ladder")
    ap.add_argument("--per-size-s", type=float, default=8.0, help="a provider leaves a ladder after a slower size")
    ap.add_argument("--max-gram-gib", type=float, default=6.0, help="skip Gram-matrix formulas above this")
    ap.add_argument("--no-peers", action="store_true", help="do not measure KeOps / GeomLoss")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall clock, or the process's CPU time (robust on a shared machine with --threads 1)")
    ap.add_argument("--capabilities", default="", help="comma-separated CPU kernel variants to measure side by "
                                                       "side (baseline, avx2, avx512); default: the one in use")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if not ik.backends.available()["cpu"].available:
        print("the cpu backend is not built:", ik.backends.available()["cpu"].reason)
        return 2
    provs = providers(not args.no_peers, [c for c in args.capabilities.split(",") if c])
    mm_start = mm_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; torch.mm float32 4096^2: "
          f"{mm_start / 1e9:.1f} GFLOP/s; providers: {', '.join(provs)}", flush=True)
    rows = run(args, provs)
    mm_end = mm_flops()
    mm_rate = max(mm_start, mm_end)
    print(f"torch.mm float32 4096^2 at the end: {mm_end / 1e9:.1f} GFLOP/s; mm_fraction uses the better one")
    for r in rows:
        if r.get("flops_per_s"):
            r["mm_fraction"] = r["flops_per_s"] / mm_rate
    rows.append(dict(device="cpu", threads=torch.get_num_threads(), clock=args.clock, provider="torch.mm 4096^2", mode="value", n=4096, m=4096,
                     d=4096, status="ok", flops_per_s=mm_rate, note=f"start {mm_start:.4g}, end {mm_end:.4g}"))
    os.makedirs(args.out, exist_ok=True)
    write_csv(os.path.join(args.out, "mmd.csv"),
              [{k: f"{v:.6g}" if isinstance(v, float) else v for k, v in r.items()} for r in rows], FIELDS)
    plot(rows[:-1], os.path.join(args.out, "mmd.png"), mm_rate)
    print(f"wrote {args.out}/mmd.csv and mmd.png\n")
    table = [r for r in rows[:-1] if r["status"] == "ok" and r["n"] in (8192, 65536)]
    print(markdown(table, ["d", "n", "provider", "mode", "seconds", "best_seconds", "pairs_per_s", "mm_fraction",
                           "speedup_vs_naive", "full_over_value", "peak_mem_mib", "rel_diff_vs_cpu"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
