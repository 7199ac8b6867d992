"""What XLA on CPU computes for jax's sigmoid, logit, log_sigmoid and optax's BCE, bit for bit.

Pure numpy + ml_dtypes models of the code jaxlib 0.10.2 runs on an x86-64 CPU with FMA. Read
from XLA's own dumps (``XLA_FLAGS=--xla_dump_to=DIR``: the optimised HLO, the LLVM IR before and
after optimisation and the object files) and checked against real jax (``tests/test_xla.py``).

What XLA does that per-op numpy does not:

- **FTZ/DAZ**: XLA's CPU threads run with flush-to-zero and denormals-are-zero (tsl
  ``port::ScopedFlushDenormal``), so float32 (and bfloat16, which shares its exponent range)
  subnormals read as zero and results below ``finfo.tiny`` come out as zero. float16
  subnormals are unaffected: they convert to normal float32 values and back exactly. `flush`.
- **Its own exp, log and log1p**: Cephes float32 polynomials evaluated with FMAs, ``GenerateVF32Exp``
  and ``GenerateVF32Log`` in ``xla/backends/cpu/codegen/polynomial_approximations.cc`` (as at
  openxla/xla 80c095fc, whose constants jaxlib 0.10.2's code has; later XLA changed exp's ln 2
  split and clamps ``n`` to 128)
  and ``Log1p`` in ``xla/codegen/intrinsic/log1p.cc``. ``exp`` clamps its argument to
  [-87.8, 88.8] and builds ``2**n`` from exponent bits, so it is zero from about -87.68 on and
  flushed below ``2**-126``; ``log1p`` is a rational approximation for ``|x| < sqrt(2) - 1``
  and ``log(1 + x)`` past it. XLA rewrites only ``llvm.exp``/``llvm.log`` of 1, 2, 4, 8 or 16
  lanes: a jitted ``jnp.exp`` or ``jnp.log`` alone calls the C library's ``expf``/``logf`` for
  float16 (same float16 results as the polynomial) and for the 3 to 7 lane tail of a float32
  array of fewer than 16 elements (`_alone`).
- **FMA contraction**: XLA compiles with ``AllowFPOpFusion=Fast`` (``CompilerTargetOptions``,
  ``xla/service/cpu/cpu_compiler.cc``), so LLVM fuses a multiply into the add or subtract
  that is its only user, also across HLO ops of one fusion: float32
  ``sigmoid`` divides by ``fma(p, 2**n, 1)`` (the end of exp fused with the ``+ 1``); optax's BCE
  ends with ``fma(y, softplus(-x), softplus(x) * (1 - y))``. `fma` emulates it exactly.
- **float16/bfloat16** are not kept in float32 across a fusion: every HLO op is computed in
  float32 and rounded to the dtype (bfloat16 by XLA's float normalisation, which puts converts
  around each op, ``xla/service/cpu/cpu_float_support.cc``; float16 by LLVM's promotion of
  half ops), so no multiply is fused into an add for them.
- **One jit rewrites the round trip**: ``logit(sigmoid(x)) = log(p / (1 - p))`` with
  ``p = 1 / a`` is simplified to ``log(1 / (a * (1 - p)))`` (XLA
  ``xla/hlo/transforms/simplifiers/algebraic_simplifier.cc`` HandleDivide:
  ``(A / B) / C => A / (B * C)``) for float32 and float16; for bfloat16 the converts that
  float normalisation puts around every op block the rewrite. `roundtrip_fused` models one
  jit, `roundtrip` two.

The jitted functions modelled: `exp`, `log`, `log1p`, `logistic` (``jax.nn.sigmoid``), `logit`,
`softplus`, `log_sigmoid`, `optax_bce` and its gradient `optax_bce_grad`, `roundtrip` and
`roundtrip_fused`. Each takes and returns arrays of one of `DTYPES`; `flush` and `fma` are the
building blocks.
The float32 cores (exp, log, log1p, and the float32 work of logistic, softplus and optax's BCE
and gradient) are marked `compiled.twin`: their C twins (``csrc/xla.c``) give the same bits.

>>> import numpy as np
>>> float(sigmoid(np.array([-87.5], np.float32))[0])  # about 1e-38, subnormal: flushed
0.0
>>> float(roundtrip_fused(np.array([17.0], np.float32))[0]), float(roundtrip(np.array([17.0], np.float32))[0])
(inf, inf)
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from bce_audit import compiled, ftz

DTYPES = ("float32", "float16", "bfloat16")

# model -> the jitted jax call it reproduces (one jax.jit around each)
MODELS = {
    "exp": "jnp.exp(x)",
    "log": "jnp.log(x)",
    "log1p": "jnp.log1p(x)",
    "logistic": "jax.nn.sigmoid(x)",
    "logit": "jax.scipy.special.logit(p)",
    "softplus": "jax.nn.softplus(x)",
    "log_sigmoid": "jax.nn.log_sigmoid(x)",
    "optax_bce": "optax.sigmoid_binary_cross_entropy(x, y)",
    "optax_bce_grad": "jax.grad(lambda t: jnp.sum(optax.sigmoid_binary_cross_entropy(t, y)))(x)",
    "roundtrip": "logit(p) on p = sigmoid(x), two jits",
    "roundtrip_fused": "jax.scipy.special.logit(jax.nn.sigmoid(x)), one jit",
}

_F32 = np.float32
_TINY = np.float32(ftz.TINY32)  # 1.18e-38, the smallest normal float32


def _h(bits: int) -> np.float32:
    """A float32 constant from its bit pattern, as XLA writes them (``0x3FB8AA3B``)."""
    return np.array([bits], np.uint32).view(_F32)[0]


# exp: GenerateVF32Exp (polynomial_approximations.cc), Cephes expf
_EXP_LO, _EXP_HI = _F32(-87.8), _F32(88.8)
_LOG2E = _h(0x3FB8AA3B)  # 1.44269502
_EXP_C1 = _h(0x3F318000)  # 0.693359375: ln 2 split in two
_EXP_C2 = _h(0x395E8083)  # 2.12194440e-4 (XLA subtracts -C2)
_EXP_P = tuple(_h(b) for b in (0x39506967, 0x3AB743CE, 0x3C088908, 0x3D2AA9C1, 0x3E2AAAAA))

# log: GenerateVF32Log (polynomial_approximations.cc), Cephes logf as in Eigen's plog_float
_SQRTHF = _h(0x3F3504F3)  # 0.707106769
_LOG_P = tuple(_h(b) for b in (0x3D9021BB, 0xBDEBD1B8, 0x3DEF251A,  # p0, p1, p2
                                0xBDFE5D4F, 0x3E11E9BF, 0xBE2AAE50,  # p3, p4, p5
                                0x3E4CCEAC, 0xBE7FFFFC, 0x3EAAAAAA))  # p6, p7, p8
_LOG_Q1 = _h(0xB95E8083)  # -2.12194440e-4
_LOG_Q2 = _h(0x3F318000)  # 0.693359375

# log1p (xla/codegen/intrinsic/log1p.cc) for |x| < 0.41421357: x - x**2/2 + x**3 * P(x) / Q(x)
_LOG1P_SMALL = _h(0x3ED413CD)
_LOG1P_P = tuple(_h(b) for b in (0x383DE04B, 0x3EFF40C5, 0x40D284FA, 0x41EF4B9C,
                                  0x4273CC76, 0x426473AD, 0x41A05101))
_LOG1P_Q = tuple(_h(b) for b in (0x3F800000, 0x417101AD, 0x42A6185B, 0x435DC32D,
                                  0x439A8CA3, 0x43586D8A, 0x42707982))


# ---------------------------------------------------------------- float32 arithmetic under FTZ


flush = ftz.flush  # FTZ/DAZ: float32 and bfloat16 subnormals to zeros of their sign (float16 unchanged)


def _z(a: np.ndarray) -> np.ndarray:
    return flush(np.asarray(a, _F32))


def fma(a, b, c) -> np.ndarray:
    """``a*b + c`` rounded once to float32 (x86 ``vfmadd``, `ftz.fma`), then flushed."""
    return ftz.fma(a, b, c, ftz=True)


@compiled.twin("xla_exp_parts")
def _exp_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """XLA's float32 exp up to its last step: ``exp(x) = p * 2**n``; returns (p, 2**n)."""
    with np.errstate(invalid="ignore"):
        x = np.where(x < _EXP_LO, _EXP_LO, x)
        x = np.where(x > _EXP_HI, _EXP_HI, x)
        n = np.floor(fma(x, _LOG2E, _F32(0.5)))
        n = np.where(n < -127, _F32(-127), n)
        n = np.where(n > 127, _F32(127), n)
        r = fma(n, -_EXP_C1, x)
        r = fma(n, _EXP_C2, r)
        y = np.asarray(_EXP_P[0])
        for c in (*_EXP_P[1:], _F32(0.5)):
            y = fma(y, r, c)
        y = fma(y, _z(r * r), r)
        y = _z(y + _F32(1))
        k = np.where(np.isnan(n), 0, n).astype(np.int32)
        scale = ((k + 127).astype(np.uint32) << np.uint32(23)).view(_F32)  # n = -127: 0.0
    return y, scale


@compiled.twin("xla_exp32")
def _exp32(x: np.ndarray) -> np.ndarray:
    y, scale = _exp_parts(x)
    with np.errstate(over="ignore"):
        return _z(y * scale)


def _log_core(x: np.ndarray) -> np.ndarray:
    """XLA's float32 log for x > 0 (other inputs give garbage; `_log32` masks them)."""
    with np.errstate(invalid="ignore"):
        x = np.where(x > _TINY, x, _TINY)
    bits = x.view(np.uint32)
    e = (((bits >> np.uint32(23)).astype(np.int32) - 127).astype(_F32) + _F32(1)).astype(_F32)
    m = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(_F32)
    small = m < _SQRTHF
    xm = _z(_z(m - _F32(1)) + np.where(small, m, _F32(0)))
    e = _z(e - np.where(small, _F32(1), _F32(0)))
    x2 = _z(xm * xm)
    x3 = _z(x2 * xm)
    p = _LOG_P
    y = fma(fma(xm, p[0], p[1]), xm, p[2])
    y1 = fma(fma(xm, p[3], p[4]), xm, p[5])
    y2 = fma(fma(xm, p[6], p[7]), xm, p[8])
    y = fma(y, x3, y1)
    y = fma(y, x3, y2)
    y = fma(y, x3, _z(e * _LOG_Q1))
    u = fma(_F32(-0.5), x2, xm)
    return fma(e, _LOG_Q2, _z(u + y))


@compiled.twin("xla_log32")
def _log32(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        out = _log_core(x)
        out = np.where(x > 0, out, _F32(np.nan))
        out = np.where(x == 0, _F32(-np.inf), out)
        return np.where(x == np.inf, _F32(np.inf), out).astype(_F32)


@compiled.twin("xla_log1p32")
def _log1p32(x: np.ndarray) -> np.ndarray:
    """XLA's log1p: `_log1p_small` for ``|x| < sqrt(2) - 1``, ``log(1 + x)`` elsewhere; each
    element computed on its own path only (the ops are elementwise: the same values)."""
    with np.errstate(all="ignore"):
        small = np.abs(x) < _LOG1P_SMALL
        if small.all():
            return _log1p_small(x)
        if not small.any():
            return _log32(_z(x + _F32(1)))
        out = np.empty(x.shape, _F32)
        out[small] = _log1p_small(x[small])
        big = ~small
        out[big] = _log32(_z(x[big] + _F32(1)))
        return out


@compiled.twin("xla_log1p_small")
def _log1p_small(x: np.ndarray) -> np.ndarray:
    """``x - x**2/2 + x**3 * P(x) / Q(x)``, XLA's log1p near 0."""
    with np.errstate(all="ignore"):
        x2 = _z(x * x)
        z = _z(x * _F32(0))
        q = _z(z + _LOG1P_Q[0])
        for c in _LOG1P_Q[1:]:
            q = fma(q, x, c)
        pp = _z(z + _LOG1P_P[0])
        for c in _LOG1P_P[1:]:
            pp = fma(pp, x, c)
        t = _z(_z(x * x2) * _z(pp / q))
        t = fma(x2, _F32(-0.5), t)
        return _z(x + t)


# ---------------------------------------------------------------- dtypes


def _dtype(x: np.ndarray) -> np.dtype:
    dt = np.asarray(x).dtype
    if dt.name not in DTYPES:
        raise TypeError(f"xla models {', '.join(DTYPES)}, not {dt}")
    return dt


class _Ops:
    """Per-op rounding of one dtype: every HLO op in float32, flushed, then rounded to the dtype."""

    def __init__(self, dtype: np.dtype):
        self.dtype = dtype
        self.f32 = dtype == np.float32

    def r(self, a) -> np.ndarray:
        """The result of one HLO op (a float32 array) as the dtype stores it, back in float32."""
        a = _z(a)
        if self.f32:
            return a
        with np.errstate(over="ignore", invalid="ignore"):  # NaN to bfloat16 warns
            return a.astype(self.dtype).astype(_F32)

    def inp(self, a) -> np.ndarray:
        """An input array, as float32 after DAZ."""
        return _z(np.asarray(a).astype(_F32))

    def out(self, a) -> np.ndarray:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(a, _F32).astype(self.dtype)

    def exp(self, a) -> np.ndarray:
        return self.r(_exp32(a))

    def log(self, a) -> np.ndarray:
        return self.r(_log32(a))

    def log1p(self, a) -> np.ndarray:
        return self.r(_log1p32(a))


def _maximum(a: np.ndarray, b) -> np.ndarray:
    """HLO maximum: NaN-propagating."""
    return np.where(np.isnan(a), a, np.maximum(a, b)).astype(_F32)


# ---------------------------------------------------------------- the jitted functions


def _libm(name: str, a: np.ndarray) -> np.ndarray:
    """The C library's float32 ``expf``/``logf``, which XLA calls where it does not vectorise
    (XLA resolves the symbol in the process's libm: glibc on Linux): `glibc.libm`."""
    from bce_audit import glibc

    return glibc.libm(name, a)


def _alone(o: _Ops, a: np.ndarray, poly, libm: str) -> np.ndarray:
    """A jitted exp or log on its own.

    XLA's elementwise kernel runs blocks of 16; an array of fewer than 16 float32 gets a vector
    of 8 and one of the rest, and LLVM does not rewrite the rest's ``llvm.exp``/``llvm.log`` to
    XLA's polynomial when it is 3, 5, 6 or 7 wide: those elements call libm. float16 calls libm
    (``llvm.exp.v8f16`` is scalarised) for every array of 2 or more, but rounded to float16
    libm's and the polynomial's results agree on all 65536 inputs, so the polynomial stands in.
    """
    out = o.r(poly(a)).ravel()
    n = a.size
    if o.f32 and n < 16 and n % 8 in (3, 5, 6, 7):
        tail = slice(n - n % 8, n)
        out[tail] = _z(_libm(libm, a.ravel()[tail]))
    return o.out(out.reshape(a.shape))


def exp(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jnp.exp)``: XLA's polynomial (libm ``expf`` for some tiny float32 arrays)."""
    o = _Ops(_dtype(x))
    return _alone(o, o.inp(x), _exp32, "expf")


def log(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jnp.log)``: XLA's polynomial (libm ``logf`` for some tiny float32 arrays)."""
    o = _Ops(_dtype(x))
    return _alone(o, o.inp(x), _log32, "logf")


def log1p(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jnp.log1p)``: XLA's ``EmitLog1p`` in float32, rounded once."""
    o = _Ops(_dtype(x))
    return o.out(o.log1p(o.inp(x)))


def _sigmoid_denominator(o: _Ops, a: np.ndarray) -> np.ndarray:
    """``1 + exp(-x)`` as XLA computes it in one fusion (float32: the last multiply fused)."""
    if o.f32:
        y, scale = _exp_parts(-a)
        return fma(y, scale, _F32(1))
    return o.r(o.exp(-a) + _F32(1))


def logistic(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jax.nn.sigmoid)``: jax lowers logistic to ``1 / (1 + exp(-x))`` (``lax.py``)."""
    o = _Ops(_dtype(x))
    if o.f32:
        return o.out(_logistic32(np.asarray(x)))
    a = o.inp(x)
    return o.out(o.r(_F32(1) / _sigmoid_denominator(o, a)))


@compiled.twin("xla_logistic32")
def _logistic32(x: np.ndarray) -> np.ndarray:
    """`logistic` of a float32 array, before the copy out."""
    o = _Ops(np.dtype(_F32))
    with np.errstate(all="ignore"):
        return o.r(_F32(1) / _sigmoid_denominator(o, o.inp(x)))


sigmoid = logistic


def logit(p: np.ndarray) -> np.ndarray:
    """``jax.jit(jax.scipy.special.logit)``: ``log(p / (1 - p))``, one op at a time."""
    o = _Ops(_dtype(p))
    a = o.inp(p)
    with np.errstate(all="ignore"):
        return o.out(o.log(o.r(a / o.r(_F32(1) - a))))


def _softplus(o: _Ops, a: np.ndarray) -> np.ndarray:
    """``jnp.logaddexp(a, 0)`` (jax ``_src/lax/other.py``): ``max(a, 0) + log1p(exp(-|a|))``,
    and ``a`` itself where ``a`` is NaN."""
    if o.f32:
        return _softplus32(a)
    return _softplus_of(o, a)


@compiled.twin("xla_softplus32")
def _softplus32(a: np.ndarray) -> np.ndarray:
    """`_softplus` of float32."""
    return _softplus_of(_Ops(np.dtype(_F32)), a)


def _softplus_of(o: _Ops, a: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        t = o.log1p(o.exp(-np.abs(a)))
        return np.where(np.isnan(a), a, o.r(_maximum(a, _F32(0)) + t)).astype(_F32)


def softplus(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jax.nn.softplus)`` = ``jnp.logaddexp(x, 0)``."""
    o = _Ops(_dtype(x))
    return o.out(_softplus(o, o.inp(x)))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``jax.jit(jax.nn.log_sigmoid)`` = ``-softplus(-x)``."""
    o = _Ops(_dtype(x))
    return o.out(-_softplus(o, -o.inp(x)))


def optax_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``jax.jit(optax.sigmoid_binary_cross_entropy)(x, y)``, elementwise.

    optax: ``-y*log_sigmoid(x) - (1-y)*log_sigmoid(-x)``; XLA simplifies it to
    ``y*softplus(-x) + (1-y)*softplus(x)`` (one ``exp`` and ``log1p`` shared by both), and in
    float32 LLVM fuses the first product into the sum:
    ``fma(y, softplus(-x), softplus(x) * (1 - y))``.
    """
    return optax_bce_of(optax_softplus(x), y, np.asarray(x).dtype)


def optax_softplus(x: np.ndarray) -> np.ndarray:
    """``softplus(-x)`` and ``softplus(x)`` (rows 0 and 1, float32) as `optax_bce` computes
    them: what its value at one x shares between labels."""
    o = _Ops(_dtype(x))
    if o.f32:
        return np.stack(_optax_softplus32(np.asarray(x)))
    a = o.inp(x)
    return np.stack([_softplus(o, -a), _softplus(o, a)])


@compiled.twin("xla_optax_softplus32")
def _optax_softplus32(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`optax_softplus` of a float32 array: its two rows."""
    a = _z(x)
    return _softplus32(-a), _softplus32(a)


def optax_bce_of(softplus: np.ndarray, y: np.ndarray, dtype) -> np.ndarray:
    """`optax_bce` at labels ``y`` from `optax_softplus` of the logits (of ``dtype``)."""
    o = _Ops(_dtype(np.empty(0, dtype)))
    sp_neg, sp_pos = softplus[0], softplus[1]
    if o.f32:
        return o.out(_optax_bce32(np.asarray(y).astype(_F32), sp_neg, sp_pos))
    b = o.inp(np.asarray(y).astype(dtype))
    with np.errstate(all="ignore"):
        one_minus_y = o.r(_F32(1) - b)
        return o.out(o.r(o.r(b * sp_neg) + o.r(one_minus_y * sp_pos)))


@compiled.twin("xla_optax_bce32")
def _optax_bce32(y: np.ndarray, sp_neg: np.ndarray, sp_pos: np.ndarray) -> np.ndarray:
    """`optax_bce_of` in float32: ``fma(b, sp_neg, sp_pos * (1 - b))``, ``b`` the labels after
    DAZ (compiled where the three have one shape: a broadcast is numpy's)."""
    b = _z(y)
    with np.errstate(all="ignore"):
        return fma(b, sp_neg, _z(sp_pos * _z(_F32(1) - b)))


def optax_bce_grad(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``jax.jit(jax.grad(lambda t: jnp.sum(optax.sigmoid_binary_cross_entropy(t, y))))(x)``.

    The JVP of ``jnp.logaddexp(a, 0)`` is ``exp(r(a) - r(logaddexp(a, 0)))`` with ``r`` mapping
    +inf to 0 (jax ``_src/lax/other.py``), so the gradient is
    ``(1-y)*exp(r(x) - r(softplus(x))) - y*exp(r(-x) - r(softplus(-x)))``; float32 fuses the
    first product into the difference.
    """
    o = _Ops(_dtype(x))
    y = np.asarray(y).astype(np.asarray(x).dtype)
    if o.f32:
        return o.out(_optax_bce_grad32(np.asarray(x), y))
    return o.out(_optax_bce_grad_of(o, o.inp(x), o.inp(y)))


@compiled.twin("xla_optax_bce_grad32")
def _optax_bce_grad32(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`optax_bce_grad` in float32 (compiled where ``x`` and ``y`` have one shape: a broadcast
    is numpy's)."""
    o = _Ops(np.dtype(_F32))
    return _optax_bce_grad_of(o, o.inp(x), o.inp(y))


def _optax_bce_grad_of(o: _Ops, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`optax_bce_grad` of inputs after DAZ, in float32 (before `_Ops.out`)."""
    with np.errstate(all="ignore"):

        def slope(t: np.ndarray) -> np.ndarray:
            sp = _softplus(o, t)
            d = o.r(np.where(t == np.inf, _F32(0), t) - np.where(sp == np.inf, _F32(0), sp))
            return o.exp(d)

        one_minus_y = o.r(_F32(1) - b)
        if o.f32:
            return fma(one_minus_y, slope(a), -_z(b * slope(-a)))
        return o.r(o.r(one_minus_y * slope(a)) - o.r(b * slope(-a)))


def roundtrip(x: np.ndarray) -> np.ndarray:
    """``logit(sigmoid(x))`` as two separate jits: each rounds its own result."""
    return logit(logistic(x))


def roundtrip_fused(x: np.ndarray) -> np.ndarray:
    """``jax.jit(lambda x: logit(sigmoid(x)))``: XLA rewrites ``p / (1 - p)`` with ``p = 1/a``
    as ``1 / (a * (1 - p))``; float32 fuses exp's last multiply into ``a = 1 + exp(-x)``."""
    dt = _dtype(x)
    if dt == ml_dtypes.bfloat16:  # float normalisation's converts come first and block the rewrite
        return roundtrip(x)
    o = _Ops(dt)
    a = o.inp(x)
    with np.errstate(all="ignore"):
        den = _sigmoid_denominator(o, a)
        p = o.r(_F32(1) / den)
        q = o.r(_F32(1) / o.r(den * o.r(_F32(1) - p)))
        return o.out(o.log(q))
