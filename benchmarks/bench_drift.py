"""CPU benchmark of the drift detectors (infovae_kernels.drift) against their peers, all in one run:
alibi-detect's MMDDrift and MMDDriftOnline (backend='pytorch'), TorchDrift's KernelMMDDriftDetector and
frouros' MMD with its permutation-test callback.

    python benchmarks/bench_drift.py [--quick] [--cases offline,online] [--sizes 2000,...,200000]
        [--online-sizes 1000,5000,20000,100000] [--x shift|null|null,shift]
        [--providers ours,alibi,torchdrift,frouros] [--per-size-s 600] [--max-mem-gib 18]
        [--peers-dir /work/peers] [--out benchmarks/results/cpu] [--threads T]

Each peer runs in its own virtual environment, outside this repository (alibi-detect 0.13 is under the
Business Source License: it is benchmarked, never imported by infovae_kernels or its tests), as a
subprocess: benchmarks/drift_peers.py executed by <peers-dir>/<peer>/bin/python, with the data passed as
.npy files. Make the environments with

    python3 -m venv /work/peers/alibi      && /work/peers/alibi/bin/pip install torch==2.13.0 'alibi-detect[torch]'
    python3 -m venv /work/peers/torchdrift && /work/peers/torchdrift/bin/pip install torch==2.13.0 torchdrift tqdm numpy
    python3 -m venv /work/peers/frouros    && /work/peers/frouros/bin/pip install torch==2.13.0 frouros

(a missing one gives rows with status "not installed"). Ours run in this process, measured by the same
code (drift_peers.measure_offline / measure_online).

Data: d = 32, float32, x_ref ~ N(0, I); x ~ N(0.05, I) ("offline-shift", the default) and/or N(0, I)
("offline-null"); the online stream is N(0, I). Everyone gets the Gaussian RBF exp(-r^2 / (2 sigma^2))
with sigma = sqrt(d) (--sigma; about alibi's median heuristic here), each through its own mapping:
ours `sigma=s`; alibi `sigma=np.array([s], float32)` (its GaussianRBF(sigma)); TorchDrift
`GaussianKernel(lengthscale=s)`; frouros `partial(rbf_kernel, sigma=s)`.

Cases:
  offline: N_ref = N in --sizes (2000, 5000, 10000, 20000, 200000), 100 permutations, p_val 0.05:
    ours MMDDrift(x_ref, p_val, sigma, n_permutations).predict(x); alibi MMDDrift; TorchDrift
    (n_perm=100); frouros (100 permutations, its default one worker per CPU). seconds = constructor +
    predict (a warm-up on 64 rows first is not counted; a call under 1 s is repeated, the median kept,
    peak memory from the first); distance = the unbiased MMD^2 each computed
    (TorchDrift's score keeps the kernel's diagonal: its row gives score - 1/(n-1) - 1/(m-1), the raw
    score in the note); rel_diff_vs_ours = |distance - ours| / |ours|; speedup_of_ours = their seconds /
    ours, measured in the same run.
  online: N_ref in --online-sizes (1000, 5000, 20000, 100000), ert 500, window 20, 1000 bootstraps:
    ours MMDDriftOnline and alibi's. calib_seconds / calib_peak_mib: the constructor; then late_at +
    n_update single-instance predictions: update_ms_early = mean over t = 1..n_update, update_ms_late =
    over t = late_at+1..late_at+n_update (flat per-step cost: the two agree). speedup_of_ours compares
    calibration seconds; the note counts the detections on this no-change stream and gives the last
    statistic against its threshold (the distance column stays empty: the two splits differ). Both get
    n_bootstraps=1000 (alibi's default; ours defaults to the authors' int(10 ert / (1 - 1/ert)^W)).

A peer is not run (status "skipped") at a size where its dense float32 matrices would exceed
--max-mem-gib (copies counted from its code and checked against measured peaks: alibi offline 3.5 x
(N_ref+N)^2 -- the joint matrix, its zero-diagonal copy, the dense diag() it subtracts and the kept k_xx;
TorchDrift 4 x (N_ref+N)^2 -- distances, kernel and the two gathers of each permutation; frouros per
worker 2 x max(N_ref, N)^2 float64; alibi online 4 x N_ref^2), where its time extrapolated (x N^2) from
its last size would exceed --per-size-s, or above a size where it ran out of memory, timed out (killed
at 1.5 x --per-size-s + 60 s) or was slower than --per-size-s. The runner also stops itself above
--max-mem-gib + 2 of measured growth. Peak memory is the resident set's growth during the measured
call, sampled every 2 ms by a thread (worker processes add their private memory). The note gives the
first call's CPU seconds too (this process and its finished workers): on a machine shared with other
work the wall clock varies (alibi at N = 2000 read 6 to 19 s on the same machine, its online calibration
at N = 500 1.3 s idle and 10 s beside a test run), CPU time less; the note also gives the 1-minute load
after each row, and the run warns at the start when other processes keep the cores busy. Run it on an
idle machine (or compare with --threads 1). Below N_ref + N of
about 2,900 a peer's (N_ref+N)^2 float32 matrix is under glibc's 32 MiB mmap ceiling: freed copies stay
in the heap, and its peak reads up to ~15x the matrices it holds (alibi / TorchDrift at N = 1000:
600-900 MiB; 54-63 MiB with MALLOC_MMAP_THRESHOLD_=4194304 set); above it the figures count live copies.

Writes OUT/drift.csv (rewritten after every row) and OUT/drift.png (seconds vs N_ref, log-log, per
provider; online calibration on the second panel). --quick: offline 500, 1000 with x null and shift,
online 500, 1000, 100 updates at t = 1.. and t = 101.., written as OUT/drift_quick.csv / .png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from common import busy_cores, markdown, write_csv  # noqa: E402
from drift_peers import MARKER, measure_offline, measure_online  # noqa: E402

FIELDS = ["device", "case", "provider", "version", "n_ref", "n", "d", "seconds", "peak_mem_mib", "distance",
          "rel_diff_vs_ours", "p_val", "is_drift", "speedup_of_ours", "calib_seconds", "calib_peak_mib",
          "update_ms_early", "update_ms_late", "status", "note"]
PEERS = ("alibi", "torchdrift", "frouros")
OFFLINE_PROVIDERS = ("ours", "alibi", "torchdrift", "frouros")
ONLINE_PROVIDERS = ("ours", "alibi")
SHIFT = 0.05


# ------------------------------------------------------------------------------------------- ours

def ours_offline(x_ref, x, *, sigma, n_perm, p_val, threads):
    from infovae_kernels.drift import MMDDrift

    t0 = time.perf_counter()
    det = MMDDrift(torch.from_numpy(x_ref), p_val=p_val, sigma=sigma, n_permutations=n_perm)
    fit = time.perf_counter() - t0
    r = det.predict(torch.from_numpy(x))
    return dict(distance=float(r.distance), p_val=float(r.p_val), is_drift=bool(r.is_drift), fit_seconds=fit,
                note=f"fit {fit:.3g} s; p = (#(perm >= stat) + 1) / ({n_perm} + 1)")


def ours_online(x_ref, *, sigma, ert, window, n_bootstraps, threads):
    from infovae_kernels.drift import MMDDriftOnline

    det = MMDDriftOnline(torch.from_numpy(x_ref), ert=ert, window_size=window, sigma=sigma, n_bootstraps=n_bootstraps)

    def step(x_t):
        r = det.predict(torch.from_numpy(x_t))
        return bool(r.is_drift), float(r.test_stat), float(r.threshold)
    return det, step


def ours_version() -> str:
    import infovae_kernels as ik

    try:
        rev = subprocess.run(["git", "-C", os.path.join(HERE, ".."), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{ik.__version__}+g{rev}" if rev else ik.__version__


def ours_missing(case: str):
    """None when our detector for `case` imports, else why not."""
    name = "MMDDrift" if case == "offline" else "MMDDriftOnline"
    try:
        import infovae_kernels.drift as drift
    except ImportError as exc:
        return f"infovae_kernels.drift does not import: {exc}"
    return None if hasattr(drift, name) else f"infovae_kernels.drift has no {name} yet"


# ------------------------------------------------------------------------------------------- peers

def peer_python(args, peer: str) -> str:
    return os.path.join(args.peers_dir, peer, "bin", "python")


def peer_versions(args, peer: str):
    """(version string, note) from the runner in the peer's venv, or (None, why not)."""
    py = peer_python(args, peer)
    if not os.path.exists(py):
        return None, f"no venv at {os.path.dirname(os.path.dirname(py))}"
    try:
        p = subprocess.run([py, os.path.join(HERE, "drift_peers.py"), "--versions", peer], capture_output=True,
                           text=True, timeout=120)
        out = _parse(p.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return None, f"the runner did not answer: {exc}"
    if not out.get("version"):
        return None, f"{peer} is not installed in {py}"
    deps = ", ".join(f"{k} {out[k]}" for k in ("torch", "numpy", "scipy") if k in out)
    return out["version"], deps


def _parse(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.startswith(MARKER)]
    if not lines:
        raise ValueError("no result line")
    return json.loads(lines[-1][len(MARKER):])


def run_peer(args, peer: str, case: str, files: dict, sigma: float) -> dict:
    cmd = [peer_python(args, peer), os.path.join(HERE, "drift_peers.py"), peer, case, "--ref", files["ref"],
           "--x", files["x"], "--sigma", repr(sigma), "--n-perm", str(args.n_permutations), "--p-val",
           str(args.p_val), "--ert", str(args.ert), "--window", str(args.window), "--n-bootstraps",
           str(args.n_bootstraps), "--n-update", str(args.n_update), "--late-at", str(args.late_at), "--threads",
           str(torch.get_num_threads()), "--max-mem-gib", str(args.max_mem_gib + 2)]
    limit = 1.5 * args.per_size_s + 60  # + the imports and the warm-up
    with tempfile.TemporaryFile("w+") as err:
        try:
            p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return dict(status="timeout", note=f"killed after {limit:.0f} s")
        try:
            return _parse(p.stdout)
        except ValueError:
            err.seek(0)
            tail = [ln for ln in err.read().splitlines() if ln.strip()][-1:] or [f"exit {p.returncode}"]
            killed = p.returncode in (-9, 137)
            return dict(status="out of memory" if killed else "error",
                        note=("killed (SIGKILL, likely the OOM killer); " if killed else "") + tail[0][:200])


# ------------------------------------------------------------------------------------------- budgets

def dense_gib(provider: str, case: str, n_ref: int, n: int) -> tuple[float, str]:
    """(GiB, how counted) of the dense matrices `provider` holds at once; 0 for ours (nothing N x N)."""
    joint = (n_ref + n) ** 2 * 4 / 2**30
    if provider == "ours":
        return 0.0, ""
    if case == "online":
        return 4 * n_ref**2 * 4 / 2**30, "4 x N_ref^2 float32"
    if provider == "alibi":
        return 3.5 * joint, "3.5 x (N_ref+N)^2 float32"
    if provider == "torchdrift":
        return 4 * joint, "4 x (N_ref+N)^2 float32"
    jobs = os.cpu_count() or 1
    return jobs * 2 * max(n_ref, n) ** 2 * 8 / 2**30, f"{jobs} workers x 2 x max(N_ref,N)^2 float64"


def predicted_seconds(last, n_ref: int):
    """Extrapolation (x N^2) of the provider's last measured size to n_ref, or None."""
    if not last:
        return None
    n_prev, secs = last
    return secs * (n_ref / n_prev) ** 2


# ------------------------------------------------------------------------------------------- run

def make_data(folder: str, n: int, d: int, stream_len: int, seed: int) -> dict:
    rng = np.random.default_rng(seed + n)
    x_ref = rng.standard_normal((n, d), dtype=np.float32)
    x_null = rng.standard_normal((n, d), dtype=np.float32)
    arrays = {"ref": x_ref, "null": x_null, "shift": x_null + np.float32(SHIFT),
              "stream": rng.standard_normal((stream_len, d), dtype=np.float32)}
    files = {}
    for k, a in arrays.items():
        files[k] = os.path.join(folder, f"{k}_{n}.npy")
        np.save(files[k], a)
    return {"arrays": arrays, "files": files}


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def tasks(args):
    """(case, x kind, n_ref, provider) in run order: sizes ascending, ours first at each size."""
    out = []
    if "offline" in args.cases:
        for n in args.sizes:
            for kind in args.x:
                out += [("offline", kind, n, p) for p in OFFLINE_PROVIDERS if p in args.providers]
    if "online" in args.cases:
        for n in args.online_sizes:
            out += [("online", "stream", n, p) for p in ONLINE_PROVIDERS if p in args.providers]
    return out


def case_name(case: str, kind: str) -> str:
    return f"offline-{kind}" if case == "offline" else "online"


def run(args, csv_path: str, png_path: str):
    from tqdm.auto import tqdm

    todo = tasks(args)
    versions = {"ours": (ours_version(), f"torch {torch.__version__}")}
    for peer in PEERS:
        if peer in args.providers:
            versions[peer] = peer_versions(args, peer)
    for p, (v, note) in versions.items():
        print(f"{p}: {v or 'not installed'} ({note})", flush=True)
    other = busy_cores()
    if other > 0.3:
        print(f"warning: other processes keep {other:.1f} of {os.cpu_count()} cores busy; wall-clock times will be "
              f"inflated (alibi's thousands of small 2-thread torch ops most: 5-50x seen), the CPU seconds in the "
              f"notes less", flush=True)
    sigma = args.sigma or math.sqrt(args.d)
    rows, last, dead = [], {}, {}
    folder = tempfile.mkdtemp(prefix="bench_drift_")
    data = {}
    bar = tqdm(total=len(todo), desc="bench_drift", unit="run")
    try:
        for case, kind, n_ref, prov in todo:
            cname = case_name(case, kind)
            bar.set_postfix_str(f"{cname} N={n_ref} {prov}")
            if n_ref not in data:
                data.clear()
                data[n_ref] = make_data(folder, n_ref, args.d, args.late_at + args.n_update, args.seed)
            dat = data[n_ref]
            n = n_ref if case == "offline" else args.late_at + args.n_update
            row = dict(device="cpu", case=cname, provider=prov, version=versions[prov][0] or "", n_ref=n_ref,
                       n=n, d=args.d)
            key = (prov, cname)
            gib, how = dense_gib(prov, case, n_ref, n)
            pred = predicted_seconds(last.get(key), n_ref) if prov != "ours" else None
            if versions[prov][0] is None:
                row.update(status="not installed", note=versions[prov][1])
            elif prov == "ours" and ours_missing(case):
                row.update(status="unavailable", note=ours_missing(case))
            elif key in dead:
                row.update(status="skipped", note=dead[key])
            elif gib > args.max_mem_gib:
                row.update(status="skipped", note=f"would need {gib:.1f} GiB ({how}) > {args.max_mem_gib:g} GiB")
            elif pred is not None and pred > args.per_size_s:
                row.update(status="skipped", note=f"would take ~{pred:.0f} s (x N^2 from {last[key][1]:.1f} s at "
                                                  f"N_ref={last[key][0]}) > {args.per_size_s:g} s")
            else:
                if prov == "ours":
                    out = _run_ours(args, case, dat, kind, sigma)
                else:
                    files = {"ref": dat["files"]["ref"], "x": dat["files"]["stream" if case == "online" else kind]}
                    out = run_peer(args, prov, case, files, sigma)
                row.update({k: out.get(k) for k in FIELDS if k in out and k not in ("version", "device")})
                row["note"] = "; ".join(x for x in (out.get("note"), f"{out.get('threads', torch.get_num_threads())}"
                                                    f" threads", f"load {load1():.2g}", versions[prov][1]) if x)
                if row["status"] == "ok":
                    secs = row["calib_seconds"] if case == "online" else row["seconds"]
                    last[key] = (n_ref, secs)
                    if secs > args.per_size_s:
                        dead[key] = f"over {args.per_size_s:g} s at N_ref={n_ref} ({secs:.0f} s)"
                else:
                    dead[key] = f"after {row['status']} at N_ref={n_ref}"
            if gib and "note" in row and row["status"] == "ok":
                row["note"] += f"; dense matrices ~{gib:.2g} GiB ({how})"
            rows.append(row)
            _ratios(rows)
            write_csv(csv_path, [_fmt(r) for r in rows], FIELDS)
            bar.write(_line(row))
            bar.update()
    finally:
        bar.close()
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def _run_ours(args, case, dat, kind, sigma) -> dict:
    threads = torch.get_num_threads()
    try:
        if case == "offline":
            return measure_offline(ours_offline, dat["arrays"]["ref"], dat["arrays"][kind], sigma=sigma,
                                   n_perm=args.n_permutations, p_val=args.p_val, threads=threads)
        return measure_online(ours_online, dat["arrays"]["ref"], dat["arrays"]["stream"], args.n_update,
                              args.late_at, sigma=sigma, ert=args.ert, window=args.window,
                              n_bootstraps=args.n_bootstraps, threads=threads)
    except MemoryError as exc:
        return dict(status="out of memory", note=str(exc)[:200])
    except (RuntimeError, ValueError, TypeError) as exc:
        return dict(status="error", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")


def _ratios(rows) -> None:
    """rel_diff_vs_ours and speedup_of_ours of every peer row against ours at the same case and N_ref."""
    ours = {(r["case"], r["n_ref"]): r for r in rows if r["provider"] == "ours" and r.get("status") == "ok"}
    for r in rows:
        o = ours.get((r["case"], r["n_ref"]))
        if r["provider"] == "ours" or o is None or r.get("status") != "ok":
            continue
        if r["case"] == "online":
            if o.get("calib_seconds"):
                r["speedup_of_ours"] = r["calib_seconds"] / o["calib_seconds"]
        else:
            r["speedup_of_ours"] = r["seconds"] / o["seconds"]
            if r.get("distance") is not None and o.get("distance") is not None:
                r["rel_diff_vs_ours"] = abs(r["distance"] - o["distance"]) / max(abs(o["distance"]), 1e-30)


def _fmt(r: dict) -> dict:
    return {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}


def _line(r: dict) -> str:
    bits = [f"{r['case']:<13} N_ref={r['n_ref']:<7} {r['provider']:<10} {r['status']}"]
    for k, fmt in (("seconds", "{:.3g} s"), ("calib_seconds", "calib {:.3g} s"), ("peak_mem_mib", "{:.0f} MiB"),
                   ("update_ms_early", "upd {:.3g}"), ("update_ms_late", "/{:.3g} ms"), ("distance", "MMD2 {:.6g}"),
                   ("p_val", "p {:.3g}"), ("speedup_of_ours", "ours x{:.3g}")):
        if r.get(k) is not None:
            bits.append(fmt.format(r[k]))
    if r["status"] != "ok":
        bits.append(str(r.get("note", "")))
    return "  ".join(bits)


# ------------------------------------------------------------------------------------------- plot

def plot(rows, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get("status") == "ok"]
    if not ok:
        return
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    color = {p: f"C{i}" for i, p in enumerate(provs)}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for case, ls in (("offline-shift", "-"), ("offline-null", ":")):
        for p in provs:
            pts = sorted((r["n_ref"], r["seconds"]) for r in ok if r["case"] == case and r["provider"] == p)
            if pts:
                a1.loglog(*zip(*pts), marker="o", ms=3, ls=ls, color=color[p],
                          label=f"{p}" + (" (x null)" if case == "offline-null" else ""))
    a1.set_title("offline MMD test, 100 permutations, d=32", fontsize=9)
    a1.set_xlabel("N_ref = N", fontsize=8)
    a1.set_ylabel("seconds (constructor + predict)", fontsize=8)
    for p in provs:
        pts = sorted((r["n_ref"], r["calib_seconds"]) for r in ok if r["case"] == "online" and p == r["provider"])
        if pts:
            late = [r["update_ms_late"] for r in ok if r["case"] == "online" and r["provider"] == p]
            a2.loglog(*zip(*pts), marker="s", ms=3, color=color[p],
                      label=f"{p} (update {min(late):.2g}-{max(late):.2g} ms)")
    a2.set_title("online: calibration (ert 500, window 20, 1000 bootstraps)", fontsize=9)
    a2.set_xlabel("N_ref", fontsize=8)
    a2.set_ylabel("calibration seconds", fontsize=8)
    for ax in (a1, a2):
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main

def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "cpu"))
    ap.add_argument("--quick", action="store_true", help="small sizes only (a smoke run); writes drift_quick.*")
    ap.add_argument("--cases", default="offline,online")
    ap.add_argument("--sizes", default=None, help="offline N_ref = N (default 2000,5000,10000,20000,200000)")
    ap.add_argument("--online-sizes", default=None, help="online N_ref (default 1000,5000,20000,100000)")
    ap.add_argument("--x", default=None, help="offline x: shift (N(0.05, I)), null (N(0, I)) or both")
    ap.add_argument("--providers", default=",".join(OFFLINE_PROVIDERS))
    ap.add_argument("--per-size-s", type=float, default=600.0, help="a peer's budget for one size")
    ap.add_argument("--max-mem-gib", type=float, default=18.0, help="skip a peer whose dense matrices exceed this")
    ap.add_argument("--peers-dir", default=os.environ.get("BENCH_DRIFT_PEERS", "/work/peers"))
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--sigma", type=float, default=None, help="RBF bandwidth (default sqrt(d))")
    ap.add_argument("--p-val", type=float, default=0.05)
    ap.add_argument("--n-permutations", type=int, default=100)
    ap.add_argument("--ert", type=float, default=500)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--n-bootstraps", type=int, default=1000)
    ap.add_argument("--n-update", type=int, default=None, help="instances per timed stretch (default 200)")
    ap.add_argument("--late-at", type=int, default=None, help="the late stretch starts after t = this (200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads, ours and the peers' (default: torch's)")
    args = ap.parse_args(argv)
    q = args.quick
    args.sizes = _ints(args.sizes or ("500,1000" if q else "2000,5000,10000,20000,200000"))
    args.online_sizes = _ints(args.online_sizes or ("500,1000" if q else "1000,5000,20000,100000"))
    args.x = [k for k in (args.x or ("null,shift" if q else "shift")).split(",") if k]
    args.n_update = args.n_update or (100 if q else 200)
    args.late_at = args.late_at if args.late_at is not None else args.n_update
    args.cases = {c for c in args.cases.split(",") if c}
    args.providers = {p for p in args.providers.split(",") if p}
    bad = (args.cases - {"offline", "online"}) | (args.providers - set(OFFLINE_PROVIDERS)) | \
        (set(args.x) - {"null", "shift"})
    if bad:
        ap.error(f"unknown: {', '.join(sorted(bad))}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    stem = "drift_quick" if q else "drift"
    os.makedirs(args.out, exist_ok=True)
    csv_path, png_path = os.path.join(args.out, stem + ".csv"), os.path.join(args.out, stem + ".png")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; d={args.d}, sigma="
          f"{args.sigma or math.sqrt(args.d):.4g}; peers from {args.peers_dir}", flush=True)
    rows = run(args, csv_path, png_path)
    plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path}\n")
    print(markdown([{k: v for k, v in r.items() if v is not None} for r in rows], ["case", "provider", "n_ref", "status", "seconds", "peak_mem_mib",
                                             "distance", "rel_diff_vs_ours", "p_val", "is_drift", "speedup_of_ours",
                                             "calib_seconds", "update_ms_early", "update_ms_late"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
