"""Optimizers, schedules and state on the flat vectors; float32 stays float32."""
import numpy as np
import pytest

from mpisim.nn import (MLP, OPTIMIZERS, SGD, Adam, AdamW, linear_scaling, make_optimizer, make_schedule)


def quadratic(opt_name, steps=200, **kw):
    """Minimize 0.5 * ||p - t||^2: every optimizer must get close to t."""
    p = np.zeros(50, np.float32)
    g = np.zeros_like(p)
    t = np.linspace(-1, 1, 50, dtype=np.float32)
    opt = make_optimizer(opt_name, p, g, **kw)
    for _ in range(steps):
        np.subtract(p, t, out=g)
        opt.step()
    return p, t


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_minimizes_a_quadratic(name):
    lr = 0.05 if name.startswith("adam") else 0.1
    p, t = quadratic(name, lr=lr, steps=400)
    assert np.max(np.abs(p - t)) < 0.02


def test_sgd_rule_by_hand():
    p = np.array([1.0, -2.0], np.float64)
    g = np.array([0.5, 0.25], np.float64)
    opt = SGD(p, g, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1)
    opt.step()
    d = g + 0.1 * np.array([1.0, -2.0])          # buf = d on the first step
    np.testing.assert_allclose(p, np.array([1.0, -2.0]) - 0.1 * (d + 0.9 * d))


def test_adam_rule_by_hand():
    p0 = np.array([1.0, -2.0, 0.5])
    p, g = p0.copy(), np.array([0.1, -0.3, 0.0])
    Adam(p, g, lr=0.01).step()
    # first step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps)
    np.testing.assert_allclose(p, p0 - 0.01 * g / (np.abs(g) + 1e-8))
    q = p0.copy()
    AdamW(q, np.zeros(3), lr=0.01, weight_decay=0.1).step()
    np.testing.assert_allclose(q, p0 * (1 - 0.01 * 0.1))     # decoupled decay only


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_state_saves_and_restores_exactly(name):
    kw = {"lr": 0.01, "weight_decay": 1e-3}
    p1, t = quadratic(name, steps=5, **kw)
    g = np.zeros_like(p1)
    # run 5 steps, save, run 5 more; a copy restored from the save must end identical
    opt = make_optimizer(name, p1, g, **kw)
    for _ in range(5):
        np.subtract(p1, t, out=g)
        opt.step()
    saved_p, saved = p1.copy(), opt.state_dict()
    for _ in range(5):
        np.subtract(p1, t, out=g)
        opt.step()
    p2, g2 = saved_p.copy(), np.zeros_like(g)
    opt2 = make_optimizer(name, p2, g2, **kw)
    opt2.load_state_dict(saved)
    for _ in range(5):
        np.subtract(p2, t, out=g2)
        opt2.step()
    np.testing.assert_array_equal(p1, p2)
    assert opt2.steps == opt.steps == 10


def test_state_of_the_wrong_size_is_refused():
    p = np.zeros(4, np.float32)
    opt = Adam(p, np.zeros_like(p))
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict({"steps": np.array(1), "exp_avg": np.zeros(5, np.float32),
                             "exp_avg_sq": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"steps": np.array(1)})


def test_bad_optimizer_arguments():
    p = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unknown optimizer 'adagrad'"):
        make_optimizer("adagrad", p, p.copy(), lr=0.1)
    with pytest.raises(ValueError, match="one shape and dtype"):
        SGD(p, np.zeros(3, np.float64), lr=0.1)
    with pytest.raises(ValueError, match="nesterov needs momentum"):
        SGD(p, p.copy(), lr=0.1, nesterov=True)


def test_schedules():
    step = make_schedule("step", 1.0, epochs=10, step_size=3, gamma=0.5)
    assert [step(e) for e in (0, 2.9, 3, 5.5, 6, 9)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]
    cos = make_schedule("cosine", 1.0, epochs=10, min_lr=0.0)
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0, abs=1e-12)
    assert all(cos(a) >= cos(b) for a, b in zip(np.linspace(0, 10, 50), np.linspace(0, 10, 50)[1:]))
    warm = make_schedule("constant", 1.0, epochs=10, warmup=2)
    assert warm(0) == pytest.approx(0.1) and warm(1) == pytest.approx(0.55) and warm(2) == 1.0 == warm(7)
    assert linear_scaling(0.1, 1024, 256) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("exp", 1.0, epochs=3)


class Spy(np.ndarray):
    """An array that records every ufunc call (operators, matmul, reductions) touching float64."""
    calls: list = []

    def __array_ufunc__(self, ufunc, method, *inputs, **kw):
        plain = [a.view(np.ndarray) if isinstance(a, Spy) else a for a in inputs]
        if "out" in kw:
            kw["out"] = tuple(o.view(np.ndarray) if isinstance(o, Spy) else o for o in kw["out"])
        res = getattr(ufunc, method)(*plain, **kw)
        arrays = [*plain, *kw.get("out", ()), *(res if isinstance(res, tuple) else (res,))]
        if any(isinstance(a, (np.ndarray, np.generic)) and a.dtype == np.float64 for a in arrays) or \
                np.dtype(kw.get("dtype") or np.float32) == np.float64:
            Spy.calls.append(f"{ufunc.__name__}.{method}")
        if isinstance(res, np.ndarray) and not isinstance(res, Spy):
            res = res.view(Spy)          # temporaries are watched too
        return res


class SpyNumpy:
    """numpy, except that new arrays are Spies."""

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, *a, **kw):
        return np.empty(*a, **kw).view(Spy)

    def zeros(self, *a, **kw):
        return np.zeros(*a, **kw).view(Spy)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_training_step_computes_nothing_in_float64(name, monkeypatch):
    """Every ufunc call of a training step, an optimizer step and an evaluation, intermediates
    included, sees only float32 (and integer) operands: no float64 scalar or temporary sneaks in."""
    import mpisim.nn.layers
    import mpisim.nn.loss
    import mpisim.nn.model
    for mod in (mpisim.nn.layers, mpisim.nn.loss, mpisim.nn.model):
        monkeypatch.setattr(mod, "np", SpyNumpy())
    model = MLP([12, 16, 8, 3], activation="gelu", dropout=0.3, batchnorm=True)
    assert isinstance(model.params, Spy)
    opt = make_optimizer(name, model.params, model.grads, lr=0.01, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 12)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    Spy.calls = []
    model.train_step(x, y)
    opt.step()
    model.evaluate(x, y)
    assert Spy.calls == []
    Spy.calls = []
    model.params * np.float64(2)        # the spy itself can see a promotion
    assert Spy.calls == ["multiply.__call__"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_training_step_keeps_every_array_float32(name):
    """No accidental float64: params, grads, optimizer state, every layer buffer, the loss buffers."""
    model = MLP([12, 16, 8, 3], activation="gelu", dropout=0.3, batchnorm=True)
    opt = make_optimizer(name, model.params, model.grads, lr=0.01, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 12)).astype(np.float32)
    y = rng.integers(0, 3, 9)
    model.train_step(x, y)
    opt.step()
    model.evaluate(x, y)
    arrays = [model.params, model.grads, model.buffers, *opt.state.values(),
              *model.loss_fn._bufs.values(), model.forward(x, train=True)]
    for layer in model.layers:
        arrays += [*layer._bufs.values(), *layer.params.values(), *layer.grads.values(), *layer.buffers.values()]
        arrays += [v for v in vars(layer).values() if isinstance(v, np.ndarray)]
    assert len(arrays) > 30
    assert {a.dtype for a in arrays} == {np.dtype(np.float32)}


def test_model_layout_is_one_flat_vector_with_views():
    model = MLP([6, 5, 4], batchnorm=True)
    assert model.params.ndim == 1 and model.params.flags.c_contiguous
    assert model.num_params == 6 * 5 + 5 + 5 + 5 + 5 * 4 + 4
    for layer in model.layers:
        for name, view in layer.params.items():
            assert np.shares_memory(view, model.params), name
        for name, view in layer.grads.items():
            assert np.shares_memory(view, model.grads), name
    model.params[...] = 7
    assert np.all(model.layers[0].params["W"] == 7)


def test_same_seed_same_model_and_other_seed_other():
    a, b, c = MLP([10, 8, 2], seed=4), MLP([10, 8, 2], seed=4), MLP([10, 8, 2], seed=5)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP([4, 2], activation="swish")
    with pytest.raises(ValueError, match=r"input of shape \(batch, 4\)"):
        MLP([4, 2]).forward(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="p must be in"):
        MLP([4, 3, 2], dropout=1.0)


def _steps(opt, p, g, t, n):
    """n steps on 0.5 * ||p - t||^2 (gradient p - t)."""
    for _ in range(n):
        np.subtract(p, t, out=g)
        opt.step()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_reset_forgets_the_state_in_place_and_then_steps_as_a_fresh_optimizer(name, dtype):
    kw = {"lr": 0.03, "weight_decay": 1e-2}
    t = np.linspace(-1, 1, 37).astype(dtype)
    p, g = np.zeros(37, dtype), np.zeros(37, dtype)
    opt = make_optimizer(name, p, g, **kw)
    _steps(opt, p, g, t, 6)
    assert opt.steps == 6
    if name != "sgd":                                   # plain SGD keeps a buffer it never uses
        assert all(v.any() for v in opt.state.values())
    held = {k: v for k, v in opt.state.items()}         # the arrays, and views into them, as a caller holds
    views = {k: v[5:9] for k, v in opt.state.items()}
    opt.lr = 0.011                                      # a schedule changed it
    opt.reset()
    assert opt.steps == 0 and opt.lr == 0.011
    assert opt.state.keys() == held.keys() == set(opt.state_names)
    for k, v in opt.state.items():
        assert v is held[k] and v.dtype == dtype and v.shape == p.shape
        assert not v.any() and not views[k].any()
    assert opt.params is p and opt.grads is g
    # from here it must step exactly as a new optimizer made with the same lr on the same parameters
    p2, g2 = p.copy(), np.zeros_like(g)
    fresh = make_optimizer(name, p2, g2, **{**kw, "lr": 0.011})
    _steps(opt, p, g, t, 5)
    _steps(fresh, p2, g2, t, 5)
    np.testing.assert_array_equal(p, p2)
    a, b = opt.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_without_reset_the_old_state_changes_the_steps(name):
    """The check above can fail: an optimizer that kept its state would step differently."""
    t = np.linspace(-1, 1, 20).astype(np.float32)
    p, g = np.zeros(20, np.float32), np.zeros(20, np.float32)
    opt = make_optimizer(name, p, g, lr=0.03)
    _steps(opt, p, g, t, 6)
    p2 = p.copy()
    fresh = make_optimizer(name, p2, np.zeros_like(g), lr=0.03)
    _steps(opt, p, g, t, 1)
    _steps(fresh, p2, fresh.grads, t, 1)
    assert not np.array_equal(p, p2)
