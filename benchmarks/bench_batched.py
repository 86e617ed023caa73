"""Many small MMD problems at once: the batched ik.mmd(x (B, N, d), y (B, M, d)) -> (B,) against a Python
loop of 2-D calls, GeomLoss and one 2-D call over the same number of pairs, float32 on the CPU.

  A  B = 256, N = M = 128, d = 3, rbf sigma 1, in this process:
       loop       torch.stack([ik.mmd(x[i], y[i]) for i in range(B)])
       batched    ik.mmd(x, y)
       geomloss   2 * geomloss.SamplesLoss("gaussian", blur=1, backend="tensorized")(x, y)  (its loss is MMD^2 / 2)
       pooled_2d  ik.mmd(x', y') on N' = M' = sqrt(B) N points each: (N' + M')^2 = B (N + M)^2 pair terms
       vmap       torch.vmap(ik.mmd)(x, y), or "failed: <why>"; vmap_paired: its seconds over the batched
                  call's, the two called in turn (the median of the per-pair ratios)
  B  B = 16, N = M = 4096, d = 3: batched, geomloss (forward only: about 9 s and GiBs a call) and pooled_2d
     (N' = 16,384), each in its own subprocess, with that process's peak resident memory (VmHWM).

Each method in two modes: "value" (no grad) and "full" (x requires grad: forward + backward). seconds: the
median of --reps timed calls after one warm-up call (a first call over 2 s is the only one). Ratios in
the same run: over_batched and over_pooled_2d (seconds / theirs, same case and mode), full_over_value
(full seconds / value seconds, same method). Values: value = the mean over the batch of MMD^2, max_rel_diff
= max_i |v_i - ref_i| / |ref_i| against the loop (A) or the batched call (B).

    python benchmarks/bench_batched.py [--quick] [--cases A,B] [--reps 7] [--reps-large 2] [--threads 2]
    -> benchmarks/results/cpu/batched.csv

Without a batched ik.mmd (one that takes 3-D inputs), its rows say "not available: <why>" and the rest run.
geomloss is optional (`pip install --no-deps geomloss`); without it its rows say "not available".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import infovae_kernels as ik  # noqa: E402
from common import markdown, write_csv  # noqa: E402

SIGMA = 1.0
MODES = ("value", "full")
FIELDS = ["bench", "case", "method", "mode", "b", "n", "d", "status", "seconds", "reps", "over_batched",
          "over_pooled_2d", "full_over_value", "value", "max_rel_diff", "peak_rss_mb", "above_baseline_mb", "device",
          "cpu_model", "threads", "torch"]
BATCH_METHODS = ("loop", "batched", "geomloss", "vmap")  # take x (B, N, d), y (B, M, d); pooled_2d takes 2-D


def method(name: str):
    """fn(x, y) -> MMD^2: (B,) for the batch methods, 0-dim for pooled_2d."""
    if name == "loop":
        return lambda x, y: torch.stack([ik.mmd(x[i], y[i], sigma=SIGMA) for i in range(x.shape[0])])
    if name in ("batched", "pooled_2d"):
        return lambda x, y: ik.mmd(x, y, sigma=SIGMA)
    if name == "geomloss":
        from geomloss import SamplesLoss

        loss = SamplesLoss("gaussian", blur=SIGMA, backend="tensorized")
        return lambda x, y: 2 * loss(x, y)
    if name == "vmap":
        return torch.vmap(lambda a, b: ik.mmd(a, b, sigma=SIGMA))
    raise ValueError(f"unknown method {name!r}")


def batched_missing() -> str | None:
    """Why ik.mmd cannot take (B, N, d) inputs here, or None when it can."""
    try:
        ik.mmd(torch.randn(2, 5, 3), torch.randn(2, 6, 3), sigma=SIGMA)
        return None
    except (ValueError, TypeError, RuntimeError) as exc:
        return str(exc).splitlines()[0]


def inputs(name: str, b: int, n: int, d: int, seed: int = 0):
    """x, y ~ N(0, I), N(0.1, 1.1^2 I): (B, N, d) each, or (sqrt(B) N, d) each for pooled_2d."""
    g = torch.Generator().manual_seed(seed)
    shape = (round(math.sqrt(b) * n), d) if name == "pooled_2d" else (b, n, d)
    return torch.randn(*shape, generator=g), 1.1 * torch.randn(*shape, generator=g) + 0.1


def call(fn, x, y, mode):
    if mode == "value":
        with torch.no_grad():
            return fn(x, y)
    xg = x.detach().requires_grad_(True)
    value = fn(xg, y)
    value.sum().backward()
    return value.detach()


def timed(fn, x, y, mode, reps):
    """(median seconds, reps, values): one warm-up call, then `reps` timed calls; a warm-up over 2 s is
    the only call."""
    t = time.perf_counter()
    value = call(fn, x, y, mode)
    first = time.perf_counter() - t
    if first > 2.0:
        return first, 1, value
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        call(fn, x, y, mode)
        times.append(time.perf_counter() - t)
    return statistics.median(times), reps, value


def paired_ratio(fa, fb, x, y, mode, reps) -> float:
    """The median over `reps` pairs of (seconds of fa) / (seconds of fb), the two called in turn, so that
    the machine's drift (up to 30% between runs here) moves both sides of each pair alike."""
    call(fa, x, y, mode), call(fb, x, y, mode)
    ratios = []
    for _ in range(reps):
        seconds = []
        for fn in (fa, fb):
            t = time.perf_counter()
            call(fn, x, y, mode)
            seconds.append(time.perf_counter() - t)
        ratios.append(seconds[0] / seconds[1])
    return statistics.median(ratios)


def load_backend() -> None:
    """A tiny 2-D value + gradient: the first ik.mmd call of a process loads its backend (seconds), which
    no timed call should pay."""
    call(method("pooled_2d"), *inputs("pooled_2d", 1, 8, 3), "full")


def peak_rss_mb() -> float:
    """VmHWM: this process's peak resident set (ru_maxrss would carry the parent's over exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child(spec: str) -> None:
    """--child name,mode,b,n,d,reps: one measurement in this fresh process, printed as JSON."""
    name, mode, b, n, d, reps = spec.split(",")
    x, y = inputs(name, int(b), int(n), int(d))
    fn = method(name)
    load_backend()
    base = peak_rss_mb()
    seconds, reps, value = timed(fn, x, y, mode, int(reps))
    print(json.dumps(dict(seconds=seconds, reps=reps, values=value.reshape(-1).tolist(), peak_rss_mb=peak_rss_mb(),
                          above_baseline_mb=peak_rss_mb() - base)))


def in_subprocess(name, mode, b, n, d, reps, threads) -> dict:
    spec = f"{name},{mode},{b},{n},{d},{reps}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--threads", str(threads), "--child", spec],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = (out.stderr.strip() or f"exit status {out.returncode}").splitlines()
        raise RuntimeError(lines[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(case, name, mode, b, n, d, reps, threads, separate, missing):
    """One row: the method's seconds, values and (in a subprocess) peak memory, or why it has none."""
    pooled = name == "pooled_2d"
    row = dict(bench="batched", case=case, method=name, mode=mode, b=1 if pooled else b,
               n=round(math.sqrt(b) * n) if pooled else n, d=d, status="ok")
    if name == "batched" and missing:
        return row | dict(status=f"not available: {missing}"), None
    try:
        if separate:
            r = in_subprocess(name, mode, b, n, d, reps, threads)
            values = torch.tensor(r["values"], dtype=torch.float64)
            row.update(seconds=r["seconds"], reps=r["reps"], peak_rss_mb=r["peak_rss_mb"],
                       above_baseline_mb=r["above_baseline_mb"])
        else:
            x, y = inputs(name, b, n, d)
            seconds, reps, value = timed(method(name), x, y, mode, reps)
            values = value.double().reshape(-1)
            row.update(seconds=seconds, reps=reps)
    except ImportError as exc:
        return row | dict(status=f"not available: {exc}"), None
    except Exception as exc:  # vmap over ik.mmd, memory: the row says what went wrong
        return row | dict(status=f"failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"), None
    return row | dict(value=float(values.mean())), values


def add_ratios(rows, values, reference):
    """over_batched, over_pooled_2d, full_over_value and max_rel_diff (against `reference`'s values)."""
    ok = {(r["method"], r["mode"]): r for r in rows if r["status"] == "ok"}
    for (name, mode), r in ok.items():
        for other in ("batched", "pooled_2d"):
            if (other, mode) in ok:
                r[f"over_{other}"] = r["seconds"] / ok[(other, mode)]["seconds"]
        if mode == "full" and (name, "value") in ok:
            r["full_over_value"] = r["seconds"] / ok[(name, "value")]["seconds"]
        ref = values.get((reference, mode))
        if name in BATCH_METHODS and ref is not None:
            r["max_rel_diff"] = float(((values[(name, mode)] - ref).abs() / ref.abs()).max())


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets)")
    ap.add_argument("--cases", default="A,B")
    ap.add_argument("--reps", type=int, default=7, help="timed calls per row in case A")
    ap.add_argument("--reps-large", type=int, default=2, help="timed calls per row in case B")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu", "batched.csv"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        child(args.child)
        return 0
    load_backend()
    q = args.quick
    cases = {"A": dict(b=16 if q else 256, n=32 if q else 128, reps=args.reps, separate=False, reference="loop",
                       jobs=[(m, mode) for m in ("loop", "batched", "geomloss", "pooled_2d", "vmap")
                             for mode in MODES]),
             "B": dict(b=4 if q else 16, n=256 if q else 4096, reps=args.reps_large, separate=True, reference="batched",
                       jobs=[("batched", "value"), ("geomloss", "value"), ("pooled_2d", "value"),
                             ("batched", "full"), ("pooled_2d", "full")])}
    todo = [c for c in args.cases.split(",") if c]
    missing = batched_missing()
    if missing:
        print(f"batched ik.mmd not available: {missing}")
    from tqdm.auto import tqdm

    bar = tqdm(total=sum(len(cases[c]["jobs"]) for c in todo), desc="bench_batched", unit="row")
    rows = []
    for case in todo:
        c = cases[case]
        case_rows, values = [], {}
        for name, mode in c["jobs"]:
            bar.set_postfix_str(f"{case} {name} {mode}")
            row, vals = measure(case, name, mode, c["b"], c["n"], 3, c["reps"], args.threads, c["separate"], missing)
            case_rows.append(row)
            if vals is not None:
                values[(name, mode)] = vals
            bar.update()
        add_ratios(case_rows, values, c["reference"])
        if case == "A" and not missing:  # vmap against the direct call, paired call by call
            x, y = inputs("batched", c["b"], c["n"], 3)
            for mode in MODES:
                case_rows.append(dict(bench="batched", case=case, method="vmap_paired", mode=mode, b=c["b"], n=c["n"],
                                      d=3, status="ok", reps=c["reps"], over_batched=paired_ratio(
                                          method("vmap"), method("batched"), x, y, mode, c["reps"])))
        rows += case_rows
    bar.close()
    for r in rows:
        r.update(device="cpu", cpu_model=cpu_model(), threads=torch.get_num_threads(), torch=torch.__version__)
    write_csv(args.out, rows, FIELDS)
    print(markdown(rows, ["case", "method", "mode", "b", "n", "status", "seconds", "over_batched", "over_pooled_2d",
                          "full_over_value", "max_rel_diff", "peak_rss_mb"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
