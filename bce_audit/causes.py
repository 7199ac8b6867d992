"""Why a key point is where it is: its formula run once more at its x, watching each op.

`Tracer` is an `Evaluator` that notes what its framework-level ops did (a sigmoid that
rounded to 1, an exp that underflowed or was flushed, a clip that bound, a log of exactly 1,
a backward pass's division by 0 or reciprocal that overflowed, a clamp that bound), and
`explain` turns the notes of one key point into a one-line cause: "sigmoid rounds to 1",
"clip at 1-eps", "exp(-|x|) flushed to 0", "1/p overflows". Nothing here is keyed on numbers:
the cause is what the arithmetic did at that x, in that dtype and mode; where it saw nothing
that explains the key point, the cause says so (`UNTRACED`) rather than guess.

>>> import numpy as np
>>> explain_roundtrip("roundtrip_overflow", "float32", "per-op", 16.635532, None)
'sigmoid rounds to 1'
>>> explain_bce("bce_zero", "float16", "tf", "keras3", 1e-7, 1, 8.0, 0.0)
'1 - eps rounds to 1'
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bce_audit import dtypes, formulas, gradients
from bce_audit.formulas import Evaluator, Formula, Ops
from bce_audit.records import Label

# what each note says, in the words of the cause
WORDS = {
    "sigmoid=1": "sigmoid rounds to 1",
    "sigmoid=0": "sigmoid rounds to 0",
    "exp=inf": "exp(-x) overflows",
    "exp=0": "exp(-|x|) underflows",
    "exp=0 flushed": "exp(-|x|) flushed to 0",
    "log1p=0": "log(1+e) rounds to 0",
    "logsig=x": "log(1+e^x) lost beside x",
    "1-eps=1": "1 - eps rounds to 1",
    "clip>hi": "clip at 1-eps",
    "clip<lo": "clip at eps",
    "p=hi": "clip at 1-eps",
    "p=lo": "clip at eps",
    "log(0)": "log(0) = -inf",
    "log(1)": "log(1) = 0",
    "opmath=0": "float32 opmath result rounds to 0",
    "softplus=0": "softplus underflows",
    "softplus=0 flushed": "softplus flushed to 0",
}


DIVIDED = "÷ "  # the notes of a backward pass's divisions (`Tracer.divided`): the words follow
CLAMPED = "max "  # and of its clamps (`Tracer.clamped`)
UNTRACED = "cause not traced"  # where the tracer saw nothing that explains the key point

SHOWN = 5e-4  # half a unit in the 4th digit: a rounding of 1 - eps that a 4-digit floor shows


class Tracer(Evaluator):
    """An Evaluator that notes, in order, what its ops did (keys of `WORDS`)."""

    def __init__(self, dtype: str, mode: str, ops: Ops | None = None, eps: float | None = None,
                 notes: list[str] | None = None):
        super().__init__(dtype, mode, ops)
        self.eps = eps
        self.notes: list[str] = [] if notes is None else notes
        self.own_eps = True  # every clip bound came from --eps (sklearn's is finfo(dtype).eps)
        self.one_minus_eps = ""  # 1 - eps as the dtype holds it, where that is not 1 - eps itself

    def note(self, key: str) -> None:
        if key not in self.notes:
            self.notes.append(key)

    def derived(self, dtype: str, mode: str) -> Evaluator:
        return _Derived(self, dtype, mode)

    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        out = super().sigmoid(x)
        a = np.asarray(out)
        if (a == 1).any():
            self.note("sigmoid=1")
        if (a == 0).any():
            self.note("sigmoid=0")
        return out

    def exp(self, a: np.ndarray) -> np.ndarray:
        out = super().exp(a)
        arg, res = np.asarray(a), np.asarray(out)
        with np.errstate(all="ignore"):
            if (np.isfinite(arg) & ~np.isfinite(res)).any():  # inf, or nan in a format without inf
                self.note("exp=inf")
            under = np.isfinite(arg) & (res == 0)
            if under.any():
                # what exp would give without flushing, in float64 (a subnormal there)
                plain = np.exp(arg[under].astype(np.float64)) if under.ndim else np.exp(np.float64(arg))
                tiny = float(self.info.smallest_subnormal) / 2
                self.note("exp=0 flushed" if self.ftz and np.any(plain > tiny) else "exp=0")
        return out

    def remembered(self, name: str, fn):
        inner = super().remembered(name, fn)
        if name != "optax-softplus":
            return inner

        def watched(a: np.ndarray) -> np.ndarray:
            out = inner(a)
            self._softplus(np.asarray(a), np.asarray(out))
            return out

        return watched

    def compiled(self, name: str, fn, *args: np.ndarray) -> np.ndarray:
        out = super().compiled(name, fn, *args)
        if name == "optax-grad":
            x, y = args
            self._optax_grad(np.asarray(x), np.asarray(y), np.asarray(out))
        return out

    def _optax_grad(self, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        """optax's gradient under XLA (`xla.optax_bce_grad`): ``(1-y)*exp(d(x)) - y*exp(d(-x))``,
        ``d(t) = t - softplus(t)``; a 0 where float64's exp(d) is not is its exp underflowing, or
        flushed where the dtype holds it."""
        with np.errstate(all="ignore"):
            x64, y64 = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
            t = np.where(y64 == 1, -x64, x64)
            plain = np.exp(t - np.logaddexp(t, 0.0))
            zero = (plain > 0) & (np.asarray(out, dtype=np.float64) == 0)
            if zero.any():
                held = plain[zero] > float(self.info.smallest_subnormal) / 2
                self.note("exp=0 flushed" if self.ftz and np.any(held) else "exp=0")

    def _softplus(self, x: np.ndarray, out: np.ndarray) -> None:
        """optax under XLA (`xla.optax_softplus`): softplus(-x) and softplus(x), watched as
        `exp` is: a 0 where float64 has a softplus the dtype holds is flushed, else underflows."""
        with np.errstate(all="ignore"):
            x64 = np.asarray(x, dtype=np.float64)
            plain = np.stack([np.logaddexp(-x64, 0.0), np.logaddexp(x64, 0.0)])
            zero = np.isfinite(plain) & (plain > 0) & (np.asarray(out, dtype=np.float64) == 0)
            if zero.any():
                held = plain[zero] > float(self.info.smallest_subnormal) / 2
                self.note("softplus=0 flushed" if self.ftz and np.any(held) else "softplus=0")

    def log(self, a: np.ndarray) -> np.ndarray:
        self._logs(np.asarray(a))
        return super().log(a)

    def log1p(self, a: np.ndarray) -> np.ndarray:
        out = super().log1p(a)
        arg, res = np.asarray(a), np.asarray(out)
        if ((arg != 0) & (res == 0)).any():
            self.note("log1p=0")
        if (arg == -1).any():
            self.note("log(0)")
        return out

    def log_sigmoid(self, x: np.ndarray) -> np.ndarray:
        out = super().log_sigmoid(x)
        if ((np.asarray(out) == np.asarray(x)) & (np.asarray(x) < 0)).any():
            self.note("logsig=x")
        return out

    def np_log(self, a: np.ndarray) -> np.ndarray:
        self._logs(np.asarray(a))
        return super().np_log(a)

    def _logs(self, arg: np.ndarray) -> None:
        if (arg == 0).any():
            self.note("log(0)")
        if (arg == 1).any():
            self.note("log(1)")

    def divided(self, out: np.ndarray, dividend: np.ndarray, divisor: np.ndarray, name: str,
                quotient: str = "") -> np.ndarray:
        res, num, den = np.asarray(out), np.asarray(dividend), np.asarray(divisor)
        with np.errstate(all="ignore"):
            if ((den == 0) & (num == 0)).any():
                self.note(f"{DIVIDED}{quotient or _inverse(name)} = 0/0")
            elif ((den == 0) & (num != 0)).any():
                self.note(f"{DIVIDED}division by {name} = 0")
            elif ((den != 0) & np.isfinite(den) & np.isfinite(num) & ~np.isfinite(res)).any():
                self.note(f"{DIVIDED}{quotient or _inverse(name)} overflows")
        return out

    def kernel(self, fn, *args: np.ndarray) -> np.ndarray:
        out = super().kernel(fn, *args)
        if self.mode == "upcast" and self.info.narrow:  # its float32 result, rounded once
            wide = np.asarray(fn(Evaluator("float32", "upcast"), *(np.asarray(a).astype(np.float32)
                                                                    for a in args)))
            if ((wide != 0) & np.isfinite(wide) & (np.asarray(out) == 0)).any():
                self.note("opmath=0")
        return out

    def clamped(self, out: np.ndarray, a: np.ndarray, name: str) -> np.ndarray:
        if (np.asarray(a) < np.asarray(out)).any():
            self.note(f"{CLAMPED}{name}")
        return out

    def clip(self, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        if self.eps is None or np.asarray(lo) != self.c(self.eps):
            self.own_eps = False
        self._bounds(np.asarray(p), np.asarray(lo), np.asarray(hi))
        return super().clip(p, lo, hi)

    def np_clip(self, p: np.ndarray, lo: float, hi: float) -> np.ndarray:
        out = super().np_clip(p, lo, hi)
        dt = np.asarray(out).dtype
        self._bounds(np.asarray(p).astype(dt), np.asarray(lo).astype(dt), np.asarray(hi).astype(dt))
        return out

    def _bounds(self, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        with np.errstate(all="ignore"):
            held = (np.asarray(1.0).astype(lo.dtype) - lo)[()]  # 1 - eps in the dtype
        gap = 1.0 - float(held)  # what the dtype makes of 1 - eps, against eps itself:
        if 0 < held < 1 and abs(gap - float(lo)) > SHOWN * float(lo) and not self.one_minus_eps:
            self.one_minus_eps = _one_minus(held, lo.dtype)
        if hi == 1:
            if (p >= hi).any():
                self.note("1-eps=1")
        elif (p > hi).any():
            self.note("clip>hi")
        elif (p == hi).any():
            self.note("p=hi")
        if (p < lo).any():
            self.note("clip<lo")
        elif (p == lo).any():
            self.note("p=lo")


class _Derived(Tracer):
    """A Tracer for arithmetic handed to another dtype: its notes and clip bounds are its parent's."""

    def __init__(self, parent: Tracer, dtype: str, mode: str):
        super().__init__(dtype, mode, eps=parent.eps, notes=parent.notes)
        self.parent = parent

    def clip(self, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        out = super().clip(p, lo, hi)
        self.parent.own_eps = self.parent.own_eps and self.own_eps
        return out


def _one_minus(held, dtype) -> str:
    """A value just below 1 as the dtype holds it: ``1-2^-23`` where the gap is a power of
    two, else its shortest decimal."""
    gap = 1 - dtypes.to_fraction(held)
    if gap.numerator == 1 and gap.denominator & (gap.denominator - 1) == 0:
        return f"1-2^-{gap.denominator.bit_length() - 1}"
    name = next(n for n in dtypes.NAMES if dtypes.get(n).dtype == np.dtype(dtype))
    return dtypes.shortest(held, name)


def _inverse(name: str) -> str:
    return f"1/{name}" if " " not in name else f"1/({name})"


def _noted(notes: Sequence[str], prefix: str) -> str | None:
    """The words of the first note that starts with ``prefix`` (`DIVIDED`, `CLAMPED`)."""
    return next((n[len(prefix):] for n in notes if n.startswith(prefix)), None)


def _first(notes: Sequence[str], keys: Sequence[str]) -> str | None:
    for k in keys:
        if k in notes:
            return k
    return None


def _clip_words(key: str, t: Tracer, floor: bool = False) -> str:
    """A clip's words; where the dtype holds 1 - eps as another number, that number (it is
    what the upper bound, and the label-0 floor's log(1 - eps), really use)."""
    words = WORDS[key]
    if t.one_minus_eps and key in ("clip>hi", "p=hi"):
        words += f" = {t.one_minus_eps}"
    elif t.one_minus_eps and floor and key in ("clip<lo", "p=lo"):
        words += f"; 1-eps = {t.one_minus_eps}"
    return words if t.own_eps else words.replace("eps", "finfo.eps")


def _steps(x, below: float, info: dtypes.DtypeInfo) -> float:
    """How many steps of the dtype's grid just below ``below`` (1 or 1/2) separate x from it."""
    work = np.longdouble if info.bits > 64 else np.float64
    gap = work(info.eps) / 2 * work(below)
    return float(abs(work(below) - work(x)) / gap)


def explain_roundtrip(name: str, dtype: str, mode: str, x: float, ops: Ops | None) -> str:
    """The cause of a round-trip key point at x (mode: the one it computes in, not native)."""
    ops = None if ops == Ops() else ops  # no replacement: the built-in ops, flushing where the mode does
    t = Tracer(dtype, mode, ops)
    v = t.arr([x])
    formulas.evaluate_roundtrip(v, t)
    notes = t.notes
    if name == "roundtrip_overflow":
        key = _first(notes, ("sigmoid=1", "exp=inf", "log(0)"))
        return WORDS[key] if key else UNTRACED
    if name == "roundtrip_underflow":
        if "exp=inf" in notes:
            return "exp(-x) overflows, sigmoid = 0"
        key = _first(notes, ("sigmoid=0", "log(0)"))
        return WORDS[key] if key else UNTRACED
    p = np.asarray(formulas.evaluate_sigmoid(v, Tracer(dtype, mode, ops)))[0]
    info = dtypes.get(dtype)
    if name == "roundtrip_rel_err_onset":
        n = _steps(p, 1.0, info)
        return "sigmoid rounds to 1" if n == 0 else f"sigmoid {n:.0f} steps below 1"
    if name == "roundtrip_small_x_limit":
        n = _steps(p, 0.5, info)
        return "sigmoid rounds to 1/2" if n == 0 else f"sigmoid {n:.0f} steps above 1/2"
    return ""


def _model(formula: str) -> Formula:
    return formulas.FORMULAS.get(formula) or formulas.get(formula)


def explain_bce(name: str, dtype: str, mode: str, formula: str, eps: float | None, label: Label,
                x: float, value: float) -> str:
    """The cause of a BCE key point (floor, ceiling, zero, non-finite) of one formula at x,
    from the model of that formula (a real backend's key points are explained by its model)."""
    f = _model(formula)
    t = Tracer(dtype, mode, eps=eps)
    v = t.arr([x])
    # a floor or ceiling holds from x to the end of the range: watch the end too
    end = [v]
    if name in ("bce_floor", "bce_ceiling"):
        top = t.arr([dtypes.get(dtype).finfo.max])
        end.append(top if x > 0 else -top)
    halves = []
    for at in end:
        for y, a in (((0, -at), (1, at)) if label == "pair" else ((label, at),)):
            halves.append(np.asarray(f(a, np.full(1, y), eps, t)))
    notes = t.notes
    to_one = label != 0  # label 1 and the pair improve as sigmoid -> 1
    shift = f.clip is not None and f.clip.shift
    if name == "bce_zero":
        if "1-eps=1" in notes:
            return WORDS["1-eps=1"]
        if "log(1)" in notes and shift:
            return "p + eps rounds to 1" if to_one else "1 - p + eps rounds to 1"
        key = _first(notes, ("exp=0 flushed", "exp=0", "log1p=0", "logsig=x",
                             "sigmoid=1" if to_one else "sigmoid=0", "opmath=0", "softplus=0 flushed",
                             "softplus=0"))
        if key:
            return WORDS[key]
        if "log(1)" in notes:
            return "sigmoid rounds to 1" if to_one else "1 - p rounds to 1"
        return UNTRACED
    if name == "bce_floor":
        key = _first(notes, ("clip>hi", "p=hi", "1-eps=1") if to_one else ("clip<lo", "p=lo"))
        if key:
            return _clip_words(key, t, floor=True)
        key = _first(notes, ("sigmoid=1" if to_one else "sigmoid=0", "exp=0 flushed", "exp=0"))
        return WORDS[key] if key else UNTRACED
    if name == "bce_ceiling":
        key = _first(notes, ("clip<lo", "p=lo") if to_one else ("clip>hi", "p=hi", "1-eps=1"))
        clamp = f.clip.log_floor if f.clip is not None else None
        if key == "1-eps=1" and clamp is not None:
            return f"1 - eps rounds to 1, log clamped at {clamp:g}"
        if key:
            return _clip_words(key, t)
        if clamp is not None:
            return f"log clamped at {clamp:g}"
        key = _first(notes, ("sigmoid=0" if to_one else "sigmoid=1", "exp=inf"))
        return WORDS[key] if key else UNTRACED
    if name == "bce_nonfinite":
        if "exp=inf" in notes:
            return WORDS["exp=inf"]
        where = _first(notes, ("1-eps=1", "sigmoid=1", "sigmoid=0"))
        if "log(0)" in notes:
            log = "0 * log(0) = nan" if np.isnan(value) else "log(0) = -inf"
            return f"{WORDS[where]}, {log}" if where else log
        if where == "1-eps=1" and "log(0)" not in notes:
            return f"{WORDS[where]}, 1 - p = 0"
        if label == "pair" and all(np.isfinite(h).all() for h in halves):
            return "the pair's sum overflows"
        return WORDS[where] if where else UNTRACED
    return ""


def explain_grad(name: str, dtype: str, mode: str, formula: str, eps: float | None, label: int,
                 x: float, value: float) -> str:
    """The cause of a gradient key point (dead zone, vanishing, non-finite), from the model."""
    t = Tracer(dtype, mode, eps=eps)
    v = t.arr([x])
    if formula in gradients.MODELS:
        gradients.grad(formula, v, np.full(1, label), eps, t)
    notes = t.notes
    to_one = x > 0
    if name == "grad_nonfinite":
        division = _noted(notes, DIVIDED)
        if division is not None:  # an inf times a label's weight of 0 is nan
            has_inf = bool(np.isinf(t.arr([np.inf]))[0])  # (float8_e4m3fn has none: 1/0 is nan)
            nan = np.isnan(value) and "0/0" not in division and has_inf
            return division + (", 0 * inf = nan" if nan else "")
        key = _first(notes, ("exp=inf", "log(0)"))
        return WORDS[key] if key else UNTRACED
    key = _first(notes, ("clip>hi", "1-eps=1", "sigmoid=1") if to_one else ("clip<lo", "sigmoid=0"))
    if key is not None:
        return _clip_words(key, t) if key.startswith("clip") else WORDS[key]
    clamp = _noted(notes, CLAMPED)
    if clamp is not None:
        return clamp
    key = _first(notes, ("exp=0 flushed", "exp=0", "log1p=0", "opmath=0"))
    return WORDS[key] if key else UNTRACED
