"""The `infovae-kernels` command line (also `python -m infovae_kernels`).

    infovae-kernels mmd X Y [--kernel rbf|imq] [--sigma 1.0 | 0.5,1,2 | median] [--estimator biased|unbiased]
                            [--permutations P] [--seed S] [--backend auto] [--device cpu] [--max-memory 2GB]
                            [--block-size ROWS] [--dtype auto|float32|float64] [--json OUT.json] [--quiet]
    infovae-kernels info
    infovae-kernels selftest [--backend cpu] [--device cpu] [--json OUT.json]
    infovae-kernels drift REF X [--kernel rbf] [--sigma median] [--p-val 0.05] [--permutations 100]
                              [--online --ert 500 --window 20 [--bootstraps B]] [--json OUT.json] [--plot P.png]
    infovae-kernels ksd SAMPLES SCORES [--kernel imq|rbf] [--sigma 1.0] [--beta -0.5] [--c 1] [--estimator unbiased]
                            [--test [--n-bootstrap 1000] [--seed 0]] [--json OUT.json]
    infovae-kernels bench [--quick] [--backend NAME] [--out DIR]

X and Y are .npy (memory-mapped, streamed), .pt (a saved tensor) or .csv (numbers, comma separated, an
optional header line) files of shape (n, d); a 1-D file is n points in 1 dimension. Exit codes: 0 done,
2 bad arguments or input files, 130 interrupted (Ctrl-C), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from infovae_kernels.kernels import KERNELS


class InputError(Exception):
    """A problem with the user's files or arguments: printed without a traceback, exit code 2."""


# ------------------------------------------------------------------------------------------- files

def _csv_has_header(path: Path) -> bool:
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    [float(v) for v in line.strip().split(",") if v.strip() != ""]
                    return False
                except ValueError:
                    return True
    return False


def load_points(path: str):
    """An (n, d) numpy array (memory-mapped for .npy) or tensor read from `path`; InputError if not."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if not p.is_file():
        raise InputError(f"{path}: not a file")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(p, mmap_mode="r", allow_pickle=False)
        elif suffix == ".pt":
            data = torch.load(p, map_location="cpu", weights_only=True)
            if isinstance(data, dict) and len(data) == 1:
                data = next(iter(data.values()))
            if not isinstance(data, torch.Tensor):
                raise InputError(f"{path}: expected a saved tensor, found {type(data).__name__}")
        elif suffix == ".csv":
            header = _csv_has_header(p)
            data = np.genfromtxt(p, delimiter=",", dtype=np.float64, skip_header=1 if header else 0,
                                 ndmin=2, invalid_raise=True)
            bad = ~np.isfinite(data).all(axis=1)
            if bad.any():
                row = int(np.argmax(bad))
                raise InputError(f"{path}: row {row} (line {row + 1 + int(header)}) has a missing, NaN or "
                                 "infinite value")
        else:
            raise InputError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .npy, .pt or .csv")
    except InputError:
        raise
    except Exception as exc:  # corrupt, truncated, pickled objects, wrong number of CSV columns ...
        msg = " ".join(str(exc).split())
        raise InputError(f"{path}: cannot read it as {suffix} ({type(exc).__name__}: {msg[:300]})") from None
    if data.ndim == 1:
        data = data.reshape(-1, 1)
    if data.ndim != 2:
        raise InputError(f"{path}: expected an (n_points, n_features) array, got shape {tuple(data.shape)}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise InputError(f"{path}: no data (shape {tuple(data.shape)})")
    if isinstance(data, np.ndarray) and data.dtype.kind not in "fiub":
        raise InputError(f"{path}: expected numbers, got dtype {data.dtype}")
    if isinstance(data, torch.Tensor) and data.is_complex():
        raise InputError(f"{path}: complex data are not supported")
    return data


def _is_float32(a) -> bool:
    return a.dtype in (np.float32, torch.float32)


def _parse_sigma(text: str):
    if text.strip() == "median":
        return "median"
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--sigma: expected a float, a comma-separated list of floats or 'median', got {text!r}")
    if not vals or any(not np.isfinite(v) or v <= 0 for v in vals):
        raise InputError(f"--sigma: bandwidths must be positive, got {text!r}")
    return vals[0] if len(vals) == 1 else vals


def json_target(path: str) -> Path:
    """The file a --json path writes: a symlink is followed (its target is replaced, the link stays), a
    FIFO, device or directory is refused, a missing folder is made, and it must be writable. Checked
    before any work."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        raise InputError(f"--json {path}: not a regular file (a directory, FIFO or device); give a file path")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--json {path}: cannot create the folder {folder} ({exc.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise InputError(f"--json {path}: not writable")
    return target


def write_json_atomic(path: str, obj) -> None:
    """Write to a temporary file beside the target (json_target), fsync, then os.replace: readers never
    see half a file. An existing file keeps its permission bits; a new one gets the umask's."""
    target = json_target(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ------------------------------------------------------------------------------------------ commands

_JOINED: list = []  # the process group _join_torchrun created, for main to destroy


def _join_torchrun(device: Optional[str]) -> int:
    """Under torchrun (WORLD_SIZE > 1) join the process group, NCCL for CUDA and gloo otherwise, so that
    the ranks share the tile pairs; returns this process's rank (0 when alone)."""
    import torch.distributed as dist

    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = device.startswith("cuda") if device else torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        _JOINED.append(True)
    return dist.get_rank() if dist.is_initialized() else 0


def _leave_torchrun() -> None:
    """Destroys the process group _join_torchrun created. Left to the interpreter's exit, gloo's threads
    aborted a rank now and then ("terminate called without an active exception": 2 runs in 12 of
    tests/test_cli.py's two-rank command)."""
    if _JOINED:
        import torch.distributed as dist

        _JOINED.clear()
        if dist.is_initialized():
            dist.destroy_process_group()


def _load_pair(args):
    """x, y, the compute dtype and the progress flag of a two-file command (mmd, kid)."""
    if args.json:
        json_target(args.json)
    x, y = load_points(args.x), load_points(args.y)
    if x.shape[1] != y.shape[1]:
        raise InputError(f"{args.x} has {x.shape[1]} features (shape {tuple(x.shape)}) but {args.y} has "
                         f"{y.shape[1]} (shape {tuple(y.shape)})")
    if args.dtype == "auto":
        dtype = torch.float32 if _is_float32(x) and _is_float32(y) else torch.float64
    else:
        dtype = getattr(torch, args.dtype)
    progress = None if (not args.quiet and sys.stderr.isatty()) else False
    return x, y, dtype, progress


def _report(args, rank: int, rows: list, info: dict, out: dict) -> None:
    """Print the rows (rank 0) with the backend and time rows, and write the JSON (atomically)."""
    secs = info["seconds"]
    nx, ny = float(info["n_x"]), float(info["n_y"])
    pairs = nx * nx + ny * ny + nx * ny  # the kernel pairs the MMD formula defines
    rows = [("x", f"{args.x}  ({info['n_x']} x {info['d']})"),
            ("y", f"{args.y}  ({info['n_y']} x {info['d']})")] + rows
    rows += [("backend", f"{info['backend']} on {info['device']}, {info['dtype']}, block {info['block_size']} rows, "
                         f"{info['tile_pairs']} tile pairs"),
             ("time", f"{secs:.3f} s  ({pairs / max(secs, 1e-12):.3g} kernel pairs/s)")]
    width = max(len(k) for k, _ in rows)
    for k, v in rows if rank == 0 else ():
        print(f"{k:<{width}}  {v}")
    if args.json:
        from infovae_kernels import __version__

        write_json_atomic(args.json, dict(info, x=args.x, y=args.y, kernel_pairs_per_s=pairs / max(secs, 1e-12),
                                          version=__version__, **out))
        if not args.quiet:
            print(f"wrote {args.json}")


def _cmd_mmd(args) -> int:
    import infovae_kernels as ik
    from infovae_kernels.kernels import has_bandwidth

    rank = _join_torchrun(args.device)
    if rank != 0:  # every rank computes its share of the tile pairs; rank 0 reports
        args.quiet, args.json = True, None
    if args.sigma is not None and not has_bandwidth(args.kernel):
        raise InputError(f"--sigma: the {args.kernel} kernel has no bandwidth")
    sigma = _parse_sigma(args.sigma or "1.0") if has_bandwidth(args.kernel) else None
    x, y, dtype, progress = _load_pair(args)
    info: dict = {}
    common = dict(kernel=args.kernel, sigma=sigma, estimator=args.estimator, backend=args.backend,
                  device=args.device, max_memory=args.max_memory, block_size=args.block_size, progress=progress,
                  dtype=dtype, names=(args.x, args.y), report=info)
    result = None
    try:
        if args.permutations:
            result = ik.mmd_test(x, y, permutations=args.permutations, seed=args.seed, **common)
        else:
            ik.mmd_full(x, y, **common)
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None
    if not np.isfinite(info["value"]):
        raise InputError(f"MMD^2 came out {info['value']} (not finite); please report this with the inputs")
    kernel = args.kernel if sigma is None else (
        f"{args.kernel}, sigma {', '.join(f'{s:.6g}' for s in info['sigmas'])}"
        + (" (median heuristic)" if sigma == "median" else ""))
    rows = [("kernel", kernel), ("estimator", args.estimator), ("MMD^2", f"{info['value']:.10g}")]
    out = dict(estimator=args.estimator, mmd2=info["value"])
    if result is not None:
        rows.append(("p-value", f"{info['p_value']:.6g}  ({info['permutations']} permutations, seed {info['seed']})"))
        out["permutation_statistics"] = result.permutation_statistics.tolist()
    _report(args, rank, rows, info, out)
    return 0


def _cmd_kid(args) -> int:
    import infovae_kernels as ik

    rank = _join_torchrun(args.device)
    if rank != 0:
        args.quiet, args.json = True, None
    x, y, dtype, progress = _load_pair(args)
    info: dict = {}
    try:
        result = ik.kid(x, y, degree=args.degree, gamma=args.gamma, coef=args.coef, backend=args.backend,
                        device=args.device, max_memory=args.max_memory, block_size=args.block_size,
                        progress=progress, dtype=dtype, names=(args.x, args.y), report=info)
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None
    if not (np.isfinite(result.value) and np.isfinite(result.std)):
        raise InputError(f"KID came out {result.value} +- {result.std} (not finite); please report this with the inputs")
    gamma = f"{args.gamma:g}" if args.gamma is not None else f"1/{info['d']}"
    rows = [("kernel", f"polynomial (gamma x.y + coef)^degree, gamma {gamma}, coef {args.coef:g}, degree {args.degree}"),
            ("KID", f"{result.value:.10g}"),
            ("std error", f"{result.std:.4g}  (first-order U-statistic variance)")]
    _report(args, rank, rows, info, dict(kid=result.value, kid_std_error=result.std))
    return 0


def _cmd_ksd(args) -> int:
    """Squared KSD of SAMPLES against the density whose scores at those samples are SCORES (--test: the
    wild-bootstrap p-value)."""
    import infovae_kernels as ik

    if args.json:
        json_target(args.json)
    if args.n_bootstrap < 1:
        raise InputError("--n-bootstrap must be >= 1")
    x, s = load_points(args.samples), load_points(args.scores)
    if tuple(x.shape) != tuple(s.shape):
        raise InputError(f"{args.scores} has shape {tuple(s.shape)} but {args.samples} has {tuple(x.shape)}: "
                         "one score row per sample")
    dtype = torch.float32 if args.dtype == "float32" or (args.dtype == "auto" and _is_float32(x) and _is_float32(s)) \
        else torch.float64
    xt = torch.tensor(np.asarray(x), dtype=dtype)
    st = torch.tensor(np.asarray(s), dtype=dtype)
    sigma = _parse_sigma(args.sigma) if args.sigma is not None else None
    kw = dict(kernel=args.kernel, sigma=sigma, estimator=args.estimator)
    if args.kernel == "imq":
        kw.update(beta=args.beta, c=args.c)
    t0 = time.perf_counter()
    try:
        value = float(ik.ksd(xt, st, **kw))
        result = ik.ksd_test(xt, st, n_bootstrap=args.n_bootstrap, seed=args.seed,
                             progress=None if not args.quiet else False, **kw) if args.test else None
    except (ValueError, TypeError) as exc:
        raise InputError(str(exc)) from None
    secs = time.perf_counter() - t0
    base = (f"imq (c^2 + r2/sigma^2)^beta, beta {args.beta:g}, c {args.c:g}" if args.kernel == "imq"
            else "rbf exp(-r2 / (2 sigma^2))")
    rows = [("samples", f"{args.samples}  ({xt.shape[0]} x {xt.shape[1]}, {dtype})"), ("scores", args.scores),
            ("kernel", f"Stein kernel of {base}, sigma {args.sigma or '1.0'}"), ("estimator", args.estimator),
            ("KSD^2", f"{value:.10g}")]
    out = dict(samples=args.samples, scores=args.scores, n=int(xt.shape[0]), d=int(xt.shape[1]), kernel=args.kernel,
               sigma=sigma, beta=args.beta, c=args.c, estimator=args.estimator, ksd2=value)
    if result is not None:
        rows.append(("p-value", f"{result.p_value:.6g}  ({args.n_bootstrap} wild-bootstrap draws, seed {args.seed})"))
        out.update(p_value=result.p_value, n_bootstrap=args.n_bootstrap, seed=args.seed)
    rows.append(("time", f"{secs:.3f} s"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        from infovae_kernels import __version__

        write_json_atomic(args.json, dict(out, seconds=secs, version=__version__))
        if not args.quiet:
            print(f"wrote {args.json}")
    return 0


def _cmd_info(args) -> int:
    import infovae_kernels as ik
    from infovae_kernels import backends

    print(f"infovae-kernels {getattr(ik, '__version__', '?')}, torch {torch.__version__}, "
          f"python {sys.version.split()[0]}")
    print("backends:")
    try:
        status = {name: (s.available, s.reason) for name, s in backends.available().items()}
    except Exception:  # one broken backend must not hide the others
        status = {}
        for name in backends.NAMES:
            try:
                s = backends.available()[name]
                status[name] = (s.available, s.reason)
            except Exception as exc:
                status[name] = (False, f"status check failed: {type(exc).__name__}: {exc}")
    for name, (ok, reason) in status.items():
        print(f"  {name:<7} {'yes' if ok else 'no ':<4} {reason}")
    try:
        from infovae_kernels import _build_info as b

        print(f"build: compiled against torch {b.TORCH_VERSION}; CPU variants {', '.join(b.CPU_VARIANTS)}"
              f"{f' (-march={b.CPU_ARCH})' if b.CPU_ARCH else ''}; CUDA kernels {'yes' if b.CUDA_KERNELS else 'no'}; "
              f"CPU kernels in use: {backends.cpu_capability() or 'none'}")
    except ImportError:
        print("build: no compiled extension")
    print("devices:")
    print(f"  cpu     {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"  cuda:{i}  {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
    else:
        print("  cuda    none visible")
    return 0


def _cmd_selftest(args) -> int:
    from infovae_kernels import backends, selftest

    try:
        backends.resolve(args.backend, torch.device(args.device))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    checks = selftest.run(args.backend, args.device)
    capability = backends.cpu_capability() if args.backend == "cpu" else None
    print(f"selftest of backend {args.backend}{f' ({capability} CPU kernels)' if capability else ''} against the "
          f"float64 torch backend")
    print(selftest.report(checks))
    if args.json:
        write_json_atomic(args.json, dict(backend=args.backend, device=args.device, cpu_capability=capability,
                                          checks=[dict(name=c.name, error=c.error, allowed=c.allowed, ok=c.ok)
                                                  for c in checks]))
    return 0 if all(c.ok for c in checks) else 1


def _cmd_drift(args) -> int:
    from infovae_kernels import drift

    ref, x = load_points(args.ref), load_points(args.x)
    if ref.shape[1] != x.shape[1]:
        raise InputError(f"{args.x} has {x.shape[1]} features but {args.ref} has {ref.shape[1]}")
    ref, x = (torch.from_numpy(np.array(a, dtype=np.float32)) for a in (ref, x))  # one dtype for both, writable
    if args.json:
        json_target(args.json)
    if args.plot and not args.online:
        raise InputError("--plot draws the online statistic against its thresholds: give --online")
    sigma = None if args.sigma is None else _parse_sigma(args.sigma)
    try:
        if args.online:
            det = drift.MMDDriftOnline(ref, ert=args.ert, window_size=args.window, kernel=args.kernel, sigma=sigma,
                                       n_bootstraps=args.bootstraps, seed=args.seed, device=args.device,
                                       progress=False if args.quiet else None)
            out = _online_stream(det, x, quiet=args.quiet)
            first = out["first_detection"]
            print(f"online MMD drift, ert {args.ert:g}, window {args.window}: "
                  f"{'drift first detected at t = ' + str(first) if first else 'no drift detected'} "
                  f"({out['n_detections']} detections in {x.shape[0]} instances)")
            if args.plot:
                _plot_online(args.plot, out, det)
        else:
            det = drift.MMDDrift(ref, p_val=args.p_val, kernel=args.kernel, sigma=sigma,
                                 n_permutations=args.permutations, seed=args.seed, device=args.device)
            out = det.predict(x, progress=False if args.quiet else None).to_dict()
            print(f"MMD drift: {'DRIFT' if out['is_drift'] else 'no drift'} at level {args.p_val:g}: unbiased MMD^2 "
                  f"{out['distance']:.6g} (drift above {out['distance_threshold']:.6g}), p-value {out['p_val']:.4g} "
                  f"({args.permutations} permutations)")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.json:
        from infovae_kernels import __version__

        write_json_atomic(args.json, dict(out, ref=args.ref, x=args.x, online=args.online, kernel=args.kernel,
                                          sigma=det.sigma, version=__version__))
    return 0


def _online_stream(det, x: torch.Tensor, quiet: bool) -> dict:
    from infovae_kernels.scale.planning import progress_bar

    stats, detections = [], []
    bar = progress_bar(False if quiet else None, x.shape[0])
    for t, row in enumerate(x, start=1):
        r = det.predict(row)
        stats.append(r.test_stat)
        if r.is_drift:
            detections.append(t)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    thresholds = [float(v) for v in det.thresholds]
    return dict(ert=det.ert, window=det.window_size, test_stats=stats, thresholds=thresholds,
                detections=detections, n_detections=len(detections),
                first_detection=detections[0] if detections else None)


def _plot_online(path: str, out: dict, det) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install matplotlib (it comes with the [model] extra)") from None
    stats, thr = out["test_stats"], out["thresholds"]
    t = np.arange(1, len(stats) + 1)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(t, stats, lw=0.8, label="test statistic (unbiased MMD$^2$ of the window)")
    ax.plot(t, [thr[min(i, len(thr) - 1)] for i in t], color="C3", lw=1.0, label="threshold")
    if out["first_detection"]:
        ax.axvline(out["first_detection"], color="k", ls="--", lw=0.8,
                   label=f"first detection, t = {out['first_detection']}")
    ax.set_xlabel("t (instances)")
    ax.set_title(f"online MMD drift: ert {out['ert']:g}, window {out['window']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, target)


def _bench_script() -> Optional[Path]:
    p = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scale.py"
    return p if p.is_file() else None


def _builtin_ladder(args) -> int:
    import time

    import infovae_kernels as ik

    sizes = (500, 1000) if args.quick else (1000, 4000, 16000)
    print("| n per set | d | backend | seconds | kernel pairs/s |\n|---|---|---|---|---|")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(n, 64, generator=g), torch.randn(n, 64, generator=g)
        t0 = time.perf_counter()
        info: dict = {}
        ik.mmd_full(x, y, sigma=1.0, backend=args.backend, progress=False, report=info)
        secs = time.perf_counter() - t0
        print(f"| {n} | 64 | {info['backend']} | {secs:.3f} | {3 * n * n / secs:.3g} |")
    return 0


def _cmd_bench(args, rest: Sequence[str]) -> int:
    script = _bench_script()
    if script is None or args.builtin:
        return _builtin_ladder(args)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scale", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = (["--quick"] if args.quick else []) + ["--backend", args.backend]
    if args.out:
        argv += ["--out", args.out]
    return int(mod.main(argv + list(rest)) or 0)


# ---------------------------------------------------------------------------------------------- main

def _compute_options(p: argparse.ArgumentParser) -> None:
    """Where and how a two-file command computes, and what it writes."""
    p.add_argument("--backend", default="auto", help="auto, triton, cuda, cpu or torch")
    p.add_argument("--device", default=None, help="where tiles are reduced, e.g. cpu, cuda, cuda:1")
    p.add_argument("--max-memory", default="1GiB", help="working-set bound, e.g. 2GB, 512MiB (sets block size)")
    p.add_argument("--block-size", type=int, default=None, help="rows per block (overrides --max-memory)")
    p.add_argument("--dtype", choices=["auto", "float32", "float64"], default="auto",
                   help="auto: float32 when both files are float32, else float64")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the result as JSON (atomically)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="infovae-kernels", description="Full-dataset kernel two-sample tools.")
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mmd", help="exact MMD^2 between two data files, optionally with a permutation p-value")
    m.add_argument("x", help=".npy, .pt or .csv file, shape (n, d)")
    m.add_argument("y", help=".npy, .pt or .csv file, shape (m, d)")
    m.add_argument("--kernel", choices=list(KERNELS), default="rbf")
    m.add_argument("--sigma", default=None, help="rbf, imq, laplacian: a float (default 1.0), a comma-separated "
                                                 "list (multi-scale), or 'median'")
    m.add_argument("--estimator", choices=["biased", "unbiased"], default="biased")
    m.add_argument("--permutations", type=int, default=0, help="permutation test with this many permutations")
    m.add_argument("--seed", type=int, default=0, help="seed of the permutations")
    _compute_options(m)
    k = sub.add_parser("kid", help="exact Kernel Inception Distance between two feature files, with its standard error")
    k.add_argument("x", help=".npy, .pt or .csv file of features, shape (n, d)")
    k.add_argument("y", help=".npy, .pt or .csv file of features, shape (m, d)")
    k.add_argument("--degree", type=int, default=3)
    k.add_argument("--gamma", type=float, default=None, help="default 1/d")
    k.add_argument("--coef", type=float, default=1.0)
    _compute_options(k)
    sub.add_parser("info", help="list backends, the build and devices")
    t = sub.add_parser("selftest", help="check a compiled backend against the float64 reference (every kernel, "
                                        "estimator, float32/float64, values and gradients)")
    t.add_argument("--backend", default="cpu", choices=["cpu", "cuda", "triton"])
    t.add_argument("--device", default="cpu")
    t.add_argument("--json", default=None, metavar="OUT.json", help="also write every check as JSON (atomically)")
    dr = sub.add_parser("drift", help="has X drifted from the reference REF? the offline permutation test, or "
                                      "--online: X as a stream against ERT-calibrated thresholds")
    dr.add_argument("ref", help="reference data: .npy, .pt or .csv, shape (n, d)")
    dr.add_argument("x", help="data to test (offline) or the stream, one row per instance (--online)")
    dr.add_argument("--kernel", choices=list(KERNELS), default="rbf")
    dr.add_argument("--sigma", default=None, help="bandwidth: a float, a comma-separated list or 'median' "
                                                   "(default: the median distance of REF)")
    dr.add_argument("--p-val", type=float, default=0.05, help="level of the offline test")
    dr.add_argument("--permutations", type=int, default=100)
    dr.add_argument("--seed", type=int, default=0)
    dr.add_argument("--online", action="store_true", help="sequential detector (Cobb et al. 2022)")
    dr.add_argument("--ert", type=float, default=500.0, help="--online: expected run time without drift")
    dr.add_argument("--window", type=int, default=20, help="--online: window size")
    dr.add_argument("--bootstraps", type=int, default=None, help="--online: calibration streams (default: enough "
                                                                  "for about 10 ert survivors)")
    dr.add_argument("--device", default=None)
    dr.add_argument("--json", default=None, metavar="OUT.json", help="write the result as JSON (atomically)")
    dr.add_argument("--plot", default=None, metavar="P.png", help="--online: the statistic against its thresholds")
    dr.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    ks = sub.add_parser("ksd", help="kernel Stein discrepancy of SAMPLES against the density whose scores "
                                    "(grad log p) at those samples are SCORES; --test: goodness-of-fit p-value")
    ks.add_argument("samples", help=".npy, .pt or .csv file, shape (n, d)")
    ks.add_argument("scores", help="grad log p at each sample, same shape")
    ks.add_argument("--kernel", choices=["imq", "rbf"], default="imq",
                    help="base of the Stein kernel (imq: Gorham & Mackey's (c^2 + r2/sigma^2)^beta)")
    ks.add_argument("--sigma", default=None, help="a float (default 1.0), a comma-separated list or 'median'")
    ks.add_argument("--beta", type=float, default=-0.5, help="imq exponent in (-1, 0)")
    ks.add_argument("--c", type=float, default=1.0, help="imq constant > 0")
    ks.add_argument("--estimator", choices=["biased", "unbiased"], default="unbiased")
    ks.add_argument("--test", action="store_true", help="wild-bootstrap goodness-of-fit p-value")
    ks.add_argument("--n-bootstrap", type=int, default=1000)
    ks.add_argument("--seed", type=int, default=0)
    ks.add_argument("--dtype", choices=["auto", "float32", "float64"], default="auto",
                    help="auto: float32 when both files are float32, else float64")
    ks.add_argument("--json", default=None, metavar="OUT.json", help="also write the result as JSON (atomically)")
    ks.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b = sub.add_parser("bench", help="run the scale benchmark ladder (benchmarks/bench_scale.py)")
    b.add_argument("--quick", action="store_true", help="small sizes only")
    b.add_argument("--backend", default="auto")
    b.add_argument("--out", default=None, help="directory for CSV/PNG results")
    b.add_argument("--builtin", action="store_true", help="the small built-in ladder, even in a checkout")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = build_parser()
    args, rest = ap.parse_known_args(argv)
    if rest and args.command != "bench":
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.command == "mmd":
            if args.permutations < 0:
                raise InputError("--permutations must be >= 0")
            return _cmd_mmd(args)
        if args.command == "kid":
            return _cmd_kid(args)
        if args.command == "info":
            return _cmd_info(args)
        if args.command == "selftest":
            return _cmd_selftest(args)
        if args.command == "drift":
            return _cmd_drift(args)
        if args.command == "ksd":
            return _cmd_ksd(args)
        return _cmd_bench(args, rest)
    except InputError as exc:
        print(f"infovae-kernels: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninfovae-kernels: interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_torchrun()


if __name__ == "__main__":
    sys.exit(main())
