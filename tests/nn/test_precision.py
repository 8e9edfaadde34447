"""Mixed precision in mpisim.nn: rounding to fp16 and bfloat16 (hand-made cases), the MLP's emulated half
compute (every stored value in the format, results close to fp32 within the format's rounding), the
activation-memory formula against the arrays held, and the dynamic loss scaler."""
import warnings

import numpy as np
import pytest
import scipy.special

from mpisim.nn import MLP, make_optimizer
from mpisim.nn.device import ArrayDevice
from mpisim.nn.precision import (HALF_FORMATS, PRECISIONS, UNIT_ROUNDOFF, LossScaler, bf16_encode, bf16_round,
                                 fp16_round, rounder)

F = np.float32


def f32(bits: int) -> float:
    """The float32 with these bits."""
    return float(np.array([bits], dtype=np.uint32).view(np.float32)[0])


# ---- rounding ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x, expected", [
    (1.0, 1.0),
    (1 + 2**-7, 1 + 2**-7),                       # representable: 7 mantissa bits
    (1 + 2**-8, 1.0),                             # half-way, ties to even (down)
    (1 + 3 * 2**-8, 1 + 2**-6),                   # half-way, ties to even (up)
    (1 + 2**-8 + 2**-20, 1 + 2**-7),              # just past half-way: up
    (1 + 2**-8 - 2**-20, 1.0),                    # just short of it: down
    (-3.0, -3.0),
    (256.5, 256.0),                               # 256 + 1/2: below half a step (1) of bf16 at 256
    (3.0e38, 2.99e38),                            # large but finite: bf16 has float32's range
    (np.inf, np.inf), (-np.inf, -np.inf),
    (f32(0x7F7FFFFF), np.inf),                    # float32's largest rounds up past bf16's largest
    (f32(0x00000001), 0.0),                       # float32's smallest subnormal rounds to 0
    (f32(0x00010000), f32(0x00010000)),           # a bf16 subnormal is kept
])
def test_bf16_round_hand_made_cases(x, expected):
    got = float(bf16_round(np.array([x], dtype=F))[0])
    if expected == 2.99e38:
        assert got == pytest.approx(3.0e38, rel=2**-8) and np.isfinite(got)
    else:
        assert got == expected


def test_bf16_bits_of_known_values_and_nan_stays_nan():
    assert bf16_encode(np.array([1.0, -2.0, np.inf, -np.inf, 0.0, -0.0], dtype=F)).tolist() == \
        [0x3F80, 0xC000, 0x7F80, 0xFF80, 0x0000, 0x8000]
    r = bf16_round(np.array([np.nan, -np.nan], dtype=F))
    assert np.isnan(r).all()


@pytest.mark.parametrize("x, expected", [
    (1.0, 1.0), (1 + 2**-11, 1.0), (1 + 3 * 2**-11, 1 + 2**-9),    # 10 mantissa bits, ties to even
    (65504.0, 65504.0),                           # fp16's largest
    (65519.0, 65504.0),                           # still rounds down to it
    (65520.0, np.inf), (-65520.0, -np.inf),       # half a step past: overflow to inf
    (1e5, np.inf), (3e38, np.inf),
    (2.0**-24, 2.0**-24),                         # the smallest subnormal
    (2.0**-26, 0.0),                              # underflow: why fp16 needs loss scaling
])
def test_fp16_round_hand_made_cases_and_overflow_to_inf(x, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # overflow is the format's rule, not a warning
        assert float(fp16_round(np.array([x], dtype=F))[0]) == expected


@pytest.mark.parametrize("precision", HALF_FORMATS)
def test_rounder_is_within_the_unit_roundoff_in_place_and_into_out(precision):
    rng = np.random.default_rng(1)              # both formats' normal range: 2^-14 .. 65504 for fp16
    x = (rng.choice([-1, 1], 10_000) * rng.uniform(1, 2, 10_000) * 2.0 ** rng.integers(-12, 12, 10_000)).astype(F)
    round_ = rounder(precision)
    out = np.empty_like(x)
    round_(x, out=out)
    rel = np.abs(out - x) / np.abs(x)
    assert rel.max() <= UNIT_ROUNDOFF[precision] and rel.max() > UNIT_ROUNDOFF[precision] / 2   # the bound is tight
    y = x.copy()
    round_(y)
    np.testing.assert_array_equal(y, out)
    round_(y)                                    # rounding is idempotent
    np.testing.assert_array_equal(y, out)


def test_rounder_of_fp32_is_none_and_unknown_formats_are_refused():
    assert rounder("fp32") is None
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        rounder("fp8")


# ---- the MLP in half precision (emulated) ----------------------------------------------------------

def _data(n=40, d=12, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(F), rng.integers(0, classes, n)


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


KINDS = [dict(), dict(activation="gelu", batchnorm=True), dict(activation="tanh", dropout=0.2)]


@pytest.mark.parametrize("precision", HALF_FORMATS)
@pytest.mark.parametrize("kw", KINDS)
def test_emulated_forward_and_backward_are_fp32_within_the_format(precision, kw):
    """Logits, loss and gradient within a few unit roundoffs of fp32 (several roundings compound), and
    the difference is the format's, not fp32's (at least half a unit roundoff)."""
    x, y = _data()
    ref, half = (MLP([12, 16, 9, 5], seed=2, precision=p, **kw) for p in ("fp32", precision))
    u = UNIT_ROUNDOFF[precision]
    for m in (ref, half):
        m.seed_dropout(0)
    (l32, _), (lh, _) = ref.train_step(x, y), half.train_step(x, y)
    assert abs(lh - l32) <= 4 * u * abs(l32)
    g = _rel(half.grads, ref.grads)
    assert u / 2 < g < 8 * u, g
    np.testing.assert_array_equal(half.params, ref.params)       # master weights: float32, untouched
    z32, zh = ref.forward(x, train=False).copy(), half.forward(x, train=False).copy()
    assert u / 4 < _rel(zh, z32) < 8 * u


@pytest.mark.parametrize("precision", HALF_FORMATS)
def test_every_value_a_layer_stores_or_produces_is_in_the_half_format(precision):
    """Inputs, weights, outputs and the gradients backward writes: rounding them again changes nothing.
    (BatchNorm's normalized input and Dropout's uniform draws are the layers' float32 internals, as cuDNN's
    batch norm computes in float32 from the half input.)"""
    x, y = _data(seed=3)
    m = MLP([12, 16, 9, 5], seed=1, precision=precision, batchnorm=True, dropout=0.3)
    m.train_step(x, y)
    round_ = rounder(precision)

    def in_format(a):
        b = np.array(a, dtype=F)
        round_(b)
        return np.array_equal(b, a, equal_nan=True)
    held = [v for layer in m.layers for k, v in vars(layer).items()
            if isinstance(v, np.ndarray) and v.ndim == 2 and k not in ("x_hat", "u")]
    assert len(held) >= 4
    assert all(in_format(a) for a in held)
    assert all(in_format(p) for layer in m.layers for p in layer.params.values())
    assert in_format(m.grads)
    assert not in_format(m.params)               # the float32 master copy is not rounded
    assert not np.shares_memory(m.layers[0].params["W"], m.params)
    np.testing.assert_array_equal(x, _data(seed=3)[0])         # the caller's input is left as it was


def test_fp32_layers_compute_in_the_model_vectors_with_nothing_extra():
    m = MLP([12, 16, 5])
    assert np.shares_memory(m.layers[0].params["W"], m.params) and m.precision == "fp32"
    assert "mixed precision" not in m.describe()
    assert "fp16 mixed precision (emulated" in MLP([12, 5], precision="fp16").describe()


def test_mixed_precision_needs_float32_master_weights():
    with pytest.raises(ValueError, match="float32 master weights"):
        MLP([4, 3], precision="bf16", dtype=np.float64)
    with pytest.raises(ValueError, match="unknown precision"):
        MLP([4, 3], precision="half")


def test_loss_scaling_keeps_small_gradients_that_fp16_would_flush_to_zero():
    """A gradient of order 1e-8 (the loss weighted 2^-24 per example): fp16 without scaling loses most of it
    below its smallest subnormal; scaled by 2^16 and divided back it is fp32's to the format's precision."""
    x, y = _data(seed=4)
    ref, half = MLP([12, 16, 5], seed=5), MLP([12, 16, 5], seed=5, precision="fp16")
    w = 2.0**-24
    ref.train_step(x, y, scale=w)
    half.train_step(x, y, scale=w)
    unscaled = half.grads.copy()
    half.train_step(x, y, scale=w, loss_scale=2.0**16)
    assert np.all(np.isfinite(half.grads))
    scaled = half.grads / F(2.0**16)
    assert _rel(unscaled, ref.grads) > 0.1                        # underflow: a large error
    assert np.count_nonzero(unscaled) < np.count_nonzero(ref.grads)   # some flushed to zero
    assert _rel(scaled, ref.grads) < 8 * UNIT_ROUNDOFF["fp16"]


def test_loss_scale_multiplies_the_gradient_exactly_in_fp32():
    x, y = _data(seed=6)
    m = MLP([12, 7, 5], seed=1)
    m.train_step(x, y)
    g = m.grads.copy()
    m.train_step(x, y, loss_scale=1024.0)
    np.testing.assert_array_equal(m.grads, g * F(1024))


def stand_in():
    """A GPU device with NumPy in CuPy's place (as tests/nn/test_device.py): the --device cuda code path."""
    def copy_in(a, out):
        if out is None:
            return a.copy()
        out[...] = a
        return out
    return ArrayDevice(name="numpy-as-gpu", xp=np, erf=scipy.special.erf, from_host=copy_in, to_host=copy_in,
                       matmul=lambda a, b, out: np.matmul(a, b, out=out))


def test_the_device_path_multiplies_in_float16_and_matches_the_emulation():
    """--device cuda's path with NumPy standing in for CuPy: half GEMMs (here NumPy's float16 matmul) on the
    same rounded values; the results agree with the CPU emulation to fp16's rounding."""
    x, y = _data(seed=7)
    cpu, dev = MLP([12, 16, 5], seed=3, precision="fp16"), MLP([12, 16, 5], seed=3, precision="fp16", device=stand_in())
    seen = []
    inner = dev.ops.matmul
    dev.ops.matmul = lambda a, b, out: (seen.append(out.dtype), inner(a, b, out))[1]
    (l1, _), (l2, _) = cpu.train_step(x, y), dev.train_step(x, y)
    assert seen and all(d == F for d in seen)
    assert abs(l1 - l2) <= 4 * UNIT_ROUNDOFF["fp16"] * abs(l1)
    assert _rel(dev.grads, cpu.grads) < 8 * UNIT_ROUNDOFF["fp16"]
    assert dev.ops is not stand_in and dev.params.dtype == F


# ---- activation memory ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(), dict(dropout=0.3), dict(activation="gelu", batchnorm=True),
                                dict(activation="leaky_relu", dropout=0.1, batchnorm=True),
                                dict(activation="sigmoid")])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_activation_formula_is_what_the_layers_hold(kw, precision):
    x, y = _data(n=24)
    m = MLP([12, 16, 9, 5], precision=precision, **kw)
    m.train_step(x, y)
    k = m.kept_activations(24)
    assert m.stored_activation_bytes() == k["bytes"]["fp32"] == 4 * (k["values"] + k["float32_values"])
    assert k["bytes"]["fp16"] == k["bytes"]["bf16"] == 2 * k["values"] + 4 * k["float32_values"]
    assert k["float32_values"] == 24 * 5 + (16 + 9 if kw.get("batchnorm") else 0)
    assert k["formula"].startswith("24·(12 + ")


def test_the_plain_mlp_keeps_each_linear_input_once():
    k = MLP([64, 128, 64, 10]).kept_activations(32)
    assert k["values"] == 32 * (64 + 128 + 64) and k["float32_values"] == 32 * 10
    assert k["formula"] == "32·(64 + 128 + 64) values in the compute format + 32·10 (softmax) in float32"


# ---- the loss scaler -----------------------------------------------------------------------------------

def test_the_scale_grows_after_the_interval_of_clean_steps():
    s = LossScaler(init_scale=8.0, growth_interval=3)
    g = np.full(4, 16.0, dtype=F)
    for step in range(1, 7):
        g[:] = 16.0
        assert s.unscale_and_check(g)
        np.testing.assert_array_equal(g, 16.0 / (8.0 if step <= 3 else 16.0))    # divided by the scale used
        assert s.scale == (8.0 if step < 3 else 16.0 if step < 6 else 32.0)
    assert s.skipped == 0


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_a_non_finite_gradient_backs_off_and_counts_a_skip_and_restarts_the_interval(bad):
    s = LossScaler(init_scale=2.0**16, growth_interval=2)
    g = np.ones(5, dtype=F)
    assert s.unscale_and_check(g)                # one clean step
    g[:] = 1.0
    g[3] = bad
    assert not s.unscale_and_check(g)
    assert s.scale == 2.0**15 and s.skipped == 1
    g[:] = 1.0
    assert s.unscale_and_check(g) and s.scale == 2.0**15        # the clean run starts over
    assert s.unscale_and_check(g) and s.scale == 2.0**16
    g[0] = bad
    assert not s.unscale_and_check(g) and s.skipped == 2 and s.scale == 2.0**15


def test_an_overflow_by_the_unscaling_itself_is_caught():
    s = LossScaler(init_scale=0.5)               # 1/scale = 2 doubles float32's largest: inf
    assert not s.unscale_and_check(np.array([3e38], dtype=F))


def test_a_skipped_step_leaves_the_parameters_and_optimizer_unchanged():
    x, y = _data(seed=8)
    m = MLP([12, 7, 5], seed=4, precision="fp16")
    opt, s = make_optimizer("adam", m.params, m.grads, lr=1e-2), LossScaler()
    applied = []
    for step in range(4):
        before = m.params.copy()
        m.train_step(x, y, loss_scale=s.scale)
        if step == 2:
            m.grads[7] = np.inf                  # as an fp16 overflow would leave it
        if s.unscale_and_check(m.grads):
            opt.step()
            applied.append(step)
            assert not np.array_equal(m.params, before)
        else:
            np.testing.assert_array_equal(m.params, before)
    assert applied == [0, 1, 3] and opt.steps == 3 and s.skipped == 1 and s.scale == 2.0**15
    assert np.isfinite(m.params).all() and np.isfinite(opt.state["exp_avg"]).all()


def test_a_gradient_that_stays_non_finite_is_a_divergence_not_the_scale():
    s = LossScaler(init_scale=2.0**16)
    g = np.full(3, np.nan, dtype=F)
    with pytest.raises(FloatingPointError, match=r"non-finite gradient at step 41 even with the fp16 loss "
                                                 r"scale down to 2\.98\d*e-08: lower --lr"):
        for step in range(1, 100):
            s.unscale_and_check(g, where=f"at step {step}")
    assert s.skipped == 41                       # 2^16 down to 2^-24 is 40 halvings, the 41st goes below


def test_scaler_state_round_trips_and_bad_settings_are_refused():
    s = LossScaler(init_scale=4.0, growth_interval=5)
    g = np.ones(2, dtype=F)
    s.unscale_and_check(g)
    s.unscale_and_check(np.array([np.inf], dtype=F))
    s.unscale_and_check(g)
    t = LossScaler(growth_interval=5)
    t.load_state_dict(s.state_dict())
    assert (t.scale, t.clean, t.skipped) == (2.0, 1, 1)
    with pytest.raises(ValueError, match="missing"):
        t.load_state_dict({"scale": np.array(1.0)})
    for bad in (dict(init_scale=0), dict(growth_factor=1.0), dict(backoff_factor=1.0), dict(growth_interval=0),
                dict(init_scale=np.inf)):
        with pytest.raises(ValueError, match="LossScaler"):
            LossScaler(**bad)
