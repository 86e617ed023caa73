"""torch.vmap of the three MMD primitives. Every backend takes a leading batch dim (the contract in
reference.py), so each primitive's vmap rule moves the vmapped dim to the front (expanding an argument
that is not vmapped), merges it with a batch the arguments already have (nested vmaps), makes one
batched call, and gives every output the vmapped dim 0: vmap runs the batched kernels, never a loop."""

from __future__ import annotations

import torch

#: How many leading arguments of each primitive are tensors (the points first, params last).
TENSOR_ARGS = {"gram": 3, "pair_reduce": 5, "quad_form": 4}


def to_front(info, in_dims: tuple, tensors: tuple, shared: int | None = None):
    """(tensors, restore) for a vmap rule that makes one batched call: each tensor with the vmapped dim in
    front (one that is not vmapped expanded, except tensor `shared` when 1-D: a bandwidth every problem
    shares), merged with a batch the call already has (the points, tensors[0], are then (size, inner, N, d):
    a nested vmap, or a batched call inside the vmap); restore(output) gives an output the vmapped dim 0
    back."""
    size = info.batch_size

    def front(i, t, dim):
        if t is None or dim is None and i == shared and t.dim() == 1:
            return t, False
        return (t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)), True

    fronted = [front(i, t, d) for i, (t, d) in enumerate(zip(tensors, in_dims))]
    if fronted[0][0].dim() != 4:
        return [t for t, _ in fronted], lambda o: o
    inner = fronted[0][0].shape[1]

    def merge(i, t, moved):
        if not moved:
            return t
        if i == shared and t.dim() == 2:  # one bandwidth row per outer problem: the same for its inner ones
            t = t[:, None].expand(size, inner, t.shape[-1])
        return t.flatten(0, 1)

    return [merge(i, t, m) for i, (t, m) in enumerate(fronted)], lambda o: o.unflatten(0, (size, inner))


def _rule(op, n_tensors: int):
    def rule(info, in_dims, *args):
        tensors, restore = to_front(info, in_dims[:n_tensors], args[:n_tensors])
        out = op(*tensors, *args[n_tensors:])
        if isinstance(out, tuple):
            return tuple(restore(o) for o in out), (0,) * len(out)
        return restore(out), 0
    return rule


def register_vmaps(namespace: str, ops: dict) -> None:
    """Registers the vmap rule of namespace::name for each primitive name -> callable in `ops`."""
    for name, op in ops.items():
        torch.library.register_vmap(f"{namespace}::{name}", _rule(op, TENSOR_ARGS[name]))
