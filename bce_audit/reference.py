"""The mpmath baseline: exact values at the exact value of the dtype-rounded input.

The working precision belongs to the computation, not to the process: each thread computes in
an mpmath context of its own (`context`), held at ``PREC`` bits, so threads computing side by
side (a Dask worker's) never change each other's precision, and mpmath's global ``mp`` is never
touched. Values from it stay in it: arithmetic on them is at ``PREC`` wherever it is written.
128 bits is twice the widest significand audited (x87 longdouble, 64 bits), so every exact
value here is far more accurate than any ULP it is compared against.

>>> from mpmath import mp
>>> before = mp.prec
>>> float(exact_bce(to_mpf(0.0), 1))  # ln 2
0.6931471805599453
>>> mp.prec == before
True
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bce_audit import dtypes
from bce_audit.formulas import Clip

if TYPE_CHECKING:  # mpmath is imported by the first computation, not by the package (0.1 s)
    from mpmath import MPContext, mpf

PREC = 128  # bits; at least twice the widest audited significand (longdouble: 64)

_THREAD = threading.local()
_WARM = threading.Lock()
_warmed = False


def context() -> MPContext:
    """This thread's mpmath context, at ``PREC`` bits (functions here scope other precisions)."""
    ctx = getattr(_THREAD, "ctx", None)
    if ctx is None:
        _warm()
        from mpmath import MPContext

        ctx = _THREAD.ctx = MPContext()
        ctx.prec = PREC
    return ctx


def _warm() -> None:
    """mpmath caches ln 2 and pi process-wide, and extends the cache in two steps that another
    thread can see half done. Filled once, by the first thread to ask and before any other
    computes, past any precision the baseline asks for (exp of the largest longdouble works at
    about PREC + 16400 bits), it is only ever read afterwards."""
    global _warmed
    if _warmed:
        return
    with _WARM:
        if not _warmed:
            from mpmath.libmp import ln2_fixed, pi_fixed

            ln2_fixed(1 << 15)
            pi_fixed(1 << 15)
            _warmed = True


def to_mpf(v) -> mpf:
    """Exact mpf of a finite dtype value (no decimal round trip)."""
    ctx = context()
    with ctx.workprec(PREC):
        if isinstance(v, np.longdouble):
            fr = dtypes.to_fraction(v)
            return ctx.mpf((fr.numerator, -(fr.denominator.bit_length() - 1)))
        return ctx.mpf(float(v))


def softplus(t: mpf) -> mpf:
    """``log(1 + exp(t))`` without cancellation at either tail (at this thread's precision)."""
    ctx = context()
    t = ctx.convert(t)
    if t > 0:
        return t + ctx.log1p(ctx.exp(-t))
    return ctx.log1p(ctx.exp(t))


def exact_sigmoid(x: mpf, prec: int = PREC) -> mpf:
    ctx = context()
    with ctx.workprec(prec):
        x = ctx.convert(x)
        return 1 / (1 + ctx.exp(-x)) if x >= 0 else ctx.exp(x) / (1 + ctx.exp(x))


def exact_bce(x: mpf, label: int, prec: int = PREC) -> mpf:
    """``y*softplus(-x) + (1-y)*softplus(x)`` for a 0/1 label."""
    ctx = context()
    with ctx.workprec(prec):
        x = ctx.convert(x)
        return softplus(-x) if label == 1 else softplus(x)


@dataclass(frozen=True)
class Exact:
    """Everything exact about one input: x, sigmoid and both softplus terms."""

    x: mpf
    p: mpf        # sigmoid(x)
    q: mpf        # 1 - sigmoid(x) = sigmoid(-x), without cancellation
    sp_neg: mpf   # softplus(-x) = BCE for label 1
    sp_pos: mpf   # softplus(x)  = BCE for label 0

    def bce(self, label: int) -> mpf:
        return self.sp_neg if label == 1 else self.sp_pos


def exact(v, prec: int = PREC) -> Exact:
    """The baseline at one dtype value v, computed once and shared by every formula and label."""
    ctx = context()
    with ctx.workprec(prec):
        x = to_mpf(v)
        sp_neg, sp_pos = softplus(-x), softplus(x)
        # sigmoid(x) = exp(-softplus(-x)): one exp each, no cancellation.
        return Exact(x, ctx.exp(-sp_neg), ctx.exp(-sp_pos), sp_neg, sp_pos)


def clipped_exact(e: Exact, label: int, clip: Clip, lo, hi, shift, prec: int = PREC) -> mpf:
    """A clipping formula evaluated in exact arithmetic on the exact sigmoid.

    ``lo``, ``hi`` and ``shift`` are the dtype values the framework really uses (or None), so
    the difference from the exact BCE is the part of the error the clipping causes.
    """
    ctx = context()
    with ctx.workprec(prec):
        p, q = ctx.convert(e.p), ctx.convert(e.q)
        clipped = False
        if lo is not None:
            mlo, mhi = to_mpf(lo), to_mpf(hi)
            if p < mlo:
                p, q, clipped = mlo, 1 - mlo, True
            elif p > mhi:
                p, q, clipped = mhi, 1 - mhi, True
        s = to_mpf(shift) if shift is not None else ctx.mpf(0)
        t, other = (p, q) if label == 1 else (q, p)
        if not clipped and s == 0:
            log_t = -ctx.convert(e.bce(label))  # log(sigmoid(+-x)) = -softplus(-+x), no cancellation
        elif t + s <= 0:
            log_t = ctx.ninf
        elif t < 0.5:
            log_t = ctx.log(t + s)
        else:  # t = 1 - other: log1p keeps the digits that log(1 - tiny) would lose
            log_t = ctx.log1p(s - other)
        if clip.log_floor is not None:
            log_t = max(log_t, ctx.mpf(clip.log_floor))
        return -log_t
