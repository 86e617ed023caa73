"""Full-dataset MMD at scale: streamed symmetric tiles, torch.distributed, one-pass permutation tests.

    sources.py   the data: tensors, numpy / memory-mapped arrays, chunked iterables
    planning.py  memory budget -> blocks, tile pairs and their split among ranks, the tile loop
    api.py       mmd_full, mmd_test (the public functions; how it works is in its docstring)
    kid.py       kid: the exact Kernel Inception Distance and its standard error
    agg.py       mmd_agg: the aggregated test over a bandwidth collection (MMDAgg)
    ksd.py       ksd_test, ksd_agg: goodness-of-fit by the wild bootstrap, one pass (KSDAgg)
"""

from infovae_kernels.scale.api import MEDIAN_EXACT_LIMIT, MMDTestResult, mmd_full, mmd_test
from infovae_kernels.scale.agg import MMDAggResult, mmd_agg
from infovae_kernels.scale.kid import KIDResult, kid
from infovae_kernels.scale.ksd import KSDAggResult, KSDTestResult, ksd_agg, ksd_test
from infovae_kernels.scale.planning import DEFAULT_MAX_MEMORY, parse_memory

__all__ = ["mmd_full", "mmd_test", "MMDTestResult", "kid", "KIDResult", "mmd_agg", "MMDAggResult", "ksd_test", "KSDTestResult", "ksd_agg", "KSDAggResult", "parse_memory", "DEFAULT_MAX_MEMORY", "MEDIAN_EXACT_LIMIT"]
