"""The InfoVAE objective in one module, and the named members of the family as presets.

Per example, the loss minimised is the negative of the InfoVAE objective (Zhao, Song & Ermon, 2017/2019)

    loss = -E_q[log p(x|z)] + (1 - alpha) KL(q(z|x) || p(z)) + (alpha + lambda - 1) D(q(z) || p(z))

with p(z) = N(0, I), a diagonal Gaussian q(z|x), and the divergence D, estimated on the batch. The
reconstruction term is summed over the pixels of an image (nats per image), so every weight here is on
that scale. The authors' code averages the NLL over the 784 pixels instead: a weight w there is a
weight 784 w here (docs/MODELS.md lists the paper's and the authors' effective values side by side).

- "mmd": squared MMD between the batch of z ~ q(z|x) and as many fresh draws of p(z), computed by
  infovae_kernels.mmd (kernel "rbf" with sigma = sqrt(latent) by default: exp(-|z - z'|^2 / (2 d)); the
  authors' research code has exp(-|z - z'|^2 / d^2), sigma = latent / sqrt(2); kernel "imq" is the WAE
  alternative; estimator "biased" by default).
- "stein": KL(q(z) || p(z)) minimised by its Stein variational gradient phi = ik.svgd_direction(z,
  score=-z) applied through the surrogate -sum_i stop_grad(phi(z_i)) . z_i (stein_reduction "sum",
  as the authors ran it) or its batch mean ("mean"). stein_sigma: a fixed bandwidth (default
  sqrt(latent): the authors' exp(-r2 / (2 d))) or "median" (Liu & Wang's heuristic). Its value is
  not a divergence (it is reported as `div`; only its gradient means something).
- "adversarial": a critic T(z) (MLP, 2 x 256) on its own optimiser (see train.py). adversary
  "wgan-gp" (the authors'): critic loss E_q T - E_p T + gp_weight E (|grad T(z_hat)| - 1)^2 on random
  interpolates, encoder term -E_q T. adversary "logistic": the non-saturating GAN of the first
  version of this package. The encoder's term sees the critic's parameters detached.

Encoder std (encoder_std): "sigmoid" (the authors': std = floor + (1 - floor) sigmoid(h), starts near
0.5, never below std_floor) or "exp" (std = exp(h / 2) of an unbounded log-variance h, clamped to
[-15, 10]). Gaussian decoder: a global per-pixel log-variance starting at decoder_logvar_init, floored
at decoder_logvar_floor, plus (decoder_std "z") a z-dependent offset from a linear head.

Presets (see PRESETS): the weights they set are (1 - alpha) on KL and (alpha + lambda - 1) on D.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

import infovae_kernels as ik

from infovae import nets

DIVERGENCES = ("mmd", "stein", "adversarial")
LIKELIHOODS = ("bernoulli", "gaussian")
ENCODER_STDS = ("sigmoid", "exp")
DECODER_STDS = ("global", "z")
ADVERSARIES = ("wgan-gp", "logistic")
STEIN_REDUCTIONS = ("sum", "mean")
PIXELS = 784  # the authors' per-pixel NLL average on MNIST: their weight w is 784 w on a per-image sum

#: name -> options. "beta" takes beta (default 4): alpha = 1 - beta, lambda = beta.
PRESETS = {
    "elbo": dict(alpha=0.0, lambda_=1.0, divergence="mmd",
                 paper="VAE, Kingma & Welling 2014 (ELBO: KL weight 1, D weight 0)"),
    "beta": dict(alpha=None, lambda_=None, divergence="mmd",
                 paper="beta-VAE, Higgins et al. 2017 (alpha = 1 - beta, lambda = beta: KL weight beta, D weight 0)"),
    "aae": dict(alpha=1.0, lambda_=float(PIXELS), divergence="adversarial", adversary="wgan-gp",
                paper="Adversarial autoencoder, Makhzani et al. 2016, as the InfoVAE authors ran it: WGAN-GP critic "
                      "(own Adam 2e-5, betas (0.5, 0.9), penalty 10), weight 784 on a per-image NLL sum"),
    "mmd": dict(alpha=1.0, lambda_=100.0, divergence="mmd",
                paper="MMD-VAE, Zhao, Song & Ermon, InfoVAE 2017/2019 (KL weight 0, MMD weight 100 on the per-image NLL "
                      "sum; paper 1000; see MMD_LAMBDA_NOTE)"),
    "stein": dict(alpha=1.0, lambda_=float(PIXELS), divergence="stein", stein_reduction="sum", stein_sigma=None,
                  paper="Stein-VAE of the InfoVAE paper with SVGD (Liu & Wang 2016) as the authors ran it: surrogate "
                        "summed over the batch, fixed bandwidth 2d, weight 784 on a per-image NLL sum"),
}
DEFAULT_BETA = 4.0

#: The "mmd" preset's lambda, re-decided under the sigmoid encoder std by the rule written in
#: docs/reproduction/mmd_lambda_sweep.py before it ran (validation split of mnist5k's training images,
#: conv/conv, latent 10, 600 steps; docs/reproduction/mmd_lambda_sweep.json):
#:   lambda   100: validation sampled-z probe 0.924, full-set MMD 0.0015, MI 6.91 (= its cap log 1000)
#:   lambda  1000: probe 0.857, MMD 0.0047, MI 6.91
#:   lambda 10000: probe 0.102 (chance), MMD 0.0036, MI 0.0001: q(z|x) = p(z), z ignored
MMD_LAMBDA_NOTE = ("lambda 100 on the per-image NLL sum (paper 1000): best validation probe with the lowest "
                   "full-set MMD of {100, 1000, 10000} under the sigmoid encoder std (docs/MODELS.md)")


class TrainingDiverged(RuntimeError):
    """A loss, z or gradient became NaN/inf; training stopped and the last good checkpoint was kept."""


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _choice(value, name: str, allowed) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
    return value


class InfoVAE(nn.Module):
    """The InfoVAE family in one module (module docstring: the loss, divergences, options, presets).

    shape: one example's shape, e.g. (1, 28, 28); latent: size of z; encoder/decoder: names from
    infovae.nets; likelihood "bernoulli" (binary data; the trainer binarises stochastically each batch)
    or "gaussian". kernel, sigma, estimator, backend go to infovae_kernels ("mmd"); stein_sigma,
    stein_reduction and backend go to ik.svgd_direction ("stein"). `model.to(device)` moves everything;
    every tensor the model makes is made on its parameters' device.
    """

    def __init__(self, shape, latent: int = 5, *, alpha: float = 1.0, lambda_: float = 100.0,
                 divergence: str = "mmd", encoder: str = "mlp", decoder: str = "mlp",
                 likelihood: str = "bernoulli", kernel: str = "rbf", sigma=None, estimator: str = "biased",
                 stein_sigma=None, stein_reduction: str = "sum", adversary: str = "wgan-gp", gp_weight: float = 10.0,
                 encoder_std: str = "sigmoid", std_floor: float = 1e-3, decoder_std: str = "global",
                 decoder_logvar_init: float = math.log(0.25), decoder_logvar_floor: float = -9.0,
                 backend: str = "auto", hidden: Optional[int] = None, layers: Optional[int] = None,
                 name: str = "custom"):
        super().__init__()
        if isinstance(latent, bool) or not isinstance(latent, int):
            raise TypeError(f"latent must be an integer, got {type(latent).__name__}")
        if latent < 1:
            raise ValueError(f"latent must be at least 1, got {latent}")
        alpha, lambda_ = _number(alpha, "alpha"), _number(lambda_, "lambda_")
        if lambda_ < 0:
            raise ValueError(f"lambda_ must be non-negative, got {lambda_}")
        if alpha > 1:
            raise ValueError(f"alpha must be at most 1 (the KL weight 1 - alpha is non-negative), got {alpha}")
        if alpha + lambda_ - 1 < -1e-12:
            raise ValueError(f"alpha + lambda_ - 1 must be non-negative (the weight on D), got {alpha + lambda_ - 1}")
        _choice(divergence, "divergence", DIVERGENCES)
        _choice(likelihood, "likelihood", LIKELIHOODS)
        _choice(encoder_std, "encoder_std", ENCODER_STDS)
        _choice(decoder_std, "decoder_std", DECODER_STDS)
        _choice(adversary, "adversary", ADVERSARIES)
        _choice(stein_reduction, "stein_reduction", STEIN_REDUCTIONS)
        gp_weight = _number(gp_weight, "gp_weight")
        std_floor = _number(std_floor, "std_floor")
        if not 0 < std_floor < 1:
            raise ValueError(f"std_floor must be in (0, 1), got {std_floor}")
        decoder_logvar_init = _number(decoder_logvar_init, "decoder_logvar_init")
        decoder_logvar_floor = _number(decoder_logvar_floor, "decoder_logvar_floor")
        if decoder_logvar_init < decoder_logvar_floor:
            raise ValueError(f"decoder_logvar_init ({decoder_logvar_init}) is below decoder_logvar_floor "
                             f"({decoder_logvar_floor})")
        if not isinstance(shape, (tuple, list, torch.Size)) or not all(isinstance(s, int) and s > 0 for s in shape):
            raise TypeError(f"shape must be a tuple of positive ints (one example's shape), got {shape!r}")
        if decoder == "pixelcnn" and likelihood != "bernoulli":
            raise ValueError("the pixelcnn decoder models binary images: use likelihood 'bernoulli'")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be a positive integer, got {hidden!r}")
        if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or layers < 1):
            raise ValueError(f"layers must be a positive integer, got {layers!r}")
        if sigma is None:
            sigma = math.sqrt(latent)
        if stein_sigma is None:
            stein_sigma = math.sqrt(latent)  # the authors' fixed bandwidth: k = exp(-r2 / (2 d))
        self.shape, self.latent = tuple(shape), latent
        self.alpha, self.lambda_, self.divergence, self.likelihood = alpha, lambda_, divergence, likelihood
        self.kernel, self.sigma, self.estimator, self.stein_sigma = kernel, sigma, estimator, stein_sigma
        self.stein_reduction, self.adversary, self.gp_weight = stein_reduction, adversary, gp_weight
        self.encoder_std, self.std_floor, self.decoder_std = encoder_std, std_floor, decoder_std
        self.decoder_logvar_floor = decoder_logvar_floor
        self.backend = backend
        self.config = dict(shape=list(shape), latent=latent, alpha=alpha, lambda_=lambda_, divergence=divergence,
                           encoder=encoder, decoder=decoder, likelihood=likelihood, kernel=kernel, sigma=sigma,
                           estimator=estimator, stein_sigma=stein_sigma, stein_reduction=stein_reduction,
                           adversary=adversary, gp_weight=gp_weight, encoder_std=encoder_std, std_floor=std_floor,
                           decoder_std=decoder_std, decoder_logvar_init=decoder_logvar_init,
                           decoder_logvar_floor=decoder_logvar_floor, backend=backend, hidden=hidden,
                           layers=layers, name=name)
        self.encoder = nets.make_encoder(encoder, shape, latent, hidden, layers)
        self.decoder = nets.make_decoder(decoder, shape, latent, hidden, layers)
        if likelihood == "gaussian":
            self.logvar_x = nn.Parameter(torch.full(tuple(shape), decoder_logvar_init))
            if decoder_std == "z":
                self.logvar_head = nn.Linear(latent, int(math.prod(shape)))
                nn.init.zeros_(self.logvar_head.weight)
                nn.init.zeros_(self.logvar_head.bias)
        elif decoder_std == "z":
            raise ValueError("decoder_std 'z' needs likelihood 'gaussian' (a Bernoulli decoder has no std)")
        if divergence == "adversarial":
            self.discriminator = nn.Sequential(nn.Linear(latent, 256), nn.LeakyReLU(0.2), nn.Linear(256, 256),
                                               nn.LeakyReLU(0.2), nn.Linear(256, 1))
        if divergence == "mmd" and self.div_weight > 0:  # check the kernel options now, not mid-training
            z = torch.zeros(2, latent)
            ik.mmd(z, z + 1, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, shape, latent: int = 5, *, beta: float = DEFAULT_BETA, **kwargs) -> "InfoVAE":
        """A named member of the family (PRESETS): "elbo", "beta" (with beta), "aae", "mmd", "stein".
        kwargs override anything (alpha, lambda_, encoder, decoder, kernel, sigma, backend ...)."""
        if not isinstance(name, str) or name not in PRESETS:
            raise ValueError(f"unknown model {name!r}; choose one of {', '.join(PRESETS)}")
        p = dict(PRESETS[name])
        p.pop("paper")
        if name == "beta":
            beta = _number(beta, "beta")
            if beta <= 0:
                raise ValueError(f"beta must be positive, got {beta}")
            p["alpha"], p["lambda_"] = 1.0 - beta, beta
        p.update(kwargs)
        p.setdefault("name", name)
        return cls(shape, latent, **p)

    @classmethod
    def from_config(cls, config: dict) -> "InfoVAE":
        if not isinstance(config, dict) or "shape" not in config or "latent" not in config:
            raise ValueError("not an InfoVAE config (needs 'shape' and 'latent')")
        c = dict(config)
        if "encoder_std" not in c:  # a run of the previous version: its parameterisations, not today's defaults
            c.update(encoder_std="exp", stein_reduction="mean", adversary="logistic", decoder_logvar_init=0.0,
                     decoder_logvar_floor=-15.0)
        return cls(tuple(c.pop("shape")), c.pop("latent"), **c)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def generator_parameters(self):
        """Everything but the critic (trained by the main optimiser)."""
        return [p for n, p in self.named_parameters() if not n.startswith("discriminator.")]

    def critic_parameters(self):
        return list(self.discriminator.parameters()) if self.divergence == "adversarial" else []

    # ---- pieces ---------------------------------------------------------------------------------
    @property
    def kl_weight(self) -> float:
        return 1.0 - self.alpha

    @property
    def div_weight(self) -> float:
        return self.alpha + self.lambda_ - 1.0

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log-variance) of q(z|x), each (N, latent)."""
        mu, h = self.encoder(x)
        if self.encoder_std == "exp":
            return mu, h.clamp(-15.0, 10.0)
        std = self.std_floor + (1.0 - self.std_floor) * torch.sigmoid(h)
        return mu, 2.0 * std.log()

    def decoder_logvar(self, z: Tensor) -> Tensor:
        """Log-variance of the Gaussian p(x|z), (N, *shape) or broadcastable (*shape)."""
        lv = self.logvar_x
        if self.decoder_std == "z":
            lv = lv + self.logvar_head(z).view(-1, *self.shape)
        return lv.clamp(min=self.decoder_logvar_floor)

    def log_px_given_z(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) per example (N,), nats."""
        out = self.decoder(z, x)
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(out, x, reduction="none").flatten(1).sum(1)
        logvar = self.decoder_logvar(z)
        return -0.5 * ((x - out) ** 2 / logvar.exp() + logvar + math.log(2 * math.pi)).flatten(1).sum(1)

    def divergence_term(self, z: Tensor, prior: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        """(D estimate used in the loss, critic loss or None) for the batch z."""
        if self.divergence == "mmd":
            prior = torch.randn_like(z) if prior is None else prior
            return ik.mmd(z, prior, kernel=self.kernel, sigma=self.sigma, estimator=self.estimator,
                          backend=self.backend), None
        if self.divergence == "stein":
            phi = ik.svgd_direction(z, -z.detach(), sigma=self.stein_sigma, backend=self.backend)
            s = -(phi.detach() * z).sum(1)
            return (s.sum() if self.stein_reduction == "sum" else s.mean()), None
        prior = torch.randn_like(z) if prior is None else prior
        fixed = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        t_gen = functional_call(self.discriminator, fixed, (z,))
        zq = z.detach()
        if self.adversary == "logistic":
            gen = F.softplus(-t_gen).mean()
            disc = F.softplus(-self.discriminator(prior)).mean() + F.softplus(self.discriminator(zq)).mean()
            return gen, disc
        gen = -t_gen.mean()
        u = torch.rand(z.shape[0], 1, device=z.device, dtype=z.dtype)
        zi = (u * zq + (1 - u) * prior).requires_grad_(True)
        with torch.enable_grad():
            g, = torch.autograd.grad(self.discriminator(zi).sum(), zi, create_graph=True)
        gp = ((g.norm(dim=1) - 1.0) ** 2).mean()
        disc = self.discriminator(zq).mean() - self.discriminator(prior).mean() + self.gp_weight * gp
        return gen, disc

    def forward(self, x: Tensor, eps: Optional[Tensor] = None, prior: Optional[Tensor] = None) -> dict:
        """Loss terms for the batch x. eps (N, latent) and prior (N, latent) default to fresh N(0, I) draws.

        Returns loss (what to backpropagate: objective + the critic's loss for "adversarial"),
        objective (recon + (1-alpha) kl + (alpha+lambda-1) div), recon (-log p(x|z), nats/example),
        kl (KL(q(z|x)||p(z)), nats/example), div (the D estimate), disc (critic loss or 0), z.
        Raises TrainingDiverged when z is not finite, before any kernel sees it.
        """
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if eps is None else eps
        z = mu + eps * (0.5 * logvar).exp()
        if not bool(torch.isfinite(z).all()):
            raise TrainingDiverged("z (the encoder's output) became NaN/inf")
        recon = -self.log_px_given_z(x, z).mean()
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1.0 - logvar).sum(1).mean()
        zero = recon.new_zeros(())
        if self.div_weight > 0:
            div, disc = self.divergence_term(z, prior)
        else:
            div, disc = zero, None
        objective = recon + self.kl_weight * kl + self.div_weight * div
        disc = zero if disc is None else disc
        return dict(loss=objective + disc, objective=objective, recon=recon, kl=kl, div=div, disc=disc, z=z)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None, mean: bool = True) -> Tensor:
        """n draws from the model: z ~ p(z), then x ~ p(x|z) (mean=True returns the Bernoulli/Gaussian
        mean instead of a draw, except for the autoregressive PixelCNN, which always samples). The noise
        is drawn on the CPU from `generator` (same draws on every device) and moved to the model's device."""
        p = next(self.parameters())
        z = torch.randn(n, self.latent, generator=generator, dtype=p.dtype).to(p.device)
        return self.decode(z, generator, mean)

    @torch.no_grad()
    def decode(self, z: Tensor, generator: Optional[torch.Generator] = None, mean: bool = True) -> Tensor:
        if getattr(self.decoder, "autoregressive", False):
            return self.decoder.sample(z, generator)
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            if mean:
                return p
            return (torch.rand(p.shape, generator=generator, dtype=p.dtype).to(p.device) < p).to(p.dtype)
        if mean:
            return out
        noise = torch.randn(out.shape, generator=generator, dtype=out.dtype).to(out.device)
        return out + (0.5 * self.decoder_logvar(z)).exp() * noise
