"""The public ops, one module each: the function, its algebra over the backend primitives
(gram, pair_reduce, quad_form; see backends/reference.py) and its backward. ksd builds on the
Stein primitives (stein_form, stein_moments; fused on the cpu backend, blocks of plain torch on any device)."""

from infovae_kernels.ops.kernel_sum import kernel_sum
from infovae_kernels.ops.ksd import ksd
from infovae_kernels.ops.mmd import mmd
from infovae_kernels.ops.mmd_power import MMDPower, mmd_power
from infovae_kernels.ops.rbf_gram import rbf_gram
from infovae_kernels.ops.stein_thinning import stein_thinning
from infovae_kernels.ops.svgd import svgd_direction

__all__ = ["kernel_sum", "mmd", "mmd_power", "MMDPower", "rbf_gram", "svgd_direction", "ksd", "stein_thinning"]
