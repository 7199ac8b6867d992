"""The dtype registry: numpy and ml_dtypes floats, their limits, and the grid of representable values.

Every dtype value has an *ordinal*: an integer that counts representable values in order
(0 is +0, 1 the smallest positive subnormal, -1 its negative). Key-point searches walk
ordinals, so they visit exactly the values the dtype can hold and nothing in between.

>>> info = get("float32")
>>> info.eps == float.fromhex("0x1p-23")
True
>>> int(info.ordinal(info.value(12345)))
12345
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import ml_dtypes
import numpy as np

_LD = np.finfo(np.longdouble)
_LD_KIND = {
    63: "x87 80-bit extended",
    52: "only float64 here",
    112: "IEEE binary128 (quad precision)",
    105: "double-double (IBM extended)",
}.get(_LD.nmant, f"{_LD.nmant + 1}-bit significand")


@dataclass(frozen=True)
class DtypeInfo:
    """One audited floating-point format and the facts about it that the audit needs."""

    name: str
    type: type
    bits: int          # storage width of the value itself (80 for x87 longdouble)
    nmant: int         # explicit fraction bits; precision is nmant + 1
    minexp: int        # exponent of the smallest normal number
    maxexp: int        # 2**maxexp is the first power of two that overflows
    has_inf: bool
    description: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.type)

    @property
    def precision(self) -> int:
        """Significand bits, counting the implicit leading bit."""
        return self.nmant + 1

    @cached_property
    def eps(self) -> float:
        """Machine epsilon: the gap between 1 and the next larger value."""
        return math.ldexp(1.0, -self.nmant)

    @cached_property
    def tiny(self) -> Fraction:
        """Smallest positive normal number, exact."""
        return Fraction(2) ** self.minexp

    @cached_property
    def smallest_subnormal(self) -> Fraction:
        return Fraction(2) ** (self.minexp - self.nmant)

    @cached_property
    def max(self) -> Fraction:
        """Largest finite value, exact (read from the format, not assumed IEEE)."""
        return Fraction(self.finfo.max.item()) if self.bits <= 64 else _ld_to_fraction(_LD.max)

    @cached_property
    def finfo(self):
        return _finfo(self.type)

    @property
    def narrow(self) -> bool:
        """Narrower than float32: frameworks compute these in float32 "opmath"."""
        return self.precision < 24

    @cached_property
    def max_ordinal(self) -> int:
        """Ordinal of the largest finite value."""
        return int(self.ordinal(self.type(self.finfo.max)))

    @property
    def exhaustive(self) -> bool:
        """Small enough to evaluate every finite value (8- and 16-bit formats)."""
        return self.bits <= 16

    def ulp_exponent(self, binade):
        """log2 of the dtype's ULP, the gap between consecutive values, in the binade
        [2**binade, 2**(binade + 1)); below the normals the subnormal gap. The one definition of
        an ULP: the exact (Fraction), mpmath and vectorised (numpy) measures all take it from here.

        >>> get("float32").ulp_exponent(0), get("float32").ulp_exponent(-200)
        (-23, -149)
        """
        if isinstance(binade, (int, np.integer)):
            return max(int(binade), self.minexp) - self.nmant
        return np.maximum(binade, self.minexp) - self.nmant

    def ulp(self, magnitude: Fraction) -> Fraction:
        """Gap between consecutive dtype values at |magnitude| (subnormal spacing near zero)."""
        e = self.minexp if magnitude == 0 else _floor_log2(abs(magnitude))
        return Fraction(2) ** self.ulp_exponent(e)

    def ordinal(self, values):
        """Ordinals of dtype values (array in, int64 array out; Python int for longdouble)."""
        if self.bits > 64:
            return _ld_ordinal(values)
        arr = np.asarray(values, dtype=self.dtype)
        raw = arr.view(_UINT[self.bits]).astype(np.uint64)
        sign = np.uint64(1) << np.uint64(self.bits - 1)
        mag = (raw & (sign - np.uint64(1))).astype(np.int64)
        return np.where((raw & sign) != 0, -mag, mag)

    def value(self, ordinals):
        """Dtype values at the given ordinals (inverse of `ordinal`)."""
        if self.bits > 64:
            return _ld_value(ordinals)
        o = np.asarray(ordinals, dtype=np.int64)
        sign = np.uint64(1) << np.uint64(self.bits - 1)
        mag = np.abs(o).astype(np.uint64)
        raw = np.where(o < 0, mag | sign, mag).astype(_UINT[self.bits])
        return raw.view(self.dtype)

    def finite_values(self) -> np.ndarray:
        """Every finite value of an 8- or 16-bit dtype, in increasing order (a read-only array)."""
        if not self.exhaustive:
            raise ValueError(f"{self.name} has too many values to enumerate")
        return self._finite

    @cached_property
    def _finite(self) -> np.ndarray:
        values = self.value(np.arange(-self.max_ordinal, self.max_ordinal + 1))
        values.flags.writeable = False
        return values

    def round(self, x: float):
        """The dtype value nearest to x (round to nearest even), as a numpy scalar."""
        return np.asarray(x, dtype=np.float64).astype(self.dtype)[()] if self.bits <= 64 else np.longdouble(x)


_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


def _floor_log2(q: Fraction) -> int:
    e = q.numerator.bit_length() - q.denominator.bit_length()
    return e if Fraction(2) ** e <= q else e - 1


def _ld_to_fraction(v) -> Fraction:
    """Exact rational value of a finite longdouble."""
    m, e = np.frexp(np.longdouble(v))
    mi = int(np.ldexp(m, _LD.nmant + 1))  # exact: the significand has nmant + 1 bits
    return Fraction(mi) * Fraction(2) ** (int(e) - _LD.nmant - 1)


def _ld_ordinal(values):
    """Ordinal of longdouble values: exponent field * 2**nmant + fraction, signed (Python ints)."""
    arr = np.atleast_1d(np.asarray(values, dtype=np.longdouble))
    emin, nm = _LD.minexp, _LD.nmant
    mag = np.abs(arr)
    m, e = np.frexp(mag)
    e = e.astype(np.int64) - 1  # mag = (2m) * 2**e with 2m in [1, 2)
    sub = (e < emin) | (mag == 0)
    with np.errstate(all="ignore"):
        frac = np.where(sub, np.ldexp(mag, nm - emin), np.ldexp(m * 2 - 1, nm)).astype(np.uint64)
    field = np.where(sub, 0, e - emin + 1)
    out = [(int(f) << nm) + int(fr) for f, fr in zip(field.tolist(), frac.tolist(), strict=True)]
    out = [-o if neg else o for o, neg in zip(out, np.signbit(arr).tolist(), strict=True)]
    return out if np.ndim(values) else out[0]


def _ld_value(ordinals):
    """Longdouble values at ordinals (Python ints), vectorised after one split of each int."""
    scalar = isinstance(ordinals, (int, np.integer))
    ords = [int(ordinals)] if scalar else [int(o) for o in ordinals]
    emin, nm = _LD.minexp, _LD.nmant
    mask = (1 << nm) - 1
    n = [-o if o < 0 else o for o in ords]
    field = np.array([v >> nm for v in n], dtype=np.int64)
    frac = np.array([v & mask for v in n], dtype=np.uint64).astype(np.longdouble)
    normal = field > 0
    sig = np.where(normal, frac + np.longdouble(2) ** nm, frac)
    exp = np.where(normal, field - 1 + emin - nm, emin - nm)
    v = np.ldexp(sig, exp.astype(np.int32))
    neg = np.array([o < 0 for o in ords], dtype=bool)
    v = np.where(neg, -v, v).astype(np.longdouble)
    return v[0] if scalar else v


def _finfo(typ: type):
    return ml_dtypes.finfo(typ) if typ.__module__.startswith("ml_dtypes") else np.finfo(typ)


def _make(name: str, typ: type, description: str) -> DtypeInfo:
    fi = _finfo(typ)
    bits = fi.bits if typ is not np.longdouble else 1 + fi.nexp + fi.nmant + (1 if fi.nmant == 63 else 0)
    has_inf = bool(np.isinf(np.asarray(np.inf, dtype=np.float64).astype(typ)))
    return DtypeInfo(name, typ, bits, fi.nmant, fi.minexp, fi.maxexp, has_inf, description)


DTYPES: dict[str, DtypeInfo] = {
    d.name: d
    for d in (
        _make("float8_e4m3fn", ml_dtypes.float8_e4m3fn, "OCP FP8 E4M3, no inf"),
        _make("float8_e5m2", ml_dtypes.float8_e5m2, "OCP FP8 E5M2"),
        _make("float16", np.float16, "IEEE binary16 (half)"),
        _make("bfloat16", ml_dtypes.bfloat16, "brain float"),
        _make("float32", np.float32, "IEEE binary32 (single)"),
        _make("float64", np.float64, "IEEE binary64 (double)"),
        _make("longdouble", np.longdouble, f"C long double: {_LD_KIND}"),
    )
}
NAMES: tuple[str, ...] = tuple(DTYPES)

# Other spellings of each dtype (the frameworks' and the tables' own), matched without regard to
# case. Records and output always carry the canonical name. Plain "float" is left out on purpose:
# it is float32 in PyTorch but float64 in numpy and Python.
ALIASES: dict[str, str] = {
    **dict.fromkeys(("fp8", "f8", "e4m3", "e4m3fn", "f8e4m3"), "float8_e4m3fn"),
    **dict.fromkeys(("e5m2", "f8e5m2"), "float8_e5m2"),
    **dict.fromkeys(("f16", "fp16", "half"), "float16"),
    **dict.fromkeys(("bf16",), "bfloat16"),
    **dict.fromkeys(("f32", "fp32", "single"), "float32"),
    **dict.fromkeys(("f64", "fp64", "double"), "float64"),
}


def canonical(name: str) -> str | None:
    """The canonical name of a dtype given by name or alias, in any case (None: no such dtype).

    >>> canonical("FP16"), canonical("bf16"), canonical("float32"), canonical("float99")
    ('float16', 'bfloat16', 'float32', None)
    """
    if name in DTYPES:
        return name
    key = name.strip().lower()
    return key if key in DTYPES else ALIASES.get(key)


def aliases_help() -> str:
    """The alias table in words, for --help and error messages."""
    by: dict[str, list[str]] = {}
    for alias, name in ALIASES.items():
        by.setdefault(name, []).append(alias)
    return "; ".join(f"{', '.join(a)} = {name}" for name, a in by.items())


def get(name: str) -> DtypeInfo:
    """Look a dtype up by name or alias; raises KeyError naming the valid choices."""
    found = canonical(name) if isinstance(name, str) else None
    if found is None:
        raise KeyError(f"unknown dtype {name!r}; choose from {', '.join(NAMES)}")
    return DTYPES[found]


def to_fraction(v) -> Fraction:
    """Exact rational value of a finite dtype scalar (any registered dtype)."""
    if isinstance(v, np.longdouble):
        return _ld_to_fraction(v)
    return Fraction(float(v))


def exhaustive_bounds(info: DtypeInfo, rng: tuple[float, float]) -> tuple[int, int]:
    """Ordinals of the first and last dtype values inside [lo, hi] (every finite one for +-inf)."""
    lo, hi = rng
    top = info.max_ordinal

    def ordinal(v: float, up: bool) -> int:
        if math.isinf(v):
            return top if v > 0 else -top
        with np.errstate(over="ignore", invalid="ignore"):
            d = np.asarray([v]).astype(info.dtype)
        if not np.isfinite(d[0]):  # beyond the dtype's largest value
            beyond = top + 1 if up else top
            return beyond if v > 0 else -beyond
        o = int(np.asarray(info.ordinal(d))[0])
        got = float(d[0])
        if up and got < v:
            o += 1
        if not up and got > v:
            o -= 1
        return o

    return ordinal(lo, True), ordinal(hi, False)


def special(v: float, signed_zero: bool = True) -> str | None:
    """The text of nan, inf, -inf and zero (``-0`` where ``signed_zero``); None for any other
    number: one spelling for every formatter.

    >>> special(float("-inf")), special(-0.0), special(-0.0, signed_zero=False), special(2.5)
    ('-inf', '-0', '0', None)
    """
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "-0" if signed_zero and math.copysign(1.0, v) < 0 else "0"
    return None


def shortest(v, name: str) -> str:
    """The shortest decimal that reads back as this value of dtype ``name``: numpy's ``unique``
    repr of the dtype's own scalar (float32 ``0.99999994``, not ``1``); for the ml_dtypes types
    (bfloat16, float8), whose ``unique`` repr is float64's, the fewest digits that round back.
    Positional from 1e-4 to 1e7, else scientific (``6.8256035e-8``).

    >>> shortest(1 - 2.0 ** -24, "float32"), shortest(0.99999994, "bfloat16"), shortest(-0.0, "float16")
    ('0.99999994', '1', '-0')
    """
    f = float(v)
    text = special(f)
    if text is not None:
        return text
    typ = get(name).type
    scalar = typ(v)
    positional = 1e-4 <= abs(f) < 1e7
    if typ.__module__.startswith("ml_dtypes"):
        for d in range(0 if positional else 1, 18):
            text = (np.format_float_positional(float(scalar), precision=d, unique=False, trim="-")
                    if positional else digits(float(scalar), d))
            if typ(float(text)) == scalar:
                return text
    if positional:
        return np.format_float_positional(scalar, unique=True, trim="-")
    return np.format_float_scientific(scalar, unique=True, trim="-", exp_digits=1).replace("e+", "e")


def digits(v: float, d: int) -> str:
    """v to d significant digits, in the style of `shortest`."""
    if 1e-4 <= abs(v) < 1e7:
        return np.format_float_positional(v, precision=d, unique=False, fractional=False, trim="-")
    sci = np.format_float_scientific(v, precision=d - 1, unique=False, trim="-", exp_digits=1)
    return sci.replace("e+", "e")


# ---------------------------------------------------------------- arrays as memo keys


_X87 = np.finfo(np.longdouble).nmant == 63  # an 80-bit longdouble padded to 12 or 16 bytes


def _bytes(a: np.ndarray) -> bytes:
    """The bits of an array's values: an x87 longdouble's 10 bytes, not its padding (which is
    not always zero, and would make equal values differ)."""
    if _X87 and a.dtype == np.longdouble:
        return np.ascontiguousarray(a).view(np.uint8).reshape(*a.shape, a.itemsize)[..., :10].tobytes()
    return a.tobytes()


def bits_key(a: np.ndarray) -> tuple:
    """A memo key that holds an array's dtype, shape and bits: equal for arrays equal bit for bit
    (the dtype itself, not its ``str``: ml_dtypes' formats share strings such as ``<V1``)."""
    return a.dtype, a.shape, _Bits(_bytes(a))


class _Bits:
    """An array's bits as a memo key: hashed by a sample of them (hashing every byte of a large
    array costs more than many kernels), equal only when every byte is."""

    __slots__ = ("_hash", "data")

    SAMPLE = 4096  # bytes hashed at most

    def __init__(self, data: bytes):
        self.data = data
        step = len(data) // self.SAMPLE | 1  # odd: the sample visits every byte of an item
        self._hash = hash((len(data), data[::step]))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Bits) and self.data == other.data
