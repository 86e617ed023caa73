"""infovae-kernels: fused pairwise kernel reductions (Gram matrices, MMD, KID, Stein directions) with
autograd, as PyTorch custom ops on four backends (triton, cuda, cpu, torch); kernel Stein discrepancies,
goodness-of-fit tests and Stein thinning."""

from infovae_kernels import backends, metrics
from infovae_kernels.kernels import Polynomial
from infovae_kernels.ops import MMDPower, kernel_sum, ksd, mmd, mmd_power, rbf_gram, stein_thinning, svgd_direction
from infovae_kernels.nn import MMDLoss, RBFKernel
from infovae_kernels.samples_loss import SamplesLoss
from infovae_kernels.scale import (KIDResult, KSDAggResult, KSDTestResult, MMDAggResult, MMDTestResult, kid, ksd_agg,
                                   ksd_test, mmd_agg, mmd_full, mmd_test)

__all__ = ["backends", "rbf_gram", "kernel_sum", "mmd", "svgd_direction", "MMDLoss", "RBFKernel", "SamplesLoss",
           "mmd_full", "mmd_test", "MMDTestResult", "mmd_agg", "MMDAggResult", "mmd_power", "MMDPower", "metrics", "kid", "KIDResult",
           "Polynomial", "ksd", "ksd_test", "KSDTestResult", "ksd_agg", "KSDAggResult", "stein_thinning"]
__version__ = "0.2.0"
