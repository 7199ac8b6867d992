"""Helpers shared by the tests that compare models with real frameworks: the inputs (every
value of a 16-bit dtype, a dense float32 sample), bit-for-bit equality and dtype steps apart."""

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


def every_value(dtype) -> np.ndarray:
    """All 65536 values of a 16-bit dtype, NaNs and infinities included."""
    return np.arange(2**16, dtype=np.uint16).view(dtype)


def float32_sample() -> np.ndarray:
    """A dense float32 sample: a grid on [-120, 120], the ranges where the models branch
    (10 <= |x| <= 20: sigmoid reaches 1; 86 <= |x| <= 105: exp overflows, underflows into
    subnormals, FTZ, SLEEF's -104/100 cut-offs, XLA's clamps), values near 0, probabilities,
    subnormals, the special values and random bit patterns."""
    f32 = np.float32
    rng = np.random.default_rng(20261129)
    mag = lambda lo, hi, n: rng.uniform(lo, hi, n).astype(f32)  # noqa: E731
    tiny = np.finfo(f32).tiny
    parts = [
        np.linspace(-120, 120, 200_001, dtype=f32),
        mag(10, 20, 40_000), -mag(10, 20, 40_000),
        mag(86, 105, 40_000), -mag(86, 105, 40_000),
        (rng.standard_normal(20_000) * 3).astype(f32),
        np.exp(rng.uniform(-103, 0, 40_000)).astype(f32),  # probabilities, for logit and log
        (rng.uniform(0, 1, 40_000) * tiny).astype(f32), -(rng.uniform(0, 1, 10_000) * tiny).astype(f32),
        rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(f32),
        np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1e-45, -1e-45, 1e-40, -1e-40, tiny, -tiny,
                  np.nextafter(tiny, f32(0)), 1.0, -1.0, 1e38, 2e38, 3e38, -0.99999994, 0.41421357,
                  -0.41421357, 0.29289323, 87.8, 88.8, -87.8, -88.8, 88.72283, 88.72284, -87.33655,
                  -103.97, -104.0, -104.00001, 100.0, 100.00001, 16.635532], f32),
    ]
    return np.concatenate(parts)


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal bit patterns, or both NaN (the NaN's sign and payload are not modelled: XLA and
    numpy pick different NaN signs)."""
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    u = f"u{a.dtype.itemsize}"
    nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
    return (a.view(u) == b.view(u)) | nan
