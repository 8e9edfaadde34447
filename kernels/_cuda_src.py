"""The CUDA C sources of the ``cupy`` backend, kept apart from CuPy so that they can be read, and
tested, without a GPU (tests/kernels/test_cuda_source.py compiles them with g++ and runs them on the
CPU, the matmul with a thread per CUDA thread). The matmul's algorithm is the Numba CUDA kernel's
(kernels/_numba_cuda.py), written in C.
"""
from ._luma import DIV, HALF, W_F32, W_INT

_U8 = " + ".join(f"{w} * (int)src[{{{c}}}]" for w, c in zip(W_INT, "rgb"))
_F32 = " + ".join(f"{float(w)!r}f * src[{{{c}}}]" for w, c in zip(W_F32, "rgb"))    # the float32 weights, exactly


def gray_source(kind: str, layout: str) -> tuple[str, str, str]:
    """(in params, out params, body) of the grayscale ElementwiseKernel for ``kind`` "u8" or "f32"
    and ``layout`` "hwc" or "chw". CuPy loops over the output index ``i``: one pixel per thread."""
    # hwc: src is (P, 3) flattened, pixel i at 3i, 3i+1, 3i+2; chw: (N, 3, Q) flattened, pixel i = n Q + q
    if layout == "hwc":
        idx, params, pre = dict(r="3 * i", g="3 * i + 1", b="3 * i + 2"), "raw T src", ""
    else:
        idx, params = dict(r="o", g="o + Q", b="o + 2 * Q"), "raw T src, int64 Q"
        pre = "long long o = (i / Q) * 3 * Q + i % Q; "
    if kind == "u8":
        return params, "uint8 dst", f"{pre}int y = {_U8.format(**idx)}; dst = (unsigned char)((y + {HALF}) / {DIV});"
    return params, "float32 dst", f"{pre}dst = {_F32.format(**idx)};"

BM = BN = 128
BK = 8
TM = TN = 8
TY, TX = BM // TM, BN // TN       # threads of a block: 16 x 16

MATMUL_SRC = r"""
template <typename T>
__global__ void __launch_bounds__(TX * TY)
mm(const T* __restrict__ A, const T* __restrict__ B, T* __restrict__ C, int M, int N, int K) {
    // one block: a BM x BN tile of C; one thread: rows ty + TY*i, columns tx + TX*j (i < TM, j < TN)
    __shared__ T As[BK][BM];      // A's tile transposed: As[k][row]
    __shared__ T Bs[BK][BN];
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * TX + tx;
    const long long row0 = (long long)blockIdx.x * BM, col0 = (long long)blockIdx.y * BN;   // rows on x: 2^31 - 1 blocks
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


def defines() -> str:
    """The tile sizes as #define lines, to put before ``MATMUL_SRC``."""
    return "".join(f"#define {k} {v}\n" for k, v in dict(BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, TX=TX, TY=TY).items())
