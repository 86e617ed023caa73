"""Metrics of a trained model (`infovae eval`), all on the held-out test set unless said otherwise.
Every probe that can be fooled is printed beside its floor.

- mmd / mmd_train: squared MMD (unbiased) between one z ~ q(z|x) per example and as many draws of p(z),
  over the WHOLE set at once (ik.mmd_full, not mini-batches), rbf kernel with sigma = sqrt(latent).
- ksd / ksd_p_value: squared kernel Stein discrepancy (unbiased, ik.ksd) of the test codes z ~ q(z|x)
  against p(z) = N(0, I) through its score -z: no prior draws, so no sampling noise from p; Stein kernel
  of the imq base (1 + r2 / sigma^2)^(-1/2) with sigma = sqrt(latent); and the p-value of the KSD
  goodness-of-fit test (ik.ksd_test, 500 wild-bootstrap draws): small when q(z) is not p(z).
- logdet_cov_total_train/test: log det Cov[q(z)] (z ~ q(z|x) over the set; 0 for q(z) = p(z), the
  authors' figure is this total), logdet_cov_train/test: the same / latent (per dimension).
- tail_fraction: share of test codes z ~ q(z|x) with |z|^2 beyond the 0.99 quantile of chi2(latent)
  (0.01 when q(z) = p(z); more means q(z) puts mass where p(z) has almost none).
- nll: importance-sampled negative log-likelihood in nats, -log mean_k w_k, w_k = p(x|z_k) p(z_k) /
  r(z_k|x) with K samples of the proposal r. proposal "defensive" (default): r = (1 - m) q(z|x) + m p(z),
  m = 0.5 (Hesterberg 1995): the weights are bounded by p(x|z) / m, so the estimate stays tight when
  q(z|x) is near-deterministic but p(x|z) barely depends on z; proposal "q": r = q(z|x) (the IWAE bound).
- mi: I(x; z) under q(x, z) = p_data(x) q(z|x), with q(z) the mixture of the N test posteriors; this
  estimator is capped at log N (mi_cap).
- acc_100 / acc_1000: the semi-supervised probe. One z ~ q(z|x) per image (SAMPLED, not the posterior
  mean: a model that ignores z scores chance), an RBF SVM on 100 / 1000 labelled training codes, its
  gamma chosen on a validation split of those labels (20%), then refit on all of them; test accuracy
  averaged over `draws` (>= 10) label draws (acc_*_sd: their spread). acc_floor_*: the same probe on an
  UNTRAINED encoder of the same architecture and seed (1000 labels): a trained model must beat it to
  claim z carries class information. chance_acc: the most frequent test class. acc_mean_1000: the probe
  on posterior means, 3 draws (the old metric, for comparison; it cannot see a model that ignores z).
- class_ce: KL(uniform || p_hat) in nats, p_hat the class frequencies (argmax counts, add-0.5
  smoothed) of n_samples generated images under a CNN judge trained once per data set and cached on
  disk (class_judge_acc: its test accuracy). 0 = every class generated equally often. class_ce_floor:
  the same statistic on n_samples real test images drawn with replacement (mean of 5 draws): what a
  perfect generator scores, sampling noise and the test set's own class imbalance included.
- recon_test / kl_test: the loss terms on the test set.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

import infovae_kernels as ik

from infovae.data import Dataset
from infovae.model import InfoVAE

LOG2PI = math.log(2 * math.pi)
PROPOSALS = ("defensive", "q")
GAMMA_FACTORS = (0.25, 1.0, 4.0)  # x sklearn's "scale" gamma 1 / (d var(X))


def _log_normal(z, mu, logvar):
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + LOG2PI).sum(-1)


def _binarised(model: InfoVAE, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Fixed-seed stochastic binarisation, drawn on the CPU (the same images on every device)."""
    if model.likelihood != "bernoulli":
        return x
    return torch.bernoulli(x.cpu(), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def encode_all(model: InfoVAE, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of q(z|x) for every row of x, computed on the model's device, returned on the CPU."""
    dev = model.device
    mus, lvs = [], []
    for i in range(0, x.shape[0], batch):
        mu, lv = model.encode(x[i:i + batch].to(dev))
        mus.append(mu.cpu())
        lvs.append(lv.cpu())
    return torch.cat(mus), torch.cat(lvs)


def sample_codes(mu: torch.Tensor, logvar: torch.Tensor, seed: int) -> torch.Tensor:
    """One z ~ q(z|x) per row, from a CPU generator seeded with `seed`."""
    g = torch.Generator().manual_seed(seed)
    return mu + torch.randn(mu.shape, generator=g, dtype=mu.dtype) * (0.5 * logvar).exp()


def full_mmd(z: torch.Tensor, prior: torch.Tensor, sigma: float, backend: str = "auto") -> tuple[float, str]:
    """Unbiased squared MMD over the whole sets (ik.mmd_full), rbf with bandwidth sigma."""
    return float(ik.mmd_full(z, prior, kernel="rbf", sigma=sigma, estimator="unbiased", backend=backend,
                             progress=False)), "mmd_full"


def prior_ksd(z: torch.Tensor, sigma: float, seed: int = 0) -> tuple[float, float]:
    """(KSD^2 of z against N(0, I), the wild-bootstrap p-value), unbiased, imq Stein kernel."""
    z = z.double()
    r = ik.ksd_test(z, -z, n_bootstrap=500, seed=seed, sigma=sigma, progress=False)
    return r.statistic, r.p_value


def logdet_cov(z: torch.Tensor) -> tuple[float, float]:
    """(log det Cov[z], the same / dim); -inf when the covariance is singular."""
    d = z.shape[1]
    c = np.cov(z.double().numpy(), rowvar=False).reshape(d, d)
    sign, logdet = np.linalg.slogdet(c)
    total = float(logdet) if sign > 0 else float("-inf")
    return total, total / d


def logdet_cov_per_dim(z: torch.Tensor) -> float:
    return logdet_cov(z)[1]


def tail_fraction(z: torch.Tensor, q: float = 0.99) -> float:
    """Share of rows with |z|^2 above the q quantile of chi2(dim) (1 - q under p(z) = N(0, I))."""
    from scipy.stats import chi2

    return float(((z.double() ** 2).sum(1) > chi2.ppf(q, z.shape[1])).double().mean())


@torch.no_grad()
def iwae_log_likelihood(model: InfoVAE, x: torch.Tensor, k: int = 100, batch: int = 2000,
                        proposal: str = "defensive", mix: float = 0.5) -> torch.Tensor:
    """log p(x) per example (N,), nats, from K importance samples of the proposal (module docstring).
    Computed on the model's device; returned on the CPU."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if proposal not in PROPOSALS:
        raise ValueError(f"unknown proposal {proposal!r}; choose one of {', '.join(PROPOSALS)}")
    if not 0 < mix < 1:
        raise ValueError(f"mix must be in (0, 1), got {mix!r}")
    dev = model.device
    out = []
    per = max(1, batch // k)
    for i in range(0, x.shape[0], per):
        xb = x[i:i + per].to(dev)
        n = xb.shape[0]
        mu, lv = model.encode(xb)
        eps = torch.randn(k, n, mu.shape[1], dtype=mu.dtype, device=dev)
        zq = mu + eps * (0.5 * lv).exp()  # (k, n, d)
        zero = torch.zeros_like(zq)
        if proposal == "q":
            z = zq
            log_r = _log_normal(z, mu, lv)
        else:
            from_prior = torch.rand(k, n, 1, device=dev) < mix
            z = torch.where(from_prior, torch.randn_like(zq), zq)
            log_r = torch.logaddexp(math.log(1 - mix) + _log_normal(z, mu, lv), math.log(mix) + _log_normal(z, zero, zero))
        xr = xb.unsqueeze(0).expand(k, *xb.shape).reshape(k * n, *xb.shape[1:])
        lpx = model.log_px_given_z(xr, z.reshape(k * n, -1)).view(k, n)
        logw = lpx + _log_normal(z, zero, zero) - log_r
        out.append((torch.logsumexp(logw, 0) - math.log(k)).cpu())
    return torch.cat(out)


@torch.no_grad()
def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, chunk: int = 256) -> float:
    """I(x; z) = E log q(z|x) - log q(z) with q(z) the mixture of the N posteriors, one z per x.
    At most log N: with N posteriors the mixture cannot resolve more."""
    mu, logvar = mu.double().cpu(), logvar.double().cpu()
    n = mu.shape[0]
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    own = _log_normal(z, mu, logvar)
    agg = []
    for i in range(0, n, chunk):
        zi = z[i:i + chunk, None, :]
        agg.append(torch.logsumexp(_log_normal(zi, mu[None], logvar[None]), 1) - math.log(n))
    return float((own - torch.cat(agg)).mean())


def probe_accuracy(f_train, y_train, f_test, y_test, labels: int, draws: int = 10, seed: int = 0,
                   val_fraction: float = 0.2) -> dict:
    """RBF-SVM accuracy with `labels` labelled training codes, gamma chosen on a validation split of
    them, averaged over `draws` label draws: {"mean", "sd", "gammas"}."""
    from sklearn.svm import SVC

    if isinstance(labels, bool) or not isinstance(labels, int) or labels < 2:
        raise ValueError(f"labels must be an integer >= 2, got {labels!r}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    f_train, f_test = np.asarray(f_train, dtype=np.float64), np.asarray(f_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    labels = min(labels, len(f_train))
    rs = np.random.RandomState(seed)
    accs, gammas = [], []
    for _ in range(draws):
        idx = rs.permutation(len(f_train))[:labels]
        x, y = f_train[idx], y_train[idx]
        if len(np.unique(y)) < 2:
            continue
        base = 1.0 / (x.shape[1] * max(float(x.var()), 1e-12))
        n_val = max(1, int(round(val_fraction * labels)))
        xv, yv, xf, yf = x[:n_val], y[:n_val], x[n_val:], y[n_val:]
        best, best_g = -1.0, base
        if len(np.unique(yf)) >= 2:
            for fct in GAMMA_FACTORS:
                acc = float((SVC(gamma=base * fct).fit(xf, yf).predict(xv) == yv).mean())
                if acc > best:
                    best, best_g = acc, base * fct
        clf = SVC(gamma=best_g).fit(x, y)
        accs.append(float((clf.predict(f_test) == y_test).mean()))
        gammas.append(best_g)
    if not accs:
        return dict(mean=float("nan"), sd=float("nan"), gammas=[])
    return dict(mean=float(np.mean(accs)), sd=float(np.std(accs)), gammas=gammas)


def semi_supervised_accuracy(f_train, y_train, f_test, y_test, labels: int, seed: int = 0, draws: int = 10) -> float:
    return probe_accuracy(f_train, y_train, f_test, y_test, labels, draws=draws, seed=seed)["mean"]


# ---- the class judge -------------------------------------------------------------------------------

def cache_dir() -> str:
    """Where the class judge is cached: $INFOVAE_CACHE, else ~/.cache/infovae."""
    return os.environ.get("INFOVAE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "infovae")


def _judge_net(shape, classes: int) -> torch.nn.Module:
    c, h, _ = shape
    h4 = h // 4 if h % 4 == 0 else None
    if h4:
        return torch.nn.Sequential(torch.nn.Conv2d(c, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                                   torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(64 * h4 * h4, 128),
                                   torch.nn.ReLU(), torch.nn.Linear(128, classes))
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(np.prod(shape)), 256), torch.nn.ReLU(),
                               torch.nn.Linear(256, classes))


_JUDGES: dict = {}


def class_judge(data: Dataset, seed: int = 0, epochs: int = 8):
    """A small CNN (conv 32, conv 64, fc 128) trained on the stochastically binarised training images,
    once per data set: cached in memory and on disk (cache_dir(), written atomically); returns
    (model on the CPU, its test accuracy)."""
    key = (data.name, tuple(data.x_train.shape), seed, epochs)
    if key in _JUDGES:
        return _JUDGES[key]
    net = _judge_net(data.shape, data.num_classes)
    path = os.path.join(cache_dir(), f"judge-{data.name}-{data.x_train.shape[0]}-s{seed}-e{epochs}.pt")
    if os.path.exists(path):
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(ck["state"])
            acc = float(ck["acc"])
            net.eval()
            _JUDGES[key] = (net, acc)
            return net, acc
        except Exception:  # a damaged cache file is retrained and replaced
            pass
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _judge_net(data.shape, data.num_classes)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        net.train()
        with torch.enable_grad():
            for _ in range(epochs):
                perm = torch.randperm(len(data.x_train), generator=g)
                for i in range(0, len(perm), 100):
                    idx = perm[i:i + 100]
                    xb = data.x_train[idx]
                    if data.likelihood == "bernoulli":
                        xb = torch.bernoulli(xb, generator=g)
                    loss = F.cross_entropy(net(xb), data.y_train[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
    net.eval()
    with torch.no_grad():
        xt = torch.bernoulli(data.x_test, generator=g) if data.likelihood == "bernoulli" else data.x_test
        acc = float((net(xt).argmax(1) == data.y_test).float().mean())
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        torch.save(dict(state=net.state_dict(), acc=acc), tmp)
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs the retraining
        pass
    _JUDGES[key] = (net, acc)
    return net, acc


def class_kl(pred: torch.Tensor, classes: int) -> float:
    """KL(uniform || p_hat) in nats from predicted labels (argmax counts, add-0.5 smoothing)."""
    counts = torch.bincount(pred.cpu(), minlength=classes).double()
    p = (counts + 0.5) / (counts.sum() + 0.5 * classes)
    return float(-math.log(classes) - p.log().mean())


@torch.no_grad()
def class_ce_floor(net, data: Dataset, n: int, seed: int = 0, repeats: int = 5) -> float:
    g = torch.Generator().manual_seed(seed)
    xt = torch.bernoulli(data.x_test, generator=g) if data.likelihood == "bernoulli" else data.x_test
    pred = net(xt).argmax(1)
    vals = [class_kl(pred[torch.randint(len(pred), (n,), generator=g)], data.num_classes) for _ in range(repeats)]
    return float(np.mean(vals))


@torch.no_grad()
def _samples(model: InfoVAE, n: int, seed: int, chunk: int = 500) -> torch.Tensor:
    out = []
    g = torch.Generator().manual_seed(seed)
    for i in range(0, n, chunk):
        out.append(model.sample(min(chunk, n - i), generator=g).cpu())
    return torch.cat(out)


@torch.no_grad()
def evaluate(model: InfoVAE, data: Dataset, *, iwae_k: int = 100, n_iwae: Optional[int] = 500, n_samples: int = 1000,
             n_samples_autoregressive: int = 1000, seed: int = 0, backend: str = "auto", draws: int = 10,
             proposal: str = "defensive", floor: bool = True) -> dict:
    """All the metrics in the module docstring, as a dict of floats (JSON-ready), computed on the
    model's device (move it with model.to(device) first)."""
    if not isinstance(model, InfoVAE):
        raise TypeError(f"model must be an InfoVAE, got {type(model).__name__}")
    if not isinstance(data, Dataset):
        raise TypeError(f"data must be a Dataset, got {type(data).__name__}")
    if tuple(data.shape) != tuple(model.shape):
        raise ValueError(f"model shape {model.shape} does not match data {data.name!r} shape {data.shape}")
    for v, name in ((n_samples, "n_samples"), (n_samples_autoregressive, "n_samples_autoregressive"), (draws, "draws")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    model.eval()
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        xte = _binarised(model, data.x_test, seed)
        xtr = _binarised(model, data.x_train, seed + 1)
        mu_te, lv_te = encode_all(model, xte)
        mu_tr, lv_tr = encode_all(model, xtr)
        z_te, z_tr = sample_codes(mu_te, lv_te, seed + 2), sample_codes(mu_tr, lv_tr, seed + 3)
        g = torch.Generator().manual_seed(seed + 4)
        sig = math.sqrt(model.latent)
        m = {}
        m["mmd"], m["mmd_impl"] = full_mmd(z_te, torch.randn(z_te.shape, generator=g), sig, backend)
        m["mmd_train"], _ = full_mmd(z_tr, torch.randn(z_tr.shape, generator=g), sig, backend)
        m["ksd"], m["ksd_p_value"] = prior_ksd(z_te, sig, seed)
        m["logdet_cov_total_train"], m["logdet_cov_train"] = logdet_cov(z_tr)
        m["logdet_cov_total_test"], m["logdet_cov_test"] = logdet_cov(z_te)
        m["tail_fraction"] = tail_fraction(z_te)
        dev = model.device
        rec = kl = 0.0
        for i in range(0, len(xte), 500):
            t = model(xte[i:i + 500].to(dev))
            w = min(500, len(xte) - i)
            rec, kl = rec + float(t["recon"]) * w, kl + float(t["kl"]) * w
        m["recon_test"], m["kl_test"] = rec / len(xte), kl / len(xte)
        nx = xte if n_iwae is None else xte[:n_iwae]
        m["nll"] = float(-iwae_log_likelihood(model, nx, iwae_k, proposal=proposal).mean())
        m["iwae_k"], m["n_iwae"], m["iwae_proposal"] = iwae_k, int(nx.shape[0]), proposal
        m["mi"] = mutual_information(mu_te, lv_te)
        m["mi_cap"] = math.log(len(mu_te))
        ytr, yte = data.y_train.numpy(), data.y_test.numpy()
        m["chance_acc"] = float(np.bincount(yte).max() / len(yte))
        floor_codes = None
        if floor:
            torch.manual_seed(seed)
            fresh = InfoVAE.from_config(model.config).to(dev).eval()
            fm_tr, fl_tr = encode_all(fresh, xtr)
            fm_te, fl_te = encode_all(fresh, xte)
            floor_codes = (sample_codes(fm_tr, fl_tr, seed + 3), sample_codes(fm_te, fl_te, seed + 2))
        for labels in (100, 1000):
            r = probe_accuracy(z_tr.numpy(), ytr, z_te.numpy(), yte, min(labels, len(ytr)), draws=draws, seed=seed)
            m[f"acc_{labels}"], m[f"acc_{labels}_sd"] = r["mean"], r["sd"]
            if floor_codes is not None and labels == 1000:
                m[f"acc_floor_{labels}"] = probe_accuracy(floor_codes[0].numpy(), ytr, floor_codes[1].numpy(), yte,
                                                          min(labels, len(ytr)), draws=draws, seed=seed)["mean"]
        m["acc_mean_1000"] = probe_accuracy(mu_tr.numpy(), ytr, mu_te.numpy(), yte, min(1000, len(ytr)),
                                            draws=3, seed=seed)["mean"]  # the old probe, for comparison only
        m["probe_draws"] = draws
        if len(data.shape) == 3:
            net, acc = class_judge(data, seed)
            ns = n_samples_autoregressive if getattr(model.decoder, "autoregressive", False) else n_samples
            samples = _samples(model, ns, seed)
            if model.likelihood == "bernoulli" and not getattr(model.decoder, "autoregressive", False):
                samples = torch.bernoulli(samples, generator=torch.Generator().manual_seed(seed + 5))
            m["class_ce"] = class_kl(net(samples.float()).argmax(1), data.num_classes)
            m["class_ce_floor"] = class_ce_floor(net, data, ns, seed)
            m["class_judge_acc"], m["n_samples"] = acc, ns
        m["latent"], m["model"] = model.latent, model.config.get("name")
        return m
