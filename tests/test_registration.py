"""The ops as torch.library custom ops: opcheck on every registered op, torch.compile(fullgraph=True)
of the public functions, and agreement of the Triton schemas with the C++ ones."""

import pytest
import torch

import infovae_kernels as ik
from conftest import DEVICE_BACKENDS

PAIRS = sorted(set(DEVICE_BACKENDS))


def _inputs(device, n=9, m=7, d=3, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_(grad)
    y = (torch.randn(m, d, generator=g, dtype=dtype) + 0.5).to(device).requires_grad_(grad)
    return x, y


@pytest.mark.parametrize("device,backend", PAIRS)
def test_opcheck_public_ops(device, backend):
    x, y = _inputs(device, grad=True)
    wx = torch.full((9,), 1 / 9, device=device)
    wy = torch.rand(7, device=device).requires_grad_(True)
    v = torch.randn(7, 2, device=device, requires_grad=True)
    ops = torch.ops.infovae_kernels
    torch.library.opcheck(ops.mmd.default, (x, y, wx, wy, [0.5, 1.0], "rbf", False, backend, [True, True, False, True]))
    torch.library.opcheck(ops.mmd.default, (x, y, wx, wy, [1.0], "imq", True, backend, [False] * 4))
    torch.library.opcheck(ops.kernel_sum.default, (x, y, v, [1.0], "imq", backend))
    torch.library.opcheck(ops.rbf_gram.default, (x, y, [0.7, 1.1], backend))


NATIVE = ik.backends.available()["cpu"].available


@pytest.mark.skipif(not NATIVE, reason="the C++ extension is not built: " + ik.backends.available()["cpu"].reason)
@pytest.mark.parametrize("device", [d for d, b in PAIRS if b in ("cpu", "cuda")])
def test_opcheck_native_primitives(device):
    x, y = _inputs(device)
    v = torch.randn(7, 2, device=device)
    a = torch.randn(9, 2, device=device)
    w = torch.randn(9, 3, device=device)
    ops = torch.ops.infovae
    torch.library.opcheck(ops.rbf_gram.default, (x, y, [1.0, 2.0]))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, [1.0], "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, x, a, None, [0.5], "imq", True))
    torch.library.opcheck(ops.quad_form.default, (x, w, [1.0], "rbf", True))


@pytest.mark.slow
def test_compile_fullgraph_mmd_matches_eager():
    torch._dynamo.reset()
    x, y = _inputs("cpu", n=33, m=20, d=4, grad=True)

    def loss(a, b):
        return ik.mmd(a, b, sigma=[0.5, 1.5]) + ik.kernel_sum(a, b).mean() + ik.rbf_gram(a, b, sigma=0.9).mean()

    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(x, y)
    gx, gy = torch.autograd.grad(value, (x, y))
    eager = loss(x, y)
    ex, ey = torch.autograd.grad(eager, (x, y))
    torch.testing.assert_close(value, eager)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gy, ey)
