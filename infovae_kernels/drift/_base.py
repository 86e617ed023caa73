"""What the drift detectors share: data as features, their checks, results with alibi-detect's field names,
and saving a detector to one file.

Data (x_ref and x) may be a tensor, a numpy array (np.load(path, mmap_mode="r") included) or chunks (a
re-iterable of (rows, ...) tensors or arrays, or a callable returning a fresh iterator of them). Without a
preprocess_fn the rows are the features (2-D); with one, rows of any shape go through it in batches under
torch.no_grad() on the detector's device, and what comes back, (rows, d) per batch, are the features.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor

from infovae_kernels.scale.sources import Chunk, Data

Preprocess = Callable[[Tensor], Tensor]
FORMAT = "infovae-kernels drift detector"
FORMAT_VERSION = 1
BATCH_SIZE = 1024

def _as_tensor(block: Chunk, name: str) -> Tensor:
    if isinstance(block, Tensor):
        return block
    if isinstance(block, np.ndarray):
        if not block.flags.writeable:  # a read-only memory map: copy the batch (torch wants writable memory)
            block = np.array(block)
        try:
            return torch.from_numpy(np.ascontiguousarray(block))
        except TypeError:
            raise TypeError(f"{name} has numpy dtype {block.dtype}, which torch cannot hold") from None
    raise TypeError(f"{name} must be a tensor, a numpy array or chunks of them, got a chunk of type "
                    f"{type(block).__name__}")


def _blocks(data: Data, name: str, batch_size: int) -> Iterator[Tensor]:
    """The rows of `data` in order, in blocks of at most batch_size rows (chunks are not merged)."""
    if isinstance(data, (Tensor, np.ndarray)):
        if data.ndim < 1:
            raise ValueError(f"{name} must have a row dimension, got a 0-dim {type(data).__name__}")
        for s in range(0, data.shape[0], batch_size):
            yield _as_tensor(data[s:s + batch_size], name)
        return
    if callable(data):
        chunks: Iterable = data()
    elif isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        if iter(data) is data:
            raise TypeError(f"{name} is a one-shot iterator; pass a list of chunks or a callable returning a fresh "
                            "iterator")
        chunks = data
    else:
        raise TypeError(f"{name} must be a tensor, a numpy array or chunks of them, got {type(data).__name__}")
    for chunk in chunks:
        t = _as_tensor(chunk, name)
        if t.ndim < 1:
            raise ValueError(f"{name}: every chunk needs a row dimension, got a 0-dim chunk")
        for s in range(0, t.shape[0], batch_size):
            yield t[s:s + batch_size]


def _check_rows(block: Tensor, name: str, offset: int, what: str = "") -> None:
    if not block.is_floating_point():
        raise TypeError(f"{name}{what} must be floating point, got {block.dtype}")
    bad = ~torch.isfinite(block.reshape(block.shape[0], -1)).all(1)
    if bool(bad.any()):
        raise ValueError(f"{name}{what} contains NaN or Inf at row {offset + int(bad.nonzero()[0, 0])}")


def features(data: Data, *, name: str, preprocess_fn: Optional[Preprocess] = None,
             device: Optional[torch.device] = None, batch_size: int = BATCH_SIZE) -> Tensor:
    """(n, d) features of `data` on `device` (the CPU if None): the rows themselves (2-D, floating) or
    preprocess_fn of them, batch by batch under torch.no_grad(). ValueError / TypeError naming `name` for
    anything else: no rows, NaN/Inf (with the row), rows that are not 2-D without a preprocess_fn, a
    preprocess_fn that raises or returns something other than (batch rows, d) floats."""
    device = torch.device("cpu") if device is None else torch.device(device)
    out: list[Tensor] = []
    pos = 0
    for block in _blocks(data, name, batch_size):
        rows = block.shape[0]
        if rows == 0:
            continue
        if preprocess_fn is None:
            if block.ndim != 2:
                raise ValueError(f"{name} must be 2-D (rows, features) without a preprocess_fn, got rows of shape "
                                 f"{tuple(block.shape[1:])}")
            _check_rows(block, name, pos)
            feats = block.to(device)
        else:
            if block.is_floating_point():  # integer rows (images as uint8) are the preprocess_fn's business
                _check_rows(block, name, pos)
            try:
                with torch.no_grad():
                    feats = preprocess_fn(block.to(device))
            except Exception as exc:
                raise ValueError(f"preprocess_fn failed on rows {pos}:{pos + rows} of {name}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if isinstance(feats, np.ndarray):
                feats = torch.from_numpy(feats)
            if not isinstance(feats, Tensor):
                raise TypeError(f"preprocess_fn must return a tensor or a numpy array, got {type(feats).__name__} "
                                f"for rows {pos}:{pos + rows} of {name}")
            if feats.ndim != 2 or feats.shape[0] != rows:
                raise ValueError(f"preprocess_fn must return ({rows}, d) features for {rows} rows of {name}, got "
                                 f"shape {tuple(feats.shape)}")
            _check_rows(feats, name, pos, what=" after preprocess_fn")
            feats = feats.detach().to(device)
        out.append(feats)
        pos += rows
    if not out:
        raise ValueError(f"{name} has no rows")
    if len({(f.shape[1], f.dtype) for f in out}) > 1:
        raise ValueError(f"{name}: its chunks give features of different widths or dtypes: "
                         f"{sorted({(f.shape[1], str(f.dtype)) for f in out})}")
    return out[0] if len(out) == 1 else torch.cat(out)


def check_like(x: Tensor, ref: Tensor, name: str = "x") -> None:
    """x's features must have x_ref's width and dtype (after preprocessing)."""
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"{name} has {x.shape[1]} features but x_ref has {ref.shape[1]} (after preprocessing)")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} is {x.dtype} but x_ref is {ref.dtype} (after preprocessing); convert with "
                        f".to({ref.dtype})")


def p_value_level(p_val: float) -> float:
    if isinstance(p_val, bool) or not isinstance(p_val, (int, float)) or not 0.0 < float(p_val) < 1.0:
        raise ValueError(f"p_val must be a float in (0, 1), got {p_val!r}")
    return float(p_val)


# ------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DriftResult:
    """One offline test. is_drift: p_val < threshold; p_val: the permutation p-value; threshold: the
    level; distance: the squared MMD; distance_threshold: the (1 - threshold) quantile of the permutation
    statistics (a distance above it is drift at this level)."""

    is_drift: bool
    p_val: Optional[float]
    threshold: float
    distance: Optional[float]
    distance_threshold: Optional[float]

    def to_dict(self) -> dict[str, Any]:
        """alibi-detect's `data` keys (is_drift as 0 / 1)."""
        out = asdict(self)
        out["is_drift"] = int(self.is_drift)
        return out


@dataclass(frozen=True)
class OnlineDriftResult:
    """One step of an online detector: is_drift (test_stat > threshold), time (steps since the last reset),
    ert, the statistic and the threshold in force at this step."""

    is_drift: bool
    time: int
    ert: float
    test_stat: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        """alibi-detect's `data` keys (distance and p_val are None for online detectors, as there)."""
        return {"is_drift": int(self.is_drift), "distance": None, "p_val": None, "threshold": self.threshold,
                "time": self.time, "ert": self.ert, "test_stat": self.test_stat}


# ------------------------------------------------------------------------------------------- saving
class Detector:
    """Base of the detectors: save(path) writes one file atomically; infovae_kernels.drift.load reads it.

    A subclass returns its constructor configuration and its state (plain Python values and tensors only,
    so the file loads with torch.load(weights_only=True)) from _payload(), and rebuilds itself from them in
    _restore(config, state, **objects) (objects: what a file cannot hold, such as a preprocess_fn)."""

    def _payload(self) -> tuple[dict[str, Any], dict[str, Any]]:
        raise NotImplementedError

    @classmethod
    def _restore(cls, config: dict[str, Any], state: dict[str, Any], **objects: Any) -> "Detector":
        raise NotImplementedError

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Write the detector to `path` atomically (a temporary file in the same folder, then a rename): a
        crash never leaves a half-written file where a good one was."""
        from infovae_kernels import __version__

        config, state = self._payload()
        payload = {"format": FORMAT, "version": FORMAT_VERSION, "detector": type(self).__name__,
                   "package_version": __version__, "config": config, "state": state}
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(payload, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: load() rebuilds detectors of this class."""
    _REGISTRY[cls.__name__] = cls
    return cls


def load(path: Union[str, os.PathLike], **objects: Any) -> Detector:
    """The detector saved at `path`. objects: what the file cannot hold and the detector needs, e.g.
    preprocess_fn= when it was saved with one, kernel= for a learned kernel with a projection; the error
    says which. A damaged or foreign file is a ValueError (the file is read with weights_only=True: it
    cannot run code)."""
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{os.fspath(path)} is not a readable drift detector file ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)} is not an infovae-kernels drift detector file")
    if payload.get("version") != FORMAT_VERSION:
        raise ValueError(f"{os.fspath(path)} has format version {payload.get('version')!r}; this infovae-kernels reads "
                         f"version {FORMAT_VERSION}")
    cls = _REGISTRY.get(payload.get("detector"))
    if cls is None or not isinstance(payload.get("config"), dict) or not isinstance(payload.get("state"), dict):
        raise ValueError(f"{os.fspath(path)} holds an unknown or damaged detector ({payload.get('detector')!r})")
    try:
        return cls._restore(payload["config"], payload["state"], **objects)
    except (KeyError, IndexError, RuntimeError) as exc:
        raise ValueError(f"{os.fspath(path)} holds a damaged {cls.__name__} ({type(exc).__name__}: {exc})") from None
