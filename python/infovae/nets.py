"""Encoders (diagonal Gaussian q(z|x)) and decoders (the parameters of p(x|z)) chosen by name.

encoders: "mlp", "conv" (DCGAN-like, images whose side is a multiple of 4, e.g. 28 x 28), "linear"
decoders: "mlp", "conv", "pixelcnn" (two-stack gated PixelCNN conditioned on z, depth `layers`, binary images),
"linear"

An encoder maps x (N, *shape) to (mu, h), each (N, latent); the model turns h into the std of q(z|x). A decoder maps z to the logits
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
    centre pixel, mask "B" includes it). Kept for the one-stack variant's tests and old checkpoints."""

    def __init__(self, mask: str, cin: int, cout: int, k: int):
        super().__init__(cin, cout, k, padding=k // 2)
        m = torch.ones_like(self.weight)
        m[:, :, k // 2, k // 2 + (mask == "B"):] = 0
        m[:, :, k // 2 + 1:] = 0
        self.register_buffer("mask", m)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _down(v: Tensor) -> Tensor:
    """Shift down one row (row r gets row r - 1; row 0 gets zeros)."""
    return F.pad(v, (0, 0, 1, 0))[:, :, :-1, :]


class GatedLayer(nn.Module):
    """One two-stack gated layer (van den Oord et al. 2016, "Conditional image generation with PixelCNN
    decoders"), conditioned on z, without the blind spot of a masked 3x3 stack: forward = vertical() then
    horizontal(), the horizontal half fed the vertical half's pre-gate activation shifted down one row, so
    h_out(r, c) sees only pixels before (r, c) in raster order and v_out(r) only rows <= r.
    Both gates are tanh(f) * sigmoid(g) with V z added; the horizontal stack is residual after layer 0."""

    def __init__(self, cin: int, ch: int, latent: int, k: int, first: bool):
        super().__init__()
        self.k, self.first = k, first
        self.v_reach = k // 2  # rows above r that va(r) sees
        self.h_reach = k // 2 + first  # columns left of c that h_out(r, c) sees in its input h
        self.vconv = nn.Conv2d(cin, 2 * ch, (k // 2 + 1, k))
        self.hconv = nn.Conv2d(cin, 2 * ch, (1, k // 2 + 1))
        self.v2h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.cond_v = nn.Linear(latent, 2 * ch)
        self.cond_h = nn.Linear(latent, 2 * ch)
        self.hout = nn.Conv2d(ch, ch, 1)

    @staticmethod
    def _gate(a: Tensor) -> Tensor:
        f, g = a.chunk(2, dim=1)
        return torch.tanh(f) * torch.sigmoid(g)

    def vertical(self, v: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """(v_out, va): va(r) is a (k//2 + 1) x k convolution over input rows r - k//2 .. r (zeros above the
        top), every column within k//2; v_out = gate(va + V_v z). Both at row r see input rows <= r only,
        so a block of rows gives exact outputs at the rows whose k//2 rows above are in it (or are the top)."""
        k = self.k
        va = self.vconv(F.pad(v, (k // 2, k // 2, k // 2, 0)))
        return self._gate(va + self.cond_v(z)[:, :, None, None]), va

    def horizontal(self, h: Tensor, above: Tensor, z: Tensor) -> Tensor:
        """h_out(r, c): a 1 x (k//2 + 1) convolution over h(r, c - k//2 .. c) (the first layer shifted right
        by one: columns < c, the "A" mask), plus `above` = v2h(va of row r - 1), which sees input rows < r
        only, plus V_h z. Nothing from another row of h, so it runs on one row; a block of columns gives
        exact outputs at the columns whose h_reach columns to the left are in it (or are the left edge)."""
        k = self.k
        hin = F.pad(h, (k // 2 + 1, 0, 0, 0))[:, :, :, :-1] if self.first else F.pad(h, (k // 2, 0, 0, 0))
        h_new = self.hout(self._gate(self.hconv(hin) + above + self.cond_h(z)[:, :, None, None]))
        return h_new if self.first else h + h_new

    def forward(self, v: Tensor, h: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        v_out, va = self.vertical(v, z)
        return v_out, self.horizontal(h, self.v2h(_down(va)), z)


class PixelCNNDecoder(nn.Module):
    """A gated two-stack conditional PixelCNN for binary images: p(x|z) = prod_i p(x_i | x_<i, z).

    `layers` gated layers (the first a 7 x 7 "A" layer, the rest 3 x 3), `channels` channels, every
    layer conditioned on z, then 1x1 convs -> logits. The receptive field has no blind spot. Training is
    one parallel pass (teacher forcing); sampling caches the vertical stacks row by row (see sample()).
    The authors used 12 layers."""

    autoregressive = True

    def __init__(self, shape, latent: int, channels: int = 32, layers: int = 4, **_):
        super().__init__()
        if len(shape) != 3 or shape[0] != 1:
            raise ValueError(f"the pixelcnn decoder needs single-channel images (1, H, W), got shape {tuple(shape)}")
        self.shape = tuple(shape)
        self.layers = nn.ModuleList([GatedLayer(1, channels, latent, 7, True)] +
                                    [GatedLayer(channels, channels, latent, 3, False) for _ in range(layers - 1)])
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, z: Tensor, x: Optional[Tensor] = None) -> Tensor:
        if x is None:
            raise ValueError("the pixelcnn decoder needs x for its logits (teacher forcing); use sample()")
        v = h = 2 * x - 1
        for layer in self.layers:
            v, h = layer(v, h, z)
        return self.head(h)

    def sample(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Autoregressive draws; the uniforms come from `generator` on the CPU (same draws on any device)."""
        return self._sample(z, generator)[0]

    @torch.no_grad()
    def _sample(self, z: Tensor, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        """(x, logits): the draws and the logit each pixel was drawn from, the same as forward(z, x) gives.

        The logit of (i, j) is the head of the last horizontal stack at (i, j), which sees row i at columns
        < j and each layer's va at row i - 1 (which sees rows < i): once row i - 1 is drawn, each layer's
        v2h(va(i - 1)) is computed once from a window of the rows above (tapered: each layer keeps only the
        rows the later layers still read), then each pixel of row i runs only the horizontal stacks on a
        window of columns of row i. Pixel (i, j) is 1 when u[i, j] < sigmoid(logit), u as a per-pixel
        full pass would draw it."""
        n, (_, rows, cols) = z.shape[0], self.shape
        x = z.new_zeros(n, *self.shape)
        logits = z.new_zeros(n, rows, cols)
        u = torch.rand(n, rows, cols, generator=generator, dtype=z.dtype).to(z.device)
        # span_v[l] / span_h[l]: the rows / columns of layer l's input that the stack's last row / column sees
        span_v = [1 + sum(m.v_reach for m in self.layers[l:]) for l in range(len(self.layers) + 1)]
        span_h = [1 + sum(m.h_reach for m in self.layers[l:]) for l in range(len(self.layers) + 1)]
        va_above = [z.new_zeros(n, layer.vconv.out_channels, 1, cols) for layer in self.layers]  # _down: row -1 = 0
        for i in range(rows):
            above = [layer.v2h(a) for layer, a in zip(self.layers, va_above)]
            for j in range(cols):
                h = 2 * x[:, :, i:i + 1, max(0, j + 1 - span_h[0]):j + 1] - 1
                for layer, a, keep in zip(self.layers, above, span_h[1:]):
                    h = layer.horizontal(h, a[..., j + 1 - h.shape[-1]:j + 1], z)[..., -keep:]
                logits[:, i, j] = self.head(h)[:, 0, 0, -1]
                x[:, 0, i, j] = (u[:, i, j] < torch.sigmoid(logits[:, i, j])).to(x.dtype)
            v = 2 * x[:, :, max(0, i + 1 - span_v[0]):i + 1] - 1
            for l, (layer, keep) in enumerate(zip(self.layers, span_v[1:])):
                v, va = layer.vertical(v, z)
                va_above[l], v = va[:, :, -1:], v[:, :, -keep:]
        return x, logits


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
        return PixelCNNDecoder(shape, latent, **({} if layers is None else {"layers": layers}))
    if name == "linear":
        return LinearDecoder(shape, latent)
    raise ValueError(f"unknown decoder {name!r}; choose one of {', '.join(DECODERS)}")
