"""The C library's float32 ``logf`` and ``log1pf`` for whole arrays, bit for bit: glibc's code in numpy.

torch's ``binary_cross_entropy`` (``std::log``, ``std::log1p`` in a scalar ``cpu_kernel``), its
DEFAULT capability and XLA's unvectorised remainders call the process's libm. Calling it through
ctypes costs a Python call per distinct value (about 0.3 us); an exhaustive float32 sweep asks
for millions. `libm` computes large arrays with numpy models of glibc's code instead:

- ``logf`` (``sysdeps/ieee754/flt-32/e_logf.c``, ``e_logf_data.c``; glibc 2.28 and later). x86-64
  runs ``__logf_fma``, the same C compiled with fused multiply-adds, whose float64 result differs
  from the unfused one `_logf` computes by less than `_logf_slack` (at least 16 times what the
  two evaluations can differ by, derived there). Where the unfused result lies closer than that
  to a float32 rounding boundary, both could round apart: those values (a few in a million) ask
  the libm.
- ``log1pf`` (``sysdeps/ieee754/flt-32/s_log1pf.c``, fdlibm's float code, built without FMA on
  x86-64): every operation is a float32 one, which numpy rounds as the CPU does, so `_log1pf` is
  exact there (other CPUs, whose compilers may fuse its operations, call the libm).
- Zeros, negatives, infinities and NaN (the error paths, with their errno and NaN signs) ask the
  libm, as do arrays of fewer than `SMALL` values.

A model stands in for the libm only after `_agrees` has compared the two on `_probe`, values
spread over every binade and around every branch of the code: another C library or version
that computes differently gets the libm for every value. Without a libm (not Linux or macOS), the
correctly rounded value stands in.

>>> import numpy as np
>>> libm("logf", np.float32([2.0, 1.0])).tolist()
[0.6931471824645996, 0.0]
"""

from __future__ import annotations

import platform
from collections.abc import Callable

import numpy as np

from bce_audit import compiled

SMALL = 2048  # below this many values the libm itself is called
_F32, _F64 = np.float32, np.float64
_U32, _I32 = np.uint32, np.int32


# ---------------------------------------------------------------- logf: e_logf.c, in float64

_LOGF_TAB = [  # (invc, logc) for z in the i-th of 16 subintervals of [0x3f330000, 2 * that)
    ("0x1.661ec79f8f3bep+0", "-0x1.57bf7808caadep-2"), ("0x1.571ed4aaf883dp+0", "-0x1.2bef0a7c06ddbp-2"),
    ("0x1.49539f0f010bp+0", "-0x1.01eae7f513a67p-2"), ("0x1.3c995b0b80385p+0", "-0x1.b31d8a68224e9p-3"),
    ("0x1.30d190c8864a5p+0", "-0x1.6574f0ac07758p-3"), ("0x1.25e227b0b8eap+0", "-0x1.1aa2bc79c81p-3"),
    ("0x1.1bb4a4a1a343fp+0", "-0x1.a4e76ce8c0e5ep-4"), ("0x1.12358f08ae5bap+0", "-0x1.1973c5a611cccp-4"),
    ("0x1.0953f419900a7p+0", "-0x1.252f438e10c1ep-5"), ("0x1p+0", "0x0p+0"),
    ("0x1.e608cfd9a47acp-1", "0x1.aa5aa5df25984p-5"), ("0x1.ca4b31f026aap-1", "0x1.c5e53aa362eb4p-4"),
    ("0x1.b2036576afce6p-1", "0x1.526e57720db08p-3"), ("0x1.9c2d163a1aa2dp-1", "0x1.bc2860d22477p-3"),
    ("0x1.886e6037841edp-1", "0x1.1058bc8a07ee1p-2"), ("0x1.767dcf5534862p-1", "0x1.4043057b6ee09p-2"),
]
_INVC = np.array([float.fromhex(a) for a, _ in _LOGF_TAB])
_LOGC = np.array([float.fromhex(b) for _, b in _LOGF_TAB])
_LN2 = float.fromhex("0x1.62e42fefa39efp-1")
_A0, _A1, _A2 = (float.fromhex(c) for c in ("-0x1.00ea348b88334p-2", "0x1.5575b0be00b6ap-2",
                                             "-0x1.ffffef20a4123p-2"))
_OFF = _U32(0x3F330000)
_ONE_I = 9  # the subinterval around 1: invc = 1, logc = 0


def _logf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``__logf`` on positive finite float32, evaluated unfused in float64: the result and where
    it may round otherwise than glibc's fused evaluation (`_logf_slack`)."""
    y, k, i = _logf_unfused(x)
    return y.astype(_F32), near_boundary(y, _logf_slack(y, k, i))


def _logf_unfused(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``__logf``'s float64 result before its rounding to float32, unfused, with the exponent k
    and the subinterval i it used."""
    ix = x.view(_U32)
    sub = ix < _U32(0x00800000)  # subnormal: normalised by 2^23, the exponent taken back
    if sub.any():
        with np.errstate(over="ignore"):  # the normal values' products are discarded
            ix = np.where(sub, (x * _F32(2.0**23)).view(_U32) - _U32(23 << 23), ix)
    tmp = ix - _OFF
    i = (tmp >> _U32(19)) & _U32(15)
    k = (tmp.view(_I32) >> 23).astype(_F64)
    z = (ix - (tmp & _U32(0x1FF << 23))).view(_F32).astype(_F64)
    r = z * _INVC[i] - 1.0
    y0 = _LOGC[i] + k * _LN2
    r2 = r * r
    y = _A1 * r + _A2
    y = _A0 * r2 + y
    y = y * r2 + (y0 + r)
    return y, k, i


def _logf_slack(y: np.ndarray, k: np.ndarray, i: np.ndarray) -> np.ndarray:
    """How far glibc's fused float64 result can lie from `_logf`'s: at least 16 times the sum of
    the two evaluations' bounds (16 times on the |y| term, 32 on the rest).

    Each evaluation's distance from the exact value of the same expression: ``r = z*invc - 1``
    within 2^-53 (``z*invc`` is in [0.97, 1.03], and subtracting 1 is then exact), ``logc +
    k*Ln2`` within 2^-52 (|k| + 0.5), the polynomial term (below 5e-4) within 2^-57, the last
    two sums within 2^-53 of their size: in all within 2^-52 (|k| + 1.5 + |y|). In the
    subinterval around 1 with k = 0, ``r = z - 1`` and ``y0 = 0`` are exact, leaving 2^-52 |y|.
    """
    general = 2.0**-46 * (np.abs(k) + 2.0) + 2.0**-47 * np.abs(y)
    return np.where((k == 0) & (i == _ONE_I), 2.0**-48 * np.abs(y), general)


def near_boundary(y: np.ndarray, slack: np.ndarray) -> np.ndarray:
    """Where float64 ``y`` lies within ``slack`` of a float32 rounding boundary (a midpoint
    between two neighbours, all exact in float64), so that a ``y`` that close may round to
    the other neighbour."""
    f = y.astype(_F32)
    d = y - f  # exact: y is within half a float32 step of f
    up = np.nextafter(f, _F32(np.inf)).astype(_F64) - f
    down = f - np.nextafter(f, _F32(-np.inf)).astype(_F64)
    return np.where(d >= 0, 0.5 * up - d, 0.5 * down + d) <= slack


# ---------------------------------------------------------------- log1pf: s_log1pf.c, in float32

_LN2_HI, _LN2_LO = _F32(6.9313812256e-01), _F32(9.0580006145e-06)
_LP = tuple(_F32(c) for c in (6.6666668653e-01, 4.0000000596e-01, 2.8571429849e-01, 2.2222198546e-01,
                              1.8183572590e-01, 1.5313838422e-01, 1.4798198640e-01))


def _log1pf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``__log1pf`` on float32 in (-1, inf), every operation as the C code does it in float32;
    exact, so nothing is unsure."""
    one, half, two = _F32(1.0), _F32(0.5), _F32(2.0)
    hx = x.view(_I32)
    ax = hx & _I32(0x7FFFFFFF)
    tiny = ax < 0x31000000  # |x| < 2^-29: x, or x - x*x/2
    small = ~tiny & (hx < 0x3ED413D7) & ((hx > 0) | (hx <= np.int32(-0x416A09E1)))  # k = 0: f = x
    # k != 0: x = 2^k (1 + f) with 1 + f in [sqrt(2)/2, sqrt(2)), c the rounding error of 1 + x
    near = hx < 0x5A000000
    u = np.where(near, one + x, x)
    hu = u.view(_I32)
    kk = (hu >> 23) - 127
    c = np.where(kk > 0, one - (u - x), x - (u - one)) / u
    c = np.where(near, c, _F32(0))
    hu = hu & _I32(0x007FFFFF)
    low = hu < 0x3504F7
    kk = np.where(low, kk, kk + 1)
    u = np.where(low, hu | _I32(0x3F800000), hu | _I32(0x3F000000)).view(_F32)
    hu = np.where(low, hu, (_I32(0x00800000) - hu) >> 2)
    f = np.where(small, x, u - one)
    k = np.where(small, _F32(0), kk.astype(_F32))
    hu = np.where(small, 1, hu)
    c = np.where(small, _F32(0), c)

    hfsq = half * f * f
    klo = k * _LN2_LO + c
    k0 = k == 0  # the C code picks its formula by k (k can be 0 past the first branch too)
    # |f| < 2^-20 (hu == 0)
    r_tiny = hfsq * (one - _F32(0.66666666666666666) * f)
    at_one = np.where(k0, _F32(0), k * _LN2_HI + (c + k * _LN2_LO))
    flat = np.where(f == 0, at_one, np.where(k0, f - r_tiny, k * _LN2_HI - ((r_tiny - klo) - f)))
    # the general case
    s = f / (two + f)
    z = s * s
    lp1, lp2, lp3, lp4, lp5, lp6, lp7 = _LP
    r = z * (lp1 + z * (lp2 + z * (lp3 + z * (lp4 + z * (lp5 + z * (lp6 + z * lp7))))))
    out = np.where(k0, f - (hfsq - s * (hfsq + r)), k * _LN2_HI - ((hfsq - (s * (hfsq + r) + klo)) - f))
    out = np.where(hu == 0, flat, out)
    out = np.where(tiny, np.where(ax < 0x24800000, x, x - x * x * half), out)
    return out.astype(_F32), np.zeros(x.shape, bool)


# ---------------------------------------------------------------- the libm, and when a model stands in

_MODELS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {"logf": _logf}
if platform.machine().lower() in ("x86_64", "amd64"):  # where glibc's C is built without contraction:
    _MODELS["log1pf"] = _log1pf  # elsewhere (aarch64, ppc64) its float ops may be fused
_CR = {"expf": np.exp, "logf": np.log, "log1pf": np.log1p}
_FUNCS: dict | None = None
_AGREES: dict[str, bool] = {}


def libm(name: str, a) -> np.ndarray:
    """The process's C library ``expf``/``logf``/``log1pf`` on float32 ``a``: glibc's code modelled
    in numpy for arrays of `SMALL` values or more (`_agrees` first), the libm through ctypes for
    the rest; the correctly rounded value where there is no libm."""
    a = np.asarray(a, _F32)
    fn = _functions().get(name)
    out = None if fn is None else compiled.run(name, a)  # the libm itself, called from C
    if out is not None:
        return out
    if fn is None:
        with np.errstate(all="ignore"):
            return _CR[name](a.astype(_F64)).astype(_F32)
    flat = a.reshape(-1)
    model = _MODELS.get(name)
    if model is None or flat.size < SMALL or not _agrees(name):
        return _ctypes(fn, flat).reshape(a.shape)
    out, ask = _modelled(name, model, flat)
    if ask.any():
        out[ask] = _ctypes(fn, flat[ask])
    return out.reshape(a.shape)


def _modelled(name: str, model, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's results and where the libm must be asked: the error paths and unsure values."""
    bits = flat.view(_U32)
    if name == "logf":  # positive and finite; zeros, negatives, inf and NaN are the libm's
        ok = (bits - _U32(1)) < _U32(0x7F7FFFFF)
    else:  # log1pf: (-1, inf), -0 included
        ok = (bits < _U32(0x7F800000)) | ((bits >= _U32(0x80000000)) & (bits < _U32(0xBF800000)))
    out = np.zeros(flat.shape, _F32)
    ask = ~ok
    with np.errstate(all="ignore"):
        vals, unsure = model(flat[ok])
    out[ok] = vals
    ask[ok] = unsure
    return out, ask


def _ctypes(fn, flat: np.ndarray) -> np.ndarray:
    """``fn`` through ctypes, one call per distinct value (losses repeat values a lot; told
    apart by their bits, so -0 is not +0)."""
    uniq, inverse = np.unique(flat.view(_U32), return_inverse=True)
    uniq = uniq.view(_F32)
    with np.errstate(all="ignore"):  # the libm raises the flags its error paths should
        vals = np.asarray(np.frompyfunc(fn, 1, 1)(uniq), dtype=_F32)
    return vals[inverse.reshape(-1)]


def _agrees(name: str) -> bool:
    """Whether `_MODELS` ``name`` gives the process's libm's bits on every `_probe` value
    (asked once per process: 7,000 to 10,500 ctypes calls, a few ms)."""
    if name not in _AGREES:
        x = _probe(name)
        fn = _functions()[name]
        with np.errstate(all="ignore"):
            out, ask = _modelled(name, _MODELS[name], x)
        want = _ctypes(fn, x)
        same = (out.view(_U32) == want.view(_U32)) | ask
        _AGREES[name] = bool(same.all())
    return _AGREES[name]


def _probe(name: str) -> np.ndarray:
    """Values that reach every branch of the model's code: a spread over every binade of the
    domain, and runs of neighbours around 1, 0 and each threshold in the C code."""
    rng = np.random.default_rng(20261129)
    spread = rng.integers(1, 0x7F800000, 4096, dtype=np.uint32)
    edges = [0x3F800000, 0x3F7B0000, 0x3F830000, 0x00800000, 0x00000001, 0x7F7FFFFF]
    if name == "log1pf":
        spread = np.concatenate([spread[:2048], rng.integers(0x80000001, 0xBF800000, 2048, dtype=np.uint32)])
        edges = [0x3ED413D7, 0xBE95F61F, 0x31000000, 0xB1000000, 0x24800000, 0xA4800000, 0x5A000000,
                 0x3504F7 | 0x3F800000, 0x3F3504F7, 0xBEB504F7, 0xBF7FFFFF, 0x00000001, 0x7F7FFFFF]
    runs = [np.arange(-256, 256, dtype=np.int64) + e for e in edges]
    bits = np.concatenate([spread.astype(np.int64), *runs])
    bits = bits[(bits >= 0) & (bits < 2**32)].astype(np.uint32)
    return bits.view(_F32)


def _functions() -> dict:
    global _FUNCS
    if _FUNCS is None:
        _FUNCS = _load()
    return _FUNCS


def _load() -> dict:
    """``expf``, ``logf`` and ``log1pf`` of the process's libm through ctypes (float -> float)."""
    import ctypes

    lib: ctypes.CDLL | None
    try:  # glibc's soname: no `ldconfig -p` run per process (find_library's way on Linux)
        lib = ctypes.CDLL("libm.so.6")
    except OSError:
        import ctypes.util

        path = ctypes.util.find_library("m")
        try:
            lib = ctypes.CDLL(path) if path else None
        except OSError:
            lib = None
    out = {}
    for name in ("expf", "logf", "log1pf"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
            out[name] = fn
    return out
