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

@pytest.mark.parametrize("name,alpha,div", [("elbo", 0, "mmd"), ("aae", 1, "adversarial"), ("mmd", 1, "mmd"),
                                            ("stein", 1, "stein")])
def test_preset_alpha_lambda(name, alpha, div):
    m = tiny(name)
    lam = PRESETS[name]["lambda_"]
    assert (m.alpha, m.lambda_, m.divergence) == (alpha, lam, div)
    assert m.kl_weight == 1 - alpha and m.div_weight == alpha + lam - 1
    assert PRESETS[name]["paper"]


def test_faithful_preset_options():
    """The authors' runs: Stein summed over the batch with the fixed bandwidth sqrt(d) (k = exp(-r2/(2d))),
    AAE with a WGAN-GP critic, the sigmoid encoder std; the weights on the per-image NLL sum."""
    st, aae = tiny("stein", latent=4), tiny("aae", latent=4)
    assert st.stein_reduction == "sum" and st.stein_sigma == pytest.approx(2.0) and st.div_weight == 784
    assert aae.adversary == "wgan-gp" and aae.div_weight == 784 and aae.gp_weight == 10
    assert st.encoder_std == "sigmoid" and set(aae.critic_parameters()) == set(aae.discriminator.parameters())
    assert not set(aae.critic_parameters()) & set(aae.generator_parameters())


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
    mu, h = m.encoder(x)
    if m.encoder_std == "exp":
        lv = h.clamp(-15, 10)
    else:  # the authors' sigmoid with a floor
        lv = 2 * torch.log(m.std_floor + (1 - m.std_floor) / (1 + torch.exp(-h)))
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


@pytest.mark.parametrize("name,std", [("elbo", "sigmoid"), ("beta", "sigmoid"), ("mmd", "sigmoid"), ("mmd", "exp")])
def test_loss_terms_by_hand(name, std):
    m = tiny(name, encoder_std=std)
    x, eps, prior = _fixed(m)
    out = m(x, eps=eps, prior=prior)
    z, recon, kl = _by_hand(m, x, eps)
    div = _mmd_hand(z, prior, math.sqrt(m.latent)) if m.div_weight else torch.zeros((), dtype=torch.float64)
    torch.testing.assert_close(out["recon"], recon, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["kl"], kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["div"].double(), div, rtol=1e-4, atol=1e-6)
    total = recon.double() + (1 - m.alpha) * kl.double() + (m.alpha + m.lambda_ - 1) * div
    torch.testing.assert_close(out["loss"].double(), total, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_stein_term_by_hand(reduction):
    sigma = 1.3
    m = tiny("stein", stein_sigma=sigma, stein_reduction=reduction, lambda_=1.0)
    x, eps, _ = _fixed(m, n=7)
    out = m(x, eps=eps)
    z = out["z"]
    zd = z.detach().double()
    k = torch.exp(-torch.cdist(zd, zd) ** 2 / (2 * sigma ** 2))  # k[j, i]
    # phi_i = 1/n sum_j k(z_j, z_i) score_j + grad_{z_j} k(z_j, z_i), score = -z, grad = k (z_i - z_j) / sigma^2
    phi = (k @ -zd + (k.sum(0)[:, None] * zd - k @ zd) / sigma ** 2) / zd.shape[0]
    scale = 1.0 / zd.shape[0] if reduction == "mean" else 1.0
    torch.testing.assert_close(out["div"].double(), -(phi * zd).sum() * scale, rtol=1e-4, atol=1e-5)
    g, = torch.autograd.grad(out["div"], z)
    torch.testing.assert_close(g.double(), -phi * scale, rtol=1e-4, atol=1e-6)
    _, recon, kl = _by_hand(m, x, eps)
    torch.testing.assert_close(out["loss"], recon + out["div"], rtol=1e-5, atol=1e-4)


def test_adversarial_logistic_terms_by_hand():
    m = tiny("aae", adversary="logistic", lambda_=1.0)
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
    # the Stein surrogate's value is not a divergence and the WGAN critic moves: judge those on reconstruction
    key = "recon" if name in ("stein", "aae") else "objective_"
    if key == "objective_":
        w = (m.kl_weight, m.div_weight)
        for s in steps:
            s[key] = s["recon"] + w[0] * s["kl"] + w[1] * s["div"]
    assert last(key) < first(key) - 1.0, (name, first(key), last(key))


def test_wgan_gp_terms_by_hand():
    m = tiny("aae", lambda_=1.0)
    x, eps, prior = _fixed(m)
    torch.manual_seed(5)
    out = m(x, eps=eps, prior=prior)
    torch.manual_seed(5)
    u = torch.rand(x.shape[0], 1)
    z, recon, _ = _by_hand(m, x, eps)
    zi = (u * z.detach() + (1 - u) * prior).requires_grad_(True)
    g, = torch.autograd.grad(m.discriminator(zi).sum(), zi)
    gp = ((g.norm(dim=1) - 1) ** 2).mean()
    critic = m.discriminator(z.detach()).mean() - m.discriminator(prior).mean() + 10 * gp
    torch.testing.assert_close(out["div"], -m.discriminator(z).mean())
    torch.testing.assert_close(out["disc"], critic, rtol=1e-5, atol=1e-6)
    # the encoder's term does not train the critic, the critic's term does not train the encoder
    dps = m.critic_parameters()
    assert all(g is None or not g.abs().any() for g in torch.autograd.grad(out["objective"], dps, allow_unused=True,
                                                                          retain_graph=True))
    assert all(g is None for g in torch.autograd.grad(out["disc"], list(m.encoder.parameters()), allow_unused=True))


def test_critic_has_its_own_optimiser(digits):
    """The critic moves at the authors' 2e-5, not the model's lr: after one step its largest change is
    about 2e-5 (Adam's first step is lr * sign), the encoder's about lr."""
    m = tiny("aae", lambda_=1.0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    train(m, digits, epochs=1, batch_size=256, lr=1e-3, progress=False, device="cpu")
    assert len(digits.x_train) // 256 == 1
    delta = {n: float((p.detach() - before[n]).abs().max()) for n, p in m.named_parameters()}
    crit = max(v for n, v in delta.items() if n.startswith("discriminator."))
    enc = max(v for n, v in delta.items() if n.startswith("encoder."))
    assert crit == pytest.approx(2e-5, rel=0.05) and enc == pytest.approx(1e-3, rel=0.05)


@pytest.mark.parametrize("std", ["global", "z"])
def test_gaussian_decoder_variance_init_floor_and_z(std):
    torch.manual_seed(0)
    m = InfoVAE((3,), 2, alpha=0.0, lambda_=1.0, likelihood="gaussian", decoder_std=std, hidden=8, backend="torch",
                decoder_logvar_init=math.log(0.25), decoder_logvar_floor=-2.0)
    z = torch.randn(4, 2)
    torch.testing.assert_close(m.decoder_logvar(z).expand(4, 3), torch.full((4, 3), math.log(0.25)))
    with torch.no_grad():
        m.logvar_x.fill_(-50.0)
    assert float(m.decoder_logvar(z).detach().min()) == -2.0  # the floor holds
    if std == "z":
        with torch.no_grad():
            m.logvar_x.fill_(0.0)
            m.logvar_head.weight.fill_(1.0)
        lv = m.decoder_logvar(z)
        assert not torch.allclose(lv[0], lv[1])  # depends on z
        x = torch.randn(4, 3)
        out = m.decoder(z)
        ref = -0.5 * ((x - out) ** 2 / lv.exp() + lv + math.log(2 * math.pi)).sum(1)
        torch.testing.assert_close(m.log_px_given_z(x, z), ref)


def test_sigmoid_encoder_std_is_floored_and_starts_near_half():
    m = tiny("mmd", std_floor=0.01)
    with torch.no_grad():
        m.encoder.head.bias[m.latent:] = -100.0  # h -> -inf
        m.encoder.head.weight.zero_()
    _, lv = m.encode(torch.zeros(2, 1, 8, 8))
    torch.testing.assert_close((0.5 * lv).exp(), torch.full((2, m.latent), 0.01))
    fresh = tiny("mmd")
    x = torch.bernoulli(torch.full((64, 1, 8, 8), 0.3))
    sd = (0.5 * fresh.encode(x)[1].detach()).exp()
    assert 0.35 < float(sd.mean()) < 0.65


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_kernel_option(kernel):
    m = tiny("mmd", kernel=kernel)
    x, eps, prior = _fixed(m)
    out = m(x, eps=eps, prior=prior)
    ref = ik.mmd(out["z"].detach(), prior, kernel=kernel, sigma=m.sigma, backend="torch")
    torch.testing.assert_close(out["div"].detach(), ref)


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
                backend="torch", encoder_std="exp").double()
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
    torch.testing.assert_close(iwae_log_likelihood(m, x, k=5, proposal="q"), marg.log_prob(x), rtol=0, atol=1e-8)
    torch.manual_seed(0)  # the defensive mixture is unbiased for p(x): close with many samples
    torch.testing.assert_close(iwae_log_likelihood(m, x, k=4000), marg.log_prob(x), rtol=0, atol=0.06)


def test_defensive_proposal_stays_tight_for_a_near_deterministic_wrong_posterior():
    """A decoder that ignores z (p(x|z) = p(x)) and a posterior with sd 1e-3 far from 0: the q proposal's
    log-weights are log p(x) + log p(z) - log q(z|x), many nats below log p(x); the defensive mixture
    recovers log p(x)."""
    m, _ = _linear_gaussian()
    with torch.no_grad():
        m.decoder.net.weight.zero_()
        m.encoder.head.weight.zero_()
        m.encoder.head.bias[:2] = 1.5
        m.encoder.head.bias[2:] = 2 * math.log(1e-3)
    b, s2 = m.decoder.net.bias.detach(), float(m.logvar_x[0].exp())
    x = b + math.sqrt(s2) * torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = torch.distributions.Normal(b, math.sqrt(s2)).log_prob(x).sum(1)
    torch.manual_seed(0)
    loose = iwae_log_likelihood(m, x, k=200, proposal="q")
    tight = iwae_log_likelihood(m, x, k=4000)
    assert float((exact - loose).min()) > 3.0
    torch.testing.assert_close(tight, exact, rtol=0, atol=0.15)


def test_iwae_converges_with_an_imperfect_encoder():
    m, marg = _linear_gaussian()
    with torch.no_grad():
        m.encoder.head.bias[:2] += 0.3
        m.encoder.head.bias[2:] += 0.5
    torch.manual_seed(1)
    x = marg.sample((20,))
    one = iwae_log_likelihood(m, x, k=1, proposal="q").mean()
    many = iwae_log_likelihood(m, x, k=4000, proposal="q").mean()
    exact = marg.log_prob(x).mean()
    assert one < many <= exact + 0.01
    assert abs(float(many - exact)) < 0.01


def test_mutual_information_bounds():
    n = 400
    mu = torch.zeros(n, 2)
    assert abs(mutual_information(mu, torch.zeros(n, 2))) < 1e-9
    far = torch.randn(n, 2) * 100
    assert abs(mutual_information(far, torch.full((n, 2), -10.0)) - math.log(n)) < 0.05  # the cap log N


# ---- nets and data -------------------------------------------------------------------------------

def test_pixelcnn_has_no_blind_spot():
    """Every pixel in the window above and to the left AND right of (i, j) (rows i-2..i-1, columns j-2..j+2)
    and left of it in its row reaches the logit of (i, j): the masked 3x3 stack's blind spot (above-right)
    is gone. Nothing at or after (i, j) reaches it."""
    torch.manual_seed(0)
    m = InfoVAE.preset("elbo", (1, 8, 8), 2, decoder="pixelcnn", encoder="mlp", hidden=16, layers=3).double()
    assert len(m.decoder.layers) == 3  # depth follows `layers`
    z = torch.randn(1, 2, dtype=torch.float64)
    x = torch.bernoulli(torch.full((1, 1, 8, 8), 0.5)).double().requires_grad_(True)
    out = m.decoder(z, x)
    i, j = 5, 4
    g, = torch.autograd.grad(out[0, 0, i, j], x)
    dep = g[0, 0] != 0
    order = torch.arange(64).view(8, 8)
    assert not dep[order >= i * 8 + j].any()
    window = torch.zeros(8, 8, dtype=torch.bool)
    window[i - 2:i, j - 2:j + 3] = True
    window[i, j - 2:j] = True
    assert dep[window].all(), dep.int()


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
    (lambda: InfoVAE.preset("mmd", (4,), 2, encoder_std="softplus"), ValueError, "unknown encoder_std"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, decoder_std="pixel"), ValueError, "unknown decoder_std"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, decoder_std="z"), ValueError, "decoder_std 'z' needs likelihood"),
    (lambda: InfoVAE.preset("aae", (4,), 2, adversary="hinge"), ValueError, "unknown adversary"),
    (lambda: InfoVAE.preset("stein", (4,), 2, stein_reduction="max"), ValueError, "unknown stein_reduction"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, std_floor=1.5), ValueError, "std_floor"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, gp_weight="x"), TypeError, "gp_weight must be a number"),
    (lambda: InfoVAE.preset("mmd", (4,), 2, likelihood="gaussian", decoder_logvar_init=-10.0), ValueError,
     "below decoder_logvar_floor"),
    (lambda: iwae_log_likelihood(tiny("mmd"), torch.zeros(2, 1, 8, 8), k=3, proposal="p"), ValueError, "unknown proposal"),
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
                 "--backend", "torch", "--out", run, "--no-progress", "--device", "cpu"]) == 0
    assert main(["train", "--resume", "--epochs", "3", "--out", run, "--no-progress"]) == 0
    assert load_checkpoint(run)["epoch"] == 3
    assert main(["eval", run, "--iwae-k", "5", "--n-iwae", "50", "--n-samples", "200", "--device", "cpu"]) == 0
    m = json.load(open(os.path.join(run, "metrics.json")))
    for k in ("mmd", "ksd", "ksd_p_value", "logdet_cov_train", "logdet_cov_test", "logdet_cov_total_test", "nll", "mi",
              "acc_100", "acc_1000", "acc_floor_1000", "acc_mean_1000", "class_ce", "class_ce_floor", "tail_fraction"):
        assert isinstance(m[k], float) and math.isfinite(m[k]), k
    assert m["logdet_cov_total_test"] == pytest.approx(m["logdet_cov_test"] * m["latent"])
    assert m["mi"] <= m["mi_cap"] + 1e-6 and m["mi_cap"] == pytest.approx(math.log(360))
    assert m["nll"] > 0 and m["class_ce"] >= 0 and m["probe_draws"] >= 10
    assert 0 < m["ksd_p_value"] <= 1
    assert main(["sample", run, "--n", "20"]) == 0
    for f in ("config.json", "history.json", "checkpoint.pt", "latent.png", "qz_pz.png", "samples.png"):
        assert os.path.getsize(os.path.join(run, f)) > 0, f
