"""ksd, ksd_test, ksd_agg and stein_thinning against an oracle that derives the Stein kernel by autograd
from the base kernel alone (u = s.t k + s.grad_y k + t.grad_x k + tr grad_x grad_y k), in float64."""

import importlib
import math

import pytest
import torch
from torch.autograd.functional import hessian, jacobian

import infovae_kernels as ik
from infovae_kernels.scale.ksd import _signs

ksd_module = importlib.import_module("infovae_kernels.ops.ksd")  # ops.ksd is also the function's name
from infovae_kernels.backends import reference  # noqa: E402


def base_kernel(base, sigmas, beta, c):
    def k(a, b):
        r2 = (a - b).square().sum()
        if base == "rbf":
            return sum(torch.exp(-r2 / (2 * s * s)) for s in sigmas)
        return sum((c * c + r2 / (s * s)) ** beta for s in sigmas)
    return k


def oracle_u(x, s, base="imq", sigmas=(1.0,), beta=-0.5, c=1.0):
    """The n x n Stein kernel matrix, each entry from autograd derivatives of k."""
    n, d = x.shape
    k = base_kernel(base, sigmas, beta, c)
    u = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(n):
            a, b = x[i], x[j]
            grad_a = jacobian(lambda a_: k(a_, b), a)
            grad_b = jacobian(lambda b_: k(a, b_), b)
            trace = torch.trace(hessian(lambda ab: k(ab[:d], ab[d:]), torch.cat([a, b]))[:d, d:])
            u[i, j] = (s[i] @ s[j]) * k(a, b) + s[i] @ grad_b + s[j] @ grad_a + trace
    return u


def oracle_ksd(u, w=None, unbiased=True):
    n = u.shape[0]
    w = torch.full((n,), 1.0 / n, dtype=torch.float64) if w is None else w / w.sum()
    total = w @ u @ w
    if not unbiased:
        return total
    return (total - (w * w * u.diag()).sum()) / (1 - (w * w).sum())


def sample(n, d, seed=0, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + shift  # off the origin: centring matters
    s = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, s


BACKENDS = [b for b in ("cpu", "torch") if b in ik.backends.runnable("cpu")]

CASES = [("imq", (1.0,), -0.5, 1.0), ("imq", (0.7, 2.0), -0.3, 0.8), ("rbf", (1.3,), -0.5, 1.0),
         ("rbf", (0.5, 1.5, 4.0), -0.5, 1.0)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,d", [(2, 1), (7, 3), (11, 5)])
@pytest.mark.parametrize("base,sigmas,beta,c", CASES)
def test_ksd_equals_the_autograd_oracle(n, d, base, sigmas, beta, c, backend):
    x, s = sample(n, d, seed=n + d)
    u = oracle_u(x, s, base, sigmas, beta, c)
    w = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    for unbiased in (False, True):
        est = "unbiased" if unbiased else "biased"
        for weights in (None, w):
            got = ik.ksd(x, s, kernel=base, sigma=list(sigmas), beta=beta, c=c, estimator=est, weights=weights,
                         backend=backend)
            want = oracle_ksd(u, weights, unbiased)
            assert got.dtype == torch.float64 and got.dim() == 0
            assert abs(float(got - want)) <= 1e-10 * max(1.0, float(u.abs().mean())), (est, weights is None)


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_within_measured_error_of_float64(backend):
    x, s = sample(600, 6, seed=3)
    s = -x + 0.3 * s  # near the target: the cancellation a converging sampler sees
    for base in ("imq", "rbf"):
        ref = ik.ksd(x, s, kernel=base, sigma=2.0)
        got = ik.ksd(x.float(), s.float(), kernel=base, sigma=2.0, backend=backend)
        assert got.dtype == torch.float32
        scale = float(ik.ksd(x, s, kernel=base, sigma=2.0, estimator="biased").abs()) + float(ref.abs())
        assert abs(float(got) - float(ref)) <= 1e-5 * scale


def test_blocks_give_the_same_value_and_gradient(monkeypatch):
    x, s = sample(37, 3, seed=5)
    def run():
        xr, sr = x.clone().requires_grad_(), s.clone().requires_grad_()
        v = ik.ksd(xr, sr, estimator="unbiased")
        v.backward()
        return v.detach(), xr.grad, sr.grad
    whole = run()
    monkeypatch.setattr(reference, "STEIN_BLOCK_PAIRS", 37 * 4)  # blocks of 4 rows, the last one short
    blocked = run()
    for a, b in zip(whole, blocked):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("base", ["imq", "rbf"])
def test_gradcheck_in_x_score_sigma_and_weights(base, monkeypatch):
    monkeypatch.setattr(reference, "STEIN_BLOCK_PAIRS", 6 * 4)  # the checkpointed blocks are differentiated too
    x, s = sample(6, 2, seed=7)
    sigma = torch.tensor([0.8, 1.7], dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.2
    for est in ("biased", "unbiased"):
        torch.autograd.gradcheck(lambda x_, s_, g_, w_: ik.ksd(x_, s_, kernel=base, sigma=g_, weights=w_, estimator=est),
                                 tuple(t.clone().requires_grad_() for t in (x, s, sigma, w)))


def test_score_callable_and_chained_through_x():
    x, _ = sample(9, 3, seed=11)
    score = lambda z: -z ** 3 + z  # noqa: E731
    assert torch.equal(ik.ksd(x, score), ik.ksd(x, score(x)))
    # the score computed from x with autograd: torch chains d score / dx into the gradient
    torch.autograd.gradcheck(lambda x_: ik.ksd(x_, score), (x.clone().requires_grad_(),))
    xr = x.clone().requires_grad_()
    ik.ksd(xr, score).backward()
    xf = x.clone().requires_grad_()
    ik.ksd(xf, score(x)).backward()  # score held fixed: another gradient
    assert not torch.allclose(xr.grad, xf.grad)


def test_callable_score_in_chunks(monkeypatch):
    monkeypatch.setattr(ksd_module, "SCORE_CHUNK", 4)
    calls = []
    x, _ = sample(10, 2, seed=4)
    v = ik.ksd(x, lambda z: calls.append(z.shape[0]) or -z)
    assert calls == [4, 4, 2]
    assert torch.equal(v, ik.ksd(x, -x))


def test_ksd_descent_moves_particles_to_the_target():
    """Gradient descent on KSD^2 (Korba et al. 2021) with the N(0, I) score brings a shifted, squeezed
    cloud towards N(0, I): the KSD falls and the mean moves to 0."""
    g = torch.Generator().manual_seed(0)
    x = (0.3 * torch.randn(40, 2, generator=g, dtype=torch.float64) + 2.0).requires_grad_()
    start = float(ik.ksd(x.detach(), -x.detach(), estimator="biased"))
    opt = torch.optim.SGD([x], lr=2.0)
    for _ in range(300):
        opt.zero_grad()
        ik.ksd(x, lambda z: -z, estimator="biased").backward()
        opt.step()
    end = float(ik.ksd(x.detach(), -x.detach(), estimator="biased"))
    assert end < 0.1 * start
    assert float(x.detach().mean(0).norm()) < 0.5  # started at |mean| = 2.8


def test_ksd_is_near_zero_for_samples_of_the_target_and_not_otherwise():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    null = float(ik.ksd(x, -x))
    t = torch.distributions.StudentT(3.0).sample((2000, 3)).double()
    alt = float(ik.ksd(t, -t))
    assert abs(null) < 0.1 * alt


# ------------------------------------------------------------------------ the fused cpu primitive

needs_cpu = pytest.mark.skipif("cpu" not in BACKENDS, reason="the compiled cpu backend is not built here")


def _stein_inputs(n, d, p, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = (x - x.mean(0)).to(dtype)
    s = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = torch.randn(n, p, generator=g, dtype=torch.float64).to(dtype)
    return x, s, w


@needs_cpu
@pytest.mark.parametrize("n", [1, 2, 129, 257, 700])
@pytest.mark.parametrize("kernel,params", [("imq", [-0.5, 1.0, 1.0]), ("imq", [-0.3, 0.7, 0.8, 2.5]),
                                          ("rbf", [-0.5, 1.0, 0.6, 1.7])])
def test_cpu_stein_form_equals_the_torch_primitive(n, kernel, params, cpu_capability):
    """Every tile shape (one block, a short last block, several blocks) on every CPU variant; float64 to
    1e-12 of the torch primitive, float32 to its measured error."""
    p64 = torch.tensor(params, dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x, s, w = _stein_inputs(n, 5, 3, dtype, seed=n)
        for exclude in (False, True):
            got = torch.ops.infovae.stein_form(x, s, w, p64, kernel, exclude)
            want = reference.stein_form(x.double(), s.double(), w.double(), p64, kernel, exclude)
            scale = float(reference.stein_form(x.double(), s.double(), w.double().abs(), p64, kernel, exclude).abs().max())
            assert (got - want).abs().max().item() <= tol * max(scale, 1e-300), (dtype, exclude)


@needs_cpu
def test_cpu_stein_form_is_independent_of_the_thread_count_and_passes_opcheck():
    x, s, w = _stein_inputs(600, 7, 4, torch.float32)
    params = torch.tensor([-0.5, 1.0, 1.3], dtype=torch.float64)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(torch.ops.infovae.stein_form(x, s, w, params, "imq", True))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(o, outs[0]) for o in outs)
    torch.library.opcheck(torch.ops.infovae.stein_form.default, (x[:50], s[:50], w[:50], params, "rbf", False))
    torch.library.opcheck(torch.ops.infovae.stein_moments.default, (x[:50], s[:50], w[:50, 0], params, "imq", True))
    moments = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            moments.append(torch.ops.infovae.stein_moments(x, s, w[:, 0], params, "imq", True))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(moments[0], moments[1])


@needs_cpu
def test_value_with_gradient_from_the_moments_pass_equals_the_value_pass():
    """With a gradient the cpu value comes from stein_moments, without from stein_form: the same number
    up to the order of their float64 sums (float32 points: up to float32 products), and the same gradient
    as the torch blocks."""
    x, s = sample(300, 4, seed=6)
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-6)):
        plain = ik.ksd(x.to(dtype), s.to(dtype), backend="cpu")
        xg = x.to(dtype).clone().requires_grad_()
        torch.testing.assert_close(ik.ksd(xg, s.to(dtype), backend="cpu").detach(), plain, rtol=tol, atol=0)
    xr = x.clone().requires_grad_()
    with_grad = ik.ksd(xr, s, backend="cpu")
    with_grad.backward()
    xt = x.clone().requires_grad_()
    ik.ksd(xt, s, backend="torch").backward()
    torch.testing.assert_close(xr.grad, xt.grad, rtol=1e-12, atol=1e-14)


@needs_cpu
@pytest.mark.parametrize("base", ["imq", "rbf"])
def test_fused_gradient_gradcheck(base, cpu_capability):
    """The cpu backend's fused gradient (stein_moments) in x, score and weights, float64 gradcheck, on
    every CPU variant; beta away from -1/2 takes the std::pow lanes."""
    x, s = sample(9, 3, seed=21)
    w = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) + 0.2
    for est in ("biased", "unbiased"):
        for beta in ((-0.5, -0.7) if base == "imq" else (-0.5,)):
            torch.autograd.gradcheck(
                lambda x_, s_, w_: ik.ksd(x_, s_, kernel=base, sigma=[0.9, 2.0], beta=beta, weights=w_, estimator=est,
                                          backend="cpu"),
                tuple(t.clone().requires_grad_() for t in (x, s, w)))


@needs_cpu
def test_stein_moments_on_many_tiles_equal_the_autograd_blocks():
    """Several tiles (n = 700: blocks of 128, rounds with a short last block), float32 and float64: the
    fused gradient equals autograd through the torch blocks."""
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 2e-5)):
        x, s = sample(700, 5, seed=4)
        x, s = x.to(dtype), (-x + 0.5 * s).to(dtype)
        grads = []
        for backend in ("cpu", "torch"):
            xr, sr = x.clone().requires_grad_(), s.clone().requires_grad_()
            ik.ksd(xr, sr, backend=backend, sigma=1.5).backward()
            grads.append((xr.grad.double(), sr.grad.double()))
        for a, b in zip(*grads):
            assert ((a - b).norm() / b.norm()).item() <= tol


@needs_cpu
def test_cpu_stein_form_rejects_bad_arguments():
    x, s, w = _stein_inputs(10, 2, 1, torch.float64)
    params = torch.tensor([-0.5, 1.0, 1.0], dtype=torch.float64)
    with pytest.raises(RuntimeError, match="kernel must be 'imq' or 'rbf'"):
        torch.ops.infovae.stein_form(x, s, w, params, "laplacian", False)
    with pytest.raises(RuntimeError, match="sigmas must be positive"):
        torch.ops.infovae.stein_form(x, s, w, torch.tensor([-0.5, 1.0, -1.0], dtype=torch.float64), "imq", False)
    with pytest.raises(RuntimeError, match="one shape"):
        torch.ops.infovae.stein_form(x, s[:, :1], w, params, "imq", False)


# ------------------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("backend", BACKENDS)
def test_bootstrap_draws_equal_the_dense_formula(monkeypatch, backend):
    monkeypatch.setattr(reference, "STEIN_BLOCK_PAIRS", 13 * 5)
    x, s = sample(13, 2, seed=8)
    u = oracle_u(x, s, "imq", (1.2,))
    for est, unbiased in (("biased", False), ("unbiased", True)):
        r = ik.ksd_test(x, s, n_bootstrap=40, seed=3, sigma=1.2, estimator=est, backend=backend)
        e = _signs(13, 40, 3, torch.float64, "cpu")
        u0 = u - torch.diag(u.diag()) if unbiased else u
        norm = 13 * 12 if unbiased else 13 * 13
        torch.testing.assert_close(r.bootstrap_statistics, (e * (u0 @ e)).sum(0) / norm, rtol=1e-10, atol=1e-12)
        assert r.statistic == pytest.approx(float(u0.sum() / norm), rel=1e-12)
        assert r.p_value == (1 + int((r.bootstrap_statistics >= r.statistic).sum())) / 41


def test_ksd_test_null_rejection_within_binomial_noise_and_power():
    level, reps, rejections = 0.05, 200, 0
    g = torch.Generator().manual_seed(0)
    for rep in range(reps):
        x = torch.randn(60, 2, generator=g, dtype=torch.float64)
        rejections += ik.ksd_test(x, -x, n_bootstrap=199, seed=rep).p_value <= level
    noise = 3 * math.sqrt(level * (1 - level) / reps)
    print(f"null rejection rate {rejections / reps:.3f} (level {level}, +- {noise:.3f})")
    assert abs(rejections / reps - level) <= noise
    t = torch.distributions.StudentT(3.0).sample((300, 2)).double()  # heavier tails than N(0, I)
    assert ik.ksd_test(t, -t, n_bootstrap=199).p_value <= level


def test_ksd_agg_statistics_and_decisions():
    x, _ = sample(80, 2, seed=9, shift=0.0)
    r = ik.ksd_agg(x, -x, bandwidths=[0.5, 1.0, 2.0], n_bootstrap=(100, 100))
    assert r.statistics == pytest.approx([ik.ksd(x, -x, sigma=b).item() for b in (0.5, 1.0, 2.0)], rel=1e-10)
    assert not r.reject and len(r.thresholds) == 3 and 0 < r.u <= 3
    y = 1.5 * sample(300, 2, seed=10, shift=0.0)[0]  # too wide for N(0, I)
    assert ik.ksd_agg(y, -y).reject  # B1 = 500: with B1 = 100 the corrected quantile is the statistic itself


# --------------------------------------------------------------------------------- Stein thinning

def oracle_thinning(u, m):
    objective, chosen = u.diag().clone(), []
    for _ in range(m):
        j = int(torch.argmin(objective))
        chosen.append(j)
        objective += 2 * u[:, j]
    return chosen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("base,sigma", [("imq", None), ("rbf", 0.8)])
def test_stein_thinning_equals_the_dense_greedy_oracle(base, sigma, backend):
    x, s = sample(30, 2, seed=12)
    u = oracle_u(x, s, base, (1.0 if sigma is None else sigma,))
    got = ik.stein_thinning(x, s, 25, kernel=base, sigma=sigma, standardize=False, backend=backend)
    assert got.tolist() == oracle_thinning(u, 25)
    assert got.dtype == torch.int64
    # standardize: each coordinate over its mean absolute deviation, the scores times it
    mad = (x - x.mean(0)).abs().mean(0)
    u = oracle_u(x / mad, s * mad, base, (1.0 if sigma is None else sigma,))
    assert ik.stein_thinning(x, s, 25, kernel=base, sigma=sigma, backend=backend).tolist() == oracle_thinning(u, 25)


@needs_cpu
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_stein_thin_selects_as_the_torch_steps_at_any_thread_count_and_chunking(dtype):
    """The fused selection (odd n: a partial last vector) against the torch loop over many steps, with
    another beta (the lane-by-lane pow) and two scales; the same indices in one call, in chunks (the
    returned objective carries on) and on 1 or 3 threads; opcheck of the primitive."""
    x, s = sample(1237, 5, seed=21)
    x, s = x.to(dtype), s.to(dtype)
    for kw in (dict(kernel="imq", beta=-0.3, c=0.7, sigma=[0.6, 1.5]), dict(kernel="rbf", sigma=0.9)):
        want = ik.stein_thinning(x, s, 300, backend="torch", progress=False, **kw)
        assert ik.stein_thinning(x, s, 300, backend="cpu", progress=False, **kw).tolist() == want.tolist()
    params = torch.tensor([-0.5, 1.0, 1.1], dtype=torch.float64)
    start = ik.kernels.stein_diagonal(x, s, params[2:], "imq", -0.5, 1.0)
    old = torch.get_num_threads()
    try:
        runs = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append(torch.ops.infovae.stein_thin(x, s, start, params, "imq", 40))
    finally:
        torch.set_num_threads(old)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    first, objective = torch.ops.infovae.stein_thin(x, s, start, params, "imq", 15)
    rest, end = torch.ops.infovae.stein_thin(x, s, objective, params, "imq", 25)
    assert torch.cat([first, rest]).tolist() == runs[0][0].tolist() and torch.equal(end, runs[0][1])
    torch.library.opcheck(torch.ops.infovae.stein_thin.default, (x[:50], s[:50], start[:50], params, "rbf", 7))


def test_stein_thinning_selects_with_replacement():
    """Riabiz et al.'s greedy rule may pick a point again; m <= n still holds."""
    for seed in range(50):
        x, s = sample(6, 1, seed=seed)
        want = oracle_thinning(oracle_u(x, s), 6)
        if len(set(want)) < 6:
            break
    else:
        pytest.fail("no seed gave a repeated selection")
    assert ik.stein_thinning(x, s, 6, standardize=False).tolist() == want


# ------------------------------------------------------------------------------------- bad input

def test_bad_input_names_the_argument():
    x, s = sample(5, 2)
    with pytest.raises(ValueError, match="score must have the shape"):
        ik.ksd(x, s[:, :1])
    with pytest.raises(TypeError, match="score is torch.float32"):
        ik.ksd(x, s.float())
    with pytest.raises(ValueError, match="score contains NaN"):
        ik.ksd(x, s.clone().index_put_((torch.tensor([1]), torch.tensor([0])), torch.tensor(float("nan"), dtype=torch.float64)))
    with pytest.raises(ValueError, match="score contains NaN"):
        ik.ksd(x, lambda z: z / 0.0)
    with pytest.raises(TypeError, match="score: the callable must return a torch.Tensor"):
        ik.ksd(x, lambda z: z.numpy())
    for beta in (-1.0, 0.0, 0.5):
        with pytest.raises(ValueError, match="beta must lie in"):
            ik.ksd(x, s, beta=beta)
    with pytest.raises(ValueError, match="c must be positive"):
        ik.ksd(x, s, c=0.0)
    with pytest.raises(ValueError, match="rbf base takes neither"):
        ik.ksd(x, s, kernel="rbf", beta=-0.3)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ik.ksd(x, s, kernel="laplacian")
    with pytest.raises(ValueError, match="x: the unbiased KSD needs at least 2 points"):
        ik.ksd(x[:1], s[:1])
    assert torch.isfinite(ik.ksd(x[:1], s[:1], estimator="biased"))
    for backend in ("cuda", "triton"):  # by name on CPU tensors: not available, never a fallback
        if backend not in ik.backends.runnable(x.device):
            with pytest.raises(ValueError, match=f"backend '{backend}' is not available"):
                ik.ksd(x, s, backend=backend)
    with pytest.raises(ValueError, match="backend must be"):
        ik.ksd(x, s, backend="gpu")
    with pytest.raises(ValueError, match="m = 6 exceeds"):
        ik.stein_thinning(x, s, 6)
    with pytest.raises(ValueError, match="m must be a positive int"):
        ik.stein_thinning(x, s, 0)
    with pytest.raises(ValueError, match="n_bootstrap must be a positive int"):
        ik.ksd_test(x, s, n_bootstrap=0)
    with pytest.raises(ValueError, match="x: a goodness-of-fit test needs at least 2 points"):
        ik.ksd_test(x[:1], s[:1])
    with pytest.raises(ValueError, match="level must be"):
        ik.ksd_agg(x, s, level=1.5)
    with pytest.raises(ValueError, match="bandwidths must be"):
        ik.ksd_agg(x, s, bandwidths=[])
    with pytest.raises(ValueError, match="weights: the unbiased KSD needs at least two points"):
        ik.ksd(x, s, weights=torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))


def test_cli_ksd(tmp_path, capsys):
    import json

    import numpy as np

    from infovae_kernels.cli import main

    x, _ = sample(120, 3, seed=2, shift=0.0)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "s.npy", (-x).numpy())
    np.save(tmp_path / "bad.npy", (-x[:, :2]).numpy())
    out = tmp_path / "r.json"
    assert main(["ksd", str(tmp_path / "x.npy"), str(tmp_path / "s.npy"), "--test", "--n-bootstrap", "99",
                 "--json", str(out), "-q"]) == 0
    r = json.loads(out.read_text())
    assert r["ksd2"] == pytest.approx(ik.ksd(x, -x).item(), rel=1e-12)
    assert r["p_value"] == ik.ksd_test(x, -x, n_bootstrap=99).p_value
    assert main(["ksd", str(tmp_path / "x.npy"), str(tmp_path / "bad.npy")]) == 2
    assert "one score row per sample" in capsys.readouterr().err
    assert main(["ksd", str(tmp_path / "x.npy"), str(tmp_path / "s.npy"), "--beta", "0.2"]) == 2
    assert "beta must lie in (-1, 0)" in capsys.readouterr().err


def test_prior_ksd_of_the_model_layer_separates_q_from_p():
    """infovae's evaluate reports KSD(q(z), N(0, I)) with its test p-value: codes from the prior pass,
    codes of a collapsed-to-a-point or shifted q(z) fail."""
    pytest.importorskip("infovae")  # the model layer's extra; the core tests run without it
    from infovae.metrics import prior_ksd

    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 4, generator=g)
    value, p = prior_ksd(z, sigma=2.0)
    assert p > 0.01 and abs(value) < 0.01
    for bad in (0.2 * z, z + 0.5):
        value_bad, p_bad = prior_ksd(bad, sigma=2.0)
        assert p_bad < 0.01 and value_bad > 10 * abs(value)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gpu_stein_backends_equal_the_torch_blocks(backend, dtype):
    """The fused GPU Stein kernels (value: stein_form; value and gradient: stein_moments) and the wild
    bootstrap against the torch backend on the same device: float64 to 1e-10, float32 to 1e-5."""
    device = torch.device("cuda")
    if backend not in ik.backends.runnable(device):
        pytest.fail(f"backend {backend!r} does not run on this GPU: {ik.backends.available()}")
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    x, s = sample(517, 5, seed=31)
    x, s = x.to(device, dtype), s.to(device, dtype)
    for kw in (dict(kernel="imq", sigma=[0.7, 2.0]), dict(kernel="imq", beta=-0.3, c=1.5), dict(kernel="rbf", sigma=1.1)):
        for est in ("unbiased", "biased"):
            got = ik.ksd(x, s, estimator=est, backend=backend, **kw)
            want = ik.ksd(x, s, estimator=est, backend="torch", **kw)
            torch.testing.assert_close(got, want, rtol=tol, atol=0)
        grads = []
        for b in (backend, "torch"):
            xg, sg = x.clone().requires_grad_(), s.clone().requires_grad_()
            value = ik.ksd(xg, sg, backend=b, **kw)
            grads.append([value.detach(), *torch.autograd.grad(value, (xg, sg))])
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))
    tests = [ik.ksd_test(x, s, n_bootstrap=50, seed=1, backend=b) for b in (backend, "torch")]
    assert tests[0].bootstrap_statistics == pytest.approx(tests[1].bootstrap_statistics, rel=tol, abs=1e-12)
