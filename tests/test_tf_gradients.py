"""TensorFlow's gradient kernels: `eigen.reciprocal`, `eigen.sigmoid_grad`, and the mode "tf"
gradient models of the TF formulas against GradientTape, bit for bit.

TF's backward rules are Python (``math_grad.py``: ``LogGrad = grad * reciprocal(x)``, ``Log1pGrad``,
``ExpGrad``, ``RealDivGrad``, ``SelectV2``, the clip's ``Maximum``/``Minimum`` masks) but their ops
are Eigen kernels: ``Reciprocal`` is a ``vrcpps`` estimate and a Newton step, not ``1 / x``, and
``SigmoidGrad`` is one fused kernel. The TF calls are written here, not taken from
`bce_audit.backends`. ``vrcpps`` differs between CPU vendors: where this CPU's is not the table
`eigen` models, the tests that depend on it skip, saying so.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tf_support import SKIP, rcpps_mismatches
from ulp_support import ulp_distance

from bce_audit import backends, eigen, gradients
from bce_audit.formulas import Evaluator

F32, F16, BF16 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
TINY32 = float.fromhex("0x1p-126")  # 1.18e-38, float32's smallest normal
EPS = 1e-7  # Keras' epsilon()
TF_FORMULAS = ("keras2-logits", "tf-keras", "logits-stable")
NO_TF = "the tensorflow extra is not installed: pip install 'bce-audit[tensorflow]'"


def every_mantissa(step: int = 1) -> np.ndarray:
    """float32 values in [1, 2): every step-th mantissa."""
    return (np.uint32(0x3F800000) | np.arange(0, 1 << 23, step, dtype=np.uint32)).view(np.float32)


def finite_16_bit(dtype: np.dtype, step: int = 1) -> np.ndarray:
    vals = np.arange(0, 1 << 16, step, dtype=np.uint32).astype(np.uint16).view(dtype)
    with np.errstate(invalid="ignore"):
        return vals[np.isfinite(vals.astype(np.float32))]


def float32_logits(n: int, seed: int = 5) -> np.ndarray:
    """A grid over [-120, 120], where the loss moves ([-20, 20]) and the FTZ band (|x| 85-105)."""
    rng = np.random.default_rng(seed)
    parts = [np.linspace(-120, 120, n), rng.uniform(-20, 20, n), rng.uniform(85, 105, n // 4)]
    x = np.concatenate(parts).astype(np.float32)
    return np.concatenate([x, -x, np.float32([0.0, -0.0, 1e-40, 16.6355324, 87.33, 104.0])])


def bits_differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where a and b are not the same bits (any two NaNs count as the same)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    uint = np.uint32 if a.dtype.itemsize == 4 else np.uint16
    with np.errstate(invalid="ignore"):
        both_nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
    return (a.view(uint) != b.view(uint)) & ~both_nan


# --- without TensorFlow ------------------------------------------------------------------------------


def test_rcp_table_is_a_decreasing_12_bit_estimate():
    t = eigen.RCP_TABLE
    assert t.shape == (4096,) and t.max() < 4096
    assert np.all(np.diff(t.astype(np.int64)) <= 0)


@pytest.mark.slow  # every float32 mantissa
def test_rcpps_meets_the_isa_bound():
    """Intel's and AMD's manuals: |relative error| <= 1.5 * 2**-12, on every float32 in [1, 2)."""
    a = every_mantissa()
    rel = eigen.rcpps(a).astype(np.float64) * a.astype(np.float64) - 1
    assert np.abs(rel).max() <= 1.5 * 2.0**-12
    scaled = np.ldexp(a[::997], 40).astype(np.float32)  # the estimate scales with the exponent
    np.testing.assert_array_equal(eigen.rcpps(scaled), np.ldexp(eigen.rcpps(a[::997]), -40))


def test_rcpps_special_values():
    a = np.float32([0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf, 2.0**126, -(2.0**126), 2.0**125, np.nan])
    r = eigen.rcpps(a)
    assert r[:4].tolist() == [np.inf, -np.inf, np.inf, -np.inf]  # subnormals read as zero
    assert r[4:8].tolist() == [0.0, 0.0, 0.0, 0.0] and np.signbit(r[[5, 7]]).all()  # tiny: flushed
    assert r[8] >= TINY32 and np.isnan(r[9])


def test_reciprocal_is_within_3_ulp_of_one_over_x():
    """One Newton step without FMA: no further than 3 ULP from the correctly rounded 1/x."""
    a = every_mantissa(7)
    exact = (1 / a.astype(np.float64)).astype(np.float32)
    d = ulp_distance(eigen.reciprocal(a), exact)
    assert d.max() <= 3 and np.count_nonzero(d) > a.size // 10  # and often not correctly rounded
    np.testing.assert_array_equal(eigen.reciprocal(a, scalar=True), exact)  # the scalar path: 1 / x


def test_reciprocal_of_zero_and_infinity():
    r = eigen.reciprocal(np.float32([0.0, -0.0, np.inf, -np.inf, 1e-40, np.nan, 0, 0]))
    assert r[:5].tolist() == [np.inf, -np.inf, 0.0, 0.0, np.inf] and np.signbit(r[3]) and np.isnan(r[5])


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_sigmoid_grad_orders_its_products(dtype):
    """Packet path ``dy * (y * (1 - y))``, scalar path ``(dy * y) * (1 - y)``: they round apart."""
    rng = np.random.default_rng(2)
    y = rng.uniform(0, 1, 20_000).astype(dtype)
    dy = rng.uniform(-3, 3, 20_000).astype(dtype)
    packet, scalar = eigen.sigmoid_grad(y, dy), eigen.sigmoid_grad(y, dy, scalar=True)
    yf, gf = y.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_array_equal(packet, (dy.astype(np.float32) * (y * (np.ones((), dtype) - y))
                                           .astype(np.float32)).astype(dtype))
    assert ulp_distance(packet, (gf * yf * (1 - yf)).astype(dtype)).max() <= 2
    assert np.count_nonzero(packet != scalar) > 0


def test_tf_mode_uses_the_kernels_and_per_op_does_not():
    """Label 0, x < 0: logits-stable's gradient is Log1pGrad times ExpGrad, ``e / (1 + e)``."""
    x = np.linspace(-12, -0.5, 4001, dtype=np.float32)
    y = np.zeros_like(x)
    e = eigen.exp(x)
    tf_mode = gradients.grad("logits-stable", x, y, None, Evaluator("float32", "tf"))
    np.testing.assert_array_equal(tf_mode, eigen.reciprocal(np.float32(1) + e) * e)
    e = np.exp(x)
    per_op = gradients.grad("logits-stable", x, y, None, Evaluator("float32", "per-op"))
    np.testing.assert_array_equal(per_op, (np.float32(1) / (np.float32(1) + e)) * e)
    assert np.count_nonzero(eigen.reciprocal(np.float32(1) + e) != np.float32(1) / (np.float32(1) + e)) > 100


# --- against TensorFlow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    pytest.importorskip("tensorflow", reason=NO_TF)
    with backends.quiet():
        import tensorflow as tf
    return tf


@pytest.fixture(scope="module")
def modelled_cpu(tf):
    """Skip unless this CPU's ``vrcpps`` gives TF's reciprocal as the model does."""
    bad = rcpps_mismatches(tf)
    if bad:
        pytest.skip(SKIP.format(bad))


def tf_losses(tf):
    """The three TF formulas as their sources write them, in TF ops."""

    def stable(x, y, eps):
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)

    def keras2(x, y, eps):  # keras/backend/tensorflow_backend.py (multi-backend Keras 2.2.4)
        p = tf.math.sigmoid(x)
        e = tf.constant(eps, dtype=p.dtype)
        p = tf.clip_by_value(p, e, 1 - e)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=tf.math.log(p / (1 - p)))

    def tf_keras(x, y, eps):  # tf_keras/src/backend.py binary_crossentropy, from_logits=False
        output = tf.math.sigmoid(x)
        e = tf.constant(eps, dtype=output.dtype)
        output = tf.clip_by_value(output, e, 1.0 - e)
        bce = y * tf.math.log(output + eps)
        bce += (1 - y) * tf.math.log(1 - output + eps)
        return -bce

    return {"logits-stable": stable, "keras2-logits": keras2, "tf-keras": tf_keras}


def tape_gradient(tf, loss, x: np.ndarray, label: float) -> np.ndarray:
    """d loss / dx through GradientTape, every element on the packet path."""
    xp = eigen.pad(x)
    xt, yt = tf.constant(xp), tf.constant(np.full(xp.shape, label, xp.dtype))
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = loss(xt, yt, EPS)
    return tape.gradient(out, xt).numpy()[: x.size]


def assert_gradients_match(tf, x: np.ndarray) -> None:
    dtype = x.dtype.name
    ev = Evaluator(dtype, "tf")
    failures = []
    for name, loss in tf_losses(tf).items():
        for label in (1, 0, 0.25):  # and a soft label: every term of the sums over x's uses
            real = tape_gradient(tf, loss, x, label)
            model = gradients.grad(name, x, np.full(x.shape, label), EPS, ev)
            bad = np.flatnonzero(bits_differ(model, real))
            if bad.size:
                failures.append((name, label, bad.size, x[bad[:3]], model[bad[:3]], real[bad[:3]]))
    assert not failures, failures


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_sigmoid_grad_matches_tensorflow(tf, dtype):
    """SigmoidGrad does not depend on the CPU: both paths, bit for bit."""
    rng = np.random.default_rng(3)
    x = eigen.pad(finite_16_bit(dtype, 3) if dtype != F32 else float32_logits(20_000))
    y = eigen.logistic(x)
    dy = rng.standard_normal(x.size).astype(dtype)
    got = tf.raw_ops.SigmoidGrad(y=y, dy=dy).numpy()
    assert not bits_differ(got, eigen.sigmoid_grad(y, dy)).any()
    n = 7 * 300  # the scalar path: arrays of 7
    got = np.concatenate([tf.raw_ops.SigmoidGrad(y=y[i : i + 7], dy=dy[i : i + 7]).numpy()
                          for i in range(0, n, 7)])
    assert not bits_differ(got, eigen.sigmoid_grad(y[:n], dy[:n], scalar=True)).any()


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_reciprocal_matches_tensorflow(tf, modelled_cpu, dtype):
    x = finite_16_bit(dtype) if dtype != F32 else np.concatenate(
        [every_mantissa(61), float32_logits(10_000), np.float32([0.0, -0.0, 1e-40, np.inf, -np.inf, 3e38])])
    got = tf.math.reciprocal(eigen.pad(x)).numpy()[: x.size]
    assert not bits_differ(got, eigen.reciprocal(x)).any()
    n = x.size - x.size % 7
    step = 7 * 50  # the scalar path (arrays of 7): every 50th group
    got = np.concatenate([tf.math.reciprocal(x[i : i + 7]).numpy() for i in range(0, n, step)])
    want = np.concatenate([eigen.reciprocal(x[i : i + 7], scalar=True) for i in range(0, n, step)])
    assert not bits_differ(got, want).any()


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_tf_gradients_match_gradient_tape_on_a_sample(tf, modelled_cpu, dtype):
    x = finite_16_bit(dtype, 29) if dtype != F32 else float32_logits(3000)
    assert_gradients_match(tf, x)


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_tf_gradients_match_gradient_tape_on_every_16_bit_value(tf, modelled_cpu, dtype):
    assert_gradients_match(tf, finite_16_bit(dtype))


@pytest.mark.slow
def test_tf_gradients_match_gradient_tape_on_dense_float32(tf, modelled_cpu):
    assert_gradients_match(tf, float32_logits(200_001))


@pytest.mark.slow
def test_reciprocal_matches_tensorflow_on_every_mantissa(tf, modelled_cpu):
    a = every_mantissa()
    got = tf.math.reciprocal(a).numpy()
    assert not bits_differ(got, eigen.reciprocal(a)).any()
