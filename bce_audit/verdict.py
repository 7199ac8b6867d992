"""The verdict: where each dtype breaks, and why, from the key points (no search here).

For each dtype and mode: the round trip's overflow, underflow and error onset; then, for each
formula and each side of 0, the first thing that goes wrong walking out from x = 0 (a floor, a
ceiling, a loss of exactly 0, inf or nan, a gradient of exactly 0), over labels 1 and 0, with
its cause. Formulas whose findings are the same are one row: a family.

>>> from bce_audit.records import KeyPoint
>>> kp = KeyPoint("float32", "native", "keras3", 1e-7, 1, "bce_floor", None, 15.7, 1.2e-7, None,
...               None, "bisection", cause="clip at 1-eps")
>>> [(f.what, f.name, f.cause) for f in findings([kp, replace(kp, formula="sklearn")])]  # a family
[(('keras3', 'sklearn'), 'bce_floor', 'clip at 1-eps')]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from bce_audit.records import KeyPoint

LOSS = ("bce_nonfinite", "bce_zero", "bce_floor", "bce_ceiling")  # ties: the worse one first
GRAD = ("grad_nonfinite", "grad_dead_zone")
ONSET = 1e-2  # the error onset the verdict shows (the largest threshold asked for if not this)


@dataclass(frozen=True)
class Finding:
    """One row of the verdict: what breaks (a key point's name and value), from which x, why."""

    dtype: str
    mode: str
    backend: str
    what: tuple[str, ...]  # the formulas (a family), or () for the built-in round trip
    name: str
    label: int | str | None
    eps: float | None
    threshold: float | None
    x: float
    value: float
    cause: str


def _finding(k: KeyPoint, what: tuple[str, ...]) -> Finding:
    return Finding(k.dtype, k.mode, k.backend, what, k.name, k.label, k.eps, k.threshold, k.x, k.value,
                   k.cause)


def findings(kps: Sequence[KeyPoint]) -> list[Finding]:
    """The verdict's rows, per dtype and mode in the order the key points come."""
    groups: dict[tuple, list[KeyPoint]] = {}
    for k in kps:
        groups.setdefault((k.dtype, k.mode, k.backend), []).append(k)
    out: list[Finding] = []
    for group in groups.values():
        out += _roundtrip(group)
        out += _families([f for kind in (LOSS, GRAD) for f in _first_breaks(group, kind)])
    return out


def _roundtrip(group: list[KeyPoint]) -> list[Finding]:
    out = []
    vias = dict.fromkeys(k.formula for k in group if k.name.startswith("roundtrip"))
    for via in vias:
        rt = [k for k in group if k.name.startswith("roundtrip") and k.formula == via]
        what = (via,) if via else ()
        out += [_finding(k, what) for k in rt if k.name in ("roundtrip_overflow", "roundtrip_underflow")]
        onsets = [k for k in rt if k.name == "roundtrip_rel_err_onset" and k.threshold is not None]
        if onsets:
            thrs = [k.threshold or 0.0 for k in onsets]
            thr = ONSET if ONSET in thrs else max(thrs)
            out += [_finding(k, what) for k in onsets if k.threshold == thr]
    return out


def _first_breaks(group: list[KeyPoint], names: tuple[str, ...]) -> list[Finding]:
    """Per formula (and eps) and side: the key point among ``names``, labels 1 and 0, nearest 0."""
    out = []
    pts = [k for k in group if k.name in names and k.label in (0, 1) and k.formula is not None]
    keys = dict.fromkeys((k.formula, k.eps) for k in pts)
    for formula, eps in keys:
        for side in ("+", "-"):
            here = [k for k in pts if (k.formula, k.eps, k.side) == (formula, eps, side)]
            if here:
                first = min(here, key=lambda k: (abs(k.x), k.label != 1, names.index(k.name)))
                out.append(_finding(first, (str(formula),)))
    return out


def _families(found: list[Finding]) -> list[Finding]:
    """Formulas whose findings are all the same (name, label, x, value, cause) as one family:
    their rows once, naming every member, in first-seen order."""
    rows: dict[tuple, list[Finding]] = {}
    for f in found:
        rows.setdefault((f.what, f.eps), []).append(f)
    merged: dict[tuple, list[Finding]] = {}
    for fs in rows.values():
        key = tuple((f.name, f.label, f.eps, f.x, str(f.value), f.cause) for f in fs)
        if key in merged:
            merged[key] = [replace(m, what=m.what + f.what) for m, f in zip(merged[key], fs, strict=True)]
        else:
            merged[key] = fs
    return [f for fs in merged.values() for f in fs]


def overview(found: Sequence[Finding]) -> list[Finding]:
    """Per dtype and mode, three rows: the round trip's overflow and error onset, and the
    loss that breaks first (nearest x = 0; a family's first member names it)."""
    groups: dict[tuple, list[Finding]] = {}
    for f in found:
        groups.setdefault((f.dtype, f.mode, f.backend), []).append(f)
    out = []
    for group in groups.values():
        out += [f for f in group if not f.what and f.name in ("roundtrip_overflow",
                                                              "roundtrip_rel_err_onset")]
        losses = [f for f in group if f.name in LOSS]
        if losses:
            out.append(min(losses, key=lambda f: abs(f.x)))
    return out
