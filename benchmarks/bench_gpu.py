"""GPU benchmark ladder: mmd, kernel_sum and svgd_direction, this package's fused backends against
the naive formula (torch.cdist + exp + mean), the matmul formula (|x|^2 + |y|^2 - 2 x y^T, exp) and the
matmul formula under torch.compile, in one run on one machine.

    python benchmarks/bench_gpu.py --out DIR [--budget-s 300]      # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke --out /tmp/b             # tiny sizes on CPU: logic check

Ladder: N = M from 4096 doubling up to 1,048,576, d in (64, 2, 16, 8, 256) (d = 64 first: it carries
the targets). A provider is skipped at the next size once a size took more than --per-size-s seconds
(default 2) or ran out of memory; each (op, d) ladder gets an equal share of what is left of the
budget. Writes DIR/bench_<device>.csv (one row per measurement, device name in a column), DIR/bench.png
and prints a short table last. Times: median over repetitions, CUDA events; peak memory above the
inputs; pairs per second count the kernel evaluations the formula defines (mmd: N^2 + M^2 + NM,
kernel_sum: NM, svgd: N^2).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import infovae_kernels as ik  # noqa: E402
from common import formula, measure, pairs, sqdist_cdist, sqdist_matmul, write_csv  # noqa: E402

OPS = ("mmd", "kernel_sum", "svgd")
FIELDS = ["device", "op", "provider", "n", "m", "d", "status", "median_ms", "reps", "peak_mem_mb",
          "pairs_per_s", "note"]


def _make_package(op: str, backend: str):
    if op == "mmd":
        return lambda x, y, sigma: ik.mmd(x, y, sigma=sigma, backend=backend)
    if op == "kernel_sum":
        return lambda x, y, sigma: ik.kernel_sum(x, y, sigma=sigma, backend=backend)
    return lambda x, score, sigma: ik.svgd_direction(x, score, sigma=sigma, backend=backend)


def providers(device: torch.device, compile_backend: str, include_triton_on_cpu: bool):
    """name -> {op: callable(x, y_or_score, sigma)}."""
    out = {}
    for name, status in ik.backends.available().items():
        if name == "torch" or not status.available:
            continue
        if ik.backends._device_reason(name, device) is not None:
            continue
        if name == "triton" and device.type == "cpu" and not include_triton_on_cpu:
            continue
        out[name] = {op: _make_package(op, name) for op in OPS}
    out["naive"] = {op: formula(op, sqdist_cdist) for op in OPS}
    out["matmul"] = {op: formula(op, sqdist_matmul) for op in OPS}
    out["matmul_compiled"] = {op: torch.compile(formula(op, sqdist_matmul), dynamic=True,
                                                backend=compile_backend) for op in OPS}
    return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, getattr(torch, "OutOfMemoryError", RuntimeError)) and "out of memory" in str(exc).lower() \
        or "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------------ ladder

def run(args):
    device = torch.device(args.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    provs = providers(device, args.compile_backend, args.triton_on_cpu)
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    ops = args.ops.split(",")
    print(f"device: {dev_name}; torch {torch.__version__}; providers: {', '.join(provs)}", flush=True)
    for name, st in ik.backends.available().items():
        print(f"  backend {name}: {'yes' if st.available else 'no'} ({st.reason})")
    rows = []
    deadline = time.perf_counter() + args.budget_s
    ladders = [(op, d) for op in ops for d in dims]
    for li, (op, d) in enumerate(ladders):
        share = (deadline - time.perf_counter()) / (len(ladders) - li)
        ladder_end = time.perf_counter() + max(share, 0.0)
        alive = {p: True for p in provs}
        sigma = math.sqrt(d)
        for n in sizes:
            if not any(alive.values()):
                break
            g = torch.Generator(device="cpu").manual_seed(n + d)
            try:
                x = torch.randn(n, d, generator=g).to(device)
                y = (torch.randn(n, d, generator=g) + 0.1).to(device)
            except Exception as exc:  # inputs themselves do not fit
                print(f"  {op} d={d} n={n}: inputs do not fit ({exc})")
                break
            second = -x if op == "svgd" else y  # svgd: score of N(0, I) is -x
            for pname, fns in provs.items():
                row = dict(device=dev_name, op=op, provider=pname, n=n, m=n, d=d, status="ok",
                           median_ms="", reps="", peak_mem_mb="", pairs_per_s="", note="")
                if not alive[pname]:
                    continue
                if time.perf_counter() > ladder_end:
                    row.update(status="skipped", note="budget")
                    alive[pname] = False
                    rows.append(row)
                    continue
                try:
                    ms, reps, peak, first = measure(fns[op], (x, second, sigma), device)
                    row.update(median_ms=f"{ms:.4f}", reps=reps, peak_mem_mb=f"{peak:.1f}",
                               pairs_per_s=f"{pairs(op, n, n) / (ms * 1e-3):.4g}", note=f"first call {first:.2f}s")
                    if max(ms * 1e-3, first if pname != "matmul_compiled" else 0.0) > args.per_size_s:
                        alive[pname] = False
                except Exception as exc:  # OOM, or a provider that fails: record and stop it
                    oom = _is_oom(exc)
                    row.update(status="oom" if oom else "error", note=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
                    alive[pname] = False
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                rows.append(row)
                print(f"  {op:10s} d={d:<4d} n={n:<8d} {pname:16s} {row['status']:7s} "
                      f"{row['median_ms'] or '-':>10s} ms  {row['pairs_per_s'] or '':>10s} pairs/s", flush=True)
            del x, y, second
    return rows, dev_name


# ------------------------------------------------------------------------------------ outputs

def csv_path(out_dir, dev_name):
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dev_name)
    return os.path.join(out_dir, f"bench_{safe}.csv")


def plot(rows, out_dir, dev_name):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    ops = sorted({r["op"] for r in ok}, key=OPS.index)
    dims = sorted({r["d"] for r in ok})
    if not ops:
        return None
    fig, axes = plt.subplots(len(ops), len(dims), figsize=(3.2 * len(dims), 2.8 * len(ops)), squeeze=False)
    for i, op in enumerate(ops):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for prov in sorted({r["provider"] for r in ok}):
                pts = sorted((r["n"], float(r["median_ms"])) for r in ok
                             if r["op"] == op and r["d"] == d and r["provider"] == prov)
                if pts:
                    ax.loglog(*zip(*pts), marker="o", ms=3, label=prov)
            ax.set_title(f"{op}, d={d}", fontsize=9)
            ax.set_xlabel("N = M", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"infovae_kernels on {dev_name}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "bench.png")
    fig.savefig(path, dpi=110)
    return path


def summary(rows, dev_name):
    ok = [r for r in rows if r["status"] == "ok"]
    t = {(r["op"], r["d"], r["n"], r["provider"]): float(r["median_ms"]) for r in ok}
    fused = sorted({r["provider"] for r in ok} - {"naive", "matmul", "matmul_compiled"})
    lines = [f"summary ({dev_name}); times in ms; x = speed-up of the best fused backend"]
    lines.append(f"{'op':10s} {'d':>4s} {'N':>8s} " + " ".join(f"{p:>15s}" for p in fused + ["naive", "matmul", "matmul_compiled"])
                 + f" {'vs naive':>9s} {'vs compiled':>11s}")
    for op in OPS:
        for d in sorted({r["d"] for r in ok}):
            ns = sorted({r["n"] for r in ok if r["op"] == op and r["d"] == d})
            if not ns:
                continue
            pick = sorted({n for n in ns if n == 16384} | {ns[-1]})
            for n in pick:
                vals = [t.get((op, d, n, p)) for p in fused + ["naive", "matmul", "matmul_compiled"]]
                best = min([v for v, p in zip(vals, fused) if v is not None], default=None)
                sp = lambda ref: f"{ref / best:.1f}x" if (best and ref) else "-"  # noqa: E731
                lines.append(f"{op:10s} {d:>4d} {n:>8d} " + " ".join(f"{v:>15.3f}" if v is not None else f"{'-':>15s}" for v in vals)
                             + f" {sp(t.get((op, d, n, 'naive'))):>9s} {sp(t.get((op, d, n, 'matmul_compiled'))):>11s}")
    for p in fused:
        best = max(((float(r["pairs_per_s"]), r["op"], r["d"], r["n"]) for r in ok if r["provider"] == p and r["d"] <= 16),
                   default=None)
        if best:
            lines.append(f"{p}: best pairs/s at d <= 16: {best[0]:.3g} ({best[1]}, d={best[2]}, N={best[3]})")
        big = t.get(("mmd", 64, 1 << 20, p))
        lines.append(f"{p}: mmd N=M=2^20 d=64: {'%.3f s' % (big / 1e3) if big else 'not reached'}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: checks the script's logic")
    ap.add_argument("--device", default=None)
    ap.add_argument("--sizes", default=",".join(str(4096 << i) for i in range(9)))
    ap.add_argument("--dims", default="64,2,16,8,256")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the whole ladder")
    ap.add_argument("--per-size-s", type=float, default=2.0, help="stop a provider after a size slower than this")
    ap.add_argument("--compile-backend", default="inductor")
    ap.add_argument("--triton-on-cpu", action="store_true", help="include triton under TRITON_INTERPRET=1")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device = args.device or "cpu"
        if args.sizes == ap.get_default("sizes"):
            args.sizes = "64,128,256"
        if args.dims == ap.get_default("dims"):
            args.dims = "2,16"
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"
        args.budget_s = min(args.budget_s, 60.0)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.out, exist_ok=True)
    rows, dev_name = run(args)
    path = csv_path(args.out, dev_name)
    write_csv(path, rows, FIELDS)
    png = plot(rows, args.out, dev_name)
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    print(summary(rows, dev_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
