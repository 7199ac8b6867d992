"""Grid x dtypes x eps x formulas -> plain result records (no printing, no rich).

The exact baseline is computed once per distinct dtype-rounded input and shared by every
formula, label and eps: BCE for both labels and the sigmoid all come from one `reference.exact`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from mpmath import mp

from bce_audit import backends, dtypes, formulas, gradients, keypoints, metrics, reference
from bce_audit.formulas import Evaluator

LABELS = ("1", "0", "both")
SPACINGS = ("lin", "log")
DEFAULT_RANGE = (-40.0, 40.0)
DEFAULT_POINTS = 161
DEFAULT_EPS = (1e-7,)
DEFAULT_THRESHOLDS = (1e-3, 1e-2)
MAX_POINTS = 1_000_000


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
            "grad": self.grad,
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


def grid(lo: float, hi: float, points: int, step: float | None, spacing: str) -> np.ndarray:
    """The decimal input grid (float64), before any rounding to a dtype."""
    if step is not None:
        n = math.floor((hi - lo) / step + 1e-9) + 1
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


def rows_for_dtype(s: Settings, dtype: str, xs: np.ndarray, basics: bool = True,
                   backend=None) -> list[Row]:
    """Every row of one dtype: the sigmoid and round trip (``basics``), then each formula.

    With a real ``backend`` its ops replace the models (formulas it lacks are left out).
    """
    info = dtypes.get(dtype)
    ev = Evaluator(dtype, s.mode, backend.ops() if backend else None)
    where = backend.label if backend else "numpy"
    xd = ev.arr(xs)
    cache: dict[float, reference.Exact] = {}
    exacts = []
    for v in xd:
        key = v.item() if info.bits <= 64 else str(v)
        if key not in cache and np.isfinite(v):
            cache[key] = reference.exact(v)
        exacts.append(cache.get(key))
    rows: list[Row] = []

    def add(i, quantity, formula, eps, label, value, exact, clip=None):
        v = value
        err = metrics.errors(v, exact, info) if exact is not None else metrics.NONFINITE_NAN
        extra = {}
        if clip is not None:
            with mp.workprec(reference.PREC):
                extra = {
                    "clipped_exact": _f(clip),
                    "clip_rel": _f(abs(clip - exact) / exact) if exact != 0 else 0.0,
                    "round_ulp": metrics.errors(v, clip, info).ulp,
                }
        rows.append(Row(dtype, s.mode, _f(xs[i]), _f(xd[i]), quantity, formula, eps, label,
                        _f(v), _f(exact) if exact is not None else math.nan,
                        err.abs, err.rel, err.ulp, err.bits, **extra, backend=where))

    if basics:
        sig = formulas.evaluate_sigmoid(xd, ev)
        rt = formulas.evaluate_roundtrip(xd, ev)
        for i, e in enumerate(exacts):
            add(i, "sigmoid", None, None, None, sig[i], e.p if e else None)
            add(i, "roundtrip", None, None, None, rt[i], e.x if e else None)

    for name in s.formulas:
        f = formulas.get(name)
        if backend is not None and f.kind == "bce":
            f = backend.formula(name)
            if f is None:
                continue
        if f.kind != "bce":  # a user sigmoid or logit: audited through the round trip
            uev = Evaluator(dtype, s.mode, f.ops)
            usig = formulas.evaluate_sigmoid(xd, uev)
            urt = formulas.evaluate_roundtrip(xd, uev)
            for i, e in enumerate(exacts):
                if f.kind == "sigmoid":
                    add(i, "sigmoid", name, None, None, usig[i], e.p if e else None)
                add(i, "roundtrip", name, None, None, urt[i], e.x if e else None)
            continue
        for eps in s.eps if f.uses_eps else (None,):
            clip_args = keypoints.clip_args(f, eps, ev) if f.clip is not None else None
            for label in s.labels:
                values = keypoints.loss_fn(f, eps, label, ev)(xd)
                for i, e in enumerate(exacts):
                    lab_exact = None if e is None else e.bce(1 if label == "pair" else label)
                    clip = None
                    if clip_args is not None and e is not None:
                        clip = _clipped(e, label, f, clip_args)
                    add(i, "bce", name, eps, label, values[i], lab_exact, clip)
            if s.grad and gradients.has_grad(name, backend):
                for label in (lab for lab in s.labels if lab != "pair"):
                    gv = gradients.grad_fn(name, eps, label, ev, backend)(xd)
                    for i, e in enumerate(exacts):
                        add(i, "grad", name, eps, label, gv[i],
                            None if e is None else gradients.exact_grad(e, label))
    return rows


def _clipped(e: reference.Exact, label, f: formulas.Formula, clip_args):
    lo, hi, shift = clip_args
    if label != "pair":
        return reference.clipped_exact(e, label, f.clip, lo, hi, shift)
    # the pair at a is (BCE(-a, 0) + BCE(a, 1)) / 2; by symmetry BCE(-a, 0) has p -> 1 - p
    mirrored = reference.Exact(-e.x, e.q, e.p, e.sp_pos, e.sp_neg)
    with mp.workprec(reference.PREC):
        return (reference.clipped_exact(mirrored, 0, f.clip, lo, hi, shift)
                + reference.clipped_exact(e, 1, f.clip, lo, hi, shift)) / 2


def worst_of(rows: Sequence[Row]) -> list[Worst]:
    """Per (dtype, quantity, formula, eps, label): the largest finite error and its x."""
    groups: dict[tuple, list[Row]] = {}
    for r in rows:
        groups.setdefault((r.dtype, r.mode, r.quantity, r.formula, r.eps, str(r.label)), []).append(r)
    out = []
    for rs in groups.values():
        finite = [r for r in rs if math.isfinite(r.value)]
        nonfinite = len(rs) - len(finite)
        top = max(finite, key=lambda r: r.ulp_err) if finite else None
        r0 = rs[0]
        clipped = [r for r in finite if r.clip_rel is not None]
        out.append(Worst(
            r0.dtype, r0.mode, r0.quantity, r0.formula, r0.eps, r0.label,
            top.ulp_err if top else math.nan,
            max((r.rel_err for r in finite), default=math.nan),
            top.bits if top else math.nan,
            top.x if top else None, nonfinite, len(rs),
            max((r.clip_rel for r in clipped), default=None),
            max((r.round_ulp for r in clipped), default=None),
        ))
    return out


def native(s: Settings) -> Settings:
    """A real backend computes as it does: its records carry the model mode it follows
    (torch: float32 opmath for narrow dtypes, like ``upcast``; jax: ``per-op``)."""
    mode = {"torch": "upcast", "jax": "per-op"}.get(s.backend, s.mode)
    return s if mode == s.mode else replace(s, mode=mode)


def run_sweep(s: Settings, with_rows: bool = True) -> SweepResult:
    """The whole audit for a selection: key points, and (for sweep) the grid rows."""
    s = native(s)
    backend = backends.get(s.backend, s.device)
    notes: list[str] = []
    if backend is not None:
        missing = backend.missing(s.formulas)
        if missing:
            notes.append(f"{backend.name} has no real counterpart of {', '.join(missing)}: not audited "
                         f"with --backend {backend.name}")
    kps = keypoints.keypoints(s.dtypes, s.mode, s.formulas, s.eps, s.labels, s.thresholds, backend, notes,
                              s.grad)
    result = SweepResult(s, kps)
    if with_rows:
        xs = grid(*s.range, s.points, s.step, s.spacing)
        for d in s.dtypes:
            try:
                result.rows += rows_for_dtype(s, d, xs, backend=backend)
            except backends.Unsupported as e:
                notes.append(f"{d}: grid not audited: {e}")
        result.worst = worst_of(result.rows)
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
