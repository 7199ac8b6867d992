"""The mpmath baseline against independent formulas at a much higher precision."""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from mpmath import mp, mpf

from bce_audit import dtypes, formulas, reference
from bce_audit.formulas import Evaluator

HIGH = 300  # bits for the independent values
TOL = mpf(2) ** -120  # the baseline works at 128 bits; it must agree to nearly all of them

X_GRID = sorted({0.0, *(s * m for s in (1.0, -1.0) for m in (
    1e-30, 1e-10, 1e-3, 0.5, 1.0, 2.5, 10.0, 16.6355, 40.0, 88.7, 103.9, 700.0, 1e4))})


def _frac(m: mpf) -> Fraction:
    man, exp = m.man_exp  # unsigned, and read without arithmetic (abs() would round to mp.prec)
    return (-1 if m < 0 else 1) * Fraction(int(man)) * Fraction(2) ** int(exp)


def _direct_softplus(t: float) -> mpf:
    """``log(1 + exp(t))`` exactly as written, with enough bits that 1 + exp(t) keeps exp(t) whole."""
    extra = math.ceil(-t / math.log(2)) if t < 0 else 0
    with mp.workprec(HIGH + extra):
        return mp.log(1 + mp.exp(mpf(t)))


def _direct_sigmoid(x: float) -> mpf:
    with mp.workprec(HIGH):
        return 1 / (1 + mp.exp(-mpf(x)))


def _close(got: mpf, want: mpf) -> bool:
    with mp.workprec(HIGH):
        if want == 0:
            return got == 0
        return abs(got - want) <= TOL * abs(want)


@pytest.mark.parametrize("x", X_GRID)
def test_exact_bce_matches_log_one_plus_exp(x):
    xm = reference.to_mpf(x)
    assert _close(reference.exact_bce(xm, 1), _direct_softplus(-x))  # label 1: softplus(-x)
    assert _close(reference.exact_bce(xm, 0), _direct_softplus(x))   # label 0: softplus(x)


@pytest.mark.parametrize("x", X_GRID)
def test_exact_matches_independent_values(x):
    e = reference.exact(x)
    assert e.x == mpf(x)
    assert _close(e.sp_neg, _direct_softplus(-x))
    assert _close(e.sp_pos, _direct_softplus(x))
    assert _close(e.p, _direct_sigmoid(x))
    assert _close(e.q, _direct_sigmoid(-x))
    assert e.bce(1) is e.sp_neg and e.bce(0) is e.sp_pos
    assert _close(reference.exact_sigmoid(e.x), _direct_sigmoid(x))


@pytest.mark.parametrize("x", X_GRID)
def test_p_plus_q_is_one(x):
    e = reference.exact(x)
    with mp.workprec(HIGH):
        assert abs(e.p + e.q - 1) <= TOL


def test_bce_difference_is_x():
    # softplus(x) - softplus(-x) = x: the two labels' losses differ by exactly the logit
    for x in X_GRID:
        e = reference.exact(x)
        with mp.workprec(HIGH):
            assert abs((e.sp_pos - e.sp_neg) - e.x) <= TOL * max(1, abs(e.x)) * 4


def test_precision_is_scoped_not_leaked_or_inherited():
    want = _direct_softplus(-0.1)
    with mp.workprec(11):  # a low ambient precision must neither leak in nor be changed
        v = reference.exact_bce(reference.to_mpf(0.1), 1)
        assert mp.prec == 11
        e = reference.exact(0.1)
        assert mp.prec == 11
        s = reference.exact_sigmoid(e.x)
        m = reference.to_mpf(np.float32(0.1))
        assert mp.prec == 11
    assert _close(v, want)
    assert _close(e.sp_neg, want)
    assert _close(s, _direct_sigmoid(0.1))
    assert _frac(m) == Fraction(float(np.float32(0.1)))


def test_precision_argument_is_honoured():
    with mp.workprec(HIGH):
        lo = reference.exact_bce(mpf(1), 1, prec=30)
        hi = reference.exact_bce(mpf(1), 1, prec=200)
        want = _direct_softplus(-1.0)
        assert abs(hi - want) <= mpf(2) ** -195 * want
        assert abs(lo - want) > mpf(2) ** -60 * want  # 30 bits really is 30 bits


_LD = dtypes.get("longdouble")
TO_MPF_CASES = [
    np.float32(0.1), np.float32(float.fromhex("0x1p-149")), np.float32(float.fromhex("0x1.fffffep127")),
    np.float32(-16.6355), np.float16(65504.0), np.float16(float.fromhex("0x1p-24")),
    ml_dtypes.bfloat16(1.0 / 3.0),
    np.float64(0.1), np.float64(5e-324), np.float64(1.7976931348623157e308), np.float64(-1e-30),
    np.longdouble(1) + np.ldexp(np.longdouble(1), -_LD.nmant),
    np.longdouble(1) / np.longdouble(3),
    np.finfo(np.longdouble).max,
    np.finfo(np.longdouble).smallest_subnormal,
    -np.finfo(np.longdouble).smallest_normal,
]


@pytest.mark.parametrize("v", TO_MPF_CASES, ids=lambda v: f"{type(v).__name__}:{v!r}")
def test_to_mpf_is_exact(v):
    assert _frac(reference.to_mpf(v)) == dtypes.to_fraction(v)


def test_to_mpf_longdouble_against_known_rationals():
    n = _LD.nmant
    one_up = np.longdouble(1) + np.ldexp(np.longdouble(1), -n)
    assert _frac(reference.to_mpf(one_up)) == 1 + Fraction(1, 2**n)
    sub = np.finfo(np.longdouble).smallest_subnormal
    assert _frac(reference.to_mpf(sub)) == Fraction(1, 2 ** (n - _LD.minexp))
    # the longdouble value really carries more than a float64 can: a float64 round trip would lose it
    if n > 52:
        assert float(one_up) == 1.0 and _frac(reference.to_mpf(one_up)) != 1


# ---------------------------------------------------------------- clipped_exact

_AT_PLUS_INF = reference.Exact(mp.inf, mpf(1), mpf(0), mpf(0), mp.inf)
_AT_MINUS_INF = reference.Exact(-mp.inf, mpf(0), mpf(1), mp.inf, mpf(0))
ONE_MINUS_2_23 = 1 - float.fromhex("0x1p-23")  # 0.99999988, float32 1 - 1e-7


def _clip(name: str, eps=1e-7, dtype="float32"):
    f = formulas.get(name)
    lo, hi = formulas.clip_bounds(f, eps, Evaluator(dtype))
    return f.clip, lo, hi


def test_keras3_float32_label1_limit_is_minus_log_one_minus_2_pow_23():
    clip, lo, hi = _clip("keras3")
    assert float(hi) == ONE_MINUS_2_23
    got = reference.clipped_exact(_AT_PLUS_INF, 1, clip, lo, hi, None)
    with mp.workprec(HIGH):
        want = -mp.log(1 - mpf(2) ** -23)
    assert _close(got, want)


def test_keras3_float32_label0_limit_is_minus_log_one_minus_eps32():
    clip, lo, hi = _clip("keras3")
    got = reference.clipped_exact(_AT_MINUS_INF, 0, clip, lo, hi, None)
    with mp.workprec(HIGH):
        want = -mp.log(1 - mpf(float(np.float32(1e-7))))
    assert _close(got, want)


def test_clipping_only_at_the_tails():
    clip, lo, hi = _clip("keras3")
    for x in (-3.0, 0.0, 1e-30, 2.0, 15.0):
        e = reference.exact(x)
        for label in (0, 1):
            assert _close(reference.clipped_exact(e, label, clip, lo, hi, None), e.bce(label))


def test_tf_keras_shift_adds_eps_inside_the_log():
    clip, lo, hi = _clip("tf-keras")
    got = reference.clipped_exact(_AT_PLUS_INF, 1, clip, lo, hi, lo)
    with mp.workprec(HIGH):
        want = -mp.log(mpf(float(hi)) + mpf(float(lo)))
    assert _close(got, want)
    assert float(lo) == float(np.float32(1e-7))


def test_torch_log_floor_caps_the_loss_at_100():
    clip = formulas.get("torch-bce").clip
    assert reference.clipped_exact(_AT_MINUS_INF, 1, clip, None, None, None) == 100
    assert reference.clipped_exact(_AT_PLUS_INF, 0, clip, None, None, None) == 100
    e = reference.exact(-5.0)
    assert _close(reference.clipped_exact(e, 1, clip, None, None, None), e.sp_neg)  # no cap below 100
