"""Encoders (diagonal Gaussian q(z|x)) and decoders (the parameters of p(x|z)) chosen by name.

encoders: "mlp", "conv" (DCGAN-like, images whose side is a multiple of 4, e.g. 28 x 28), "linear"
decoders: "mlp", "conv", "pixelcnn" (small gated PixelCNN conditioned on z, binary images), "linear"

An encoder maps x (N, *shape) to (mu, logvar), each (N, latent). A decoder maps z to the logits
(Bernoulli) or the mean (Gaussian) of p(x|z), shape (N, *shape); the PixelCNN decoder also needs x
(teacher forcing) and samples autoregressively.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
import torch.nn.functional as F

ENCODERS = ("mlp", "conv", "linear")
DECODERS = ("mlp", "conv", "pixelcnn", "linear")


def _numel(shape) -> int:
    return int(math.prod(shape))


def _check_image(shape, name: str) -> None:
    if len(shape) != 3 or shape[1] != shape[2] or shape[1] % 4:
        raise ValueError(f"{name} needs square images (C, H, H) with H a multiple of 4 (e.g. 28 x 28), got shape {tuple(shape)}")


class MLPEncoder(nn.Module):
    def __init__(self, shape, latent: int, hidden: int = 512, layers: int = 2):
        super().__init__()
        mods, d = [nn.Flatten()], _numel(shape)
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        self.body = nn.Sequential(*mods)
        self.head = nn.Linear(d, 2 * latent)

    def forward(self, x: Tensor):
        return self.head(self.body(x)).chunk(2, dim=1)


class LinearEncoder(nn.Module):
    def __init__(self, shape, latent: int, **_):
        super().__init__()
        self.head = nn.Linear(_numel(shape), 2 * latent)

    def forward(self, x: Tensor):
        return self.head(x.flatten(1)).chunk(2, dim=1)


class ConvEncoder(nn.Module):
    """conv 4x4/2 (64) -> conv 4x4/2 (128) -> fc (1024) -> mu, logvar; DCGAN-like, as in the InfoVAE code."""

    def __init__(self, shape, latent: int, hidden: int = 1024, **_):
        super().__init__()
        _check_image(shape, "the conv encoder")
        c, h = shape[0], shape[1]
        self.body = nn.Sequential(
            nn.Conv2d(c, 64, 4, 2, 1), nn.LeakyReLU(0.1),
            nn.Conv2d(64, 128, 4, 2, 1), nn.LeakyReLU(0.1), nn.Flatten(),
            nn.Linear(128 * (h // 4) ** 2, hidden), nn.LeakyReLU(0.1))
        self.head = nn.Linear(hidden, 2 * latent)

    def forward(self, x: Tensor):
        return self.head(self.body(x)).chunk(2, dim=1)


class MLPDecoder(nn.Module):
    def __init__(self, shape, latent: int, hidden: int = 512, layers: int = 2):
        super().__init__()
        mods, d = [], latent
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ReLU()]
            d = hidden
        mods.append(nn.Linear(d, _numel(shape)))
        self.net, self.shape = nn.Sequential(*mods), tuple(shape)

    def forward(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class LinearDecoder(nn.Module):
    def __init__(self, shape, latent: int, **_):
        super().__init__()
        self.net, self.shape = nn.Linear(latent, _numel(shape)), tuple(shape)

    def forward(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        return self.net(z).view(-1, *self.shape)


class ConvDecoder(nn.Module):
    """fc (1024) -> fc (128 x H/4 x H/4) -> deconv 4x4/2 (64) -> deconv 4x4/2 (C)."""

    def __init__(self, shape, latent: int, hidden: int = 1024, **_):
        super().__init__()
        _check_image(shape, "the conv decoder")
        c, h = shape[0], shape[1]
        self.h4 = h // 4
        self.fc = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, 128 * self.h4 ** 2), nn.ReLU())
        self.deconv = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(64, c, 4, 2, 1))

    def forward(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        return self.deconv(self.fc(z).view(-1, 128, self.h4, self.h4))


class MaskedConv2d(nn.Conv2d):
    """Convolution that sees only pixels above, and to the left in the same row (mask "A" excludes the
    centre pixel, mask "B" includes it)."""

    def __init__(self, mask: str, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)
        m = torch.ones_like(self.weight)
        m[:, :, k // 2, k // 2 + (mask == "B"):] = 0
        m[:, :, k // 2 + 1:] = 0
        self.register_buffer("mask", m)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedBlock(nn.Module):
    """h + W_o(tanh(W_f h + V_f z) * sigmoid(W_g h + V_g z)), a gated masked convolution conditioned on z."""

    def __init__(self, ch: int, latent: int, k: int = 3):
        super().__init__()
        self.conv = MaskedConv2d("B", ch, 2 * ch, k)
        self.cond = nn.Linear(latent, 2 * ch)
        self.out = nn.Conv2d(ch, ch, 1)

    def forward(self, h: Tensor, z: Tensor) -> Tensor:
        a = self.conv(h) + self.cond(z)[:, :, None, None]
        f, g = a.chunk(2, dim=1)
        return h + self.out(torch.tanh(f) * torch.sigmoid(g))


class PixelCNNDecoder(nn.Module):
    """A small gated conditional PixelCNN for binary images: p(x|z) = prod_i p(x_i | x_<i, z).

    mask-A 7x7 conv -> `layers` gated mask-B 3x3 blocks, each conditioned on z -> 1x1 convs -> logits.
    Training is one parallel pass (teacher forcing); sampling is one pass per pixel."""

    autoregressive = True

    def __init__(self, shape, latent: int, channels: int = 32, layers: int = 4, **_):
        super().__init__()
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"the pixelcnn decoder needs single-channel images (1, H, W), got shape {tuple(shape)}")
        self.shape = tuple(shape)
        self.inp = MaskedConv2d("A", 1, channels, 7)
        self.cond0 = nn.Linear(latent, channels)
        self.blocks = nn.ModuleList(GatedBlock(channels, latent) for _ in range(layers))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        if x is None:
            raise ValueError("the pixelcnn decoder needs x for its logits (teacher forcing); use sample()")
        h = self.inp(2 * x - 1) + self.cond0(z)[:, :, None, None]
        for b in self.blocks:
            h = b(h, z)
        return self.head(h)

    @torch.no_grad()
    def sample(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        x = z.new_zeros(z.shape[0], *self.shape)
        _, h, w = self.shape
        for i in range(h):
            for j in range(w):
                p = torch.sigmoid(self.forward(z, x)[:, 0, i, j])
                x[:, 0, i, j] = torch.bernoulli(p, generator=generator)
        return x


def make_encoder(name: str, shape, latent: int, hidden: Optional[int] = None, layers: Optional[int] = None) -> nn.Module:
    kw = {} if hidden is None else {"hidden": hidden}
    if layers is not None and name == "mlp":
        kw["layers"] = layers
    if name == "mlp":
        return MLPEncoder(shape, latent, **kw)
    if name == "conv":
        return ConvEncoder(shape, latent, **kw)
    if name == "linear":
        return LinearEncoder(shape, latent)
    raise ValueError(f"unknown encoder {name!r}; choose one of {', '.join(ENCODERS)}")


def make_decoder(name: str, shape, latent: int, hidden: Optional[int] = None, layers: Optional[int] = None) -> nn.Module:
    kw = {} if hidden is None else {"hidden": hidden}
    if layers is not None and name == "mlp":
        kw["layers"] = layers
    if name == "mlp":
        return MLPDecoder(shape, latent, **kw)
    if name == "conv":
        return ConvDecoder(shape, latent, **kw)
    if name == "pixelcnn":
        return PixelCNNDecoder(shape, latent)
    if name == "linear":
        return LinearDecoder(shape, latent)
    raise ValueError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
