"""Batched problems: a leading batch dim through the primitives and the public ops, padded (ragged)
batches, torch.vmap / torch.func, torch.compile and the argument checks. The oracle of a batched call is
the loop of 2-D calls over its problems (bitwise for the cpu primitives, whose per-problem schedule does
not depend on the batch)."""

import pytest
import torch

import infovae_kernels as ik
from infovae_kernels.backends import reference as R
from conftest import DEVICE_BACKENDS

CPU_BACKENDS = [b for d, b in DEVICE_BACKENDS if d == "cpu" and b in ("cpu", "torch")]
NAMESPACES = {"cpu": "infovae", "cuda": "infovae", "triton": "infovae_triton"}
# (kernel, per-problem params of three problems): different bandwidths per problem
PARAMS = {"rbf": [[0.5, 0.1], [0.2, 1.0], [1.0, 2.0]], "imq": [[1.0], [2.0], [3.0]],
          "laplacian": [[1.0], [2.0], [0.5]], "energy": [[1.0], [1.0], [2.0]],
          "polynomial": [[1.0, 1.0, 2.0], [0.5, 0.0, 3.0], [1.0, 0.0, 1.0]]}


def _randn(*shape, dtype=torch.float64, seed=0, shift=0.0):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) + shift


def _params(kernel, b):
    return torch.tensor(PARAMS[kernel], dtype=torch.float64)[:b]


def _each(fn, *batched):
    """The loop of 2-D calls: fn(problem b's slices) for every b, outputs stacked."""
    outs = [fn(*(None if t is None else t[b] for t in batched)) for b in range(batched[0].shape[0])]
    if isinstance(outs[0], tuple):
        return tuple(torch.stack(o) for o in zip(*outs))
    return torch.stack(outs)


# ------------------------------------------------------------------------------------------ primitives
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kernel", list(PARAMS))
@pytest.mark.parametrize("b,n,m", [(1, 3, 1), (3, 127, 9), (2, 5, 257)])
def test_cpu_primitives_equal_their_2d_calls_bitwise(cpu_capability, kernel, dtype, b, n, m):
    ops, p = torch.ops.infovae, _params(kernel, b)
    x, y = _randn(b, n, 3, dtype=dtype), _randn(b, m, 3, dtype=dtype, seed=1, shift=0.3)
    v, a = _randn(b, m, 2, dtype=dtype, seed=2), _randn(b, n, 2, dtype=dtype, seed=3)
    z, w = torch.cat([x, y], 1), _randn(b, n + m, 3, dtype=dtype, seed=4)
    calls = [
        lambda x, y, p: ops.gram(x, y, p, kernel, True),
        lambda x, y, v, a, p: ops.pair_reduce(x, y, v, a, p, kernel, False),
        lambda x, v, p: ops.pair_reduce(x, x, v, None, p, kernel, True),
        lambda z, w, a, p: ops.quad_form(z, w, a, p, kernel, True, True),
        lambda z, w, p: ops.quad_form(z, w, None, p, kernel, False, False),
        lambda z, w, p: ops.quad_form(z, w[..., :1], w[..., 1:2], p, kernel, False, True),
    ]
    args = [(x, y, p), (x, y, v, a, p), (x, a, p), (z, w, w, p), (z, w, p), (z, w, p)]
    for call, arg in zip(calls, args):
        got, want = call(*arg), _each(call, *arg)
        for g, e in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            assert g.shape == e.shape and torch.equal(g, e)


def test_cpu_batch_of_large_problems_runs_them_in_order_with_the_same_bits():
    """Few large problems run one after another over all threads (cpu_ops.cpp's for_each_problem), many
    small ones in parallel: each problem's bits are its 2-D call's either way."""
    z, w = _randn(2, 3001, 3, dtype=torch.float32), _randn(2, 3001, 1, dtype=torch.float32, seed=1)
    p = torch.tensor([[0.3], [0.7]], dtype=torch.float64)
    got = torch.ops.infovae.quad_form(z, w, w, p, "rbf", False, True)
    want = _each(lambda z, w, p: torch.ops.infovae.quad_form(z, w, w, p, "rbf", False, True), z, w, p)
    assert all(torch.equal(g, e) for g, e in zip(got, want))


@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "polynomial"])
def test_reference_primitives_equal_their_2d_calls(kernel):
    p = _params(kernel, 3)
    x, y = _randn(3, 7, 70), _randn(3, 5, 70, seed=1)  # d > 64: the expansion path too
    z, w = torch.cat([x, y], 1), _randn(3, 12, 2, seed=2)
    got = R.quad_form(z, w, w, p, kernel, True, True)
    want = _each(lambda z, w, p: R.quad_form(z, w, w, p, kernel, True, True), z, w, p)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(R.gram(x, y, p, kernel, False), _each(lambda x, y, p: R.gram(x, y, p, kernel, False), x, y, p),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", sorted({b for _, b in DEVICE_BACKENDS if b in NAMESPACES}))
def test_opcheck_batched_primitives(backend):
    device = "cuda" if backend == "cuda" else "cpu"
    ops = getattr(torch.ops, NAMESPACES[backend])
    x, y = _randn(3, 9, 3, dtype=torch.float32).to(device), _randn(3, 7, 3, dtype=torch.float32, seed=1).to(device)
    v, a, w = (_randn(3, r, c, dtype=torch.float32, seed=s).to(device) for r, c, s in ((7, 2, 2), (9, 2, 3), (9, 3, 4)))
    p = _params("rbf", 3).to(device)
    torch.library.opcheck(ops.gram.default, (x, y, p, "rbf", False))
    torch.library.opcheck(ops.pair_reduce.default, (x, y, v, a, p, "rbf", False))
    torch.library.opcheck(ops.quad_form.default, (x, w, w.flip(1), p, "rbf", False, True))
    torch.library.opcheck(ops.quad_form.default, (x, w, None, p[:, :1], "rbf", True, False))


def test_batched_primitives_refuse_mismatched_batches():
    ops, p = torch.ops.infovae, _params("rbf", 3)
    z, w = _randn(3, 4, 2), _randn(3, 4, 1)
    with pytest.raises(RuntimeError, match="w must have the batch size"):
        ops.quad_form(z, w[:2], None, p, "rbf", False, False)
    with pytest.raises(RuntimeError, match="params must be"):
        ops.quad_form(z, w, None, p[0], "rbf", False, False)
    with pytest.raises(RuntimeError, match="y must be a 3-D tensor"):
        ops.gram(z, z[0], p, "rbf", False)
    q, s, g = ops.quad_form(z[:0], w[:0], None, p[:0], "rbf", False, True)
    assert q.shape == (0, 1) and s.shape == (0, 4, 1) and g.shape == (0, 0, 2)


# ------------------------------------------------------------------------------------------ public ops
KERNEL_SIGMAS = [("rbf", [0.5, 2.0]), ("imq", 1.0), ("laplacian", 1.0), ("energy", None), ("linear", None),
                 ("polynomial", None)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel,sigma", KERNEL_SIGMAS)
@pytest.mark.parametrize("b,n,m", [(1, 3, 2), (3, 127, 4), (2, 3, 257)])
def test_mmd_equals_the_loop_of_2d_calls(backend, estimator, kernel, sigma, b, n, m):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x, y = _randn(b, n, 3, dtype=dtype), _randn(b, m, 3, dtype=dtype, seed=1, shift=0.4)
        got = ik.mmd(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend)
        want = _each(lambda x, y: ik.mmd(x, y, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend), x, y)
        assert got.shape == (b,) and got.dtype == dtype
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_gradients_equal_the_loop_with_weights_and_per_problem_sigma(backend, estimator):
    x, y = _randn(3, 6, 2), _randn(3, 5, 2, seed=1, shift=0.3)
    wx, wy = _randn(3, 6, seed=2).abs() + 0.1, _randn(3, 5, seed=3).abs() + 0.1
    for sigma in (_randn(3, seed=4).abs() + 0.5, _randn(3, 2, seed=5).abs() + 0.5, torch.tensor(1.2, dtype=torch.float64),
                  "median"):
        coef = torch.arange(1.0, 4.0, dtype=torch.float64)
        leaves = [t.clone().requires_grad_() for t in (x, y, wx, wy)]
        s1 = sigma.clone().requires_grad_() if isinstance(sigma, torch.Tensor) else sigma
        (coef * ik.mmd(*leaves[:2], weights_x=leaves[2], weights_y=leaves[3], sigma=s1, estimator=estimator,
                       backend=backend)).sum().backward()
        loop = [t.clone().requires_grad_() for t in (x, y, wx, wy)]
        s2 = sigma.clone().requires_grad_() if isinstance(sigma, torch.Tensor) else sigma
        total = sum(coef[b] * ik.mmd(loop[0][b], loop[1][b], weights_x=loop[2][b], weights_y=loop[3][b],
                                     sigma=s2 if not isinstance(s2, torch.Tensor) or s2.dim() == 0 else s2[b],
                                     estimator=estimator, backend="torch") for b in range(3))
        total.backward()
        for got, want in zip(leaves, loop):
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-11, atol=1e-13)
        if isinstance(sigma, torch.Tensor):
            torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_batched_ops(backend):
    x, y = _randn(2, 4, 2).requires_grad_(), _randn(2, 3, 2, seed=1, shift=0.5).requires_grad_()
    wx, wy = (_randn(2, 4, seed=2).abs() + 0.2).requires_grad_(), (_randn(2, 3, seed=3).abs() + 0.2).requires_grad_()
    sigma = torch.tensor([[0.8, 1.5], [1.1, 0.6]], dtype=torch.float64, requires_grad=True)
    v = _randn(2, 3, 2, seed=4).requires_grad_()
    for est in ("biased", "unbiased"):
        assert torch.autograd.gradcheck(lambda *t: ik.mmd(t[0], t[1], weights_x=t[2], weights_y=t[3], sigma=t[4],
                                                          estimator=est, backend=backend), (x, y, wx, wy, sigma))
    assert torch.autograd.gradcheck(lambda a, b, c, s: ik.kernel_sum(a, b, c, sigma=s, backend=backend), (x, y, v, sigma))
    assert torch.autograd.gradcheck(lambda a, b, s: ik.rbf_gram(a, b, sigma=s, backend=backend), (x, y, sigma[:, 0]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kernel_sum_rbf_gram_svgd_equal_the_loop(backend):
    x, y = _randn(3, 7, 3, dtype=torch.float32), _randn(3, 257, 3, dtype=torch.float32, seed=1)
    v, score = _randn(3, 257, 2, dtype=torch.float32, seed=2), _randn(3, 7, 3, dtype=torch.float32, seed=3)
    sigma = torch.tensor([0.7, 1.3, 2.0], dtype=torch.float64)
    tol = dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ik.kernel_sum(x, y, v, kernel="laplacian", backend=backend),
                               _each(lambda x, y, v: ik.kernel_sum(x, y, v, kernel="laplacian", backend=backend), x, y, v), **tol)
    torch.testing.assert_close(ik.kernel_sum(x, y, sigma=sigma, backend=backend),
                               _each(lambda x, y, s: ik.kernel_sum(x, y, sigma=s, backend=backend), x, y, sigma), **tol)
    torch.testing.assert_close(ik.rbf_gram(x, y, sigma="median", backend=backend),
                               _each(lambda x, y: ik.rbf_gram(x, y, sigma="median", backend=backend), x, y), **tol)
    torch.testing.assert_close(ik.svgd_direction(x, score, backend=backend),
                               _each(lambda x, s: ik.svgd_direction(x, s, backend=backend), x, score), **tol)


# ------------------------------------------------------------------------------------------ padded batches
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
@pytest.mark.parametrize("kernel,sigma", [("rbf", "median"), ("laplacian", 0.8), ("polynomial", None)])
def test_padded_problems_equal_the_unpadded_ones(backend, estimator, kernel, sigma):
    """Problem 0 has no padding, the others do (lengths below the padded sizes); padding rows get
    gradient 0, whatever values they hold."""
    x, y = _randn(3, 9, 2), _randn(3, 6, 2, seed=1, shift=0.3)
    x[1, 4:], y[2, 3:] = 1e6, -7.0  # padding values must not matter
    xl, yl = torch.tensor([9, 4, 2]), torch.tensor([6, 5, 3])
    xs, ys = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = ik.mmd(xs, ys, kernel=kernel, sigma=sigma, estimator=estimator, x_lengths=xl, y_lengths=yl, backend=backend)
    got.sum().backward()
    for b in range(3):
        xb, yb = x[b, :xl[b]].clone().requires_grad_(), y[b, :yl[b]].clone().requires_grad_()
        want = ik.mmd(xb, yb, kernel=kernel, sigma=sigma, estimator=estimator, backend=backend)
        want.backward()
        torch.testing.assert_close(got[b], want.detach(), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(xs.grad[b, :xl[b]], xb.grad, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(ys.grad[b, :yl[b]], yb.grad, rtol=1e-11, atol=1e-13)
        assert not xs.grad[b, xl[b]:].any() and not ys.grad[b, yl[b]:].any()


def test_padded_kernel_sum_rbf_gram_and_svgd():
    x, y, v = _randn(2, 8, 3), _randn(2, 5, 3, seed=1), _randn(2, 5, seed=2)
    xl, yl = torch.tensor([3, 8]), torch.tensor([5, 2])
    s = ik.kernel_sum(x, y, v, x_lengths=xl, y_lengths=yl, sigma="median")
    k = ik.rbf_gram(x, y, x_lengths=xl, y_lengths=yl)
    phi = ik.svgd_direction(x, y[:, :1].expand(2, 8, 3).contiguous(), lengths=xl)
    for b in range(2):
        xb, yb = x[b, :xl[b]], y[b, :yl[b]]
        torch.testing.assert_close(s[b, :xl[b]], ik.kernel_sum(xb, yb, v[b, :yl[b]], sigma="median"), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(k[b, :xl[b], :yl[b]], ik.rbf_gram(xb, yb), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(phi[b, :xl[b]], ik.svgd_direction(xb, y[b, :1].expand(int(xl[b]), 3)), rtol=1e-12, atol=1e-13)
        assert not s[b, xl[b]:].any() and not k[b, xl[b]:].any() and not k[b, :, yl[b]:].any() and not phi[b, xl[b]:].any()


# ------------------------------------------------------------------------------------------ vmap, func, compile
def test_vmap_and_func_run_the_batched_ops():
    x, y, v = _randn(4, 7, 2), _randn(4, 5, 2, seed=1, shift=0.3), _randn(4, 5, seed=2)
    torch.testing.assert_close(torch.vmap(ik.mmd)(x, y), ik.mmd(x, y), rtol=0, atol=0)
    unbiased = lambda a, b: ik.mmd(a, b, estimator="unbiased", sigma="median")  # noqa: E731
    torch.testing.assert_close(torch.vmap(unbiased)(x, y), ik.mmd(x, y, estimator="unbiased", sigma="median"),
                               rtol=1e-14, atol=1e-15)
    xs = x.clone().requires_grad_()
    ik.mmd(xs, y).sum().backward()
    torch.testing.assert_close(torch.vmap(torch.func.grad(ik.mmd))(x, y), xs.grad, rtol=1e-14, atol=1e-15)
    shared = torch.vmap(ik.mmd, in_dims=(0, None))(x, y[0])
    torch.testing.assert_close(shared, _each(lambda a: ik.mmd(a, y[0]), x), rtol=1e-14, atol=1e-15)
    nested = torch.vmap(torch.vmap(ik.mmd))(x.reshape(2, 2, 7, 2), y.reshape(2, 2, 5, 2))
    torch.testing.assert_close(nested.reshape(4), ik.mmd(x, y), rtol=1e-14, atol=1e-15)
    outer, pairs = torch.tensor([0.7, 1.3], dtype=torch.float64), (x.reshape(2, 2, 7, 2), y.reshape(2, 2, 5, 2))
    per_outer = torch.vmap(lambda a, b, s: ik.mmd(a, b, sigma=s))(*pairs, outer)  # batched calls inside the vmap
    torch.testing.assert_close(per_outer, torch.stack([ik.mmd(*(p[i] for p in pairs), sigma=outer[i]) for i in range(2)]),
                               rtol=1e-14, atol=1e-15)
    xx, yy = _randn(3, 2, 7, 2, seed=7), _randn(3, 2, 5, 2, seed=8)  # batched calls, vmapped dim not in front
    by_dim1 = torch.vmap(ik.mmd, in_dims=1)(xx.transpose(0, 1), yy.transpose(0, 1))
    torch.testing.assert_close(by_dim1, torch.stack([ik.mmd(xx[i], yy[i]) for i in range(3)]), rtol=1e-14, atol=1e-15)
    shared = torch.vmap(torch.vmap(lambda a, b: ik.mmd(a, b, sigma=outer)))(*pairs)
    torch.testing.assert_close(shared.reshape(4), ik.mmd(x, y, sigma=outer.tolist()), rtol=1e-14, atol=1e-15)
    dsigma = torch.vmap(torch.func.grad(lambda s, a, b: ik.mmd(a, b, sigma=s).sum()))(outer, *pairs)
    for i in range(2):
        s = outer[i].clone().requires_grad_()
        ik.mmd(*(p[i] for p in pairs), sigma=s).sum().backward()
        torch.testing.assert_close(dsigma[i], s.grad, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(torch.vmap(ik.kernel_sum)(x, y, v), ik.kernel_sum(x, y, v), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(torch.vmap(ik.rbf_gram)(x, y), ik.rbf_gram(x, y), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(torch.vmap(ik.svgd_direction)(x, x.flip(1)), ik.svgd_direction(x, x.flip(1)),
                               rtol=1e-14, atol=1e-15)
    gk = torch.vmap(torch.func.grad(lambda a, b, c: ik.kernel_sum(a, b, c).sum()))(x, y, v)
    xs = x.clone().requires_grad_()
    ik.kernel_sum(xs, y, v).sum().backward()
    torch.testing.assert_close(gk, xs.grad, rtol=1e-14, atol=1e-15)


def test_autograd_outside_a_vmap_gets_the_gradients(recwarn):
    """Plain autograd through torch.vmap of the ops (the vmap rule applies the op's Function, so autograd
    records it): the gradients of the direct batched call, in x and in per-problem bandwidths."""
    x, y = _randn(4, 6, 2), _randn(4, 5, 2, seed=1, shift=0.3)
    ops = [lambda a, b: ik.mmd(a, b), lambda a, b: ik.mmd(a, b, estimator="unbiased", kernel="laplacian"),
           lambda a, b: ik.kernel_sum(a, b).sum(-1), lambda a, b: ik.rbf_gram(a, b).sum((-2, -1))]
    for f in ops:
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        torch.vmap(f)(xa, y).sum().backward()
        f(xb, y).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-13, atol=1e-15)
    sa, sb = (torch.tensor([0.6, 0.9, 1.3, 2.0], dtype=torch.float64, requires_grad=True) for _ in range(2))
    torch.vmap(lambda a, b, s: ik.mmd(a, b, sigma=s))(x, y, sa).sum().backward()
    ik.mmd(x, y, sigma=sb).sum().backward()
    torch.testing.assert_close(sa.grad, sb.grad, rtol=1e-13, atol=1e-15)
    assert not [w for w in recwarn if "autograd kernel was not registered" in str(w.message)]


def test_vmap_calls_the_batched_primitive_once():
    """torch.vmap of ik.mmd reaches the registered primitive once, with the batch as its leading dim."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "infovae":
                self.seen.append((func.__name__, tuple(args[0].shape)))
            return func(*args, **(kwargs or {}))

    with Calls():
        torch.vmap(lambda a, b: ik.mmd(a, b, backend="cpu"))(_randn(5, 4, 2), _randn(5, 3, 2, seed=1))
    assert Calls.seen == [("quad_form.default", (5, 7, 2))]


def test_second_derivatives_raise_under_func_too():
    x, y = _randn(5, 2), _randn(4, 2, seed=1)
    with pytest.raises(NotImplementedError, match="second derivatives of mmd"):
        torch.func.grad(lambda a: torch.func.grad(ik.mmd)(a, y).sum())(x)
    xs = x.clone().requires_grad_()
    with pytest.raises(NotImplementedError):
        torch.autograd.grad(ik.mmd(xs, y), xs, create_graph=True)


@pytest.mark.slow
def test_compile_fullgraph_of_a_batched_call_matches_eager():
    torch._dynamo.reset()
    x = _randn(3, 9, 3, dtype=torch.float32).requires_grad_()
    y = _randn(3, 7, 3, dtype=torch.float32, seed=1, shift=0.5)
    sigma = torch.tensor([0.7, 1.2, 2.0], requires_grad=True)

    def loss(a, b, s):
        return (ik.mmd(a, b, sigma=s) + ik.mmd(a, b, sigma="median", estimator="unbiased")
                + ik.kernel_sum(a, b).mean((-1)) + ik.SamplesLoss("laplacian", blur=0.5)(a, b)).sum()

    value = torch.compile(loss, fullgraph=True)(x, y, sigma)
    got = torch.autograd.grad(value, (x, sigma))
    eager = loss(x, y, sigma)
    want = torch.autograd.grad(eager, (x, sigma))
    torch.testing.assert_close(value, eager)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_batches_are_value_errors_naming_the_argument():
    x, y = _randn(3, 5, 2), _randn(3, 4, 2, seed=1)
    cases = [
        (lambda: ik.mmd(x, y[:2]), "y has batch size 2 but x has 3"),
        (lambda: ik.mmd(x, _randn(3, 4, 3)), "x has 2 features but y has 3"),
        (lambda: ik.mmd(x[:0], y[:0]), "x is a batch of size 0"),
        (lambda: ik.mmd(x, y[0]), "must both be 2-D .* or both 3-D"),
        (lambda: ik.mmd(x, y, x_lengths=torch.tensor([5, 6, 1])), r"x_lengths must be in 1..5"),
        (lambda: ik.mmd(x, y, x_lengths=torch.tensor([5, 0, 1])), r"x_lengths must be in 1..5"),
        (lambda: ik.mmd(x, y, y_lengths=torch.tensor([4, 4])), r"y_lengths must have shape \(B,\) = \(3,\)"),
        (lambda: ik.mmd(x[0], y[0], x_lengths=torch.tensor([5])), "x_lengths is for a padded batch"),
        (lambda: ik.mmd(x, y, sigma=torch.ones(2, dtype=torch.float64)), "sigma: with a batch of 3 problems"),
        (lambda: ik.mmd(x, y, sigma=torch.ones(3, 2, 2, dtype=torch.float64)), "sigma: with a batch of 3 problems"),
        (lambda: ik.mmd(x, y, weights_x=torch.ones(3, 4, dtype=torch.float64)), r"weights_x must be \(B, N\)"),
        (lambda: ik.mmd(x, y, weights_x=torch.ones(5, dtype=torch.float64)), r"weights_x must be \(B, N\)"),
        (lambda: ik.mmd(x, y, weights_y=torch.zeros(3, 4, dtype=torch.float64).index_fill(1, torch.tensor([0]), 1.0)
                        * torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)), "weights_y are all zero for some"),
        (lambda: ik.mmd(x, y, estimator="unbiased", x_lengths=torch.tensor([5, 1, 2])), "at least 2 positive weights"),
        (lambda: ik.kernel_sum(x, y, torch.ones(3, 5, dtype=torch.float64)), r"v must have shape \(3, 4\) or \(3, 4, p\)"),
        (lambda: ik.svgd_direction(x, x[:, :4]), "score must have the shape of x"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match="x_lengths must be an integer tensor"):
        ik.mmd(x, y, x_lengths=torch.tensor([5.0, 4.0, 3.0]))
    with pytest.raises(ValueError, match="x must be 2-D"):
        ik.mmd_power(x, y)  # ops without a batch keep their 2-D contract


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_test_of_a_batch_equals_the_2d_tests(estimator):
    """One batched call over the 2-D test's columns: each problem's statistic, p-value and permutation
    statistics are those of ik.mmd_test on it (same seed, hence the same labellings)."""
    x = _randn(3, 21, 2, dtype=torch.float32)
    y = _randn(3, 17, 2, dtype=torch.float32, seed=1) + torch.tensor([0.0, 0.4, 1.5])[:, None, None]
    results = ik.mmd_test(x, y, permutations=99, seed=5, estimator=estimator, sigma="median")
    assert len(results) == 3
    for b, got in enumerate(results):
        want = ik.mmd_test(x[b], y[b], permutations=99, seed=5, estimator=estimator, sigma="median", progress=False)
        assert got.p_value == want.p_value
        torch.testing.assert_close(got.statistic, want.statistic, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got.permutation_statistics, want.permutation_statistics, rtol=1e-5, atol=1e-7)
    assert results[2].p_value == 0.01  # a shift of 1.5 is found
    with pytest.raises(ValueError, match="block_size apply to one streamed test only"):
        ik.mmd_test(x, y, block_size=8)


def test_cpu_batched_primitives_take_strided_views():
    """Non-contiguous batches (a feature stride, a transposed batch dim) pack like their contiguous copies."""
    ops, p = torch.ops.infovae, _params("rbf", 3)
    base = _randn(5, 3, 8, dtype=torch.float32)
    z = base.transpose(0, 1)[:, :, ::2]  # (3, 5, 4), strides everywhere
    w = _randn(2, 5, 3, dtype=torch.float32, seed=1).permute(2, 1, 0)  # (3, 5, 2)
    got = ops.quad_form(z, w, w, p, "rbf", False, True)
    want = ops.quad_form(z.contiguous(), w.contiguous(), w.contiguous(), p, "rbf", False, True)
    assert all(torch.equal(g, e) for g, e in zip(got, want))
    got = ops.pair_reduce(z, z[:, :4], w[:, :4], w, p, "laplacian", False)
    want = ops.pair_reduce(z.contiguous(), z[:, :4].contiguous(), w[:, :4].contiguous(), w.contiguous(), p, "laplacian",
                           False)
    assert all(torch.equal(g, e) for g, e in zip(got, want))
