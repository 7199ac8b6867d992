"""Arithmetic as an x86-64 CPU does it under MXCSR FTZ|DAZ, for the kernel models: one definition.

TensorFlow (`eigen`) and XLA (`xla`) run their CPU kernels with flush-to-zero and
denormals-are-zero; the flushing modes of `formulas` do the same to numpy's ops. torch (`sleef`)
does not flush, but shares the fused multiply-add.

- `flush`: subnormal values, for the CPU's float32 or float64 arithmetic, to zeros of their sign
  (float16 and float8 values are normal float32 ones: never flushed);
- `round_f32`: a float64 result rounded to float32 under FTZ (x86 detects tininess after rounding);
- `op`: one float32 operation (+, -, *, /) under FTZ, in float32 wherever that is exact;
- `fma`: ``a*b + c`` rounded once to float32 (``vfmadd``), optionally flushed.

Only the numbers' speed depends on how these are written, never the numbers: numpy's float32
arithmetic rounds each operation correctly (IEEE 754), as the FPU does.

>>> import numpy as np
>>> flush(np.float32([1e-39, -1e-39, 1.0])).tolist()
[0.0, -0.0, 1.0]
>>> float(fma(np.float32(0.1), np.float32(10.0), np.float32(-1.0)))  # one rounding: not 0
1.4901161193847656e-08
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bce_audit import compiled

TINY32 = float.fromhex("0x1p-126")   # 1.18e-38, float32's smallest normal
TINY64 = float.fromhex("0x1p-1022")  # 2.23e-308, float64's

_F32 = np.float32
_F64 = np.float64
_count = np.count_nonzero  # `any` of a bool array, without ndarray.any's Python-level wrapper


def flush_floor(dtype) -> float:
    """The magnitude below which a flushing CPU zeroes a value of this dtype: float64's smallest
    normal for float64, float32's for the dtypes computed in float32."""
    return TINY64 if np.dtype(dtype).itemsize == 8 else TINY32


def flush(a: np.ndarray) -> np.ndarray:
    """Subnormal values (for the CPU's float32 or float64 arithmetic) replaced by a signed zero;
    ``a`` itself where there is none."""
    a = np.asarray(a)
    tiny = _FLOORS.get(a.dtype, _UNKNOWN)
    if tiny is _UNKNOWN:
        tiny = _FLOORS[a.dtype] = _flushes_below(a.dtype)
    if tiny is None:
        return a
    if compiled.subnormals(a) is False:  # (None: not asked of the compiled code)
        return a
    small = np.abs(a) < tiny
    if not _count(small):
        return a
    with np.errstate(all="ignore"):
        return np.where(small, a * np.zeros((), a.dtype), a)


_UNKNOWN = object()
_FLOORS: dict = {}  # dtype -> what `_flushes_below` says of it


def _flushes_below(dtype: np.dtype):
    """`flush_floor` for a dtype that can hold values below it; None for one that cannot (bool,
    integers, float16 and float8, whose subnormals are normal float32 values) and for longdouble
    (x87 arithmetic does not flush)."""
    import ml_dtypes

    if dtype == np.bool_ or dtype.kind in "iub" or dtype.itemsize > 8:
        return None
    tiny = flush_floor(dtype)
    return tiny if float(ml_dtypes.finfo(dtype).smallest_subnormal) < tiny else None


def round_f32(v: np.ndarray) -> np.ndarray:
    """float64 -> float32 under FTZ: results that are tiny after rounding are flushed (tininess
    decided with an unbounded exponent, as x86 does)."""
    r = v.astype(_F32)
    mag = np.abs(r)
    if not _count(mag <= _F32(TINY32)):  # the common case: nothing near the flush threshold
        return r
    # Unbounded-exponent rounding decides tininess: scale into the normal range and look again.
    tiny = (mag < _F32(TINY32)) | (
        (mag == _F32(TINY32)) & (np.abs((v * 2.0**100).astype(_F32)) < _F32(2.0**-26))
    )
    return np.where(tiny & ~np.isnan(r), np.copysign(_F32(0), r), r)


def op(ufunc: np.ufunc, a: Any, b: Any) -> np.ndarray:
    """One float32 operation (a numpy ufunc: +, -, *, /) under FTZ.

    Done in float32 (correctly rounded, as the FPU does it); only where a result is subnormal or
    exactly the smallest normal, where FTZ decides by the unbounded-exponent rounding, done
    again in float64 (exact, or one innocuous rounding: 53 >= 2*24 + 2 bits) and `round_f32`'d.
    """
    r = ufunc(np.asarray(a, _F32), np.asarray(b, _F32))
    mag = np.abs(r)
    near = mag <= _TINY32_F32
    if not _count(near) or not _count(near & (mag != 0)):  # zeros keep their sign, as FTZ leaves them
        return r
    return round_f32(ufunc(np.asarray(a, _F64), np.asarray(b, _F64)))


_TINY32_F32 = _F32(TINY32)


def fma(a, b, c, ftz: bool = False) -> np.ndarray:
    """``a*b + c`` rounded once to float32 (x86 ``vfmadd``), subnormals kept (``ftz``: flushed
    to zeros of their sign, as under MXCSR FTZ).

    The float64 product of two float32 is exact, so the float64 sum is off only by its own
    rounding, and rounding it on to float32 goes wrong only where it sits exactly on a float32
    midpoint (its low 29 bits 1 followed by zeros) or in float32's subnormal range. Those few
    are redone (`_fma_fix`): the sum rounded to odd, its error from TwoSum deciding the last bit.
    """
    with np.errstate(all="ignore"):
        s = np.asarray(np.multiply(a, b, dtype=_F64))  # exact: 24 + 24 bits
        if s.ndim and np.broadcast_shapes(s.shape, np.shape(c)) == s.shape:
            np.add(s, c, out=s, dtype=_F64)
        else:
            s = np.asarray(np.add(s, c, dtype=_F64))
        bits = s.view(np.uint64)
        risky = (bits & _LOW29) == _HALF29
        out = s.astype(_F32, order="C")  # (C order: the fixes below go in through a flat view)
        tiny = np.abs(out) <= _TINY32_F32  # every sum below float32's smallest normal, and a few more
        if _count(tiny):
            risky |= tiny & (s != 0)  # a float64 sum of 0 is exact
        if not _count(risky):
            return out
        i = np.flatnonzero(risky)
        fixed = _fma_fix(*(np.broadcast_to(np.asarray(v, _F64), s.shape).reshape(-1)[i] for v in (a, b, c)))
        if ftz:  # only these can be subnormal
            fixed = flush(fixed)
        out.reshape(-1)[i] = fixed
        return out


def _fma_fix(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """`fma` where the float64 sum may round twice: rounded to odd first, then to float32."""
    p = a * b
    s = p + c
    bits = s.view(np.uint64)
    bb = s - p
    err = (p - (s - bb)) + (c - bb)
    odd = (err != 0) & ((bits & 1) == 0) & np.isfinite(s)
    up = (err > 0) == (s > 0)  # moving away from zero
    bits = np.where(odd, np.where(up, bits + 1, bits - 1), bits)
    return bits.view(_F64).astype(_F32)


_LOW29 = np.uint64((1 << 29) - 1)
_HALF29 = np.uint64(1 << 28)
