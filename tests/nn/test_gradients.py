"""Every layer, the loss and a whole MLP against central finite differences, in float64."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mpisim.nn import (GELU, MLP, BatchNorm1d, Dropout, LeakyReLU, Linear, ReLU, Sigmoid, SoftmaxCrossEntropy,
                       Tanh)

F64 = np.float64
EPS = 1e-6


def bind(layer, rng):
    """Standalone storage for a layer's params, grads and buffers (random params)."""
    params = {k: rng.normal(size=s) for k, s in layer.param_shapes.items()}
    grads = {k: np.zeros(s) for k, s in layer.param_shapes.items()}
    buffers = {k: np.zeros(s) if "mean" in k else np.ones(s) for k, s in layer.buffer_shapes.items()}
    layer.bind(params, grads, buffers, F64)
    return layer


def numeric_grad(f, a):
    """Central differences of the scalar f() with respect to every entry of a (changed in place)."""
    g = np.zeros_like(a)
    flat = a.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        fp = f()
        flat[i] = old - EPS
        fm = f()
        flat[i] = old
        g.reshape(-1)[i] = (fp - fm) / (2 * EPS)
    return g


def check_layer(layer, x, train=True, reseed=None):
    rng = np.random.default_rng(1)
    R = rng.normal(size=layer.forward(x, train).shape)     # a random upstream gradient

    def f():
        if reseed:
            reseed()
        return float(np.sum(R * layer.forward(x, train)))

    f()
    dX = layer.backward(R.copy())
    if dX is not None:
        np.testing.assert_allclose(dX, numeric_grad(f, x), rtol=1e-5, atol=1e-7)
    for name, p in layer.params.items():
        f()
        layer.backward(R.copy())
        analytic = layer.grads[name].copy()
        np.testing.assert_allclose(analytic, numeric_grad(f, p), rtol=1e-5, atol=1e-7, err_msg=name)


shapes = st.tuples(st.integers(2, 6), st.integers(1, 7))
values = st.floats(-3, 3, allow_nan=False, width=64)


def batch(shape):
    return arrays(F64, shape, elements=values)


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes, st.integers(1, 6))
def test_linear(data, shape, d_out):
    x = data.draw(batch(shape))
    check_layer(bind(Linear(shape[1], d_out), np.random.default_rng(0)), x)


@pytest.mark.parametrize("cls", [ReLU, LeakyReLU, Sigmoid, Tanh, GELU])
@settings(max_examples=25, deadline=None)
@given(data=st.data(), shape=shapes)
def test_activation(cls, data, shape):
    x = data.draw(batch(shape))
    if cls in (ReLU, LeakyReLU):
        assume(np.all(np.abs(x) > 1e-3))        # the kink at 0 has no derivative
    check_layer(bind(cls(), np.random.default_rng(0)), x)


@settings(max_examples=20, deadline=None)
@given(st.data(), shapes, st.sampled_from([0.1, 0.5, 0.9]), st.integers(0, 2**32 - 1))
def test_dropout(data, shape, p, seed):
    x = data.draw(batch(shape))
    layer = bind(Dropout(p), np.random.default_rng(0))

    def reseed():          # the same mask on every evaluation
        layer.rng = np.random.default_rng(seed)

    reseed()
    check_layer(layer, x, reseed=reseed)
    y = layer.forward(x, train=False)
    np.testing.assert_array_equal(y, x)        # eval mode is the identity


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes)
def test_batchnorm_train(data, shape):
    x = data.draw(batch(shape))
    assume(np.all(np.var(x, axis=0) > 1e-2))   # away from the eps-dominated regime
    check_layer(bind(BatchNorm1d(shape[1]), np.random.default_rng(0)), x, train=True)


@settings(max_examples=15, deadline=None)
@given(st.data(), shapes)
def test_batchnorm_eval(data, shape):
    x = data.draw(batch(shape))
    layer = bind(BatchNorm1d(shape[1]), np.random.default_rng(0))
    layer.buffers["running_mean"][...] = np.random.default_rng(2).normal(size=shape[1])
    layer.buffers["running_var"][...] = np.random.default_rng(3).uniform(0.5, 2, size=shape[1])
    check_layer(layer, x, train=False)


def test_batchnorm_running_stats_follow_torch_convention():
    layer = bind(BatchNorm1d(3, momentum=0.1), np.random.default_rng(0))
    x = np.random.default_rng(4).normal(size=(5, 3))
    layer.forward(x, train=True)
    np.testing.assert_allclose(layer.buffers["running_mean"], 0.1 * x.mean(0))
    np.testing.assert_allclose(layer.buffers["running_var"], 0.9 + 0.1 * x.var(0, ddof=1))


@settings(max_examples=30, deadline=None)
@given(st.data(), st.integers(1, 6), st.integers(2, 7))
def test_softmax_cross_entropy(data, B, C):
    z = data.draw(arrays(F64, (B, C), elements=st.floats(-30, 30, width=64)))
    y = np.asarray(data.draw(st.lists(st.integers(0, C - 1), min_size=B, max_size=B)))
    loss = SoftmaxCrossEntropy()
    value = loss.forward(z, y)
    # direct definition, in a stable form
    m = z.max(1, keepdims=True)
    ref = np.mean(np.log(np.exp(z - m).sum(1)) + m[:, 0] - z[np.arange(B), y])
    assert value == pytest.approx(ref, rel=1e-12, abs=1e-12)
    g = loss.backward().copy()
    np.testing.assert_allclose(g, numeric_grad(lambda: loss.forward(z, y), z), rtol=1e-5, atol=1e-7)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], dtype=np.float32)
    loss = SoftmaxCrossEntropy()
    v = loss.forward(z, np.array([0, 2]))
    assert np.isfinite(v) and v == pytest.approx(np.log(2) / 2, rel=1e-6)
    assert np.all(np.isfinite(loss.backward()))


def test_softmax_cross_entropy_rejects_bad_labels():
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        loss.forward(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError, match="labels of shape"):
        loss.forward(np.zeros((2, 3)), np.array([0, 1, 2]))


@pytest.mark.parametrize("activation,batchnorm", [("relu", False), ("tanh", True), ("gelu", True),
                                                   ("sigmoid", False), ("leaky_relu", True)])
def test_whole_mlp_gradient(activation, batchnorm):
    """The flat gradient vector of a whole float64 MLP (with the mean loss) is the derivative."""
    model = MLP([5, 7, 6, 4], activation=activation, batchnorm=batchnorm, dtype=F64, seed=3)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(6, 5)), rng.integers(0, 4, size=6)
    if activation in ("relu", "leaky_relu"):
        model.params[...] += 0.01    # keep pre-activations off the kink (probability ~0 anyway)
    model.train_step(x, y)
    analytic = model.grads.copy()

    def f():
        return model.loss_fn.forward(model.forward(x, train=True), y)

    np.testing.assert_allclose(analytic, numeric_grad(f, model.params), rtol=1e-4, atol=1e-7)


def test_logistic_regression_has_no_hidden_layer():
    model = MLP([8, 3])
    assert [type(layer).__name__ for layer in model.layers] == ["Linear"]
    assert model.num_params == 8 * 3 + 3
    model.params[...] = 0                   # all logits 0: the loss is log(classes) exactly
    x, y = np.ones((4, 8), np.float32), np.array([0, 1, 2, 0])
    loss, _ = model.train_step(x, y)
    assert loss == pytest.approx(np.log(3), rel=1e-6)
    # dL/db = mean(softmax - onehot) = 1/3 - (fraction of each class)
    np.testing.assert_allclose(model.layers[0].grads["b"], 1 / 3 - np.array([2, 1, 1]) / 4, rtol=1e-6)
