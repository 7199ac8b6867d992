"""A fast exact reference for dtypes of 32 bits or fewer: vectorised float64, with a stated bound.

Every input of such a dtype is exactly a float64, and the values the audit needs (softplus of
both signs, sigmoid and its complement) are computed with formulas free of cancellation:

    softplus(t) = t + log1p(exp(-t))  (t > 0),  log1p(exp(t))  (t <= 0)
    sigmoid(t)  = 1 / (1 + exp(-t))   (t >= 0), exp(t) / (1 + exp(t))  (t < 0)

Each is a few correctly-rounded-to-1-ULP libm calls, so wherever the exact value is a normal
float64 the result is within ``BOUND`` (relative) of it: tests check this against mpmath on
more than 10^5 inputs over both tails, the subnormals and zero. That is 2^26 times finer than
an ULP of float32, so the errors measured against it are those of the mpmath baseline to
within 2^-26 ULP. Where the exact value underflows float64 (below ``TINY``) it is far below
the smallest subnormal of every dtype this path serves; there its natural logarithm ``log_*``
(``-|t|`` to within e^-700) carries it, and the error measures are computed from that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bce_audit import compiled
from bce_audit.dtypes import DtypeInfo

BOUND = 2.0 ** -49   # 1.8e-15: relative error bound of every normal value returned
TINY = float(np.finfo(np.float64).tiny)  # 2.2e-308: below it, a value is flagged as underflowed


def serves(info: DtypeInfo) -> bool:
    """The fast path is proved for dtypes whose values and exact results fit float64 this way."""
    return info.bits <= 32


def softplus(t: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(t > 0, t + np.log1p(np.exp(-np.abs(t))), np.log1p(np.exp(-np.abs(t))))


def sigmoid(t: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(t))
        return np.where(t >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class Exact64:
    """Exact values at many inputs at once (float64), as `reference.Exact` is at one."""

    x: np.ndarray
    sp_neg: np.ndarray  # softplus(-x): BCE for label 1
    sp_pos: np.ndarray  # softplus(x):  BCE for label 0
    p: np.ndarray       # sigmoid(x)
    q: np.ndarray       # sigmoid(-x) = 1 - p

    def bce(self, label: int) -> np.ndarray:
        return self.sp_neg if label == 1 else self.sp_pos

    def log_bce(self, label: int) -> np.ndarray:
        """log of the BCE where it underflows: softplus(-x) ~ exp(-x) for large x."""
        return self._negated("x") if label == 1 else self.x

    def grad(self, label: int) -> np.ndarray:
        """sigmoid(x) - y."""
        return self._negated("q") if label == 1 else self.p

    def _negated(self, name: str) -> np.ndarray:
        """-x or -q, made once (read-only): every series of a chunk asks for them."""
        memo = self.__dict__.setdefault("_neg", {})
        out = memo.get(name)
        if out is None:
            out = memo[name] = np.asarray(np.negative(getattr(self, name)))
            out.flags.writeable = False
        return out

    def log_grad_magnitude(self, label: int) -> np.ndarray:
        return self.log_bce(label)


def exact(x: np.ndarray) -> Exact64:
    """The exact values at dtype values x (converted to float64 exactly).

    Equal bit for bit to ``softplus(-x), softplus(x), sigmoid(x), sigmoid(-x)``: all four share
    one ``exp(-|x|)`` and one ``log1p`` of it (``softplus(-x)`` adds ``-x`` where it is positive).
    """
    xf = np.asarray(x).astype(np.float64)
    with np.errstate(all="ignore"):
        e = np.exp(-np.abs(xf))
        tail = np.log1p(e)
        one_e = 1.0 + e
        big, small = 1.0 / one_e, e / one_e  # sigmoid of +|x| and of -|x|
        return Exact64(xf, np.where(xf < 0, tail - xf, tail), np.where(xf > 0, xf + tail, tail),
                       np.where(xf >= 0, big, small), np.where(xf <= 0, big, small))


def errors(computed: np.ndarray, exact_: np.ndarray, log_exact: np.ndarray | None, info: DtypeInfo,
           complement: np.ndarray | None = None, below: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """abs, rel, ULP and bits of error of dtype values against exact float64 values, vectorised.

    ``log_exact`` (natural log of |exact|) is used where |exact| underflows float64; None means
    the exact values never do (a round trip, whose exact value is x itself). ``complement``:
    where |exact| >= 1/2 it is ``1 - complement`` (a sigmoid near 1), which float64 may round to
    1; the gap and the binade are then taken from the complement, which it keeps exactly.
    ``below``: where float64 rounded |exact| up onto a power of two, the exact value lies in
    the binade beneath it (where an ULP is half as wide).
    """
    c = np.asarray(computed).astype(np.float64)
    e = np.asarray(exact_, dtype=np.float64)
    sub = float(info.smallest_subnormal)
    with np.errstate(all="ignore"):
        diff = np.abs(c - e)
        mag = np.abs(e)
        _, k = np.frexp(mag)
        if complement is not None:
            # a sigmoid is < 1 for every finite argument, even where the complement underflows
            near_one = mag >= 0.5
            sc = c * np.sign(e)  # |E| = 1 - complement, so |c - E| = |(sign(E) c - 1) + complement|
            diff = np.where(near_one, np.abs((sc - 1.0) + complement), diff)
            k = np.where(near_one, 0, k)  # 1 - complement < 1: the binade [1/2, 1)
        if below is not None:
            k = np.where(below & (mag > 0), k - 1, k)
        k = np.where(mag == 0, info.minexp + 1, k)  # 0: the subnormal spacing
        ulp = np.ldexp(1.0, info.ulp_exponent(k - 1))
        rel = np.where(mag > 0, diff / mag, np.where(diff == 0, 0.0, np.inf))
        ulps = diff / ulp
        if log_exact is not None:
            under = (mag < TINY) & np.isfinite(c)
            if under.any():
                le = np.asarray(log_exact, dtype=np.float64)
                tiny_exact = np.exp(le)  # 0.0 or a float64 subnormal: what float(mpf) gives
                zero = c == 0
                diff_u = np.where(zero, tiny_exact, np.abs(c))
                rel_u = np.where(zero, 1.0, np.exp(np.log(np.abs(c)) - le))
                ulps_u = np.where(zero, np.exp(le - np.log(sub)), np.abs(c) / sub)
                diff = np.where(under, diff_u, diff)
                rel = np.where(under, rel_u, rel)
                ulps = np.where(under, ulps_u, ulps)
        bad_inf, bad_nan = np.isinf(c), np.isnan(c)
        diff = np.where(bad_inf, np.inf, np.where(bad_nan, np.nan, diff))
        rel = np.where(bad_inf, np.inf, np.where(bad_nan, np.nan, rel))
        ulps = np.where(bad_inf, np.inf, np.where(bad_nan, np.nan, ulps))
        bits = np.log2(1.0 + ulps)
    return diff, rel, ulps, bits


@dataclass(frozen=True)
class Scale:
    """The part of `errors` that depends only on the exact values, worked out once and reused by
    every computed column measured against them (`measure`): each formula and label that shares
    an exact column shares its ULPs, zeros and underflows."""

    exact: np.ndarray
    mag: np.ndarray
    inv_ulp: np.ndarray  # 1 / (the dtype's ULP at the exact value): a power of two, so exact
    log_exact: np.ndarray | None
    complement: np.ndarray | None
    zero: np.ndarray     # indices where |exact| is not > 0
    under: np.ndarray    # indices where |exact| underflows float64 (``log_exact`` carries it)
    sub: float           # the dtype's smallest subnormal

    def measure(self, computed: np.ndarray, rel: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """ULPs, relative and absolute errors of ``computed``, equal bit for bit to those of `errors`
        wherever ``computed`` is finite (elsewhere: don't care). ``rel=False`` skips the relative
        errors."""
        e, mag = self.exact, self.mag
        with np.errstate(all="ignore"):
            fused = compiled.measure(computed, e, self.inv_ulp, mag, self.complement, rel)
            if fused is not None:
                ulps, rels, diff = fused
            else:
                c = np.asarray(computed).astype(np.float64)
                diff = np.subtract(c, e)
                np.abs(diff, out=diff)
                if self.complement is not None:
                    near_one = mag >= 0.5
                    diff = np.where(near_one, np.abs((c * np.sign(e) - 1.0) + self.complement), diff)
                ulps = diff * self.inv_ulp  # = diff / ULP: scaling by a power of two rounds once
                rels = np.divide(diff, mag) if rel else None
            if rels is not None and self.zero.size:
                rels[self.zero] = np.where(diff[self.zero] == 0, 0.0, np.inf)
            if self.log_exact is not None and self.under.size:
                cu = np.asarray(computed)[self.under].astype(np.float64)
                finite = np.isfinite(cu)
                i, ci = self.under[finite], cu[finite]
                le = self.log_exact[i]
                zero = ci == 0
                ulps[i] = np.where(zero, np.exp(le - np.log(self.sub)), np.abs(ci) / self.sub)
                diff[i] = np.where(zero, np.exp(le), np.abs(ci))  # exp(le): what float(mpf) gives
                if rels is not None:
                    rels[i] = np.where(zero, 1.0, np.exp(np.log(np.abs(ci)) - le))
        return ulps, rels, diff


    def special(self) -> np.ndarray:
        """Where `measure` corrects the arithmetic it shares with every position (sorted): the
        zeros, and the underflows where ``log_exact`` carries them."""
        if self.log_exact is None or not self.under.size:
            return self.zero
        return np.union1d(self.zero, self.under)

    def at(self, idx: np.ndarray) -> Scale:
        """This scale at the positions ``idx`` only: its `measure` of the values there gives
        what `measure` of every value gives there (each measure is elementwise)."""
        mag = self.mag[idx]
        log_exact = None if self.log_exact is None else self.log_exact[idx]
        complement = None if self.complement is None else self.complement[idx]
        return Scale(self.exact[idx], mag, self.inv_ulp[idx], log_exact, complement,
                     np.flatnonzero(~(mag > 0)), np.flatnonzero(mag < TINY), self.sub)


def scale(exact_: np.ndarray, log_exact: np.ndarray | None, info: DtypeInfo,
          complement: np.ndarray | None = None, below: np.ndarray | None = None) -> Scale:
    """The `Scale` of an exact column (arguments as for `errors`)."""
    e = np.asarray(exact_, dtype=np.float64)
    fused = compiled.scale(e, complement is not None, below, info.minexp, info.nmant)
    if fused is not None:  # (the arithmetic below, in one pass)
        mag, inv_ulp = fused
    else:
        mag, inv_ulp = _scale(e, info, complement, below)
    le = None if log_exact is None else np.asarray(log_exact, dtype=np.float64)
    return Scale(e, mag, inv_ulp, le, complement, np.flatnonzero(~(mag > 0)), np.flatnonzero(mag < TINY),
                 float(info.smallest_subnormal))


def _scale(e: np.ndarray, info: DtypeInfo, complement: np.ndarray | None, below: np.ndarray | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """`scale`'s |exact| and inverse ULPs, in numpy."""
    mag = np.abs(e)
    _, k = np.frexp(mag)
    if complement is not None:
        k = np.where(mag >= 0.5, 0, k)
    if below is not None:
        k = np.where(below & (mag > 0), k - 1, k)
    zero = np.flatnonzero(~(mag > 0))
    if zero.size:  # where |exact| is 0 (not NaN): the subnormal spacing
        k = np.array(k)  # frexp's or where's own array (a copy of a 0-d one): set in place
        k.reshape(-1)[zero[mag.reshape(-1)[zero] == 0]] = info.minexp + 1
    return mag, np.ldexp(1.0, -info.ulp_exponent(k - 1))


def on_power_of_two(values: np.ndarray) -> np.ndarray:
    """Values that are exactly a power of two (where rounding may have crossed a binade)."""
    m, _ = np.frexp(np.abs(np.asarray(values, dtype=np.float64)))
    return m == 0.5


def ties(kind: str, label, x: np.ndarray, exact_: np.ndarray, complement: np.ndarray | None
         ) -> tuple[np.ndarray, np.ndarray]:
    """Where |exact| rounded onto a power of two: (known below it, still undecided).

    A sigmoid (or gradient) at 1/2 is below it exactly when its argument is negative; near 1
    the complement decides already. A BCE ``t + log1p(exp(-t))`` with t > 0 is below 2^k when
    ``(t - 2^k) + log1p(exp(-t)) < 0``, both terms exact enough to tell. Other ties are rare
    and left undecided, for the mpmath baseline.
    """
    mag = np.abs(np.asarray(exact_, dtype=np.float64))
    tie = on_power_of_two(mag) & np.isfinite(x)
    below = np.zeros(mag.shape, dtype=bool)
    if not tie.any():
        return below, tie
    if kind in ("sigmoid", "grad"):
        arg = x if (kind == "sigmoid" or label == 0) else -x  # p = sigmoid(arg) or q = sigmoid(-x)
        half = tie & (mag == 0.5)
        below |= half & (arg < 0)
        decided = half | (tie & (mag >= 0.5) & (complement is not None))  # near 1: the complement
        return below, tie & ~decided
    if kind == "bce":
        lab = 1 if label == "pair" else label
        t = -x if lab == 1 else x
        with np.errstate(all="ignore"):
            side = (t - mag) + np.log1p(np.exp(-np.abs(t)))
        pos = tie & (t > 0)
        below |= pos & (side < 0)
        return below, tie & ~pos
    return below, np.zeros(mag.shape, dtype=bool)  # the round trip's exact x is exact


def clipped(e: Exact64, label: int, clip, lo, hi, shift) -> np.ndarray:
    """`reference.clipped_exact`, vectorised: the clipping formula in exact arithmetic.

    Where p is clipped, t and 1 - t are the bounds: two logs of constants, not of the column.
    Unshifted and unclipped, log(t) is -softplus, exactly.
    """
    p, q = e.p, e.q
    s = float(shift) if shift is not None else 0.0
    t, other = (p, q) if label == 1 else (q, p)
    with np.errstate(all="ignore"):
        src = e.bce(label) if s == 0 else _log_shifted(t, other, s)
        bounds = None
        if lo is not None:
            lo_f, hi_f = float(lo), float(hi)  # dtype values: exact in float64, and so are 1 - them
            at = []  # log(t) where p is clipped to a bound: t and 1 - t are the bound and its complement
            for b in (lo_f, hi_f):
                pair = (b, 1.0 - b) if label == 1 else (1.0 - b, b)
                at.append(float(_log_shifted(np.array([pair[0]]), np.array([pair[1]]), s)[0]))
            bounds = (lo_f, hi_f, at[0], at[1])
        fused = compiled.clipped(src, s == 0, p, bounds, clip.log_floor)  # (what follows, in one pass)
        if fused is not None:
            return fused
        log_t = np.negative(src) if s == 0 else src
        if bounds is not None:
            for value, where in ((bounds[2], p < bounds[0]), (bounds[3], p > bounds[1])):
                if where.any():
                    log_t[where] = value
        if clip.log_floor is not None:
            log_t = np.maximum(log_t, clip.log_floor)
        if isinstance(log_t, np.ndarray):  # this call's own array
            return np.negative(log_t, out=log_t)
        return np.negative(log_t)


def _log_shifted(t: np.ndarray, other: np.ndarray, s: float) -> np.ndarray:
    """log(t + s), with t = 1 - other: log1p keeps the digits where t is near 1."""
    return np.where(t < 0.5, np.log(t + s), np.log1p(s - other))
