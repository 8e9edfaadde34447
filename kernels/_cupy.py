"""The ``cupy`` backend (kernels of our own, compiled by CuPy at first use) and ``cublas``
(``cupy.matmul``: NVIDIA's BLAS, the reference to beat).

Grayscale is an ``ElementwiseKernel``: CuPy writes the loop over the output and the launch, we write
the body for one pixel ``i``. Matmul is a ``RawKernel`` in CUDA C: the same tiled, register-blocked
algorithm as the Numba CUDA kernel (docs/kernels.md), as a template instantiated for float and double.
Both need C-contiguous arrays; the wrapper in ``kernels.matmul`` makes them so.
"""
from __future__ import annotations

import functools

import cupy as cp

from ._luma import DIV, HALF, W_F32, W_INT

_U8 = " + ".join(f"{w} * (int)src[{{{c}}}]" for w, c in zip(W_INT, "rgb"))
_F32 = " + ".join(f"{float(w)!r}f * src[{{{c}}}]" for w, c in zip(W_F32, "rgb"))    # the float32 weights, exactly


@functools.cache
def _gray_kernel(kind: str, layout: str) -> cp.ElementwiseKernel:
    # hwc: src is (P, 3) flattened, pixel i at 3i, 3i+1, 3i+2; chw: (N, 3, Q), pixel i = n Q + q
    if layout == "hwc":
        idx, params = dict(r="3 * i", g="3 * i + 1", b="3 * i + 2"), "raw T src"
        pre = ""
    else:
        idx, params = dict(r="o", g="o + Q", b="o + 2 * Q"), "raw T src, int64 Q"
        pre = "long long o = (i / Q) * 3 * Q + i % Q; "
    if kind == "u8":
        body = f"{pre}int y = {_U8.format(**idx)}; dst = (unsigned char)((y + {HALF}) / {DIV});"
        out = "uint8 dst"
    else:
        body = f"{pre}dst = {_F32.format(**idx)};"
        out = "float32 dst"
    return cp.ElementwiseKernel(params, out, body, f"mpisim_gray_{kind}_{layout}")


def gray_hwc(src, dst) -> None:
    """src (P, 3) -> dst (P,), C-contiguous CuPy arrays."""
    _gray_kernel("u8" if dst.dtype == cp.uint8 else "f32", "hwc")(src.reshape(-1), dst)


def gray_chw(src, dst) -> None:
    """src (N, 3, Q) -> dst (N, Q), C-contiguous CuPy arrays."""
    _gray_kernel("u8" if dst.dtype == cp.uint8 else "f32", "chw")(src.reshape(-1), src.shape[2], dst.reshape(-1))


BM = BN = 128
BK = 8
TM = TN = 8
TY, TX = BM // TM, BN // TN

_MATMUL_SRC = r"""
template <typename T>
__global__ void __launch_bounds__(TX * TY)
mm(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K) {
    // one block: a BM x BN tile of C; one thread: rows ty + TY*i, columns tx + TX*j (i < TM, j < TN)
    __shared__ T As[BK][BM];      // A's tile transposed: As[k][row]
    __shared__ T Bs[BK][BN];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TX + tx;
    const long long row0 = (long long)blockIdx.y * BM, col0 = (long long)blockIdx.x * BN;
    T acc[TM][TN];
    #pragma unroll
    for (int i = 0; i < TM; ++i)
        #pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0;
    for (int k0 = 0; k0 < K; k0 += BK) {
        for (int e = tid; e < BM * BK; e += TX * TY) {     // zeros past the edges: no size is special
            int r = e / BK, c = e % BK;
            long long gr = row0 + r; int gc = k0 + c;
            As[c][r] = (gr < M && gc < K) ? A[gr * K + gc] : T(0);
        }
        for (int e = tid; e < BK * BN; e += TX * TY) {
            int r = e / BN, c = e % BN;
            int gr = k0 + r; long long gc = col0 + c;
            Bs[r][c] = (gr < K && gc < N) ? B[(long long)gr * N + gc] : T(0);
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            T a[TM], b[TN];
            #pragma unroll
            for (int i = 0; i < TM; ++i) a[i] = As[kk][ty + TY * i];
            #pragma unroll
            for (int j = 0; j < TN; ++j) b[j] = Bs[kk][tx + TX * j];
            #pragma unroll
            for (int i = 0; i < TM; ++i)
                #pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    #pragma unroll
    for (int i = 0; i < TM; ++i) {
        long long r = row0 + ty + TY * i;
        if (r >= M) continue;
        #pragma unroll
        for (int j = 0; j < TN; ++j) {
            long long c = col0 + tx + TX * j;
            if (c < N) C[r * N + c] = acc[i][j];
        }
    }
}
"""


@functools.cache
def _module() -> cp.RawModule:
    defines = "".join(f"#define {k} {v}\n" for k, v in dict(BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, TX=TX, TY=TY).items())
    return cp.RawModule(code=defines + _MATMUL_SRC, options=("-std=c++14",),
                        name_expressions=("mm<float>", "mm<double>"))


def matmul2d(a, b, out) -> None:
    """(M, K) @ (K, N) -> out (M, N), C-contiguous CuPy arrays."""
    M, K = a.shape
    N = b.shape[1]
    fn = _module().get_function("mm<float>" if out.dtype == cp.float32 else "mm<double>")
    grid = ((N + BN - 1) // BN, (M + BM - 1) // BM)
    fn(grid, (TX, TY), (a, b, out, cp.int32(M), cp.int32(N), cp.int32(K)))


def cublas_matmul(a, b, out) -> None:
    """Batched and broadcast, as np.matmul: cuBLAS through CuPy."""
    cp.matmul(a, b, out=out)
