"""nn.Module front ends of the functional ops."""

from __future__ import annotations

from torch import Tensor, nn

from infovae_kernels import ops as F
from infovae_kernels._checks import Sigma
from infovae_kernels.kernels import Kernel


class MMDLoss(nn.Module):
    """Squared MMD between two samples as a loss: MMDLoss(...)(x, y, weights_x=None, weights_y=None); a
    batch x (B, N, d), y (B, M, d) gives (B,) (x_lengths, y_lengths for padded problems; see ik.mmd).
    A learnable bandwidth: MMDLoss(sigma=nn.Parameter(torch.tensor(1.0))) (a module parameter then)."""

    def __init__(self, kernel: Kernel = "rbf", sigma: Sigma = None, estimator: str = "biased",
                 backend: str = "auto") -> None:
        super().__init__()
        self.kernel, self.sigma, self.estimator, self.backend = kernel, sigma, estimator, backend

    def forward(self, x: Tensor, y: Tensor, weights_x: Tensor | None = None, weights_y: Tensor | None = None,
                x_lengths: Tensor | None = None, y_lengths: Tensor | None = None) -> Tensor:
        return F.mmd(x, y, kernel=self.kernel, sigma=self.sigma, estimator=self.estimator, weights_x=weights_x,
                     weights_y=weights_y, x_lengths=x_lengths, y_lengths=y_lengths, backend=self.backend)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel!r}, sigma={self.sigma!r}, estimator={self.estimator!r}, backend={self.backend!r}"


class RBFKernel(nn.Module):
    """RBF Gram matrix K(x, y) (y defaults to x)."""

    def __init__(self, sigma: Sigma = None, backend: str = "auto") -> None:
        super().__init__()
        self.sigma, self.backend = sigma, backend

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return F.rbf_gram(x, y, sigma=self.sigma, backend=self.backend)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma!r}, backend={self.backend!r}"
