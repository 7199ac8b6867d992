"""Error measures, pure functions: absolute, relative, ULPs of the audited dtype, bits of error.

A ULP is the gap between consecutive values of the audited dtype at the *exact* value (the
subnormal spacing below the smallest normal), so "0.5 ULP" means correctly rounded.
Bits of error are ``log2(1 + ULPs)``: 0 for an exact result, 1 for one ULP off.
Non-finite results give inf (an infinity where a finite value was due) or nan, never a number.

>>> from mpmath import mpf
>>> from bce_audit import dtypes
>>> e = errors(1.0 + 2**-23, mpf(1), dtypes.get("float32"))
>>> (e.ulp, e.bits)
(1.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bce_audit.dtypes import DtypeInfo
from bce_audit.reference import PREC, context, to_mpf

if TYPE_CHECKING:
    from mpmath import mpf


@dataclass(frozen=True)
class Errors:
    abs: float
    rel: float
    ulp: float
    bits: float


NONFINITE_INF = Errors(math.inf, math.inf, math.inf, math.inf)
NONFINITE_NAN = Errors(math.nan, math.nan, math.nan, math.nan)


def ulp_of(exact: mpf, info: DtypeInfo, below_one: bool = False, below: bool = False) -> mpf:
    """The dtype's spacing at |exact|, as an exact power of two.

    ``below_one``: |exact| is 1 - (something positive) even if the working precision rounded it
    to 1, so it lies in the binade [1/2, 1). ``below``: |exact| is a power of two that the
    working precision reached from just beneath, so it lies in the binade under it.
    """
    ctx = context()
    with ctx.workprec(PREC):
        a = abs(ctx.convert(exact))
        if a == 0:
            e = info.minexp
        else:
            man, exp = a.man_exp
            e = exp + int(man).bit_length() - 1  # the binade; ulp_exponent clamps it to the normals
        if below_one and e >= 0:
            e = -1
        if below and a != 0 and a.man == 1:
            e -= 1
        return ctx.mpf((1, info.ulp_exponent(e)))


def bits(ulps: float) -> float:
    """Bits of error from ULPs: ``log2(1 + ulps)``."""
    return math.log2(1.0 + ulps) if math.isfinite(ulps) else ulps


def errors(computed, exact: mpf, info: DtypeInfo, complement: mpf | None = None,
           below: bool = False) -> Errors:
    """All four measures of one computed dtype value against its exact value.

    ``complement``: where |exact| >= 1/2 it equals 1 - complement (a sigmoid near 1), kept
    exactly even where 1 - complement rounds to 1 at the working precision. ``below``: see
    `ulp_of`.
    """
    c = float(computed) if not isinstance(computed, np.longdouble) else computed
    if np.isnan(c):
        return NONFINITE_NAN
    if np.isinf(c):
        return NONFINITE_INF
    ctx = context()
    with ctx.workprec(PREC):
        c = to_mpf(computed)
        exact = ctx.convert(exact)
        complement = None if complement is None else ctx.convert(complement)
        near_one = complement is not None and complement > 0 and abs(exact) >= 0.5
        # near 1, |c - exact| = |(sign * c - 1) + complement|: no digits lost to the rounding of 1 - q
        diff = abs((c * ctx.sign(exact) - 1) + complement) if near_one else abs(c - exact)
        zero_rel = 0.0 if diff == 0 else math.inf
        rel = zero_rel if exact == 0 else float(diff / abs(exact))
        ulps = float(diff / ulp_of(exact, info, below_one=near_one, below=below))
        return Errors(float(diff), rel, ulps, bits(ulps))


def rel_err_exact_x(computed: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Vectorised relative error of a round trip whose exact value is x itself.

    For dtypes of 32 bits or fewer the float64 difference of two dtype values is exact, so
    only the final division rounds (relative error 2**-53, far below any threshold); wider
    dtypes work in longdouble.
    Non-finite results give inf.
    """
    wide = np.asarray(x).dtype in (np.float64, np.longdouble)
    work: type[np.floating] = np.longdouble if wide else np.float64
    c = np.asarray(computed).astype(work)
    xf = np.asarray(x).astype(work)
    with np.errstate(all="ignore"):
        out = np.abs(c - xf) / np.abs(xf)
    out[xf == 0] = np.where(c[xf == 0] == 0, 0.0, np.inf)
    out[~np.isfinite(c)] = np.inf
    return out
