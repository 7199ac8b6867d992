"""Grid x dtypes x eps x formulas -> plain result records (no printing, no rich).

The exact baseline is computed once per distinct dtype-rounded input and shared by every
formula, label and eps: BCE for both labels and the sigmoid all come from one `reference.exact`.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Protocol

import numpy as np

from bce_audit import (
    backends,
    cache,
    compiled,
    dtypes,
    fastref,
    formulas,
    gradients,
    heap,
    impl,
    keypoints,
    metrics,
    records,
    reference,
    standby,
)
from bce_audit.dtypes import exhaustive_bounds
from bce_audit.formulas import Evaluator
from bce_audit.records import (
    CLIP_FLOATS,
    ROW_FLOATS,
    Block,
    KeyPoint,
    Row,
    Settings,
    SweepResult,
    Worst,
    sample_indices,
    step_count,
)


def grid_size(s: Settings, dtype: str) -> int:
    """Points of the grid for one dtype: every dtype value in the range with ``exhaustive``."""
    if s.values is not None:
        return len(s.values)
    if s.exhaustive:
        lo, hi = exhaustive_bounds(dtypes.get(dtype), s.range)
        return hi - lo + 1
    if s.step is not None:
        return step_count(s.range[0], s.range[1], s.step)
    return s.points


def grid_slice(s: Settings, dtype: str, start: int, stop: int) -> np.ndarray:
    """Points start..stop-1 of the grid, equal bit for bit to the same slice of `grid`."""
    if s.values is not None:
        return np.asarray(s.values[start:stop], dtype=np.float64)
    if s.exhaustive:
        info = dtypes.get(dtype)
        first, _ = exhaustive_bounds(info, s.range)
        ords = np.arange(first + start, first + stop, dtype=np.int64)
        return info.value(ords).astype(np.float64)
    lo, hi = s.range
    if s.step is not None:
        return lo + s.step * np.arange(start, stop, dtype=np.float64)
    if s.spacing == "lin":
        n = s.points
        if n == 1:
            return np.array([lo])
        delta = (hi - lo) / (n - 1)
        out = np.arange(start, stop, dtype=np.float64) * delta + lo  # np.linspace's own formula
        if stop == n:
            out[-1] = hi
        return out
    return _log_grid(lo, hi, s.points)[start:stop]


@functools.lru_cache(maxsize=1)
def _log_grid(lo: float, hi: float, points: int) -> np.ndarray:
    """The whole log-spaced grid, made once for all of a run's chunks (read-only)."""
    out = grid(lo, hi, points, None, "log")
    out.flags.writeable = False
    return out


def grid(lo: float, hi: float, points: int, step: float | None, spacing: str) -> np.ndarray:
    """The decimal input grid (float64), before any rounding to a dtype."""
    if step is not None:
        n = step_count(lo, hi, step)
        return lo + step * np.arange(n, dtype=np.float64)
    if spacing == "lin":
        return np.linspace(lo, hi, points)
    if lo > 0 or hi < 0:  # one side of zero: plain geometric spacing
        a, b = sorted((abs(lo), abs(hi)))
        g = np.geomspace(a, b, points)
        return g if lo > 0 else -g[::-1]
    # straddles zero: geometric on each side down to 1e-6 of the widest bound, plus zero
    m = max(abs(lo), abs(hi))
    tiny = m * 1e-6
    n_neg = round((points - 1) * (abs(lo) / (abs(lo) + hi))) if lo < 0 else 0
    n_pos = points - 1 - n_neg
    neg = -np.geomspace(tiny, abs(lo), n_neg)[::-1] if n_neg else np.empty(0)
    pos = np.geomspace(tiny, hi, n_pos) if n_pos else np.empty(0)
    return np.concatenate([neg, [0.0], pos])


def _f(v) -> float:
    return float(v)


class _MpRefs:
    """The mpmath baseline, once per distinct dtype-rounded input, errors one row at a time."""

    def __init__(self, info: dtypes.DtypeInfo, xd: np.ndarray):
        self.info = info
        cache: dict = {}
        self.exacts = []
        for v in xd:
            key = v.item() if info.bits <= 64 else str(v)
            if key not in cache and np.isfinite(v):
                cache[key] = reference.exact(v)
            self.exacts.append(cache.get(key))

    @staticmethod
    def exact_of(e: reference.Exact, kind: str, label):
        if kind == "sigmoid":
            return e.p
        if kind == "roundtrip":
            return e.x
        if kind == "bce":
            return e.bce(1 if label == "pair" else label)
        return gradients.exact_grad(e, label)

    @staticmethod
    def complement_of(e: reference.Exact, kind: str, label):
        """What the exact value is 1 minus (sigmoid, gradient), kept to full precision."""
        if kind not in ("sigmoid", "grad"):
            return None
        return e.q if kind == "sigmoid" or label == 0 else e.p

    def _of(self, kind: str, label):
        for e in self.exacts:
            yield None if e is None else self.exact_of(e, kind, label)

    def _complements(self, kind: str, label):
        for e in self.exacts:
            yield None if e is None else self.complement_of(e, kind, label)

    @staticmethod
    def below_of(e: reference.Exact, kind: str, label) -> bool:
        """A sigmoid (or gradient) the working precision rounded onto 1/2 from beneath."""
        if kind not in ("sigmoid", "grad"):
            return False
        arg = e.x if (kind == "sigmoid" or label == 0) else -e.x
        return bool(arg < 0)

    def errors(self, kind: str, label, values: np.ndarray):
        cols: list[list[float]] = [[], [], [], [], []]
        for v, e, ex, comp in zip(values, self.exacts, self._of(kind, label), self._complements(kind, label),
                                  strict=True):
            below = e is not None and self.below_of(e, kind, label)
            err = metrics.errors(v, ex, self.info, comp, below) if ex is not None else metrics.NONFINITE_NAN
            for col, item in zip(cols, (_f(ex) if ex is not None else math.nan, err.abs, err.rel, err.ulp,
                                        err.bits), strict=True):
                col.append(item)
        return cols

    def clipped(self, label, f: formulas.Formula, clip_args, values: np.ndarray):
        out: list[list[float]] = [[], [], []]
        for v, e in zip(values, self.exacts, strict=True):
            if e is None:
                for col in out:
                    col.append(math.nan)
                continue
            clip, ex = _clipped(e, label, f, clip_args), e.bce(1 if label == "pair" else label)
            out[0].append(_f(clip))  # baseline values: arithmetic at the baseline's precision
            out[1].append(_f(abs(clip - ex) / ex) if ex != 0 else 0.0)
            out[2].append(metrics.errors(v, clip, self.info).ulp)
        return out


class _FastRefs:
    """The vectorised float64 baseline (`fastref`), for dtypes of 32 bits or fewer.

    What depends only on the inputs is worked out once per chunk and shared by every series:
    each exact column's `fastref.Scale` (its ULPs, and the ties only mpmath decides), each clipped
    exact column, and the mpmath baseline at the inputs of those ties.
    """

    def __init__(self, info: dtypes.DtypeInfo, xd: np.ndarray):
        self.info = info
        self.xd = xd
        x64 = np.asarray(xd).astype(np.float64)
        self.finite = np.isfinite(x64)
        self.nan = np.flatnonzero(~self.finite)  # inputs with no exact value: every measure is NaN
        self.e = fastref.exact(np.where(self.finite, x64, 0.0) if self.nan.size else x64)
        self._scales: dict[tuple, tuple[fastref.Scale, np.ndarray]] = {}
        self._clips: dict[tuple, tuple[np.ndarray, np.ndarray, fastref.Scale]] = {}
        self._clip_scales: dict[tuple, fastref.Scale] = {}  # by the bits of the clipped-exact column
        self._clipped_memo: dict[tuple, np.ndarray] = {}
        self._mp: dict[int, reference.Exact] = {}
        self._specials: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _of(self, kind: str, label):
        """The exact values, their log where they underflow, and their complement to 1."""
        e = self.e
        lab = 1 if label == "pair" else label
        if kind == "sigmoid":
            return e.p, e.x, e.q
        if kind == "roundtrip":
            return e.x, None, None
        if kind == "bce":
            return e.bce(lab), e.log_bce(lab), None
        return e.grad(lab), e.log_grad_magnitude(lab), (e.p if lab == 1 else e.q)

    def _mp_errors(self, i: int, kind: str, label, value) -> metrics.Errors:
        """The errors at input i by the mpmath baseline (computed once per input and chunk)."""
        e = self._mp.get(i)
        if e is None:
            e = self._mp[i] = reference.exact(self.xd[i])
        return metrics.errors(value, _MpRefs.exact_of(e, kind, label), self.info,
                              _MpRefs.complement_of(e, kind, label), _MpRefs.below_of(e, kind, label))

    def errors(self, kind: str, label, values: np.ndarray):
        """`fastref.errors` of a column: its exact values, and the abs, rel, ULP and bits of error
        at every point (non-finite values: inf or nan), the ties decided as `measure` decides them.
        Computed through the column's `fastref.Scale` (shared by every series of the column),
        which gives `fastref.errors`' numbers wherever values are finite."""
        exact = self._of(kind, label)[0]
        sc, undecided = self._scale(kind, label)
        ulps, rels, diffs = sc.measure(values)
        assert rels is not None  # asked for
        with np.errstate(all="ignore"):
            c = np.asarray(values).astype(np.float64)  # (ml_dtypes' own isinf aside)
            bad_inf, bad_nan = np.isinf(c), np.isnan(c)
            if bad_inf.any() or bad_nan.any():
                diffs, rels, ulps = (np.where(bad_inf, np.inf, np.where(bad_nan, np.nan, a))
                                     for a in (diffs, rels, ulps))
            bits = np.log2(1.0 + ulps)
        cols = [diffs, rels, ulps, bits]
        for i in undecided.tolist():
            err = self._mp_errors(int(i), kind, label, values[i])
            for col, v in zip(cols, (err.abs, err.rel, err.ulp, err.bits), strict=True):
                col[i] = v
        nan = ~self.finite
        return [np.where(nan, np.nan, a) for a in (exact, *cols)]

    def _scale(self, kind: str, label) -> tuple[fastref.Scale, np.ndarray]:
        """The `fastref.Scale` of one exact column and the inputs where mpmath decides a tie."""
        key = (kind, 1 if label == "pair" else label)
        if key not in self._scales:
            exact, log_exact, comp = self._of(kind, label)
            below, undecided = fastref.ties(kind, label, self.e.x, exact, comp)
            self._scales[key] = (fastref.scale(exact, log_exact, self.info, comp, below),
                                 np.flatnonzero(undecided & self.finite))
        return self._scales[key]

    def special(self, kind: str, label) -> tuple[np.ndarray, np.ndarray]:
        """Where `measure` corrects the arithmetic it shares with every position (the scale's
        zeros and underflows, the ties mpmath decides, the inputs with no exact value), sorted,
        and the same as one byte a position (1: there)."""
        key = (kind, 1 if label == "pair" else label)
        if key not in self._specials:
            sc, undecided = self._scale(kind, label)
            idx = np.union1d(np.union1d(sc.special(), undecided), self.nan).astype(np.intp)
            mask = np.zeros(len(self.finite), np.uint8)
            mask[idx] = 1
            self._specials[key] = idx, mask
        return self._specials[key]

    def exact_of(self, kind: str, label) -> np.ndarray:
        """The exact column as `measure` gives it (NaN at inputs with no exact value)."""
        exact = self._of(kind, label)[0]
        return np.where(self.finite, exact, np.nan) if self.nan.size else exact

    def measure_at(self, kind: str, label, values: np.ndarray, idx: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
        """`measure` at the positions ``idx`` only (sorted): ULPs, relative and absolute errors
        there, and the bits where mpmath decided (by position in the chunk)."""
        sc, _ = self._scale(kind, label)
        at = np.asarray(values)[idx]
        ulps, rels, diffs = sc.at(idx).measure(at)
        assert rels is not None  # asked for
        return ulps, rels, diffs, self._corrected(kind, label, at, ulps, rels, diffs, idx)

    def _corrected(self, kind: str, label, values: np.ndarray, ulps: np.ndarray, rels: np.ndarray,
                   diffs: np.ndarray, idx: np.ndarray | None = None) -> dict[int, float]:
        """`measure`'s last corrections, in place: the ties mpmath decides, and NaN at inputs with
        no exact value; the bits where mpmath decided, by position in the chunk. The arrays
        hold every position, or those of ``idx`` (sorted)."""
        _, undecided = self._scale(kind, label)
        if idx is None:
            ties, gone = undecided, self.nan
        else:
            ties, gone = np.flatnonzero(np.isin(idx, undecided)), np.flatnonzero(~self.finite[idx])
        bits = {}
        for p in ties.tolist():
            i = p if idx is None else int(idx[p])
            err = self._mp_errors(i, kind, label, values[p])
            ulps[p], rels[p], diffs[p], bits[i] = err.ulp, err.rel, err.abs, err.bits
        ulps[gone] = rels[gone] = diffs[gone] = np.nan
        return bits

    def measure(self, kind: str, label, values: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
        """The exact column, and ULPs, relative and absolute errors as `errors` gives them
        wherever values are finite; the bits of error where the mpmath baseline decided
        (elsewhere they are log2(1 + ULPs))."""
        sc, _ = self._scale(kind, label)
        ulps, rels, diffs = sc.measure(values)
        assert rels is not None  # asked for
        bits = self._corrected(kind, label, values, ulps, rels, diffs)
        exact = self.exact_of(kind, label)
        return exact, ulps, rels, diffs, bits

    def _clipped(self, mirrored: bool, label: int, f: formulas.Formula, clip_args) -> np.ndarray:
        """`fastref.clipped` at x (or at -x: ``mirrored``), once per chunk for the formulas that
        clip alike (the pair's label-1 half is label 1's)."""
        key = (mirrored, label, *_clip_key(f, clip_args))
        if key not in self._clipped_memo:
            e = self.e
            if mirrored:
                e = fastref.Exact64(-e.x, e.sp_pos, e.sp_neg, e.q, e.p)
            self._clipped_memo[key] = fastref.clipped(e, label, f.clip, *clip_args)
        return self._clipped_memo[key]

    def _clip_exact(self, label, f: formulas.Formula, clip_args) -> tuple[np.ndarray, np.ndarray]:
        """The clipped-exact BCE and its relative distance from the exact BCE."""
        if label == "pair":
            clip = (self._clipped(True, 0, f, clip_args) + self._clipped(False, 1, f, clip_args)) / 2
        else:
            clip = self._clipped(False, label, f, clip_args)
        exact, log_exact, _ = self._of("bce", label)
        with np.errstate(all="ignore"):
            rel = compiled.relative(clip, exact)  # (the next two lines, in one pass)
            if rel is None:
                rel = np.subtract(clip, exact)
                np.divide(np.abs(rel, out=rel), exact, out=rel)
            under = np.flatnonzero(~(exact >= fastref.TINY))  # there: relative to exp(log_exact)
            rel[under] = np.exp(np.log(np.abs(clip[under])) - log_exact[under])
        return clip, rel

    def clipped(self, label, f: formulas.Formula, clip_args, values: np.ndarray):
        clip, rel = self._clip_exact(label, f, clip_args)
        _, _, ulps, _ = fastref.errors(values, clip, None, self.info)
        nan = ~self.finite
        return [np.where(nan, np.nan, a) for a in (clip, rel, ulps)]

    def measure_clipped(self, label, f: formulas.Formula, clip_args, values: np.ndarray):
        """`clipped`, with the rounding ULPs only as `measure` gives them (finite values); the
        clipped-exact columns are shared by the formulas that clip alike."""
        clip, rel, sc = self.clip_columns(label, f, clip_args)
        return clip, rel, sc.measure(values, rel=False)[0]

    def clip_columns(self, label, f: formulas.Formula, clip_args
                     ) -> tuple[np.ndarray, np.ndarray, fastref.Scale]:
        """The clipped-exact column and its relative distance from the exact one (NaN at inputs
        with no exact value), and the scale of its rounding ULPs; once per chunk for the formulas
        that clip alike."""
        key = (label, *_clip_key(f, clip_args))
        if key not in self._clips:
            clip, rel = self._clip_exact(label, f, clip_args)
            bits = dtypes.bits_key(clip)  # clipping alike may give the same column
            sc = self._clip_scales.get(bits)
            if sc is None:
                sc = self._clip_scales[bits] = fastref.scale(clip, None, self.info)
            if self.nan.size:
                clip, rel = clip.copy(), rel.copy()
                clip[self.nan] = rel[self.nan] = np.nan
            self._clips[key] = clip, rel, sc
        return self._clips[key]


def _clip_key(f: formulas.Formula, clip_args) -> tuple:
    """What decides a clipped-exact column besides the label: formulas that clip alike share it."""
    assert f.clip is not None  # a clipping formula
    return (f.clip.log_floor, *(None if a is None else float(a) for a in clip_args))


@dataclass
class Series:
    """One audited series (a quantity, formula, eps and label) over a chunk of the grid: its
    values and exact values. `Measured` adds its errors, `Reduced` only their worst."""

    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    values: np.ndarray
    exact: np.ndarray


@dataclass
class Measured(Series):
    """A series' errors at every point, and the bits of error at any one point (from the ULPs,
    or where the mpmath baseline decided a tie, from it)."""

    abs_err: np.ndarray
    rel_err: np.ndarray
    ulp_err: np.ndarray
    clip: tuple[np.ndarray, np.ndarray, np.ndarray] | None  # clipped-exact, clip rel, round ULP
    mp_bits: dict[int, float]  # bits of error where the mpmath baseline decided a tie

    def bits_at(self, i: int) -> float:
        if i in self.mp_bits:
            return self.mp_bits[i]
        return _bits(self.ulp_err[i:i + 1])

    def summary(self) -> tuple[int, int, int, float, float]:
        return _worst_of(self)

    def ulp_at(self, i: int) -> float:
        """The ULP error at i, where the value is finite (else -inf: a masked argmax's)."""
        return self.ulp_err[i] if np.isfinite(self.values[i]) else -np.inf

    def clip_summary(self) -> tuple[int, float, float] | None:
        return None if self.clip is None else _clip_of(self)


def _bits(ulps: np.ndarray) -> float:
    """The bits of error of one ULP error (an array of one), as `fastref.errors` computes them."""
    with np.errstate(all="ignore"):
        return float(np.log2(1.0 + ulps)[0])


@dataclass
class Column(Measured):
    """A `Measured` series with the bits of error at every point too: the kept rows show them."""

    bits: np.ndarray

    def bits_at(self, i: int) -> float:
        return float(self.bits[i])


@dataclass
class Reduced(Series):
    """A series' worst over a chunk, reduced as it was measured (`_reduced`): what
    `_WorstAcc.update` takes from a `Measured`, without its error columns."""

    worst: tuple[int, int, int, float, float]  # as `_worst_of` gives it
    ulp: float                                 # the ULP error at the worst position
    bits: float                                # and its bits of error
    clip: tuple[int, float, float] | None      # as `_clip_of` gives it

    def summary(self) -> tuple[int, int, int, float, float]:
        return self.worst

    def ulp_at(self, i: int) -> float:
        return self.ulp

    def bits_at(self, i: int) -> float:
        return self.bits

    def clip_summary(self) -> tuple[int, float, float] | None:
        return self.clip


def _reduced(refs: _FastRefs, quantity, formula, eps, label, values, clip=None) -> Reduced | None:
    """`_measured` and `_worst_of` (and `_clip_of`) in one compiled pass over float32 values;
    the few positions `measure` corrects are measured apart and folded in. The same numbers;
    None where the compiled pass does not run."""
    values = np.asarray(values)
    sc, _ = refs._scale(quantity, label)
    idx, mask = refs.special(quantity, label)
    cols = None
    if clip is not None:
        clip_exact, clip_rel, csc = refs.clip_columns(label, clip[0], clip[1])
        cols = (clip_exact, clip_rel, csc.exact, csc.inv_ulp)
    out = compiled.measure_worst(values, sc.exact, sc.inv_ulp, sc.mag, sc.complement, mask, cols)
    if out is None:
        return None
    n_finite, first, nan_at, at, best, rel, ab, clip_count, clip_rel_max, round_ulp = out
    bits: dict[int, float] = {}
    if idx.size:  # fold in the positions measured apart, as numpy's argmax and max would see them
        ulps, rels, diffs, bits = refs.measure_at(quantity, label, values, idx)
        fin = np.isfinite(values[idx])
        where, ulps, rels, diffs = idx[fin], ulps[fin], rels[fin], diffs[fin]
        if where.size:
            nans = np.flatnonzero(np.isnan(ulps))
            if nans.size and (nan_at < 0 or where[nans[0]] < nan_at):
                nan_at = int(where[nans[0]])
            k = int(np.argmax(ulps))
            if nan_at < 0 and (at < 0 or ulps[k] > best or (ulps[k] == best and where[k] < at)):
                at, best = int(where[k]), float(ulps[k])
            rel, ab = _nan_max(rel, float(np.max(rels))), _nan_max(ab, float(np.max(diffs)))
    if nan_at >= 0:
        at, best = nan_at, math.nan
    if not n_finite:
        at, rel, ab = 0, -math.inf, -math.inf
    ulp_bits = bits[at] if at in bits else _bits(np.array([best]))
    clipped = None if clip is None else (clip_count, clip_rel_max, round_ulp)  # (-inf where none)
    return Reduced(quantity, formula, eps, label, values, refs.exact_of(quantity, label),
                   (n_finite, first, at, rel, ab), best, ulp_bits, clipped)


def _nan_max(a: float, b: float) -> float:
    """numpy's max of two: NaN wins."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def _arrays(cols) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float64) for c in cols]


def _series(s: Settings, dtype: str, xd: np.ndarray, basics: bool = True, backend=None):
    """Every series of one dtype evaluated at its values xd (a generator): (quantity, formula,
    eps, label, values, clip), clip being (formula, clip args) for a clipping formula, else None.

    The built-in formulas share one sigmoid and log-sigmoid per distinct input (`Evaluator` memo).
    """
    ev = Evaluator(dtype, formulas.framework_mode(s.mode, None), backend.ops() if backend else None,
                   memo=backend is None)
    others: dict[str, Evaluator] = {ev.mode: ev}  # under "native", one evaluator per framework mode
    if basics:
        yield "sigmoid", None, None, None, formulas.evaluate_sigmoid(xd, ev), None
        yield "roundtrip", None, None, None, formulas.evaluate_roundtrip(xd, ev), None
    for name in s.formulas:
        f = formulas.get(name)
        fmode = formulas.framework_mode(s.mode, name)
        if fmode not in others:
            others[fmode] = Evaluator(dtype, fmode, backend.ops() if backend else None, memo=backend is None)
        fev = Evaluator(dtype, fmode) if impl.is_impl(name) else others[fmode]  # user code: arrays of its own
        if backend is not None and f.kind == "bce":
            f, fev = backend.formula(name), ev
            if f is None:
                continue
        if f.kind != "bce":  # a user sigmoid or logit: audited through the round trip
            uev = Evaluator(dtype, fmode, f.ops)
            if f.kind == "sigmoid":
                yield "sigmoid", name, None, None, formulas.evaluate_sigmoid(xd, uev), None
            yield "roundtrip", name, None, None, formulas.evaluate_roundtrip(xd, uev), None
            continue
        for eps in s.eps if f.uses_eps else (None,):
            clip_args = keypoints.clip_args(f, eps, fev) if f.clip is not None else None
            if fev is others[fmode] and backend is None:  # a built-in model: labels share what they can
                per_label = keypoints.loss_values(f, eps, s.labels, fev, xd)
            else:
                per_label = [keypoints.loss_fn(f, eps, label, fev)(xd) for label in s.labels]
            for label, values in zip(s.labels, per_label, strict=True):
                yield "bce", name, eps, label, values, (f, clip_args) if clip_args is not None else None
            if s.grad and gradients.has_grad(name, backend):
                for label in (lab for lab in s.labels if isinstance(lab, int)):  # not the "pair"
                    values = gradients.grad_fn(name, eps, label, fev, backend)(xd)
                    yield "grad", name, eps, label, values, None


def _column(refs, quantity, formula, eps, label, values, clip=None) -> Column:
    """One series with every error measure at every point."""
    values = np.asarray(values)
    exact, ab, rel, ulp, bits = _arrays(refs.errors(quantity, label, values))
    extra = None
    if clip is not None:
        clip_exact, clip_rel, round_ulp = _arrays(refs.clipped(label, clip[0], clip[1], values))
        extra = (clip_exact, clip_rel, round_ulp)
    return Column(quantity, formula, eps, label, values, exact, ab, rel, ulp, extra, {}, bits)


def _measured(refs: _FastRefs, quantity, formula, eps, label, values, clip=None) -> Measured:
    """One series measured for its worst errors only (the fast baseline)."""
    values = np.asarray(values)
    exact, ulps, rels, diffs, bits = refs.measure(quantity, label, values)
    extra = None if clip is None else refs.measure_clipped(label, clip[0], clip[1], values)
    return Measured(quantity, formula, eps, label, values, exact, diffs, rels, ulps, extra, bits)


def columns(s: Settings, dtype: str, xs: np.ndarray, basics: bool = True, backend=None):
    """Every series of one dtype over the inputs xs, one `Column` at a time (a generator).

    With a real ``backend`` its ops replace the models (formulas it lacks are left out). The
    baseline is `fastref` for dtypes of 32 bits or fewer unless ``s.reference`` is "mpmath".
    """
    info = dtypes.get(dtype)
    xd = Evaluator(dtype).arr(xs)
    refs = _FastRefs(info, xd) if _fast(s, info) else _MpRefs(info, xd)
    for series in _series(s, dtype, xd, basics, backend):
        yield _column(refs, *series)


def _fast(s: Settings, info: dtypes.DtypeInfo) -> bool:
    return s.reference == "fast" and fastref.serves(info)


def _sampled_fast(s: Settings, info: dtypes.DtypeInfo, index: list[int] | None) -> bool:
    """Whether a chunk measures every point for its worst errors only: rows are sampled (not
    all kept) and the baseline is the fast one."""
    return index is not None and _fast(s, info)


def block(c: Column, s: Settings, dtype: str, xs: np.ndarray, xd: np.ndarray, where: str,
          index=None) -> Block:
    """The kept rows of a column, at the chosen indices (all by default)."""
    idx = slice(None) if index is None else np.asarray(index, dtype=np.intp)
    arrays = (xs, xd, c.values, c.exact, c.abs_err, c.rel_err, c.ulp_err, c.bits)
    names = ROW_FLOATS + (CLIP_FLOATS if c.clip is not None else ())
    floats = {n: np.asarray(a, dtype=np.float64)[idx] for n, a in zip(names, (*arrays, *(c.clip or ())),
                                                                           strict=True)}
    return Block(dtype, s.mode, where, c.quantity, c.formula, c.eps, c.label, floats)


def _worst_of(c: Measured) -> tuple[int, int, int, float, float]:
    """What a running worst takes from a column: the finite values' count, the first non-finite
    one's index (-1: none), the argmax of the finite ULP errors (numpy's: the first NaN, else
    the first largest), the largest finite relative and absolute errors (NaN wins)."""
    finite = np.isfinite(c.values)
    n_finite = int(np.count_nonzero(finite))
    every = n_finite == len(finite)  # then the masks below would change nothing
    j = -1 if every else int(np.argmin(finite))
    if not n_finite:
        return n_finite, j, 0, -math.inf, -math.inf
    ulp = c.ulp_err if every else np.where(finite, c.ulp_err, -np.inf)
    rel = c.rel_err if every else np.where(finite, c.rel_err, -np.inf)
    ab = c.abs_err if every else np.where(finite, c.abs_err, -np.inf)
    return n_finite, j, int(np.argmax(ulp)), float(np.max(rel)), float(np.max(ab))


def _clip_of(c: Measured) -> tuple[int, float, float]:
    """Where values are finite with a clipped-exact value: how many, and the largest
    clipped-exact relative distance and rounding ULPs there."""
    assert c.clip is not None
    has = np.isfinite(c.values) & ~np.isnan(c.clip[0])
    count = int(np.count_nonzero(has))
    if not count:
        return 0, -math.inf, -math.inf
    if count == len(has):
        return count, float(np.max(c.clip[1])), float(np.max(c.clip[2]))
    return count, float(np.max(c.clip[1][has])), float(np.max(c.clip[2][has]))


class _WorstAcc:
    """A running `Worst` for one series, fed chunk by chunk (memory stays per chunk)."""

    x: float | None
    clip_rel: float | None
    round_ulp: float | None

    def __init__(self, head: tuple[str, str, str, str | None, float | None, int | str | None]):
        self.head = head
        self.ulp, self.bits, self.rel, self.abs, self.x = -math.inf, math.nan, -math.inf, -math.inf, None
        self.at: tuple[float | None, float | None, float | None] = (None, None, None)
        self.first_nonfinite: tuple[float | None, float | None, float | None] = (None, None, None)
        self.nonfinite = self.points = 0
        self.clip_rel = self.round_ulp = None

    def update(self, c: Measured | Reduced, xs: np.ndarray, xd: np.ndarray) -> None:
        n = len(c.values)
        n_finite, j, i, rel, ab = c.summary()
        self.points += n
        if n_finite < n and not self.nonfinite:  # j: the first non-finite result
            self.first_nonfinite = (float(xd[j]), float(c.values[j]), float(c.exact[j]))
        self.nonfinite += n - n_finite
        if n_finite:
            ulp = c.ulp_at(i)  # (a masked argmax: every one -inf)
            if ulp > self.ulp:
                self.ulp, self.bits, self.x = float(ulp), c.bits_at(i), float(xs[i])
                self.at = (float(xd[i]), float(c.values[i]), float(c.exact[i]))
            self.rel = max(self.rel, rel)
            self.abs = max(self.abs, ab)
            clip = c.clip_summary()
            if clip is not None and clip[0]:
                self._clip(clip[1], clip[2])

    def _clip(self, cr: float | None, ru: float | None) -> None:
        if cr is not None:
            self.clip_rel = cr if self.clip_rel is None else max(self.clip_rel, cr)
        if ru is not None:
            self.round_ulp = ru if self.round_ulp is None else max(self.round_ulp, ru)

    def merge(self, w: Worst) -> None:
        """Fold in a later chunk's `Worst` (ties keep the earlier x, as one pass would)."""
        self.points += w.points
        if w.nonfinite and not self.nonfinite:
            self.first_nonfinite = (w.nonfinite_x, w.nonfinite_value, w.nonfinite_exact)
        self.nonfinite += w.nonfinite
        if w.x is not None:
            if w.max_ulp > self.ulp:
                self.ulp, self.bits, self.x = w.max_ulp, w.max_bits, w.x
                self.at = (w.x_dtype, w.value, w.exact)
            self.rel = max(self.rel, w.max_rel)
            self.abs = max(self.abs, w.max_abs)
        self._clip(w.max_clip_rel, w.max_round_ulp)

    def worst(self) -> Worst:
        found = self.x is not None
        nan = math.nan
        return Worst(*self.head, self.ulp if found else nan, self.rel if found else nan,
                     self.bits if found else nan, self.x, self.nonfinite, self.points,
                     self.clip_rel, self.round_ulp, self.abs if found else nan, *self.at,
                     *self.first_nonfinite)


CHUNK = 1 << 16  # grid points evaluated at once: memory stays bounded for any grid size


@dataclass
class ChunkResult:
    """What one chunk of one dtype's grid leaves: per series its worst errors and kept rows."""

    worst: list[Worst]
    blocks: list[Block]


def audit_chunk(s: Settings, dtype: str, start: int, stop: int, index: list[int] | None,
                users: tuple[impl.Source, ...] = (), timeout: float | None = None) -> ChunkResult:
    """The unit of work: grid points start..stop-1 of one dtype. Pure, so it runs anywhere
    (a process pool, a Dask worker) and the same inputs give the same result; ``users`` (see
    `formulas.sources`) lets a worker import the ``impl:`` formulas again, under the parent's
    ``timeout`` (`impl.TIMEOUT`)."""
    if timeout is not None:
        impl.TIMEOUT = timeout
    formulas.ensure(users)
    backend = backends.get(s.backend, s.device, s.keras_backend)
    where = backend.label if backend else "numpy"
    xs = grid_slice(s, dtype, start, stop)
    xd = Evaluator(dtype).arr(xs)
    worst: list[Worst] = []
    blocks: list[Block] = []

    def reduce(c: Measured | Reduced) -> None:
        acc = _WorstAcc((dtype, s.mode, c.quantity, c.formula, c.eps, c.label))
        acc.update(c, xs, xd)
        worst.append(acc.worst())

    info = dtypes.get(dtype)
    if not _sampled_fast(s, info, index):
        for c in columns(s, dtype, xs, backend=backend):
            reduce(c)
            blocks.append(block(c, s, dtype, xs, xd, where, index))
        return ChunkResult(worst, blocks)
    # The fast baseline: every point measured for the worst errors only, the kept rows in full
    # (every measure is elementwise, so the kept points alone give the same numbers).
    refs = _FastRefs(info, xd)
    kept = _FastRefs(info, xd[index]) if index else None
    # Series with the very same values (formulas that saturate, or share their ops) and the same
    # clipping reduce alike: measured once, their worst copied under each name. Only the worst
    # is kept: a chunk holds one series' error columns at a time.
    reduced: dict[tuple, Worst] = {}
    columns_at: dict[tuple, Column] = {}  # and their kept rows alike
    for series in _series(s, dtype, xd, backend=backend):
        quantity, formula, eps, label, values, clip = series
        clip_key = None if clip is None else _clip_key(*clip)
        alike_key = (quantity, label, dtypes.bits_key(np.asarray(values)), clip_key)
        alike = reduced.get(alike_key)
        if alike is None:
            reduce(_reduced(refs, *series) or _measured(refs, *series))
            reduced[alike_key] = worst[-1]
        else:
            worst.append(replace(alike, formula=formula, eps=eps))
        if kept is None:
            names = ROW_FLOATS + (CLIP_FLOATS if clip is not None else ())
            blocks.append(Block(dtype, s.mode, where, quantity, formula, eps, label,
                                {n: np.empty(0) for n in names}))
            continue
        at = np.asarray(values)[index]
        key = (quantity, label, dtypes.bits_key(at), clip_key)
        c = columns_at.get(key)
        if c is None:
            c = columns_at[key] = _column(kept, quantity, formula, eps, label, at, clip)
        blocks.append(block(replace(c, formula=formula, eps=eps), s, dtype, xs[index], xd[index], where))
    return ChunkResult(worst, blocks)


def _encode_chunk(r: ChunkResult) -> dict:
    return {"worst": [records.clean(asdict(w)) for w in r.worst], "blocks": [b.encode() for b in r.blocks]}


def _decode_chunk(d: dict) -> ChunkResult:
    return ChunkResult([records.decode(Worst, w) for w in d["worst"]], [Block.decode(b) for b in d["blocks"]])


def _chunk_key(s: Settings, dtype: str, start: int, stop: int, index) -> dict:
    info = dtypes.get(dtype)
    return {"settings": {k: v for k, v in s.as_dict().items() if k not in ("thresholds",)},
            "dtype": dtype, "bits": info.bits, "reference": s.reference if fastref.serves(info) else "mpmath",
            "precision": reference.PREC, "chunk": [start, stop], "index": index,
            "values": None if s.values is None else list(s.values),
            "backend_version": backends.version(s.backend, s.keras_backend)}


def _user_code(s: Settings) -> bool:
    return any(impl.is_impl(n) for n in s.formulas)


def _cacheable(s: Settings) -> bool:
    return not _user_code(s)


def _forks(s: Settings, jobs: int, scheduler: str | None) -> bool:
    """Whether this run's workers (the grid's, and the key-point search beside it) are forked
    from this process: several jobs here, the built-in numpy models only (user code is imported
    afresh by a forkserver's workers), and where a fork is safe (`heap.can_fork`)."""
    return jobs > 1 and not scheduler and s.backend == "numpy" and not _user_code(s) and heap.can_fork()


def chunk_size(s: Settings) -> int:
    """Grid points a chunk holds: smaller when every row is kept, so a chunk's rows stay small."""
    return CHUNK if s.keep is not None else CHUNK >> 4


def run_chunks(s: Settings, dtype: str, keep: set[int] | None, jobs: int = 1,
               scheduler: str | None = None, progress=None) -> Iterator[ChunkResult]:
    """Every chunk of one dtype's grid, yielded in order: from the cache where done before (so
    a run that stopped resumes), the rest serially, in a process pool (``jobs`` > 1) or on a Dask
    cluster (``scheduler``), each stored in the cache as soon as it is done.

    Only one chunk's result is held at a time here. A run that keeps every row is not cached:
    its entries would be as large as its output.
    """
    n = grid_size(s, dtype)
    kept = None if keep is None else sorted(keep)
    size = chunk_size(s)
    specs = []
    for start in range(0, n, size):
        stop = min(n, start + size)
        index = None
        if kept is not None:  # the kept rows in this chunk, relative to its start
            index = [i - start for i in kept[bisect.bisect_left(kept, start):bisect.bisect_left(kept, stop)]]
        specs.append((start, stop, index))
    store = cache.active() if _cacheable(s) and s.keep is not None else None
    keys = [cache.key_of("chunk", _chunk_key(s, dtype, *spec)) for spec in specs] if store else []
    stored = [store is not None and store.path(k).is_file() for k in keys] or [False] * len(specs)
    todo = [k for k in range(len(specs)) if not stored[k]]
    computed = _execute(s, dtype, [specs[k] for k in todo], todo, jobs, scheduler)
    for k, (start, stop, index) in enumerate(specs):
        r = store.lookup(keys[k], _decode_chunk) if store is not None and stored[k] else None
        if r is None:
            if stored[k]:  # damaged since it was listed: computed here, as any miss
                r = audit_chunk(s, dtype, start, stop, index)
            else:
                done, r = next(computed)
                assert done == k
            if store is not None:
                store.put(keys[k], _encode_chunk(r))
        if progress is not None:
            progress(stop - start)
        yield r


POOL_MIN_POINTS = 1 << 22  # fast-baseline grid points below which fresh interpreters cost more than they save


def _pool_pays(s: Settings, dtype: str, specs: list) -> bool:
    """Whether a pool of fresh interpreters is worth its start-up: a forkserver that imports the
    package, then a worker each (about 0.5 s on 2 cores, against about 25 ms a chunk of 65,536
    points on the fast baseline). Every grid on the mpmath baseline (milliseconds a point) pays.
    A forked pool (`heap.can_fork`) starts in milliseconds: any grid of two chunks pays for it."""
    if not _fast(s, dtypes.get(dtype)):
        return True
    return sum(stop - start for start, stop, _ in specs) >= POOL_MIN_POINTS


def _execute(s: Settings, dtype: str, specs: list, ks: list[int], jobs: int, scheduler: str | None):
    """Yield (k, result) for each chunk spec, in order, wherever the work runs."""
    users = formulas.sources(s.formulas)
    timeout = impl.TIMEOUT if users else None  # what the workers' impl: calls may take
    args = [(s, dtype, start, stop, index, users, timeout) for start, stop, index in specs]
    pooled = jobs > 1 and len(args) > 1 and s.backend == "numpy"
    fork = len(args) > 1 and _forks(s, jobs, scheduler)
    if scheduler:
        from bce_audit import distributed

        yield from zip(ks, distributed.run(scheduler, audit_chunk, args), strict=True)
    elif fork or (pooled and _pool_pays(s, dtype, specs)):
        yield from _pool(args, ks, jobs, fork)
    else:
        for k, a in zip(ks, args, strict=True):
            yield k, audit_chunk(*a)


def _pool(args: list, ks: list[int], jobs: int, fork: bool):
    """`_execute` in a process pool: forked from this process where that is safe (user code and
    frameworks' threads aside: `heap.can_fork`), else fresh interpreters from a forkserver."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # a forkserver's fresh interpreters where a fork is unsafe (threads of JAX, BLAS mid-lock);
    # either way each worker ends with this process
    start, end = ("fork", heap.die_with_parent) if fork else ("forkserver", heap.worker)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context(start), initializer=end,
                             initargs=(os.getpid(),)) as pool:
        # a window of chunks in flight: finished results never pile up behind a slow reader
        work = iter(zip(ks, args, strict=True))
        # (where every row is kept, results are large and the writer is slower than the workers: fewer held)
        window = jobs if args[0][0].keep is None else 2 * jobs
        pending = collections.deque((k, pool.submit(audit_chunk, *a))
                                    for k, a in itertools.islice(work, window))
        while pending:
            k, future = pending.popleft()
            r = future.result()
            for k2, a in itertools.islice(work, 1):
                pending.append((k2, pool.submit(audit_chunk, *a)))
            yield k, r


class Sink(Protocol):
    """Where every kept row of a run goes, chunk by chunk, in grid order (a `streams.Writer`)."""

    every_core: bool  # it formats on every core itself: the chunks are computed here, not in a pool

    def write(self, blocks: Sequence[Block]) -> None: ...
    def pause(self) -> None: ...  # all written, its threads let go: this process may fork again


def audit_grid(s: Settings, dtype: str, keep: set[int] | None, jobs: int = 1, scheduler: str | None = None,
               progress=None, sink: Sink | None = None) -> tuple[list[Worst], list[Row]]:
    """One dtype over the grid in chunks: the worst errors of each series over every point, and
    the kept rows (or, with ``sink``, each chunk's kept rows handed to it in grid order)."""
    accs: list[_WorstAcc] = []
    kept: list[list[Row]] = []
    if keep is None and (sink is None or sink.every_core) and _fast(s, dtypes.get(dtype)):
        # every row comes back from a worker: on the fast baseline pickling it costs about what
        # computing it does, and this process holds it, or formats it on every core itself
        jobs = 1
    for r in run_chunks(s, dtype, keep, jobs, scheduler, progress):
        if not accs:
            accs = [_WorstAcc((w.dtype, w.mode, w.quantity, w.formula, w.eps, w.label)) for w in r.worst]
            kept = [[] for _ in r.worst]
        for acc, w in zip(accs, r.worst, strict=True):
            acc.merge(w)
        if sink is not None:
            sink.write(r.blocks)
            continue
        for rows, b in zip(kept, r.blocks, strict=True):
            rows.extend(b.rows())
    if sink is not None:
        sink.pause()  # (a thread left running would keep the next dtype's workers from being forked)
    return [a.worst() for a in accs], [row for rows in kept for row in rows]


def _clipped(e: reference.Exact, label, f: formulas.Formula, clip_args):
    lo, hi, shift = clip_args
    assert f.clip is not None  # clip_args: a clipping formula
    if label != "pair":
        return reference.clipped_exact(e, label, f.clip, lo, hi, shift)
    # the pair at a is (BCE(-a, 0) + BCE(a, 1)) / 2; by symmetry BCE(-a, 0) has p -> 1 - p
    mirrored = reference.Exact(-e.x, e.q, e.p, e.sp_pos, e.sp_neg)
    return (reference.clipped_exact(mirrored, 0, f.clip, lo, hi, shift)
            + reference.clipped_exact(e, 1, f.clip, lo, hi, shift)) / 2


def native(s: Settings) -> Settings:
    """A real backend computes as it does: its records carry the model mode it follows
    (torch: float32 opmath for narrow dtypes, ``upcast``; jax: XLA's, ``xla``; TensorFlow's
    kernels, ``tf``; scikit-learn: numpy's, ``per-op``; keras: its Keras backend's)."""
    from bce_audit.keras_backend import MODES

    mode = {"torch": "upcast", "jax": "xla", "tensorflow": "tf", "sklearn": "per-op",
            "keras": MODES[s.keras_backend]}.get(s.backend, s.mode)
    return s if mode == s.mode else replace(s, mode=mode)


def run_sweep(s: Settings, with_rows: bool = True, progress=None, jobs: int = 1,
              scheduler: str | None = None, sink: Sink | None = None) -> SweepResult:
    """The whole audit for a selection: key points, and (for sweep) the grid.

    The grid is evaluated in chunks; ``s.keep`` rows (evenly spread, both ends included; None:
    all) are kept, and the worst errors are reduced over every point. ``progress(n)`` is called
    as each chunk of n points is done. ``jobs`` > 1 spreads the chunks over a process pool and
    ``scheduler`` over a Dask cluster; the result is the same either way. With ``sink``, each
    chunk's kept rows go to it as blocks, in grid order, and ``result.rows`` stays empty.
    """
    s = native(s)
    backend = backends.get(s.backend, s.device, s.keras_backend)
    notes: list[str] = []
    if backend is not None:
        notes.append(backend.evaluation)
        missing = backend.missing(s.formulas)
        if missing:
            on = f" on {backend.keras_backend}" if backend.keras_backend else ""
            notes.append(f"{backend.name}{on} has no real counterpart of {', '.join(missing)}: not audited "
                         f"with --backend {backend.name}")

    def search() -> tuple[list[KeyPoint], list[str], list[str]]:
        return _search(s, backend, 1 if scheduler else jobs, cache.active())

    # Where it may, a forked child searches the key points while the grid is audited here: the
    # command's standby where it has one (readied as the command started), else one forked now.
    overlap = with_rows and _forks(s, jobs, scheduler)
    result = SweepResult(s, [])
    grid_notes: list[str] = []
    with contextlib.ExitStack() as stack:
        later = None
        if overlap:
            later = stack.enter_context(standby.running(_search, s, None, jobs, cache.active())) \
                or stack.enter_context(heap.forked(search))
        kps, kp_notes, warned = search() if later is None else ([], [], [])
        tick = progress if later is None else _watching(later, progress)
        for d in s.dtypes if with_rows else ():
            keep = None if s.keep is None else set(sample_indices(grid_size(s, d), s.keep))
            try:
                worst, rows = audit_grid(s, d, keep, jobs, scheduler, tick, sink)
                result.worst += worst
                result.rows += rows
            except backends.Unsupported as e:
                grid_notes.append(f"{d}: grid not audited: {e}")
        if later is not None:
            kps, kp_notes, warned = later()
    store = cache.active()
    if store is not None:
        for w in warned:  # (a forked child's, told here)
            store.warn(w)
    result.keypoints = kps
    result.notes = list(dict.fromkeys(notes + kp_notes + grid_notes))
    return result


def _search(s: Settings, backend, jobs: int, store: cache.Cache | None
            ) -> tuple[list[KeyPoint], list[str], list[str]]:
    """`run_sweep`'s search of the key points, with the notes it found and the cache's warnings;
    here, in a forked child, or in the command's standby (`standby.running`: the settings, the
    jobs and the cache travel with the request; the backend is numpy's, None)."""
    cache.use(store)
    found: list[str] = []
    kps = keypoints.keypoints(s.dtypes, s.mode, s.formulas, s.eps, s.labels, s.thresholds, backend, found,
                              s.grad, jobs=jobs)
    return kps, found, list(store.warnings) if store else []


def _watching(later: heap.Later, progress):
    """``progress``, and after each chunk the key-point search's failure raised at once (not
    after a grid that may take hours)."""
    def tick(n: int) -> None:
        if progress is not None:
            progress(n)
        later.raise_early()
    return tick


def check_rows(xs: Sequence[float], s: Settings) -> tuple[list[Row], dict[tuple, float]]:
    """Rows for a few single logits across the selected dtypes (the `check` command).

    Also returns the exact values at the logits as given (before rounding to any narrower
    dtype), keyed by (x, quantity, formula, eps, label).
    """
    s = replace(native(s), values=tuple(float(x) for x in xs), keep=None)
    rows: list[Row] = []
    for d in s.dtypes:
        try:
            rows += audit_grid(s, d, None)[1]
        except backends.Unsupported:
            continue  # the dtype's column stays empty
    given = audit_grid(replace(s, backend="numpy", device="cpu"), "float64", None)[1]
    exact = {(r.x, r.quantity, r.formula, r.eps, r.label): r.exact for r in given}
    return rows, exact
