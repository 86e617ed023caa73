"""Training loop: Adam, stochastic binarisation re-sampled each batch, a tqdm bar with the loss terms
and examples/s, atomic checkpoints (tmp file + os.replace) at every epoch end and on Ctrl-C, exact
resume (model, optimiser, position in the epoch and every RNG state are saved), and a NaN guard.

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
from typing import Callable, Optional, Union

import numpy as np
import torch

from infovae.data import Dataset, load_data
from infovae.model import InfoVAE

CHECKPOINT = "checkpoint.pt"
TERMS = ("loss", "recon", "kl", "div", "disc")


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


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
    return dict(torch=torch.get_rng_state(), data=gen.get_state(), numpy=np.random.get_state(), python=random.getstate())


def _set_rng_state(gen: torch.Generator, s: dict) -> None:
    torch.set_rng_state(s["torch"])
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
    return torch.load(path, map_location="cpu", weights_only=False)


def load_run(run_dir: str) -> tuple[InfoVAE, Dataset, dict]:
    """(model with the checkpoint's weights, its data set, the checkpoint) of a run folder."""
    ck = load_checkpoint(run_dir)
    model = InfoVAE.from_config(ck["model_config"])
    model.load_state_dict(ck["model"])
    model.eval()
    t = ck["train_config"]
    data = load_data(t["data"], data_dir=t.get("data_dir"), n_train=t.get("n_train"))
    return model, data, ck


def train(model: InfoVAE, data: Union[Dataset, str] = "mnist5k", *, epochs: int = 10, batch_size: int = 128,
          lr: float = 1e-3, seed: int = 0, out: Optional[str] = None, resume: bool = False, progress: bool = True,
          callback: Optional[Callable[[int, dict], Optional[bool]]] = None, data_dir: Optional[str] = None,
          n_train: Optional[int] = None, desc: Optional[str] = None) -> dict:
    """Train `model` on `data` (a Dataset or a name) for `epochs` epochs; returns the history
    {"steps": [{step, epoch, loss, recon, kl, div, disc}, ...], "epochs": [per-epoch means], "stopped": bool}.

    out: a run folder for config.json, history.json and checkpoint.pt (written atomically at each epoch
    end and when stopped by Ctrl-C or a callback returning True); resume=True continues the run in out
    exactly where its checkpoint left it. A NaN/inf loss or gradient raises TrainingDiverged and leaves
    the last good checkpoint in place.
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

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"steps": [], "epochs": [], "stopped": False}
    epoch, pos, perm, step = 0, 0, None, 0
    train_config = dict(data=data_name, data_dir=data_dir, n_train=n_train, epochs=epochs, batch_size=batch_size,
                        lr=lr, seed=seed)
    ck_path = None if out is None else os.path.join(out, CHECKPOINT)
    if resume:
        ck = load_checkpoint(out)
        if ck["model_config"] != model.config:
            raise ValueError(f"the model does not match the checkpoint in {out!r} "
                             f"(checkpoint {ck['model_config']}, model {model.config})")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        epoch, pos, perm, step, history = ck["epoch"], ck["pos"], ck["perm"], ck["step"], ck["history"]
        history["stopped"] = False
        train_config = dict(ck["train_config"], epochs=epochs)
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

    def save(stopped: bool):
        if out is None:
            return
        state = dict(model_config=model.config, train_config=train_config, model=model.state_dict(),
                     optimizer=opt.state_dict(), epoch=epoch, pos=pos, perm=perm, step=step, history=history,
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
                terms = model(x)
                vals = {k: float(terms[k].detach()) for k in TERMS}
                bad = [k for k, v in vals.items() if not math.isfinite(v)]
                if not bad:
                    opt.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                    if not all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None):
                        bad = ["gradient"]
                if bad:
                    if bar is not None:
                        bar.close()
                    where = (f"the last good checkpoint (end of epoch {epoch}) is kept in {ck_path}"
                             if ck_path and os.path.exists(ck_path) else "no checkpoint was written")
                    raise TrainingDiverged(
                        f"training diverged: {', '.join(bad)} became NaN/inf at epoch {epoch + 1}, step {step + 1} "
                        f"(terms: {', '.join(f'{k}={v:.4g}' for k, v in vals.items())}); stopped, {where}. "
                        f"Try a smaller --lr or a smaller lambda.")
                opt.step()
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
