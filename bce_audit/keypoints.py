"""Key points: where overflow, floors, ceilings, zeros and error onsets fall, on the dtype grid.

Searches walk *ordinals* (see `dtypes`), so every reported x is a representable value and the
property flips exactly there: the value one step closer to the start of the walk does not
have it. 8- and 16-bit dtypes are searched exhaustively; wider ones by a coarse scan of
`COARSE` evenly spaced ordinals (about log-spaced in x), bisection inside the bracket where
the property first shows, and an exhaustive scan of the last `WINDOW` values.
The ``method`` field of each record says which was used.

>>> [kp.x for kp in roundtrip_points("float16", "per-op", ()) if kp.name == "roundtrip_overflow"]
[7.625]
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from bce_audit import causes, dtypes, formulas, ftz, gradients, heap, impl, metrics, records, reference
from bce_audit.formulas import Evaluator, Formula
from bce_audit.records import KeyPoint, Label

if TYPE_CHECKING:
    from mpmath import mpf

NAMES = (
    "roundtrip_overflow",
    "roundtrip_underflow",
    "roundtrip_rel_err_onset",
    "roundtrip_small_x_limit",
    "bce_floor",
    "bce_ceiling",
    "bce_zero",
    "bce_nonfinite",
)


# ---------------------------------------------------------------- searching the grid

COARSE = {"default": 1 << 14, "longdouble": 1 << 9}
WINDOW = {"default": 1 << 16, "longdouble": 1 << 8}


def _policy(info: dtypes.DtypeInfo) -> tuple[int, int]:
    key = "longdouble" if info.bits > 64 else "default"
    return COARSE[key], WINDOW[key]


def _ords(info: dtypes.DtypeInfo, ords: list[int] | range):
    if info.bits > 64:
        return list(ords)
    if isinstance(ords, range):
        return np.arange(ords.start, ords.stop, ords.step, dtype=np.int64)
    return np.asarray(ords, dtype=np.int64)


def _samples(info: dtypes.DtypeInfo, start: int, step: int, n: int, count: int):
    """``count`` ordinals evenly spread over the walk, both ends included."""
    if info.bits > 64:
        return [start + step * (i * (n - 1) // (count - 1)) for i in range(count)]
    q, r = divmod(n - 1, count - 1)  # i * (n-1) // (count-1) without overflowing int64
    i = np.arange(count, dtype=np.int64)
    return start + step * (i * q + (i * r) // (count - 1))


@functools.lru_cache(maxsize=32)
def _coarse(dtype: str, start: int, step: int, n: int, count: int):
    """`_samples` and their values, made once per walk: the searches of every formula and label
    walk the same ranges (read-only; a predicate gets a copy of the values)."""
    info = dtypes.get(dtype)
    ords = _samples(info, start, step, n, count)
    values = info.value(ords)
    if isinstance(ords, np.ndarray):
        ords.flags.writeable = False
        values.flags.writeable = False
    return ords, values


Pred = Callable[[np.ndarray], np.ndarray]
FANOUT = 64  # points per refinement step of a bracket


def first_hit(info: dtypes.DtypeInfo, pred: Pred, start: int, end: int) -> int | None:
    """First ordinal on the walk start -> end (inclusive) whose value satisfies pred."""
    step = 1 if end >= start else -1
    n = abs(end - start) + 1
    coarse, window = _policy(info)
    if n <= max(window, coarse):
        ords = _ords(info, range(start, end + step, step))
        hits = np.flatnonzero(pred(info.value(ords)))
        return int(ords[hits[0]]) if hits.size else None
    samples, values = _coarse(info.name, start, step, n, coarse)
    hits = np.flatnonzero(pred(values.copy()))
    if not hits.size:
        return None
    k = int(hits[0])
    if k == 0:
        return start
    lo, hi = int(samples[k - 1]), int(samples[k])  # pred(lo) false, pred(hi) true
    while abs(hi - lo) > window:  # a 64-way bisection: one evaluation of 64 points per step
        inner = _samples(info, lo, step, abs(hi - lo) + 1, FANOUT)
        hits = np.flatnonzero(pred(info.value(inner)))
        j = int(hits[0]) if hits.size else FANOUT - 1  # pred(hi) holds, so j exists
        lo, hi = int(inner[j - 1]) if j else lo, int(inner[j])
    return first_hit(info, pred, lo + step, hi)


def run_start(info: dtypes.DtypeInfo, pred: Pred, start: int, end: int) -> int | None:
    """First ordinal on the walk start -> end from which pred holds all the way to end."""
    if not pred(info.value(_ords(info, [end])))[0]:
        return None
    miss = first_hit(info, lambda v: ~pred(v), end, start)
    if miss is None:
        return start
    return miss + (1 if end >= start else -1)


def tabulated(info: dtypes.DtypeInfo, fn: Callable) -> Callable:
    """For an 8- or 16-bit dtype, fn over every finite value once, then looked up by ordinal
    (the exhaustive searches ask for the same values again and again); fn itself otherwise."""
    if not info.exhaustive:
        return fn
    return _table_lookup(info, fn(info.finite_values()))


def _method(info: dtypes.DtypeInfo) -> str:
    return "exhaustive" if info.exhaustive else "bisection"


def _scalar(info: dtypes.DtypeInfo, ordinal: int):
    return info.value(_ords(info, [ordinal]))[0]


def _num(v) -> float:
    return float(v)


# ---------------------------------------------------------------- predictions


def _compute_info(info: dtypes.DtypeInfo, mode: str) -> dtypes.DtypeInfo:
    """The dtype a framework-level op really computes in."""
    return dtypes.get("float32") if mode == "upcast" and info.narrow else info


def predicted_overflow(info: dtypes.DtypeInfo, mode: str) -> float:
    """``-ln(eps/2)``: exp(-x) falls below half an ULP of 1, so 1 + exp(-x) rounds to 1.

    Upcast rounds the float32 sigmoid once: it reaches 1 when ``1 - p`` falls below half the
    spacing just below 1, ``eps/4``.
    """
    return -math.log(_half_gap(info, mode))


def _half_gap(info: dtypes.DtypeInfo, mode: str) -> float:
    """Half the spacing of the values ``1 + exp(-x)`` is rounded to: eps/2, or eps/4 where
    upcast rounds the float32 sigmoid of a narrow dtype once."""
    return info.eps / 4 if mode == "upcast" and info.narrow else info.eps / 2


def predicted_underflow(info: dtypes.DtypeInfo, mode: str) -> float:
    """exp(-x) overflows the compute dtype, or sigmoid drops below half the smallest subnormal
    (in a flushing mode: below the smallest normal of the arithmetic, where it becomes 0).
    TensorFlow's sigmoid never computes exp(-x) of a negative x."""
    c = _compute_info(info, mode)
    tiny = Fraction(2 / info.smallest_subnormal)
    if mode in formulas.FLUSHING:
        floor = Fraction(ftz.flush_floor(info.dtype))
        if floor > info.smallest_subnormal:
            tiny = min(tiny, 1 / floor)
    if mode == "tf":  # TensorFlow's sigmoid is e / (1 + e), e = exp(x): nothing overflows on this side
        return -_ln(tiny)
    return -min(_ln(c.max), _ln(tiny))


def _ln(q) -> float:
    """Natural log of a positive Fraction of any size (math.log takes big ints exactly)."""
    return math.log(q.numerator) - math.log(q.denominator)


def predicted_onset(info: dtypes.DtypeInfo, mode: str, threshold: float) -> float | None:
    """Where the quantisation envelope ``q * e**x / x`` of the round trip reaches threshold.

    ``1 + exp(-x)`` is stored with absolute error up to ``q = eps/2``, a relative error of
    ``q * e**x`` in ``exp(-x)`` and so an absolute error of about that in the logit.
    """
    q = _half_gap(info, mode)
    if threshold <= q * math.e or threshold < 8 * info.eps:
        return None  # the envelope is above threshold at x = 1, or final rounding dominates
    t = max(1.0, math.log(threshold / q))
    for _ in range(60):  # t = ln(thr/q) + ln(t): a contraction for t > 1
        t = math.log(threshold / q) + math.log(t)
    return t


def predicted_zero(info: dtypes.DtypeInfo, mode: str = "per-op") -> float:
    """Where even a correctly rounded BCE is 0: softplus(-x) below half the smallest subnormal
    (in a flushing mode, below the smallest normal of the arithmetic where that is larger)."""
    ctx = reference.context()
    sub = info.smallest_subnormal
    least = ctx.mpf(sub.numerator) / sub.denominator / 2
    if mode in formulas.FLUSHING:
        least = max(least, ctx.mpf(ftz.flush_floor(info.dtype)))
    return float(-ctx.log(ctx.expm1(least)))


def _limit(toward_hi: bool) -> reference.Exact:
    """The exact values as x -> +inf (``toward_hi``) or -inf, in this thread's context."""
    ctx = reference.context()
    one, zero, inf = ctx.mpf(1), ctx.mpf(0), ctx.inf
    if toward_hi:
        return reference.Exact(inf, one, zero, zero, inf)
    return reference.Exact(-inf, zero, one, inf, zero)


def clip_args(formula: Formula, eps: float | None, ev: Evaluator):
    if formula.uses_eps:
        assert formula.clip is not None and eps is not None  # uses_eps: a clip, at an eps
        lo, hi = formulas.clip_bounds(formula, eps, ev)
        return lo, hi, (lo if formula.clip.shift else None)
    return None, None, None


def predicted_limit(formula: Formula, eps: float | None, label: Label, ev: Evaluator, good: bool):
    """The clipped-exact value a clipping formula tends to at one tail (None if it does not clip)."""
    clip = formula.clip
    if clip is None:
        return None
    lo, hi, shift = clip_args(formula, eps, ev)

    def one(lab: int) -> mpf:
        toward_hi = (lab == 1) == good  # label 1 improves as x -> +inf
        return reference.clipped_exact(_limit(toward_hi), lab, clip, lo, hi, shift)

    return float((one(0) + one(1)) / 2 if isinstance(label, str) else one(label))  # str: "pair"


# ---------------------------------------------------------------- the key points


def _vsearch(info: dtypes.DtypeInfo, pred: Pred, lo, hi):
    """Vectorised bisection: for each element, the first ordinal in (lo, hi] where pred holds.

    pred must be monotone (false, then true) on each element's range and true at hi.
    """
    if info.bits > 64:
        return _vsearch_values(info, pred, lo, hi)
    lo, hi = np.array(lo, dtype=np.int64), np.array(hi, dtype=np.int64)
    while True:
        open_ = (hi - lo) > 1
        if not open_.any():
            return hi
        mid = np.where(open_, lo + (hi - lo) // 2, hi)
        t = pred(info.value(mid))
        hi = np.where(open_ & t, mid, hi)
        lo = np.where(open_ & ~t, mid, lo)


def _vsearch_values(info: dtypes.DtypeInfo, pred: Pred, lo, hi):
    """`_vsearch` for longdouble, bisecting the values themselves (no Python-int ordinals per
    step): the midpoint of two adjacent values is one of them, which ends the search."""
    lo_v, hi_v = info.value(list(lo)), info.value(list(hi))
    while True:
        with np.errstate(all="ignore"):
            mid = lo_v + (hi_v - lo_v) / 2
        open_ = (mid != lo_v) & (mid != hi_v)
        if not open_.any():
            return np.array(info.ordinal(hi_v), dtype=object)
        t = pred(np.where(open_, mid, hi_v))
        hi_v = np.where(open_ & t, mid, hi_v)
        lo_v = np.where(open_ & ~t, mid, lo_v)


MAX_PLATEAUS = 1 << 17


def _plateaus(info: dtypes.DtypeInfo, ev: Evaluator, o_lo: int, o_hi: int):
    """Runs of x on [o_lo, o_hi] over which sigmoid(x), and so the round trip, is constant.

    sigmoid is monotone, so each representable p in range starts at most one run; the starts
    are found by one vectorised bisection. Returns (starts, ends) as object arrays, or None
    when the window holds too many runs to enumerate or sigmoid is not monotone there (a user's
    may not be): the runs found are checked.
    """
    def p(o):
        return formulas.evaluate_sigmoid(info.value(_ords(info, list(o))), ev)

    p_lo, p_hi = p([o_lo, o_hi])
    t_lo, t_hi = (int(np.asarray(info.ordinal(np.asarray([q], dtype=info.dtype)))[0]) for q in (p_lo, p_hi))
    if t_hi - t_lo > MAX_PLATEAUS:
        return None
    targets = info.value(_ords(info, range(t_lo + 1, t_hi + 1)))
    starts = _vsearch(info, lambda v: formulas.evaluate_sigmoid(v, ev) >= targets,
                      [o_lo] * len(targets), [o_hi] * len(targets))
    starts = np.array(sorted(set([o_lo, *starts.tolist()])), dtype=object)
    ends = np.append(starts[1:] - 1, o_hi)
    # the method stands on monotonicity: check it (each run constant, runs increasing)
    p_s, p_e = p(starts), p(ends)
    if not (np.array_equal(p_s, p_e) and np.all(p_s[1:] > p_s[:-1])):
        return None
    return starts, ends


def _rel_err_at(ev: Evaluator, v) -> np.ndarray:
    return metrics.rel_err_exact_x(formulas.evaluate_roundtrip(v, ev), v)


def _rel_err(info, ev, o) -> np.ndarray:
    return _rel_err_at(ev, info.value(_ords(info, list(o))))


_NO_RUNS = object()  # the plateau walk could not run: keep the bisection's answer


def _plateau_errors(info, ev, o_lo: int, o_hi: int):
    """The plateaus of the round trip in [o_lo, o_hi] (starts, ends) with its relative error at
    both ends of each; None where the plateau walk cannot run."""
    runs = _plateaus(info, ev, o_lo, o_hi)
    if runs is None:
        return None
    starts, ends = runs
    return starts, ends, _rel_err(info, ev, starts), _rel_err(info, ev, ends)


def _first_bad(info, ev, thr, o_lo: int, o_hi: int):
    """Smallest x in [o_lo, o_hi] with round-trip relative error >= thr, plateau by plateau.

    On a plateau the round trip is a constant c, so the error |c - x|/x falls while x < c and
    rises after: it is >= thr at the start, or from one point on, or nowhere.
    """
    runs = _plateau_errors(info, ev, o_lo, o_hi)
    if runs is None:
        return _NO_RUNS
    starts, ends, e_s, e_e = runs
    cand = [int(o) for o in starts[e_s >= thr]]
    mid = (e_s < thr) & (e_e >= thr)
    if mid.any():
        found = _vsearch(info, lambda v: _rel_err_at(ev, v) >= thr, starts[mid], ends[mid])
        cand += [int(o) for o in found]
    return min(cand) if cand else None


def _last_bad(info, ev, thr, o_lo: int, o_hi: int):
    """Largest x in [o_lo, o_hi] with round-trip relative error >= thr, plateau by plateau."""
    runs = _plateau_errors(info, ev, o_lo, o_hi)
    if runs is None:
        return _NO_RUNS
    starts, ends, e_s, e_e = runs
    cand = [int(o) for o in ends[e_e >= thr]]
    mid = (e_e < thr) & (e_s >= thr)
    if mid.any():
        found = _vsearch(info, lambda v: _rel_err_at(ev, v) < thr, starts[mid], ends[mid])
        cand += [int(o) - 1 for o in found]
    return max(cand) if cand else None


def _ord(info: dtypes.DtypeInfo, x: float) -> int:
    o = info.ordinal(np.asarray([info.round(x)], dtype=info.dtype))
    return int(o[0])


def roundtrip_points(dtype: str, mode: str, thresholds: Sequence[float],
                     user: Formula | None = None, backend=None) -> list[KeyPoint]:
    """Overflow, underflow, error onsets and small-x limits of ``logit(sigmoid(x))``.

    The error key points of wide dtypes walk the plateaus of sigmoid (method "plateaus") in a
    window that the coarse scan and the quantisation envelope bracket. ``user``: a user sigmoid
    or logit put in place of the naive one (a user sigmoid is not assumed monotone: no plateaus);
    ``backend``: a real framework's (its sigmoid is monotone, as the frameworks' are).
    """
    info = dtypes.get(dtype)
    computes = formulas.framework_mode(mode, None)  # "native": numpy's sigmoid and logit
    ev = _evaluator(dtype, computes, user.ops if user else backend.ops() if backend else None)
    where = backend.label if backend else "numpy"
    name_of = user.name if user else None
    top, one = info.max_ordinal, _ord(info, 1.0)

    rt = tabulated(info, lambda v: formulas.evaluate_roundtrip(v, ev))

    def bad(v):
        return ~np.isfinite(rt(v))

    def rel(v):
        return float(metrics.rel_err_exact_x(rt(np.asarray([v])), np.asarray([v]))[0])

    out: list[KeyPoint] = []

    def add(name, o, threshold=None, predicted=None, value=None, method=None):
        if o is None:
            return
        v = _scalar(info, o)
        val = value(v) if value else _num(rt(np.asarray([v]))[0])
        why = causes.explain_roundtrip(name, dtype, computes, v, ev.ops)
        out.append(KeyPoint(dtype, mode, name_of, None, None, name, threshold, _num(v), val,
                            predicted, "x" if predicted is not None else None, method or _method(info),
                            where, cause=why))

    add("roundtrip_overflow", first_hit(info, bad, 1, top), predicted=predicted_overflow(info, computes))
    add("roundtrip_underflow", first_hit(info, bad, -1, -top), predicted=predicted_underflow(info, computes))
    for thr in thresholds:
        def over(v, thr=thr):
            return metrics.rel_err_exact_x(rt(v), v) >= thr

        pred = predicted_onset(info, computes, thr)
        onset = first_hit(info, over, one, top)
        small = first_hit(info, over, one - 1, 1)
        m_onset = m_small = _method(info)
        if not info.exhaustive and onset is not None:
            lo = max(one, min(_ord(info, (pred or 1.0) - 4.0), onset))
            found = _first_bad(info, ev, thr, lo, onset)
            if found is not _NO_RUNS:
                onset, m_onset = found, "plateaus"
        if not info.exhaustive and small is not None:
            hi = min(one - 1, max(_ord(info, 16 * info.eps / thr), small))
            found = _last_bad(info, ev, thr, small, hi)
            if found is not _NO_RUNS:
                small, m_small = found, "plateaus"
        add("roundtrip_rel_err_onset", onset, thr, pred, value=rel, method=m_onset)
        add("roundtrip_small_x_limit", small, thr, value=rel, method=m_small)
    return out


def loss_fn(formula: Formula, eps: float | None, label: Label, ev: Evaluator, remember: bool = False
            ) -> Callable:
    """The formula's loss at x for one label (or the pair). ``remember``: each label's values are
    kept in the evaluator's memo, for the key-point walks, which evaluate the same samples for
    every label and the pair (the pair's halves are the labels' own values at -x and x)."""
    if label == "pair":
        def pair(a):
            l0 = _loss(formula, eps, 0, ev, -np.asarray(a), remember)
            l1 = _loss(formula, eps, 1, ev, a, remember)
            return formulas.pair_mean(formula, l0, l1, ev)
        return pair
    lab = int(label)
    return lambda v: _loss(formula, eps, lab, ev, v, remember)


def _loss(formula: Formula, eps: float | None, label: int, ev: Evaluator, x, remember: bool = False
          ) -> np.ndarray:
    """A formula at x for label ``label``; with ``remember``, a built-in one's values from the
    evaluator's memo (user code runs every time)."""
    def compute():
        return formula(x, np.full(np.shape(x), label, dtype=ev.dtype), eps, ev)
    if not remember or formula.user is not None:
        return compute()
    return ev.remember(("bce", formula.name, eps, label), compute, x)


def loss_values(formula: Formula, eps: float | None, labels: Sequence[Label], ev: Evaluator,
                x: np.ndarray) -> list[np.ndarray]:
    """``loss_fn(formula, eps, label, ev)(x)`` for each label; with label 1 asked for too, the
    pair's label-1 half is label 1's values (the same evaluation: y is 1 either way)."""
    out: dict = {}
    for label in labels:
        if label == "pair" and 1 in out:
            l0 = _loss(formula, eps, 0, ev, -np.asarray(x))
            out[label] = formulas.pair_mean(formula, l0, out[1], ev)
        else:
            out[label] = loss_fn(formula, eps, label, ev)(x)
    return [out[label] for label in labels]


@functools.lru_cache(maxsize=64)
def _label_table(dtype: str, mode: str, formula: str, eps: float | None, label: Label) -> np.ndarray:
    """A built-in formula over every finite value of an 8- or 16-bit dtype, once per label; the
    pair's table is made from the two labels' (the pair at a is their mean at -a and a)."""
    info = dtypes.get(dtype)
    ev = _evaluator(dtype, formulas.framework_mode(mode, formula))
    if label == "pair":
        l0, l1 = _label_table(dtype, mode, formula, eps, 0), _label_table(dtype, mode, formula, eps, 1)
        out = formulas.pair_mean(formulas.get(formula), l0[::-1], l1, ev)  # symmetric: index -i is -a
    else:
        out = loss_fn(formulas.get(formula), eps, label, ev)(info.finite_values())
    out.flags.writeable = False
    return out


def _table_lookup(info: dtypes.DtypeInfo, table: np.ndarray) -> Callable:
    top = info.max_ordinal

    def lookup(v):
        return table[np.asarray(info.ordinal(np.asarray(v, dtype=info.dtype))) + top]
    return lookup


def _exact_at(v, label: Label) -> mpf:
    e = reference.exact(v)
    return e.sp_neg if label in (1, "pair") else e.sp_pos


def formula_points(dtype: str, mode: str, formula: str, eps: float | None, label: Label,
                   backend=None) -> list[KeyPoint]:
    """Floor, ceiling, zero and non-finite points of one formula for one label (or the pair)."""
    info = dtypes.get(dtype)
    ev = _evaluator(dtype, formulas.framework_mode(mode, formula), backend.ops() if backend else None,
                    formula)
    f = backend.formula(formula) if backend else formulas.get(formula)
    where = backend.label if backend else "numpy"
    if info.exhaustive and backend is None and f.user is None:
        loss = _table_lookup(info, _label_table(dtype, mode, formula, eps, label))
    else:
        loss = tabulated(info, loss_fn(f, eps, label, ev, remember=not info.exhaustive))
    top = info.max_ordinal
    sign = -1 if label == 0 else 1  # label 0 improves toward -inf
    good_end, bad_end = sign * top, -sign * top
    method = _method(info)
    rec_eps = eps if f.uses_eps else None
    out: list[KeyPoint] = []

    def add(name, o, value, predicted=None, predicts=None):
        if o is not None:
            x = _scalar(info, o)
            why = causes.explain_bce(name, dtype, ev.mode, formula, eps, label, x, value)
            out.append(KeyPoint(dtype, mode, formula, rec_eps, label, name, None,
                                _num(x), value, predicted, predicts, method, where, cause=why))

    def at(o):
        return loss(np.asarray([_scalar(info, o)], dtype=info.dtype))[0]

    for end in (good_end, bad_end):
        o = first_hit(info, lambda v: ~np.isfinite(loss(v)), 0, end)
        if o is not None:
            add("bce_nonfinite", o, _num(at(o)))

    v_good = at(good_end)
    if np.isfinite(v_good) and v_good == 0:
        add("bce_zero", run_start(info, lambda v: loss(v) == 0, 0, good_end), 0.0,
            sign * predicted_zero(info, ev.mode), "x")
    elif np.isfinite(v_good) and reference.to_mpf(v_good) > 2 * _exact_at(_scalar(info, good_end), label):
        o = run_start(info, lambda v: loss(v) == v_good, 0, good_end)
        add("bce_floor", o, _num(v_good), predicted_limit(f, eps, label, ev, good=True), "value")

    v_bad = at(bad_end)
    if np.isfinite(v_bad) and 2 * reference.to_mpf(v_bad) < _exact_at(_scalar(info, bad_end), label):
        o = run_start(info, lambda v: loss(v) == v_bad, 0, bad_end)
        add("bce_ceiling", o, _num(v_bad), predicted_limit(f, eps, label, ev, good=False), "value")
    return out


def keypoints(
    dtypes_: Sequence[str],
    mode: str,
    formula_names: Sequence[str],
    eps_list: Sequence[float],
    labels: Sequence[Label],
    thresholds: Sequence[float],
    backend=None,
    notes: list[str] | None = None,
    grad: bool = False,
    jobs: int = 1,
) -> list[KeyPoint]:
    """Every key point for a selection, in a stable order.

    With a real ``backend``, formulas it has no counterpart for are skipped, and ops it cannot
    run in a dtype are skipped too; both are said in ``notes``. Each dtype's key points are one
    cache entry; ``jobs`` > 1 searches the dtypes not in the cache side by side (see `_forkable`).
    """
    from bce_audit import cache

    notes = [] if notes is None else notes
    sel = Selection(mode, tuple(formula_names), tuple(eps_list), tuple(labels), tuple(thresholds), grad)
    store = cache.active()
    keys = {d: _cache_key(d, sel, backend) if store else None for d in dict.fromkeys(dtypes_)}
    found: dict[str, tuple[list[KeyPoint], list[str]]] = {}
    for d, key in keys.items():
        hit = store.lookup(key, _decode) if store is not None and key else None
        if hit is not None:
            found[d] = hit
    todo = [d for d in keys if d not in found]
    for d, result in zip(todo, _map_dtypes(todo, sel, backend, jobs), strict=True):
        found[d] = result
        key = keys[d]
        if store is not None and key:
            store.put(key, {"keypoints": [asdict(k) for k in result[0]], "notes": result[1]})
    out: list[KeyPoint] = []
    for d in dtypes_:
        out += found[d][0]
        notes += found[d][1]
    return out


@dataclass(frozen=True)
class Selection:
    """What `keypoints` searches for in each dtype (everything but the dtype and the backend)."""

    mode: str
    formulas: tuple[str, ...]
    eps: tuple[float, ...]
    labels: tuple[Label, ...]
    thresholds: tuple[float, ...]
    grad: bool = False

    @property
    def has_user_code(self) -> bool:
        return any(formulas.get(n).user is not None for n in self.formulas)


_MEMO: list[formulas.KernelMemo] = []  # the memo of the `dtype_points` under way, if any
# its budget: the walks' arrays are small, and a larger memo only holds more of what is not
# asked again (64 MiB took 47 MB and 15 ms more than 8 MiB for float32's search, measured)
SEARCH_MEMO = 8 << 20


def _evaluator(dtype: str, mode: str, ops: formulas.Ops | None = None, formula: str | None = None
               ) -> Evaluator:
    """An evaluator for the searches: one dtype's searches share their kernel models' results
    (`formulas.KernelMemo`): the labels, the formulas of one framework and the walks over the
    same coarse samples evaluate the same values again and again. Not for user code (an
    ``impl:`` ``formula``), which gets arrays of its own to change as it likes."""
    shared = _MEMO[-1] if _MEMO and not (formula and impl.is_impl(formula)) else None
    return Evaluator(dtype, mode, ops, memo=shared)


def ready() -> None:
    """What a search does once per process before it finds anything, done ahead (by the
    command's standby, `standby`): the modules it imports when first asked (the kernel models,
    mpmath), the mpmath context's constants, the C library's functions, the cache's stamp."""
    from bce_audit import cache, causes, eigen, glibc, gradients, sleef, xla  # noqa: F401

    reference.context()
    glibc._functions()
    cache.stamp()


def dtype_points(d: str, sel: Selection, backend=None) -> tuple[list[KeyPoint], list[str]]:
    """The key points of one dtype, and the notes on what could not be audited there."""
    parts = _dtype_part(d, sel, (None, *sel.formulas), backend)
    return _assemble(parts, sel)


Part = tuple[list[KeyPoint], list[str]]


def _dtype_part(d: str, sel: Selection, items: Sequence[str | None], backend=None) -> dict[str | None, Part]:
    """Some of one dtype's key points: the round trip's (None) and those of the formulas named,
    each with its notes. The items share one memo of the kernels' results."""
    _MEMO.append(formulas.KernelMemo(SEARCH_MEMO))
    try:
        return {item: _formula_part(d, sel, item, backend) if item else _roundtrip_part(d, sel, backend)
                for item in items}
    finally:
        _MEMO.pop()


def _assemble(parts: dict[str | None, Part], sel: Selection) -> Part:
    """One dtype's key points and notes from its parts, in `dtype_points`'s order."""
    out: list[KeyPoint] = []
    notes: list[str] = []
    for item in (None, *sel.formulas):
        out += parts[item][0]
        notes += parts[item][1]
    return out, notes


def _roundtrip_part(d: str, sel: Selection, backend=None) -> Part:
    from bce_audit.backends import Unsupported

    try:
        return roundtrip_points(d, sel.mode, sel.thresholds, backend=backend), []
    except Unsupported as e:
        return [], [f"{d}: round trip not audited: {e}"]


def _formula_part(d: str, sel: Selection, name: str, backend=None) -> Part:
    from bce_audit.backends import Unsupported

    mode = sel.mode
    out: list[KeyPoint] = []
    notes: list[str] = []
    f = formulas.get(name)
    if f.kind != "bce":
        return roundtrip_points(d, mode, sel.thresholds, user=f), notes
    if backend is not None and backend.formula(name) is None:
        return out, notes
    for eps in sel.eps if f.uses_eps else [None]:
        for label in sel.labels:
            try:
                out += formula_points(d, mode, name, eps, label, backend)
            except Unsupported as e:
                notes.append(f"{d}: {name} not audited: {e}")
                break
        if sel.grad:
            out += _grad_points(d, mode, name, eps, sel.labels, backend, notes)
    return out, notes


# ---------------------------------------------------------------- cache and processes


def _cache_key(d: str, sel: Selection, backend) -> str | None:
    """The cache key of one dtype's key points: everything that decides them (None for user code,
    which is never cached)."""
    from bce_audit import backends, cache

    if sel.has_user_code:
        return None
    return cache.key_of("keypoints", {
        "dtype": d, "bits": dtypes.get(d).bits, **asdict(sel),
        "backend": backend.label if backend else "numpy",
        "backend_version": backends.version(backend.name, backend.keras_backend) if backend else None})


def _decode(entry: dict) -> tuple[list[KeyPoint], list[str]]:
    return [records.decode(KeyPoint, r) for r in entry["keypoints"]], [str(n) for n in entry["notes"]]


COST = {"longdouble": 6, "float32": 5, "float16": 5, "bfloat16": 5, "float64": 4}  # relative search time


def _map_dtypes(todo: list[str], sel: Selection, backend, jobs: int) -> list:
    """`dtype_points` for each dtype: one after another, or in forked processes.

    Forked, each dtype's search is split in parts (the round trip, then the formulas grouped by
    the mode they compute in, which share their kernels' results), costliest dtypes first, so
    the workers finish together; the parts are put back in `dtype_points`'s order."""
    if jobs < 2 or len(todo) < 2 or not _forkable(sel, backend):
        return [dtype_points(d, sel, backend) for d in todo]
    import multiprocessing

    groups: dict[str, list[str]] = {}
    for name in sel.formulas:
        groups.setdefault(formulas.framework_mode(sel.mode, name), []).append(name)
    split = [(None,), *(tuple(g) for g in groups.values())]
    tasks = [(d, items) for d in sorted(todo, key=lambda d: -COST.get(d, 1)) for items in split]
    ctx = multiprocessing.get_context("fork")
    parts: dict[str, dict[str | None, Part]] = {d: {} for d in todo}
    with ctx.Pool(min(jobs, len(tasks)), initializer=heap.die_with_parent) as pool:
        for (d, _), done in zip(tasks, pool.imap(functools.partial(_part_task, sel=sel), tasks), strict=True):
            parts[d].update(done)
    return [_assemble(parts[d], sel) for d in todo]


def _part_task(task: tuple[str, tuple[str | None, ...]], sel: Selection) -> dict[str | None, Part]:
    d, items = task
    return _dtype_part(d, sel, items)


def _forkable(sel: Selection, backend) -> bool:
    """Whether this process may fork workers for the key-point searches.

    A fork is what makes parallel key points pay (a fresh interpreter costs more than the whole
    search), so it is used only where it is safe (`heap.can_fork`), for the built-in numpy models.
    """
    return backend is None and not sel.has_user_code and heap.can_fork()


def _grad_points(d, mode, name, eps, labels, backend, notes) -> list[KeyPoint]:
    from bce_audit.backends import Unsupported

    if not gradients.has_grad(name, backend):
        notes.append(f"{name}: no gradient through {backend.name if backend else 'the models'}")
        return []
    out: list[KeyPoint] = []
    for label in (lab for lab in labels if lab != "pair"):
        try:
            out += grad_points(d, mode, name, eps, label, backend)
        except Unsupported as e:
            notes.append(f"{d}: gradient of {name} not audited: {e}")
            break
    return out


def grad_points(dtype: str, mode: str, formula: str, eps: float | None, label: int,
                backend=None) -> list[KeyPoint]:
    """Dead zones (gradient exactly 0) and vanishing points (10x too small), on each tail."""
    info = dtypes.get(dtype)
    ev = _evaluator(dtype, formulas.framework_mode(mode, formula), backend.ops() if backend else None,
                    formula)
    g = tabulated(info, gradients.grad_fn(formula, eps, label, ev, backend))
    f = formulas.get(formula)
    rec_eps = eps if f.uses_eps else None
    where = backend.label if backend else "numpy"
    method = _method(info)
    floor = float(info.smallest_subnormal) / 2 * gradients.VANISH
    top = info.max_ordinal
    good = 1 if label == 1 else -1  # the tail where the exact gradient goes to 0
    out = []

    def at(o):
        return g(info.value(_ords(info, [o])))[0]

    def why(name, o):
        return causes.explain_grad(name, dtype, ev.mode, formula, eps, label, _scalar(info, o), float(at(o)))

    def vanishing(v):
        exact = gradients.exact_magnitude(v, label)
        got = np.abs(np.asarray(g(v)).astype(exact.dtype))
        return (got * gradients.VANISH < exact) & (exact > floor)

    for sign in (1, -1):
        end = sign * top
        o = run_start(info, lambda v: np.asarray(g(v)) == 0, 0, end)
        if o is not None:
            ideal = predicted_zero(info, ev.mode) * sign if sign == good else None
            out.append(KeyPoint(dtype, mode, formula, rec_eps, label, "grad_dead_zone", None,
                                float(_scalar(info, o)), 0.0, ideal, "x" if ideal else None,
                                method, where, cause=why("grad_dead_zone", o)))
        o = first_hit(info, vanishing, 0, end)
        if o is not None:
            out.append(KeyPoint(dtype, mode, formula, rec_eps, label, "grad_vanishing", None,
                                float(_scalar(info, o)), float(at(o)), None, None, method, where,
                                cause=why("grad_vanishing", o)))
        o = first_hit(info, lambda v: ~np.isfinite(np.asarray(g(v))), 0, end)
        if o is not None:
            out.append(KeyPoint(dtype, mode, formula, rec_eps, label, "grad_nonfinite", None,
                                float(_scalar(info, o)), float(at(o)), None, None, method, where,
                                cause=why("grad_nonfinite", o)))
    return out
