"""Flush denormal floats to zero (FTZ and DAZ) for the calling thread, as torch.set_flush_denormal.

Long runs fill Adam's moments, dead units' gradients and the softmax's tiny probabilities with
denormal (subnormal) floats, below 1.2e-38 in float32, and x86 CPUs compute on those through slow
microcode: a 256x256 float32 GEMM with subnormal inputs took 65 ms here instead of 0.3 ms (see
docs/training.md). Setting the MXCSR register's flush-to-zero and
denormals-are-zero bits makes them zeros. The register is per thread (new threads inherit it), so
each thread that trains calls :func:`flush_denormals`; the trainers do it for you.
"""
from __future__ import annotations

import platform

import numpy as np

__all__ = ["flush_denormals"]

_FTZ_DAZ = 0x8040          # MXCSR bit 15 (flush to zero) and bit 6 (denormals are zero)
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
_set_mxcsr = None


def _build():
    """A Numba function ``f(and_mask, or_mask) -> old`` that rewrites MXCSR with LLVM's intrinsics."""
    import numba
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    @intrinsic
    def _mxcsr(typingctx, and_mask, or_mask):
        def codegen(context, builder, signature, args):
            i8p = ir.IntType(8).as_pointer()
            slot = cgutils.alloca_once(builder, ir.IntType(32))
            fnty = ir.FunctionType(ir.VoidType(), [i8p])
            st = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.stmxcsr")
            ld = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.sse.ldmxcsr")
            ptr = builder.bitcast(slot, i8p)
            builder.call(st, [ptr])
            old = builder.load(slot)
            builder.store(builder.or_(builder.and_(old, args[0]), args[1]), slot)
            builder.call(ld, [ptr])
            return old
        return types.uint32(types.uint32, types.uint32), codegen

    @numba.njit(cache=True)
    def set_mxcsr(and_mask, or_mask):
        return _mxcsr(and_mask, or_mask)

    return set_mxcsr


def flush_denormals(enable: bool = True) -> bool | None:
    """Turn flush-to-zero and denormals-are-zero on (or off) for this thread.

    Returns whether they were on before (to restore it later), or None, changing nothing, where
    the CPU is not x86.
    """
    global _set_mxcsr
    if not _X86:
        return None
    if _set_mxcsr is None:
        _set_mxcsr = _build()
    if enable:
        old = _set_mxcsr(np.uint32(0xFFFFFFFF), np.uint32(_FTZ_DAZ))
    else:
        old = _set_mxcsr(np.uint32(0xFFFFFFFF & ~_FTZ_DAZ), np.uint32(0))
    return int(old) & _FTZ_DAZ == _FTZ_DAZ
