"""TensorFlow and scikit-learn for real: the `tf` mode's models against the frameworks' own ops.

The TensorFlow and sklearn calls are written here, not taken from `bce_audit.backends`, so a wrong
conversion or a wrong op in the backend cannot hide behind itself; the backend itself is then
checked through `fidelity` on every float16/bfloat16 value and a dense float32 sample. Each
framework is an optional extra: its tests skip, saying so, when it is missing.
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np
import pytest
from cli_support import assert_usage_error, run
from tf_support import rcpps_mismatches
from ulp_support import ulp_distance

from bce_audit import backends, dtypes, fidelity, formulas, keypoints
from bce_audit.formulas import Evaluator

NO_TF = "the tensorflow extra is not installed: pip install 'bce-audit[tensorflow]'"
NO_SKLEARN = "the sklearn extra is not installed: pip install 'bce-audit[sklearn]'"
TF_FORMULAS = ("keras2-logits", "tf-keras", "logits-stable")
EPS = 1e-7


def _tf():
    pytest.importorskip("tensorflow", reason=NO_TF)
    with backends.quiet():
        import tensorflow as tf
    return tf


def _sample(dtype: str, step: int = 1) -> np.ndarray:
    """Every step-th finite value of a 16-bit dtype, from its bit patterns."""
    vals = np.arange(0, 1 << 16, step, dtype=np.uint32).astype(np.uint16).view(dtypes.get(dtype).dtype)
    with np.errstate(invalid="ignore"):
        return vals[np.isfinite(vals.astype(np.float32))]


def _f32_sample(n: int = 100_000) -> np.ndarray:
    """float32 where the TF kernels differ from numpy: |x| in [10, 20] and the flush region
    near 87-104 (exp(-|x|) subnormal), plus the subnormal inputs themselves."""
    rng = np.random.default_rng(11)
    parts = [rng.uniform(10, 20, n), rng.uniform(85, 105, n // 4), rng.uniform(-120, 120, n),
             np.ldexp(rng.uniform(0.5, 1, 1000), rng.integers(-149, -126, 1000))]
    x = np.concatenate(parts).astype(np.float32)
    return np.concatenate([x, -x])


def _padded(fn, *arrays):
    """Evaluate with every element on the kernels' vector path: whole blocks of 256 elements."""
    n = arrays[0].size
    pad = (-n) % 256
    out = fn(*(np.concatenate([a, np.repeat(a[-1:], pad)]) for a in arrays))
    return np.asarray(out)[:n]


def _same(model: np.ndarray, real: np.ndarray) -> np.ndarray:
    return (model == real) | (np.isnan(model.astype(np.float32)) & np.isnan(real.astype(np.float32)))


# ---------------------------------------------------------------- the tf mode against TensorFlow


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_tf_mode_matches_tensorflow_forward(dtype):
    """sigmoid, the round trip and the three TF formulas, value for value (fast: a sample)."""
    tf = _tf()
    import tf_keras

    x = _sample(dtype, 7) if dtype != "float32" else _f32_sample(20_000)
    ev = Evaluator(dtype, "tf")

    def keras2(x, y):
        p = tf.math.sigmoid(x)
        e = tf.constant(EPS, dtype=p.dtype)
        p = tf.clip_by_value(p, e, 1 - e)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=tf.math.log(p / (1 - p)))

    real = {
        "sigmoid": _padded(lambda a: tf.math.sigmoid(a).numpy(), x),
        "roundtrip": _padded(lambda a: tf.math.log(tf.math.sigmoid(a) / (1 - tf.math.sigmoid(a))).numpy(), x),
    }
    model = {"sigmoid": formulas.evaluate_sigmoid(x, ev), "roundtrip": formulas.evaluate_roundtrip(x, ev)}
    for label in (1, 0):
        y = np.full(x.shape, label).astype(x.dtype)
        real[f"keras2-logits {label}"] = _padded(lambda a, b: keras2(a, b).numpy(), x, y)
        real[f"logits-stable {label}"] = _padded(
            lambda a, b: tf.nn.sigmoid_cross_entropy_with_logits(labels=b, logits=a).numpy(), x, y)
        real[f"tf-keras {label}"] = _padded(
            lambda a, b: tf_keras.backend.binary_crossentropy(b, tf.math.sigmoid(a)).numpy(), x, y)
        for name in TF_FORMULAS:
            model[f"{name} {label}"] = formulas.get(name)(x, y, EPS, ev)
    for key, r in real.items():
        bad = np.flatnonzero(~_same(model[key], r))
        assert bad.size == 0, (key, x[bad[:5]], model[key][bad[:5]], r[bad[:5]])


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
def test_per_op_mode_does_not_match_tensorflow_float32():
    """The reason for the mode: numpy's 1/(1+exp(-x)) is not TensorFlow's sigmoid."""
    tf = _tf()
    x = _f32_sample(20_000)
    naive = formulas.evaluate_sigmoid(x, Evaluator("float32", "per-op"))
    real = _padded(lambda a: tf.math.sigmoid(a).numpy(), x)
    assert (~_same(naive, real)).sum() > 1000


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
def test_tensorflow_flushes_subnormals_and_the_tf_mode_does_too():
    tf = _tf()
    x = np.float32([-87.5, -88.0, 90.0, 100.0])
    real = _padded(lambda a: tf.math.sigmoid(a).numpy(), x)
    assert real[0] == 0 and real[1] == 0  # sigmoid(-87.5) = 1e-38 is subnormal in float32: flushed
    np.testing.assert_array_equal(formulas.evaluate_sigmoid(x, Evaluator("float32", "tf")), real)
    assert formulas.evaluate_sigmoid(x, Evaluator("float32", "per-op"))[0] > 0  # numpy keeps it


@pytest.mark.slow  # runs TensorFlow (its import alone takes seconds)
def test_mean_of_the_pair_as_tensorflow_reduces_it():
    """TF's reduce_mean of float16 sums in float16; the formulas of TF code say so (mean32=False)."""
    tf = _tf()
    a = np.float16([40000.0, 0.5])  # 40000 + 40000 overflows float16: the mean is inf in float16
    b = np.float16([40000.0, 0.25])
    real = tf.reduce_mean(tf.stack([tf.constant(a), tf.constant(b)]), axis=0).numpy()
    ev = Evaluator("float16", "tf")
    model = formulas.pair_mean(formulas.get("logits-stable"), a, b, ev)
    np.testing.assert_array_equal(model, real)
    assert np.isinf(real[0])
    wide = formulas.pair_mean(formulas.get("optax"), a, b, ev)  # jax, torch: float32, rounded once
    once = ((a.astype(np.float32) + b.astype(np.float32)) / 2).astype(np.float16)
    np.testing.assert_array_equal(wide, once)
    assert wide[0] == 40000
    assert formulas.get("logits-stable").mean32 is False and formulas.get("optax").mean32 is True


# ---------------------------------------------------------------- the backend, through fidelity


def _forward(diffs) -> list:
    return [d for d in diffs if not d.quantity.startswith("grad")]


@pytest.mark.slow
def test_tensorflow_backend_fidelity_every_narrow_value_and_dense_float32():
    tf = _tf()
    diffs = fidelity.differences(backends.get("tensorflow"))
    assert {d.dtype for d in diffs} == {"float16", "bfloat16", "float32"}
    assert {d.quantity for d in _forward(diffs)} == {"sigmoid", "roundtrip", *TF_FORMULAS}
    for d in _forward(diffs):
        assert d.differ == 0, d
    # gradients: TF's reciprocal is a vrcpps estimate and a Newton step, whose estimate is the CPU's own
    exact = rcpps_mismatches(tf) == 0
    for d in diffs:
        assert d.differ == 0 if exact else d.worst_ulp <= 8, d


@pytest.mark.slow
def test_tensorflow_key_points_match_the_model():
    _tf()
    pairs = fidelity.keypoint_pairs(backends.get("tensorflow"), ("float16", "float32"))
    assert pairs
    assert [p for p in pairs if p.steps != 0] == []


def test_tensorflow_backend_missing_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails
    monkeypatch.setattr(backends, "_BACKENDS", {})
    with pytest.raises(backends.BackendMissing, match=r"pip install 'bce-audit\[tensorflow\]'"):
        backends.get("tensorflow")


def test_cli_backend_missing_is_one_line_exit_2(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    monkeypatch.setattr(backends, "_BACKENDS", {})
    r = run("sweep", "--backend", "tensorflow", "--dtype", "float16", "--no-cache")
    assert_usage_error(r, "pip install 'bce-audit[tensorflow]'")


# ---------------------------------------------------------------- scikit-learn


def _log_loss_each(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.metrics import log_loss

    return np.array([log_loss([int(b)], p[i:i + 1], labels=[0, 1]) for i, b in enumerate(y)])


@pytest.mark.slow  # scikit-learn's log_loss, one call per value
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_sklearn_formula_matches_log_loss(dtype):
    pytest.importorskip("sklearn", reason=NO_SKLEARN)
    x = _sample(dtype, 257) if dtype != "float32" else _f32_sample(100)[::5]
    ev = Evaluator(dtype)
    p = formulas.evaluate_sigmoid(x, ev)
    for label in (1, 0):
        y = np.full(x.shape, label)
        real = _log_loss_each(p, y).astype(ev.dtype)
        model = formulas.get("sklearn")(x, y, None, ev)
        bad = np.flatnonzero(~_same(model, real))
        assert bad.size == 0, (label, x[bad[:5]], model[bad[:5]], real[bad[:5]])


def test_sklearn_clips_at_the_dtype_epsilon():
    """log_loss's floor: -log(1 - finfo(dtype).eps), whatever --eps says."""
    ev = Evaluator("float16")
    x = np.float16([30.0])
    out = formulas.get("sklearn")(x, np.ones(1), 1e-3, ev)
    e = float(np.finfo(np.float16).eps)
    assert out[0] == np.float16(-np.log(np.float16(1 - e)))
    assert ulp_distance(out, np.float16([e]).astype(np.float16)) <= 2


@pytest.mark.slow
def test_sklearn_backend_fidelity():
    pytest.importorskip("sklearn", reason=NO_SKLEARN)
    for d in fidelity.differences(backends.get("sklearn")):
        assert d.differ == 0, d


# ---------------------------------------------------------------- flushing


def test_flush_follows_the_cpu():
    f32 = np.float32([1e-39, -1e-39, 1e-30, 0.0])
    out = formulas.flush(f32)
    assert out.tolist() == [0.0, 0.0, np.float32(1e-30), 0.0] and np.signbit(out[1])
    f16 = np.float16([6e-8, 1e-5])  # float16 subnormals are float32 normals: kept
    np.testing.assert_array_equal(formulas.flush(f16), f16)
    bf = np.array([1e-39, 1e-30], dtype=ml_dtypes.bfloat16)  # bfloat16 shares float32's range
    assert formulas.flush(bf).astype(np.float32).tolist()[0] == 0.0


def test_flushed_arrays_flush_every_result():
    ev = Evaluator("float32", "xla")
    a = ev.inputs(np.float32([1e-20]))
    assert float((a * a)[0]) == 0.0  # 1e-40 is subnormal
    assert float((np.float32([1e-20]) * np.float32([1e-20]))[0]) > 0  # numpy does not flush
    assert float(ev.exp(ev.inputs(np.float32([-100.0])))[0]) == 0.0


@pytest.mark.parametrize("mode", ["tf", "xla"])
def test_flushing_modes_keep_the_grid_values(mode):
    """The inputs recorded are the dtype's values; only the ops read subnormals as zero."""
    ev = Evaluator("float32", mode)
    x = np.float32([1e-40])
    assert float(ev.arr(x)[0]) > 0
    assert float(ev.inputs(x)[0]) == 0
    assert keypoints.loss_fn(formulas.get("logits-stable"), None, 1, ev)(x).dtype == np.float32


@pytest.mark.slow  # imports TensorFlow
def test_tensorflow_backend_runs_its_ops_on_the_cpu(monkeypatch):
    """The models are of TensorFlow's CPU kernels: every op of the backend is placed on the CPU,
    so a machine with a GPU (and TensorFlow's GPU build) still compares like with like."""
    tf = _tf()
    placed: list[str] = []
    real = tf.device
    monkeypatch.setattr(tf, "device", lambda name: placed.append(name) or real(name))
    b = backends._tensorflow("cpu")
    out = b.sigmoid(np.float32([0.0, 1.0]))
    assert out.dtype == np.float32 and placed and set(placed) == {"/CPU:0"}
