"""Fake (meta) implementations shared by every namespace that implements the three primitives
(infovae:: for C++, infovae_triton:: for Triton): shapes and dtypes only, see reference.py. The three
MMD primitives take an optional leading batch dimension (every output then has it too)."""

from __future__ import annotations

import torch


def gram_fake(x, y, params, kernel, derivative):
    return x.new_empty(x.shape[:-1] + (y.shape[-2],))


def pair_reduce_fake(x, y, v, a, params, kernel, exclude_diagonal):
    batch = x.shape[:-2]
    s = x.new_empty(batch + (x.shape[-2], v.shape[-1]), dtype=torch.float64)
    rows = x.shape[-2] if a is not None else 0
    return s, x.new_empty(batch + (rows, x.shape[-1]), dtype=torch.float64)


def quad_form_fake(z, w, a, params, kernel, exclude_diagonal, row_sums):
    batch, n = z.shape[:-2], z.shape[-2]
    q = z.new_empty(batch + (w.shape[-1],), dtype=torch.float64)
    s = z.new_empty(batch + (n if row_sums else 0, w.shape[-1]), dtype=torch.float64)
    g = z.new_empty(batch + (n if a is not None else 0, z.shape[-1]), dtype=torch.float64)
    return q, s, g


def stein_form_fake(x, s, w, params, kernel, exclude_diagonal):
    return x.new_empty((w.shape[1],), dtype=torch.float64)


def stein_moments_fake(x, s, w, params, kernel, exclude_diagonal):
    return x.new_empty((x.shape[0], 4, 1 + 2 * x.shape[1]), dtype=torch.float64)


def stein_thin_fake(x, s, objective, params, kernel, steps):
    return x.new_empty((steps,), dtype=torch.int64), torch.empty_like(objective)


#: Every primitive's meta implementation: the three shared ones and the Stein ones (stein_thin: cpu only).
FAKES = {"gram": gram_fake, "pair_reduce": pair_reduce_fake, "quad_form": quad_form_fake,
         "stein_form": stein_form_fake, "stein_moments": stein_moments_fake, "stein_thin": stein_thin_fake}


def register_fakes(namespace: str, names=tuple(FAKES)) -> None:
    """Registers the fakes of `names` (the primitives `namespace` defines) for namespace::name."""
    for name in names:
        torch.library.register_fake(f"{namespace}::{name}")(FAKES[name])
