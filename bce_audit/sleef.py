"""What PyTorch 2.13 on an x86-64 CPU computes for float32 exp, log, log1p, sigmoid and log_sigmoid.

Pure numpy models of the vectorised code torch's CPU kernels run. ATen's ``Vectorized<float>``
(``aten/src/ATen/cpu/vec/vec512/vec512_float.h``, ``vec256/vec256_float.h``) calls SLEEF:
``exp()`` is ``Sleef_expf16_u10`` (``xexpf``), ``log()`` ``Sleef_logf16_u10`` (``xlogf_u1``)
and ``log1p()`` ``Sleef_log1pf16_u10`` (``xlog1pf``), in shibatch/sleef
``src/libm/sleefsimdsp.c`` with the double-float helpers of ``src/common/df.h``. Both AVX2 and
AVX512 builds define ``ENABLE_FMA_SP``: every ``vmla`` is a fused multiply-add (`fma`).
The AVX512 build takes a log's exponent and mantissa from ``vgetexp``/``vgetmant``
(``_mm512_getexp_ps``, ``_mm512_getmant_ps(.., _MM_MANT_NORM_p75_1p5, ..)``) and its special
values from ``vfixupimm``; the AVX2 build gets the same numbers by integer arithmetic.

Measured against torch 2.13.0+cpu (``tests/test_sleef.py``, ``fidelity --backend torch``):
`exp`, `log`, `log1p`, `sigmoid` and `log_sigmoid` agree bit for bit on every float16 and
bfloat16 value (as float32 inputs) and a dense float32 sample, subnormals, infinities and NaN
included (NaN's sign aside), on capability AVX512 and forced to AVX2 (``ATEN_CPU_CAPABILITY``);
on DEFAULT every ``Vectorized<float>`` function maps the C library's (`glibc.libm`, `elementary`).
What torch runs where:

- ``torch.sigmoid`` (``native/cpu/UnaryOpsKernel.cpp``): ``((0 - x).exp() + 1).reciprocal()``,
  the reciprocal a true division; ``F.logsigmoid`` (``native/cpu/Activation.cpp``):
  ``min(x, 0) - exp(-|x|).log1p()``, vectorised to the last element; ``torch.log1p``: SLEEF.
- ``torch.exp``, ``torch.log`` and ``torch.logit`` (contiguous, MKL builds) call MKL's VML
  (``vsExp``, ``vsLn``), not modelled: SLEEF's functions are within an ULP of them, equal on 90
  to 99% of inputs (numpy's float32 exp and log miss them 2 to 6 times as often).
- ``F.binary_cross_entropy``'s forward (``native/Loss.cpp``) is a scalar ``cpu_kernel``:
  ``std::log``/``std::log1p``, the C library's ``logf``/``log1pf`` (`glibc.libm`).
- SLEEF's ``exp`` is 0 below -104 and inf above 100 and underflows gradually in between; its
  ``log1p`` returns 0 for the smallest subnormal (``x / (2 + x)`` rounds to 0), so
  ``binary_cross_entropy_with_logits`` with label 1 is 0 from x = 102.87, not 103.97.

The vectorised loop runs on whole vectors only (``cpu_kernel_vec``, ``native/cpu/Loops.h``): a
tail shorter than two vectors in a thread's chunk calls the C library's scalar ``expf``/``logf``
instead (the fidelity check pads its arrays to whole blocks of 256).

>>> import numpy as np
>>> float(exp(np.array([1.0], np.float32))[0])
2.7182817459106445
>>> float(sigmoid(np.array([-104.5], np.float32))[0])  # exp(104.5) is inf: 1/inf
0.0
"""

from __future__ import annotations

import numpy as np

from bce_audit import compiled, ftz, glibc

CAPABILITIES = ("AVX512", "AVX2")  # torch's CPU capabilities whose SLEEF builds these model
_F32 = np.float32

_R_LN2 = _F32(1.442695040888963407359924681001892137426645954152985934135449406931)
_L2U = _F32(0.693145751953125)  # ln 2 split in two (misc.h L2Uf, L2Lf)
_L2L = _F32(1.428606765330187045e-06)
_LN2_HI = _F32(0.69314718246459960938)  # ln 2 as a double-float for the logs
_LN2_LO = _F32(-1.904654323148236017e-09)
_LOG1P_BOUND = _F32(float.fromhex("0x1.2ced32p+126"))  # 1.0e+38: past it log1p is log
_EXP_POLY = tuple(_F32(c) for c in (
    0.000198527617612853646278381, 0.00139304355252534151077271, 0.00833336077630519866943359,
    0.0416664853692054748535156, 0.166666671633720397949219, 0.5))
_LOG_POLY = tuple(_F32(c) for c in (0.3027294874, 0.3996108174, 0.6666694880))


fma = ftz.fma  # ``a*b + c`` rounded once to float32 (x86 ``vfmadd``), subnormals kept


def _f(a) -> np.ndarray:
    return np.asarray(a, _F32)


def _rint(a: np.ndarray) -> np.ndarray:
    """``_mm512_cvtps_epi32``: to nearest even; NaN and out of range give INT_MIN (as int64)."""
    r = np.rint(a.astype(np.float64))
    bad = ~np.isfinite(r) | (np.abs(r) >= 2.0**31)
    return np.where(bad, -(2.0**31), r).astype(np.int64)


def _i32(q: np.ndarray) -> np.ndarray:
    """Wrap to int32 as the vector lanes do."""
    return ((q + 2**31) % 2**32 - 2**31).astype(np.int64)


def _pow2i(q: np.ndarray) -> np.ndarray:
    """``vpow2i_vf_vi2``: the float whose bits are ``(q + 127) << 23``."""
    return ((_i32(q) + 0x7F) << 23).astype(np.int64).astype(np.uint64).astype(np.uint32).view(_F32)


def _ldexp2(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """``vldexp2_vf_vf_vi2``: ``d * 2**(e >> 1) * 2**(e - (e >> 1))``, two roundings."""
    h = _i32(e) >> 1
    return (d * _pow2i(h)) * _pow2i(_i32(e) - h)


def _ldexp3(d: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``vldexp3_vf_vf_vi2``: q added to d's exponent field (integer add of ``q << 23``)."""
    bits = d.view(np.uint32).astype(np.int64) + (_i32(q) << 23)
    return (bits % 2**32).astype(np.uint32).view(_F32)


def _getexp(a: np.ndarray) -> np.ndarray:
    """``_mm512_getexp_ps``: floor(log2|a|) as a float; -inf for 0, +inf for inf, NaN for NaN."""
    _, k = np.frexp(a)
    out = (k - 1).astype(_F32)
    out = np.where(a == 0, _F32(-np.inf), out)
    out = np.where(np.isinf(a), _F32(np.inf), out)
    return np.where(np.isnan(a), _F32(np.nan), out).astype(_F32)


def _getmant(a: np.ndarray) -> np.ndarray:
    """``_mm512_getmant_ps(a, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_nan)``: |a|'s significand
    scaled into [0.75, 1.5); NaN for a negative a (special values are fixed up afterwards)."""
    f, _ = np.frexp(np.abs(a))
    sig = (f * 2).astype(_F32)
    sig = np.where(sig >= 1.5, sig * _F32(0.5), sig).astype(_F32)
    return np.where(np.signbit(a) & (a != 0), _F32(np.nan), sig).astype(_F32)


def _dfmul_f(xh, xl, y):
    """``dfmul_vf2_vf2_vf`` (FMA version)."""
    s = xh * y
    return s, fma(xl, y, fma(xh, y, -s))


def _dfdiv(nh, nl, dh, dl):
    """``dfdiv_vf2_vf2_vf2`` (FMA version)."""
    t = _F32(1) / dh
    s = nh * t
    u = fma(t, nh, -s)
    v = fma(-dl, t, fma(-dh, t, _F32(1)))
    return s, fma(s, v, fma(nl, t, u))


def _dfadd_ff(x, y):
    s = x + y
    return s, (x - s) + y


def _dfadd2_ff(x, y):
    s = x + y
    v = s - x
    return s, (x - (s - v)) + (y - v)


def _dfadd_f2f2(xh, xl, yh, yl):
    s = xh + yh
    return s, (((xh - s) + yh) + xl) + yl


def _dfadd_f2f(xh, xl, y):
    s = xh + y
    return s, ((xh - s) + y) + xl


def _log_tail(e, xh, xl) -> np.ndarray:
    """The common end of ``xlogf_u1`` and ``xlog1pf``: ``e ln 2 + 2 atanh(x)``, x a double-float."""
    x2 = xh * xh
    t = fma(fma(_LOG_POLY[0], x2, _LOG_POLY[1]), x2, _LOG_POLY[2])
    sh, sl = _dfmul_f(_LN2_HI, _LN2_LO, e)
    sh, sl = _dfadd_f2f2(sh, sl, xh * _F32(2), xl * _F32(2))
    sh, sl = _dfadd_f2f(sh, sl, (x2 * xh) * t)
    return _f(sh + sl)


@compiled.twin("sleef_exp")
def exp(d: np.ndarray) -> np.ndarray:
    """``Sleef_expf16_u10`` (``xexpf``): ``exp(d)`` for float32, within 1 ULP."""
    d = _f(d)
    with np.errstate(all="ignore"):
        q = _rint(d * _R_LN2)
        qf = q.astype(_F32)  # |q| < 2**24 wherever the result is not masked: exact
        s = fma(qf, -_L2U, d)
        s = fma(qf, -_L2L, s)
        u: np.ndarray = np.full_like(d, _EXP_POLY[0])
        for c in _EXP_POLY[1:]:
            u = fma(u, s, c)
        u = _F32(1) + fma(s * s, u, s)
        u = _ldexp2(_f(u), q)
        u = np.where(d < -104, _F32(0), u)
        return np.where(d > 100, _F32(np.inf), u).astype(_F32)


@compiled.twin("sleef_log")
def log(d: np.ndarray) -> np.ndarray:
    """``Sleef_logf16_u10`` (``xlogf_u1``, AVX512 path): ``log(d)`` for float32, within 1 ULP."""
    d = _f(d)
    with np.errstate(all="ignore"):
        e = _getexp(d * _F32(1.0 / 0.75))
        e = np.where(np.isposinf(e), _F32(128), e).astype(_F32)
        m = _getmant(d)
        nh, nl = _dfadd2_ff(_F32(-1), m)
        dh, dl = _dfadd2_ff(_F32(1), m)
        xh, xl = _dfdiv(nh, nl, dh, dl)
        r = _log_tail(e, xh, xl)
        # vfixupimm: 0 -> -inf, -inf and negatives -> NaN, +inf -> +inf; a NaN as np.nan (its
        # payload is not modelled: numpy's loops leave either NaN of a sum, by position)
        r = np.where(d == 0, _F32(-np.inf), r)
        r = np.where(np.isnan(d), _F32(np.nan), r)
        r = np.where(d < 0, _F32(np.nan), r)
        return np.where(np.isposinf(d), _F32(np.inf), r).astype(_F32)


@compiled.twin("sleef_log1p")
def log1p(d: np.ndarray) -> np.ndarray:
    """``Sleef_log1pf16_u10`` (``xlog1pf``, AVX512 path): ``log(1 + d)`` for float32, within 1 ULP."""
    d = _f(d)
    with np.errstate(all="ignore"):
        dp1 = d + _F32(1)
        e = _getexp(dp1 * _F32(1.0 / 0.75))
        e = np.where(np.isposinf(e), _F32(128), e).astype(_F32)
        t = _ldexp3(np.ones_like(d), -_rint(e))
        m = fma(d, t, t - _F32(1))
        xh, xl = _dfdiv(m, np.zeros_like(m), *_dfadd_ff(_F32(2), m))
        r = _log_tail(e, xh, xl)
        past = ~(d <= _LOG1P_BOUND)  # there (and at NaN) log(d): computed for those alone
        if past.any():
            r = np.array(r, _F32)
            r[past] = log(d[past])
        r = np.where(d < -1, _F32(np.nan), r)
        r = np.where(d == -1, _F32(-np.inf), r)
        return np.where((d == 0) & np.signbit(d), _F32(-0.0), r).astype(_F32)


@compiled.twin("sleef_sigmoid")
def sigmoid(x: np.ndarray) -> np.ndarray:
    """``torch.sigmoid`` on float32 (``aten/src/ATen/native/cpu/UnaryOpsKernel.cpp``
    ``sigmoid_kernel``, its vector path): ``((0 - x).exp() + 1).reciprocal()``."""
    x = _f(x)
    with np.errstate(all="ignore"):
        return _f(_F32(1) / (exp(_F32(0) - x) + _F32(1)))


@compiled.twin("sleef_log_sigmoid")
def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``torch.nn.functional.logsigmoid`` on float32 (``aten/src/ATen/native/cpu/Activation.cpp``
    ``_vec_log_sigmoid``, vectorised to the last element): ``min(x, 0) - log1p(exp(-|x|))``."""
    x = _f(x)
    with np.errstate(all="ignore"):
        return _f(np.minimum(x, _F32(0)) - log1p(exp(-np.abs(x))))


# ---------------------------------------------------------------- which CPU code torch runs


def torch_capability() -> str | None:
    """The CPU capability torch dispatches to in this process: asked of torch when it is
    already imported, else derived as torch does (``ATEN_CPU_CAPABILITY``, then the CPU's
    AVX512/AVX2 flags); None where it cannot be told (not Linux x86-64)."""
    import os
    import platform
    import sys

    if sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"):
        return None  # MSVC builds call no SLEEF; other CPUs run other vector code
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            return str(torch.backends.cpu.get_cpu_capability())
        except Exception:  # an old or partial torch: fall through to the flags
            pass
    forced = os.environ.get("ATEN_CPU_CAPABILITY", "").strip().upper()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return None
    has = {"AVX512": {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= set(flags),
           "AVX2": {"avx2", "fma"} <= set(flags)}
    if forced in ("DEFAULT", "NONE"):
        return "DEFAULT"
    if forced == "AVX2" and has["AVX2"]:
        return "AVX2"
    if has["AVX512"] and forced in ("", "AVX512"):
        return "AVX512"
    return "AVX2" if has["AVX2"] else "DEFAULT"


def elementary(name: str):
    """torch's float32 ``Vectorized<float>`` function ``name`` (exp, log, log1p) on this CPU:
    SLEEF's (`exp`, `log`, `log1p`) on AVX512 and AVX2, the C library's (`glibc.libm`) on DEFAULT,
    None where the capability is not known."""
    global _CAPABILITY
    if _CAPABILITY is None:
        _CAPABILITY = torch_capability() or "?"
    if _CAPABILITY in CAPABILITIES:
        return {"exp": exp, "log": log, "log1p": log1p}[name]
    if _CAPABILITY == "DEFAULT":
        c = name + "f"
        return lambda a: glibc.libm(c, a)
    return None


def modelled() -> bool:
    """Whether torch's float32 kernels on this CPU are modelled (`elementary`)."""
    return elementary("exp") is not None


_CAPABILITY: str | None = None
