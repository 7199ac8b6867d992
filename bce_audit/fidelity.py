"""Fidelity: do the numpy models compute what the real framework computes?

Each model (in the mode the framework follows: torch ``upcast``, jax ``per-op``) is run beside
the real op on every finite float16 and bfloat16 value and on a dense float32 grid; every
differing result is counted, with the largest gap in ULPs of the dtype and the first x.
The key points found through both are compared too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bce_audit import backends, dtypes, formulas, gradients, records, sweep
from bce_audit.formulas import Evaluator

FLOAT32_POINTS = 200_001
FLOAT32_RANGE = (-120.0, 120.0)
DEFAULT_DTYPES = ("float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Difference:
    """Model against real op for one dtype, quantity and label."""

    dtype: str
    quantity: str  # "sigmoid", "roundtrip", a formula name, or "grad <formula>"
    label: int | None
    inputs: int
    differ: int
    worst_ulp: float  # largest |model - real| in ULPs of the dtype (inf where one is not finite)
    first_x: float | None
    worst_x: float | None


@dataclass(frozen=True)
class KeyPointPair:
    dtype: str
    name: str
    formula: str | None
    label: int | str | None
    threshold: float | None
    model_x: float | None
    real_x: float | None
    steps: int | None  # dtype steps between them (0: the same point); None if one is absent


def inputs(dtype: str) -> np.ndarray:
    """Every finite value of a 16-bit dtype; a dense grid for wider ones."""
    info = dtypes.get(dtype)
    if info.exhaustive:
        return info.finite_values()
    return np.linspace(*FLOAT32_RANGE, FLOAT32_POINTS).astype(info.dtype)


def _compare(dtype: str, quantity: str, label, x: np.ndarray, model: np.ndarray, real: np.ndarray
             ) -> Difference:
    info = dtypes.get(dtype)
    m, r = model.astype(np.float64), real.astype(np.float64)
    same = (m == r) | (np.isnan(m) & np.isnan(r))
    bad = np.flatnonzero(~same)
    if not bad.size:
        return Difference(dtype, quantity, label, len(x), 0, 0.0, None, None)
    with np.errstate(all="ignore"):
        gap = np.abs(m[bad] - r[bad])
        ulp = np.exp2(info.ulp_exponent(np.floor(np.log2(np.abs(r[bad])))))  # 0: the subnormal gap
        ulps = np.where(np.isfinite(gap), gap / ulp, np.inf)
    i = int(np.argmax(ulps))
    return Difference(dtype, quantity, label, len(x), int(bad.size), float(ulps[i]), float(x[bad[0]]),
                      float(x[bad[i]]))


def differences(backend: backends.Backend, dtypes_=DEFAULT_DTYPES) -> list[Difference]:
    """Every model/real comparison for the formulas the backend has."""
    mode = sweep.native(records.Settings(backend=backend.name)).mode
    out = []
    for d in dtypes_:
        x = inputs(d)
        ev = Evaluator(d, mode)
        try:
            real_sig = backend.sigmoid(x)
            real_rt = backend.logit(real_sig)
        except backends.Unsupported:
            continue
        out.append(_compare(d, "sigmoid", None, x, formulas.evaluate_sigmoid(x, ev), real_sig))
        out.append(_compare(d, "roundtrip", None, x, formulas.evaluate_roundtrip(x, ev), real_rt))
        for name in backend.bce:
            model = formulas.get(name)
            for label in (1, 0):
                y = np.full(x.shape, label)
                real = backend.bce[name](x, ev.arr(y))
                out.append(_compare(d, name, label, x, model(x, y, None, ev), real))
                if name in backend.grad:
                    g_model = gradients.grad(name, x, y, None, ev)
                    g_real = backend.grad[name](x, ev.arr(y))
                    out.append(_compare(d, f"grad {name}", label, x, g_model, g_real))
    return out


def keypoint_pairs(backend: backends.Backend, dtypes_=DEFAULT_DTYPES) -> list[KeyPointPair]:
    """The key points found through the models and through the real ops, side by side."""
    names = tuple(backend.bce)
    mode = sweep.native(records.Settings(backend=backend.name)).mode
    model = sweep.run_sweep(records.Settings(dtypes=dtypes_, formulas=names, mode=mode, grad=True),
                            with_rows=False).keypoints
    real = sweep.run_sweep(records.Settings(dtypes=dtypes_, formulas=names, backend=backend.name,
                                          device=backend.device, grad=True), with_rows=False).keypoints

    def key(k: records.KeyPoint):
        return (k.dtype, k.name, k.formula, str(k.label), k.threshold, math.copysign(1, k.x))

    by_real = {key(k): k for k in real}
    out = []
    for k in model:
        r = by_real.pop(key(k), None)
        out.append(KeyPointPair(k.dtype, k.name, k.formula, k.label, k.threshold, k.x,
                                r.x if r else None, _steps(k.dtype, k.x, r.x) if r else None))
    for r in by_real.values():
        out.append(KeyPointPair(r.dtype, r.name, r.formula, r.label, r.threshold, None, r.x, None))
    return out


def _steps(dtype: str, a: float, b: float) -> int:
    info = dtypes.get(dtype)
    oa, ob = (int(np.asarray(info.ordinal(np.asarray([v]).astype(info.dtype)))[0]) for v in (a, b))
    return abs(oa - ob)
