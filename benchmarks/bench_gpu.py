"""GPU benchmark ladder: mmd (value only, and forward + backward: the "full" mode of a training loss),
kernel_sum and svgd_direction, this package's backends against the naive formula (torch.cdist + exp +
mean), the matmul formula (|x|^2 + |y|^2 - 2 x y^T, exp) and the matmul formula under torch.compile, in
one run on one machine; plus the error of each Triton tl.dot precision mode against float64.

    python benchmarks/bench_gpu.py --out DIR [--budget-s 300]      # on a CUDA machine
    python benchmarks/bench_gpu.py --smoke --out /tmp/b             # tiny sizes on CPU: logic check

1. Targets first (DIR/full_<device>.csv): mmd at N = M = 8192, d = 8 and 64, value only and value +
   gradient (x and y require grad; forward + backward through the public ik.mmd), for every runnable
   backend (triton, cuda, torch) and the naive formula (torch autograd); the ratio full / value per
   provider is the figure the fused pass is judged by (floor about (4d + c) / (2d + c): ~1.4x at d = 8,
   ~1.9x at d = 64).
2. Precision (DIR/precision_<device>.csv): Triton quad_form (q, S, G) and pair_reduce (S, G) at N = 4096
   against the float64 reference, for each tl.dot precision ("ieee", "tf32x3", "tf32") and d in
   (8, 64, 256): max |err| / max |ref| (q: / |w|^T K |w|). d <= 16 computes r2 without tl.dot, so its
   error is the float32 exp (Triton's tl.exp) and the summation.
3. Ladder (DIR/bench_<device>.csv, DIR/bench.png): N = M from 4096 doubling up to 1,048,576, d in
   (64, 2, 16, 8, 256) (d = 64 first: it carries the targets); mmd in both modes. A provider is skipped
   at the next size once a size took more than --per-size-s seconds (default 2) or ran out of memory;
   each (op, mode, d) ladder gets an equal share of what is left of the budget.
Times: median over repetitions, CUDA events; peak memory above the inputs; pairs per second count the
kernel evaluations the formula defines (mmd: N^2 + M^2 + NM, kernel_sum: NM, svgd: N^2). The short
table is printed last.
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
#: (op, mode) ladders; "full" = forward + backward with x and y requiring grad (mmd only)
OP_MODES = (("mmd", "value"), ("mmd", "full"), ("kernel_sum", "value"), ("svgd", "value"))
FIELDS = ["device", "op", "mode", "provider", "n", "m", "d", "status", "median_ms", "reps", "peak_mem_mb",
          "pairs_per_s", "note"]
PREC_FIELDS = ["device", "precision", "d", "n", "quantity", "rel_err", "note"]
TARGET_N = 8192
TARGET_DIMS = (8, 64)


def _make_package(op: str, backend: str):
    if op == "mmd":
        return lambda x, y, sigma: ik.mmd(x, y, sigma=sigma, backend=backend)
    if op == "kernel_sum":
        return lambda x, y, sigma: ik.kernel_sum(x, y, sigma=sigma, backend=backend)
    return lambda x, score, sigma: ik.svgd_direction(x, score, sigma=sigma, backend=backend)


def full_mode(fn):
    """fn(x, y, sigma) -> scalar, run as a training loss: x and y require grad, forward + backward."""
    def run(x, y, sigma):
        xg, yg = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        value = fn(xg, yg, sigma)
        value.backward()
        return value.detach(), xg.grad, yg.grad
    return run


def providers(device: torch.device, compile_backend: str, include_triton_on_cpu: bool):
    """name -> {(op, mode): callable(x, y_or_score, sigma)}. The "torch" backend (the reference: it
    materialises the matrices) runs mmd only, in both modes."""
    out = {}
    for name in ik.backends.runnable(device):
        if name == "triton" and device.type == "cpu" and not include_triton_on_cpu:
            continue
        ops = ("mmd",) if name == "torch" else OPS
        fns = {(op, "value"): _make_package(op, name) for op in ops}
        fns[("mmd", "full")] = full_mode(_make_package("mmd", name))
        out[name] = fns
    naive = {(op, "value"): formula(op, sqdist_cdist) for op in OPS}
    naive[("mmd", "full")] = full_mode(formula("mmd", sqdist_cdist))
    out["naive"] = naive
    out["matmul"] = {(op, "value"): formula(op, sqdist_matmul) for op in OPS}
    out["matmul_compiled"] = {(op, "value"): torch.compile(formula(op, sqdist_matmul), dynamic=True,
                                                           backend=compile_backend) for op in OPS}
    return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, getattr(torch, "OutOfMemoryError", RuntimeError)) and "out of memory" in str(exc).lower() \
        or "out of memory" in str(exc).lower()


# ------------------------------------------------------------------------------------ measuring

def _inputs(n, d, device, op="mmd"):
    g = torch.Generator(device="cpu").manual_seed(n + d)
    x = torch.randn(n, d, generator=g).to(device)
    y = (torch.randn(n, d, generator=g) + 0.1).to(device)
    return x, (-x if op == "svgd" else y)  # svgd: score of N(0, I) is -x


def measure_row(fn, x, second, sigma, op, mode, pname, n, d, device, dev_name):
    """One timed measurement as a CSV row (status ok / oom / error)."""
    row = dict(device=dev_name, op=op, mode=mode, provider=pname, n=n, m=n, d=d, status="ok",
               median_ms="", reps="", peak_mem_mb="", pairs_per_s="", note="")
    first = 0.0
    try:
        ms, reps, peak, first = measure(fn, (x, second, sigma), device)
        row.update(median_ms=f"{ms:.4f}", reps=reps, peak_mem_mb=f"{peak:.1f}",
                   pairs_per_s=f"{pairs(op, n, n) / (ms * 1e-3):.4g}", note=f"first call {first:.2f}s")
    except Exception as exc:  # OOM, or a provider that fails: record it
        row.update(status="oom" if _is_oom(exc) else "error",
                   note=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"  {op:10s} {mode:5s} d={d:<4d} n={n:<8d} {pname:16s} {row['status']:7s} "
          f"{row['median_ms'] or '-':>10s} ms  {row['pairs_per_s'] or '':>10s} pairs/s", flush=True)
    return row, first


def targets(args, provs, device, dev_name):
    """mmd value and full (forward + backward) at N = M = target_n, d in TARGET_DIMS, every provider
    that has the full mode."""
    rows = []
    for d in TARGET_DIMS:
        x, y = _inputs(args.target_n, d, device)
        for pname, fns in provs.items():
            if ("mmd", "full") not in fns:
                continue
            for mode in ("value", "full"):
                rows.append(measure_row(fns[("mmd", mode)], x, y, math.sqrt(d), "mmd", mode, pname,
                                        args.target_n, d, device, dev_name)[0])
        del x, y
    return rows


def precision_errors(args, device, dev_name):
    """Triton's error against the float64 reference for each tl.dot precision (module docstring)."""
    if "triton" not in ik.backends.runnable(device) or (device.type == "cpu" and not args.triton_on_cpu):
        return []
    from infovae_kernels import kernels as KS
    from infovae_kernels.backends import reference as R
    from infovae_kernels.backends import triton as T

    rows = []
    n = args.precision_n
    old = T.get_precision()
    try:
        for d in (8, 64, 256):
            x, y = _inputs(n // 2, d, device)
            xp, yp, scale = KS.prepare(x, y)
            z = torch.cat([xp, yp])
            params = KS.kernel_params("rbf", torch.tensor([math.sqrt(d)], dtype=torch.float64, device=device),
                                      d, scale, z.dtype)
            w = torch.cat([torch.full((n // 2, 1), 2.0 / n), torch.full((n // 2, 1), -2.0 / n)]).to(device)
            v = torch.randn(n // 2, 1, generator=torch.Generator().manual_seed(d)).to(device)
            z64, w64 = z.double(), w.double()
            q0, s0, g0 = R.quad_form(z64, w64, w64, params, "rbf", False, True)
            scale_q = R.quad_form(z64, w64.abs(), None, params, "rbf", False, False)[0]
            ps0, pg0 = R.pair_reduce(xp.double(), yp.double(), v.double(), v.double(), params, "rbf", False)
            for prec in ("ieee", "tf32x3", "tf32"):
                T.set_precision(prec)
                q, s, g = T.quad_form(z, w, w, params, "rbf", False, True)
                ps, pg = T.pair_reduce(xp, yp, v, v, params, "rbf", False)
                errs = {"quad_form q": (q - q0).abs().max() / scale_q.abs().max(),
                        "quad_form S": (s - s0).abs().max() / s0.abs().max(),
                        "quad_form G": (g - g0).abs().max() / g0.abs().max(),
                        "pair_reduce S": (ps - ps0).abs().max() / ps0.abs().max(),
                        "pair_reduce G": (pg - pg0).abs().max() / pg0.abs().max()}
                for qty, e in errs.items():
                    rows.append(dict(device=dev_name, precision=prec, d=d, n=n, quantity=qty,
                                     rel_err=f"{float(e):.3e}",
                                     note="r2 by differences (no tl.dot)" if d <= 16 and "G" not in qty else ""))
                print(f"  precision {prec:6s} d={d:<4d} " + " ".join(f"{k} {float(e):.1e}" for k, e in errs.items()),
                      flush=True)
    except Exception as exc:  # report, do not lose the rest of the run
        rows.append(dict(device=dev_name, precision=T.get_precision(), d="", n=n, quantity="error",
                         rel_err="", note=str(exc).splitlines()[0][:200]))
        print(f"  precision check failed: {exc}")
    finally:
        T.set_precision(old)
    return rows


# ------------------------------------------------------------------------------------ ladder

def ladder(args, provs, device, dev_name, deadline):
    sizes = [int(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    ops = args.ops.split(",")
    rows = []
    ladders = [(op, mode, d) for op, mode in OP_MODES if op in ops for d in dims]
    for li, (op, mode, d) in enumerate(ladders):
        share = (deadline - time.perf_counter()) / (len(ladders) - li)
        ladder_end = time.perf_counter() + max(share, 0.0)
        alive = {p: (op, mode) in fns for p, fns in provs.items()}
        sigma = math.sqrt(d)
        for n in sizes:
            if not any(alive.values()):
                break
            try:
                x, second = _inputs(n, d, device, op)
            except Exception as exc:  # inputs themselves do not fit
                print(f"  {op} d={d} n={n}: inputs do not fit ({exc})")
                break
            for pname, fns in provs.items():
                if not alive[pname]:
                    continue
                if time.perf_counter() > ladder_end:
                    rows.append(dict(device=dev_name, op=op, mode=mode, provider=pname, n=n, m=n, d=d,
                                     status="skipped", median_ms="", reps="", peak_mem_mb="", pairs_per_s="",
                                     note="budget"))
                    alive[pname] = False
                    continue
                row, first = measure_row(fns[(op, mode)], x, second, sigma, op, mode, pname, n, d, device, dev_name)
                rows.append(row)
                slow = row["status"] != "ok" or max(float(row["median_ms"]) * 1e-3,
                                                    first if pname != "matmul_compiled" else 0.0) > args.per_size_s
                if slow:
                    alive[pname] = False
            del x, second
    return rows


# ------------------------------------------------------------------------------------ outputs

def csv_path(out_dir, dev_name, stem="bench"):
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in dev_name)
    return os.path.join(out_dir, f"{stem}_{safe}.csv")


def plot(rows, out_dir, dev_name):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no PNG")
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    panels = [om for om in OP_MODES if any((r["op"], r["mode"]) == om for r in ok)]
    dims = sorted({r["d"] for r in ok})
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), len(dims), figsize=(3.2 * len(dims), 2.8 * len(panels)), squeeze=False)
    for i, (op, mode) in enumerate(panels):
        for j, d in enumerate(dims):
            ax = axes[i][j]
            for prov in sorted({r["provider"] for r in ok}):
                pts = sorted((r["n"], float(r["median_ms"])) for r in ok
                             if (r["op"], r["mode"]) == (op, mode) and r["d"] == d and r["provider"] == prov)
                if pts:
                    ax.loglog(*zip(*pts), marker="o", ms=3, label=prov)
            ax.set_title(f"{op} ({mode}), d={d}", fontsize=9)
            ax.set_xlabel("N = M", fontsize=8)
            ax.set_ylabel("ms", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"infovae_kernels on {dev_name}", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, "bench.png")
    fig.savefig(path, dpi=110)
    return path


def full_summary(rows, dev_name):
    """full / value per provider at the target sizes (the fused pass's figure)."""
    ok = {(r["provider"], r["d"], r["n"], r["mode"]): float(r["median_ms"]) for r in rows if r["status"] == "ok"}
    lines = [f"mmd value + gradient vs value only ({dev_name}); ms; floor ~1.4x (d=8), ~1.9x (d=64)",
             f"{'provider':16s} {'d':>4s} {'N':>7s} {'value':>10s} {'full':>10s} {'ratio':>7s} {'vs naive full':>14s}"]
    for (prov, d, n, mode), full in sorted(ok.items()):
        if mode != "full":
            continue
        value = ok.get((prov, d, n, "value"))
        naive = ok.get(("naive", d, n, "full"))
        lines.append(f"{prov:16s} {d:>4d} {n:>7d} {value if value else float('nan'):>10.3f} {full:>10.3f} "
                     f"{(full / value) if value else float('nan'):>6.2f}x "
                     f"{(naive / full) if naive else float('nan'):>13.1f}x")
    return "\n".join(lines)


def summary(rows, dev_name):
    ok = [r for r in rows if r["status"] == "ok"]
    t = {(r["op"], r["mode"], r["d"], r["n"], r["provider"]): float(r["median_ms"]) for r in ok}
    base = ["naive", "matmul", "matmul_compiled"]
    fused = sorted({r["provider"] for r in ok} - set(base))
    lines = [f"summary ({dev_name}); times in ms; x = speed-up of the best package backend"]
    lines.append(f"{'op':16s} {'d':>4s} {'N':>8s} " + " ".join(f"{p:>15s}" for p in fused + base)
                 + f" {'vs naive':>9s} {'vs compiled':>11s}")
    for op, mode in OP_MODES:
        for d in sorted({r["d"] for r in ok}):
            ns = sorted({r["n"] for r in ok if (r["op"], r["mode"]) == (op, mode) and r["d"] == d})
            if not ns:
                continue
            for n in sorted({n for n in ns if n == 16384} | {ns[-1]}):
                vals = [t.get((op, mode, d, n, p)) for p in fused + base]
                best = min([v for v, p in zip(vals, fused) if v is not None], default=None)
                sp = lambda ref: f"{ref / best:.1f}x" if (best and ref) else "-"  # noqa: E731
                lines.append(f"{op + ' ' + mode:16s} {d:>4d} {n:>8d} "
                             + " ".join(f"{v:>15.3f}" if v is not None else f"{'-':>15s}" for v in vals)
                             + f" {sp(t.get((op, mode, d, n, 'naive'))):>9s}"
                             + f" {sp(t.get((op, mode, d, n, 'matmul_compiled'))):>11s}")
    for p in fused:
        best = max(((float(r["pairs_per_s"]), r["op"], r["d"], r["n"]) for r in ok
                    if r["provider"] == p and r["d"] <= 16 and r["mode"] == "value"), default=None)
        if best:
            lines.append(f"{p}: best pairs/s at d <= 16: {best[0]:.3g} ({best[1]}, d={best[2]}, N={best[3]})")
        big = t.get(("mmd", "value", 64, 1 << 20, p))
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
    ap.add_argument("--target-n", type=int, default=TARGET_N, help="N = M of the value vs full targets")
    ap.add_argument("--precision-n", type=int, default=4096, help="pooled points of the precision check")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: targets, precision, ladder")
    ap.add_argument("--budget-s", type=float, default=300.0, help="wall-clock budget of the whole run")
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
        if args.target_n == TARGET_N:
            args.target_n = 256
        if args.precision_n == ap.get_default("precision_n"):
            args.precision_n = 128
        if args.compile_backend == "inductor":
            args.compile_backend = "aot_eager"
        args.budget_s = min(args.budget_s, 60.0)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    skip = set(filter(None, args.skip.split(",")))
    device = torch.device(args.device)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    deadline = time.perf_counter() + args.budget_s
    os.makedirs(args.out, exist_ok=True)
    provs = providers(device, args.compile_backend, args.triton_on_cpu)
    print(f"device: {dev_name}; torch {torch.__version__}; providers: {', '.join(provs)}", flush=True)
    for name, st in ik.backends.available().items():
        print(f"  backend {name}: {'yes' if st.available else 'no'} ({st.reason})")

    written = []
    target_rows = [] if "targets" in skip else targets(args, provs, device, dev_name)
    if target_rows:
        written.append(csv_path(args.out, dev_name, "full"))
        write_csv(written[-1], target_rows, FIELDS)
    prec_rows = [] if "precision" in skip else precision_errors(args, device, dev_name)
    if prec_rows:
        written.append(csv_path(args.out, dev_name, "precision"))
        write_csv(written[-1], prec_rows, PREC_FIELDS)
    rows = [] if "ladder" in skip else ladder(args, provs, device, dev_name, deadline)
    png = None
    if rows:
        written.append(csv_path(args.out, dev_name))
        write_csv(written[-1], rows, FIELDS)
        png = plot(rows, args.out, dev_name)
    print("wrote " + ", ".join(written + ([png] if png else [])))
    if prec_rows:
        print("tl.dot precision, max rel. error vs float64 (d: quantity = err):")
        for r in prec_rows:
            if r["quantity"] in ("quad_form q", "quad_form G", "pair_reduce S"):
                print(f"  {r['precision']:6s} d={r['d']}: {r['quantity']} {r['rel_err']}")
    if rows:
        print(summary(rows, dev_name))
    if target_rows:
        print(full_summary(target_rows, dev_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
