"""Each audited formula against the exact baseline, its clip constants, dtypes and the two modes."""

import math

import ml_dtypes
import numpy as np
import pytest
from mpmath import mp

from bce_audit import dtypes, formulas, glibc, keypoints, metrics, reference, sleef
from bce_audit.formulas import Evaluator

F64 = dtypes.get("float64")
EPS = 1e-7  # Keras backend.epsilon()
ONE_MINUS_2_23 = 1 - float.fromhex("0x1p-23")  # 0.99999988: float32 1 - 1e-7

LOGIT_BASED = ("logits-stable", "torch-bce-logits", "optax")
PROB_BASED = ("naive", "keras2-logits", "keras3", "torch-bce")  # p = sigmoid(x) first; no clip for |x| <= 16
CLIPPING = tuple(n for n in formulas.NAMES if formulas.get(n).uses_eps)

MODERATE = np.unique(np.concatenate([
    np.linspace(-10, 10, 161), np.geomspace(1e-8, 10, 60), -np.geomspace(1e-8, 10, 60),
]))


def _loss(name, x, label, dtype="float64", mode="per-op", eps=EPS):
    ev = Evaluator(dtype, mode)
    return formulas.get(name)(x, np.full(np.shape(x), label), eps, ev)


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("name", LOGIT_BASED)
def test_logit_formulas_are_within_4_ulp_float64(name, label):
    xs = MODERATE
    if name == "torch-bce-logits" and label == 0:
        xs = xs[xs >= 0]  # x - log_sigmoid(x) cancels for x < 0: see the next test
    values = _loss(name, xs, label)
    worst = max(metrics.errors(v, reference.exact(x).bce(label), F64).ulp
                for x, v in zip(xs, values, strict=True))
    assert worst <= 4


def test_torch_bce_logits_label0_cancels_to_an_ulp_of_x():
    """``x - log_sigmoid(x)`` for x < 0 subtracts two numbers near x: the error is about ulp(x), no more."""
    xs = MODERATE[MODERATE < 0]
    values = _loss("torch-bce-logits", xs, 0)
    for x, v in zip(xs, values, strict=True):
        exact = reference.exact(x).bce(0)
        err = metrics.errors(v, exact, F64)
        assert err.abs <= 2 * float(np.spacing(abs(x)) + np.spacing(float(exact))), x
    assert metrics.errors(values[0], reference.exact(xs[0]).bce(0), F64).ulp > 1e4  # x = -10: it does cancel


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("name", PROB_BASED)
def test_probability_formulas_are_within_4_ulp_near_zero(name, label):
    xs = MODERATE[np.abs(MODERATE) <= 1]
    values = _loss(name, xs, label)
    worst = max(metrics.errors(v, reference.exact(x).bce(label), F64).ulp
                for x, v in zip(xs, values, strict=True))
    assert worst <= 4


def _conditioning_ratio(x, computed, target) -> float:
    """|error| over eps*(1 + e**|x|): a rounded p near 1 leaves 1 - p with relative error eps*e**|x|."""
    with mp.workprec(reference.PREC):
        e = reference.exact(x)
        bound = F64.eps * (1 + mp.exp(abs(e.x)))
        return float(abs(reference.to_mpf(computed) - target) / bound)


@pytest.mark.parametrize("label", [0, 1])
@pytest.mark.parametrize("name", PROB_BASED)
def test_probability_formulas_err_no_more_than_rounding_p_allows(name, label):
    values = _loss(name, MODERATE, label)
    worst = max(_conditioning_ratio(x, v, reference.exact(x).bce(label))
                for x, v in zip(MODERATE, values, strict=True))
    assert worst <= 2


@pytest.mark.parametrize("label", [0, 1])
def test_tf_keras_matches_its_clipped_exact_value(label):
    """tf.keras adds eps inside the logs, so compare with the same formula in exact arithmetic."""
    f = formulas.get("tf-keras")
    ev = Evaluator("float64")
    lo, hi, shift = keypoints.clip_args(f, EPS, ev)
    values = _loss("tf-keras", MODERATE, label)
    for x, v in zip(MODERATE, values, strict=True):
        target = reference.clipped_exact(reference.exact(x), label, f.clip, lo, hi, shift)
        assert _conditioning_ratio(x, v, target) <= 2, x


@pytest.mark.parametrize("name", [n for n in formulas.NAMES if n != "tf-keras"])
def test_formulas_give_ln2_at_zero(name):
    """At x = 0 every formula but tf.keras (eps inside its logs) gives ln 2 to the last bit or so."""
    for label in (0, 1):
        v = _loss(name, np.array([0.0]), label)[0]
        assert metrics.errors(v, reference.exact_bce(reference.to_mpf(0.0), label), F64).ulp <= 1


def test_tf_keras_at_zero_is_off_by_its_eps():
    """-log(0.5 + eps) = ln 2 - 2 eps + ...: the shift is visible at x = 0, far above one ULP."""
    v = _loss("tf-keras", np.array([0.0]), 1)[0]
    assert abs(v - (math.log(2) - 2 * EPS)) <= 4 * EPS**2


# ---------------------------------------------------------------- clip constants


@pytest.mark.parametrize("name", CLIPPING)
def test_float32_clip_bounds(name):
    lo, hi = formulas.clip_bounds(formulas.get(name), EPS, Evaluator("float32"))
    assert lo.dtype == np.float32 and hi.dtype == np.float32
    assert lo == np.float32(1e-7)
    assert float(lo) == 1.0000000116860974e-07
    assert float(hi) == ONE_MINUS_2_23


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", CLIPPING)
def test_narrow_upper_clip_bound_rounds_to_one(name, dtype):
    if name == "keras3-numpy" and dtype == "bfloat16":
        pytest.skip("np.clip promotes bfloat16 to float32: test_keras3_numpy_clips_bfloat16_in_float32")
    lo, hi = formulas.clip_bounds(formulas.get(name), EPS, Evaluator(dtype))
    assert hi == 1
    assert lo > 0 and lo.dtype == dtypes.get(dtype).dtype


def test_keras3_numpy_clips_bfloat16_in_float32():
    """Keras 3's numpy backend: np.clip has no bfloat16 loop, so p is clipped (and the logs taken)
    in float32, where 1 - eps is 0.99999988, not 1: the loss at large x is finite, unlike keras3's."""
    lo, hi = formulas.clip_bounds(formulas.get("keras3-numpy"), EPS, Evaluator("bfloat16"))
    assert lo.dtype == hi.dtype == np.float32 and float(hi) == ONE_MINUS_2_23
    x = np.array([10.0, 100.0], dtype=ml_dtypes.bfloat16)
    loss = _loss("keras3-numpy", x, 0, "bfloat16")
    assert loss.dtype == ml_dtypes.bfloat16
    floor = np.float32(-np.log(np.float32(1) - np.float32(ONE_MINUS_2_23)))  # 15.94
    assert (loss == floor.astype(ml_dtypes.bfloat16)).all()
    assert np.isinf(_loss("keras3", x, 0, "bfloat16")).all()
    for dtype in ("float16", "float32", "float64"):  # numpy's own dtypes: keras3 itself
        xs = Evaluator(dtype).arr(np.linspace(-30, 30, 601))
        for label in (0, 1):
            want = _loss("keras3", xs, label, dtype)
            np.testing.assert_array_equal(_loss("keras3-numpy", xs, label, dtype), want)


def test_keras3_float16_label0_at_10_is_inf():
    """float16 sigmoid(10) is 1, the upper clip is 1, so log(1 - p) = log(0) (FORMULAS.md notes)."""
    x = np.array([10.0], dtype=np.float16)
    assert formulas.evaluate_sigmoid(x, Evaluator("float16"))[0] == 1
    assert _loss("keras3", x, 0, "float16")[0] == np.inf


def test_keras3_float16_label1_at_10_is_nan():
    """The same -inf times a zero label weight is NaN."""
    x = np.array([10.0], dtype=np.float16)
    assert np.isnan(_loss("keras3", x, 1, "float16")[0])


def test_keras3_float32_label0_at_20_is_clipped_not_inf():
    x = np.array([20.0], dtype=np.float32)
    v = _loss("keras3", x, 0, "float32")[0]
    assert v == -np.log(np.float32(1) - np.float32(ONE_MINUS_2_23))  # -log(2**-23) = 15.94


# ---------------------------------------------------------------- dtypes and modes

_X_ANY = np.array([-300.0, -20.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 20.0, 300.0])


@pytest.mark.parametrize("mode", formulas.EVALUATED)
@pytest.mark.parametrize("dtype", dtypes.NAMES)
def test_every_formula_returns_the_audited_dtype(dtype, mode):
    ev = Evaluator(dtype, mode)
    x = ev.arr(_X_ANY)
    for name, f in formulas.FORMULAS.items():
        for label in (0, 1):
            y = ev.arr(np.full(x.shape, label))
            with np.errstate(all="ignore"):
                raw = np.asarray(f.fn(x, y, EPS, ev))  # before the wrapper's final cast: no silent promotion
            promoted = name == "sklearn" and ev.dtype not in formulas._SKLEARN_DTYPES  # as sklearn does
            assert raw.dtype == (np.float64 if promoted else ev.dtype), (name, label)
            assert f(x, y, EPS, ev).dtype == ev.dtype, (name, label)
        assert keypoints.loss_fn(f, EPS, "pair", ev)(x).dtype == ev.dtype, name
    assert formulas.evaluate_sigmoid(x, ev).dtype == ev.dtype
    assert formulas.evaluate_roundtrip(x, ev).dtype == ev.dtype


@pytest.mark.parametrize("dtype", ["float32", "float64", "longdouble"])
def test_upcast_is_per_op_for_wide_dtypes(dtype):
    """...except float32 where torch's own kernels are modelled (`sleef.py`, tests/test_sleef.py)."""
    if dtype == "float32" and sleef.modelled():
        assert Evaluator(dtype, "upcast").torch_cpu
        return
    info = dtypes.get(dtype)
    x = np.concatenate([_X_ANY, np.linspace(-120, 120, 241)]).astype(info.dtype)
    per_op, up = Evaluator(dtype, "per-op"), Evaluator(dtype, "upcast")
    np.testing.assert_array_equal(formulas.evaluate_sigmoid(x, per_op), formulas.evaluate_sigmoid(x, up))
    np.testing.assert_array_equal(formulas.evaluate_roundtrip(x, per_op), formulas.evaluate_roundtrip(x, up))
    for f in formulas.FORMULAS.values():
        for label in (0, 1):
            y = np.full(x.shape, label)
            np.testing.assert_array_equal(f(x, y, EPS, per_op), f(x, y, EPS, up), err_msg=f.name)


def _sigmoid32_rounded_once(x, dtype):
    """torch's float32 sigmoid (`sleef.sigmoid` where modelled, else numpy's) rounded once."""
    with np.errstate(over="ignore"):
        x32 = x.astype(np.float32)
        p32 = sleef.sigmoid(x32) if sleef.modelled() else np.float32(1) / (np.float32(1) + np.exp(-x32))
    return p32.astype(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_upcast_sigmoid_is_float32_sigmoid_rounded_once(dtype):
    info = dtypes.get(dtype)
    x = info.finite_values()
    got = formulas.evaluate_sigmoid(x, Evaluator(dtype, "upcast"))
    want = _sigmoid32_rounded_once(x, info.dtype)
    assert np.array_equal(got.view(f"u{info.bits // 8}"), want.view(f"u{info.bits // 8}"))
    # and the modes really differ: per-op rounds 1 + exp(-x) to the narrow dtype first
    per_op = formulas.evaluate_sigmoid(x, Evaluator(dtype, "per-op"))
    assert np.any(per_op != got)


def test_per_op_float16_sigmoid_is_numpy_float16():
    x = dtypes.get("float16").finite_values()
    with np.errstate(over="ignore"):
        want = np.float16(1) / (np.float16(1) + np.exp(-x))
    got = formulas.evaluate_sigmoid(x, Evaluator("float16", "per-op"))
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_upcast_float16_torch_bce_is_one_float32_kernel():
    """torch BCELoss on half: p is a half tensor, the loss kernel runs in float32 and rounds once."""
    x = dtypes.get("float16").finite_values()
    p16 = _sigmoid32_rounded_once(x, np.float16)
    p = p16.astype(np.float32)
    log, log1p = np.log, np.log1p  # the C library's logf and log1pf where torch's kernels are modelled
    if sleef.modelled():
        log, log1p = (lambda a: glibc.libm("logf", a)), (lambda a: glibc.libm("log1pf", a))
    with np.errstate(divide="ignore"):
        for label in (0, 1):
            y = np.float32(label)
            want = ((y - 1) * np.maximum(log1p(-p), np.float32(-100))
                    - y * np.maximum(log(p), np.float32(-100))).astype(np.float16)
            got = _loss("torch-bce", x, label, "float16", "upcast")
            assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), label


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_bce_ceiling_is_100(dtype):
    x = np.array([-200.0, 200.0])
    l1 = _loss("torch-bce", x, 1, dtype)
    l0 = _loss("torch-bce", x, 0, dtype)
    assert l1[0] == 100  # log(p) = -200 (float64) or log(0) (float32) both floor at -100
    assert l0[1] == 100
    assert l1[1] == 0  # p rounds to 1: log(1) = 0


def test_torch_bce_float64_at_minus_200_is_not_exact():
    """The exact loss at x = -200 is 200: the floor halves it."""
    exact = reference.exact(-200.0).bce(1)
    assert float(exact) == 200.0
    assert _loss("torch-bce", np.array([-200.0]), 1)[0] == 100


def test_evaluator_rejects_unknown_mode():
    with pytest.raises(ValueError, match="per-op, upcast"):
        Evaluator("float32", "fused")


def test_get_names_every_formula_on_a_typo():
    with pytest.raises(KeyError) as exc:
        formulas.get("keras4")
    for name in formulas.NAMES:
        assert name in str(exc.value)


# ---------------------------------------------------------------- the native mode


@pytest.mark.parametrize("name", formulas.NAMES)
def test_native_mode_is_each_formulas_framework_mode(name):
    """Under "native" a formula's rows and key points are those of its framework's mode."""
    from dataclasses import replace

    from bce_audit import sweep
    from bce_audit.records import Settings

    own = formulas.FRAMEWORK_MODES.get(name, "per-op")
    base = Settings(dtypes=("float16", "float32"), formulas=(name,), points=401, range=(-100.0, 100.0))
    native = sweep.run_sweep(replace(base, mode="native"))
    framework = sweep.run_sweep(replace(base, mode=own))
    values = [(r.dtype, r.quantity, r.formula, r.label, r.x, str(r.value)) for r in native.rows if r.formula]
    assert values == [(r.dtype, r.quantity, r.formula, r.label, r.x, str(r.value))
                      for r in framework.rows if r.formula]
    assert [(k.name, k.label, k.x) for k in native.keypoints if k.formula] == \
           [(k.name, k.label, k.x) for k in framework.keypoints if k.formula]
    assert {r.mode for r in native.rows} == {"native"}


def test_native_mode_moves_the_keras_floor_to_tensorflows():
    """keras2-logits on TensorFlow's sigmoid floors later than on numpy's (float32)."""
    from bce_audit import keypoints

    per_op = keypoints.formula_points("float32", "per-op", "keras2-logits", 1e-7, 1)
    native = keypoints.formula_points("float32", "native", "keras2-logits", 1e-7, 1)
    floor = {k.mode: k.x for k in per_op + native if k.name == "bce_floor"}
    assert floor["native"] > floor["per-op"]
    ev = Evaluator("float32", "tf")
    x = np.float32([floor["native"]])
    below = np.nextafter(x, np.float32(0))
    f = formulas.get("keras2-logits")
    one = np.ones(1)
    assert f(x, one, 1e-7, ev)[0] == f(np.float32([40.0]), one, 1e-7, ev)[0]  # on the floor
    assert f(below, one, 1e-7, ev)[0] > f(x, one, 1e-7, ev)[0]  # the value before is above it
