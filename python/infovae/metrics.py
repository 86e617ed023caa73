"""Metrics of a trained model (`infovae eval`), all on the held-out test set unless said otherwise.

- mmd: squared MMD (unbiased) between one z ~ q(z|x) per test example and as many draws of p(z),
  over the WHOLE test set at once (full batch, not mini-batches), rbf kernel with sigma = sqrt(latent).
- logdet_cov_train / logdet_cov_test: log det Cov[q(z)] / latent, the covariance of z ~ q(z|x) over the
  set (0 for q(z) = p(z) = N(0, I); far below 0 when q(z) collapses or is too narrow).
- nll: importance-sampled negative log-likelihood in nats, -log mean_k exp(log p(x|z_k) + log p(z_k)
  - log q(z_k|x)) with K samples z_k ~ q(z|x) (the IWAE bound; exact for K -> inf), averaged over
  `n_iwae` test examples (binarised once with a fixed seed for Bernoulli data).
- mi: mutual information I(x; z) under q(x, z) = p_data(x) q(z|x): mean over test x of
  log q(z|x) - log q(z), with q(z) = (1/N) sum_j q(z|x_j) over the N test examples (bounded by log N).
- acc_100 / acc_1000: test accuracy of an SVM (scikit-learn SVC, rbf) on the posterior means, trained
  with 100 / 1000 labelled training examples (seeded random pick).
- class_ce: cross-entropy from the uniform class distribution to the mean predicted class distribution
  of generated samples, judged by a small MLP classifier the package trains on the training images
  (minimum log(classes): every class generated equally often). class_acc_test: that classifier's test
  accuracy, to judge the judge.
- recon_test / kl_test: the loss terms on the test set.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import infovae_kernels as ik

from infovae.data import Dataset
from infovae.model import InfoVAE

LOG2PI = math.log(2 * math.pi)


def _log_normal(z, mu, logvar):
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + LOG2PI).sum(-1)


def _binarised(model: InfoVAE, x: torch.Tensor, seed: int) -> torch.Tensor:
    if model.likelihood != "bernoulli":
        return x
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def encode_all(model: InfoVAE, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    mus, lvs = [], []
    for i in range(0, x.shape[0], batch):
        mu, lv = model.encode(x[i:i + batch])
        mus.append(mu)
        lvs.append(lv)
    return torch.cat(mus), torch.cat(lvs)


def full_mmd(z: torch.Tensor, prior: torch.Tensor, sigma: float, backend: str = "auto") -> tuple[float, str]:
    """Unbiased squared MMD over the whole sets; infovae_kernels.scale.mmd_full when installed, else
    ik.mmd on the whole set at once (the same number; it fits in memory for these sizes)."""
    try:
        from infovae_kernels.scale import mmd_full
    except ImportError:
        return float(ik.mmd(z, prior, kernel="rbf", sigma=sigma, estimator="unbiased", backend=backend)), "ik.mmd"
    return float(mmd_full(z, prior, kernel="rbf", sigma=sigma, estimator="unbiased", backend=backend)), "mmd_full"


def logdet_cov_per_dim(z: torch.Tensor) -> float:
    c = np.cov(z.double().numpy(), rowvar=False).reshape(z.shape[1], z.shape[1])
    sign, logdet = np.linalg.slogdet(c)
    return float(logdet / z.shape[1]) if sign > 0 else float("-inf")


@torch.no_grad()
def iwae_log_likelihood(model: InfoVAE, x: torch.Tensor, k: int = 100, batch: int = 2000) -> torch.Tensor:
    """log p(x) per example (N,), estimated with K importance samples from q(z|x), in nats."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    out = []
    per = max(1, batch // k)
    for i in range(0, x.shape[0], per):
        xb = x[i:i + per]
        n = xb.shape[0]
        mu, lv = model.encode(xb)
        eps = torch.randn(k, n, mu.shape[1], dtype=mu.dtype)
        z = mu + eps * (0.5 * lv).exp()  # (k, n, d)
        xr = xb.unsqueeze(0).expand(k, *xb.shape).reshape(k * n, *xb.shape[1:])
        lpx = model.log_px_given_z(xr, z.reshape(k * n, -1)).view(k, n)
        logw = lpx + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - _log_normal(z, mu, lv)
        out.append(torch.logsumexp(logw, 0) - math.log(k))
    return torch.cat(out)


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, chunk: int = 256) -> float:
    """I(x; z) = E log q(z|x) - log q(z) with q(z) the mixture of the N posteriors, one z per x."""
    mu, logvar = mu.double(), logvar.double()
    n = mu.shape[0]
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    own = _log_normal(z, mu, logvar)
    agg = []
    for i in range(0, n, chunk):
        zi = z[i:i + chunk, None, :]
        agg.append(torch.logsumexp(_log_normal(zi, mu[None], logvar[None]), 1) - math.log(n))
    return float((own - torch.cat(agg)).mean())


def semi_supervised_accuracy(f_train, y_train, f_test, y_test, labels: int, seed: int = 0) -> float:
    from sklearn.svm import SVC

    rs = np.random.RandomState(seed)
    idx = rs.permutation(len(f_train))[:labels]
    if len(np.unique(y_train[idx])) < 2:
        return float("nan")
    clf = SVC().fit(f_train[idx], y_train[idx])
    return float((clf.predict(f_test) == y_test).mean())


_CLASSIFIERS: dict = {}


def class_judge(data: Dataset, seed: int = 0, epochs: int = 5):
    """A small MLP classifier (784-256-10 for MNIST) trained on the stochastically binarised training
    images, cached per data set; returns (model, its test accuracy)."""
    key = (data.name, tuple(data.x_train.shape), seed)
    if key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    g = torch.Generator().manual_seed(seed)
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    d = int(np.prod(data.shape))
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(d, 256), torch.nn.ReLU(),
                              torch.nn.Linear(256, data.num_classes))
    torch.set_rng_state(rng_state)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = data.x_train, data.y_train
    with torch.enable_grad():
        _fit(net, opt, x, y, data, g, epochs)
    net.eval()
    with torch.no_grad():
        acc = float((net(data.x_test).argmax(1) == data.y_test).float().mean())
    _CLASSIFIERS[key] = (net, acc)
    return net, acc


def _fit(net, opt, x, y, data, g, epochs):
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 100):
            idx = perm[i:i + 100]
            xb = torch.bernoulli(x[idx], generator=g) if data.likelihood == "bernoulli" else x[idx]
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


@torch.no_grad()
def evaluate(model: InfoVAE, data: Dataset, *, iwae_k: int = 100, n_iwae: Optional[int] = 500, n_samples: int = 1000,
             n_samples_autoregressive: int = 100, seed: int = 0, backend: str = "auto") -> dict:
    """All the metrics in the module docstring, as a dict of floats (JSON-ready)."""
    if not isinstance(model, InfoVAE):
        raise TypeError(f"model must be an InfoVAE, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset, got {type(data).__name__}")
    model.eval()
    rng_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        xte = _binarised(model, data.x_test, seed)
        xtr = _binarised(model, data.x_train, seed + 1)
        mu_te, lv_te = encode_all(model, xte)
        mu_tr, lv_tr = encode_all(model, xtr)
        z_te = mu_te + torch.randn_like(mu_te) * (0.5 * lv_te).exp()
        z_tr = mu_tr + torch.randn_like(mu_tr) * (0.5 * lv_tr).exp()
        prior = torch.randn_like(z_te)
        m = {}
        m["mmd"], m["mmd_impl"] = full_mmd(z_te, prior, math.sqrt(model.latent), backend)
        m["mmd_train"], _ = full_mmd(z_tr, torch.randn_like(z_tr), math.sqrt(model.latent), backend)
        m["logdet_cov_train"] = logdet_cov_per_dim(z_tr)
        m["logdet_cov_test"] = logdet_cov_per_dim(z_te)
        terms = [model(xte[i:i + 500]) for i in range(0, len(xte), 500)]
        w = [min(500, len(xte) - i) for i in range(0, len(xte), 500)]
        m["recon_test"] = float(sum(float(t["recon"]) * wi for t, wi in zip(terms, w)) / sum(w))
        m["kl_test"] = float(sum(float(t["kl"]) * wi for t, wi in zip(terms, w)) / sum(w))
        nx = xte if n_iwae is None else xte[:n_iwae]
        m["nll"] = float(-iwae_log_likelihood(model, nx, iwae_k).mean())
        m["iwae_k"], m["n_iwae"] = iwae_k, int(nx.shape[0])
        m["mi"] = mutual_information(mu_te, lv_te)
        ytr, yte = data.y_train.numpy(), data.y_test.numpy()
        for labels in (100, 1000):
            m[f"acc_{labels}"] = semi_supervised_accuracy(mu_tr.numpy(), ytr, mu_te.numpy(), yte, min(labels, len(ytr)), seed)
        m["chance_acc"] = float(np.bincount(yte).max() / len(yte))
        if len(data.shape) == 3:
            net, acc = class_judge(data, seed)
            ns = n_samples_autoregressive if getattr(model.decoder, "autoregressive", False) else n_samples
            samples = model.sample(ns, generator=torch.Generator().manual_seed(seed))
            pbar = torch.softmax(net(samples), 1).mean(0).clamp_min(1e-12)
            m["class_ce"] = float(-(pbar.log()).mean())
            m["class_ce_min"] = math.log(data.num_classes)
            m["class_acc_test"], m["n_samples"] = acc, ns
        m["latent"], m["model"] = model.latent, model.config.get("name")
        return m
    finally:
        torch.set_rng_state(rng_state)
