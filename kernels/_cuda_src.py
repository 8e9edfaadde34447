"""The CUDA C source of the ``cupy`` backend's matmul, kept apart from CuPy so that it can be read,
and tested, without a GPU (tests/kernels/test_cuda_source.py runs it on the CPU with a thread per
CUDA thread). The algorithm is the Numba CUDA kernel's (kernels/_numba_cuda.py), written in C.
"""
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


def defines() -> str:
    """The tile sizes as #define lines, to put before ``MATMUL_SRC``."""
    return "".join(f"#define {k} {v}\n" for k, v in dict(BM=BM, BN=BN, BK=BK, TM=TM, TN=TN, TX=TX, TY=TY).items())
