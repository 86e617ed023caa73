"""The model layer (python/infovae): presets, loss terms by hand, backends, training, resume, IWAE, errors."""

import math
import os
import signal
import sys

import pytest
import torch
import torch.nn.functional as F

try:
    import infovae  # noqa: F401
except ImportError:  # the editable install predates python/infovae: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

import infovae_kernels as ik
from infovae import InfoVAE, PRESETS, TrainingDiverged, load_data, train
from infovae.metrics import iwae_log_likelihood, mutual_information
from infovae.train import load_checkpoint

torch.set_num_threads(1)


def cpu_backend():
    """(available, reason) of the fused C++ "cpu" backend."""
    try:
        status = ik.backends.available()["cpu"]
    except Exception as exc:  # the registry itself failing is a reason too
        return False, f"infovae_kernels.backends.available() failed: {exc}"
    return status.available, status.reason


CPU_OK, CPU_WHY = cpu_backend()
needs_cpu = pytest.mark.skipif(not CPU_OK, reason=f"fused backend 'cpu' is missing: {CPU_WHY}")


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", n_train=256)


def tiny(name, shape=(1, 8, 8), latent=3, **kw):
    torch.manual_seed(0)
    kw.setdefault("hidden", 32)
    kw.setdefault("backend", "torch")
    return InfoVAE.preset(name, shape, latent, **kw)


# ---- presets ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,alpha,lam,div", [("elbo", 0, 1, "mmd"), ("aae", 1, 1, "adversarial"),
                                                ("mmd", 1, 100, "mmd"), ("stein", 1, 1, "stein")])
def test_preset_alpha_lambda(name, alpha, lam, div):
    m = tiny(name)
    assert (m.alpha, m.lambda_, m.divergence) == (alpha, lam, div)
    assert m.kl_weight == 1 - alpha and m.div_weight == alpha + lam - 1
    assert PRESETS[name]["paper"]


def test_beta_preset():
    m = tiny("beta", beta=4.0)
    assert (m.alpha, m.lambda_, m.kl_weight, m.div_weight) == (-3.0, 4.0, 4.0, 0.0)
    m = tiny("beta", beta=0.5)
    assert (m.kl_weight, m.div_weight) == (0.5, 0.0)


def _fixed(m, n=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, *m.shape), 0.4), generator=g)
    eps = torch.randn(n, m.latent, generator=g)
    prior = torch.randn(n, m.latent, generator=g)
    return x, eps, prior


def _by_hand(m, x, eps):
    mu, lv = m.encoder(x)
    lv = lv.clamp(-15, 10)
    z = mu + eps * (0.5 * lv).exp()
    logits = m.decoder(z, x)
    p = torch.sigmoid(logits)
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1).mean()
    kl = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum(1).mean()
    return z, recon, kl


def _mmd_hand(z, prior, sigma):
    z, prior = z.double(), prior.double()
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * sigma ** 2))
    return k(z, z).mean() + k(prior, prior).mean() - 2 * k(z, prior).mean()


@pytest.mark.parametrize("name", ["elbo", "beta", "mmd"])
def test_loss_terms_by_hand(name):
    m = tiny(name)
    x, eps, prior = _fixed(m)
    out = m(x, eps=eps, prior=prior)
    z, recon, kl = _by_hand(m, x, eps)
    div = _mmd_hand(z, prior, math.sqrt(m.latent)) if m.div_weight else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(out["recon"], recon, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["div"].double(), div, rtol=1e-4, atol=1e-6)
    total = recon.double() + (1 - m.alpha) * kl.double() + (m.alpha + m.lambda_ - 1) * div
    torch.testing.assert_close(out["loss"].double(), total, rtol=1e-5, atol=1e-3)


def test_stein_term_by_hand():
    sigma = 1.3
    m = tiny("stein", stein_sigma=sigma)
    x, eps, _ = _fixed(m, n=7)
    out = m(x, eps=eps)
    z = out["z"]
    zd = z.detach().double()
    k = torch.exp(-torch.cdist(zd, zd) ** 2 / (2 * sigma ** 2))  # k[j, i]
    # phi_i = 1/n sum_j k(z_j, z_i) score_j + grad_{z_j} k(z_j, z_i), score = -z, grad = k (z_i - z_j) / sigma^2
    phi = (k @ -zd + (k.sum(0)[:, None] * zd - k @ zd) / sigma ** 2) / zd.shape[0]
    torch.testing.assert_close(out["div"].double(), -(phi * zd).sum(1).mean(), rtol=1e-4, atol=1e-5)
    g, = torch.autograd.grad(out["div"], z)
    torch.testing.assert_close(g.double(), -phi / zd.shape[0], rtol=1e-4, atol=1e-6)
    _, recon, kl = _by_hand(m, x, eps)
    torch.testing.assert_close(out["loss"], recon + out["div"], rtol=1e-5, atol=1e-4)


def test_adversarial_terms_by_hand():
    m = tiny("aae")
    x, eps, prior = _fixed(m)
    out = m(x, eps=eps, prior=prior)
    z, recon, _ = _by_hand(m, x, eps)
    t_q, t_p = m.discriminator(z), m.discriminator(prior)
    torch.testing.assert_close(out["div"], F.softplus(-t_q).mean())
    torch.testing.assert_close(out["disc"], F.softplus(-t_p).mean() + F.softplus(t_q).mean())
    torch.testing.assert_close(out["loss"], recon + out["div"] + out["disc"], rtol=1e-5, atol=1e-4)
    # the encoder's term does not train the discriminator, the discriminator's term does not train the encoder
    dps = list(m.discriminator.parameters())
    assert all(g is None or not g.abs().any() for g in torch.autograd.grad(out["objective"], dps, allow_unused=True))
    eps_ = list(m.encoder.parameters())
    assert all(g is None for g in torch.autograd.grad(out["disc"], eps_, allow_unused=True, retain_graph=True))


@pytest.mark.parametrize("name", list(PRESETS))
def test_each_preset_loss_goes_down(name, digits):
    m = tiny(name)
    h = train(m, digits, epochs=6, batch_size=64, lr=2e-3, progress=False)
    steps = h["steps"]
    first = lambda k: sum(s[k] for s in steps[:4]) / 4
    last = lambda k: sum(s[k] for s in steps[-4:]) / 4
    # the Stein surrogate's value is not a divergence: judge the stein preset on its reconstruction
    key = "recon" if name == "stein" else "objective_"
    if key == "objective_":
        w = (m.kl_weight, m.div_weight)
        for s in steps:
            s[key] = s["recon"] + w[0] * s["kl"] + w[1] * s["div"]
    assert last(key) < first(key) - 1.0, (name, first(key), last(key))


# ---- backends -----------------------------------------------------------------------------------

@needs_cpu
@pytest.mark.parametrize("name", ["mmd", "stein"])
def test_divergence_torch_vs_fused(name):
    grads, losses = [], []
    for backend in ("torch", "cpu"):
        m = tiny(name, backend=backend)
        x, eps, prior = _fixed(m, n=33)
        out = m(x, eps=eps, prior=prior)
        m.zero_grad()
        out["loss"].backward()
        losses.append(torch.stack([out["loss"].detach(), out["div"].detach()]))
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)


@needs_cpu
def test_mmd_vae_convergence_reference_vs_fused(digits):
    curves = []
    for backend in ("torch", "cpu"):
        m = tiny("mmd", backend=backend)
        h = train(m, digits, epochs=4, batch_size=64, lr=1e-3, progress=False, seed=3)
        curves.append(torch.tensor([s["loss"] for s in h["steps"]], dtype=torch.float64))
    torch.testing.assert_close(curves[0], curves[1], rtol=2e-3, atol=1e-2)


def test_backend_by_name_errors_are_clear():
    ok, why = cpu_backend()
    if ok:
        pytest.skip("the cpu backend is installed; nothing to refuse")
    with pytest.raises(ValueError, match="cpu"):
        tiny("mmd", backend="cpu")


# ---- training: checkpoints, resume, NaN guard ----------------------------------------------------

def _params(m):
    return torch.cat([p.detach().flatten() for p in m.state_dict().values() if p.dtype.is_floating_point])


@pytest.mark.parametrize("name", ["mmd", "aae"])
def test_kill_and_resume_equals_uninterrupted(name, digits, tmp_path):
    ref = tiny(name)
    train(ref, digits, epochs=3, batch_size=64, progress=False, out=str(tmp_path / "ref"))

    run = str(tmp_path / "run")
    m = tiny(name)

    def ctrl_c(step, vals):  # a real SIGINT in the middle of epoch 2
        if step == 6:
            os.kill(os.getpid(), signal.SIGINT)

    h = train(m, digits, epochs=3, batch_size=64, progress=False, out=run, callback=ctrl_c)
    assert h["stopped"] and load_checkpoint(run)["step"] == 6
    assert not [f for f in os.listdir(run) if ".tmp" in f]
    m2 = tiny(name)
    m2.load_state_dict({k: v * 0 for k, v in m2.state_dict().items()})  # the checkpoint must restore everything
    train(m2, digits, epochs=3, batch_size=64, progress=False, out=run, resume=True)
    assert torch.equal(_params(m2), _params(ref))
    assert load_checkpoint(run)["step"] == load_checkpoint(str(tmp_path / "ref"))["step"] == 12


def test_nan_guard_keeps_last_good_checkpoint(digits, tmp_path):
    m = tiny("elbo")
    run = str(tmp_path / "run")

    def poison(step, vals):
        if step == 6:
            with torch.no_grad():
                next(m.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match="NaN.*last good checkpoint"):
        train(m, digits, epochs=3, batch_size=64, progress=False, out=run, callback=poison)
    ck = load_checkpoint(run)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


# ---- IWAE on a linear Gaussian VAE ---------------------------------------------------------------

def _linear_gaussian(dx=4, dz=2, s2=0.3):
    """p(z) = N(0, I), p(x|z) = N(W z + b, s2 I) with orthogonal columns of W, so the exact posterior
    N(S W^T (x - b) / s2, S), S = (I + W^T W / s2)^-1, is diagonal; p(x) = N(b, W W^T + s2 I)."""
    torch.manual_seed(0)
    m = InfoVAE((dx,), dz, alpha=0.0, lambda_=1.0, encoder="linear", decoder="linear", likelihood="gaussian",
                backend="torch").double()
    q, _ = torch.linalg.qr(torch.randn(dx, dz, dtype=torch.float64))
    w = q * torch.tensor([1.5, 0.7], dtype=torch.float64)
    b = torch.randn(dx, dtype=torch.float64)
    s = 1.0 / (1.0 + (w ** 2).sum(0) / s2)  # diagonal of S
    with torch.no_grad():
        m.decoder.net.weight.copy_(w)
        m.decoder.net.bias.copy_(b)
        m.logvar_x.fill_(math.log(s2))
        head = m.encoder.head
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:dz] = (s[:, None] * w.T) / s2
        head.bias[:dz] = -(s[:, None] * w.T / s2) @ b
        head.bias[dz:] = s.log()
    marg = torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(dx, dtype=torch.float64))
    return m, marg


def test_iwae_exact_posterior_gives_exact_likelihood():
    m, marg = _linear_gaussian()
    x = marg.sample((50,))
    torch.testing.assert_close(iwae_log_likelihood(m, x, k=5), marg.log_prob(x), rtol=0, atol=1e-8)


def test_iwae_converges_with_an_imperfect_encoder():
    m, marg = _linear_gaussian()
    with torch.no_grad():
        m.encoder.head.bias[:2] += 0.3
        m.encoder.head.bias[2:] += 0.5
    torch.manual_seed(1)
    x = marg.sample((20,))
    one = iwae_log_likelihood(m, x, k=1).mean()
    many = iwae_log_likelihood(m, x, k=4000).mean()
    exact = marg.log_prob(x).mean()
    assert one < many <= exact + 0.01
    assert abs(float(many - exact)) < 0.01


def test_mutual_information_bounds():
    n = 400
    mu = torch.zeros(n, 2)
    assert abs(mutual_information(mu, torch.zeros(n, 2))) < 1e-9
    far = torch.randn(n, 2) * 100
    assert abs(mutual_information(far, torch.full((n, 2), -10.0)) - math.log(n)) < 0.05


# ---- nets and data -------------------------------------------------------------------------------

def test_pixelcnn_is_causal():
    torch.manual_seed(0)
    m = InfoVAE.preset("elbo", (1, 8, 8), 2, decoder="pixelcnn", encoder="mlp", hidden=16)
    z = torch.randn(1, 2)
    x = torch.bernoulli(torch.full((1, 1, 8, 8), 0.5))
    base = m.decoder(z, x)
    i, j = 3, 4
    x2 = x.clone()
    x2[0, 0, i, j] = 1 - x2[0, 0, i, j]
    diff = (m.decoder(z, x2) - base).abs()[0, 0]
    order = torch.arange(64).view(8, 8)
    assert diff[order <= i * 8 + j].max() == 0  # nothing at or before (i, j) sees x[i, j]
    assert diff[order > i * 8 + j].max() > 0
    assert m.sample(2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("dec", ["mlp", "conv", "pixelcnn"])
def test_decoders_shapes(dec):
    m = tiny("mmd", shape=(1, 8, 8), decoder=dec, encoder="conv" if dec != "mlp" else "mlp")
    x = torch.bernoulli(torch.full((5, 1, 8, 8), 0.3))
    out = m(x)
    assert out["loss"].shape == () and out["z"].shape == (5, 3)


def test_data_sets():
    d = load_data("mnist5k")
    assert d.x_train.shape == (4000, 1, 28, 28) and d.x_test.shape == (1000, 1, 28, 28)
    assert float(d.x_train.max()) <= 1.0 and d.num_classes == 10
    assert torch.equal(load_data("mnist5k").y_test, d.y_test)  # the split is fixed
    assert load_data("mnist5k", n_train=500).x_train.shape[0] == 500
    t = load_data("twopoint")
    assert set(t.x_train.flatten().tolist()) == {-1.0, 1.0} and t.likelihood == "gaussian"


def test_mnist_idx_reader(tmp_path):
    import gzip

    import numpy as np

    def idx(a, code):
        return bytes([0, 0, code, a.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in a.shape) + a.tobytes()

    imgs = np.random.RandomState(0).randint(0, 256, (3, 28, 28), dtype=np.uint8)
    labs = np.array([1, 2, 3], dtype=np.uint8)
    for stem, a in (("train-images-idx3-ubyte", imgs), ("train-labels-idx1-ubyte", labs),
                    ("t10k-images-idx3-ubyte", imgs), ("t10k-labels-idx1-ubyte", labs)):
        with gzip.open(tmp_path / (stem + ".gz"), "wb") as f:
            f.write(idx(a, 8))
    d = load_data("mnist", data_dir=str(tmp_path))
    assert d.x_train.shape == (3, 1, 28, 28) and d.y_test.tolist() == [1, 2, 3]
    assert torch.allclose(d.x_train[1, 0] * 255, torch.from_numpy(imgs[1]).float())


# ---- bad arguments ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,exc,msg", [
    (lambda: InfoVAE.preset("vae9", (4,), 2), ValueError, "unknown model 'vae9'"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, decoder="resnet"), ValueError, "unknown decoder 'resnet'"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, encoder="resnet"), ValueError, "unknown encoder 'resnet'"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, lambda_=-1.0), ValueError, "lambda_ must be non-negative"),
    (lambda: InfoVAE.preset("mmd", (4,), 0), ValueError, "latent must be at least 1"),
    (lambda: InfoVAE.preset("mmd", (4,), 2.5), TypeError, "latent must be an integer"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, divergence="wasserstein"), ValueError, "unknown divergence"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, lambda_="big"), TypeError, "lambda_ must be a number"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, kernel="laplace"), ValueError, "laplace"),
    (lambda: InfoVAE.preset("mmd", (4, 4), 2, decoder="conv"), ValueError, "conv decoder needs square images"),
    (lambda: load_data("cifar"), ValueError, "unknown data 'cifar'"),
    (lambda: load_data("mnist"), ValueError, "IDX files"),
    (lambda: train(tiny("mmd"), "digits", epochs=0), ValueError, "epochs must be a positive integer"),
    (lambda: train(tiny("mmd", shape=(4,)), "digits"), ValueError, "does not match"),
    (lambda: load_checkpoint("/nonexistent/run"), ValueError, "does not exist"),
])
def test_bad_arguments(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


@pytest.mark.parametrize("argv,msg", [
    (["train", "--model", "vae9", "--out", "{tmp}/a"], "unknown model"),
    (["train", "--data", "cifar", "--out", "{tmp}/a"], "unknown data"),
    (["train", "--decoder", "resnet", "--data", "digits", "--out", "{tmp}/a"], "unknown decoder"),
    (["train", "--lambda", "-3", "--data", "digits", "--out", "{tmp}/a"], "lambda_ must be non-negative"),
    (["train", "--latent", "0", "--data", "digits", "--out", "{tmp}/a"], "latent must be at least 1"),
    (["eval", "{tmp}/missing"], "does not exist"),
    (["sample", "{tmp}/missing"], "does not exist"),
    (["train", "--resume", "--out", "{tmp}/missing"], "does not exist"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments(argv, msg, tmp_path, capsys):
    from infovae.cli import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and "Traceback" not in err


def test_cli_train_eval_sample(tmp_path, capsys):
    import json

    from infovae.cli import main

    run = str(tmp_path / "run")
    assert main(["train", "--model", "mmd", "--data", "digits", "--latent", "2", "--epochs", "2", "--hidden", "32",
                 "--backend", "torch", "--out", run, "--no-progress"]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", run, "--no-progress"]) == 0
    assert load_checkpoint(run)["epoch"] == 3
    assert main(["eval", run, "--iwae-k", "5", "--n-iwae", "50", "--n-samples", "200"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    for k in ("mmd", "logdet_cov_train", "logdet_cov_test", "nll", "mi", "acc_100", "acc_1000", "class_ce"):
        assert isinstance(m[k], float) and math.isfinite(m[k]), k
    assert m["nll"] > 0 and m["class_ce"] >= m["class_ce_min"] - 1e-9
    assert main(["sample", run, "--n", "20"]) == 0
    for f in ("config.json", "history.json", "checkpoint.pt", "latent.png", "qz_pz.png", "samples.png"):
        assert os.path.getsize(os.path.join(run, f)) > 0, f
