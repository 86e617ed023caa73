"""torch.vmap of the three MMD primitives. Every backend takes a leading batch dim (the contract in
reference.py), so each primitive's vmap rule moves the vmapped dim to the front (expanding an argument
that is not vmapped), merges it with a batch the arguments already have (nested vmaps), makes one
batched call, and gives every output the vmapped dim 0: vmap runs the batched kernels, never a loop."""

from __future__ import annotations

import torch

#: How many leading arguments of each primitive are tensors (the points first, params last).
TENSOR_ARGS = {"gram": 3, "pair_reduce": 5, "quad_form": 4}


def _rule(op, n_tensors: int):
    def rule(info, in_dims, *args):
        size, tensors, rest = info.batch_size, args[:n_tensors], args[n_tensors:]
        points, points_dim = tensors[0], in_dims[0]
        inner = points.dim() - (points_dim is not None) == 3  # the call is already batched: nested vmap

        def leading(t, dim):
            if t is None:
                return None
            t = t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)
            return t.flatten(0, 1) if inner else t

        out = op(*(leading(t, d) for t, d in zip(tensors, in_dims)), *rest)
        restore = (lambda o: o.unflatten(0, (size, -1))) if inner else (lambda o: o)
        if isinstance(out, tuple):
            return tuple(restore(o) for o in out), (0,) * len(out)
        return restore(out), 0
    return rule


def register_vmaps(namespace: str, ops: dict) -> None:
    """Registers the vmap rule of namespace::name for each primitive name -> callable in `ops`."""
    for name, op in ops.items():
        torch.library.register_vmap(f"{namespace}::{name}", _rule(op, TENSOR_ARGS[name]))
