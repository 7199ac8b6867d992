"""The seed article's figures, each key point's tightness, and the stable formula's accuracy.

Every figure the tool reports is re-derived here without its search code: by exhaustive or
bracketed scans written in the test, exact rational arithmetic, and predictions from eps.
"""

import functools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bce_audit import dtypes, formulas, keypoints, metrics, records, reference
from bce_audit.formulas import Evaluator

F32 = dtypes.get("float32")
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
THRESHOLDS = (1e-3, 1e-2)
PCT = 1e-2
KERAS_EPS = 1e-7
LABELS = (1, 0, "pair")


@functools.cache
def _roundtrip_points(dtype: str, mode: str) -> tuple[records.KeyPoint, ...]:
    return tuple(keypoints.roundtrip_points(dtype, mode, THRESHOLDS))


@functools.cache
def _formula_points(dtype: str, mode: str, formula: str, label) -> tuple[records.KeyPoint, ...]:
    return tuple(keypoints.formula_points(dtype, mode, formula, KERAS_EPS, label))


def _one(points, name, threshold=None) -> records.KeyPoint:
    found = [k for k in points if k.name == name and k.threshold == threshold]
    assert len(found) == 1, (name, threshold, points)
    return found[0]


# ---------------------------------------------------------------- independent round trips


def _rt32(x: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` on ``p = 1 / (1 + exp(-x))``, every op in float32 (numpy semantics)."""
    one = np.float32(1)
    with np.errstate(all="ignore"):
        p = one / (one + np.exp(-x))
        return np.log(p / (one - p))


def _rt_narrow(x: np.ndarray, mode: str) -> np.ndarray:
    """The round trip of a float16/bfloat16 array: per-op rounds every op; upcast rounds the float32
    sigmoid once, and the logit stays per-op (torch.logit on CPU rounds p / (1 - p) to the dtype)."""
    dt = x.dtype
    one = np.asarray(1, dtype=dt)
    with np.errstate(all="ignore"):
        if mode == "upcast":
            p = (np.float32(1) / (np.float32(1) + np.exp(-x.astype(np.float32)))).astype(dt)
            return np.log(p / (one - p))
        p = one / (one + np.exp(-x))
        return np.log(p / (one - p))


def _rel_fraction(computed, x) -> Fraction | None:
    """|computed - x| / |x| exactly; None for a non-finite computed value."""
    if not np.isfinite(computed):
        return None
    fx = dtypes.to_fraction(x)
    return abs(dtypes.to_fraction(computed) - fx) / abs(fx)


def _rel64(computed: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Relative error in float64: the difference of two float32 values is exact there."""
    c, xf = computed.astype(np.float64), x.astype(np.float64)
    with np.errstate(all="ignore"):
        out = np.abs(c - xf) / np.abs(xf)
    out[~np.isfinite(c)] = np.inf
    return out


def _float32_between(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi] for 0 < lo <= hi (bit patterns of positive floats are ordered)."""
    a = int(np.float32(lo).view(np.int32))
    b = int(np.float32(hi).view(np.int32))
    return np.arange(a, b + 1, dtype=np.int32).view(np.float32)


def _step(info: dtypes.DtypeInfo, x: float) -> float:
    """Spacing of the dtype's values at normal |x|, from nmant alone."""
    return 2.0 ** (math.frexp(abs(x))[1] - 1 - info.nmant)


def _assert_below_threshold(x: np.ndarray, thr: float) -> None:
    """Every x has round-trip relative error < thr; near-ties are settled in exact arithmetic."""
    rt = _rt32(x)
    rel = _rel64(rt, x)
    close = np.flatnonzero(np.abs(rel - thr) <= 1e-9 * thr)
    for i in close:
        assert _rel_fraction(rt[i], x[i]) < Fraction(thr), float(x[i])
    far = np.ones(x.shape, dtype=bool)
    far[close] = False
    bad = np.flatnonzero(far & (rel >= thr))
    assert bad.size == 0, f"{bad.size} values reach {thr}, first x = {float(x[bad[0]])!r}"


# ---------------------------------------------------------------- the seed figures, float32


def test_float32_roundtrip_overflow_is_the_seed_16_6_and_minus_ln_half_eps():
    kp = _one(_roundtrip_points("float32", "per-op"), "roundtrip_overflow")
    assert 16.6 <= kp.x < 16.7
    pred = -math.log(EPS32 / 2)  # 1 + exp(-x) rounds to 1 once exp(-x) < eps/2
    x = np.float32(kp.x)
    assert abs(kp.x - pred) <= float(np.spacing(x))
    assert abs(kp.predicted - pred) <= 1e-12 and kp.predicts == "x"
    assert kp.value == math.inf
    # first overflow: x fails, and every float32 in [16, x) survives
    below = _float32_between(16.0, float(np.nextafter(x, np.float32(0))))
    assert np.all(np.isfinite(_rt32(below)))
    assert not np.isfinite(_rt32(np.array([x]))[0])
    # TensorFlow's CPU sigmoid clamps x at exactly this value (Eigen scalar_logistic_op, FORMULAS.md)
    assert x == np.float32(16.6355324)


def test_float32_roundtrip_overflow_is_the_same_in_upcast_mode():
    a = _one(_roundtrip_points("float32", "per-op"), "roundtrip_overflow")
    b = _one(_roundtrip_points("float32", "upcast"), "roundtrip_overflow")
    assert a.x == b.x


def test_float32_roundtrip_underflow_is_minus_ln_max():
    kp = _one(_roundtrip_points("float32", "per-op"), "roundtrip_underflow")
    pred = -math.log(float(np.finfo(np.float32).max))  # exp(-x) overflows float32
    assert abs(kp.x - pred) <= abs(float(np.spacing(np.float32(kp.x))))
    assert abs(kp.predicted - pred) <= 1e-12
    x = np.float32(kp.x)
    assert not np.isfinite(_rt32(np.array([x]))[0])
    assert np.isfinite(_rt32(np.array([np.nextafter(x, np.float32(0))]))[0])


def test_float32_one_percent_onset_is_the_seed_14_6():
    kp = _one(_roundtrip_points("float32", "per-op"), "roundtrip_rel_err_onset", PCT)
    assert 14.6 <= kp.x <= 14.7
    x = np.float32(kp.x)
    rel = _rel_fraction(_rt32(np.array([x]))[0], x)
    assert rel >= Fraction(PCT)
    assert abs(kp.value - float(rel)) <= 1e-15
    # no float32 in [12, x) reaches 1%: every one of them, evaluated
    _assert_below_threshold(_float32_between(12.0, float(np.nextafter(x, np.float32(0)))), PCT)
    # below 12 the quantisation envelope (eps/2) e**x / x is under a tenth of the threshold ...
    assert (EPS32 / 2) * math.exp(12.0) / 12.0 < PCT / 10
    # ... and a random sample of [1, 12) agrees
    rng = np.random.default_rng(14_6)
    lo, hi = int(np.float32(1).view(np.int32)), int(np.float32(12).view(np.int32))
    _assert_below_threshold(rng.integers(lo, hi, 1 << 20, dtype=np.int32).view(np.float32), PCT)
    # the envelope's own prediction sits within 0.1 of the true onset
    assert kp.predicted is not None and abs(kp.predicted - kp.x) < 0.1


def test_float32_one_percent_small_x_limit():
    kp = _one(_roundtrip_points("float32", "per-op"), "roundtrip_small_x_limit", PCT)
    x = np.float32(kp.x)
    assert EPS32 / PCT <= kp.x <= 8 * EPS32 / PCT  # a few eps of absolute error, relative to x
    rel = _rel_fraction(_rt32(np.array([x]))[0], x)
    assert rel >= Fraction(PCT)
    assert abs(kp.value - float(rel)) <= 1e-15
    # nothing above x and below 1 reaches 1%: every float32 up to 2**-14, in chunks ...
    start = float(np.nextafter(x, np.float32(1)))
    edges = _float32_between(start, float.fromhex("0x1p-14"))
    for chunk in np.array_split(edges, 8):
        _assert_below_threshold(chunk, PCT)
    # ... and a random sample of (2**-14, 1)
    rng = np.random.default_rng(19_356)
    lo, hi = int(np.float32(2.0**-14).view(np.int32)), int(np.float32(1).view(np.int32))
    _assert_below_threshold(rng.integers(lo, hi, 1 << 20, dtype=np.int32).view(np.float32), PCT)


# ---------------------------------------------------------------- keras2-logits floors (the seed's 1.09e-7)


def _keras2_floor_float32(label: int) -> np.float32:
    """Keras 2 at the clip bound, in float32 by hand: logit of the clipped p, then the stable loss."""
    one, eps = np.float32(1), np.float32(KERAS_EPS)
    p = one - eps if label == 1 else eps  # sigmoid saturates: the clip bound is what is left
    z = np.log(p / (one - p))
    y = np.float32(label)
    return (np.maximum(z, np.float32(0)) - z * y) + np.log1p(np.exp(-np.abs(z)))


def test_keras2_logits_pair_floor_is_the_seed_1_09e_7():
    kp = _one(_formula_points("float32", "per-op", "keras2-logits", "pair"), "bce_floor")
    assert 1.09e-7 <= kp.value <= 1.1e-7
    l1, l0 = _keras2_floor_float32(1), _keras2_floor_float32(0)
    assert float(l1) == pytest.approx(EPS32, rel=1e-6)  # -log(1 - 2**-23) ~ 2**-23
    assert float(l0) == pytest.approx(KERAS_EPS, rel=1e-6)
    assert kp.value == float((l0 + l1) * np.float32(0.5))
    # the label floors are the same numbers
    assert _one(_formula_points("float32", "per-op", "keras2-logits", 1), "bce_floor").value == float(l1)
    assert _one(_formula_points("float32", "per-op", "keras2-logits", 0), "bce_floor").value == float(l0)
    # and the formula itself at a huge logit gives it
    f, ev = formulas.get("keras2-logits"), Evaluator("float32")
    a = np.array([1e30], dtype=np.float32)
    pair = (f(-a, np.zeros(1), KERAS_EPS, ev) + f(a, np.ones(1), KERAS_EPS, ev)) * np.float32(0.5)
    assert kp.value == float(pair[0])
    # beside its clipped-exact prediction, a few float32 steps apart (rounding of 1 - p and the logs)
    assert kp.predicts == "value"
    assert abs(kp.value - kp.predicted) <= 4 * float(np.spacing(np.float32(kp.value)))


# ---------------------------------------------------------------- narrow dtypes, exhaustively


def _all_finite(dtype) -> np.ndarray:
    """Every finite value of a 16-bit dtype, sorted, from its bit patterns (no registry code)."""
    vals = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    with np.errstate(invalid="ignore"):
        f = vals.astype(np.float64)
    keep = np.isfinite(f) & ~((f == 0) & np.signbit(f))
    return vals[keep][np.argsort(f[keep], kind="stable")]


@pytest.mark.parametrize("mode", ["per-op", "upcast"])  # the scan's reference flushes nothing
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_narrow_roundtrip_overflow_by_exhaustive_scan(name, mode):
    info = dtypes.get(name)
    vals = _all_finite(info.dtype)
    rt = _rt_narrow(vals, mode)
    ours = rt.view(np.uint16)
    theirs = formulas.evaluate_roundtrip(vals, Evaluator(name, mode)).view(np.uint16)
    assert np.array_equal(ours, theirs)
    bad = ~np.isfinite(rt.astype(np.float32))
    pos, neg = vals > 0, vals < 0
    first_pos = float(vals[np.flatnonzero(pos & bad)[0]])
    first_neg = float(vals[np.flatnonzero(neg & bad)[-1]])  # the one nearest zero
    points = _roundtrip_points(name, mode)
    over, under = _one(points, "roundtrip_overflow"), _one(points, "roundtrip_underflow")
    assert over.x == first_pos
    assert under.x == first_neg
    # upcast rounds a float32 sigmoid once: p reaches 1 when 1 - p < eps/4, half the spacing below 1
    q = info.eps / 4 if mode == "upcast" else info.eps / 2
    pred = -math.log(q)
    assert abs(over.x - pred) <= 2 * _step(info, pred)
    assert over.predicted == pytest.approx(pred, rel=1e-12)


def test_float16_overflow_moves_with_the_mode():
    """Upcasting buys float16 almost ln 2 more logit before the round trip fails."""
    a = _one(_roundtrip_points("float16", "per-op"), "roundtrip_overflow").x
    b = _one(_roundtrip_points("float16", "upcast"), "roundtrip_overflow").x
    assert 0.5 < b - a < math.log(2) + 2 * _step(dtypes.get("float16"), b)


# ---------------------------------------------------------------- tightness of every key point


def _ordinal(info, x: float) -> int:
    return int(np.asarray(info.ordinal(np.asarray([x]).astype(info.dtype)))[0])


def _at(info, o: int):
    return info.value(np.asarray([o], dtype=np.int64))[0]


def _rt_rel(info, ev, v) -> Fraction | None:
    computed = formulas.evaluate_roundtrip(np.asarray([v], dtype=info.dtype), ev)[0]
    return _rel_fraction(computed, v)


TIGHT = [(d, m) for d in ("float32", "float16") for m in formulas.EVALUATED]


@pytest.mark.parametrize(("dtype", "mode"), TIGHT)
def test_roundtrip_points_are_tight(dtype, mode):
    info, ev = dtypes.get(dtype), Evaluator(dtype, mode)
    one = _ordinal(info, 1.0)
    points = _roundtrip_points(dtype, mode)
    assert {k.name for k in points} == set(keypoints.NAMES[:4])
    for kp in points:
        o = _ordinal(info, kp.x)
        v = _at(info, o)
        assert float(v) == kp.x
        if kp.name in ("roundtrip_overflow", "roundtrip_underflow"):
            toward0 = o - 1 if o > 0 else o + 1
            assert not np.isfinite(formulas.evaluate_roundtrip(np.asarray([v]), ev)[0]), kp
            assert np.isfinite(formulas.evaluate_roundtrip(np.asarray([_at(info, toward0)]), ev)[0]), kp
            continue
        thr = Fraction(kp.threshold)
        rel = _rt_rel(info, ev, v)
        assert rel is None or rel >= thr, kp
        if rel is not None:
            assert abs(kp.value - float(rel)) <= 1e-15
        # the onset walks up from 1, the small-x limit down from just below 1
        prev = o - 1 if kp.name == "roundtrip_rel_err_onset" else o + 1
        if (kp.name == "roundtrip_rel_err_onset" and o > one) or (kp.name == "roundtrip_small_x_limit"
                                                                   and prev < one):
            prev_rel = _rt_rel(info, ev, _at(info, prev))
            assert prev_rel is not None and prev_rel < thr, kp


def _check_formula_point(info, loss, kp) -> None:
    o = _ordinal(info, kp.x)
    v = _at(info, o)
    assert float(v) == kp.x
    here = loss(np.asarray([v], dtype=info.dtype))[0]
    toward0 = o - 1 if o > 0 else o + 1
    prev = loss(np.asarray([_at(info, toward0)], dtype=info.dtype))[0] if o != 0 else None
    if kp.name == "bce_nonfinite":
        assert not np.isfinite(here), kp
        assert prev is None or np.isfinite(prev), kp
        assert np.isnan(kp.value) if np.isnan(here) else kp.value == float(here)
        return
    # floor, ceiling, zero: a run of one value from x to the end of the walk
    assert float(here) == kp.value, kp
    assert prev is None or prev != here, kp
    end = info.max_ordinal if o > 0 else -info.max_ordinal
    if info.exhaustive:
        run = np.arange(o, end + (1 if end > o else -1), 1 if end > o else -1)
    else:
        run = np.unique(np.linspace(o, end, 257).astype(np.int64))
    with np.errstate(all="ignore"):
        assert np.all(loss(info.value(run)) == here), kp


@pytest.mark.parametrize("formula", formulas.NAMES)
@pytest.mark.parametrize(("dtype", "mode"), TIGHT)
def test_formula_points_are_tight(dtype, mode, formula):
    info, ev = dtypes.get(dtype), Evaluator(dtype, mode)
    f = formulas.get(formula)
    n = 0
    for label in LABELS:
        loss = keypoints.loss_fn(f, KERAS_EPS if f.uses_eps else None, label, ev)
        for kp in _formula_points(dtype, mode, formula, label):
            assert kp.name in keypoints.NAMES[4:]
            _check_formula_point(info, loss, kp)
            n += 1
    assert n > 0  # every formula has at least one key point in these dtypes


# ---------------------------------------------------------------- predictions beside the points


def test_logits_stable_float32_bce_zero_label1_is_150_ln2():
    """softplus(-x) < smallest_subnormal / 2 = 2**-150 from x = 150 ln 2 on."""
    pred = -math.log(float(np.finfo(np.float32).smallest_subnormal) / 2)
    kp = _one(_formula_points("float32", "per-op", "logits-stable", 1), "bce_zero")
    assert kp.predicts == "x" and abs(kp.predicted - pred) <= 1e-12
    assert abs(kp.x - pred) <= float(np.spacing(np.float32(kp.x)))


def test_logits_stable_float32_bce_zero_label0_prediction_is_mirrored():
    """Regression: label 0's zero run lies at x < 0, so its prediction must be negative too."""
    pred = -math.log(float(np.finfo(np.float32).smallest_subnormal) / 2)
    kp = _one(_formula_points("float32", "per-op", "logits-stable", 0), "bce_zero")
    step = abs(float(np.spacing(np.float32(kp.x))))
    assert abs(kp.x + pred) <= step  # the point itself is right: x = -150 ln 2
    assert abs(kp.x - kp.predicted) <= step


# ---------------------------------------------------------------- the stable formula, property


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@settings(max_examples=150, deadline=None)
@given(x=st.floats(min_value=-1e4, max_value=1e4), label=st.sampled_from([0, 1]))
@example(x=0.0, label=1)
@example(x=1e-30, label=0)
@example(x=-1e-30, label=1)
@example(x=-88.7, label=1)
@example(x=-88.7, label=0)
@example(x=103.9, label=1)
@example(x=16.6355, label=0)
@example(x=16.6355, label=1)
def test_logits_stable_within_4_ulp(dtype, x, label):
    info = dtypes.get(dtype)
    ev = Evaluator(dtype)
    xd = np.asarray([info.round(x)], dtype=info.dtype)
    computed = formulas.get("logits-stable")(xd, np.full(1, label), None, ev)[0]
    exact = reference.exact(xd[0]).bce(label)
    assert metrics.errors(computed, exact, info).ulp <= 4
