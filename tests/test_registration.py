"""Only the primitives are registered ops: opcheck on each of them for every compiled backend, and
torch.compile(fullgraph=True) of the public functions, which must trace through to the primitives."""

import pytest
import torch

import infovae_kernels as ik
from infovae_kernels import kernels
from conftest import DEVICE_BACKENDS

NAMESPACES = {"cpu": "infovae", "cuda": "infovae", "triton": "infovae_triton"}
PAIRS = sorted((d, b) for d, b in set(DEVICE_BACKENDS) if b in NAMESPACES)


def _inputs(device, n=9, m=7, d=3, dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_(grad)
    y = (torch.randn(m, d, generator=g, dtype=dtype) + 0.5).to(device).requires_grad_(grad)
    return x, y


def _params(kernel, sigmas, d, device):
    one = torch.ones((), dtype=torch.float64)
    return kernels.kernel_params(kernel, torch.tensor(sigmas, dtype=torch.float64), d, one, torch.float32).to(device)


@pytest.mark.parametrize("device,backend", PAIRS)
def test_opcheck_primitives(device, backend):
    x, y = _inputs(device)
    v = torch.randn(7, 2, device=device)
    a = torch.randn(9, 2, device=device)
    w = torch.randn(9, 3, device=device)
    ops = getattr(torch.ops, NAMESPACES[backend])
    rbf, imq = _params("rbf", [1.0, 2.0], 3, device), _params("imq", [0.5], 3, device)
    torch.library.opcheck(ops.gram.default, (x, y, rbf, "rbf", False))
    torch.library.opcheck(ops.gram.default, (x, y, imq, "imq", True))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, rbf, "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, x, a, None, imq, "imq", True))
    torch.library.opcheck(ops.quad_form.default, (x, w, None, rbf, "rbf", True, False))
    torch.library.opcheck(ops.quad_form.default, (x, w, w.flip(0), imq, "imq", False, True))


def test_public_ops_are_not_registered_ops():
    """The public layer is plain Python over the primitives: no wrapper op around them."""
    assert not hasattr(torch.ops, "infovae_kernels") or not any(
        hasattr(torch.ops.infovae_kernels, name) for name in ("mmd", "kernel_sum", "rbf_gram"))


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [[0.5, 1.5], "median"])
def test_compile_fullgraph_matches_eager(sigma):
    torch._dynamo.reset()
    x, y = _inputs("cpu", n=33, m=20, d=4, grad=True)

    def loss(a, b):
        return (ik.mmd(a, b, sigma=sigma) + ik.MMDLoss(sigma=sigma, estimator="unbiased")(a, b)
                + ik.kernel_sum(a, b).mean() + ik.rbf_gram(a, b, sigma=0.9).mean())

    compiled = torch.compile(loss, fullgraph=True)
    value = compiled(x, y)
    gx, gy = torch.autograd.grad(value, (x, y))
    eager = loss(x, y)
    ex, ey = torch.autograd.grad(eager, (x, y))
    torch.testing.assert_close(value, eager)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(gy, ey)


@pytest.mark.slow
def test_compile_fullgraph_new_kernels_and_bandwidth_gradient():
    """laplacian, energy, the dot kernels and a learnable bandwidth trace through too."""
    torch._dynamo.reset()
    x, y = _inputs("cpu", n=31, m=22, d=4, grad=True)
    sigma = torch.tensor([0.6, 1.4], requires_grad=True)

    def loss(a, b, s):
        return (ik.mmd(a, b, kernel="laplacian", sigma=s) + ik.mmd(a, b, kernel="energy")
                + ik.mmd(a, b, kernel="polynomial", estimator="unbiased") + ik.mmd(a, b, sigma=s))

    value = torch.compile(loss, fullgraph=True)(x, y, sigma)
    got = torch.autograd.grad(value, (x, y, sigma))
    eager = loss(x, y, sigma)
    want = torch.autograd.grad(eager, (x, y, sigma))
    torch.testing.assert_close(value, eager)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.8, "median"])
def test_compile_fullgraph_svgd(sigma):
    torch._dynamo.reset()
    x, _ = _inputs("cpu", n=25, d=3)
    compiled = torch.compile(lambda a: ik.svgd_direction(a, -a, sigma=sigma), fullgraph=True)
    torch.testing.assert_close(compiled(x), ik.svgd_direction(x, -x, sigma=sigma))


def test_resolve_is_a_constant_under_compile_without_importing_dynamo():
    # backends marks resolve the way torch.compiler.assume_constant_result does, without importing
    # torch._dynamo at `import infovae_kernels`; if torch changes what the decorator sets, this fails
    marked = torch.compiler.assume_constant_result(lambda: 0)
    assert [a for a in vars(marked) if "dynamo" in a] == ["_dynamo_marked_constant"]
    assert ik.backends.resolve._dynamo_marked_constant is True
    import subprocess
    import sys

    code = "import sys, infovae_kernels; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
