"""Self-test of a compiled backend against the float64 reference backend ("torch" run in float64).

Small problems whose sizes cross the CPU engine's panel and tile edges and whose d lies on both sides of
its lane-form limit (8), for every kernel (rbf with one and two scales, imq, laplacian, energy,
polynomial on the engine and on the BLAS-tile path at d >= 512, linear), both estimators, float32 and
float64: the values of mmd, kernel_sum, rbf_gram, svgd_direction, mmd_power and mmd_test's permutation
statistics, and the gradients of mmd (x, y, weights, a tensor sigma), kernel_sum, rbf_gram and
mmd_power; and that k(x, x) is exactly 1 (a point's distance to itself is exactly 0). On the cpu backend
also the Stein kernel: ksd (value, gradients in x, score and weights; imq with beta -1/2 and another,
rbf with two scales) and ksd_test's bootstrap draws. A float64 result
may differ from the reference by 1e-10 of its scale; a float32 one by 8 times what the reference backend
computing in float32 differs by, plus 2e-6 of the scale (the test suite's rule).

`infovae-kernels selftest` runs it on the CPU variant in use (INFOVAE_CPU_CAPABILITY picks another);
the test suite runs it under every capability the CPU has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

import infovae_kernels as ik

# (N, M, d): odd sizes across the engine's row panels, row blocks and symmetric blocks; M = 1031 over the
# widest column tile (1024); d = 2, 3 and 5 in lane form, 9 beyond it; d = 600 for the polynomial
# kernel's BLAS-tile path.
SHAPES = ((7, 33, 3), (130, 61, 9), (41, 40, 5), (257, 1031, 2))
WIDE = (40, 50, 600)
# name, kernel, sigma (a list becomes a tensor whose gradient is checked)
KERNELS = (("rbf", "rbf", 1.3), ("rbf-2scales", "rbf", [0.6, 2.0]), ("imq", "imq", 0.9),
           ("laplacian", "laplacian", 1.1), ("energy", "energy", None), ("polynomial", "polynomial", None),
           ("linear", "linear", None))
DTYPES = (torch.float32, torch.float64)


@dataclass(frozen=True)
class Check:
    """One comparison: the largest deviation from the float64 reference over a value and its gradients."""

    name: str
    error: float
    allowed: float

    @property
    def ok(self) -> bool:
        return self.error <= self.allowed


def _points(n: int, d: int, shift: float, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8 + shift) * (2.0 / d**0.5)


def _compare(name: str, fn: Callable[..., Tensor], inputs: Sequence[Tensor], grad: Sequence[bool], dtype: torch.dtype,
             backend: str, device: str) -> Check:
    """fn(backend, *inputs) on `backend` in `dtype` against the torch backend in float64: the value and the
    gradients (of a fixed random projection of the output) with respect to the inputs marked in `grad`."""

    def evaluate(be: str, dt: torch.dtype) -> list[Tensor]:
        ts = [t.detach().to(device, dt).requires_grad_(g) for t, g in zip(inputs, grad)]
        out = fn(be, *ts)
        outs = [out.detach().double().cpu()]
        wrt = [t for t, g in zip(ts, grad) if g]
        if wrt:
            cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
            outs += [g.double().cpu() for g in torch.autograd.grad((out * cot.to(out)).sum(), wrt)]
        return outs

    got, want = evaluate(backend, dtype), evaluate("torch", torch.float64)
    ref = evaluate("torch", dtype) if dtype != torch.float64 else None
    error = allowed = 0.0
    worst = -1.0
    for k, (g, w) in enumerate(zip(got, want)):
        scale = max(1.0, float(w.abs().max())) if w.numel() else 1.0
        err = float((g - w).abs().max()) if w.numel() else 0.0
        if ref is None:
            tol = 1e-10 * scale
        else:
            tol = 8 * (float((ref[k] - w).abs().max()) if w.numel() else 0.0) + 2e-6 * scale
        if err - tol > worst:  # report the tightest comparison
            worst, error, allowed = err - tol, err, tol
    return Check(name, error, allowed)


def _sigma(sigma):
    return torch.tensor(sigma, dtype=torch.float64) if isinstance(sigma, list) else sigma


def run(backend: str = "cpu", device: str = "cpu") -> list[Check]:
    """Every check on `backend` (tensors on `device`); see the module docstring."""
    checks: list[Check] = []

    def add(name, fn, inputs, grad, dtype):
        checks.append(_compare(f"{name} {str(dtype).replace('torch.', '')}", fn, inputs, grad, dtype, backend, device))

    for dtype in DTYPES:
        for label, kernel, sigma in KERNELS:
            learn = isinstance(sigma, list)
            shapes = SHAPES + ((WIDE,) if kernel == "polynomial" else ())
            for n, m, d in shapes:
                x, y = _points(n, d, 0.0, n + d), _points(m, d, 0.3, m + 7 * d)
                wx = torch.rand(n, generator=torch.Generator().manual_seed(3), dtype=torch.float64) + 0.5
                for estimator in ("biased", "unbiased"):
                    def mmd(be, x, y, wx, *s, kernel=kernel, estimator=estimator, sigma=sigma):
                        return ik.mmd(x, y, kernel=kernel, sigma=s[0] if s else sigma, estimator=estimator,
                                      weights_x=wx, backend=be)

                    inputs = [x, y, wx] + ([_sigma(sigma)] if learn else [])
                    add(f"mmd {label} {estimator} {n}x{m}x{d}", mmd, inputs, [True] * len(inputs), dtype)
                v = _points(m, 2, 0.0, 11)

                def ksum(be, x, y, v, kernel=kernel, sigma=sigma):
                    return ik.kernel_sum(x, y, v, kernel=kernel, sigma=sigma, backend=be)

                add(f"kernel_sum {label} {n}x{m}x{d}", ksum, [x, y, v], [True, True, True], dtype)
                if kernel in ("rbf", "imq") and n == m + 1:  # paired sets for mmd_power
                    def power(be, x, y, kernel=kernel, sigma=sigma):
                        return ik.mmd_power(x, y, kernel=kernel, sigma=sigma, backend=be).criterion

                    add(f"mmd_power {label} {m}x{d}", power, [x[:m], y], [True, True], dtype)
                if kernel in ("rbf", "polynomial"):
                    def perm(be, x, y, kernel=kernel, sigma=sigma):
                        r = ik.mmd_test(x, y, permutations=40, seed=1, kernel=kernel, sigma=sigma, backend=be,
                                        progress=False)
                        return torch.cat([torch.as_tensor([r.statistic], dtype=torch.float64),
                                          torch.as_tensor(r.permutation_statistics, dtype=torch.float64)])

                    add(f"mmd_test {label} {n}x{m}x{d}", perm, [x, y], [False, False], dtype)
        # a point's distance to itself is exactly 0, so k(x, x) is exactly 1 even where a bandwidth far
        # below the spread leaves nothing else (the norms and the dot products rounded alike)
        x = _points(130, 9, 0.0, 17).to(device, dtype) * 30
        diag = ik.rbf_gram(x, x, sigma=0.05, backend=backend).diagonal().double()
        checks.append(Check(f"rbf_gram self-distance {str(dtype).replace('torch.', '')}",
                            float((diag - 1).abs().max()), 0.0))
        for n, m, d in SHAPES:
            x, y = _points(n, d, 0.0, 5 * n + d), _points(m, d, 0.3, 5 * m + d)
            add(f"rbf_gram {n}x{m}x{d}", lambda be, x, y: ik.rbf_gram(x, y, sigma=1.3, backend=be), [x, y],
                [True, True], dtype)
            add(f"svgd_direction {n}x{d}", lambda be, x: ik.svgd_direction(x, -x, sigma=1.1, backend=be), [x],
                [False], dtype)
        if backend == "cpu":  # the fused Stein kernel (cuda and triton have none yet)
            _stein_checks(add, dtype)
    return checks


# name, base, sigma, beta, c: beta -1/2 takes the engine's one-vsqrt path, another beta the pow lanes
STEIN_KERNELS = (("imq", "imq", 1.0, -0.5, 1.0), ("imq-beta", "imq", [0.7, 1.8], -0.3, 0.7),
                 ("rbf-2scales", "rbf", [0.6, 2.0], -0.5, 1.0))


def _stein_checks(add, dtype) -> None:
    """ksd (value and gradient in x, score and weights) and ksd_test's bootstrap draws."""
    for label, base, sigma, beta, c in STEIN_KERNELS:
        for n, _, d in SHAPES:
            x = _points(n, d, 0.2, 3 * n + d)
            s = -x + 0.5 * _points(n, d, 0.0, 3 * n + d + 1)
            w = torch.rand(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 0.5
            for estimator in ("biased", "unbiased"):
                def ksd(be, x, s, w, base=base, sigma=sigma, beta=beta, c=c, estimator=estimator):
                    return ik.ksd(x, s, kernel=base, sigma=sigma, beta=beta, c=c, estimator=estimator, weights=w,
                                  backend=be)

                add(f"ksd {label} {estimator} {n}x{d}", ksd, [x, s, w], [True, True, True], dtype)

            def boot(be, x, s, base=base, sigma=sigma, beta=beta, c=c):
                r = ik.ksd_test(x, s, n_bootstrap=40, seed=1, kernel=base, sigma=sigma, beta=beta, c=c, backend=be)
                return torch.cat([torch.as_tensor([r.statistic], dtype=torch.float64), r.bootstrap_statistics])

            add(f"ksd_test {label} {n}x{d}", boot, [x, s], [False, False], dtype)


def report(checks: Sequence[Check]) -> str:
    """One line per failed check and a summary line."""
    failed = [c for c in checks if not c.ok]
    lines = [f"FAIL {c.name}: error {c.error:.3g} > allowed {c.allowed:.3g}" for c in failed]
    worst = max(checks, key=lambda c: c.error / c.allowed if c.allowed else (0.0 if c.ok else float("inf")))
    lines.append(f"{len(checks) - len(failed)}/{len(checks)} checks passed; tightest: {worst.name} "
                 f"(error {worst.error:.3g}, allowed {worst.allowed:.3g})")
    return "\n".join(lines)
