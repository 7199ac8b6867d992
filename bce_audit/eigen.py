"""A numpy model of TensorFlow 2.21's CPU kernels for sigmoid, exp, log and log1p, bit for bit.

TensorFlow evaluates these element-wise ops with Eigen's Tensor executor. The model follows the Eigen
headers shipped in the tensorflow 2.21.0 wheel (``tensorflow/include/Eigen``, version string
``5.0.1-dev+master``; TensorFlow pins the Eigen commit in ``third_party/eigen3/workspace.bzl``):

- ``Eigen/src/Core/functors/UnaryFunctors.h``: ``scalar_logistic_op<float>`` (its own packet code: a
  halved argument, a degree-5 polynomial, then squaring; its scalar code ``e = exp(min(x, 16.6355324f));
  e / (1 + e)``) and the generic ``scalar_logistic_op_impl`` used for half and bfloat16
  (``e = exp(x); e == inf ? 1 : e / (1 + e)``);
- ``Eigen/src/Core/arch/Default/GenericPacketMathFunctions.h``: ``pexp_float``, ``plog_impl_float``,
  ``generic_log1p``, ``pfrexp_generic``, ``pldexp_generic``, ``pldexp_fast``;
- ``Eigen/src/Core/arch/AVX/PacketMath.h`` and ``MathFunctions.h``: ``Packet8f``, ``Packet8h`` and
  ``Packet8bf``. float16 and bfloat16 packets are widened to float32, computed there and rounded back
  after every single operation (``F16_PACKET_FUNCTION``, ``BF16_PACKET_FUNCTION``, ``padd``, ``pdiv``);
- the scalar path's exp, log and log1p are glibc's ``expf`` (``sysdeps/ieee754/flt-32/e_expf.c``,
  glibc >= 2.28), ``logf`` (``e_logf.c``) and ``log1pf`` (``s_log1pf.c``), under FTZ|DAZ;
- the gradient kernels: ``scalar_inverse_op`` (``tf.math.reciprocal``, which ``LogGrad`` and ``Log1pGrad``
  call), whose packet code with ``EIGEN_FAST_MATH`` is ``preciprocal<Packet8f>``: the ``vrcpps``
  estimate and one Newton step (``MathFunctionsImpl.h`` ``generic_reciprocal_newton_step``), and
  ``scalar_sigmoid_gradient_op`` (``tensorflow/core/kernels/cwise_ops_gradients.h``, ``SigmoidGrad``).

Facts measured on the x86-64 wheel, which is built for AVX without FMA:

- Packets hold ``BLOCK`` = 8 elements for all three dtypes. An array of ``n`` elements runs its first
  ``n - n % 8`` elements through the packet code and the last ``n % 8`` through the scalar code, which
  rounds differently for float32 (about a third of a grid over [-20, 20]); float16 never differs, and
  bfloat16 only in the sign of a NaN. ``pad`` makes every element take the packet path;
  ``logistic_unpadded`` models an array as it is.
- ``pmadd`` is a multiply and then an add, two roundings (no FMA in the AVX build).
- ``vrcpps`` is not specified bit for bit: the ISA bounds its error (1.5 * 2**-12), and Intel's and AMD's
  estimates are known to differ. ``RCP_TABLE``
  holds the one measured on the AMD EPYC (Zen 4, family 25) this model was checked on; on another CPU
  ``reciprocal``, and the gradients through it, may differ from TensorFlow's there (the tests check
  the CPU first: ``tests/tf_support.py``).
- TensorFlow runs its CPU kernels (eager and graph) with flush-to-zero and denormals-are-zero (MXCSR
  FTZ|DAZ): subnormal float32 inputs count as zero and every subnormal float32 result becomes a signed
  zero; bfloat16 shares float32's exponent range, so its subnormals go the same way. Sign flips
  (``tf.negative``, ``tf.abs``) and the conversions to float16/bfloat16 are bit operations and keep
  subnormals; float16's subnormals are normal float32 values and survive.

>>> import numpy as np
>>> x = np.array([-np.inf, -100.0, 0.0, 1.0, 16.0, 17.0, np.inf], np.float32)
>>> logistic(x).tolist()
[0.0, 0.0, 0.5, 0.7310585379600525, 0.9999998807907104, 1.0, 1.0]
>>> exp(np.float32([-88.0, 0.0])).tolist()
[0.0, 1.0]
"""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from bce_audit import compiled, ftz

__all__ = [
    "BLOCK", "DTYPES", "RCP_TABLE", "exp", "log", "log1p", "logistic", "logistic_unpadded", "pad",
    "rcpps", "reciprocal", "sigmoid_cross_entropy_with_logits", "sigmoid_grad",
]

BLOCK = 8
"""Elements per packet (Packet8f, Packet8h, Packet8bf): the tail ``n % BLOCK`` takes the scalar path."""

DTYPES = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
"""The dtypes the model covers."""

_F32 = np.float32
_TINY = ftz.TINY32  # 1.18e-38, smallest normal float32
_F64 = np.float64


def pad(x: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """``x`` flattened and extended with ``fill`` to a whole number of packets.

    Evaluate TensorFlow on ``pad(x)`` and keep the first ``x.size`` results: then every element takes
    Eigen's packet path, the one ``logistic``, ``exp``, ``log`` and ``log1p`` model.

    >>> pad(np.arange(3, dtype=np.float32)).tolist()
    [0.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    """
    flat = np.asarray(x).ravel()
    extra = -flat.size % BLOCK
    return np.concatenate([flat, np.full(extra, fill, flat.dtype)]) if extra else flat.copy()


# float32 arithmetic under MXCSR FTZ|DAZ: `ftz`'s, one definition for the kernel models.
_round = ftz.round_f32
_daz = ftz.flush  # float32 inputs as the FPU reads them with DAZ: subnormals as signed zeros
_op = ftz.op


def _mul(a: Any, b: Any) -> np.ndarray:
    return _op(np.multiply, a, b)


def _add(a: Any, b: Any) -> np.ndarray:
    return _op(np.add, a, b)


def _sub(a: Any, b: Any) -> np.ndarray:
    return _op(np.subtract, a, b)


def _div(a: Any, b: Any) -> np.ndarray:
    return _op(np.divide, a, b)


def _madd(a: Any, b: Any, c: Any) -> np.ndarray:
    """Eigen's ``pmadd`` without FMA: ``a*b`` rounded, then ``+ c`` rounded."""
    return _add(_mul(a, b), c)


def _pmin(a: np.ndarray, b: Any) -> np.ndarray:
    """``pmin<Packet8f>(a, b)`` = ``vminps(b, a)``: ``b`` if ``b < a``, else ``a`` (a NaN ``a`` stays)."""
    return np.where(b < a, _F32(b), a)


def _pmax(a: np.ndarray, b: Any) -> np.ndarray:
    """``pmax<Packet8f>(a, b)`` = ``vmaxps(b, a)``: ``b`` if ``b > a``, else ``a``."""
    return np.where(b > a, b, a).astype(_F32)


def _ldexp_fast(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``pldexp_fast``: biased exponent clamped to [0, 255]; a NaN exponent gives the factor 0."""
    biased = _pmin(_pmax(_add(m, 127.0), _F32(0)), _F32(255))
    e = np.where(np.isnan(biased), _F32(0), biased).astype(np.int32).astype(np.uint32)
    return _mul(a, (e << 23).view(_F32))


def _ldexp_generic(a: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``pldexp_generic``: ``a * 2^b * 2^b * 2^b * 2^(e - 3b)``, ``e`` clamped to +-278, ``b = e >> 2``."""
    clamped = _pmin(_pmax(m, _F32(-278)), _F32(278))
    e = np.where(np.isnan(clamped), np.int32(-(2**31)), clamped.astype(np.int64)).astype(np.int32)
    b = e >> 2
    c = ((b + 127).astype(np.uint32) << 23).view(_F32)
    out = _mul(_mul(_mul(a, c), c), c)
    c2 = ((e - 3 * b + 127).astype(np.uint32) << 23).view(_F32)
    return _mul(out, c2)


@compiled.twin("eigen_pexp")
def _pexp_f32(x0: np.ndarray) -> np.ndarray:
    """``pexp_float`` on float32 (DAZ applied to ``x0`` already)."""
    zero_mask = x0 < _F32(-104.0)
    x = _pmin(x0, _F32(88.723))
    m = np.floor(_madd(x, _F32(1.44269504088896341), _F32(0.5)))
    r = _madd(m, _F32(-0.693359375), x)
    r = _madd(m, _F32(2.12194440e-4), r)
    r2 = _mul(r, r)
    p_even = _madd(r2, _F32(1.37449637986719608306884765625e-3), _F32(4.166965186595916748046875e-2))
    p_odd = _madd(r2, _F32(8.36894474923610687255859375e-3), _F32(0.16666518151760101318359375))
    p_even = _madd(r2, p_even, _F32(0.49999988079071044921875))
    p_low = _add(r, _F32(1.0))
    y = _madd(r, p_odd, p_even)
    y = _madd(r2, y, p_low)
    # The packet takes pldexp_fast when all its |x| <= 87 and pldexp_generic otherwise; both scale
    # exactly while the result is normal, so the generic one stands for both, element by element.
    return np.where(zero_mask, _F32(0), _pmax(_ldexp_generic(y, m), x0))


@compiled.twin("eigen_logistic")
def _logistic_f32(x0: np.ndarray) -> np.ndarray:
    """``scalar_logistic_op<float>::packetOp``."""
    zero_mask = x0 < _F32(-104.0)
    x = _pmin(x0, _F32(16.6355324))
    x = _mul(x, _F32(0.5))
    m = np.floor(_madd(x, _F32(1.44269504088896341), _F32(0.5)))
    r = _madd(m, _F32(-0.693359375), x)
    r = _madd(m, _F32(2.12194440e-4), r)
    r2 = _mul(r, r)
    p_even = _madd(r2, _F32(4.1898667812347412109375e-2), _F32(0.49999141693115234375))
    p_odd = _madd(r2, _F32(8.33471305668354034423828125e-3), _F32(0.16666877269744873046875))
    p_low = _add(r, _F32(1.0))
    p = _madd(r, p_odd, p_even)
    p = _madd(r2, p, p_low)
    e = _ldexp_fast(p, m)
    e = _mul(e, e)
    return np.where(zero_mask, _F32(0), _div(e, _add(_F32(1.0), e)))


# glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, e_exp2f_data.c: glibc 2.28 and later), which the scalar
# path reaches through numext::exp -> std::exp. Its double arithmetic is reproduced operation by operation.
_EXP2F_TAB = np.array([
    0x3FF0000000000000, 0x3FEFD9B0D3158574, 0x3FEFB5586CF9890F, 0x3FEF9301D0125B51,
    0x3FEF72B83C7D517B, 0x3FEF54873168B9AA, 0x3FEF387A6E756238, 0x3FEF1E9DF51FDEE1,
    0x3FEF06FE0A31B715, 0x3FEEF1A7373AA9CB, 0x3FEEDEA64C123422, 0x3FEECE086061892D,
    0x3FEEBFDAD5362A27, 0x3FEEB42B569D4F82, 0x3FEEAB07DD485429, 0x3FEEA47EB03A5585,
    0x3FEEA09E667F3BCD, 0x3FEE9F75E8EC5F74, 0x3FEEA11473EB0187, 0x3FEEA589994CCE13,
    0x3FEEACE5422AA0DB, 0x3FEEB737B0CDC5E5, 0x3FEEC49182A3F090, 0x3FEED503B23E255D,
    0x3FEEE89F995AD3AD, 0x3FEEFF76F2FB5E47, 0x3FEF199BDD85529C, 0x3FEF3720DCEF9069,
    0x3FEF5818DCFBA487, 0x3FEF7C97337B9B5F, 0x3FEFA4AFA2A490DA, 0x3FEFD0765B6E4540,
], np.uint64)  # tab[i] = bits(2^(i/32)) - (i << 47)
_EXP2F_N = 32
_EXP2F_POLY = (float.fromhex("0x1.c6af84b912394p-5") / 32**3, float.fromhex("0x1.ebfce50fac4f3p-3") / 32**2,
               float.fromhex("0x1.62e42ff0c52d6p-1") / 32)
_EXP2F_INVLN2N = float.fromhex("0x1.71547652b82fep+0") * 32
_EXP2F_SHIFT = float.fromhex("0x1.8p+52")


def _expf_libm(x: np.ndarray) -> np.ndarray:
    """glibc ``expf`` on float32 (DAZ applied to ``x`` already), its result rounded under FTZ.

    Evaluated unfused in float64; x86-64 runs ``__expf_fma``, the same C with fused
    multiply-adds. The two differ only slightly (a relative 2^-47 at most, and 2^-44 is
    allowed), unless ``z = x * 32/ln 2`` lies next to a half-integer, where the two may round
    it to different integers and use the polynomial at r and r -+ 1. Normal results that
    close to a float32 rounding boundary, or with ``z`` that close, ask the libm (found on 2
    of 610 million inputs: 32.564632 and -63.09946)."""
    from bce_audit import glibc

    v, r = _expf_unfused(x)
    out = _round(v)
    unsure = glibc.near_boundary(v, 2.0**-44 * np.abs(v)) | (np.abs(np.abs(r) - 0.5) < 2.0**-36)
    unsure &= np.isfinite(x) & (np.abs(out) >= _F32(_TINY)) & np.isfinite(out)
    if unsure.any():
        out[unsure] = glibc.libm("expf", x[unsure])
    out = np.where(x > _F32(float.fromhex("0x1.62e42ep6")), _F32(np.inf), out)
    out = np.where(x < _F32(float.fromhex("-0x1.9fe368p6")), _F32(0), out)
    return np.where(np.isnan(x), _quiet(x), out)


def _expf_unfused(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """glibc ``expf``'s float64 result before its rounding to float32, unfused (non-finite x as
    0), and the reduced argument r in [-1/2, 1/2] it took its polynomial at."""
    xd = np.where(np.isfinite(x), x, _F32(0)).astype(_F64)
    z = _EXP2F_INVLN2N * xd
    kd = z + _EXP2F_SHIFT
    ki = kd.view(np.uint64)
    kd = kd - _EXP2F_SHIFT
    r = z - kd
    t = _EXP2F_TAB[ki % np.uint64(_EXP2F_N)] + (ki << np.uint64(52 - 5))
    s = t.view(_F64)
    c0, c1, c2 = _EXP2F_POLY
    zp = c0 * r + c1
    r2 = r * r
    y = c2 * r + 1.0
    y = zp * r2 + y
    return y * s, r


def _logistic_scalar_f32(x0: np.ndarray) -> np.ndarray:
    """``scalar_logistic_op<float>::operator()``: ``e = expf(min(x, 16.6355324f)); e / (1 + e)``."""
    e = _expf_libm(_pmin(x0, _F32(16.6355324)))
    return _div(e, _add(_F32(1.0), e))


def _frexp(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``pfrexp_generic`` under DAZ: mantissa in [0.5, 1) and exponent, both float32."""
    is_denormal = np.abs(a) < _F32(_TINY)
    normalized = np.where(is_denormal, _mul(a, _F32(2.0**24)), a)
    offset = np.where(is_denormal, _F32(-126 - 24), _F32(-126))
    biased = (np.abs(normalized).view(np.uint32) >> 23).astype(_F32)
    special = (a == 0) | (biased == 255)
    bits = (normalized.view(np.uint32) & np.uint32(0x807FFFFF)) | _F32(0.5).view(np.uint32)
    mant = np.where(special, a, bits.view(_F32))
    expo = np.where(special, _F32(0), _add(biased, offset))
    return mant, expo


@compiled.twin("eigen_plog")
def _plog_f32(x0: np.ndarray) -> np.ndarray:
    """``plog_impl_float`` (natural log)."""
    x, e = _frexp(x0)
    mask = x < _F32(0.707106781186547524)
    tmp = np.where(mask, x, _F32(0))
    x = _sub(x, _F32(1.0))
    e = _sub(e, np.where(mask, _F32(1.0), _F32(0)))
    x = _add(x, tmp)
    alpha = (0.18256296349849254, 1.0000000190281063, 1.0000000190281136)
    beta = (0.049616247954120038, 0.59923249590823520, 1.4999999999999927, 1.0)
    p = np.full_like(x, _F32(alpha[0]))
    for c in alpha[1:]:
        p = _madd(p, x, _F32(c))
    p = _mul(x, p)
    q = np.full_like(x, _F32(beta[0]))
    for c in beta[1:]:
        q = _madd(q, x, _F32(c))
    x = _div(p, q)
    x = _madd(e, _F32(np.log(2.0)), x)
    # ``por`` with the all-ones mask of a negative or NaN input gives the NaN 0xffffffff.
    invalid = ~(x0 >= 0)
    out = np.where(x0 == np.inf, _F32(np.inf), x)
    out = np.where(invalid, np.uint32(0xFFFFFFFF).view(_F32), out)
    return np.where(x0 == 0, _F32(-np.inf), out)


def _quiet(x: np.ndarray) -> np.ndarray:
    """A NaN as x86 arithmetic passes it on: its payload with the quiet bit set."""
    return (x.view(np.uint32) | np.uint32(0x00400000)).view(_F32)


def _plog1p_f32(x: np.ndarray, nan_input_wins: bool = True) -> np.ndarray:
    """``generic_log1p``: Kahan's ``x * log(1+x) / ((1+x) - 1)``.

    Where both factors of the last product are NaN, the float32 kernel returns ``x``'s NaN and the
    float16 kernel the quotient's (log's 0xffffffff): ``nan_input_wins`` picks which.
    """
    return _plog1p_x_nan(x) if nan_input_wins else _plog1p_log_nan(x)


@compiled.twin("eigen_plog1p")
def _plog1p_x_nan(x: np.ndarray) -> np.ndarray:
    """`_plog1p_f32` as the float32 kernel runs it: a NaN ``x`` gives its own NaN."""
    return _generic_log1p(x, True)


@compiled.twin("eigen_plog1p_f16")
def _plog1p_log_nan(x: np.ndarray) -> np.ndarray:
    """`_plog1p_f32` as the float16 kernel runs it: a NaN ``x`` gives log's 0xffffffff."""
    return _generic_log1p(x, False)


def _generic_log1p(x: np.ndarray, nan_input_wins: bool) -> np.ndarray:
    """`_plog1p_f32`'s numpy code."""
    xp1 = _add(x, _F32(1.0))
    log1 = _plog_f32(xp1)
    keep_x = (xp1 == _F32(1.0)) | (xp1 == log1)
    large = _mul(x, _div(log1, _sub(xp1, _F32(1.0))))
    large = np.where(np.isnan(log1), log1, large)
    if nan_input_wins:
        large = np.where(np.isnan(x), _quiet(x), large)
    return np.where(keep_x, x, large)


def _check(x: np.ndarray) -> np.dtype[Any]:
    dtype = np.asarray(x).dtype
    if dtype not in DTYPES:
        raise TypeError(f"eigen model covers float32, float16 and bfloat16, not {dtype}")
    return dtype


def _widen(x: np.ndarray) -> np.ndarray:
    """Packet8h/Packet8bf -> Packet8f (exact), as the FPU then reads it (DAZ)."""
    return _daz(np.asarray(x).astype(_F32))


def _narrow(y: np.ndarray, dtype: np.dtype[Any], packet: bool = True) -> np.ndarray:
    """float32 -> dtype with round-to-nearest-even. Eigen's bfloat16 conversion maps a NaN to 0x7fc0
    (packet) or to 0x7fc0 with the NaN's sign (scalar)."""
    out = y.astype(dtype)
    if dtype == np.dtype(ml_dtypes.bfloat16):
        nan = np.where(packet | ~np.signbit(y), np.uint16(0x7FC0), np.uint16(0xFFC0)).view(dtype)
        out = np.where(np.isnan(y), nan, out)
    return out


def logistic(x: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``tf.math.sigmoid``, elementwise, in ``x``'s dtype.

    The packet path by default; ``scalar=True`` gives the scalar path that the last ``n % BLOCK``
    elements of an array take (libm ``expf`` in place of Eigen's polynomial). float32 runs
    ``scalar_logistic_op<float>``; float16 and bfloat16 run the generic
    ``e = exp(x); e == inf ? 1 : e / (1 + e)`` with each of exp, + and / rounded to the dtype.
    """
    dtype = _check(x)
    x = np.asarray(x)
    with np.errstate(all="ignore"):
        if dtype == _F32:
            return _logistic_scalar_f32(_daz(x)) if scalar else _logistic_f32(_daz(x))
        packet = not scalar
        e = _narrow((_expf_libm if scalar else _pexp_f32)(_widen(x)), dtype, packet)
        ef = _widen(e)
        den = _widen(_narrow(_add(_F32(1.0), ef), dtype, packet))
        q = _narrow(_div(ef, den), dtype, packet)
        return np.where(np.isinf(e) & (e > 0), np.ones_like(q), q)


def logistic_unpadded(x: np.ndarray) -> np.ndarray:
    """What ``tf.math.sigmoid(x)`` returns for ``x`` as it is: the packet path for the first
    ``n - n % BLOCK`` elements (C order), the scalar path for the rest."""
    x = np.asarray(x)
    flat = x.ravel()
    head = flat.size - flat.size % BLOCK
    out = np.concatenate([logistic(flat[:head]), logistic(flat[head:], scalar=True)])
    return out.reshape(x.shape)


def exp(x: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``tf.math.exp``, in ``x``'s dtype: ``pexp_float`` on the packet path, glibc
    ``expf`` on the scalar path (``scalar=True``: the last ``n % BLOCK`` elements)."""
    dtype = _check(x)
    with np.errstate(all="ignore"):
        return _narrow((_expf_libm if scalar else _pexp_f32)(_widen(x)), dtype, not scalar)


def log(x: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``tf.math.log``, in ``x``'s dtype: ``plog_impl_float`` on the packet path,
    glibc ``logf`` on the scalar path (``scalar=True``: `_logf_libm`)."""
    dtype = _check(x)
    with np.errstate(all="ignore"):
        if scalar:
            return _narrow(_logf_libm(np.asarray(x).astype(_F32)), dtype, packet=False)
        return _narrow(_plog_f32(_widen(x)), dtype)


def log1p(x: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``tf.math.log1p``, in ``x``'s dtype: ``generic_log1p`` on the packet path,
    glibc ``log1pf`` on the scalar path (``scalar=True``). Under DAZ the scalar ``log1pf`` gives
    the libm's bits: an input below 2^-24 comes back as it went in (subnormals too), and no other
    input makes a subnormal on the way."""
    dtype = _check(x)
    with np.errstate(all="ignore"):
        if scalar:
            from bce_audit import glibc

            return _narrow(glibc.libm("log1pf", np.asarray(x).astype(_F32)), dtype, packet=False)
        return _narrow(_plog1p_f32(_widen(x), nan_input_wins=dtype != np.dtype(np.float16)), dtype)


_LOG_2M150 = _F32(-150 * math.log(2))  # log(2^-150), nearest float32 (-103.97208)


def _logf_libm(x: np.ndarray) -> np.ndarray:
    """glibc ``logf`` under FTZ|DAZ on float32: the libm's bits, but for subnormal inputs. Its
    special cases test the input's bits, so a negative subnormal is invalid (NaN) as any negative
    is, and a positive one is normalised by ``x * 2^23``, which DAZ reads as ``0 * 2^23``: the
    exponent then comes out as -150 and the significand as 1, giving ``log(2^-150)``."""
    from bce_audit import glibc

    sub = (x != 0) & (np.abs(x) < _TINY)
    if not np.count_nonzero(sub):
        return glibc.libm("logf", x)
    # a negative subnormal's NaN is any negative's: (x - x) / (x - x), the CPU's default NaN
    out = glibc.libm("logf", np.where(sub, np.where(x > 0, _F32(1), _F32(-1)), x))
    return np.where(sub & (x > 0), _LOG_2M150, out)


def sigmoid_cross_entropy_with_logits(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """TensorFlow's CPU ``tf.nn.sigmoid_cross_entropy_with_logits``, op by op, in the logits' dtype.

    ``tensorflow/python/ops/nn_impl.py``: ``where(x >= 0, x, 0) - x*y + log1p(exp(where(x >= 0, -x, x)))``,
    every op an Eigen kernel rounding to the dtype (float32 under FTZ|DAZ).
    """
    dtype = _check(logits)
    y = np.asarray(labels).astype(dtype)
    with np.errstate(all="ignore"):
        x = _widen(logits)
        cond = x >= 0
        relu = np.where(cond, x, _F32(0))
        neg_abs = _narrow(np.where(cond, -x, x), dtype)
        xy = _widen(_narrow(_mul(x, _widen(y)), dtype))
        first = _widen(_narrow(_sub(relu, xy), dtype))
        soft = _widen(log1p(exp(neg_abs)))
        return _narrow(_add(first, soft), dtype)


# vrcpps on AMD Zen 4 (family 25), measured with _mm256_rcp_ps on every float32 in [1, 2). The estimate
# depends only on the top 12 bits of the mantissa and has 12 fraction bits itself: for 1.m * 2**e it is
# (1 + RCP_TABLE[m >> 11] / 4096) * 2**(-1 - e). Stored as the decreasing table's steps, zlib'd.
_RCP_STEPS = (
    "eNrNkgsOAiEMRKfF+5/ZGBblozs7aVFZAnm8KRCy5ua11fk2cSHeSb6QvDpbMj+mvhfCLvooWzJjPc/MX18R2UWvsole5bbQ"
    "+syF+Cib6KOM9bxnqj7MXrZkrzJWf4SGdF926rMZyR68fmjv1s48y1swrzakVGG6Ly7nsxn7Paa1gZ14Vm/J9RDreR7jIDI2"
    "16tez7cnQbe8j5GcV/2ax9j/nBH0C6N/FT67mN+9H/LuU4eJjTC+7JFcf/wy/b+TyvjxfrjmP26j+mg+u57xHSJDEAA="
)


def _rcp_table() -> np.ndarray:
    import base64
    import zlib

    steps = np.frombuffer(zlib.decompress(base64.b64decode(_RCP_STEPS)), np.uint8)
    return (4095 - np.cumsum(steps.astype(np.int64))).astype(np.uint32)


RCP_TABLE = _rcp_table()
"""The 4096 12-bit fractions of ``vrcpps``'s estimates, indexed by the input's top 12 mantissa bits."""


@compiled.twin("eigen_rcpps")
def rcpps(a: np.ndarray) -> np.ndarray:
    """``_mm256_rcp_ps`` on float32: the table's estimate; zero and subnormal inputs give a signed inf,
    infinities a signed zero, estimates below float32's smallest normal a signed zero (|a| >= 2**126);
    a NaN comes back quiet.

    >>> rcpps(np.float32([1.0, 3.0, -0.0])).tolist()
    [0.999755859375, 0.33331298828125, -inf]
    """
    a = np.asarray(a, _F32)
    bits = a.view(np.uint32)
    sign = bits & np.uint32(0x80000000)
    expo = (bits >> 23) & np.uint32(0xFF)
    frac = RCP_TABLE[(bits >> 11) & np.uint32(0xFFF)]
    est = (_F64(1) + frac / _F64(4096)) * np.exp2(-1.0 - (expo.astype(_F64) - 127))
    out = np.where(est < _TINY, _F32(0), est.astype(_F32))
    out = np.where(expo == 0, _F32(np.inf), out)
    out = np.where(expo == 255, _F32(0), out)
    out = (out.view(np.uint32) | sign).view(_F32)
    return np.where(np.isnan(a), _quiet(a), out)


@compiled.twin("eigen_preciprocal")
def _preciprocal_f32(a: np.ndarray) -> np.ndarray:
    """``preciprocal<Packet8f>``: ``x = rcpps(a)``, then ``x*(1 - a*x) + x`` without FMA, unless
    ``1 - a*x`` is NaN (a zero, an infinity or a NaN): then the estimate as it is."""
    x = rcpps(a)
    tmp = _sub(_F32(1.0), _mul(a, x))
    return np.where(np.isnan(tmp), x, _add(_mul(x, tmp), x))


def reciprocal(x: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``tf.math.reciprocal``, in ``x``'s dtype: ``preciprocal`` on the packet path
    (float16 and bfloat16 widened to float32 and rounded once), ``1 / x`` on the scalar path.

    >>> reciprocal(np.float32([5.0, 10.0])).tolist()  # 1 / x rounds to 0.2 and 0.1: one ULP below
    [0.19999998807907104, 0.09999999403953552]
    """
    dtype = _check(x)
    with np.errstate(all="ignore"):
        xf = _widen(x)
        out = _div(_F32(1.0), xf) if scalar else _preciprocal_f32(xf)
        return _narrow(out, dtype, not scalar)


def sigmoid_grad(y: np.ndarray, dy: np.ndarray, *, scalar: bool = False) -> np.ndarray:
    """TensorFlow's CPU ``SigmoidGrad(y, dy)`` (``scalar_sigmoid_gradient_op``), the gradient through
    ``y = sigmoid(x)``: ``dy * (y * (1 - y))`` on the packet path, ``(dy * y) * (1 - y)`` on the
    scalar path, each operation rounded to the dtype (float16 and bfloat16 through float32)."""
    dtype = _check(y)
    packet = not scalar

    def op(f, a, b):
        return _widen(_narrow(f(a, b), dtype, packet))

    with np.errstate(all="ignore"):
        yf, g = _widen(y), _widen(np.asarray(dy).astype(dtype))
        one_minus = op(_sub, _F32(1.0), yf)
        out = op(_mul, g, op(_mul, yf, one_minus)) if packet else op(_mul, op(_mul, g, yf), one_minus)
        return _narrow(out, dtype, packet)
