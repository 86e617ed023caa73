"""The "triton" backend: the three primitives (contract in csrc/ops.h, semantics in backends/reference.py)
as Triton kernels, registered as ``torch.ops.infovae_triton.{gram, pair_reduce, quad_form}`` with the
schemas of csrc/ops.cpp; and the Stein primitives ``torch.ops.infovae_triton.{stein_form, stein_moments}``
(semantics: csrc/cpu/stein.cpp and the stein_form of backends/reference.py), same schemas as the C++
ops. The Stein ops take distances like the distance kernels (differences for d <= 16, else the expansion
unless the lossy rule, with the base's inverse squared length scale as kappa, says otherwise) and the
imq base's b^beta as exp(beta log b).

Runs on CUDA tensors; on CPU tensors only under TRITON_INTERPRET=1 (the Triton interpreter, for tests).

Batches (the batch contract of issue 22)
    gram, pair_reduce and quad_form also take a leading batch dim: points and weights (B, rows, cols),
    params (B, S'), problem b using params[b] and rows b only; outputs get the same leading dim. One launch
    per phase covers the batch, folded into the first grid axis (program b * blocks + block; axes 1 and 2
    keep their roles); the kernels offset their pointers by batch strides and read params[b] on the
    device. Host decisions (tile plan, pair_reduce's split of the Y range, quad_form's rounds per launch
    and q rows) depend on one problem's sizes, not on B; the lossy flag is per problem (B flags, on the
    device). So problem b is bitwise its 2-D call, and a 2-D call runs as a batch of one with the bits of
    before. quad_form's S / G slot buffers are B times one problem's (up to B x _SLOT_BYTES).

Registration
    On a GPU the ops are ``torch.library.triton_op`` and launch their kernels through
    ``torch.library.wrap_triton``, so torch.compile / Inductor see into them and CUDA graphs can capture
    them: no host syncs (the kernel params are read in-kernel from their float64 tensor; every loop
    bound is a shape), no host-to-device copies. Under TRITON_INTERPRET=1 wrap_triton cannot trace the
    interpreted kernels, so the ops are ``torch.library.custom_op`` with the shared fakes of
    backends/fake.py.

Numerics (kernels.py has the details)
    r2 from coordinate differences for d <= 16; for d > 16 from |x|^2 + |y|^2 - 2 x.y (tl.dot), or from
    differences for the whole problem (each of a batch) when the lossy-distance rule of
    infovae_kernels/kernels.py says the expansion loses the distance (decided on the device: a flag per
    problem that the kernels read, no host sync).
    laplacian and energy use differences for every d (sqrt of r2: the expansion would be lossy near
    r = 0); polynomial needs only x.y (a loop over d for d <= 16, else tl.dot; no lossy rule), its G
    drops the x_i sum_j W_ij term, and its degree is read in the kernel (no host read on a GPU; on CPU
    tensors _check validates it). quad_form forces r2(i, i) = 0 (distance kernels); g(0) = 0 everywhere.
    float16/bfloat16 are upcast in the kernel and compute in float32 like float32; float64 computes in
    float64. exp is Triton's tl.exp (on NVIDIA GPUs ex2.approx.f32 of x log2(e) for float32), sqrt
    tl.sqrt (sqrt.approx.ftz.f32; sqrt.rn.f64). Partials are combined in float64 in a fixed order, no
    atomics.

    ``set_precision(p)`` selects the tl.dot input precision for float32 compute (float64 is always IEEE):
    "ieee" (default; float32 FMA), "tf32x3" (three tf32 products), "tf32" (one tf32 product, ~1e-3
    relative error of x.y). The interpreter ignores it; benchmarks/bench_gpu.py (run by gpu_check.sh)
    measures each mode's error against float64 on the GPU (precision_<gpu>.csv).

Determinism and tuning
    Tile shapes and num_warps are fixed per (kernel, d, dtype) (``_plan``): they decide every summation
    order. With CUDA and INFOVAE_TRITON_AUTOTUNE unset or 1, gram and pair_reduce are autotuned over
    num_stages only (software pipelining; the arithmetic is unchanged); quad_form is never tuned (its
    value+gradient launches read-add-write their slots, which an autotuner's repeated runs would double).
    The pair_reduce split of the Y range is a function of the shapes, not of the SM count. So results
    are the same for every tuned choice, in every process, on any GPU of the same architecture (and
    Triton version). Tests run every configuration of the tuning space through ``_forced_config`` and
    compare bits; ``aot.py`` compiles the kernels for sm_90 without a GPU and reads their register use.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch
from torch import Tensor

from infovae_kernels.kernels import (LOSSY_TOLERANCE, MAX_DEGREE, MAX_SCALES, PRIMITIVE_KERNELS, STEIN_BASES,
                                     compute_dtype, unit_roundoff)

NAMESPACE = "infovae_triton"
PRECISIONS = ("ieee", "tf32x3", "tf32")
#: The schemas of csrc/ops.cpp (tests/test_triton.py compares them).
SCHEMAS = {
    "gram": "(Tensor x, Tensor y, Tensor params, str kernel, bool derivative) -> Tensor",
    "pair_reduce": ("(Tensor x, Tensor y, Tensor v, Tensor? a, Tensor params, str kernel, "
                    "bool exclude_diagonal) -> (Tensor, Tensor)"),
    "quad_form": ("(Tensor z, Tensor w, Tensor? a, Tensor params, str kernel, bool exclude_diagonal, "
                  "bool row_sums) -> (Tensor, Tensor, Tensor)"),
    "stein_form": "(Tensor x, Tensor s, Tensor w, Tensor params, str kernel, bool exclude_diagonal) -> Tensor",
    "stein_moments": "(Tensor x, Tensor s, Tensor w, Tensor params, str kernel, bool exclude_diagonal) -> Tensor",
}

try:
    import triton
    import triton.language as tl

    from infovae_kernels.backends.triton import kernels as _k

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # ImportError, or a triton that fails to initialise
    triton = None
    _IMPORT_ERROR = f"triton is not importable ({type(exc).__name__}: {exc})"

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_HAS_TRITON_OP = hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")
_PRECISION = "ieee"
#: Slot memory of one quad_form launch block with S/G (bytes); bounds the rounds per launch.
_SLOT_BYTES = 256 << 20
#: quad_form's q partials: at most about this many cells per column (rounds x row tiles otherwise grow
#: as N^2: 4e8 cells at N = 2^21).
_Q_CELLS = 1 << 22
#: pair_reduce splits its Y range until about this many programs run (a constant: not the SM count).
_PROGRAMS_TARGET = 8 if _INTERPRET else 1024
_FORCED: Optional[tuple[int, int]] = None   # (num_warps, num_stages) forced by tests
_TILE_OVERRIDE: dict = {}                    # tile shapes forced by tests (the sensitivity control)


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
    """tl.dot input precision for float32 compute: "ieee" (default), "tf32x3" or "tf32"."""
    global _PRECISION
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    _PRECISION = precision


def get_precision() -> str:
    return _PRECISION


# ----------------------------------------------------------------------------------------- plans

def _np2(n: int) -> int:
    n = int(n)
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _key(n: int) -> int:
    """Autotune key of a size: its power-of-two bucket, capped at 65536."""
    return min(_np2(n), 1 << 16)


def _clamp_np2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _np2(n)))


def _autotune_on() -> bool:
    return (not _INTERPRET) and os.environ.get("INFOVAE_TRITON_AUTOTUNE", "1") != "0"


#: (kind, float64, d <= 16) -> (BM, BN, num_warps) of the Stein kernels on a GPU (see _plan).
_STEIN_GPU_TILES = {
    ("stein", False, True): (64, 64, 8), ("stein", False, False): (32, 32, 4),
    ("stein", True, True): (32, 32, 4), ("stein", True, False): (32, 32, 8),
    ("stein_moments", False, True): (32, 32, 8), ("stein_moments", False, False): (32, 32, 8),
    ("stein_moments", True, True): (16, 32, 4), ("stein_moments", True, False): (16, 32, 4),
}


def _plan(kind: str, d: int, dtype: torch.dtype, gpu: bool = not _INTERPRET) -> dict:
    """Tile shapes and launch configurations of kernel `kind` ("gram", "pair", "quad", "stein" (stein_form),
    "stein_moments") for feature dimension d and input dtype: a function of (kind, d, dtype) only. BM x BN
    is the pair tile (quad, stein: B x B), BLOCK_D the tl.dot chunk of d, BLOCK_G the width of a G output
    chunk. 'space' is the autotuning space: (num_warps, num_stages) pairs with one num_warps (it fixes the
    register layout and so the reduction order); its first entry is the configuration used when
    autotuning is off.

    GPU choices: the largest tiles that ptxas fits in registers for sm_90a without local-memory spills
    (compiled without a GPU, aot.py; 2 scales), float32: quad_form 64 x 64 tiles, 8 warps, G in 16-column
    chunks (triton 3.6: 180-233 registers; 3.9: up to 255 and 16-40 B of local memory at d = 64), whose
    G slot traffic per pair is half that of 32-row tiles; pair_reduce 64 x 64 (d <= 16) / 32 x 64
    (d > 16), 8 warps (181-233); gram 64 x 64, 8 warps (94-146); float64 32 x 32 (158-196). 4 warps at 64 x 64 spilled 0.3-3 KB per thread, a per-tile
    runtime branch between the distance formulas 5-8 KB. The Stein kernels (_STEIN_GPU_TILES, 16-wide d
    chunks; triton 3.9, 1-2 scales, 0-24 B of local memory): stein_form 64 x 64 / 8 warps for float32 at
    d <= 16 (255 registers, 0-16 B), 32 x 32 / 4 warps at d > 16 (141-255, 0-8 B; 64 x 64 spilled 40-96 B),
    float64 32 x 32; stein_moments (four float64 accumulators of 16 columns) 32 x 32 / 8 warps for float32
    (156-174; 32 x 64 spilled 0.1-1.2 KB), 16 x 32 / 4 warps for float64 (168-255, 0-24 B). Not yet timed on
    a GPU."""
    f64 = compute_dtype(dtype) == torch.float64
    small = d <= 16
    if not gpu:  # interpreter: small tiles keep numpy fast; several tiles per test problem
        bm = bn = 32
        num_warps = 4
    elif kind in ("stein", "stein_moments"):
        bm, bn, num_warps = _STEIN_GPU_TILES[kind, f64, small]
    elif f64:
        bm = bn = 32
        num_warps = 4 if (small or kind == "gram") else 8
    else:
        num_warps = 8
        if kind == "pair":
            bm, bn = (64 if small else 32), 64
        else:
            bm = bn = 64
    stein = gpu and kind in ("stein", "stein_moments")
    block_g = 16 if (gpu and not f64 and kind == "quad") or stein else _clamp_np2(d, 16, 32)
    plan = dict(BM=bm, BN=bn, BLOCK_D=16 if stein else 32, BLOCK_G=block_g)
    if kind in ("quad", "stein"):  # their programs read-add-write q partials: never benchmarked
        plan["space"] = ((num_warps, 2),)
    else:
        plan["space"] = tuple((num_warps, s) for s in ((2, 3) if d > 16 else (1, 2)))
    plan.update(_TILE_OVERRIDE)
    return plan


def _configs(plan: dict) -> tuple:
    if _FORCED is not None:
        return (_FORCED,)
    return plan["space"] if _autotune_on() else plan["space"][:1]


@contextlib.contextmanager
def _forced_config(num_warps: int, num_stages: int):
    """Run every kernel with this one (num_warps, num_stages) (tests: bit-neutrality of the tuning)."""
    global _FORCED
    old, _FORCED = _FORCED, (int(num_warps), int(num_stages))
    try:
        yield
    finally:
        _FORCED = old


@contextlib.contextmanager
def _forced_tiles(**tiles):
    """Override tile shapes (tests only: shows that the bitwise comparison can see a layout change)."""
    old = dict(_TILE_OVERRIDE)
    _TILE_OVERRIDE.update(tiles)
    try:
        yield
    finally:
        _TILE_OVERRIDE.clear()
        _TILE_OVERRIDE.update(old)


_AUTOTUNE_KEYS = {
    "gram_kernel": ["N_KEY", "M_KEY", "D"],
    "pair_reduce_kernel": ["N_KEY", "M_KEY", "D", "P"],
    "quad_form_kernel": ["N_KEY", "D", "P"],
    "sum_slots_kernel": ["n_slots"],
    "sum_rows_kernel": ["n_cols"],
    "lossy_flag_kernel": ["D"],
    "stein_form_kernel": ["N_KEY", "D", "P"],
    "stein_moments_kernel": ["N_KEY", "D"],
}


@functools.lru_cache(maxsize=None)
def _tuner(name: str, configs: tuple):
    """The kernel `name` wrapped in a triton.autotune over `configs` ((num_warps, num_stages) pairs; one
    entry: no benchmarking). On a GPU, wrapped for torch.compile by wrap_triton."""
    fn = triton.autotune(configs=[triton.Config({}, num_warps=w, num_stages=s) for w, s in configs],
                         key=_AUTOTUNE_KEYS[name])(getattr(_k, name))
    if _HAS_TRITON_OP and not _INTERPRET:
        return torch.library.wrap_triton(fn)
    return fn


def _tl_dtype(ct: torch.dtype):
    return tl.float64 if ct == torch.float64 else tl.float32


#: The kernels' KIND constexpr: pair_math.h's KernelKind (kernels.PRIMITIVE_KERNELS is in its order).
_KIND = {name: i for i, name in enumerate(PRIMITIVE_KERNELS)}
_DOT_KERNELS = ("polynomial",)
_ALWAYS_DIFFERENCES = ("laplacian", "energy")


def _common_meta(kernel: str, params: Tensor, ct: torch.dtype) -> dict:
    # NS: the scale count of the distance kernels; the dot kernel reads its three params by position.
    return dict(NS=1 if kernel in _DOT_KERNELS else params.shape[-1], KIND=_KIND[kernel], CT=_tl_dtype(ct),
                PREC="ieee" if ct == torch.float64 else _PRECISION)


def _variants(x: Tensor, y: Tensor, params: Tensor, kernel: str, ct: torch.dtype) -> tuple[Tensor, list]:
    """(flag tensor, [launch meta per variant]) of a batch x (B, N, d), y (B, M, d), params (B, S').
    d <= 16, laplacian and energy: one launch, coordinate differences, ungated. polynomial: one launch,
    ungated, its dot by a loop over d (d <= 16, DIFF) or tl.dot (no lossy rule: no distances). rbf and imq
    at d > 16: the lossy flag of each problem (B flags, one program each) is computed on the device and
    two launches follow, the expansion (GATE 0) and the differences (GATE 1); the programs of a problem
    whose flag selects the other variant return at once. So each problem takes the distance formula its
    2-D call would."""
    d = x.shape[2]
    if kernel in _DOT_KERNELS:
        return params, [dict(DIFF=d <= 16, GATE=-1)]
    if d <= 16 or kernel in _ALWAYS_DIFFERENCES:
        return params, [dict(DIFF=True, GATE=-1)]
    flag = torch.empty((x.shape[0],), dtype=torch.int32, device=x.device)
    _tuner("lossy_flag_kernel", ((4, 1),))[(x.shape[0],)](
        x, y, params, flag, x.shape[1], y.shape[1], d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
        params.stride(0), NS=params.shape[1], KIND=_KIND[kernel], CT=_tl_dtype(ct),
        LOSSY_BOUND=float(LOSSY_TOLERANCE / unit_roundoff(ct)), BLOCK_R=64, BLOCK_C=32)
    return flag, [dict(DIFF=False, GATE=0), dict(DIFF=True, GATE=1)]


# ----------------------------------------------------------------------------------------- checks

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_tensors(name: str, tensors: dict, params: Tensor, batched: bool = False) -> None:
    """The points and weights (2-D, or 3-D when batched; one float dtype and device, at least one feature)
    and the params tensor (1-D, or 2-D when batched)."""
    first_name, first = next(iter(tensors.items()))
    rank = 3 if batched else 2
    for tname, t in tensors.items():
        if t.dim() != rank:
            like = "2-D, or 3-D with a leading batch dim" if tname == first_name else f"{rank}-D like {first_name}"
            raise ValueError(f"{NAMESPACE}.{name}: {tname} must be {like}, got shape {tuple(t.shape)}")
        if t.dtype not in _FLOATS:
            raise ValueError(f"{NAMESPACE}.{name}: {tname} must be float16/bfloat16/float32/float64, got {t.dtype}")
        if t.dtype != first.dtype or t.device != first.device:
            raise ValueError(f"{NAMESPACE}.{name}: all points and weights must share one dtype and device")
    if first.device.type != "cuda" and not (first.device.type == "cpu" and _INTERPRET):
        raise ValueError(f"{NAMESPACE}.{name}: runs on CUDA tensors (CPU tensors only under "
                         f"TRITON_INTERPRET=1), got a {first.device.type} tensor")
    if params.dtype != torch.float64 or params.dim() != rank - 1 or params.device != first.device:
        raise ValueError(f"{NAMESPACE}.{name}: params must be a {rank - 1}-D float64 tensor on {first.device}, "
                         f"got {params.dtype} of shape {tuple(params.shape)} on {params.device}")
    if batched:
        for tname, t in dict(tensors, params=params).items():
            if t.shape[0] != first.shape[0]:
                raise ValueError(f"{NAMESPACE}.{name}: {tname} holds {t.shape[0]} problems, "
                                 f"{first_name} {first.shape[0]}")
    if first.shape[-1] == 0:
        raise ValueError(f"{NAMESPACE}.{name}: points need at least one feature")


def _as_batch(name: str, tensors: dict, params: Tensor, kernel: str) -> tuple[bool, list, Tensor]:
    """Validates the primitives' arguments (the public layer checks user input before) and returns
    (batched, the tensors as 3-D (B, rows, cols), params as 2-D (B, S')): a 2-D call is the batch of one
    problem, which computes its bits unchanged (the batch only offsets the kernels' pointers)."""
    batched = next(iter(tensors.values())).dim() == 3
    _check(name, tensors, params, kernel, batched)
    if batched:
        return True, list(tensors.values()), params
    return False, [t.unsqueeze(0) for t in tensors.values()], params.unsqueeze(0)


def _check(name: str, tensors: dict, params: Tensor, kernel: str, batched: bool) -> None:
    _check_tensors(name, tensors, params, batched)
    if kernel not in _KIND:
        raise ValueError(f"{NAMESPACE}.{name}: kernel must be one of {PRIMITIVE_KERNELS}, got {kernel!r}")
    n = params.shape[-1]
    if kernel == "energy" and n != 1:
        raise ValueError(f"{NAMESPACE}.{name}: params must hold 1 value (energy), got {n}")
    if kernel in _DOT_KERNELS:
        if n != 3:
            raise ValueError(f"{NAMESPACE}.{name}: params must hold 3 values [gamma, coef, degree] (polynomial), "
                             f"got {n}")
        if params.device.type == "cpu":  # reading the degree is free here (on a GPU it would be a host sync)
            for degree in params[..., 2].reshape(-1).tolist():
                if not (1 <= degree <= MAX_DEGREE and degree == int(degree)):
                    raise ValueError(f"{NAMESPACE}.{name}: the polynomial degree must be an integer "
                                     f"1..{MAX_DEGREE}, got {degree}")
    elif not 1 <= n <= MAX_SCALES:
        raise ValueError(f"{NAMESPACE}.{name}: between 1 and {MAX_SCALES} scales, got {n}")


def _combine(slots: Tensor) -> Tensor:
    """slots (S, ...) float64 -> (...) summed over S in order 0, 1, ..."""
    out = torch.empty(slots.shape[1:], dtype=torch.float64, device=slots.device)
    n = out.numel()
    if n:
        block = 1024
        _tuner("sum_slots_kernel", ((4, 1),))[(triton.cdiv(n, block),)](
            slots, out, slots.shape[0], n, BLOCK=block)
    return out


# ------------------------------------------------------------------------------------ op bodies
#
# Each primitive takes 2-D inputs (one problem) or 3-D ones with a leading batch dim (B problems, params
# (B, S')): one launch per phase covers the batch, folded into the grid's first axis (program
# b * blocks + block), each program offsetting its pointers to problem b's rows and params. Every host
# decision (tile plan, pair_reduce's split of the Y range, quad_form's rounds per launch and q rows) is
# a function of one problem's sizes (the same for every problem of a batch), and the lossy flag is per
# problem on the device, so problem b's result is bitwise its 2-D call's.

def _gram(x: Tensor, y: Tensor, params: Tensor, kernel: str, derivative: bool) -> Tensor:
    batched, (x, y), params = _as_batch("gram", {"x": x, "y": y}, params, kernel)
    if x.shape[2] != y.shape[2]:
        raise ValueError(f"{NAMESPACE}.gram: x and y need the same number of columns")
    nbatch, N, d = x.shape
    M = y.shape[1]
    out = torch.empty((nbatch, N, M), dtype=x.dtype, device=x.device)
    if out.numel():
        x, y, params = x.contiguous(), y.contiguous(), params.contiguous()
        ct = compute_dtype(x.dtype)
        plan = _plan("gram", d, x.dtype)
        bm, bn = plan["BM"], plan["BN"]
        flag, variants = _variants(x, y, params, kernel, ct)
        for var in variants:
            _tuner("gram_kernel", _configs(plan))[(nbatch * triton.cdiv(N, bm), triton.cdiv(M, bn))](
                x, y, params, flag, out, N, M, d, x.stride(0), x.stride(1), y.stride(0), y.stride(1),
                params.stride(0), _key(N), _key(M),
                DERIV=bool(derivative), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=plan["BLOCK_D"],
                **var, **_common_meta(kernel, params, ct))
    return out if batched else out[0]


def _pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], params: Tensor, kernel: str,
                 exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    tensors = {"x": x, "y": y, "v": v}
    if a is not None:
        tensors["a"] = a
    batched, points, params = _as_batch("pair_reduce", tensors, params, kernel)
    x, y, v = points[:3]
    a = points[3] if a is not None else None
    nbatch, N, d = x.shape
    M, p = y.shape[1], v.shape[2]
    if y.shape[2] != d or v.shape[1] != M or (a is not None and tuple(a.shape[1:]) != (N, p)):
        raise ValueError(f"{NAMESPACE}.pair_reduce: shapes x {tuple(x.shape[1:])}, y {tuple(y.shape[1:])}, "
                         f"v {tuple(v.shape[1:])}, a {None if a is None else tuple(a.shape[1:])} do not fit "
                         f"(N,d), (M,d), (M,p), (N,p)")
    if exclude_diagonal and N != M:
        raise ValueError(f"{NAMESPACE}.pair_reduce: exclude_diagonal needs N == M, got {N} and {M}")
    has_a = a is not None
    dev = x.device
    unbatch = (lambda t: t) if batched else (lambda t: t[0])
    if nbatch == 0 or N == 0 or M == 0 or p == 0:
        return (unbatch(torch.zeros((nbatch, N, p), dtype=torch.float64, device=dev)),
                unbatch(torch.zeros((nbatch, N if has_a else 0, d), dtype=torch.float64, device=dev)))
    x, y, v, params = x.contiguous(), y.contiguous(), v.contiguous(), params.contiguous()
    a = a.contiguous() if has_a else v
    ct = compute_dtype(x.dtype)
    plan = _plan("pair", d, x.dtype)
    bm, bn = plan["BM"], plan["BN"]
    block_p = 1 if p == 1 else _clamp_np2(p, 16, 64)
    n_s = triton.cdiv(p, block_p)
    n_g = triton.cdiv(d, plan["BLOCK_G"]) if has_a else 0
    n_chunks = max(n_s, n_g)
    n_rows = triton.cdiv(N, bm)
    n_tiles = triton.cdiv(M, bn)
    # split the Y tiles so that about _PROGRAMS_TARGET programs run per problem: a function of one
    # problem's shapes only (not of B: a batched problem sums in its 2-D call's order)
    want = max(1, min(n_tiles, 64, -(-_PROGRAMS_TARGET // (n_rows * n_chunks))))
    per = -(-n_tiles // want)
    split = -(-n_tiles // per)
    s_part = torch.empty((split, nbatch, N, p), dtype=torch.float64, device=dev)
    g_part = torch.empty((split, nbatch, N, d) if has_a else (1,), dtype=torch.float64, device=dev)
    flag, variants = _variants(x, y, params, kernel, ct)
    for var in variants:
        _tuner("pair_reduce_kernel", _configs(plan))[(nbatch * n_rows, n_chunks, split)](
            x, y, v, a, params, flag, s_part, g_part,
            N, M, d, p, nbatch, x.stride(0), x.stride(1), y.stride(0), y.stride(1), v.stride(0), v.stride(1),
            a.stride(0), a.stride(1), params.stride(0), per, n_s, n_g, _key(N), _key(M),
            HAS_A=has_a, EXCL=bool(exclude_diagonal), P_ONE=block_p == 1, BLOCK_M=bm, BLOCK_N=bn,
            BLOCK_D=plan["BLOCK_D"], BLOCK_P=block_p, BLOCK_PA=_clamp_np2(p, 16, 64), BLOCK_G=plan["BLOCK_G"],
            **var, **_common_meta(kernel, params, ct))
    s = _combine(s_part)
    g = _combine(g_part) if has_a else torch.zeros((nbatch, 0, d), dtype=torch.float64, device=dev)
    return unbatch(s), unbatch(g)


def _rounds_per_launch(n: int, d: int, p: int, rounds: int, b: int) -> int:
    """Rounds of the circulant sweep per launch when S or G are asked for: one problem's slot buffers
    (2T, N, P + d) float64 stay under _SLOT_BYTES (a batch's are B times that). Depends on one
    problem's shapes only."""
    per_round = 2 * n * (p + d) * 8
    return max(1, min(rounds, _SLOT_BYTES // max(per_round, 1)))


def _quad_form(z: Tensor, w: Tensor, a: Optional[Tensor], params: Tensor, kernel: str,
               exclude_diagonal: bool, row_sums: bool) -> tuple[Tensor, Tensor, Tensor]:
    tensors = {"z": z, "w": w}
    if a is not None:
        tensors["a"] = a
    batched, points, params = _as_batch("quad_form", tensors, params, kernel)
    z, w = points[:2]
    a = points[2] if a is not None else None
    nbatch, N, d = z.shape
    P = w.shape[2]
    if w.shape[1] != N or (a is not None and tuple(a.shape[1:]) != (N, P)):
        raise ValueError(f"{NAMESPACE}.quad_form: w (and a) must have shape ({N}, P), got w {tuple(w.shape[1:])}"
                         f", a {None if a is None else tuple(a.shape[1:])}")
    dev = z.device
    has_g = a is not None
    unbatch = (lambda t: t) if batched else (lambda t: t[0])
    s_shape = (nbatch, N if row_sums else 0, P)
    g_shape = (nbatch, N if has_g else 0, d)
    if nbatch == 0 or N == 0 or P == 0:
        return (unbatch(torch.zeros((nbatch, P), dtype=torch.float64, device=dev)),
                unbatch(torch.zeros(s_shape, dtype=torch.float64, device=dev)),
                unbatch(torch.zeros(g_shape, dtype=torch.float64, device=dev)))
    z, w, params = z.contiguous(), w.contiguous(), params.contiguous()
    a = a.contiguous() if has_g else w
    ct = compute_dtype(z.dtype)
    plan = _plan("quad", d, z.dtype)
    b = plan["BM"]
    nb = triton.cdiv(N, b)
    rounds = nb // 2 + 1
    block_p = 1 if P == 1 else _clamp_np2(P, 16, 64)
    # q partials: round t adds to row t mod TQ; TQ depends on the shape only, and every launch block
    # holds at most TQ consecutive rounds, so q sums the same terms in the same order with or without
    # S / G (whose blocks are shorter). Value only: blocks of TQ rounds (one launch up to N ~ 2^17).
    TQ = max(1, min(rounds, _Q_CELLS // nb))
    q_part = torch.zeros((nbatch, TQ * nb, P), dtype=torch.float64, device=dev)
    if row_sums or has_g:
        T = min(TQ, _rounds_per_launch(N, d, P, rounds, b))
        s_slots = torch.zeros((2 * T, nbatch, N, P) if row_sums else (1,), dtype=torch.float64, device=dev)
        g_slots = torch.zeros((2 * T, nbatch, N, d) if has_g else (1,), dtype=torch.float64, device=dev)
    else:
        T = TQ
        s_slots = g_slots = q_part  # never touched (has_s = has_g = 0)
    kern = _tuner("quad_form_kernel", _configs(plan))
    flag, variants = _variants(z, z, params, kernel, ct)
    for t0 in range(0, rounds, T):
        for var in variants:
            kern[(nbatch * nb, min(T, rounds - t0))](
                z, w, a, params, flag, q_part, s_slots, g_slots,
                N, d, P, nbatch, z.stride(0), z.stride(1), w.stride(0), w.stride(1), a.stride(0), a.stride(1),
                params.stride(0), nb, t0, rounds, T, TQ, int(row_sums), int(has_g), _key(N),
                EXCL=bool(exclude_diagonal), P_ONE=block_p == 1, B=b, BLOCK_D=plan["BLOCK_D"],
                BLOCK_P=block_p, BLOCK_G=plan["BLOCK_G"], **var, **_common_meta(kernel, params, ct))
    q = torch.empty((nbatch, P), dtype=torch.float64, device=dev)
    _tuner("sum_rows_kernel", ((4, 1),))[(nbatch * P,)](q_part, q, TQ * nb, P, BLOCK=1024)
    s = _combine(s_slots) if row_sums else torch.zeros(s_shape, dtype=torch.float64, device=dev)
    g = _combine(g_slots) if has_g else torch.zeros(g_shape, dtype=torch.float64, device=dev)
    return unbatch(q), unbatch(s), unbatch(g)


def _stein_check(name: str, x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str) -> None:
    """x and s (N, d), w (N, P) as 2-D (stein_moments' (N,) arrives as a column); params
    [beta, c, sigma_1, ...] with 1..MAX_SCALES positive sigmas (checked on CPU only: on a GPU a host sync)."""
    _check_tensors(name, {"x": x, "s": s, "w": w}, params)
    if s.shape != x.shape or w.shape[0] != x.shape[0]:
        raise ValueError(f"{NAMESPACE}.{name}: x and s must be (N, d) and w (N, ...), got x {tuple(x.shape)}, "
                         f"s {tuple(s.shape)}, w {tuple(w.shape)}")
    if kernel not in STEIN_BASES:
        raise ValueError(f"{NAMESPACE}.{name}: kernel must be one of {STEIN_BASES}, got {kernel!r}")
    if not 1 <= params.shape[0] - 2 <= MAX_SCALES:
        raise ValueError(f"{NAMESPACE}.{name}: params must be [beta, c, sigma_1, ...] with 1 to {MAX_SCALES} "
                         f"sigmas, got {params.shape[0]} values")
    if params.device.type == "cpu" and not bool(torch.all(torch.isfinite(params[2:]) & (params[2:] > 0))):
        raise ValueError(f"{NAMESPACE}.{name}: sigmas must be positive, got {params[2:].tolist()}")


def _stein_variants(x: Tensor, params: Tensor, kernel: str, ct: torch.dtype) -> tuple[Tensor, list]:
    """_variants for the Stein base: its per-scale inverse squared length scale as rbf params (rbf:
    1 / (2 sigma^2); imq: phi = c^(2 beta) (1 + r2 / (c^2 sigma^2))^beta, 1 / (c^2 sigma^2)), so the lossy
    rule (and the flag kernel) of the distance kernels decides the distance formula."""
    inv = 1.0 / (params[2:] * params[2:])
    kap = 0.5 * inv if kernel == "rbf" else inv / (params[1] * params[1])
    return _variants(x[None], x[None], kap[None], "rbf", ct)


def _stein_meta(kernel: str, params: Tensor, ct: torch.dtype) -> dict:
    return dict(NS=params.shape[0] - 2, RBF=kernel == "rbf", CT=_tl_dtype(ct),
                PREC="ieee" if ct == torch.float64 else _PRECISION)


def _stein_form(x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str, exclude_diagonal: bool) -> Tensor:
    _stein_check("stein_form", x, s, w, params, kernel)
    N, d = x.shape
    P = w.shape[1]
    if N == 0 or P == 0:
        return torch.zeros((P,), dtype=torch.float64, device=x.device)
    x, s, w = x.contiguous(), s.contiguous(), w.contiguous()
    ct = compute_dtype(x.dtype)
    plan = _plan("stein", d, x.dtype)
    b = plan["BM"]
    nb = triton.cdiv(N, b)
    rounds = nb // 2 + 1
    # split the rounds so that about _PROGRAMS_TARGET programs run: a function of the shapes only
    per = -(-rounds // max(1, min(rounds, -(-_PROGRAMS_TARGET // nb))))
    split = -(-rounds // per)
    block_p = 1 if P == 1 else _clamp_np2(P, 16, 64)
    q_part = torch.zeros((split * nb, P), dtype=torch.float64, device=x.device)
    flag, variants = _stein_variants(x, params, kernel, ct)
    for var in variants:
        _tuner("stein_form_kernel", _configs(plan))[(nb, split)](
            x, s, w, params, flag, q_part, N, d, P, x.stride(0), s.stride(0), w.stride(0), nb, per, _key(N),
            EXCL=bool(exclude_diagonal), P_ONE=block_p == 1, B=b, BLOCK_D=plan["BLOCK_D"], BLOCK_P=block_p,
            **var, **_stein_meta(kernel, params, ct))
    q = torch.empty((P,), dtype=torch.float64, device=x.device)
    _tuner("sum_rows_kernel", ((4, 1),))[(P,)](q_part, q, split * nb, P, BLOCK=1024)
    return q


def _stein_moments(x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str, exclude_diagonal: bool) -> Tensor:
    if w.dim() != 1:
        raise ValueError(f"{NAMESPACE}.stein_moments: w must be (N,), got {tuple(w.shape)}")
    _stein_check("stein_moments", x, s, w[:, None], params, kernel)
    N, d = x.shape
    if N == 0:
        return torch.zeros((0, 4, 1 + 2 * d), dtype=torch.float64, device=x.device)
    x, s, w = x.contiguous(), s.contiguous(), w.contiguous()
    ct = compute_dtype(x.dtype)
    plan = _plan("stein_moments", d, x.dtype)
    bm, bn = plan["BM"], plan["BN"]
    n_rows, n_g, n_tiles = triton.cdiv(N, bm), triton.cdiv(d, plan["BLOCK_G"]), triton.cdiv(N, bn)
    want = max(1, min(n_tiles, 64, -(-_PROGRAMS_TARGET // (n_rows * n_g))))  # as _pair_reduce's split
    per = -(-n_tiles // want)
    split = -(-n_tiles // per)
    r_part = torch.zeros((split, N, 4, 1 + 2 * d), dtype=torch.float64, device=x.device)
    flag, variants = _stein_variants(x, params, kernel, ct)
    for var in variants:
        _tuner("stein_moments_kernel", _configs(plan))[(n_rows, n_g, split)](
            x, s, w, params, flag, r_part, N, d, x.stride(0), s.stride(0), w.stride(0), per, _key(N),
            EXCL=bool(exclude_diagonal), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=plan["BLOCK_D"],
            BLOCK_G=plan["BLOCK_G"], **var, **_stein_meta(kernel, params, ct))
    return _combine(r_part)


# ---------------------------------------------------------------------------------- registration

def _register():
    from infovae_kernels.backends import batching, fake

    bodies = {"gram": _gram, "pair_reduce": _pair_reduce, "quad_form": _quad_form, "stein_form": _stein_form,
              "stein_moments": _stein_moments}
    ops = {}
    for name, fn in bodies.items():
        if _HAS_TRITON_OP and not _INTERPRET:
            ops[name] = torch.library.triton_op(f"{NAMESPACE}::{name}", fn, mutates_args=(),
                                                schema=SCHEMAS[name])
        else:
            ops[name] = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=(),
                                                schema=SCHEMAS[name])
    if not (_HAS_TRITON_OP and not _INTERPRET):
        fake.register_fakes(NAMESPACE, bodies)
    batching.register_vmaps(NAMESPACE, {name: ops[name] for name in batching.TENSOR_ARGS})
    return ops


if _IMPORT_ERROR is None:
    _OPS = _register()


def _require():
    if _IMPORT_ERROR:
        raise RuntimeError(f"the triton backend is not available: {_IMPORT_ERROR}")


def gram(x: Tensor, y: Tensor, params: Tensor, kernel: str, derivative: bool) -> Tensor:
    _require()
    return torch.ops.infovae_triton.gram(x, y, params, kernel, bool(derivative))


def pair_reduce(x: Tensor, y: Tensor, v: Tensor, a: Optional[Tensor], params: Tensor, kernel: str,
                exclude_diagonal: bool) -> tuple[Tensor, Tensor]:
    _require()
    return torch.ops.infovae_triton.pair_reduce(x, y, v, a, params, kernel, bool(exclude_diagonal))


def quad_form(z: Tensor, w: Tensor, a: Optional[Tensor], params: Tensor, kernel: str, exclude_diagonal: bool,
              row_sums: bool) -> tuple[Tensor, Tensor, Tensor]:
    _require()
    return torch.ops.infovae_triton.quad_form(z, w, a, params, kernel, bool(exclude_diagonal), bool(row_sums))


def stein_form(x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str, exclude_diagonal: bool) -> Tensor:
    _require()
    return torch.ops.infovae_triton.stein_form(x, s, w, params, kernel, bool(exclude_diagonal))


def stein_moments(x: Tensor, s: Tensor, w: Tensor, params: Tensor, kernel: str, exclude_diagonal: bool) -> Tensor:
    _require()
    return torch.ops.infovae_triton.stein_moments(x, s, w, params, kernel, bool(exclude_diagonal))
