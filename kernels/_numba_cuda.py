"""The ``numba_cuda`` backend: CUDA kernels written in Python with Numba.

Grayscale: one thread per pixel, 256 threads a block.

Matmul: the tiled shared-memory algorithm with register blocking (the step after the textbook
16 x 16 tile; see docs/kernels.md for the ladder):
* a block of 16 x 16 threads computes a BM x BN = 128 x 128 tile of C (row blocks along the grid's x,
  whose limit is 2^31 - 1 blocks, so M may be in the billions; N may reach 65,535 x 128);
* it walks K in steps of BK = 8: the threads copy an (BM x BK) tile of A and a (BK x BN) tile of B
  into shared memory (zeros past the edges, so no size needs to be a multiple of a tile), wait, and
  each thread multiplies them into its own TM x TN = 8 x 8 accumulators, held in registers;
* a thread owns rows ty + 16 i and columns tx + 16 j of the tile, so the 16 threads of a half-warp
  read 16 consecutive words of shared memory (no bank conflicts) and write 16 consecutive words of C.
Each value loaded from shared memory feeds 8 multiply-adds instead of 1.
Tile sizes are compile-time constants: Numba unrolls the fixed loops and keeps ``acc`` in registers.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from ._luma import DIV, HALF, W_F32, W_INT

GRAY_THREADS = 256
BM = BN = 128       # tile of C per block
BK = 8              # depth of K per shared-memory tile
TM = TN = 8         # accumulators per thread: (BM / TM) x (BN / TN) = 16 x 16 threads
TY, TX = BM // TM, BN // TN
THREADS = TY * TX

WR, WG, WB = W_INT
FR, FG, FB = W_F32


@cuda.jit
def _gray_hwc_u8(src, dst):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        y = WR * np.int32(src[i, 0]) + WG * np.int32(src[i, 1]) + WB * np.int32(src[i, 2])
        dst[i] = (y + HALF) // DIV


@cuda.jit
def _gray_hwc_f32(src, dst):
    i = cuda.grid(1)
    if i < dst.shape[0]:
        dst[i] = FR * src[i, 0] + FG * src[i, 1] + FB * src[i, 2]


@cuda.jit
def _gray_chw_u8(src, dst):
    t = cuda.grid(1)
    Q = dst.shape[1]
    if t < dst.shape[0] * Q:
        n, q = t // Q, t % Q
        y = WR * np.int32(src[n, 0, q]) + WG * np.int32(src[n, 1, q]) + WB * np.int32(src[n, 2, q])
        dst[n, q] = (y + HALF) // DIV


@cuda.jit
def _gray_chw_f32(src, dst):
    t = cuda.grid(1)
    Q = dst.shape[1]
    if t < dst.shape[0] * Q:
        n, q = t // Q, t % Q
        dst[n, q] = FR * src[n, 0, q] + FG * src[n, 1, q] + FB * src[n, 2, q]


def _blocks(n: int, per_block: int) -> int:
    return max(1, math.ceil(n / per_block))


def gray_hwc(src, dst) -> None:
    """src (P, 3) -> dst (P,), device arrays."""
    k = _gray_hwc_u8 if dst.dtype == np.uint8 else _gray_hwc_f32
    k[_blocks(dst.shape[0], GRAY_THREADS), GRAY_THREADS](src, dst)


def gray_chw(src, dst) -> None:
    """src (N, 3, Q) -> dst (N, Q), device arrays."""
    k = _gray_chw_u8 if dst.dtype == np.uint8 else _gray_chw_f32
    k[_blocks(dst.shape[0] * dst.shape[1], GRAY_THREADS), GRAY_THREADS](src, dst)


def _make_matmul(dtype):
    """The tiled kernel for one dtype (shared and local arrays need their type at compile time)."""

    @cuda.jit
    def mm(A, B, C):
        M, K = A.shape
        N = B.shape[1]
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        tid = ty * TX + tx
        row0 = cuda.blockIdx.x * BM          # row blocks on x: its limit is 2^31 - 1, y's is 65,535
        col0 = cuda.blockIdx.y * BN
        As = cuda.shared.array((BK, BM), dtype)      # A's tile, transposed: As[k, row]
        Bs = cuda.shared.array((BK, BN), dtype)
        acc = cuda.local.array((TM, TN), dtype)
        a_reg = cuda.local.array(TM, dtype)
        b_reg = cuda.local.array(TN, dtype)
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = 0
        for k0 in range(0, K, BK):
            for e in range(tid, BM * BK, THREADS):   # (BM x BK) of A: consecutive threads, consecutive k
                r, c = e // BK, e % BK
                gr, gc = row0 + r, k0 + c
                if gr < M and gc < K:
                    As[c, r] = A[gr, gc]
                else:
                    As[c, r] = 0
            for e in range(tid, BK * BN, THREADS):   # (BK x BN) of B: consecutive threads, consecutive columns
                r, c = e // BN, e % BN
                gr, gc = k0 + r, col0 + c
                if gr < K and gc < N:
                    Bs[r, c] = B[gr, gc]
                else:
                    Bs[r, c] = 0
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = As[kk, ty + TY * i]
                for j in range(TN):
                    b_reg[j] = Bs[kk, tx + TX * j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()                       # before the next tile overwrites As and Bs
        for i in range(TM):
            r = row0 + ty + TY * i
            if r < M:
                for j in range(TN):
                    c = col0 + tx + TX * j
                    if c < N:
                        C[r, c] = acc[i, j]

    return mm


_MATMUL = {np.dtype(np.float32): _make_matmul(float32), np.dtype(np.float64): _make_matmul(float64)}


def matmul2d(a, b, out) -> None:
    """(M, K) @ (K, N) -> out (M, N), device arrays."""
    M, N = out.shape
    grid = (_blocks(M, BM), _blocks(N, BN))
    _MATMUL[np.dtype(out.dtype)][grid, (TX, TY)](a, b, out)
