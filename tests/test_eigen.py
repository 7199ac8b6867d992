"""bce_audit.eigen against TensorFlow's CPU kernels (bit for bit) and against mpmath (without TensorFlow)."""

from __future__ import annotations

import os
import platform

import ml_dtypes
import numpy as np
import pytest
from mpmath import mp
from ulp_support import ulp_distance

from bce_audit import eigen, glibc

F32, F16, BF16 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)
TINY32 = float.fromhex("0x1p-126")  # 1.18e-38, smallest normal float32
EDGES = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1e-40, -1e-40, TINY32, -TINY32,
         16.6355324, 16.635532, 16.635534, -87.33, -87.34, -103.99, -104.0, -104.01, 88.72, 88.73,
         3.4e38, -3.4e38, 1.0, -1.0, 0.5, -0.5]


def every_bit_pattern(dtype: np.dtype) -> np.ndarray:
    """All 2**16 values of a 16-bit dtype, NaNs and infinities included."""
    return np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(dtype)


def dense_float32(seed: int = 0) -> np.ndarray:
    """1.15 million float32 inputs: a fine grid over the sigmoid's range, 10 <= |x| <= 20, the FTZ band,
    subnormals, huge values, random bit patterns (NaN payloads) and the edge cases."""
    rng = np.random.default_rng(seed)
    sign = rng.integers(0, 2, 50_000, dtype=np.uint32) << 31
    subnormals = (rng.integers(1, 2**23, 50_000, dtype=np.uint32) | sign).view(np.float32)
    parts = [
        np.linspace(-20, 20, 400_001, dtype=np.float32),
        rng.uniform(10, 20, 100_000).astype(np.float32) * rng.choice([-1, 1], 100_000).astype(np.float32),
        rng.uniform(-110, -80, 100_000).astype(np.float32),
        subnormals,
        rng.integers(0, 2**32, 500_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array(EDGES, np.float32),
    ]
    return np.concatenate(parts)


def inputs(dtype: np.dtype) -> np.ndarray:
    return dense_float32() if dtype == F32 else every_bit_pattern(dtype)


def bit_differences(a: np.ndarray, b: np.ndarray) -> int:
    assert a.dtype == b.dtype and a.shape == b.shape
    uint = np.uint32 if a.dtype.itemsize == 4 else np.uint16
    return int(np.count_nonzero(a.view(uint) != b.view(uint)))


# --- without TensorFlow ------------------------------------------------------------------------------


def test_pad_makes_whole_packets():
    for n in range(0, 3 * eigen.BLOCK):
        x = np.arange(n, dtype=np.float32)
        p = eigen.pad(x)
        assert p.size % eigen.BLOCK == 0 and p.size - n < eigen.BLOCK
        assert np.array_equal(p[:n], x)


def test_rejects_other_dtypes():
    with pytest.raises(TypeError, match="float64"):
        eigen.logistic(np.zeros(8))


@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_special_values(dtype):
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 17.0, -200.0], dtype)
    y = eigen.logistic(x)
    assert y.dtype == dtype
    assert y[:4].tolist() == [0.5, 0.5, 1.0, 0.0]
    assert np.isnan(y[4].astype(np.float32))
    assert y[5] == 1 and y[6] == 0


def test_float32_clamp_and_flush_bands():
    """1 from the clamp 16.6355324 up; 0 below -104 (the mask) and in the FTZ band where e*e underflows;
    subnormal inputs read as zero (DAZ)."""
    up = np.float32(16.6355324)
    assert np.all(eigen.logistic(np.array([up, 17, 1e30], np.float32)) == 1)
    assert eigen.logistic(np.array([np.nextafter(up, np.float32(0))], np.float32))[0] < 1
    assert np.all(eigen.logistic(np.linspace(-104, -87.4, 1000, dtype=np.float32)) == 0)
    assert np.all(eigen.logistic(np.linspace(-87.3, -80, 1000, dtype=np.float32)) >= TINY32)
    assert np.all(eigen.logistic(np.array([1e-40, -1e-40, 1e-45], np.float32)) == 0.5)


def test_ftz_tininess_is_detected_after_rounding():
    """x86 flushes a result that is still below 2**-126 after rounding to 24 bits."""
    tiny = TINY32
    v = np.array([tiny - 2.0**-150, tiny - 2.0**-151, -(tiny - 2.0**-150), 2.0**-130], np.float64)
    r = eigen._round(v)
    assert r.tolist() == [0.0, tiny, -0.0, 0.0]
    assert np.signbit(r[2])


def test_float32_monotone():
    x = np.linspace(-110, 20, 1_000_001, dtype=np.float32)
    assert np.all(np.diff(eigen.logistic(x).astype(np.float64)) >= 0)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_half_types_are_not_monotone(dtype):
    """Three roundings to the dtype (exp, 1 + e, the quotient) break monotonicity, as in TensorFlow."""
    x = every_bit_pattern(dtype)
    x = np.unique(x[np.isfinite(x.astype(np.float32))].astype(np.float32)).astype(dtype)
    y = eigen.logistic(x).astype(np.float64)
    assert np.all((y >= 0) & (y <= 1))
    assert np.count_nonzero(np.diff(y) < 0) > 0


def _exact_sigmoid(x: np.ndarray) -> np.ndarray:
    with mp.workprec(80):
        return np.array([float(1 / (1 + mp.exp(-mp.mpf(float(v))))) for v in x])


@pytest.mark.parametrize(("dtype", "ulps"), [(F32, 6), (F16, 2), (BF16, 2)], ids=str)
def test_logistic_within_few_ulp_of_mpmath(dtype, ulps):
    """Eigen's float32 kernel is documented within 4.5 ULP of the double sigmoid; away from the FTZ band
    the model stays within ``ulps`` of the exact value (float16/bfloat16: every value)."""
    if dtype == F32:
        x = np.random.default_rng(1).uniform(-87, 17, 3000).astype(np.float32)
    else:
        x = every_bit_pattern(dtype)
        x = x[np.isfinite(x.astype(np.float32)) & (x.astype(np.float32) > -87)]
    exact = _exact_sigmoid(x.astype(np.float64)).astype(dtype)  # the correctly rounded value
    assert ulp_distance(eigen.logistic(x), exact).max() <= ulps


@pytest.mark.parametrize(("op", "exact", "lo", "hi", "ulps"), [
    ("exp", mp.exp, -87.0, 88.0, 2),
    ("log", mp.log, 1e-37, 3e38, 2),
    ("log1p", mp.log1p, -0.999, 1e6, 3),
])
def test_float32_exp_log_log1p_within_few_ulp(op, exact, lo, hi, ulps):
    rng = np.random.default_rng(2)
    if lo > 0:
        x = np.exp(rng.uniform(np.log(lo), np.log(hi), 3000)).astype(np.float32)
    else:
        x = rng.uniform(lo, hi, 3000).astype(np.float32)
    with mp.workprec(80):
        want = np.array([float(exact(mp.mpf(float(v)))) for v in x]).astype(np.float32)
    assert ulp_distance(getattr(eigen, op)(x), want).max() <= ulps


# --- against TensorFlow ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip("tensorflow")


def _tf_and_model(tf, name: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tf_op = {"logistic": tf.math.sigmoid, "exp": tf.math.exp, "log": tf.math.log, "log1p": tf.math.log1p}
    padded = eigen.pad(x)
    got = tf_op[name](padded).numpy()[: x.size]
    return got, getattr(eigen, name)(x)


@pytest.mark.slow  # every 16-bit value through TensorFlow
@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("name", ["logistic", "exp", "log", "log1p"])
def test_every_16_bit_value_matches_tensorflow(tf, name, dtype):
    got, model = _tf_and_model(tf, name, every_bit_pattern(dtype))
    assert bit_differences(got, model) == 0


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("name", ["logistic", "exp", "log", "log1p"])
def test_dense_float32_matches_tensorflow(tf, name):
    got, model = _tf_and_model(tf, name, dense_float32())
    assert bit_differences(got, model) == 0


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_sigmoid_cross_entropy_with_logits_matches_tensorflow(tf, dtype):
    x = eigen.pad(inputs(dtype)[:200_000] if dtype == F32 else inputs(dtype))
    rng = np.random.default_rng(4)
    for labels in (np.zeros(x.size), np.ones(x.size), np.full(x.size, 0.25), rng.integers(0, 2, x.size)):
        y = labels.astype(dtype)
        got = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x).numpy()
        assert bit_differences(got, eigen.sigmoid_cross_entropy_with_logits(y, x)) == 0


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_scalar_path_matches_tensorflow(tf, dtype):
    """Arrays shorter than a packet run the scalar code (glibc expf, logf, log1pf) for every element;
    the last n % 8 elements of a long array run the same code."""
    x = inputs(dtype)
    if dtype == F32:
        x = np.concatenate([x[::12], np.array(EDGES, np.float32)])
    n = x.size - x.size % 7
    head = np.full(256, 0.5, dtype)  # whole packets before a tail of 7
    ops = (("logistic", tf.math.sigmoid), ("exp", tf.math.exp), ("log", tf.math.log),
           ("log1p", tf.math.log1p))
    for name, op in ops:
        model = getattr(eigen, name)(x[:n], scalar=True)
        got = np.concatenate([op(x[i : i + 7]).numpy() for i in range(0, n, 7)])
        assert bit_differences(got, model) == 0, name
        starts = range(0, n, 7 * 23)  # every 23rd group of 7
        tails = np.concatenate([op(np.concatenate([head, x[i : i + 7]])).numpy()[head.size :]
                                for i in starts])
        assert bit_differences(tails, np.concatenate([model[i : i + 7] for i in starts])) == 0, name


def test_scalar_log_reads_subnormals_as_glibc_does_under_daz():
    """glibc logf tests the input's bits before any arithmetic: a negative subnormal is invalid, as
    any negative; a positive one is normalised by x * 2^23, which DAZ reads as 0, and comes out
    as log(2^-150). log1pf returns an input below 2^-24 as it went in. (TensorFlow agrees, bit for
    bit: `test_scalar_path_matches_tensorflow`.) The packet path reads them as zero."""
    x = np.float32([1e-40, -1e-40, TINY32, 0.0])
    log = eigen.log(x, scalar=True)
    assert log[0] == np.float32(-150 * np.log(2)) and np.isnan(log[1])
    assert log[2] == glibc.libm("logf", np.float32([TINY32]))[0] and log[3] == -np.inf
    assert bit_differences(eigen.log1p(x, scalar=True)[:2], x[:2]) == 0
    packet = eigen.log(x)
    assert packet[0] == packet[1] == -np.inf


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", [F32, F16, BF16], ids=str)
def test_unpadded_arrays_match_tensorflow(tf, dtype):
    """The first n - n % BLOCK elements take the packet path, the last n % BLOCK the scalar path."""
    x = np.linspace(-20, 20, 100_003).astype(dtype)
    got = tf.math.sigmoid(x).numpy()
    assert bit_differences(got, eigen.logistic_unpadded(x)) == 0


def test_float32_paths_differ():
    """Position in the array matters for float32: the two paths round differently on ~1/3 of a grid."""
    x = np.linspace(-20, 20, 100_001, dtype=np.float32)
    assert np.count_nonzero(eigen.logistic(x, scalar=True) != eigen.logistic(x)) > 10_000


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
def test_tensorflow_flushes_subnormals(tf):
    """FTZ|DAZ: subnormal float32 results become zero, subnormal inputs read as zero; negation (a sign
    flip) and float16 arithmetic (subnormals of float16 are float32 normals) keep theirs."""
    sub = np.full(8, 1e-40, np.float32)
    assert np.all(tf.math.multiply(sub, np.ones(8, np.float32)).numpy() == 0)
    assert np.all(tf.math.exp(np.full(8, -87.5, np.float32)).numpy() == 0)
    assert np.all(tf.math.log(sub).numpy() == -np.inf)
    assert np.all(tf.math.negative(sub).numpy() == -sub)
    assert np.all(tf.math.exp(np.full(8, -16, np.float16)).numpy() > 0)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or "expf" not in glibc._functions(),
                    reason="the model is of glibc's expf")
def test_scalar_expf_asks_glibc_where_the_fused_code_rounds_otherwise():
    """The scalar path's expf is glibc's code evaluated unfused; x86-64 runs it fused. On these two
    inputs (found by checking every float32 with a normal result against the libm) the two round
    apart, and the model hands them to the libm: its bits, not the unfused evaluation's."""
    import ctypes

    expf = glibc._functions()["expf"]
    x = np.array([32.564632, -63.09946], np.float32)
    got = eigen._expf_libm(x)
    want = np.array([expf(ctypes.c_float(v)) for v in x.tolist()], np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # the unfused evaluation alone rounds the other way on both: the fallback is what makes them equal
    unfused = eigen._expf_unfused(x)[0].astype(np.float32)
    assert not np.any(unfused.view(np.uint32) == want.view(np.uint32))
