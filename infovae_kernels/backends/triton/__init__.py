"""The "triton" backend: the three primitives of reference.py as Triton kernels, registered as
``torch.ops.infovae_triton.{rbf_gram, pair_reduce, quad_form}`` with the schemas of csrc/ops.cpp.

Runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (the Triton interpreter, for tests).

Registration
    On a GPU build the ops are ``torch.library.triton_op`` (torch >= 2.6) and launch their kernels
    through ``torch.library.wrap_triton``, so torch.compile / Inductor see into them (fullgraph works,
    no graph break) and CUDA graphs can capture them (no host syncs, no host-to-device copies; the
    per-scale constants are made on the device with ``torch.full``). The fake (meta) implementation
    is derived by triton_op from the body. Under TRITON_INTERPRET=1, torch's wrap_triton returns the
    interpreted kernel unwrapped (it cannot be traced), so the ops are registered with
    ``torch.library.custom_op`` (opaque to tracing) plus the shared fakes of ``backends/fake.py``;
    the same happens on torch < 2.6, which has no triton_op.

Numerics (see kernels.py for the tiling)
    Distances: d <= 16 from coordinate differences; d > 16 as |x|^2 + |y|^2 - 2 x.y by tl.dot on
    inputs centred on the pooled mean, clamped at 0. Per-pair math in float32 (float16/bfloat16 are
    upcast in the kernel), float64 inputs compute in float64. Tile partials are added into float64
    accumulators in a fixed order, programs write float64 partials that torch sums in a fixed order:
    no atomics, bitwise reproducible for a given launch configuration.

    ``set_precision(p)`` selects the tl.dot input precision for float32 compute (float64 always uses
    IEEE). It is read when an op runs (under torch.compile: when it is traced).
      "ieee"   (default) float32 FMA dot. Measured under TRITON_INTERPRET=1 against the float64
               reference, N(0,1) data, sigma = sqrt(d), signed v and a, error = max|err| / max|ref|:
                 d = 2, 5, 17 (N=M=200/129x200): S 1e-7 .. 2e-7, G 1e-7 .. 2e-7, quad_form 1e-8 .. 2e-7
                 d = 64 (129x200): S 9e-7 (rbf) / 7e-6 (imq, cancelling signed sum), G 2e-7, q 8e-7
                 d = 784 (7x9):     S 1e-7, G 2e-7, q 1e-7
               i.e. the error of the same math done by torch in float32 (measured alongside:
               S 2e-7 .. 6e-6, G 1e-7 .. 5e-7). Tests allow 2e-5.
      "tf32x3" three tf32 tensor-core products (split precision): expected close to ieee (~1e-6);
               measured on the GPU by benchmarks/gpu_check.sh (tests marked gpu print it).
      "tf32"   one tf32 product (10-bit mantissa): r2 absolute error ~1e-3 |x||y| before the exp;
               for d > 16 expect relative kernel errors up to ~1e-3 .. 1e-2. Measured on the GPU by
               benchmarks/gpu_check.sh. The interpreter ignores the precision, so it cannot be
               measured on CPU.

Autotuning
    With CUDA and INFOVAE_TRITON_AUTOTUNE unset or 1: triton.autotune over BLOCK_M / num_warps /
    num_stages, keyed on (next_pow2(N), next_pow2(M) capped at 65536, d, p, dtype) and cached per process. Only
    choices that do not change the per-row summation order are tuned (the Y tile width BLOCK_N and
    the d chunk are fixed per d, the SPLIT of Y tiles depends on N, M and the SM count only), so the
    tuned choice does not change the result bits beyond reduction-layout effects. With
    INFOVAE_TRITON_AUTOTUNE=0 (read at import) one fixed configuration is used; under
    TRITON_INTERPRET=1 one small configuration.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch
from torch import Tensor

from infovae_kernels.backends import reference

NAMESPACE = "infovae_triton"
MAX_SCALES = 16
PRECISIONS = ("ieee", "tf32x3", "tf32")
SCHEMAS = {
    "rbf_gram": "(Tensor x, Tensor y, float[] sigmas) -> Tensor",
    "pair_reduce": ("(Tensor x, Tensor y, Tensor v, Tensor? a, float[] sigmas, str kernel, "
                    "bool exclude_diagonal) -> (Tensor, Tensor)"),
    "quad_form": "(Tensor z, Tensor w, float[] sigmas, str kernel, bool exclude_diagonal) -> Tensor",
}

try:
    import triton
    import triton.language as tl  # noqa: F401

    from infovae_kernels.backends.triton import kernels as _k

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # ImportError, or a triton that fails to initialise
    triton = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_HAS_TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
_PRECISION = "ieee"


def status() -> tuple[bool, str]:
    """(available, reason)."""
    if _IMPORT_ERROR:
        return False, _IMPORT_ERROR
    if not (torch.cuda.is_available() or _INTERPRET):
        return False, "no CUDA device is visible (set TRITON_INTERPRET=1 to run the kernels on CPU)"
    how = "triton_op" if (_HAS_TRITON_OP and not _INTERPRET) else "custom_op"
    where = "TRITON_INTERPRET=1 interpreter" if _INTERPRET else "CUDA"
    return True, f"Triton {triton.__version__} kernels ({where}, {how})"


def set_precision(precision: str) -> None:
    """tl.dot input precision for float32 compute: "ieee" (default), "tf32x3" or "tf32" (module docstring)."""
    global _PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _PRECISION = precision


def get_precision() -> str:
    return _PRECISION


# ----------------------------------------------------------------------------------------- configs

def _np2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _key(n: int) -> int:
    """Autotune key of a size: its power-of-two bucket, capped at 65536 (configs settle by then, and
    tuning a 1e6-row launch would cost seconds per config)."""
    return min(_np2(n), 1 << 16)


def _clamp_np2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _np2(n)))


def _autotune_on() -> bool:
    return (not _INTERPRET) and os.environ.get("INFOVAE_TRITON_AUTOTUNE", "1") != "0"


if _IMPORT_ERROR is None:
    if _INTERPRET:
        _ROWS_CONFIGS = [triton.Config({"BLOCK_M": 32}, num_warps=4, num_stages=1)]
        _PLAIN_CONFIGS = [triton.Config({}, num_warps=4, num_stages=1)]
    elif _autotune_on():
        _ROWS_CONFIGS = [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=s)
                         for bm, w, s in ((64, 4, 2), (128, 8, 2), (64, 8, 3), (32, 4, 2))]
        _PLAIN_CONFIGS = [triton.Config({}, num_warps=w, num_stages=s) for w, s in ((4, 2), (8, 2))]
    else:
        _ROWS_CONFIGS = [triton.Config({"BLOCK_M": 64}, num_warps=4, num_stages=2)]
        _PLAIN_CONFIGS = [triton.Config({}, num_warps=4, num_stages=2)]

    _PAIR = triton.autotune(configs=_ROWS_CONFIGS, key=["N_KEY", "M_KEY", "D", "P", "NS", "HAS_A"])(
        _k.pair_reduce_kernel)
    _QUAD = triton.autotune(configs=_PLAIN_CONFIGS, key=["N_KEY", "D", "P", "NS"])(_k.quad_form_kernel)
    _GRAM = triton.autotune(configs=_ROWS_CONFIGS, key=["N_KEY", "M_KEY", "D", "NS"])(_k.rbf_gram_kernel)


def _blocks(d: int, p: int) -> dict:
    """Shapes that fix the summation order (never autotuned)."""
    if _INTERPRET:
        bn, bd_hi, bg_hi = 32, 128, 128
    else:
        bn, bd_hi, bg_hi = 64, 64, 64
    return dict(
        BLOCK_N=bn,
        BLOCK_D=_clamp_np2(d, 16, bd_hi),
        BLOCK_P=1 if p == 1 else _clamp_np2(p, 16, 64),
        BLOCK_PA=_clamp_np2(p, 16, 64),
        BLOCK_G=_clamp_np2(d, 16, bg_hi),
        DIRECT=d if d <= 16 else 0,
    )


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs_target(device: torch.device) -> int:
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return 2 * _sm_count(idx)
    return 8  # interpreter: small, but enough to exercise SPLIT > 1 in the tests


def _split(n_programs: int, n_tiles: int, device: torch.device) -> tuple[int, int]:
    """(SPLIT, tiles per split): split Y tiles so that about 2 programs per SM run. Depends on the
    problem size and the device only (not on the autotuned BLOCK_M), so results are config-stable."""
    want = -(-_programs_target(device) // max(1, n_programs))
    split = max(1, min(n_tiles, want, 64))
    per = -(-n_tiles // split)
    return -(-n_tiles // per), per


def _compute_dtype(dtype: torch.dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_dtype(ct: torch.dtype):
    return tl.float64 if ct == torch.float64 else tl.float32


def _prec(ct: torch.dtype) -> str:
    return "ieee" if ct == torch.float64 else _PRECISION


def _consts(sigmas, kernel: str, d: int, device) -> Tensor:
    """Per-scale constants as a float64 device tensor, made without a host-to-device copy."""
    if kernel == "rbf":
        vals = [0.5 / (float(s) ** 2) for s in sigmas]
    else:
        vals = [2.0 * d * float(s) ** 2 for s in sigmas]
    parts = [torch.full((1,), v, dtype=torch.float64, device=device) for v in vals]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _pooled_mean(ct, *ts: Tensor) -> Tensor:
    total = sum(t.shape[0] for t in ts)
    acc = ts[0].sum(0, dtype=ct)
    for t in ts[1:]:
        acc = acc + t.sum(0, dtype=ct)
    return acc / total


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(name: str, tensors: dict, sigmas, kernel: str) -> None:
    first = next(iter(tensors.values()))
    for tname, t in tensors.items():
        if t.dim() != 2:
            raise ValueError(f"infovae_triton.{name}: {tname} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"infovae_triton.{name}: {tname} must be float16/bfloat16/float32/float64, "
                             f"got {t.dtype}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"infovae_triton.{name}: all inputs must share dtype and device")
    if first.device.type != "cuda" and not (first.device.type == "cpu" and _INTERPRET):
        raise ValueError(f"infovae_triton.{name}: runs on CUDA tensors (CPU tensors only under "
                         f"TRITON_INTERPRET=1), got a {first.device.type} tensor")
    if not 1 <= len(sigmas) <= MAX_SCALES:
        raise ValueError(f"infovae_triton.{name}: between 1 and {MAX_SCALES} scales, got {len(sigmas)}")
    if kernel not in reference.KERNELS:
        raise ValueError(f"infovae_triton.{name}: kernel must be one of {reference.KERNELS}, got {kernel!r}")


def _launch(kernel):
    if _HAS_TRITON_OP and not _INTERPRET:
        return torch.library.wrap_triton(kernel)
    return kernel


# ------------------------------------------------------------------------------------ op bodies

def _rbf_gram(x: Tensor, y: Tensor, sigmas: list[float]) -> Tensor:
    _check("rbf_gram", {"x": x, "y": y}, sigmas, "rbf")
    if x.shape[1] != y.shape[1]:
        raise ValueError("infovae_triton.rbf_gram: x and y need the same number of columns")
    N, d = x.shape
    M = y.shape[0]
    if N == 0 or M == 0 or d == 0:
        return reference.rbf_gram(x, y, sigmas)
    x, y = x.contiguous(), y.contiguous()
    ct = _compute_dtype(x.dtype)
    out = torch.empty((N, M), dtype=x.dtype, device=x.device)
    b = _blocks(d, 1)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(M, b["BLOCK_N"]))  # noqa: E731
    _launch(_GRAM)[grid](
        x, y, _pooled_mean(ct, x, y), _consts(sigmas, "rbf", d, x.device), out,
        N, M, d, x.stride(0), y.stride(0), _key(N), _key(M),
        NS=len(sigmas), DIRECT=b["DIRECT"], CT=_tl_dtype(ct), PREC=_prec(ct),
        BLOCK_N=b["BLOCK_N"], BLOCK_D=b["BLOCK_D"])
    return out


def _pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], sigmas: list[float],
                 kernel: str, exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    tensors = {"x": x, "y": y, "v": v}
    if a is not None:
        tensors["a"] = a
    _check("pair_reduce", tensors, sigmas, kernel)
    N, d = x.shape
    M, p = y.shape[0], v.shape[1]
    if y.shape[1] != d or v.shape[0] != M or (a is not None and tuple(a.shape) != (N, p)):
        raise ValueError(f"infovae_triton.pair_reduce: shapes x {tuple(x.shape)}, y {tuple(y.shape)}, "
                         f"v {tuple(v.shape)}, a {None if a is None else tuple(a.shape)} do not fit "
                         f"(N,d), (M,d), (M,p), (N,p)")
    if N == 0 or M == 0 or d == 0 or p == 0:
        return reference.pair_reduce(x, y, v, a, sigmas, kernel, exclude_diagonal)
    x, y, v = x.contiguous(), y.contiguous(), v.contiguous()
    has_a = a is not None
    if has_a:
        a = a.contiguous()
    ct = _compute_dtype(x.dtype)
    b = _blocks(d, p)
    n_s = triton.cdiv(p, b["BLOCK_P"])
    n_g = triton.cdiv(d, b["BLOCK_G"]) if has_a else 0
    n_chunks = max(n_s, n_g)
    n_tiles = triton.cdiv(M, b["BLOCK_N"])
    split, per = _split(triton.cdiv(N, 64) * n_chunks, n_tiles, x.device)
    s_part = torch.empty((split, N, p), dtype=torch.float64, device=x.device)
    g_part = torch.empty((split, N, d) if has_a else (1,), dtype=torch.float64, device=x.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), n_chunks, split)  # noqa: E731
    _launch(_PAIR)[grid](
        x, y, v, a if has_a else v, _pooled_mean(ct, x, y), _consts(sigmas, kernel, d, x.device),
        s_part, g_part,
        N, M, d, p, x.stride(0), y.stride(0), v.stride(0), a.stride(0) if has_a else 0,
        per, n_s, n_g, _key(N), _key(M),
        NS=len(sigmas), KIND=0 if kernel == "rbf" else 1, HAS_A=has_a, EXCL=bool(exclude_diagonal),
        DIRECT=b["DIRECT"], P_ONE=b["BLOCK_P"] == 1, CT=_tl_dtype(ct), PREC=_prec(ct),
        BLOCK_N=b["BLOCK_N"], BLOCK_D=b["BLOCK_D"], BLOCK_P=b["BLOCK_P"], BLOCK_PA=b["BLOCK_PA"],
        BLOCK_G=b["BLOCK_G"])
    s = s_part.sum(0)
    g = g_part.sum(0) if has_a else torch.zeros((0, d), dtype=torch.float64, device=x.device)
    return s, g


def _quad_form(z: Tensor, w: Tensor, sigmas: list[float], kernel: str, exclude_diagonal: bool) -> Tensor:
    _check("quad_form", {"z": z, "w": w}, sigmas, kernel)
    N, d = z.shape
    P = w.shape[1]
    if w.shape[0] != N:
        raise ValueError(f"infovae_triton.quad_form: w must have {N} rows, got shape {tuple(w.shape)}")
    if N == 0 or d == 0 or P == 0:
        return reference.quad_form(z, w, sigmas, kernel, exclude_diagonal)
    z, w = z.contiguous(), w.contiguous()
    ct = _compute_dtype(z.dtype)
    b = _blocks(d, P)
    block = b["BLOCK_N"]
    n_blocks = triton.cdiv(N, block)
    n_chunks = triton.cdiv(P, b["BLOCK_P"])
    split, _ = _split(n_blocks * n_chunks, n_blocks, z.device)
    q_part = torch.empty((split, n_blocks, P), dtype=torch.float64, device=z.device)
    _launch(_QUAD)[(n_blocks, n_chunks, split)](
        z, w, _pooled_mean(ct, z), _consts(sigmas, kernel, d, z.device), q_part,
        N, d, P, z.stride(0), w.stride(0), n_blocks, split, _key(N),
        NS=len(sigmas), KIND=0 if kernel == "rbf" else 1, EXCL=bool(exclude_diagonal),
        DIRECT=b["DIRECT"], P_ONE=b["BLOCK_P"] == 1, CT=_tl_dtype(ct), PREC=_prec(ct),
        BLOCK=block, BLOCK_D=b["BLOCK_D"], BLOCK_P=b["BLOCK_P"])
    return q_part.sum((0, 1))


# ---------------------------------------------------------------------------------- registration

def _register():
    from infovae_kernels.backends import fake

    bodies = {"rbf_gram": _rbf_gram, "pair_reduce": _pair_reduce, "quad_form": _quad_form}
    ops = {}
    if _HAS_TRITON_OP and not _INTERPRET:
        for name, fn in bodies.items():
            ops[name] = torch.library.triton_op(f"{NAMESPACE}::{name}", fn, mutates_args=(),
                                                schema=SCHEMAS[name])
    else:
        for name, fn in bodies.items():
            ops[name] = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=(),
                                                schema=SCHEMAS[name])
        fake.register_fakes(NAMESPACE)
    return ops


if _IMPORT_ERROR is None:
    _OPS = _register()


def _require():
    if _IMPORT_ERROR:
        raise RuntimeError(f"the triton backend is not available: {_IMPORT_ERROR}")


def rbf_gram(x: Tensor, y: Tensor, sigmas) -> Tensor:
    _require()
    return torch.ops.infovae_triton.rbf_gram(x, y, [float(s) for s in sigmas])


def pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], sigmas, kernel: str,
                exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    _require()
    return torch.ops.infovae_triton.pair_reduce(x, y, v, a, [float(s) for s in sigmas], kernel,
                                                bool(exclude_diagonal))


def quad_form(z: Tensor, w: Tensor, sigmas, kernel: str, exclude_diagonal: bool) -> Tensor:
    _require()
    return torch.ops.infovae_triton.quad_form(z, w, [float(s) for s in sigmas], kernel,
                                              bool(exclude_diagonal))
