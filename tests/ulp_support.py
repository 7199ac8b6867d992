"""Helpers shared by the tests that compare models with real frameworks: dtype steps apart."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from bce_audit import dtypes


def ordinals(a: np.ndarray) -> np.ndarray:
    """Position of each value on its dtype's grid: +0 and -0 are 0, neighbours differ by 1
    (the package's own ordinals: one definition of a step)."""
    return dtypes.get(str(a.dtype)).ordinal(a)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dtype steps between a and b (0 where both are the same value or both NaN; inf for one NaN)."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    d = np.abs(ordinals(a) - ordinals(b)).astype(np.float64)
    na, nb = np.isnan(a.astype(np.float64)), np.isnan(b.astype(np.float64))
    d[na & nb] = 0.0
    d[na ^ nb] = np.inf
    return d


def round_f32(q: Fraction) -> np.float32:
    """The float32 nearest to q, ties to even (q finite, within float32's range, subnormals
    included): the reference for the fused multiply-add models."""
    f = np.float32(float(q))  # within an ULP: the two float32 around q are f and one neighbour
    if Fraction(float(f)) > q:
        lo, hi = np.nextafter(f, np.float32(-np.inf)), f
    else:
        lo, hi = f, np.nextafter(f, np.float32(np.inf))
    dlo, dhi = q - Fraction(float(lo)), Fraction(float(hi)) - q
    if dlo != dhi:
        return lo if dlo < dhi else hi
    return lo if int(np.array([lo], np.float32).view(np.uint32)[0]) % 2 == 0 else hi
