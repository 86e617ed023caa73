"""Compile the backend's kernels for a CUDA architecture without a GPU, and read their register and
local-memory (spill) use: triton.compile on an ASTSource for a GPUTarget runs Triton's passes and
ptxas; cuobjdump (shipped in Triton's wheel) reads the cubin's resource usage.

This is how the tile shapes and num_warps of ``_plan`` were chosen on a machine without a GPU, and
what tests/test_triton.py checks (at most SPILL_LIMIT bytes of local memory per thread: spills cost far
more than a smaller tile). It does not time anything.

    python -m infovae_kernels.backends.triton.aot [ARCH] [--check]   # main variants; --check: exit 1
                                                                      # if one spills > SPILL_LIMIT
Run it without TRITON_INTERPRET=1 (the interpreter replaces the jit functions it compiles).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time

import torch

from infovae_kernels.backends import triton as T

#: Local memory (bytes per thread) tolerated by --check: a few spilled registers, not the KBs of a bad tile.
SPILL_LIMIT = 64

_TL_NAMES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as exc:
        return False, f"triton's compiler is not importable ({exc})"
    if not os.path.exists(_cuobjdump()):
        return False, "cuobjdump is not in triton's wheel"
    return True, ""


def _signature(fn, pointers: dict, consts: dict) -> dict:
    return {name: "constexpr" if name in consts else pointers.get(name, "i32") for name in fn.arg_names}


def _variant(kind: str, d: int, dtype: torch.dtype, p: int, has_a: bool, diff: bool, kernel: str = "rbf"):
    """(kernel, pointer types, constexprs, num_warps) as the op bodies of __init__.py launch them. kernel:
    the pair kernel (rbf and laplacian with 2 scales, energy and polynomial as their params; for "stein"
    and "stein_moments" the Stein base, 2 scales); diff: the DIFF constexpr (for polynomial: the dot by a
    loop over d)."""
    from infovae_kernels.backends.triton import kernels as K

    plan = T._plan(kind, d, dtype, gpu=True)
    num_warps = plan["space"][0][0]
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    gated = d > 16 and kernel in ("rbf", "imq")  # the two lossy-rule variants; the other kernels launch one
    common = dict(NS=2 if kernel in ("rbf", "imq", "laplacian") else 1, KIND=T._KIND[kernel], CT=T._tl_dtype(ct),
                  PREC="ieee", DIFF=diff, GATE=int(diff) if gated else -1)
    el = "*" + _TL_NAMES[dtype]
    block_p = 1 if p == 1 else T._clamp_np2(p, 16, 64)
    if kind in ("stein", "stein_moments"):
        stein = dict(NS=2, RBF=kernel == "rbf", CT=common["CT"], PREC="ieee", DIFF=diff, GATE=common["GATE"],
                     EXCL=True, BLOCK_D=plan["BLOCK_D"])
        ptrs = dict(x_ptr=el, s_ptr=el, w_ptr=el, p_ptr="*fp64", flag_ptr="*i32")
        if kind == "stein":
            return (K.stein_form_kernel, dict(ptrs, q_ptr="*fp64"),
                    dict(stein, P_ONE=block_p == 1, B=plan["BM"], BLOCK_P=block_p), num_warps)
        return (K.stein_moments_kernel, dict(ptrs, r_ptr="*fp64"),
                dict(stein, BLOCK_M=plan["BM"], BLOCK_N=plan["BN"], BLOCK_G=plan["BLOCK_G"]), num_warps)
    if kind == "quad":
        ptrs = dict(z_ptr=el, w_ptr=el, a_ptr=el, c_ptr="*fp64", flag_ptr="*i32", q_ptr="*fp64", s_ptr="*fp64",
                    g_ptr="*fp64")
        consts = dict(common, EXCL=False, P_ONE=block_p == 1, B=plan["BM"], BLOCK_D=plan["BLOCK_D"],
                      BLOCK_P=block_p, BLOCK_G=plan["BLOCK_G"])
        return K.quad_form_kernel, ptrs, consts, num_warps
    if kind == "pair":
        ptrs = dict(x_ptr=el, y_ptr=el, v_ptr=el, a_ptr=el, c_ptr="*fp64", flag_ptr="*i32", s_ptr="*fp64",
                    g_ptr="*fp64")
        consts = dict(common, HAS_A=has_a, EXCL=False, P_ONE=block_p == 1, BLOCK_M=plan["BM"], BLOCK_N=plan["BN"],
                      BLOCK_D=plan["BLOCK_D"], BLOCK_P=block_p, BLOCK_PA=T._clamp_np2(p, 16, 64),
                      BLOCK_G=plan["BLOCK_G"])
        return K.pair_reduce_kernel, ptrs, consts, num_warps
    ptrs = dict(x_ptr=el, y_ptr=el, c_ptr="*fp64", flag_ptr="*i32", out_ptr=el)
    consts = dict(common, DERIV=True, BLOCK_M=plan["BM"], BLOCK_N=plan["BN"], BLOCK_D=plan["BLOCK_D"])
    return K.gram_kernel, ptrs, consts, num_warps


def resource_usage(kind: str, d: int, dtype: torch.dtype = torch.float32, p: int = 1, has_a: bool = True,
                   diff: bool | None = None, arch: int = 90, kernel: str = "rbf") -> dict:
    """{"regs", "stack" (bytes of local memory per thread), "seconds" (compile time)} of kernel `kind`
    ("quad", "pair", "gram", "stein", "stein_moments") compiled for sm_{arch} with the plan's tiles for (d, dtype), for the pair
    kernel `kernel`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton >= 3.9 warns otherwise; 3.6 fuses
    diff = (d <= 16) if diff is None else diff
    fn, ptrs, consts, num_warps = _variant(kind, d, dtype, p, has_a, diff, kernel)
    start = time.perf_counter()
    compiled = triton.compile(ASTSource(fn=fn, signature=_signature(fn, ptrs, consts), constexprs=consts),
                              target=GPUTarget("cuda", arch, 32), options=dict(num_warps=num_warps, num_stages=2))
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        out = subprocess.run([_cuobjdump(), "-res-usage", path], capture_output=True, text=True, check=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    stack = re.search(r"STACK:(\d+)", out)
    if not (regs and stack):
        raise RuntimeError(f"cuobjdump output not understood: {out[-300:]}")
    return dict(regs=int(regs.group(1)), stack=int(stack.group(1)), seconds=seconds, num_warps=num_warps)


#: The variants that carry the work: (kind, d, dtype, p, has_a, diff, kernel). laplacian and energy
#: always run the differences form (DIFF); polynomial its dot by a loop (d <= 16) or tl.dot (d > 16).
MAIN_VARIANTS = [
    ("quad", 8, torch.float32, 1, True, True, "rbf"),
    ("quad", 64, torch.float32, 1, True, False, "rbf"),
    ("quad", 64, torch.float32, 1, True, True, "rbf"),
    ("quad", 64, torch.float32, 3, True, False, "rbf"),
    ("pair", 8, torch.float32, 1, True, True, "rbf"),
    ("pair", 64, torch.float32, 1, True, False, "rbf"),
    ("gram", 8, torch.float32, 1, False, True, "rbf"),
    ("gram", 64, torch.float32, 1, False, False, "rbf"),
    ("quad", 64, torch.float64, 1, True, False, "rbf"),
    ("pair", 64, torch.float64, 1, True, False, "rbf"),
    ("quad", 8, torch.float32, 1, True, True, "laplacian"),
    ("quad", 64, torch.float32, 1, True, True, "laplacian"),
    ("pair", 64, torch.float32, 1, True, True, "laplacian"),
    ("quad", 8, torch.float32, 1, True, True, "energy"),
    ("quad", 64, torch.float64, 1, True, True, "laplacian"),
    ("quad", 8, torch.float32, 1, True, True, "polynomial"),
    ("quad", 64, torch.float32, 1, True, False, "polynomial"),
    ("quad", 64, torch.float32, 3, True, False, "polynomial"),
    ("pair", 8, torch.float32, 1, True, True, "polynomial"),
    ("pair", 64, torch.float32, 1, True, False, "polynomial"),
    ("gram", 64, torch.float32, 1, False, False, "polynomial"),
    ("quad", 64, torch.float64, 1, True, False, "polynomial"),
    ("stein", 8, torch.float32, 1, False, True, "imq"),
    ("stein", 64, torch.float32, 1, False, False, "imq"),
    ("stein", 64, torch.float32, 8, False, False, "rbf"),
    ("stein", 64, torch.float64, 1, False, False, "imq"),
    ("stein_moments", 8, torch.float32, 1, False, True, "imq"),
    ("stein_moments", 64, torch.float32, 1, False, False, "rbf"),
    ("stein_moments", 64, torch.float64, 1, False, False, "imq"),
]


def main() -> int:
    ok, why = available()
    if not ok:
        print(why)
        return 1
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("unset TRITON_INTERPRET: the interpreter's functions cannot be compiled")
        return 1
    args = [a for a in sys.argv[1:] if a != "--check"]
    arch = int(args[0]) if args else 90
    spills = 0
    for kind, d, dtype, p, has_a, diff, kernel in MAIN_VARIANTS:
        r = resource_usage(kind, d, dtype, p, has_a, diff, arch, kernel)
        spills += r["stack"] > SPILL_LIMIT
        form = ("loop" if diff else "dot ") if kernel == "polynomial" else ("diff" if diff else "dot ")
        print(f"{kind:5s} {kernel:10s} d={d:<4d} {str(dtype):14s} P={p} {form} sm_{arch}: "
              f"{r['regs']} registers, {r['stack']} B local, {r['num_warps']} warps ({r['seconds']:.1f} s)", flush=True)
    return 1 if ("--check" in sys.argv and spills) else 0


if __name__ == "__main__":
    sys.exit(main())
