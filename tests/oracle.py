"""The float64 oracle: textbook formulas on materialised matrices, independent of the package's
kernels (torch.cdist distances, explicit sums), differentiable by plain torch autograd."""

import torch


def kernel_matrix(x, y, sigmas, kernel="rbf"):
    """rbf, imq, laplacian (GeomLoss' exp(-|x - y| / sigma)), energy (-|x - y|), or a Polynomial
    (torchmetrics' (gamma x.y + coef)^degree, gamma None = 1/d); sigmas is ignored by the last two."""
    x, y = x.double(), y.double()
    d = x.shape[1]
    if not isinstance(kernel, str):
        gamma = 1.0 / d if kernel.gamma is None else kernel.gamma
        return (x @ y.T * gamma + kernel.coef) ** kernel.degree
    r = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    r2 = r.square()
    if kernel == "rbf":
        return sum(torch.exp(-r2 / (2 * s * s)) for s in sigmas)
    if kernel == "laplacian":
        return sum(torch.exp(-r / s) for s in sigmas)
    if kernel == "energy":
        return -r
    return sum((2 * d * s * s) / (2 * d * s * s + r2) for s in sigmas)


def mmd(x, y, sigmas, kernel="rbf", unbiased=False, wx=None, wy=None):
    n, m = x.shape[0], y.shape[0]
    wx = torch.full((n,), 1.0 / n, dtype=torch.float64) if wx is None else wx.double() / wx.double().sum()
    wy = torch.full((m,), 1.0 / m, dtype=torch.float64) if wy is None else wy.double() / wy.double().sum()
    kxx, kyy, kxy = (kernel_matrix(a, b, sigmas, kernel) for a, b in ((x, x), (y, y), (x, y)))
    if not unbiased:
        return wx @ kxx @ wx + wy @ kyy @ wy - 2 * wx @ kxy @ wy
    off = lambda k, w: (w @ k @ w - (w * w * torch.diagonal(k)).sum()) / (1 - (w * w).sum())  # noqa: E731
    return off(kxx, wx) + off(kyy, wy) - 2 * wx @ kxy @ wy


def kernel_sum(x, y, v, sigmas, kernel="rbf"):
    return kernel_matrix(x, y, sigmas, kernel) @ v.double()


def svgd_direction(x, score, sigma):
    """phi_i = (1/n) sum_j [k(x_j, x_i) score_j + grad_{x_j} k(x_j, x_i)]; for a translation-invariant
    kernel grad_{x_j} k(x_j, x_i) = -grad_{x_i} k(x_j, x_i), which autograd gives per column i."""
    xi = x.double().detach().requires_grad_(True)
    k = kernel_matrix(x.double().detach(), xi, [sigma])  # k[j, i]
    (grad_xi,) = torch.autograd.grad(k.sum(), xi)
    return (k.detach().T @ score.double() - grad_xi) / x.shape[0]
