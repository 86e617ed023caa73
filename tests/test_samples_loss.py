"""ik.SamplesLoss against GeomLoss' SamplesLoss (backend "tensorized"), values and gradients, and its
argument errors.

GeomLoss clamps r^2 >= 1e-8 (in units of blur for laplacian) before its square root, so it counts each
self-pair of laplacian and energy as exp(-1e-4) or -1e-4 instead of 1 or 0; `geomloss_exact` takes that
known term back out, differentiably, and is then the exact formula to rounding.

The batched tests (names ending in _batched) need ik.mmd on (B, N, d) inputs: they compare against
GeomLoss' batched call and a loop of 2-D ik.mmd calls.
"""

import math

import pytest
import torch
from geomloss import SamplesLoss as GeomLoss

import infovae_kernels as ik

N, M, D, B = 127, 257, 3, 3
GEOMLOSS_LOSSES = ["gaussian", "laplacian", "energy"]
SELF_PAIR_SHIFT = {"gaussian": 0.0, "laplacian": math.expm1(-1e-4), "energy": -1e-4}  # k_clamped(0) - k(0)


def _data(batch=None, dtype=torch.float64, seed=0):
    """x (N, d), y (M, d) or batched (B, N, d), (B, M, d), and probability weights a, b for them."""
    g = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, N, D, generator=g, dtype=torch.float64)
    y = 1.2 * torch.randn(*lead, M, D, generator=g, dtype=torch.float64) + 0.3
    a = torch.rand(*lead, N, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(*lead, M, generator=g, dtype=torch.float64) + 0.1
    a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
    return [t.to(dtype) for t in (x, y, a, b)]


def uniform(points):
    n = points.shape[-2]
    return torch.full(points.shape[:-1], 1.0 / n, dtype=points.dtype)


def geomloss_exact(loss, blur, a, x, b, y):
    """GeomLoss' tensorized loss without its self-pair clamp term 1/2 shift (sum a^2 + sum b^2)."""
    value = GeomLoss(loss, blur=blur, backend="tensorized")(a, x, b, y)
    return value - 0.5 * SELF_PAIR_SHIFT[loss] * (a.square().sum(-1) + b.square().sum(-1))


def rel_err(got, want):
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).abs().max() / want.abs().max())


def _check_values(loss, dtype, weighted, batch):
    blur = 0.7
    x, y, a, b = _data(batch, dtype)
    x64, y64, a64, b64 = _data(batch)
    if not weighted:
        a, b, a64, b64 = None, None, uniform(x64), uniform(y64)
    ours = ik.SamplesLoss(loss, blur=blur)
    got = ours(x, y) if a is None else ours(a, x, b, y)
    want = geomloss_exact(loss, blur, a64, x64, b64, y64)
    assert got.dtype == dtype and got.shape == (() if batch is None else (batch,))
    assert rel_err(got, want) <= (1e-10 if dtype == torch.float64 else 1e-5)
    if dtype == torch.float64 and loss == "gaussian":  # no clamp term: GeomLoss' own value
        assert rel_err(got, GeomLoss(loss, blur=blur, backend="tensorized")(a64, x64, b64, y64)) <= 1e-10
    return got


@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("loss", GEOMLOSS_LOSSES)
def test_values_match_geomloss(loss, dtype, weighted):
    _check_values(loss, dtype, weighted, batch=None)


@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("loss", GEOMLOSS_LOSSES)
def test_values_match_geomloss_batched(loss, dtype, weighted):
    got = _check_values(loss, dtype, weighted, batch=B)
    x, y, a, b = _data(B, dtype)
    kernel = {"gaussian": "rbf"}.get(loss, loss)
    sigma = None if loss == "energy" else 0.7
    loop = torch.stack([ik.mmd(x[i], y[i], kernel=kernel, sigma=sigma, weights_x=a[i] if weighted else None,
                               weights_y=b[i] if weighted else None) / 2 for i in range(B)])
    assert rel_err(got, loop) <= (1e-12 if dtype == torch.float64 else 1e-6)


def _check_gradients(loss, batch):
    """x, y and the weights through a softmax (the directions that keep sum(a) = 1), float64."""
    blur = 0.7
    x, y, a, b = _data(batch)
    leaves = [t.clone().requires_grad_() for t in (x, y, a.log(), b.log())]
    grads = []
    for fn in (lambda *w: ik.SamplesLoss(loss, blur=blur)(*w), lambda *w: geomloss_exact(loss, blur, *w)):
        xs, ys, la, lb = (t.detach().clone().requires_grad_() for t in leaves)
        fn(la.softmax(-1), xs, lb.softmax(-1), ys).sum().backward()
        grads.append([xs.grad, ys.grad, la.grad, lb.grad])
    for name, got, want in zip(("x", "y", "a", "b"), *grads):
        assert rel_err(got, want) <= 1e-9, name


@pytest.mark.parametrize("loss", GEOMLOSS_LOSSES)
def test_gradients_match_geomloss(loss):
    _check_gradients(loss, batch=None)


@pytest.mark.parametrize("loss", GEOMLOSS_LOSSES)
def test_gradients_match_geomloss_batched(loss):
    _check_gradients(loss, batch=B)


def test_weight_gradient_is_geomloss_minus_its_mean_under_the_weights():
    x, y, a, b = _data()
    a1, b1, a2, b2 = (t.clone().requires_grad_() for t in (a, b, a, b))
    ik.SamplesLoss("gaussian", blur=0.7)(a1, x, b1, y).backward()
    GeomLoss("gaussian", blur=0.7, backend="tensorized")(a2, x, b2, y).backward()
    assert rel_err(a1.grad, a2.grad - (a2.grad * a).sum()) <= 1e-9
    assert rel_err(b1.grad, b2.grad - (b2.grad * b).sum()) <= 1e-9


def test_tensor_blur_gets_geomloss_gradient():
    x, y, a, b = _data()
    ours = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_()
    ik.SamplesLoss("gaussian", blur=ours)(a, x, b, y).backward()
    GeomLoss("gaussian", blur=theirs, backend="tensorized")(a, x, b, y).backward()
    assert rel_err(ours.grad, theirs.grad) <= 1e-9


def test_several_blurs_sum_the_losses():
    x, y, a, b = _data()
    got = ik.SamplesLoss("gaussian", blur=[0.3, 2.0])(a, x, b, y)
    want = sum(GeomLoss("gaussian", blur=s, backend="tensorized")(a, x, b, y) for s in (0.3, 2.0))
    assert rel_err(got, want) <= 1e-10


def test_imq_is_half_the_dense_formula():
    x, y, _, _ = _data()
    c = 2 * D * 0.7**2  # C = 2 d blur^2
    def mean_k(u, v):
        return (c / (c + torch.cdist(u, v).square())).mean()
    want = 0.5 * (mean_k(x, x) + mean_k(y, y) - 2 * mean_k(x, y))
    assert rel_err(ik.SamplesLoss("imq", blur=0.7)(x, y), want) <= 1e-10


def test_geomloss_weight_shapes_and_ignored_arguments():
    """(N, 1) weights; GeomLoss' arguments its kernel losses ignore; its exact backends mean "auto"."""
    x, y, a, b = _data()
    want = ik.SamplesLoss("laplacian", blur=0.7)(a, x, b, y)
    ignored = ik.SamplesLoss("laplacian", p=1, blur=0.7, reach=0.5, diameter=3.0, scaling=0.9, truncate=None,
                             cost=lambda u, v: u, cluster_scale=0.1, debias=False, verbose=True, backend="online")
    assert ignored.backend == "auto"
    assert torch.equal(ignored(a[:, None], x, b[:, None], y), want)
    assert ik.SamplesLoss("energy", blur=123.0)(x, y) == ik.SamplesLoss("energy")(x, y)  # blur unused


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss="sinkhorn"), "optimal-transport.*gaussian"),
    (dict(loss="hausdorff"), "optimal-transport.*laplacian"),
    (dict(loss="gauss"), "loss must be one of"),
    (dict(kernel=lambda x, y, blur, **kw: x @ y.T), "kernel: custom"),
    (dict(potentials=True), "potentials"),
    (dict(backend="multiscale"), "multiscale.*'auto'"),
    (dict(backend="keops"), "backend must be"),
])
def test_unsupported_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ik.SamplesLoss(**kwargs)


def test_bad_calls_name_the_argument():
    x, y, a, b = _data()
    xb, yb, ab, bb = _data(B)
    loss = ik.SamplesLoss("gaussian", blur=0.7)
    cases = [((x, y, a), "takes \\(x, y\\) or \\(a, x, b, y\\)"),
             ((a, a, x, b, b, y), "six-argument"),
             ((x, yb), "x and y must both be 2-D"),
             ((xb, yb[:2]), "one batch size"),
             ((x[None, None], y[None, None]), "x must be a tensor \\(N, d\\) or \\(B, N, d\\)"),
             ((x, a, y, b), "x must be a tensor .* got \\(127,\\); call as .* loss\\(a, x, b, y\\)"),  # order
             ((a, x, b[:5], y), "b \\(the weights of y\\) must have shape \\(257,\\)"),
             ((ab, x, b, y), "a \\(the weights of x\\)"),
             ((ab[0], xb, bb, yb), "a \\(the weights of x\\) must have shape \\(3, 127\\)"),
             ((a * 2, x, b, y), "a must sum to 1"),
             ((ab, xb, bb * 0.5, yb), "b must sum to 1")]
    for args, match in cases:
        with pytest.raises(ValueError, match=match):
            loss(*args)
    with pytest.raises(ValueError, match="features"):  # ik.mmd's check
        loss(x, y[:, :2])
