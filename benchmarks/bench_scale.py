"""Scale benchmark: the one-pass permutation test, mmd_full on memory-mapped files, 2-process gloo.

    python benchmarks/bench_scale.py [--out benchmarks/results/cpu] [--backend auto] [--quick]
                                     [--full-sizes 20000,50000,100000] [--perm-sizes 1000,2000]
    infovae-kernels bench [--quick]                 # the same, through the command line

1. perm: at d = 64, N = M = n: one ik.mmd call; ik.mmd_test with 200 permutations (one pass); 200
   separate ik.mmd calls on permuted data; the naive formula (torch.cdist + exp + mean) in a loop over
   200 permutations. The loops run until 200 calls or --loop-budget-s seconds and are extrapolated to
   200 (the CSV says how many ran). Target: 200 permutations in <= 4x the time of one MMD.
2. full: mmd_full on two memory-mapped .npy files of n x 64 float32 points each, each size in a fresh
   process: seconds, kernel pairs/s (N^2 + M^2 + NM pairs, the count the formula defines; symmetric
   tiles evaluate about half of the within-set pairs) and peak RSS (ru_maxrss; the RSS after importing
   torch is reported beside it).
3. dist: mmd_full on 2 gloo processes (1 thread each) against 1 process with 1 and with all threads,
   timed inside the ranks between barriers (process start-up excluded).

Writes OUT/scale_perm.csv, OUT/scale_full.csv, OUT/scale_dist.csv and OUT/scale.png; prints markdown
tables. Times are medians of --repeats runs (the machine may be shared: compare ratios).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import infovae_kernels as ik  # noqa: E402
from infovae_kernels import backends, scale  # noqa: E402
from common import markdown, naive_mmd, write_csv  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
D = 64
SIGMA = 8.0  # about the median distance of N(0, I_64) samples (sqrt(2 * 64) = 11.3): a non-trivial kernel


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _loop_time(call, perms: int, budget_s: float) -> tuple[float, int]:
    """Seconds for `perms` calls, extrapolated from as many as ran within budget_s."""
    t0 = time.perf_counter()
    done = 0
    while done < perms:
        call(done)
        done += 1
        if time.perf_counter() - t0 > budget_s:
            break
    return (time.perf_counter() - t0) * perms / done, done


def bench_perm(sizes, backend, perms, repeats, budget_s):
    rows = []
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, D, generator=g), torch.randn(n, D, generator=g)
        z = torch.cat([x, y])
        name = backends.resolve(backend, torch.device("cpu"))
        t_one = _median_time(lambda: ik.mmd(x, y, sigma=SIGMA, backend=backend), repeats)
        t_test = _median_time(lambda: scale.mmd_test(x, y, perms, seed=0, sigma=SIGMA, backend=backend), repeats)
        gen = torch.Generator().manual_seed(0)  # random splits, as the test draws them
        lab = torch.stack([torch.zeros(2 * n, dtype=torch.bool)] + [
            torch.zeros(2 * n, dtype=torch.bool).index_fill_(0, torch.randperm(2 * n, generator=gen)[:n], True)
            for _ in range(perms)], 1)
        t_calls, k_calls = _loop_time(
            lambda p: ik.mmd(z[lab[:, p + 1]], z[~lab[:, p + 1]], sigma=SIGMA, backend=backend), perms, budget_s)
        t_naive, k_naive = _loop_time(lambda p: naive_mmd(z[lab[:, p + 1]], z[~lab[:, p + 1]], SIGMA),
                                      perms, budget_s)
        rows.append(dict(n=n, d=D, permutations=perms, backend=name, one_mmd_s=t_one, one_pass_test_s=t_test,
                         separate_calls_s=t_calls, separate_calls_measured=k_calls, naive_loop_s=t_naive,
                         naive_loop_measured=k_naive, test_over_one_mmd=t_test / t_one,
                         speedup_vs_calls=t_calls / t_test, speedup_vs_naive=t_naive / t_test))
        print(f"  perm n={n}: one {t_one:.4f}s, test {t_test:.4f}s ({t_test / t_one:.2f}x), "
              f"calls {t_calls:.2f}s, naive {t_naive:.2f}s", flush=True)
    return rows


def _full_child(n: int, backend: str, path_dir: str, threads: int) -> dict:
    """Runs in a fresh process: mmd_full over two memory-mapped files of n x 64 float32."""
    torch.set_num_threads(threads)
    rss0 = _rss_mib()
    x = np.load(os.path.join(path_dir, f"x{n}.npy"), mmap_mode="r")
    y = np.load(os.path.join(path_dir, f"y{n}.npy"), mmap_mode="r")
    t0 = time.perf_counter()
    info: dict = {}
    scale.mmd_full(x, y, sigma=SIGMA, backend=backend, progress=False, report=info)
    secs = time.perf_counter() - t0
    pairs = 3.0 * n * n
    return dict(n=n, d=D, backend=info["backend"], threads=threads, seconds=secs, mmd2=info["value"],
                pairs_per_s=pairs / secs, block_size=info["block_size"], tile_pairs=info["tile_pairs"],
                peak_rss_mib=_rss_mib(), rss_after_import_mib=rss0,
                data_mib=2 * n * D * 4 / 2**20)


def _write_data(n: int, path_dir: str):
    for name, shift in (("x", 0.0), ("y", 0.1)):
        p = os.path.join(path_dir, f"{name}{n}.npy")
        if not os.path.exists(p):
            rng = np.random.default_rng(1 if name == "x" else 2)
            a = np.lib.format.open_memmap(p, mode="w+", dtype=np.float32, shape=(n, D))
            for s in range(0, n, 65536):
                e = min(n, s + 65536)
                a[s:e] = rng.standard_normal((e - s, D), dtype=np.float32) + shift
            a.flush()
            del a


def bench_full(sizes, backend, path_dir, timeout_s):
    rows = []
    for n in sizes:
        _write_data(n, path_dir)
        cmd = [sys.executable, os.path.abspath(__file__), "--_child", json.dumps(
            dict(n=n, backend=backend, dir=path_dir, threads=torch.get_num_threads()))]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=True)
        except subprocess.TimeoutExpired:
            print(f"  full n={n}: over {timeout_s} s, stopped", flush=True)
            rows.append(dict(n=n, d=D, backend=backend, seconds=float("nan"), note=f"timeout {timeout_s}s"))
            break
        except subprocess.CalledProcessError as exc:
            print(f"  full n={n}: failed\n{exc.stderr[-2000:]}", flush=True)
            break
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"  full n={n}: {row['seconds']:.2f}s, {row['pairs_per_s']:.3g} pairs/s, "
              f"peak RSS {row['peak_rss_mib']:.0f} MiB (after import {row['rss_after_import_mib']:.0f})", flush=True)
    return rows


def _dist_rank(rank, world, init_file, path_dir, n, backend, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x = np.load(os.path.join(path_dir, f"x{n}.npy"), mmap_mode="r")
    y = np.load(os.path.join(path_dir, f"y{n}.npy"), mmap_mode="r")
    kw = dict(sigma=SIGMA, backend=backend, max_memory="64MiB")
    scale.mmd_full(x[:2000], y[:2000], **kw)  # warm-up
    dist.barrier()
    t0 = time.perf_counter()
    v = scale.mmd_full(x, y, **kw)
    dist.barrier()
    secs = time.perf_counter() - t0
    if rank == 0:
        with open(os.path.join(out_dir, "dist.json"), "w") as f:
            json.dump(dict(seconds=secs, value=v), f)
    dist.destroy_process_group()


def bench_dist(n, backend, path_dir, repeats):
    import torch.multiprocessing as mp

    _write_data(n, path_dir)
    x = np.load(os.path.join(path_dir, f"x{n}.npy"), mmap_mode="r")
    y = np.load(os.path.join(path_dir, f"y{n}.npy"), mmap_mode="r")
    kw = dict(sigma=SIGMA, backend=backend, max_memory="64MiB")  # the same blocks in every setting
    rows = []
    threads = torch.get_num_threads()
    for t in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(t)
        secs = _median_time(lambda: scale.mmd_full(x, y, **kw), repeats)
        rows.append(dict(n=n, d=D, processes=1, threads_per_process=t, seconds=secs,
                         value=scale.mmd_full(x, y, **kw)))
    torch.set_num_threads(threads)
    ts = []
    for r in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            mp.spawn(_dist_rank, args=(2, os.path.join(tmp, "store"), path_dir, n, backend, tmp), nprocs=2)
            with open(os.path.join(tmp, "dist.json")) as f:
                res = json.load(f)
        ts.append(res["seconds"])
    rows.append(dict(n=n, d=D, processes=2, threads_per_process=1, seconds=statistics.median(ts),
                     value=res["value"]))
    base1 = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_1proc_1thread"] = base1 / row["seconds"]
        row["equal_to_1proc"] = row["value"] == rows[0]["value"]
        print(f"  dist n={n}: {row['processes']} proc x {row['threads_per_process']} thr: {row['seconds']:.2f}s "
              f"(speed-up {row['speedup_vs_1proc_1thread']:.2f}, same value: {row['equal_to_1proc']})", flush=True)
    return rows


def _plot(perm_rows, full_rows, dist_rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    if perm_rows:
        ax = axes[0]
        ns = [r["n"] for r in perm_rows]
        for key, label in (("one_mmd_s", "one ik.mmd"), ("one_pass_test_s", "mmd_test, 200 perms (one pass)"),
                           ("separate_calls_s", "200 ik.mmd calls"), ("naive_loop_s", "naive formula x 200")):
            ax.plot(ns, [r[key] for r in perm_rows], "o-", label=label)
        ax.set(xscale="log", yscale="log", xlabel="N = M (d = 64)", ylabel="seconds", title="permutation test")
        ax.legend(fontsize=8)
    ok = [r for r in full_rows if r.get("pairs_per_s")]
    if ok:
        ax = axes[1]
        ax.plot([r["n"] for r in ok], [r["pairs_per_s"] for r in ok], "o-")
        ax.set(xscale="log", xlabel="N = M (memory-mapped, d = 64)", ylabel="kernel pairs / s",
               title="mmd_full throughput")
        for r in ok:
            ax.annotate(f"{r['peak_rss_mib']:.0f} MiB", (r["n"], r["pairs_per_s"]), fontsize=8)
    if dist_rows:
        ax = axes[2]
        labels = [f"{r['processes']}p x {r['threads_per_process']}t" for r in dist_rows]
        ax.bar(labels, [r["seconds"] for r in dist_rows])
        ax.set(ylabel="seconds", title=f"mmd_full n={dist_rows[0]['n']}: gloo processes")
    fig.suptitle(f"infovae-kernels scale benchmark, {os.cpu_count()} CPU cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--quick", action="store_true", help="small sizes: a logic check")
    ap.add_argument("--perm-sizes", default="1000,2000")
    ap.add_argument("--full-sizes", default="20000,50000,100000")
    ap.add_argument("--dist-size", type=int, default=20000)
    ap.add_argument("--permutations", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loop-budget-s", type=float, default=20.0)
    ap.add_argument("--full-timeout-s", type=float, default=900.0)
    ap.add_argument("--data-dir", default=None, help="where the memory-mapped inputs are written (default: tmp)")
    ap.add_argument("--only", default="perm,full,dist")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared machine idle OpenMP threads spin and distort timings)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child:
        c = json.loads(args._child)
        print(json.dumps(_full_child(c["n"], c["backend"], c["dir"], c["threads"])))
        return 0
    if args.quick:
        args.perm_sizes, args.full_sizes, args.dist_size, args.repeats, args.loop_budget_s = \
            "300", "3000", 3000, 1, 2.0
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    os.makedirs(args.out, exist_ok=True)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="infovae_scale_")
    os.makedirs(data_dir, exist_ok=True)
    name = backends.resolve(args.backend, torch.device("cpu"))
    print(f"backend {name}, {torch.get_num_threads()} threads, data in {data_dir}", flush=True)
    perm_rows = full_rows = dist_rows = []
    if "perm" in only:
        perm_rows = bench_perm([int(s) for s in args.perm_sizes.split(",")], args.backend, args.permutations,
                               args.repeats, args.loop_budget_s)
        write_csv(os.path.join(args.out, "scale_perm.csv"), perm_rows)
    if "full" in only:
        full_rows = bench_full([int(s) for s in args.full_sizes.split(",")], args.backend, data_dir,
                               args.full_timeout_s)
        write_csv(os.path.join(args.out, "scale_full.csv"), full_rows)
    if "dist" in only:
        dist_rows = bench_dist(args.dist_size, args.backend, data_dir, args.repeats)
        write_csv(os.path.join(args.out, "scale_dist.csv"), dist_rows)
    _plot(perm_rows, full_rows, dist_rows, os.path.join(args.out, "scale.png"))
    if perm_rows:
        print("\n### one-pass permutation test (d = 64, 200 permutations)\n")
        print(markdown(perm_rows, ["n", "backend", "one_mmd_s", "one_pass_test_s", "test_over_one_mmd",
                                    "separate_calls_s", "separate_calls_measured", "naive_loop_s",
                                    "naive_loop_measured", "speedup_vs_calls", "speedup_vs_naive"]))
    if full_rows:
        print("\n### mmd_full on memory-mapped .npy (n x 64 float32 each)\n")
        print(markdown(full_rows, ["n", "backend", "threads", "seconds", "pairs_per_s", "block_size",
                                    "tile_pairs", "peak_rss_mib", "rss_after_import_mib", "data_mib"]))
    if dist_rows:
        print("\n### gloo processes vs one process\n")
        print(markdown(dist_rows, ["n", "processes", "threads_per_process", "seconds",
                                    "speedup_vs_1proc_1thread", "equal_to_1proc"]))
    print(f"\nwrote {args.out}/scale_*.csv and scale.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
