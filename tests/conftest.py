"""Shared fixtures: which backends run on which devices here, and the float64 oracle tolerances.

Without a GPU, the Triton kernels run on CPU tensors under TRITON_INTERPRET=1, which must be set
before triton is first imported.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import infovae_kernels as ik  # noqa: E402

from infovae_kernels.backends import native  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# The CPU kernel variants this build has and this CPU runs (csrc/cpu compiled per capability).
CPU_CAPABILITIES = [c for c in native.CAPABILITIES + ("native",) if c in native.CPU_VARIANTS and
                    (c == "native" or c in native.CPU_SUPPORTED)]
_STATUS = ik.backends.available()


def backends_for(device: str) -> list[str]:
    """Backends that run on `device` in this install, in the registry's order."""
    runnable = ik.backends.runnable(device)
    return [name for name in ik.backends.NAMES if name in runnable]


DEVICE_BACKENDS = [(d, b) for d in DEVICES for b in backends_for(d)]


@pytest.fixture(params=CPU_CAPABILITIES)
def cpu_capability(request):
    """Runs the test once per CPU kernel variant, installed for its duration."""
    previous = native.set_cpu_capability(request.param)
    yield request.param
    if previous:
        native.set_cpu_capability(previous)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds; still runs in CI")
    config.addinivalue_line("markers", "gpu: needs a CUDA device (run by benchmarks/gpu_check.sh)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; runs in benchmarks/gpu_check.sh")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config):
    lines = [f"torch {torch.__version__}; devices {DEVICES}"]
    for name, status in _STATUS.items():
        lines.append(f"backend {name}: {'yes' if status.available else 'no'} ({status.reason})")
    return lines


@pytest.fixture(autouse=True)
def _cuda_faults_reported_by_their_test():
    """A kernel fault on the GPU (an illegal address) surfaces at the next synchronisation, often in a
    later test; synchronising after each test makes the test that launched it the one that errors."""
    yield
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
