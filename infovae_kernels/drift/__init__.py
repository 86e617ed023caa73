"""Drift detection on the fused engine: has the data a deployed model sees moved away from its reference?

| detector | question | test |
| --- | --- | --- |
| `MMDDrift` | is a batch x distributed like x_ref? | unbiased MMD^2, one-pass permutation test |
| `MMDDriftOnline` | has the stream changed, one instance at a time? | windowed MMD^2 against thresholds calibrated so that the expected run time without change is `ert` (Cobb et al. 2022) |
| `LearnedKernelDrift` | as MMDDrift, with a kernel trained for power on a split of the data | Liu et al. 2020's criterion, tested on the held-out part |

Results carry alibi-detect's field names (`to_dict()`); `detector.save(path)` and `load(path)` keep a detector in
one file, written atomically. Nothing N x N is stored anywhere. This package sits on the public ops and
the scale layer; nothing below it imports it.
"""

from infovae_kernels.drift._base import DriftResult, OnlineDriftResult, load
from infovae_kernels.drift.learned import DeepKernel, LearnedKernelDrift
from infovae_kernels.drift.offline import MMDDrift
from infovae_kernels.drift.online import MMDDriftOnline

__all__ = ["MMDDrift", "MMDDriftOnline", "LearnedKernelDrift", "DeepKernel", "DriftResult", "OnlineDriftResult", "load"]
