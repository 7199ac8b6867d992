"""Fidelity: do the numpy models compute what the real framework computes?

Each model (in the mode the framework follows: torch ``upcast``, jax ``per-op``) is run beside
the real op on every finite float16 and bfloat16 value and on a dense float32 grid; every
differing result is counted, with the largest gap in ULPs of the dtype and the first x.
The key points found through both are compared too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from bce_audit import backends, dtypes, records, sweep

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


def grid(dtype: str) -> records.Settings:
    """The inputs compared: every finite value of a 16-bit dtype; a dense grid for wider ones."""
    if dtypes.get(dtype).exhaustive:
        return records.Settings(dtypes=(dtype,), exhaustive=True, range=(-math.inf, math.inf))
    return records.Settings(dtypes=(dtype,), range=FLOAT32_RANGE, points=FLOAT32_POINTS)


class _Gap:
    """Model against real values of one series, fed block by block (as one pass would find)."""

    def __init__(self) -> None:
        self.n = self.count = 0
        self.worst = 0.0
        self.first_x: float | None = None
        self.worst_x: float | None = None

    def update(self, dtype: str, x: np.ndarray, model: np.ndarray, real: np.ndarray) -> None:
        self.n += len(x)
        same = (model == real) | (np.isnan(model) & np.isnan(real))
        bad = np.flatnonzero(~same)
        if not bad.size:
            return
        with np.errstate(all="ignore"):
            gap = np.abs(model[bad] - real[bad])
            binade = np.floor(np.log2(np.abs(real[bad])))
            ulp = np.exp2(dtypes.get(dtype).ulp_exponent(binade))  # at 0: the subnormal gap
            ulps = np.where(np.isfinite(gap), gap / ulp, np.inf)
        i = int(np.argmax(ulps))
        if self.first_x is None:
            self.first_x = float(x[bad[0]])
        if self.worst_x is None or ulps[i] > self.worst:
            self.worst, self.worst_x = float(ulps[i]), float(x[bad[i]])
        self.count += int(bad.size)


def differences(backend: backends.Backend, dtypes_=DEFAULT_DTYPES) -> list[Difference]:
    """Every model/real comparison for the formulas the backend has: the sweep's engine run twice
    over the same inputs, once through the models and once through the real ops, its blocks
    compared value by value as they come (memory: one chunk)."""
    mode = sweep.native(backend.select(records.Settings())).mode
    names = tuple(backend.bce)
    out = []
    for d in dtypes_:
        model = replace(grid(d), formulas=names, mode=mode, grad=True, keep=None)
        real = backend.select(model)
        gaps: dict[tuple, _Gap] = {}
        try:
            chunks = zip(sweep.run_chunks(model, d, None), sweep.run_chunks(real, d, None), strict=True)
            for m, r in chunks:
                reals = {_key(b): b for b in r.blocks}
                for b in m.blocks:
                    if b.label != "pair" and _key(b) in reals:
                        gaps.setdefault(_key(b), _Gap()).update(d, b.floats["x_dtype"], b.floats["value"],
                                                                 reals[_key(b)].floats["value"])
        except backends.Unsupported:
            continue
        for name, real_fn in backend.variants.items():
            gaps[(name, None, None)] = _variant_gap(d, name, real_fn)
        order: list[tuple[str, str | None, int | None]] = [("sigmoid", None, None), ("roundtrip", None, None)]
        order += [(name, None, None) for name in backend.variants]
        for name in names:
            for label in (1, 0):
                order += [("bce", name, label), ("grad", name, label)]
        for key in order:
            if key in gaps:
                g = gaps[key]
                quantity = {"bce": str(key[1]), "grad": f"grad {key[1]}"}.get(key[0], key[0])
                out.append(Difference(d, quantity, key[2], g.n, g.count, g.worst, g.first_x, g.worst_x))
    return out


VARIANTS = {"roundtrip in one jit": "roundtrip_fused"}  # backend variant -> its `xla` model


def _variant_gap(dtype: str, name: str, real_fn) -> _Gap:
    """A framework-only variant against its model, over the same inputs, a chunk at a time."""
    from bce_audit import xla

    model_fn = getattr(xla, VARIANTS[name])
    s = grid(dtype)
    gap = _Gap()
    n = sweep.grid_size(s, dtype)
    for start in range(0, n, sweep.CHUNK):
        x = sweep.grid_slice(s, dtype, start, min(n, start + sweep.CHUNK))
        xd = np.asarray(x).astype(dtypes.get(dtype).dtype)
        try:
            real = real_fn(xd)
        except backends.Unsupported:
            break
        gap.update(dtype, xd.astype(np.float64), model_fn(xd), real)
    return gap


def _key(b: records.Block) -> tuple:
    return (b.quantity, b.formula, b.label)


def keypoint_pairs(backend: backends.Backend, dtypes_=DEFAULT_DTYPES) -> list[KeyPointPair]:
    """The key points found through the models and through the real ops, side by side."""
    names = tuple(backend.bce)
    mode = sweep.native(backend.select(records.Settings())).mode
    model = sweep.run_sweep(records.Settings(dtypes=dtypes_, formulas=names, mode=mode, grad=True),
                            with_rows=False).keypoints
    real = sweep.run_sweep(backend.select(records.Settings(dtypes=dtypes_, formulas=names, grad=True)),
                           with_rows=False).keypoints

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
