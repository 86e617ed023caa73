"""Fake (meta) implementations shared by every namespace that implements the three primitives
(infovae:: for C++, infovae_triton:: for Triton): shapes and dtypes only, see reference.py."""

from __future__ import annotations

import torch


def rbf_gram_fake(x, y, sigmas):
    return x.new_empty((x.shape[0], y.shape[0]))


def pair_reduce_fake(x, y, v, a, sigmas, kernel, exclude_diagonal):
    s = x.new_empty((x.shape[0], v.shape[1]), dtype=torch.float64)
    rows = x.shape[0] if a is not None else 0
    return s, x.new_empty((rows, x.shape[1]), dtype=torch.float64)


def quad_form_fake(z, w, sigmas, kernel, exclude_diagonal):
    return z.new_empty((w.shape[1],), dtype=torch.float64)


def register_fakes(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::rbf_gram")(rbf_gram_fake)
    torch.library.register_fake(f"{namespace}::pair_reduce")(pair_reduce_fake)
    torch.library.register_fake(f"{namespace}::quad_form")(quad_form_fake)
