"""The kernel models' float32 cores compiled (``csrc/``): the same bits as their numpy code, faster.

`eigen`, `xla` and `sleef` model framework kernels op for op in numpy, and `glibc` the C
library's functions; each numpy core marked `twin` has a C twin in the optional extension
``bce_audit._kernels``, built at install time where a C compiler is found. The twin gives the
numpy code's bits, NaN payloads included: ``tests/test_compiled.py`` compares the two on every
float16 and bfloat16 value, a dense sample of float32 and the edge cases. Where the extension did
not build, or with ``BCE_AUDIT_KERNELS=numpy`` set, the numpy code runs (the same numbers, slower);
`pure` does that for a block of code.

>>> import numpy as np
>>> @twin("expf")
... def expf(x):
...     return np.exp(x)
>>> float(expf(np.float32([0.0]))[0])
1.0
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

try:
    from bce_audit import _kernels  # type: ignore[attr-defined]
except ImportError:  # not built: the numpy code serves
    _kernels = None

ENV = "BCE_AUDIT_KERNELS"  # "numpy": the numpy code even where the extension is built
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_SHAPES: dict[str, tuple[int, int]] = {} if _kernels is None else {
    name: (nin, nout) for name, nin, nout in _kernels.names()}
_on = _kernels is not None and os.environ.get(ENV, "").strip().lower() != "numpy"


def active() -> bool:
    """Whether the compiled twins run (built, and not turned off)."""
    return _on


def names() -> tuple[str, ...]:
    """The kernels the extension holds (none where it did not build)."""
    return tuple(_SHAPES)


def run(name: str, *inputs: Any) -> Any:
    """The compiled kernel ``name`` on float32 arrays of one shape: its output, or a tuple of its
    outputs; None where it does not run here (not built, turned off, an input that is not a
    plain float32 array or scalar, or inputs of different shapes: the numpy code decides what
    those mean, and its choice between two NaNs may follow how numpy broadcasts)."""
    shape = _SHAPES.get(name) if _on else None
    if shape is None or len(inputs) != shape[0]:
        return None
    if any(type(a) is not np.ndarray and type(a) is not np.float32 for a in inputs):
        return None  # (a subclass, a masked array say, keeps what numpy gives it)
    arrays = [np.asarray(a) for a in inputs]
    if any(a.dtype != _F32 for a in arrays) or len({a.shape for a in arrays}) > 1:
        return None
    outs = [np.empty(arrays[0].shape, _F32) for _ in range(shape[1])]
    arrays = [_plain(a) for a in arrays]  # (a 0-d array comes out 1-d: the shape is taken first)
    assert _kernels is not None  # _on
    _kernels.apply(name, *outs, *arrays)
    return outs[0] if len(outs) == 1 else tuple(outs)


def _plain(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """``a`` as the C reads it: C-contiguous and aligned (a copy where it is not)."""
    return np.require(a, dtype, requirements=["C_CONTIGUOUS", "ALIGNED"])


def measure(computed: np.ndarray, exact: np.ndarray, inv_ulp: np.ndarray, mag: np.ndarray,
            complement: np.ndarray | None, rel: bool
            ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
    """`fastref.Scale.measure`'s arithmetic on float32 values in one compiled pass: (ULPs,
    relative errors or None, absolute errors) before its corrections at zeros and underflows;
    None where it does not run here (not built or turned off, values not float32 or not 1-d)."""
    c = np.asarray(computed)
    if not _on or c.dtype != _F32 or c.ndim != 1:
        return None
    ulps, diff = np.empty(c.shape), np.empty(c.shape)
    rels = np.empty(c.shape) if rel else None
    f64 = [_plain(a, _F64) for a in (exact, inv_ulp, mag)]
    comp = None if complement is None else _plain(complement, _F64)
    assert _kernels is not None  # _on
    _kernels.measure(_plain(c), *f64, comp, ulps, rels, diff)
    return ulps, rels, diff


def subnormals(a: np.ndarray) -> bool | None:
    """Whether a float32 or float64 array holds a subnormal value (one compiled pass); None where
    that is not asked here (not built or turned off, another dtype, not contiguous or aligned)."""
    if not _on or (a.dtype != _F32 and a.dtype != _F64) or not (a.flags.c_contiguous and a.flags.aligned):
        return None
    assert _kernels is not None  # _on
    return bool(_kernels.subnormals(a))


# count, first non-finite, first NaN, at, its ULPs, rel, abs, clip count, clip rel, round ULPs
Worst = tuple[Any, ...]


def measure_worst(computed: np.ndarray, exact: np.ndarray, inv_ulp: np.ndarray, mag: np.ndarray,
                  complement: np.ndarray | None, skip: np.ndarray,
                  clip: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None) -> Worst | None:
    """`measure`'s arithmetic on float32 values reduced as it goes, nothing written: (finite
    values, the first non-finite one or -1, the first NaN ULP error or -1, else the first largest
    ULP error's position or -1, that error, the largest relative and absolute errors), where the
    values are finite and ``skip`` (one byte a value) is 0; NaN wins each largest, as in numpy.
    With ``clip`` (the clipped-exact values, their relative distance from the exact ones, and
    the clipped-exact scale's exact values and inverse ULPs): the finite values with a clipped-
    exact value (not NaN), and the largest distance and rounding ULPs there. None where it does
    not run here (not built or turned off, values not float32 or not 1-d)."""
    c = np.asarray(computed)
    if not _on or c.dtype != _F32 or c.ndim != 1:
        return None
    assert _kernels is not None  # _on
    f64 = [_plain(a, _F64) for a in (exact, inv_ulp, mag)]
    comp = None if complement is None else _plain(complement, _F64)
    cols = (None,) * 4 if clip is None else tuple(_plain(a, _F64) for a in clip)
    return _kernels.measure_worst(_plain(c), *f64, comp, _plain(skip, np.uint8), *cols)


def scale(exact: np.ndarray, complement: bool, below: np.ndarray | None, minexp: int, nmant: int
          ) -> tuple[np.ndarray, np.ndarray] | None:
    """`fastref.scale`'s |exact| and inverse ULPs in one compiled pass (float64, 1-d), for a dtype
    of ``minexp`` and ``nmant``; None where it does not run here (not built or turned off)."""
    e = np.asarray(exact)
    if not _on or e.dtype != _F64 or e.ndim != 1:
        return None
    assert _kernels is not None  # _on
    mag, inv_ulp = np.empty(e.shape), np.empty(e.shape)
    _kernels.scale(_plain(e), complement, None if below is None else _plain(below, np.uint8), minexp, nmant,
                   mag, inv_ulp)
    return mag, inv_ulp


def clipped(src: np.ndarray, negate: bool, p: np.ndarray, bounds: tuple[float, float, float, float] | None,
            floor: float | None) -> np.ndarray | None:
    """`fastref.clipped`'s arithmetic after its logs, in one compiled pass: the log (``src``, or
    ``-src`` where ``negate``), set to the bounds' logs (``bounds``: lo, hi, and their logs) where
    p is below lo or above hi, raised to ``floor`` (NaN stays), negated. None where it does not
    run here (not built or turned off, not float64 or not 1-d)."""
    s = np.asarray(src)
    if not _on or s.dtype != _F64 or s.ndim != 1:
        return None
    assert _kernels is not None  # _on
    out = np.empty(s.shape)
    lo, hi, at_lo, at_hi = bounds if bounds is not None else (0.0, 0.0, 0.0, 0.0)
    _kernels.clip(_plain(s), negate, None if bounds is None else _plain(p, _F64), lo, hi, at_lo, at_hi,
                  None if floor is None else float(floor), out)
    return out


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``|a - b| / b`` of float64 arrays of one shape, in one compiled pass; None where it does
    not run here (not built or turned off, not float64 or not 1-d)."""
    x, y = np.asarray(a), np.asarray(b)
    if not _on or x.dtype != _F64 or y.dtype != _F64 or x.ndim != 1 or x.shape != y.shape:
        return None
    assert _kernels is not None  # _on
    out = np.empty(x.shape)
    _kernels.relative(_plain(x), _plain(y), out)
    return out


Texts = tuple[bytes, bytes]  # a column's texts one after another, and where each ends (uint32)


def texts(values: np.ndarray, absent: np.ndarray | None = None) -> Texts | None:
    """float64 values as JSON texts, in one compiled pass that lets go of the GIL: ``null`` where
    ``absent``, ``"nan"``, ``"inf"`` or ``"-inf"`` where not finite, else the shortest text that
    reads back the same, as Arrow writes it (``1e-7``, ``0.000001``, ``1e+10``). None where it
    does not run here (not built or turned off)."""
    if not _on:
        return None
    assert _kernels is not None  # _on
    return _kernels.texts(_plain(values, _F64), None if absent is None else _plain(absent, np.bool_))


def jsonl(literals: list[bytes], columns: list[Texts]) -> bytes:
    """Lines of ``literals[0]``, a text of ``columns[0]`` (from `texts`), ``literals[1]``, ...,
    ``literals[-1]``, joined in compiled code that lets go of the GIL."""
    assert _kernels is not None  # `texts` gave the columns
    return _kernels.jsonl(tuple(literals), tuple(columns))


def twin(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Marks a numpy function of float32 arrays as having the compiled twin ``name``: called with
    float32 arrays (and no keywords), the twin runs where it can. The numpy code stays reachable
    as ``.model``."""
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            out = None if kwargs else run(name, *args)
            return fn(*args, **kwargs) if out is None else out

        call.model = fn  # type: ignore[attr-defined]
        call.kernel = name  # type: ignore[attr-defined]
        return call
    return wrap


@contextlib.contextmanager
def pure() -> Iterator[None]:
    """The numpy code everywhere inside the block (the tests' oracle for the twins)."""
    global _on
    saved, _on = _on, False
    try:
        yield
    finally:
        _on = saved
