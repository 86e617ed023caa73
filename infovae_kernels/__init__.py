"""infovae-kernels: fused pairwise kernel reductions (RBF/IMQ Gram matrices, MMD, Stein directions)
with autograd, as PyTorch custom ops on four backends (triton, cuda, cpu, torch)."""

from infovae_kernels import backends
from infovae_kernels.functional import kernel_sum, mmd, rbf_gram, svgd_direction
from infovae_kernels.nn import MMDLoss, RBFKernel

__all__ = ["backends", "rbf_gram", "kernel_sum", "mmd", "svgd_direction", "MMDLoss", "RBFKernel"]
__version__ = "0.1.0"
