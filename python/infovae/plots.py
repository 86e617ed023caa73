"""PNG figures: sample grids, the latent space coloured by class, q(z) against p(z), loss curves."""

from __future__ import annotations

import math

import numpy as np
import torch


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_grid(images: torch.Tensor, path: str, nrow: int = 10, title: str = "") -> None:
    """images (N, 1, H, W) in [0, 1] -> one PNG grid."""
    plt = _plt()
    x = images.detach().float().clamp(0, 1).numpy()
    n, _, h, w = x.shape
    ncol = nrow
    nr = math.ceil(n / ncol)
    grid = np.ones((nr * (h + 1) + 1, ncol * (w + 1) + 1))
    for i in range(n):
        r, c = divmod(i, ncol)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = x[i, 0]
    fig = plt.figure(figsize=(ncol * 0.5 + 0.2, nr * 0.5 + (0.4 if title else 0.2)))
    plt.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    plt.axis("off")
    if title:
        plt.title(title, fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def latent_scatter(mu: torch.Tensor, labels: torch.Tensor, path: str, title: str = "") -> None:
    """Posterior means; 2-D latents as they are, larger ones by their first two dimensions."""
    plt = _plt()
    z = mu.detach().double().numpy()
    fig = plt.figure(figsize=(4.2, 4))
    if z.shape[1] == 1:
        z = np.concatenate([z, np.zeros_like(z)], 1)
    sc = plt.scatter(z[:, 0], z[:, 1], c=labels.numpy(), cmap="tab10", s=4, alpha=0.7)
    plt.colorbar(sc, label="class")
    plt.xlabel("z1")
    plt.ylabel("z2" if mu.shape[1] > 1 else "")
    plt.title(title or ("latent space (posterior means" + (", first two dims)" if mu.shape[1] > 2 else ")")), fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def qz_vs_pz(z: torch.Tensor, path: str, title: str = "") -> None:
    """Left: density contours of q(z) (first two dims, z ~ q(z|x) over the data) against p(z) = N(0, I).
    Right: marginal histograms of every dimension (up to 10) against the N(0, 1) density."""
    plt = _plt()
    z = z.detach().double().numpy()
    fig, ax = plt.subplots(1, 2, figsize=(9, 4))
    lim = min(8.0, max(4.0, float(np.percentile(np.abs(z[:, :2]), 98)) * 1.2))  # outliers beyond 8 are clipped
    g = np.linspace(-lim, lim, 120)
    gx, gy = np.meshgrid(g, g)
    ax[0].contour(gx, gy, np.exp(-(gx ** 2 + gy ** 2) / 2) / (2 * np.pi), levels=5, colors="k", linewidths=0.8)
    if z.shape[1] >= 2:
        h, xe, ye = np.histogram2d(z[:, 0], z[:, 1], bins=60, range=[[-lim, lim], [-lim, lim]], density=True)
        from scipy.ndimage import gaussian_filter  # scipy ships with scikit-learn

        h = gaussian_filter(h, 1.5)
        xc, yc = (xe[:-1] + xe[1:]) / 2, (ye[:-1] + ye[1:]) / 2
        ax[0].contourf(xc, yc, h.T, levels=8, cmap="Blues", alpha=0.8)
        ax[0].scatter(z[:400, 0], z[:400, 1], s=2, c="tab:red", alpha=0.4)
    else:
        ax[0].hist(z[:, 0], bins=60, density=True, alpha=0.6)
    ax[0].set_title("q(z) (filled, red points) vs p(z) (black), dims 1-2", fontsize=9)
    ax[0].set_xlim(-lim, lim)
    ax[0].set_ylim(-lim, lim)
    t = np.linspace(-lim, lim, 200)
    for d in range(min(z.shape[1], 10)):
        ax[1].hist(z[:, d], bins=50, density=True, histtype="step", label=f"z{d + 1}")
    ax[1].plot(t, np.exp(-t ** 2 / 2) / np.sqrt(2 * np.pi), "k--", lw=2, label="N(0,1)")
    ax[1].set_xlim(-lim, lim)
    ax[1].legend(fontsize=6, ncol=2)
    ax[1].set_title("marginals of q(z) vs N(0, 1)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def curves(series: dict, path: str, ylabel: str, title: str = "", logy: bool = False) -> None:
    """series: name -> (xs, ys)."""
    plt = _plt()
    fig = plt.figure(figsize=(5, 3.5))
    for name, (xs, ys) in series.items():
        plt.plot(xs, ys, label=name)
    if logy:
        plt.yscale("log")
    plt.xlabel("training step")
    plt.ylabel(ylabel)
    plt.legend(fontsize=7)
    if title:
        plt.title(title, fontsize=9)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
