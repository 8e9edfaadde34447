"""The CuPy backend's CUDA C matmul, run without a GPU: g++ compiles the kernel source as C++ with one
std::thread per CUDA thread, a std::barrier for __syncthreads() and static arrays for __shared__
memory (one block at a time), and checks it against the triple loop on shapes that cross tile edges."""
import shutil
import subprocess

import pytest

from kernels._cuda_src import MATMUL_SRC, defines

HARNESS = r"""
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>
struct dim3 { int x, y, z; };
thread_local dim3 threadIdx, blockIdx;
std::barrier<> *bar;
#define __global__
#define __launch_bounds__(x)
#define __restrict__
#define __shared__ static
inline void __syncthreads() { bar->arrive_and_wait(); }
%(kernel)s
template <typename T>
int run(int M, int N, int K) {
    std::vector<T> A(M * (size_t)K), B(K * (size_t)N), C(M * (size_t)N, T(-7)), R(M * (size_t)N, 0);
    srand(M * 131 + N * 7 + K);
    for (auto &v : A) v = T(rand() %% 2001 - 1000) / 100;
    for (auto &v : B) v = T(rand() %% 2001 - 1000) / 100;
    for (int i = 0; i < M; ++i) for (int k = 0; k < K; ++k) for (int j = 0; j < N; ++j)
        R[i * N + j] += A[i * K + k] * B[k * N + j];
    for (int by = 0; by < (M + BM - 1) / BM; ++by) for (int bx = 0; bx < (N + BN - 1) / BN; ++bx) {  // by: rows
        std::barrier<> b(TX * TY);
        bar = &b;
        std::vector<std::thread> ts;
        for (int ty = 0; ty < TY; ++ty) for (int tx = 0; tx < TX; ++tx)
            ts.emplace_back([&, tx, ty] { threadIdx = {tx, ty, 0}; blockIdx = {by, bx, 0};   // rows on x
                                          mm<T>(A.data(), B.data(), C.data(), M, N, K); });
        for (auto &t : ts) t.join();
    }
    double err = 0;
    for (size_t i = 0; i < C.size(); ++i)
        err = std::fmax(err, std::fabs(double(C[i] - R[i])) / (1 + std::fabs(double(R[i]))));
    printf("%%s M=%%d N=%%d K=%%d max rel err %%.2e\n", sizeof(T) == 4 ? "float" : "double", M, N, K, err);
    return err > (sizeof(T) == 4 ? 1e-4 : 1e-12);
}
int main() {
    int bad = 0, shapes[][3] = {{1, 1, 1}, {5, 3, 4}, {129, 130, 9}, {17, 257, 33}, {300, 7, 0}, {128, 128, 8}};
    for (auto &s : shapes) bad += run<float>(s[0], s[1], s[2]) + run<double>(s[0], s[1], s[2]);
    return bad;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to run the CUDA C source on the CPU")
def test_cupy_matmul_source_on_cpu_threads(tmp_path):
    src = tmp_path / "emu.cpp"
    src.write_text(HARNESS % {"kernel": defines() + MATMUL_SRC})
    exe = tmp_path / "emu"
    build = subprocess.run(["g++", "-std=c++20", "-O1", "-pthread", str(src), "-o", str(exe)],
                           capture_output=True, text=True, timeout=120)
    if build.returncode and "barrier" in build.stderr and "No such file" in build.stderr:
        pytest.skip("this g++ has no C++20 <barrier>")
    assert build.returncode == 0, build.stderr
    res = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("max rel err") == 12


GRAY_HARNESS = r"""
#include <cstdio>
#include <vector>
typedef unsigned char uint8;
template <typename T, typename D>
void kernel(const T* src, D* out, long long n, long long Q) {
    (void)Q;
    for (long long i = 0; i < n; ++i) {      // what CuPy's ElementwiseKernel does, one i per thread
        D& dst = out[i];
        %(body)s
    }
}
int main(int argc, char** argv) {
    long long n = %(n)d, q = %(q)d;
    std::vector<%(T)s> src(3 * n);
    std::vector<%(D)s> dst(n);
    FILE* f = fopen(argv[1], "rb");
    if (fread(src.data(), sizeof(%(T)s), 3 * n, f) != (size_t)(3 * n)) return 2;
    fclose(f);
    kernel(src.data(), dst.data(), n, q);
    f = fopen(argv[2], "wb");
    fwrite(dst.data(), sizeof(%(D)s), n, f);
    fclose(f);
    return 0;
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ to run the CUDA C source on the CPU")
@pytest.mark.parametrize("kind", ["u8", "f32"])
@pytest.mark.parametrize("layout", ["hwc", "chw"])
def test_cupy_grayscale_source_on_the_cpu(tmp_path, kind, layout):
    import numpy as np

    from kernels._cuda_src import gray_source

    from .helpers import luma_f64, luma_u8
    from .test_grayscale import _every_rgb_corner_and_tie

    px, _ = _every_rgb_corner_and_tie()
    img = px[:1400].reshape(2, 25, 28, 3)                        # N, H, W, 3 with the rounding ties in it
    if kind == "f32":
        img = img.astype(np.float32) + np.float32(0.25)
    src = img if layout == "hwc" else np.ascontiguousarray(np.moveaxis(img, -1, 1))
    _, out_decl, body = gray_source(kind, layout)
    T, D = ("uint8", "uint8") if kind == "u8" else ("float", "float")
    assert out_decl == ("uint8 dst" if kind == "u8" else "float32 dst")      # the result's dtype
    code = GRAY_HARNESS % dict(body=body, n=img.shape[0] * 25 * 28, q=25 * 28, T=T, D=D)
    (tmp_path / "g.cpp").write_text(code)
    build = subprocess.run(["g++", "-O1", str(tmp_path / "g.cpp"), "-o", str(tmp_path / "g")],
                           capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    src.tofile(tmp_path / "in.bin")
    subprocess.run([str(tmp_path / "g"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], check=True, timeout=60)
    got = np.fromfile(tmp_path / "out.bin", dtype=np.uint8 if kind == "u8" else np.float32).reshape(2, 25, 28)
    if kind == "u8":
        np.testing.assert_array_equal(got, luma_u8(img))
    else:
        np.testing.assert_allclose(got, luma_f64(img), rtol=1e-6)
