"""The MLP's device code path (what --device cuda runs with CuPy), checked on the host with NumPy
standing in for CuPy and the matmuls going through kernels.matmul; and CuPy itself where there is a GPU."""
import numpy as np
import pytest
import scipy.special

import kernels
from mpisim.centralized import main as centralized_main
from mpisim.nn import MLP, make_optimizer
from mpisim.nn.device import CPU, ArrayDevice, DeviceUnavailable, local_rank, make_device


def _copy_in(a, out):
    if out is None:
        return a.copy()
    out[...] = a
    return out


def stand_in(matmul_backend="numba"):
    """ArrayDevice with NumPy as its array module: every copy is a real copy, as to and from a GPU."""
    return ArrayDevice(name="numpy-as-gpu", xp=np, erf=scipy.special.erf, from_host=_copy_in, to_host=_copy_in,
                       matmul=lambda a, b, out: kernels.matmul(a, b, backend=matmul_backend, out=out))


def _data(n=48, d=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.integers(0, classes, n)


@pytest.mark.parametrize("activation, dropout, batchnorm", [
    ("relu", 0.0, False), ("leaky_relu", 0.3, False), ("gelu", 0.0, True), ("tanh", 0.2, True), ("sigmoid", 0.0, False),
])
def test_device_path_trains_as_the_cpu_path(activation, dropout, batchnorm):
    x, y = _data()
    kw = dict(activation=activation, dropout=dropout, batchnorm=batchnorm, dtype=np.float64, seed=3)
    ref, dev = MLP([12, 16, 9, 5], **kw), MLP([12, 16, 9, 5], device=stand_in(), **kw)
    assert dev.params is not dev._dev[0]                        # a mirror, not the same memory
    opts = [make_optimizer("adam", m.params, m.grads, lr=1e-2) for m in (ref, dev)]
    for step in range(4):
        for m in (ref, dev):
            m.seed_dropout(step)
        xb, yb = x[step * 12:(step + 1) * 12], y[step * 12:(step + 1) * 12]
        (l1, c1), (l2, c2) = ref.train_step(xb, yb), dev.train_step(xb, yb)
        assert c1 == c2 and l1 == pytest.approx(l2, rel=1e-12)
        # atol: with BatchNorm the bias before it has a gradient of exactly 0 in exact arithmetic (rounding noise)
        np.testing.assert_allclose(dev.grads, ref.grads, rtol=1e-9, atol=1e-9)
        for o in opts:
            o.step()
    np.testing.assert_allclose(dev.params, ref.params, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(dev.buffers, ref.buffers, rtol=1e-9, atol=1e-9)   # running stats came back
    assert dev.evaluate(x, y) == pytest.approx(ref.evaluate(x, y), rel=1e-9)
    np.testing.assert_array_equal(dev.predict(x), ref.predict(x))


def test_params_changed_on_the_host_are_used_and_hooks_see_final_gradients():
    x, y = _data(seed=1)
    ref, dev = MLP([12, 7, 5], dtype=np.float64), MLP([12, 7, 5], dtype=np.float64, device=stand_in("numpy"))
    for m in (ref, dev):
        m.params[:] = np.linspace(-1, 1, m.params.size)          # as a paradigm's receive would
    seen = {}

    def hook(i):                                                # as the bucketed allreduce does
        lo, hi = dev._grad_range[i]
        seen[i] = dev.grads[lo:hi].copy() if lo < hi else None

    dev.grads[:] = np.nan
    ref.train_step(x, y)
    dev.train_step(x, y, hook=hook)
    np.testing.assert_allclose(dev.grads, ref.grads, rtol=1e-12)
    assert sorted(seen) == [0, 1, 2]
    for i, g in seen.items():                                   # each layer's slice was final at its hook
        if g is not None:
            lo, hi = dev._grad_range[i]
            np.testing.assert_allclose(g, ref.grads[lo:hi], rtol=1e-12)


def test_synced_batchnorm_sums_on_the_host():
    x, y = _data(seed=2)
    dev = MLP([12, 8, 5], batchnorm=True, device=stand_in())
    got = []

    def sum_across(v):
        got.append(type(v))
        assert v is not dev._dev[0]
        v *= 1                                                   # one replica: the sum is itself

    dev.layers[1].sum_across = sum_across
    ref = MLP([12, 8, 5], batchnorm=True)
    ref.layers[1].sum_across = lambda v: None
    ref.train_step(x, y)
    dev.train_step(x, y)
    assert got and all(t is np.ndarray for t in got)
    np.testing.assert_allclose(dev.grads, ref.grads, rtol=1e-4, atol=1e-6)


def test_cuda_without_cupy_or_a_gpu_is_a_clear_error(capsys):
    if "cupy" in kernels.available_backends():
        pytest.skip("this machine has CuPy and a GPU")
    with pytest.raises(DeviceUnavailable, match=r"--device cuda needs CuPy and an NVIDIA GPU: .*"):
        make_device("cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        make_device("tpu")
    assert make_device("cpu") is CPU
    with pytest.raises(SystemExit) as e:
        centralized_main(["--device", "cuda"])
    assert e.value.code == 2
    assert "--device cuda needs CuPy" in capsys.readouterr().err


def test_local_rank_from_the_launcher(monkeypatch):
    for var in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    assert local_rank() == 0
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert local_rank() == 3
    monkeypatch.setenv("MPI_LOCALRANKID", "1")             # MPICH's own wins over SLURM's
    assert local_rank() == 1


needs_gpu = pytest.mark.skipif("cupy" not in kernels.available_backends(), reason=kernels.backend_status()["cupy"])


@needs_gpu
@pytest.mark.parametrize("matmul_backend", ["auto", "cupy", "numba_cuda"])
def test_cuda_trains_as_the_cpu(matmul_backend):
    x, y = _data(n=256, d=64, classes=10)
    ref = MLP([64, 128, 10], dropout=0.1, batchnorm=True, seed=4)
    dev = MLP([64, 128, 10], dropout=0.1, batchnorm=True, seed=4, device=make_device("cuda", matmul_backend=matmul_backend))
    opts = [make_optimizer("adam", m.params, m.grads, lr=1e-3) for m in (ref, dev)]
    for step in range(4):
        for m, o in zip((ref, dev), opts):
            m.seed_dropout(step)
            m.train_step(x[step * 64:(step + 1) * 64], y[step * 64:(step + 1) * 64])
            o.step()
    np.testing.assert_allclose(dev.params, ref.params, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(dev.buffers, ref.buffers, rtol=1e-3, atol=1e-5)
