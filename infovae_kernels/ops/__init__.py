"""The public ops, one module each: the function, its algebra over the backend primitives
(gram, pair_reduce, quad_form; see backends/reference.py) and its backward. ksd and stein_thinning
compute the Stein kernel (kernels.stein_kernel) on the torch backend."""

from infovae_kernels.ops.kernel_sum import kernel_sum
from infovae_kernels.ops.ksd import ksd
from infovae_kernels.ops.mmd import mmd
from infovae_kernels.ops.mmd_power import MMDPower, mmd_power
from infovae_kernels.ops.rbf_gram import rbf_gram
from infovae_kernels.ops.stein_thinning import stein_thinning
from infovae_kernels.ops.svgd import svgd_direction

__all__ = ["kernel_sum", "mmd", "mmd_power", "MMDPower", "rbf_gram", "svgd_direction", "ksd", "stein_thinning"]
