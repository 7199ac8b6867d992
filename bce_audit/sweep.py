"""Grid x dtypes x eps x formulas -> plain result records (no printing, no rich).

The exact baseline is computed once per distinct dtype-rounded input and shared by every
formula, label and eps: BCE for both labels and the sigmoid all come from one `reference.exact`.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from mpmath import mp

from bce_audit import (
    backends,
    cache,
    dtypes,
    fastref,
    formulas,
    gradients,
    heap,
    impl,
    keypoints,
    metrics,
    reference,
)
from bce_audit.formulas import Evaluator

LABELS = ("1", "0", "both")
SPACINGS = ("lin", "log")
DEFAULT_RANGE = (-40.0, 40.0)
DEFAULT_POINTS = 161
DEFAULT_EPS = (1e-7,)
DEFAULT_THRESHOLDS = (1e-3, 1e-2)
MAX_POINTS = 100_000_000  # beyond this a grid is a mistake; --exhaustive covers the 16-bit dtypes


@dataclass(frozen=True)
class Settings:
    """One validated selection; every command works from one of these."""

    dtypes: tuple[str, ...] = ("float32",)
    eps: tuple[float, ...] = DEFAULT_EPS
    formulas: tuple[str, ...] = formulas.NAMES
    range: tuple[float, float] = DEFAULT_RANGE
    points: int = DEFAULT_POINTS
    step: float | None = None
    spacing: str = "lin"
    label: str = "both"
    mode: str = "per-op"
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    backend: str = "numpy"
    device: str = "cpu"
    grad: bool = False
    reference: str = "fast"  # "fast" (vectorised float64, <= 32-bit dtypes) or "mpmath"
    exhaustive: bool = False  # the grid is every value of each dtype in the range (+-inf: all)
    keep: int | None = None   # grid rows kept in the result (evenly spread); None: all

    @property
    def labels(self) -> tuple[int | str, ...]:
        """Labels audited: 1, 0 and the seed's two-point pair when both are asked for."""
        return {"1": (1,), "0": (0,), "both": (1, 0, "pair")}[self.label]

    def as_dict(self) -> dict:
        return {
            "dtypes": list(self.dtypes), "eps": list(self.eps), "formulas": list(self.formulas),
            "range": list(self.range), "points": self.points, "step": self.step,
            "spacing": self.spacing, "label": self.label, "mode": self.mode,
            "thresholds": list(self.thresholds), "backend": self.backend, "device": self.device,
            "grad": self.grad, "reference": self.reference, "exhaustive": self.exhaustive,
        }


@dataclass(frozen=True)
class Row:
    """One computed quantity at one input, beside its exact value and its errors.

    ``clip_rel``: how far the clipped formula is from the exact BCE in exact arithmetic (the
    part the clipping causes); ``round_ulp``: how far the computed value is from that
    clipped-exact value, in ULPs (the part rounding causes). None where no clipping applies.
    """

    dtype: str
    mode: str
    x: float
    x_dtype: float
    quantity: str  # "sigmoid", "roundtrip", "bce" or "grad"
    formula: str | None
    eps: float | None
    label: int | str | None
    value: float
    exact: float
    abs_err: float
    rel_err: float
    ulp_err: float
    bits: float
    clipped_exact: float | None = None
    clip_rel: float | None = None
    round_ulp: float | None = None
    backend: str = "numpy"


@dataclass(frozen=True)
class Worst:
    """The largest error of one formula over the grid, and where it happened."""

    dtype: str
    mode: str
    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    max_ulp: float
    max_rel: float
    max_bits: float
    x: float | None
    nonfinite: int
    points: int
    max_clip_rel: float | None = None   # clipping's share: clipped-exact vs exact
    max_round_ulp: float | None = None  # rounding's share: computed vs clipped-exact


@dataclass
class SweepResult:
    settings: Settings
    keypoints: list[keypoints.KeyPoint]
    rows: list[Row] = field(default_factory=list)
    worst: list[Worst] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def sample_indices(n: int, show: int) -> list[int]:
    """Evenly spread indices of n points, both ends included (all of them when n <= show)."""
    if n <= show:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, show).round().astype(int).tolist()))


def exhaustive_bounds(info: dtypes.DtypeInfo, rng: tuple[float, float]) -> tuple[int, int]:
    """Ordinals of the first and last dtype values inside [lo, hi] (every finite one for +-inf)."""
    lo, hi = rng
    top = info.max_ordinal

    def ordinal(v: float, up: bool) -> int:
        if math.isinf(v):
            return top if v > 0 else -top
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.asarray([v]).astype(info.dtype)
        if not np.isfinite(d[0]):  # beyond the dtype's largest value
            beyond = top + 1 if up else top
            return beyond if v > 0 else -beyond
        o = int(np.asarray(info.ordinal(d))[0])
        got = float(d[0])
        if up and got < v:
            o += 1
        if not up and got > v:
            o -= 1
        return o

    return ordinal(lo, True), ordinal(hi, False)


def step_count(lo: float, hi: float, step: float) -> int:
    """Points of a stepped grid: LO, LO + step, ... up to HI (a hair of slack for rounding)."""
    return math.floor((hi - lo) / step + 1e-9) + 1


def grid_size(s: Settings, dtype: str) -> int:
    """Points of the grid for one dtype: every dtype value in the range with ``exhaustive``."""
    if s.exhaustive:
        lo, hi = exhaustive_bounds(dtypes.get(dtype), s.range)
        return hi - lo + 1
    if s.step is not None:
        return step_count(s.range[0], s.range[1], s.step)
    return s.points


def grid_slice(s: Settings, dtype: str, start: int, stop: int) -> np.ndarray:
    """Points start..stop-1 of the grid, equal bit for bit to the same slice of `grid`."""
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
        cols = [[], [], [], [], []]
        for v, e, ex, comp in zip(values, self.exacts, self._of(kind, label), self._complements(kind, label),
                                  strict=True):
            below = e is not None and self.below_of(e, kind, label)
            err = metrics.errors(v, ex, self.info, comp, below) if ex is not None else metrics.NONFINITE_NAN
            for col, item in zip(cols, (_f(ex) if ex is not None else math.nan, err.abs, err.rel, err.ulp,
                                        err.bits), strict=True):
                col.append(item)
        return cols

    def clipped(self, label, f: formulas.Formula, clip_args, values: np.ndarray):
        out = [[], [], []]
        for v, e in zip(values, self.exacts, strict=True):
            if e is None:
                for col in out:
                    col.append(math.nan)
                continue
            clip, ex = _clipped(e, label, f, clip_args), e.bce(1 if label == "pair" else label)
            with mp.workprec(reference.PREC):
                out[0].append(_f(clip))
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
        self._clipped_memo: dict[tuple, np.ndarray] = {}
        self._mp: dict[int, reference.Exact] = {}

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
        exact, log_exact, comp = self._of(kind, label)
        # An exact value that float64 rounds onto a power of two may lie just below it, in the
        # binade under it: decided where the formulas tell, by the mpmath baseline elsewhere.
        below, undecided = fastref.ties(kind, label, self.e.x, exact, comp)
        cols = [np.array(a, dtype=np.float64)
                for a in fastref.errors(values, exact, log_exact, self.info, comp, below)]
        for i in np.flatnonzero(undecided & self.finite):
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

    def measure(self, kind: str, label, values: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, dict[int, float]]:
        """ULPs and relative errors as `errors` gives them wherever values are finite, and the bits
        of error where the mpmath baseline decided (elsewhere they are log2(1 + ULPs))."""
        sc, undecided = self._scale(kind, label)
        ulps, rels = sc.measure(values)
        bits = {}
        for i in undecided.tolist():
            err = self._mp_errors(i, kind, label, values[i])
            ulps[i], rels[i], bits[i] = err.ulp, err.rel, err.bits
        if self.nan.size:
            ulps[self.nan] = rels[self.nan] = np.nan
        return ulps, rels, bits  # type: ignore[return-value]

    def _clipped(self, mirrored: bool, label: int, f: formulas.Formula, clip_args) -> np.ndarray:
        """`fastref.clipped` at x (or at -x: ``mirrored``), once per chunk for the formulas that
        clip alike (the pair's label-1 half is label 1's)."""
        key = (mirrored, label, f.clip.log_floor, *(None if a is None else float(a) for a in clip_args))
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
            rel = np.abs(clip - exact) / exact
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
        key = (label, f.clip.log_floor, *(None if a is None else float(a) for a in clip_args))
        if key not in self._clips:
            clip, rel = self._clip_exact(label, f, clip_args)
            sc = fastref.scale(clip, None, self.info)
            if self.nan.size:
                clip, rel = clip.copy(), rel.copy()
                clip[self.nan] = rel[self.nan] = np.nan
            self._clips[key] = clip, rel, sc
        clip, rel, sc = self._clips[key]
        return clip, rel, sc.measure(values, rel=False)[0]


@dataclass
class Column:
    """One audited series (a quantity, formula, eps and label) over a chunk of the grid."""

    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    values: np.ndarray
    exact: np.ndarray
    abs_err: np.ndarray
    rel_err: np.ndarray
    ulp_err: np.ndarray
    bits: np.ndarray
    clip: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # clipped-exact, clip rel, round ULP

    @property
    def key(self) -> tuple:
        return (self.quantity, self.formula, self.eps, str(self.label))

    def bits_at(self, i: int) -> float:
        return float(self.bits[i])


@dataclass
class Measured:
    """One series over a chunk, measured for its worst errors only: ULPs and relative errors at
    every point (equal to a `Column`'s wherever the value is finite), bits at any one point."""

    quantity: str
    formula: str | None
    eps: float | None
    label: int | str | None
    values: np.ndarray
    ulp_err: np.ndarray
    rel_err: np.ndarray
    mp_bits: dict[int, float]  # bits of error where the mpmath baseline decided a tie
    clip: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def bits_at(self, i: int) -> float:
        if i in self.mp_bits:
            return self.mp_bits[i]
        with np.errstate(all="ignore"):
            return float(np.log2(1.0 + self.ulp_err[i:i + 1])[0])  # as `fastref.errors` computes them


def _arrays(cols) -> list[np.ndarray]:
    return [np.asarray(c, dtype=np.float64) for c in cols]


def _series(s: Settings, dtype: str, xd: np.ndarray, basics: bool = True, backend=None):
    """Every series of one dtype evaluated at its values xd (a generator): (quantity, formula,
    eps, label, values, clip), clip being (formula, clip args) for a clipping formula, else None.

    The built-in formulas share one sigmoid and log-sigmoid per distinct input (`Evaluator` memo).
    """
    ev = Evaluator(dtype, s.mode, backend.ops() if backend else None, memo=backend is None)
    if basics:
        yield "sigmoid", None, None, None, formulas.evaluate_sigmoid(xd, ev), None
        yield "roundtrip", None, None, None, formulas.evaluate_roundtrip(xd, ev), None
    for name in s.formulas:
        f = formulas.get(name)
        fev = Evaluator(dtype, s.mode) if impl.is_impl(name) else ev  # user code gets arrays of its own
        if backend is not None and f.kind == "bce":
            f, fev = backend.formula(name), ev
            if f is None:
                continue
        if f.kind != "bce":  # a user sigmoid or logit: audited through the round trip
            uev = Evaluator(dtype, s.mode, f.ops)
            if f.kind == "sigmoid":
                yield "sigmoid", name, None, None, formulas.evaluate_sigmoid(xd, uev), None
            yield "roundtrip", name, None, None, formulas.evaluate_roundtrip(xd, uev), None
            continue
        for eps in s.eps if f.uses_eps else (None,):
            clip_args = keypoints.clip_args(f, eps, fev) if f.clip is not None else None
            if fev is ev and backend is None:  # a built-in model: labels share what they can
                per_label = keypoints.loss_values(f, eps, s.labels, fev, xd)
            else:
                per_label = [keypoints.loss_fn(f, eps, label, fev)(xd) for label in s.labels]
            for label, values in zip(s.labels, per_label, strict=True):
                yield "bce", name, eps, label, values, (f, clip_args) if clip_args is not None else None
            if s.grad and gradients.has_grad(name, backend):
                for label in (lab for lab in s.labels if lab != "pair"):
                    values = gradients.grad_fn(name, eps, label, fev, backend)(xd)
                    yield "grad", name, eps, label, values, None


def _column(refs, quantity, formula, eps, label, values, clip=None) -> Column:
    """One series with every error measure at every point."""
    values = np.asarray(values)
    exact, ab, rel, ulp, bits = _arrays(refs.errors(quantity, label, values))
    extra = None
    if clip is not None:
        extra = tuple(_arrays(refs.clipped(label, clip[0], clip[1], values)))
    return Column(quantity, formula, eps, label, values, exact, ab, rel, ulp, bits, extra)


def _measured(refs: _FastRefs, quantity, formula, eps, label, values, clip=None) -> Measured:
    """One series measured for its worst errors only (the fast baseline)."""
    values = np.asarray(values)
    ulps, rels, bits = refs.measure(quantity, label, values)
    extra = None if clip is None else refs.measure_clipped(label, clip[0], clip[1], values)
    return Measured(quantity, formula, eps, label, values, ulps, rels, bits, extra)


def columns(s: Settings, dtype: str, xs: np.ndarray, basics: bool = True, backend=None):
    """Every series of one dtype over the inputs xs, one `Column` at a time (a generator).

    With a real ``backend`` its ops replace the models (formulas it lacks are left out). The
    baseline is `fastref` for dtypes of 32 bits or fewer unless ``s.reference`` is "mpmath".
    """
    info = dtypes.get(dtype)
    xd = Evaluator(dtype, s.mode).arr(xs)
    refs = _FastRefs(info, xd) if _fast(s, info) else _MpRefs(info, xd)
    for series in _series(s, dtype, xd, basics, backend):
        yield _column(refs, *series)


def _fast(s: Settings, info: dtypes.DtypeInfo) -> bool:
    return s.reference == "fast" and fastref.serves(info)


def _sampled_fast(s: Settings, info: dtypes.DtypeInfo, index: list[int] | None) -> bool:
    """Whether a chunk measures every point for its worst errors only: rows are sampled (not
    all kept) and the baseline is the fast one."""
    return index is not None and _fast(s, info)


def materialize(c: Column, s: Settings, dtype: str, xs: np.ndarray, xd: np.ndarray, where: str,
                index=None) -> list[Row]:
    """Rows of a column, at the chosen indices (all by default)."""
    idx = range(len(c.values)) if index is None else index
    out = []
    for i in idx:
        more = {}
        if c.clip is not None and not math.isnan(c.clip[0][i]):
            more = {"clipped_exact": float(c.clip[0][i]), "clip_rel": float(c.clip[1][i]),
                    "round_ulp": float(c.clip[2][i])}
        out.append(Row(dtype, s.mode, float(xs[i]), float(xd[i]), c.quantity, c.formula, c.eps, c.label,
                       float(c.values[i]), float(c.exact[i]), float(c.abs_err[i]), float(c.rel_err[i]),
                       float(c.ulp_err[i]), float(c.bits[i]), **more, backend=where))
    return out


def rows_for_dtype(s: Settings, dtype: str, xs: np.ndarray, basics: bool = True,
                   backend=None) -> list[Row]:
    """Every row of one dtype: the sigmoid and round trip (``basics``), then each formula."""
    xd = Evaluator(dtype, s.mode).arr(xs)
    where = backend.label if backend else "numpy"
    rows: list[Row] = []
    for c in columns(s, dtype, xs, basics, backend):
        rows += materialize(c, s, dtype, xs, xd, where)
    return rows


class _WorstAcc:
    """A running `Worst` for one series, fed chunk by chunk (memory stays per chunk)."""

    def __init__(self, head: tuple):
        self.head = head
        self.ulp, self.bits, self.rel, self.x = -math.inf, math.nan, -math.inf, None
        self.nonfinite = self.points = 0
        self.clip_rel = self.round_ulp = None

    def update(self, c: Column | Measured, xs: np.ndarray) -> None:
        finite = np.isfinite(c.values)
        n_finite = int(np.count_nonzero(finite))
        self.points += len(finite)
        self.nonfinite += len(finite) - n_finite
        if n_finite:
            every = n_finite == len(finite)  # then the masks below would change nothing
            ulp = c.ulp_err if every else np.where(finite, c.ulp_err, -np.inf)
            i = int(np.argmax(ulp))
            if ulp[i] > self.ulp:
                self.ulp, self.bits, self.x = float(ulp[i]), c.bits_at(i), float(xs[i])
            rel = c.rel_err if every else np.where(finite, c.rel_err, -np.inf)
            self.rel = max(self.rel, float(np.max(rel)))
            if c.clip is not None:
                has = finite & ~np.isnan(c.clip[0])
                if has.all():
                    self._clip(float(np.max(c.clip[1])), float(np.max(c.clip[2])))
                elif has.any():
                    self._clip(float(np.max(c.clip[1][has])), float(np.max(c.clip[2][has])))

    def _clip(self, cr: float | None, ru: float | None) -> None:
        if cr is not None:
            self.clip_rel = cr if self.clip_rel is None else max(self.clip_rel, cr)
        if ru is not None:
            self.round_ulp = ru if self.round_ulp is None else max(self.round_ulp, ru)

    def merge(self, w: Worst) -> None:
        """Fold in a later chunk's `Worst` (ties keep the earlier x, as one pass would)."""
        self.points += w.points
        self.nonfinite += w.nonfinite
        if w.x is not None:
            if w.max_ulp > self.ulp:
                self.ulp, self.bits, self.x = w.max_ulp, w.max_bits, w.x
            self.rel = max(self.rel, w.max_rel)
        self._clip(w.max_clip_rel, w.max_round_ulp)

    def worst(self) -> Worst:
        found = self.x is not None
        return Worst(*self.head, self.ulp if found else math.nan, self.rel if found else math.nan,
                     self.bits if found else math.nan, self.x, self.nonfinite, self.points,
                     self.clip_rel, self.round_ulp)


CHUNK = 1 << 16  # grid points evaluated at once: memory stays bounded for any grid size


@dataclass
class ChunkResult:
    """What one chunk of one dtype's grid leaves: per series its worst errors and kept rows."""

    worst: list[Worst]
    rows: list[list[Row]]


def audit_chunk(s: Settings, dtype: str, start: int, stop: int, index: list[int] | None) -> ChunkResult:
    """The unit of work: grid points start..stop-1 of one dtype. Pure, so it runs anywhere
    (a process pool, a Dask worker) and the same inputs give the same result."""
    backend = backends.get(s.backend, s.device)
    where = backend.label if backend else "numpy"
    xs = grid_slice(s, dtype, start, stop)
    xd = Evaluator(dtype, s.mode).arr(xs)
    worst: list[Worst] = []
    rows: list[list[Row]] = []

    def reduce(c: Column | Measured) -> None:
        acc = _WorstAcc((dtype, s.mode, c.quantity, c.formula, c.eps, c.label))
        acc.update(c, xs)
        worst.append(acc.worst())

    info = dtypes.get(dtype)
    if not _sampled_fast(s, info, index):
        for c in columns(s, dtype, xs, backend=backend):
            reduce(c)
            rows.append(materialize(c, s, dtype, xs, xd, where, index))
        return ChunkResult(worst, rows)
    # The fast baseline: every point measured for the worst errors only, the kept rows in full
    # (every measure is elementwise, so the kept points alone give the same numbers).
    refs = _FastRefs(info, xd)
    kept = _FastRefs(info, xd[index]) if index else None
    for series in _series(s, dtype, xd, backend=backend):
        reduce(_measured(refs, *series))
        if kept is None:
            rows.append([])
            continue
        quantity, formula, eps, label, values, clip = series
        c = _column(kept, quantity, formula, eps, label, np.asarray(values)[index], clip)
        rows.append(materialize(c, s, dtype, xs[index], xd[index], where))
    return ChunkResult(worst, rows)


def _encode_chunk(r: ChunkResult) -> dict:
    return {"worst": [asdict(w) for w in r.worst], "rows": [[asdict(x) for x in rs] for rs in r.rows]}


def _decode_chunk(d: dict) -> ChunkResult:
    return ChunkResult([Worst(**w) for w in d["worst"]], [[Row(**x) for x in rs] for rs in d["rows"]])


def _chunk_key(s: Settings, dtype: str, start: int, stop: int, index) -> dict:
    info = dtypes.get(dtype)
    return {"settings": {k: v for k, v in s.as_dict().items() if k not in ("thresholds",)},
            "dtype": dtype, "bits": info.bits, "reference": s.reference if fastref.serves(info) else "mpmath",
            "precision": reference.PREC, "chunk": [start, stop], "index": index,
            "backend_version": backends.version(s.backend)}


def _cacheable(s: Settings) -> bool:
    return not any(impl.is_impl(n) for n in s.formulas)


def run_chunks(s: Settings, dtype: str, n: int, keep: set[int] | None, jobs: int = 1,
               scheduler: str | None = None, progress=None) -> list[ChunkResult]:
    """Every chunk of one dtype's grid, in order: from the cache where done before (so a run
    that stopped resumes), the rest serially, in a process pool (``jobs`` > 1) or on a Dask
    cluster (``scheduler``), each stored in the cache as soon as it is done."""
    kept = None if keep is None else sorted(keep)
    specs = []
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        index = None
        if kept is not None:  # the kept rows in this chunk, relative to its start
            index = [i - start for i in kept[bisect.bisect_left(kept, start):bisect.bisect_left(kept, stop)]]
        specs.append((start, stop, index))
    store = cache.active() if _cacheable(s) else None
    keys = [cache.key_of("chunk", _chunk_key(s, dtype, *spec)) for spec in specs] if store else []
    results: list[ChunkResult | None] = [None] * len(specs)
    todo = []
    for k, (start, stop, _) in enumerate(specs):
        if store is not None:
            hit = store.get(keys[k])
            if hit is not None:
                try:
                    results[k] = _decode_chunk(hit)
                except (TypeError, KeyError):
                    results[k] = None
        if results[k] is None:
            todo.append(k)
        elif progress is not None:
            progress(stop - start)

    def done(k: int, r: ChunkResult) -> None:
        results[k] = r
        start, stop, _ = specs[k]
        if store is not None:
            store.put(keys[k], _encode_chunk(r))
        if progress is not None:
            progress(stop - start)

    for k, r in _execute(s, dtype, [specs[k] for k in todo], todo, jobs, scheduler):
        done(k, r)
    return results  # type: ignore[return-value]


POOL_MIN_POINTS = 1 << 22  # fast-baseline grid points below which a process pool costs more than it saves


def _pool_pays(s: Settings, dtype: str, specs: list) -> bool:
    """Whether a process pool is worth its start-up: a fresh interpreter that imports the package,
    then a worker each (about 0.5 s on 2 cores, against about 25 ms a chunk of 65,536 points
    on the fast baseline). Every grid on the mpmath baseline (milliseconds a point) pays."""
    if not _fast(s, dtypes.get(dtype)):
        return True
    return sum(stop - start for start, stop, _ in specs) >= POOL_MIN_POINTS


def _execute(s: Settings, dtype: str, specs: list, ks: list[int], jobs: int, scheduler: str | None):
    """Yield (k, result) for each chunk spec, in order, wherever the work runs."""
    args = [(s, dtype, start, stop, index) for start, stop, index in specs]
    if scheduler:
        from bce_audit import distributed
        yield from zip(ks, distributed.run(scheduler, audit_chunk, args), strict=True)
    elif (jobs > 1 and len(args) > 1 and s.backend == "numpy"
            and _cacheable(s) and _pool_pays(s, dtype, specs)):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # forkserver: never fork a process that may hold threads (JAX, BLAS) mid-lock
        ctx = multiprocessing.get_context("forkserver")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=heap.tune) as pool:
            yield from zip(ks, pool.map(audit_chunk, *zip(*args, strict=True)), strict=True)
    else:
        for k, a in zip(ks, args, strict=True):
            yield k, audit_chunk(*a)


def _audit_grid(s: Settings, dtype: str, n: int, keep: set[int] | None, result: SweepResult,
                jobs: int = 1, scheduler: str | None = None, progress=None) -> None:
    """Evaluate one dtype over the grid in chunks: keep the asked-for rows, reduce the rest."""
    accs: list[_WorstAcc] = []
    kept: list[list[Row]] = []
    for r in run_chunks(s, dtype, n, keep, jobs, scheduler, progress):
        if not accs:
            accs = [_WorstAcc((w.dtype, w.mode, w.quantity, w.formula, w.eps, w.label)) for w in r.worst]
            kept = [[] for _ in r.worst]
        for acc, w in zip(accs, r.worst, strict=True):
            acc.merge(w)
        for rows, new in zip(kept, r.rows, strict=True):
            rows.extend(new)
    for rows in kept:
        result.rows += rows
    result.worst += [a.worst() for a in accs]


def _clipped(e: reference.Exact, label, f: formulas.Formula, clip_args):
    lo, hi, shift = clip_args
    if label != "pair":
        return reference.clipped_exact(e, label, f.clip, lo, hi, shift)
    # the pair at a is (BCE(-a, 0) + BCE(a, 1)) / 2; by symmetry BCE(-a, 0) has p -> 1 - p
    mirrored = reference.Exact(-e.x, e.q, e.p, e.sp_pos, e.sp_neg)
    with mp.workprec(reference.PREC):
        return (reference.clipped_exact(mirrored, 0, f.clip, lo, hi, shift)
                + reference.clipped_exact(e, 1, f.clip, lo, hi, shift)) / 2


def native(s: Settings) -> Settings:
    """A real backend computes as it does: its records carry the model mode it follows
    (torch: float32 opmath for narrow dtypes, like ``upcast``; jax: ``per-op``)."""
    mode = {"torch": "upcast", "jax": "per-op"}.get(s.backend, s.mode)
    return s if mode == s.mode else replace(s, mode=mode)


def run_sweep(s: Settings, with_rows: bool = True, progress=None, jobs: int = 1,
              scheduler: str | None = None) -> SweepResult:
    """The whole audit for a selection: key points, and (for sweep) the grid.

    The grid is evaluated in chunks; ``s.keep`` rows (evenly spread, both ends included; None:
    all) are kept, and the worst errors are reduced over every point. ``progress(n)`` is called
    as each chunk of n points is done. ``jobs`` > 1 spreads the chunks over a process pool and
    ``scheduler`` over a Dask cluster; the result is the same either way.
    """
    s = native(s)
    backend = backends.get(s.backend, s.device)
    notes: list[str] = []
    if backend is not None:
        missing = backend.missing(s.formulas)
        if missing:
            notes.append(f"{backend.name} has no real counterpart of {', '.join(missing)}: not audited "
                         f"with --backend {backend.name}")
    kps = keypoints.keypoints(s.dtypes, s.mode, s.formulas, s.eps, s.labels, s.thresholds, backend, notes,
                              s.grad, jobs=1 if scheduler else jobs)
    result = SweepResult(s, kps)
    if with_rows:
        for d in s.dtypes:
            n = grid_size(s, d)
            keep = None if s.keep is None else set(sample_indices(n, s.keep))
            try:
                _audit_grid(s, d, n, keep, result, jobs, scheduler, progress)
            except backends.Unsupported as e:
                notes.append(f"{d}: grid not audited: {e}")
    result.notes = list(dict.fromkeys(notes))
    return result


def check_rows(xs: Sequence[float], s: Settings) -> tuple[list[Row], dict[tuple, float]]:
    """Rows for a few single logits across the selected dtypes (the `check` command).

    Also returns the exact values at the logits as given (before rounding to any narrower
    dtype), keyed by (x, quantity, formula, eps, label).
    """
    arr = np.asarray(xs, dtype=np.float64)
    rows: list[Row] = []
    s = native(s)
    backend = backends.get(s.backend, s.device)
    for d in s.dtypes:
        try:
            rows += rows_for_dtype(s, d, arr, backend=backend)
        except backends.Unsupported:
            continue  # the dtype's column stays empty
    given = rows_for_dtype(s, "float64", arr)
    exact = {(r.x, r.quantity, r.formula, r.eps, r.label): r.exact for r in given}
    return rows, exact
