"""Error measures on hand-worked cases, and a property: k steps along the grid is k ULPs."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from mpmath import mp, mpf

from bce_audit import dtypes, metrics, reference

F32 = dtypes.get("float32")
F16 = dtypes.get("float16")
F64 = dtypes.get("float64")
ONE_ULP_32 = float.fromhex("0x1p-23")  # 1.19e-07, float32 spacing in [1, 2)


def _pow2(e: int) -> mpf:
    return mpf((1, e))


# ---------------------------------------------------------------- errors(): hand-worked


def test_one_ulp_above_one():
    e = metrics.errors(np.float32(1 + ONE_ULP_32), _pow2(0), F32)
    assert e.abs == ONE_ULP_32
    assert e.rel == ONE_ULP_32
    assert e.ulp == 1.0
    assert e.bits == 1.0


def test_one_ulp_below_one_uses_the_spacing_below_one():
    below = np.nextafter(np.float32(1), np.float32(0))  # 1 - 2**-24
    e = metrics.errors(below, _pow2(0), F32)  # the ULP is taken at the exact value, 1
    assert e.abs == 2.0**-24
    assert e.ulp == 0.5


def test_half_ulp_is_correct_rounding():
    # exact 1 + 2**-24 lies halfway between 1 and 1 + 2**-23: 1.0 is then half an ULP off
    e = metrics.errors(np.float32(1.0), 1 + _pow2(-24), F32)
    assert e.ulp == 0.5
    assert e.bits == math.log2(1.5)
    # exact 1 - 2**-25 sits in the binade below 1, where the spacing is 2**-24
    e = metrics.errors(np.float32(1.0), 1 - _pow2(-25), F32)
    assert e.ulp == 0.5


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32", "float64"])
def test_subnormal_spacing(name):
    info = dtypes.get(name)
    sub = float(info.smallest_subnormal)
    # two subnormal steps computed where one was due: one ULP, 100% relative error
    e = metrics.errors(info.round(2 * sub), mpf(sub), info)
    assert e.abs == sub
    assert e.ulp == 1.0
    assert e.rel == 1.0
    # below the smallest normal the ULP stays the subnormal spacing
    tiny = float(info.tiny)
    e = metrics.errors(info.round(tiny - sub), mpf(tiny), info)
    assert e.ulp == 1.0


def test_exact_zero():
    e = metrics.errors(np.float32(0.0), mpf(0), F32)
    assert (e.abs, e.rel, e.ulp, e.bits) == (0.0, 0.0, 0.0, 0.0)
    e = metrics.errors(np.float32(-0.0), mpf(0), F32)
    assert (e.abs, e.rel, e.ulp, e.bits) == (0.0, 0.0, 0.0, 0.0)


def test_nonzero_where_zero_was_due():
    sub = np.float32(float.fromhex("0x1p-149"))  # 1.4e-45
    e = metrics.errors(sub, mpf(0), F32)
    assert e.abs == float.fromhex("0x1p-149")
    assert e.rel == math.inf
    assert e.ulp == 1.0  # the ULP at zero is the subnormal spacing
    assert e.bits == 1.0


def test_exact_result_has_no_error():
    v = np.float32(0.1)
    e = metrics.errors(v, reference.to_mpf(v), F32)
    assert (e.abs, e.rel, e.ulp, e.bits) == (0.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("computed", [np.inf, -np.inf])
def test_infinity_is_inf_in_every_measure(computed):
    e = metrics.errors(np.float32(computed), mpf(3), F32)
    assert e == metrics.NONFINITE_INF
    assert all(v == math.inf for v in (e.abs, e.rel, e.ulp, e.bits))


def test_nan_is_nan_in_every_measure():
    e = metrics.errors(np.float32(np.nan), mpf(3), F32)
    assert all(math.isnan(v) for v in (e.abs, e.rel, e.ulp, e.bits))


def test_longdouble_computed_value_is_read_exactly():
    info = dtypes.get("longdouble")
    one_up = np.longdouble(1) + np.ldexp(np.longdouble(1), -info.nmant)
    e = metrics.errors(one_up, mpf(1), info)
    assert e.ulp == 1.0
    assert e.abs == 2.0**-info.nmant


def test_errors_leave_precision_alone():
    with mp.workprec(20):
        e = metrics.errors(np.float32(1 + ONE_ULP_32), _pow2(0), F32)
        assert mp.prec == 20
    assert e.ulp == 1.0


# ---------------------------------------------------------------- bits(), ulp_of()


@pytest.mark.parametrize(("ulps", "expected"), [(0.0, 0.0), (1.0, 1.0), (3.0, 2.0), (0.5, math.log2(1.5)),
                                                (2.0**20 - 1, 20.0), (math.inf, math.inf)])
def test_bits(ulps, expected):
    assert metrics.bits(ulps) == expected


def test_bits_of_nan_is_nan():
    assert math.isnan(metrics.bits(math.nan))


@pytest.mark.parametrize("k", [-149, -127, -126, -125, -1, 0, 1, 23, 24, 127])
def test_ulp_of_powers_of_two_float32(k):
    # a power of two is the bottom of its binade: the spacing above it, as np.spacing says
    expected = float(np.spacing(np.float32(2.0**k)))
    assert metrics.ulp_of(_pow2(k), F32) == expected
    assert metrics.ulp_of(-_pow2(k), F32) == expected
    # just below a normal power of two the spacing halves (subnormals: constant)
    below = metrics.ulp_of(_pow2(k) * (1 - _pow2(-40)), F32)
    assert below == (expected / 2 if k > -126 else expected)


@pytest.mark.parametrize("k", [-24, -15, -14, -13, 0, 1, 10, 15])
def test_ulp_of_powers_of_two_float16(k):
    assert metrics.ulp_of(_pow2(k), F16) == float(np.spacing(np.float16(2.0**k)))


def _frac(m: mpf) -> Fraction:
    man, exp = m.man_exp  # unsigned, and read without arithmetic (abs() would round to mp.prec)
    return (-1 if m < 0 else 1) * Fraction(int(man)) * Fraction(2) ** int(exp)


@pytest.mark.parametrize("name", dtypes.NAMES)
def test_ulp_of_zero_is_the_subnormal_spacing(name):
    info = dtypes.get(name)
    assert _frac(metrics.ulp_of(mpf(0), info)) == info.smallest_subnormal
    assert _frac(metrics.ulp_of(mpf(1), info)) == Fraction(info.eps)


def test_ulp_of_float64_one():
    assert metrics.ulp_of(mpf(1), F64) == 2.0**-52


# ---------------------------------------------------------------- rel_err_exact_x


def test_rel_err_exact_x_at_zero():
    x = np.zeros(3, dtype=np.float32)
    computed = np.array([0.0, float.fromhex("0x1p-149"), -0.0], dtype=np.float32)
    assert metrics.rel_err_exact_x(computed, x).tolist() == [0.0, math.inf, 0.0]


def test_rel_err_exact_x_nonfinite_is_inf():
    x = np.array([1.0, 2.0, 0.0, -3.0], dtype=np.float32)
    computed = np.array([np.inf, np.nan, np.nan, -np.inf], dtype=np.float32)
    assert metrics.rel_err_exact_x(computed, x).tolist() == [math.inf] * 4


def test_rel_err_exact_x_is_exact_for_float32():
    x = np.array([1.0, 3.0, -3.0], dtype=np.float32)
    computed = np.array([1 + ONE_ULP_32, 3.0, -2.0], dtype=np.float32)
    assert metrics.rel_err_exact_x(computed, x).tolist() == [ONE_ULP_32, 0.0, 1 / 3]


def test_rel_err_exact_x_float64_keeps_one_ulp():
    x = np.array([1.0], dtype=np.float64)
    computed = np.array([1 + 2.0**-52])
    assert metrics.rel_err_exact_x(computed, x).tolist() == [2.0**-52]


def test_rel_err_exact_x_leaves_its_inputs_alone():
    x = np.array([0.0, 2.0], dtype=np.float32)
    computed = np.array([np.inf, 1.0], dtype=np.float32)
    metrics.rel_err_exact_x(computed, x)
    assert computed.tolist() == [math.inf, 1.0] and x.tolist() == [0.0, 2.0]


# ---------------------------------------------------------------- property: k steps is k ULPs


def _binade(v: np.float32) -> int | None:
    """The binade exponent of |v|; None for zero and subnormals, which share one spacing."""
    a = abs(float(v))
    return None if a < float(F32.tiny) else math.frexp(a)[1]


@settings(max_examples=300, deadline=None)
@given(
    x=st.floats(width=32, allow_nan=False, allow_infinity=False),
    k=st.integers(min_value=1, max_value=16),
    toward=st.sampled_from([np.inf, -np.inf]),
)
@example(x=1.0, k=1, toward=np.inf)
@example(x=0.0, k=3, toward=np.inf)
@example(x=float.fromhex("0x1p-149"), k=5, toward=np.inf)
@example(x=-16.6355, k=7, toward=-np.inf)
@example(x=float.fromhex("0x1.fffffep127"), k=2, toward=-np.inf)
def test_k_steps_along_the_float32_grid_are_k_ulps(x, k, toward):
    start = np.float32(x)
    v = start
    with np.errstate(over="ignore"):  # stepping past max gives inf, rejected below
        for _ in range(k):
            v = np.nextafter(v, np.float32(toward))
    assume(np.isfinite(v))
    assume(_binade(start) == _binade(v))
    assume((start >= 0) == (v >= 0) or start == 0)
    e = metrics.errors(v, reference.to_mpf(start), F32)
    assert e.ulp == k
    assert e.bits == math.log2(1 + k)
