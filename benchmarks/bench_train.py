"""Training throughput of the InfoVAE family on this CPU: "mmd" and "stein" against "elbo", batch 256 and
1024, the fused "cpu" backend against the plain-torch reference, mlp encoder/decoder on mnist5k shapes.

For every (model, backend, batch) it times whole training steps (forward, backward, Adam step) and,
separately, the divergence term alone (its forward and backward with respect to z, as it runs inside
the step), and reports the median and the minimum of each over interleaved repetitions (on a shared,
loaded machine the minimum is the better estimate of the cost). div_fraction = divergence time / step
time is the share of a step the MMD or Stein term costs. "stein" uses the default bandwidth "median"
(Liu & Wang), whose median of all pairwise distances is part of its cost; "stein_fixed" is the same
model with stein_sigma=1.0, to separate the fused direction from the bandwidth heuristic.

    python benchmarks/bench_train.py [--threads 2] [--reps 15] [--out benchmarks/results/cpu/train.csv]

--decoders: training steps/s of the MMD-VAE per decoder instead (conv encoder;
mlp, conv, pixelcnn with 4 and 12 gated layers), batch 100, latent 10, on --device, with the load
average before and after written beside each row (a loaded machine shows there):

    python benchmarks/bench_train.py --decoders [--device cpu|cuda] [--reps 5] [--out benchmarks/results/cpu/train_decoders.csv]

--options: the same MMD-VAE step (mlp and conv decoders) in the variants a CPU user can choose: eager
with 2 threads (the default) and 1 thread, channels_last memory format (model and batch), and
torch.compile of the model (inductor; the first steps, which compile, are excluded and their time
reported), repetitions interleaved across variants so machine load hits all alike:

    python benchmarks/bench_train.py --options [--reps 7] -> benchmarks/results/cpu/train_options.csv
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    import infovae  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.join(ROOT, "python"))

import infovae_kernels as ik
from infovae import InfoVAE


def step_fn(model, opt, x):
    def step():
        out = model(x)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
    return step


def div_fn(model, bs):
    z0 = torch.randn(bs, model.latent)

    def run():
        z = z0.clone().requires_grad_(True)
        d, _ = model.divergence_term(z)
        d.backward()
    return run


def _load():
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def decoders(a):
    """Steps/s of the MMD-VAE per decoder (see the module docstring)."""
    from infovae.train import resolve_device

    dev = resolve_device(a.device)
    shape, bs = (1, 28, 28), 100
    x = torch.bernoulli(torch.full((bs, *shape), 0.13), generator=torch.Generator().manual_seed(0)).to(dev)
    rows = []
    for dec, layers in (("mlp", None), ("conv", None), ("pixelcnn", 4), ("pixelcnn", 12)):
        torch.manual_seed(0)
        model = InfoVAE.preset("mmd", shape, 10, encoder="conv", decoder=dec, layers=layers).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        f = step_fn(model, opt, x)
        for _ in range(2):
            f()
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        load0, times = _load(), []
        for _ in range(a.reps):
            sync()
            t = time.perf_counter()
            f()
            sync()
            times.append(time.perf_counter() - t)
        name = dec if layers is None else f"{dec}{layers}"
        rows.append(dict(decoder=name, device=str(dev), batch=bs, latent=10, threads=a.threads, reps=a.reps,
                         step_ms_median=round(1e3 * statistics.median(times), 2), step_ms_min=round(1e3 * min(times), 2),
                         steps_per_s_median=round(1 / statistics.median(times), 3),
                         steps_per_s_best=round(1 / min(times), 3), load_before=load0, load_after=_load()))
        print(rows[-1], flush=True)
    return rows


def options(a):
    """Step time per (decoder, variant), interleaved (see the module docstring)."""
    shape, bs = (1, 28, 28), 100
    x0 = torch.bernoulli(torch.full((bs, *shape), 0.13), generator=torch.Generator().manual_seed(0))
    variants = ("eager", "threads1", "channels_last", "compile")
    rows = []
    for dec in ("mlp", "conv"):
        steps, warm = {}, {}
        for v in variants:
            torch.manual_seed(0)
            model = InfoVAE.preset("mmd", shape, 10, encoder="conv", decoder=dec)
            x = x0
            if v == "channels_last":
                model = model.to(memory_format=torch.channels_last)
                x = x0.contiguous(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            run = torch.compile(model) if v == "compile" else model

            def step(run=run, opt=opt, x=x):
                out = run(x)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                opt.step()
            t = time.perf_counter()
            for _ in range(2):  # warm-up (compile: tracing and code generation)
                step()
            warm[v] = time.perf_counter() - t
            steps[v] = step
        times = {v: [] for v in variants}
        for _ in range(a.reps):
            for v in variants:
                torch.set_num_threads(1 if v == "threads1" else a.threads)
                t = time.perf_counter()
                steps[v]()
                times[v].append(time.perf_counter() - t)
        torch.set_num_threads(a.threads)
        base = statistics.median(times["eager"])
        for v in variants:
            med = statistics.median(times[v])
            rows.append(dict(decoder=dec, variant=v, batch=bs, threads=1 if v == "threads1" else a.threads,
                             reps=a.reps, step_ms_median=round(1e3 * med, 2), step_ms_min=round(1e3 * min(times[v]), 2),
                             speed_vs_eager=round(base / med, 3), warmup_s=round(warm[v], 2), load=_load()))
            print(rows[-1], flush=True)
    return rows


def _write(rows, out, head):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(head)
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, out)
    print(out)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--decoders", action="store_true", help="steps/s per decoder")
    p.add_argument("--options", action="store_true", help="eager / 1 thread / channels_last / torch.compile")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--latent", type=int, default=5)
    p.add_argument("--batches", default="256,1024")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "cpu", "train.csv"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.options:
        out = a.out if a.out != p.get_default("out") else os.path.join(ROOT, "benchmarks", "results", "cpu",
                                                                         "train_options.csv")
        _write(options(a), out, f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                                f"{os.cpu_count()} cpus, MMD-VAE, conv encoder, batch 100, latent 10\n")
        return
    if a.decoders:
        out = a.out if a.out != p.get_default("out") else os.path.join(
            ROOT, "benchmarks", "results", "cuda" if a.device.startswith("cuda") else "cpu", "train_decoders.csv")
        rows = decoders(a)
        _write(rows, out, f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads "
                          f"{a.threads}, {os.cpu_count()} cpus, MMD-VAE (lambda {InfoVAE.preset('mmd', (1, 28, 28), 10).lambda_:g}), "
                          f"conv encoder; load_before/after = 1-minute load average\n")
        return
    backends = ["cpu", "torch"] if ik.backends.available()["cpu"].available else ["torch"]
    if backends == ["torch"]:
        print("fused backend 'cpu' missing:", ik.backends.available()["cpu"].reason, file=sys.stderr)
    shape = (1, 28, 28)
    rows = []
    for bs in [int(b) for b in a.batches.split(",")]:
        x = torch.bernoulli(torch.full((bs, *shape), 0.13), generator=torch.Generator().manual_seed(0))
        cases = [("elbo", "torch")] + [(m, b) for m in ("mmd", "stein", "stein_fixed") for b in backends]
        fns = {}
        for name, backend in cases:
            torch.manual_seed(0)
            extra = dict(stein_sigma=1.0) if name == "stein_fixed" else {}
            model = InfoVAE.preset(name.replace("_fixed", ""), shape, a.latent, backend=backend, **extra)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            fns[(name, backend)] = (step_fn(model, opt, x), div_fn(model, bs) if name != "elbo" else None)
        times = {c: ([], []) for c in cases}
        for f, d in fns.values():  # warm up
            for _ in range(3):
                f()
                if d:
                    d()
        for _ in range(a.reps):  # interleaved, so load from other processes hits every case alike
            for c, (f, d) in fns.items():
                t = time.perf_counter()
                f()
                times[c][0].append(time.perf_counter() - t)
                if d:
                    t = time.perf_counter()
                    d()
                    times[c][1].append(time.perf_counter() - t)
        elbo_step = statistics.median(times[("elbo", "torch")][0])
        elbo_min = min(times[("elbo", "torch")][0])
        for (name, backend), (st, dt) in times.items():
            s, smin = statistics.median(st), min(st)
            dv, dmin = (statistics.median(dt), min(dt)) if dt else (0.0, 0.0)
            rows.append(dict(model=name, backend=backend if name != "elbo" else "-", batch=bs, latent=a.latent,
                             threads=a.threads, step_ms=round(1e3 * s, 3), step_ms_min=round(1e3 * smin, 3),
                             examples_per_s=round(bs / s, 1), examples_per_s_best=round(bs / smin, 1),
                             div_ms=round(1e3 * dv, 4), div_ms_min=round(1e3 * dmin, 4),
                             div_fraction=round(dv / s, 4), div_fraction_min=round(dmin / smin, 4),
                             throughput_vs_elbo=round(elbo_step / s, 3), best_vs_elbo_best=round(elbo_min / smin, 3)))
            print(rows[-1], flush=True)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    tmp = a.out + ".tmp"
    with open(tmp, "w", newline="") as f:
        f.write(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
                f"threads {a.threads}, mlp encoder/decoder (2 x 512), 784 inputs, Adam\n")
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, a.out)
    print(a.out)


if __name__ == "__main__":
    main()
