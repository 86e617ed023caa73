"""Training loop: Adam, stochastic binarisation re-sampled each batch, a tqdm bar with the loss terms
and examples/s, atomic checkpoints (tmp file + os.replace) at every epoch end and on Ctrl-C, exact
resume (model, optimisers, position in the epoch, every RNG state and the thread count are saved),
and a divergence guard: a non-finite z, loss term or gradient raises TrainingDiverged naming the step,
before any kernel sees the bad values, and the last good checkpoint stays.

Devices: device "auto" (CUDA when torch sees a GPU, else CPU), "cpu", "cuda", "cuda:N" or a
torch.device. The model is moved there; each batch is drawn and binarised on the CPU (the same data on
every device), pinned and moved. On a CUDA device infovae_kernels' backend "auto" picks its GPU
kernels by itself. An adversarial model's critic has its own Adam (the authors' 2e-5, betas (0.5, 0.9)).

Randomness: one torch.Generator seeded with `seed` draws the epoch permutations and the binarisation;
the global torch RNG (seeded with `seed` at a fresh start) draws eps and the prior samples. Both states
are in the checkpoint, so a resumed run takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
import warnings
from typing import Callable, Optional, Union

import numpy as np
import torch

from infovae.data import Dataset, load_data
from infovae.model import InfoVAE, TrainingDiverged

CHECKPOINT = "checkpoint.pt"
TERMS = ("loss", "recon", "kl", "div", "disc")
#: files a run folder holds; `train --force` removes exactly these before a fresh run
RUN_FILES = ("config.json", "history.json", CHECKPOINT, "metrics.json", "latent.png", "qz_pz.png", "samples.png")
CRITIC_LR, CRITIC_BETAS = 2e-5, (0.5, 0.9)  # the InfoVAE authors' WGAN-GP critic optimiser


def resolve_device(device="auto") -> torch.device:
    """"auto" -> cuda when torch sees a GPU, else cpu; "cpu", "cuda", "cuda:N" or a torch.device.
    A CUDA device without a visible GPU is a ValueError that says so."""
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from exc
    else:
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device, got {type(device).__name__}")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {str(dev)!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(dev)!r} was asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(dev)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return dev


def check_backend(model: InfoVAE, dev: torch.device) -> None:
    """A backend named explicitly must run on the device (backend "auto" always does)."""
    if model.backend == "auto" or not model.div_weight or model.divergence == "adversarial":
        return
    import infovae_kernels as ik

    runnable = getattr(ik.backends, "runnable", None)
    if runnable is None:
        return
    names = list(runnable(dev))
    if model.backend not in names:
        raise ValueError(f"backend {model.backend!r} does not run on device {str(dev)!r} "
                         f"(runnable there: {', '.join(names) or 'none'}); use backend 'auto'")


def atomic_save(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_json(obj, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)


def _rng_state(gen: torch.Generator) -> dict:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return dict(torch=torch.get_rng_state(), cuda=cuda, data=gen.get_state(), numpy=np.random.get_state(),
                python=random.getstate())


def _set_rng_state(gen: torch.Generator, s: dict) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    gen.set_state(s["data"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


class _StopFlag:
    """Ctrl-C during training asks for a stop at the end of the current step (a second Ctrl-C aborts)."""

    def __init__(self):
        self.requested, self._old = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def load_checkpoint(run_dir: str) -> dict:
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run folder must be a path, got {type(run_dir).__name__}")
    path = os.path.join(run_dir, CHECKPOINT)
    if not os.path.isdir(run_dir):
        raise ValueError(f"run folder {str(run_dir)!r} does not exist (train one with `infovae train --out DIR`)")
    if not os.path.exists(path):
        raise ValueError(f"run folder {str(run_dir)!r} has no {CHECKPOINT} (train one with `infovae train --out DIR`)")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, random bytes, another program's pickle ...
        raise ValueError(f"checkpoint {path!r} is damaged or not an infovae checkpoint "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                         f"train again with --force, or restore the file") from None
    need = ("model_config", "train_config", "model", "optimizer", "epoch", "step")
    if not isinstance(ck, dict) or any(k not in ck for k in need):
        raise ValueError(f"checkpoint {path!r} is not an infovae checkpoint (missing "
                         f"{', '.join(k for k in need if not isinstance(ck, dict) or k not in ck)})")
    return ck


def load_run(run_dir: str, device="cpu") -> tuple[InfoVAE, Dataset, dict]:
    """(model with the checkpoint's weights on `device`, its data set, the checkpoint) of a run folder."""
    dev = resolve_device(device)
    ck = load_checkpoint(run_dir)
    model = InfoVAE.from_config(ck["model_config"])
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {os.path.join(run_dir, CHECKPOINT)!r} does not fit its own model config "
                         f"({str(exc).splitlines()[0]})") from None
    model.to(dev).eval()
    t = ck["train_config"]
    data = load_data(t["data"], data_dir=t.get("data_dir"), n_train=t.get("n_train"))
    return model, data, ck


def train(model: InfoVAE, data: Union[Dataset, str] = "mnist5k", *, epochs: int = 10, batch_size: int = 128,
          lr: float = 1e-3, seed: int = 0, out: Optional[str] = None, resume: bool = False, progress: bool = True,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, data_dir: Optional[str] = None,
          n_train: Optional[int] = None, desc: Optional[str] = None, device="auto", force: bool = False) -> dict:
    """Train `model` on `data` (a Dataset or a name) for `epochs` epochs; returns the history
    {"steps": [{step, epoch, loss, recon, kl, div, disc}, ...], "epochs": [per-epoch means], "stopped": bool}.

    out: a run folder for config.json, history.json and checkpoint.pt (written atomically at each epoch
    end and when stopped by Ctrl-C or a callback returning True); resume=True continues the run in out
    exactly where its checkpoint left it; out holding another run is refused unless resume or force
    (force removes that run's files, RUN_FILES, first). device: see resolve_device (the model is moved
    there). A NaN/inf z, loss term or gradient raises TrainingDiverged naming the step and leaves the
    last good checkpoint in place. The thread count is saved; resuming with another warns that the
    steps may differ in the last bits.
    """
    if not isinstance(model, InfoVAE):
        raise TypeError(f"model must be an InfoVAE, got {type(model).__name__}")
    if isinstance(data, str):
        data_name = data
        data = load_data(data, data_dir=data_dir, n_train=n_train)
    elif isinstance(data, Dataset):
        data_name = data.name
    else:
        raise TypeError(f"data must be a Dataset or a data set name, got {type(data).__name__}")
    for v, name in ((epochs, "epochs"), (batch_size, "batch_size")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be positive, got {lr!r}")
    if tuple(data.shape) != tuple(model.shape):
        raise ValueError(f"model shape {model.shape} does not match data {data.name!r} shape {data.shape}")
    if resume and out is None:
        raise ValueError("resume=True needs the run folder out")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, got {type(out).__name__}")
    if out is not None and not resume and os.path.isdir(out):
        held = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
        if held and not force:
            raise ValueError(f"run folder {str(out)!r} already holds a run ({', '.join(held)}); continue it with "
                             f"resume=True (--resume), or replace it with force=True (--force)")
        for f in held:
            os.remove(os.path.join(out, f))
    dev = resolve_device(device)
    check_backend(model, dev)
    model.to(dev)

    gen = torch.Generator().manual_seed(seed)
    critic = model.critic_parameters()
    opt = torch.optim.Adam(model.generator_parameters(), lr=lr)
    opt_c = torch.optim.Adam(critic, lr=CRITIC_LR, betas=CRITIC_BETAS) if critic else None
    history = {"steps": [], "epochs": [], "stopped": False}
    epoch, pos, perm, step = 0, 0, None, 0
    train_config = dict(data=data_name, data_dir=data_dir, n_train=n_train, epochs=epochs, batch_size=batch_size,
                        lr=lr, seed=seed, threads=torch.get_num_threads())
    ck_path = None if out is None else os.path.join(out, CHECKPOINT)
    if resume:
        ck = load_checkpoint(out)
        if ck["model_config"] != model.config:
            raise ValueError(f"the model does not match the checkpoint in {out!r} "
                             f"(checkpoint {ck['model_config']}, model {model.config})")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if opt_c is not None and ck.get("critic_optimizer") is not None:
            opt_c.load_state_dict(ck["critic_optimizer"])
        saved = ck["train_config"].get("threads")
        if saved is not None and saved != torch.get_num_threads():
            warnings.warn(f"resuming {str(out)!r} with {torch.get_num_threads()} torch threads; it was trained with "
                          f"{saved}: the steps may differ from an uninterrupted run in the last bits "
                          f"(pass --threads {saved} for a bitwise-exact resume)", RuntimeWarning, stacklevel=2)
        epoch, pos, perm, step, history = ck["epoch"], ck["pos"], ck["perm"], ck["step"], ck["history"]
        history["stopped"] = False
        train_config = dict(ck["train_config"], epochs=epochs, threads=torch.get_num_threads())
        batch_size = train_config["batch_size"]
        _set_rng_state(gen, ck["rng"])
    else:
        torch.manual_seed(seed)
        if out is not None:
            os.makedirs(out, exist_ok=True)
            atomic_json(dict(model=model.config, train=train_config), os.path.join(out, "config.json"))

    x_all = data.x_train
    n = x_all.shape[0]
    bs = min(batch_size, n)
    n_batches = n // bs  # drop the ragged last batch: every batch has bs examples
    binarize = model.likelihood == "bernoulli"
    pin = dev.type == "cuda"

    def save(stopped: bool):
        if out is None:
            return
        state = dict(model_config=model.config, train_config=train_config, model=model.state_dict(),
                     optimizer=opt.state_dict(), critic_optimizer=None if opt_c is None else opt_c.state_dict(), epoch=epoch, pos=pos, perm=perm, step=step, history=history,
                     rng=_rng_state(gen), stopped=stopped)
        atomic_save(state, ck_path)
        atomic_json(dict(epochs=history["epochs"], steps=history["steps"]), os.path.join(out, "history.json"))

    model.train()
    label = desc or model.config.get("name", "train")
    with _StopFlag() as flag:
        while epoch < epochs:
            if perm is None:
                perm = torch.randperm(n, generator=gen)
            bar = None
            if progress:
                from tqdm.auto import tqdm
                bar = tqdm(total=n_batches, initial=pos, desc=f"{label} {epoch + 1}/{epochs}", leave=False,
                           dynamic_ncols=True)
            count, t0 = 0, time.perf_counter()
            while pos < n_batches:
                x = x_all[perm[pos * bs:(pos + 1) * bs]]
                if binarize:
                    x = torch.bernoulli(x, generator=gen)
                if pin:
                    x = x.pin_memory().to(dev, non_blocking=True)
                elif x.device != dev:
                    x = x.to(dev)
                bad, vals = [], {}
                try:
                    terms = model(x)
                except TrainingDiverged:
                    bad = ["z"]
                if not bad:
                    vals = {k: float(terms[k].detach()) for k in TERMS}
                    bad = [k for k, v in vals.items() if not math.isfinite(v)]
                if not bad:
                    opt.zero_grad(set_to_none=True)
                    if opt_c is not None:
                        opt_c.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    grads = [p.grad for p in model.parameters() if p.grad is not None]
                    if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
                        bad = ["gradient"]
                if bad:
                    if bar is not None:
                        bar.close()
                    where = (f"the last good checkpoint (end of epoch {epoch}) is kept in {ck_path}"
                             if ck_path and os.path.exists(ck_path) else "no checkpoint was written")
                    raise TrainingDiverged(
                        f"training diverged: {', '.join(bad)} became NaN/inf at epoch {epoch + 1}, step {step + 1} "
                        f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in vals.items()) or 'not computed'}); "
                        f"stopped, {where}. Try a smaller --lr or a smaller lambda.")
                opt.step()
                if opt_c is not None:
                    opt_c.step()
                step += 1
                pos += 1
                count += 1
                history["steps"].append(dict(step=step, epoch=epoch + 1, **vals))
                if bar is not None:
                    rate = count * bs / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{vals['loss']:.2f}", recon=f"{vals['recon']:.2f}", kl=f"{vals['kl']:.2f}",
                                    div=f"{vals['div']:.3g}", ex_s=f"{rate:.0f}", refresh=False)
                    bar.update(1)
                if callback is not None and callback(step, vals):
                    flag.requested = True
                if flag.requested:
                    break
            if bar is not None:
                bar.close()
            if flag.requested:
                history["stopped"] = True
                save(stopped=True)
                return history
            rows = [r for r in history["steps"] if r["epoch"] == epoch + 1]
            elapsed = time.perf_counter() - t0
            history["epochs"].append(dict(epoch=epoch + 1, examples_per_s=count * bs / max(elapsed, 1e-9),
                                          **{k: sum(r[k] for r in rows) / max(len(rows), 1) for k in TERMS}))
            epoch, pos, perm = epoch + 1, 0, None
            save(stopped=False)
    model.eval()
    return history
