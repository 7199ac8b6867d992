"""Invariants of the dtype registry, each checked over every registered dtype (as ml_dtypes' finfo_test)."""

import random
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from bce_audit import dtypes

ALL = dtypes.NAMES
EXHAUSTIVE = [n for n in dtypes.NAMES if dtypes.get(n).bits <= 16]
TWO = Fraction(2)


def _finfo(info):
    return ml_dtypes.finfo(info.type) if info.type.__module__.startswith("ml_dtypes") else np.finfo(info.type)


def _ords(info, ords):
    """Ordinals in the container `value` takes: int64 array, or a list of ints for longdouble."""
    return [int(o) for o in ords] if info.bits > 64 else np.asarray(ords, dtype=np.int64)


def _as_list(values):
    return [int(v) for v in np.atleast_1d(np.asarray(values, dtype=object))]


def _layout_value(info, o: int) -> Fraction:
    """The value at a non-negative ordinal from the binary layout alone: field = o >> nmant."""
    field, frac = divmod(o, 1 << info.nmant)
    if field == 0:  # subnormal: fixed spacing
        return frac * TWO ** (info.minexp - info.nmant)
    return ((1 << info.nmant) + frac) * TWO ** (field - 1 + info.minexp - info.nmant)


def _one(info) -> int:
    """Ordinal of 1.0: biased exponent field 1 - minexp, zero fraction."""
    return (1 - info.minexp) << info.nmant


def _sample(info, n_random=200) -> list[int]:
    """Positive ordinals at every boundary (0, subnormals, smallest normal, 1, 2, max) plus random ones."""
    top, sub, one = info.max_ordinal, 1 << info.nmant, _one(info)
    fixed = [0, 1, 2, 3, sub - 2, sub - 1, sub, sub + 1, one - 1, one, one + 1, one + sub, top - 1, top]
    rng = random.Random(f"ordinals-{info.name}")
    return sorted({o for o in fixed + [rng.randrange(0, top + 1) for _ in range(n_random)] if 0 <= o <= top})


def _ordinals(info) -> list[int]:
    """Every finite ordinal of a small dtype, a signed sample of a wide one."""
    if info.bits <= 16:
        return list(range(-info.max_ordinal, info.max_ordinal + 1))
    pos = _sample(info)
    return sorted({*pos, *(-o for o in pos)})


@pytest.mark.parametrize("name", ALL)
def test_value_then_ordinal_round_trips(name):
    info = dtypes.get(name)
    ords = _ordinals(info)
    back = info.ordinal(info.value(_ords(info, ords)))
    assert _as_list(back) == ords


@pytest.mark.parametrize("name", ALL)
def test_negative_ordinals_are_negated_values(name):
    info = dtypes.get(name)
    pos = [o for o in _sample(info) if o > 0]
    v_pos = info.value(_ords(info, pos))
    v_neg = info.value(_ords(info, [-o for o in pos]))
    assert np.all(v_neg == -v_pos)
    assert not np.any(np.signbit(v_pos))
    assert np.all(np.signbit(v_neg))


@pytest.mark.parametrize("name", ALL)
def test_both_zeros_have_ordinal_zero(name):
    info = dtypes.get(name)
    zeros = np.array([0.0, -0.0]).astype(info.dtype)
    assert _as_list(info.ordinal(zeros)) == [0, 0]
    v0 = info.value(_ords(info, [0]))[0]
    assert v0 == 0 and not np.signbit(v0)


@pytest.mark.parametrize("name", ALL)
def test_value_matches_the_binary_layout(name):
    """value(o) against an independent decoding: subnormals, the smallest normal, 1.0 and max."""
    info = dtypes.get(name)
    pos = _sample(info)
    got = info.value(_ords(info, pos))
    for o, v in zip(pos, got, strict=True):
        assert dtypes.to_fraction(v) == _layout_value(info, o), (name, o)
    assert info.value(_ords(info, [_one(info)]))[0] == 1


@pytest.mark.parametrize("name", ALL)
def test_ordinals_strictly_increase_with_value(name):
    info = dtypes.get(name)
    ords = _ordinals(info)
    vals = info.value(_ords(info, ords))
    assert np.all(vals[1:] > vals[:-1])  # comparison, not np.diff: max - (-max) would overflow


@pytest.mark.parametrize("name", ALL)
def test_max_ordinal_is_finfo_max_and_the_next_is_not_finite(name):
    info = dtypes.get(name)
    fi = _finfo(info)
    top = info.max_ordinal
    assert info.value(_ords(info, [top]))[0] == fi.max
    assert info.value(_ords(info, [-top]))[0] == -fi.max
    with np.errstate(over="ignore"):  # longdouble builds the next value with ldexp, which overflows
        beyond = info.value(_ords(info, [top + 1, -top - 1]))
    assert not np.any(np.isfinite(beyond))
    assert bool(np.all(np.isinf(beyond))) == info.has_inf  # float8_e4m3fn: NaN there, no infinity
    assert info.max == dtypes.to_fraction(fi.max)


@pytest.mark.parametrize("name", ALL)
def test_limits_match_finfo(name):
    info = dtypes.get(name)
    fi = _finfo(info)
    assert (info.nmant, info.minexp, info.maxexp) == (fi.nmant, fi.minexp, fi.maxexp)
    assert info.precision == fi.nmant + 1
    assert info.eps == float(fi.eps) == 2.0**-fi.nmant
    assert info.tiny == dtypes.to_fraction(fi.smallest_normal)
    assert info.smallest_subnormal == dtypes.to_fraction(fi.smallest_subnormal)
    # ordinal 1 is the smallest subnormal, ordinal 2**nmant the smallest normal
    sub = info.value(_ords(info, [1, 1 << info.nmant]))
    assert sub[0] == fi.smallest_subnormal
    assert sub[1] == fi.smallest_normal
    assert info.narrow == (fi.nmant + 1 < 24)


@pytest.mark.parametrize("name", ALL)
def test_storage_bits(name):
    info = dtypes.get(name)
    if info.type is np.longdouble:
        # x87 extended stores an explicit integer bit: 1 + 15 + 64 = 80
        assert info.bits == 1 + _finfo(info).nexp + info.nmant + (1 if info.nmant == 63 else 0)
    else:
        assert info.bits == info.dtype.itemsize * 8


@pytest.mark.parametrize("name", ALL)
def test_ulp_is_the_gap_to_the_next_value(name):
    info = dtypes.get(name)
    pos = [o for o in _sample(info) if o < info.max_ordinal]
    here = info.value(_ords(info, pos))
    nxt = info.value(_ords(info, [o + 1 for o in pos]))
    for o, a, b in zip(pos, here, nxt, strict=True):
        fa = dtypes.to_fraction(a)
        gap = dtypes.to_fraction(b) - fa
        assert info.ulp(fa) == gap, (name, o)
        assert info.ulp(-fa) == gap, (name, o)
    assert info.ulp(Fraction(0)) == info.smallest_subnormal


@pytest.mark.parametrize("name", ["float16", "float32", "float64"])
def test_ulp_agrees_with_np_spacing(name):
    info = dtypes.get(name)
    with np.errstate(over="ignore"):
        pos = [o for o in _sample(info) if o < info.max_ordinal]
        vals = info.value(_ords(info, pos))
    for v in vals:
        assert info.ulp(dtypes.to_fraction(v)) == Fraction(float(np.spacing(v))), (name, v)


def _all_bit_patterns(info) -> np.ndarray:
    """Every finite value, found without the registry: view each bit pattern, drop -0, sort."""
    uint = {8: np.uint8, 16: np.uint16}[info.bits]
    vals = np.arange(2**info.bits, dtype=np.uint64).astype(uint).view(info.dtype)
    with np.errstate(invalid="ignore"):  # NaN payloads warn when cast
        vals = vals[np.isfinite(vals.astype(np.float64))]
    vals = vals[~((vals == 0) & np.signbit(vals))]
    return vals[np.argsort(vals.astype(np.float64), kind="stable")]


@pytest.mark.parametrize("name", EXHAUSTIVE)
def test_finite_values_are_every_finite_value_in_order(name):
    info = dtypes.get(name)
    vals = info.finite_values()
    assert vals.dtype == info.dtype
    assert vals.size == 2 * info.max_ordinal + 1  # -0 is left out: one zero
    assert np.all(np.isfinite(vals.astype(np.float64)))
    assert np.all(vals[1:] > vals[:-1])
    assert np.count_nonzero(vals == 0) == 1 and not np.signbit(vals[vals == 0][0])
    ref = _all_bit_patterns(info)
    assert np.array_equal(vals.view(f"u{info.bits // 8}"), ref.view(f"u{info.bits // 8}"))


WIDE = [n for n in dtypes.NAMES if n not in EXHAUSTIVE]


@pytest.mark.parametrize("name", WIDE)
def test_finite_values_refuses_wide_dtypes(name):
    info = dtypes.get(name)
    assert not info.exhaustive
    with pytest.raises(ValueError, match=name):
        info.finite_values()


@pytest.mark.parametrize("name", ALL)
def test_round_is_round_to_nearest_even(name):
    info = dtypes.get(name)
    one = 1.0
    half_ulp_up = one + info.eps / 2  # a tie: even is 1.0
    assert info.round(half_ulp_up) == 1
    if info.precision < 53:
        assert info.round(one + 1.5 * info.eps) == 1 + 2 * info.eps  # tie between 1+eps and 1+2eps: even


def test_get_names_every_choice_on_a_typo():
    with pytest.raises(KeyError) as exc:
        dtypes.get("float12")
    msg = str(exc.value)
    assert "float12" in msg
    for name in dtypes.NAMES:
        assert name in msg


def test_registry_names_are_the_dict_keys():
    assert tuple(dtypes.DTYPES) == dtypes.NAMES
    for name in dtypes.NAMES:
        assert dtypes.get(name).name == name


def test_float64_ordinal_emits_no_warning():
    """Regression: the 64-bit sign mask was built as int64(1) << 63 minus 1, which overflowed and warned."""
    info = dtypes.get("float64")
    assert int(info.ordinal(np.float64(1.0))) == _one(info)
    assert int(info.ordinal(np.float64(-2.0))) == -(_one(info) + (1 << info.nmant))
    assert info.max_ordinal == (2047 << 52) - 1
