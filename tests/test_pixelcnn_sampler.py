"""PixelCNNDecoder.sample (vertical stacks cached row by row, horizontal stacks on a window of one row)
against the per-pixel full pass it replaces: same images for the same z and generator, and the logit each
pixel was drawn from equal to the teacher-forced forward(z, x) on the final image."""

import os
import sys

import pytest
import torch

try:
    import infovae  # noqa: F401
except ImportError:  # the editable install predates python/infovae: use the source tree
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))

from infovae.nets import PixelCNNDecoder

torch.set_num_threads(1)


@torch.no_grad()
def naive_sample(dec, z, generator):
    """The old sampler: one full forward pass per pixel, the same uniforms."""
    n, (_, rows, cols) = z.shape[0], dec.shape
    x = z.new_zeros(n, *dec.shape)
    u = torch.rand(n, rows, cols, generator=generator, dtype=z.dtype).to(z.device)
    for i in range(rows):
        for j in range(cols):
            p = torch.sigmoid(dec(z, x)[:, 0, i, j])
            x[:, 0, i, j] = (u[:, i, j] < p).to(x.dtype)
    return x


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("layers", [1, 2, 4])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 12, 12), (1, 7, 10)])
def test_fast_sampler_equals_per_pixel_sampler(shape, layers, dtype, atol):
    torch.manual_seed(layers)
    dec = PixelCNNDecoder(shape, 3, channels=8, layers=layers).to(dtype).eval()
    z = 2 * torch.randn(5, 3, dtype=dtype)  # spread z so the images differ between rows of the batch
    x, logits = dec._sample(z, torch.Generator().manual_seed(7))
    ref = naive_sample(dec, z, torch.Generator().manual_seed(7))
    assert torch.equal(x, ref)
    assert 0 < x.mean() < 1  # a non-trivial image: both pixel values drawn
    with torch.no_grad():
        forced = dec(z, x)[:, 0]
    torch.testing.assert_close(logits, forced, atol=atol, rtol=0)
    assert torch.equal(dec.sample(z, torch.Generator().manual_seed(7)), x)


def test_fast_sampler_draws_from_generator():
    dec = PixelCNNDecoder((1, 8, 8), 3, channels=8, layers=2)
    z = torch.randn(5, 3)
    a = dec.sample(z, torch.Generator().manual_seed(0))
    assert torch.equal(a, dec.sample(z, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, dec.sample(z, torch.Generator().manual_seed(1)))
    assert a.shape == (5, 1, 8, 8) and set(a.unique().tolist()) <= {0.0, 1.0}
