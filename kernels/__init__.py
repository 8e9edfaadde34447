"""kernels: the hot paths of a GPU course (grayscale, matrix multiply) across NumPy, Numba,
Numba CUDA and CuPy.

Only the package exists so far: the backends come with the kernels issue. Nothing in mpisim
imports it yet.
"""

__all__: list[str] = []
