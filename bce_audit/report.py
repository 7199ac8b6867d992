"""Renderers: rich tables, JSON, CSV and markdown from result records. No math here.

Every renderer returns a renderable or a string; only the CLI prints. Cells are colour-coded
by error class, and degraded cells also carry a ``*`` so the class survives a log without
colour.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields, replace
from decimal import Decimal
from fractions import Fraction

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from bce_audit import __version__, verdict
from bce_audit.dtypes import DtypeInfo, shortest, special
from bce_audit.dtypes import digits as _digits
from bce_audit.dtypes import get as get_dtype
from bce_audit.records import (
    SCHEMA,
    KeyPoint,
    ReproCase,
    Row,
    SweepResult,
    Worst,
    clean,
    sample_indices,
    to_json,
)

# Schema history: bce-audit/1 (0.1.0): settings, keypoints, rows, worst.

CLASSES = (  # (name, style, marker); thresholds in ULPs of the audited dtype
    ("exact", "green", ""),        # correctly rounded: at most 0.5 ULP
    ("few-ulp", "", ""),           # within 4 ULP
    ("degraded", "yellow", "*"),   # more than 4 ULP
    ("non-finite", "bold red", ""),
)
LEGEND = "green: <= 0.5 ULP (correctly rounded) | plain: <= 4 ULP | yellow *: > 4 ULP | red: inf/nan"


# ---------------------------------------------------------------- numbers


def fmt(v: float | None, digits: int = 4) -> str:
    """Compact number: ``1.192e-7``, ``16.64``, ``inf``; '-' for None."""
    if v is None:
        return "-"
    v = float(v)
    text = special(v, signed_zero=False)
    if text is not None:
        return text
    s = f"{v:.{digits - 1}e}" if abs(v) < 1e-3 else f"{v:.{digits}g}"
    if "e" in s:
        mant, exp = s.split("e")
        if "." in mant:
            mant = mant.rstrip("0").rstrip(".")
        s = f"{mant}e{int(exp)}"
    return s


def fmt_x(v: float | None) -> str:
    """Inputs: enough digits to tell neighbours apart."""
    return fmt(v, 8)


def fmt_at(v: float, dtype: str) -> str:
    """A key point's position: the shortest text that reads back as the dtype's value
    (`dtypes.shortest`, as ``check`` prints it): float16 -6.23828125 as ``-6.24``, not the
    ``-6.2382812`` of 8 digits, which is neither that value nor its shortest text. Below 1e-3
    in scientific notation, as `fmt` writes small numbers (the same digits)."""
    text = shortest(v, dtype)
    if "e" not in text and 0 < abs(float(v)) < 1e-3:
        return f"{Decimal(text):e}".replace("e-0", "e-")
    return text


def error_class(ulp: float, value: float) -> int:
    if not math.isfinite(value):
        return 3
    if math.isnan(ulp) or ulp > 4:
        return 2
    return 0 if ulp <= 0.5 else 1


def cell(value: float, ulp: float, digits: int = 4) -> Text:
    _, style, marker = CLASSES[error_class(ulp, value)]
    return Text(fmt(value, digits) + marker, style=style)


def bits_cell(r: Row) -> Text:
    """Bits of error to one decimal (0.0 = exact), classed like the value itself."""
    if not math.isfinite(r.value):
        return cell(r.value, r.ulp_err)
    _, style, marker = CLASSES[error_class(r.ulp_err, r.value)]
    return Text(f"{r.bits:.1f}{marker}", style=style)


def _eps(e: float | None) -> str:
    return "-" if e is None else fmt(e, 3)


def _label(label) -> str:
    return "-" if label is None else str(label)


# ---------------------------------------------------------------- tables


def _table(title: str | None = None) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
                 title_justify="left", title_style="bold")


def _pred(k: KeyPoint) -> str:
    if k.predicted is None:
        return "-"
    return ("x " + fmt_x(k.predicted)) if k.predicts == "x" else fmt(k.predicted, 5)


def _value(k: KeyPoint) -> Text:
    return Text(fmt(k.value, 5), style="bold red" if not math.isfinite(k.value) else "")


KEYPOINT_LEGEND = (  # under 80 columns
    "key point: roundtrip_overflow / _underflow: the first x (+ / -) whose round",
    "  trip is not finite; roundtrip_rel_err_onset: the first x >= 1 whose relative",
    "  error reaches the threshold; roundtrip_small_x_limit: the largest x < 1 where",
    "  it still does; threshold: that relative error; x: a value of the dtype",
    "value: the round trip at x (for the error points, its relative error there)",
    "predicted: the x derived from eps alone (overflow: -ln(eps/2)); -: none",
    "cause: what the arithmetic does at x",
)
BCE_KEYPOINT_LEGEND = (  # under 80 columns
    "key point: bce_floor / bce_ceiling: the loss stops falling / rising and holds",
    "  value from x to the end of the range; bce_zero: exactly 0 from x;",
    "  bce_nonfinite: the first x out from 0 where it is inf or nan; grad_*: the",
    "  same for the gradient dBCE/dx; formula: as FORMULAS.md names it",
    "y: the label (pair: the mean over (-a, 0) and (a, 1)); x: a value of the dtype",
    "value: the loss (or gradient) at x; predicted: the clipped formula's limit in",
    "  exact arithmetic (beside value), or, as 'x ...', the x from which even a",
    "  correctly rounded loss is 0; cause: what the arithmetic does at x",
)


def _cause_legend(lines: Sequence[str], why: bool) -> Sequence[str]:
    """A key-point legend, its cause column said to be the JSON's where the table has none."""
    if why:
        return lines
    return [*lines[:-1], lines[-1].replace("cause: what the arithmetic does at x",
                                           "causes: in the verdict and the JSON")]


def _legend(lines: Sequence[str]) -> Text:
    return Text("\n".join(lines) + "\n", style="dim")


CAUSE_WIDTH = 100  # the detail tables carry the cause from this many columns (the verdict always)


def keypoint_tables(kps: Sequence[KeyPoint], width: int = 100) -> list[RenderableType]:
    """Per dtype and mode: the round trip's key points, then each formula's; measured beside
    predicted, with each one's cause where ``width`` leaves room; a legend under each table."""
    why = width >= CAUSE_WIDTH
    tables: list[RenderableType] = []
    for (dtype, mode), group in _group(kps, lambda k: (k.dtype, k.mode)):
        rts = _group([k for k in group if k.name.startswith("roundtrip")], lambda k: k.formula)
        backend = "" if group[0].backend == "numpy" else f", {group[0].backend}"
        for via, rt in rts:
            t = _table(f"Round-trip key points: {dtype}, {mode}{backend}" + (f", {via}" if via else ""))
            t.add_column("key point", no_wrap=True)
            for name in ("threshold", "x", "value", "predicted"):
                t.add_column(name, justify="right", no_wrap=True)
            if why:
                t.add_column("cause", overflow="fold")
            for k in rt:
                thr = fmt(k.threshold, 3) if k.threshold is not None else "-"
                t.add_row(k.name, thr, fmt_at(k.x, k.dtype), _value(k), _pred(k), *([k.cause] if why else []))
            tables += [t, _legend(_cause_legend(KEYPOINT_LEGEND, why))]
        bce = [k for k in group if not k.name.startswith("roundtrip")]
        if bce:
            eps_set = {k.eps for k in bce if k.eps is not None}
            one_eps = len(eps_set) <= 1  # then it goes in the title, not in a column
            title = f"BCE key points: {dtype}, {mode}{backend}" + (
                f", eps {fmt(min(eps_set), 3)}" if eps_set and one_eps else "")
            t = _table(title)
            t.add_column("key point", no_wrap=True)
            t.add_column("formula", overflow="fold")  # at 80 columns a long name folds, no number
            for name in ("y",) + (() if one_eps else ("eps",)):
                t.add_column(name, no_wrap=True)
            for name in ("x", "value", "predicted"):
                t.add_column(name, justify="right", no_wrap=True)
            if why:
                t.add_column("cause", overflow="fold")
            for k in bce:
                eps_cell = () if one_eps else (_eps(k.eps),)
                t.add_row(k.name, k.formula, _label(k.label), *eps_cell, fmt_at(k.x, k.dtype), _value(k),
                          _pred(k), *([k.cause] if why else []))
            tables += [t, _legend(_cause_legend(BCE_KEYPOINT_LEGEND, why))]
    return tables


def _group(items: Iterable, key) -> list[tuple]:
    out: dict = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return list(out.items())


def fitting(items: list, widths: Sequence[int], width: int, fixed: int) -> list[list]:
    """Split columns (each ``widths[i]`` characters wide) into as few even groups as fit
    ``width`` beside ``fixed`` characters of other columns."""
    if not items:
        return [[]]
    for n in range(1, len(items) + 1):
        size = -(-len(items) // n)
        parts = [list(range(i, min(i + size, len(items)))) for i in range(0, len(items), size)]
        if all(fixed + sum(widths[i] for i in p) <= width for p in parts):
            return [[items[i] for i in p] for p in parts]
    return [[it] for it in items]


SAMPLE_LEGEND = (  # under 80 columns
    "x: the grid's logit; x in dtype: as the dtype holds it; sigmoid: the dtype's",
    "exact: mpmath's sigmoid at x in dtype; round trip: logit(sigmoid(x)), in dtype",
    "rel err: |round trip - x| / |x|; ULP: the round trip's error, in ULPs",
)
BCE_SAMPLE_LEGEND = (  # under 80 columns
    "x: the grid's logit; exact: mpmath's value at x in the dtype; each formula:",
    "  its result in the dtype (green: correctly rounded; *: more than 4 ULP off;",
    "  red: inf or nan)",
)
BITS_LEGEND = (  # under 80 columns
    "x, exact: as above; each formula: its bits of error, log2(1 + ULPs) (0.0:",
    "  exact; the dtype's precision, e.g. 24 for float32: no correct bit)",
)


def sample_tables(rows: Sequence[Row], show: int = 11, width: int = 100) -> list[RenderableType]:
    """Sampled rows: the round trip, then each label's BCE under every formula."""
    tables: list[RenderableType] = []
    for (dtype, mode), group in _group(rows, lambda r: (r.dtype, r.mode)):
        sig = [r for r in group if r.quantity == "sigmoid" and r.formula is None]
        rt = [r for r in group if r.quantity == "roundtrip" and r.formula is None]
        idx = sample_indices(len(sig), show)
        t = _table(f"Sampled: sigmoid and round trip, {dtype}, {mode}")
        for name in ("x", "x in dtype", "sigmoid", "exact", "round trip", "rel err", "ULP"):
            t.add_column(name, justify="right", no_wrap=True)
        for i in idx:
            s, r = sig[i], rt[i]
            t.add_row(fmt(s.x, 6), fmt_x(s.x_dtype), cell(s.value, s.ulp_err, 8), fmt(s.exact, 8),
                      cell(r.value, r.ulp_err, 8), fmt(r.rel_err, 3), fmt(r.ulp_err, 3))
        tables += [t, _legend(SAMPLE_LEGEND)]
        for quantity, noun in (("bce", "BCE"), ("grad", "gradient dBCE/dx")):
            tables += _formula_tables([r for r in group if r.quantity == quantity], noun, dtype, mode,
                                      idx, width)
    return tables


def _formula_tables(rows: list[Row], noun: str, dtype: str, mode: str, idx: list[int], width: int
                    ) -> list[RenderableType]:
    """Per label (and eps): the formulas' values side by side, then their bits of error."""
    tables: list[RenderableType] = []
    labels = list(dict.fromkeys(r.label for r in rows))
    eps_values: list[float | None] = list(dict.fromkeys(r.eps for r in rows if r.eps is not None)) or [None]
    for label in labels:
        for eps in eps_values:
            cols = [r for r in rows if r.label == label and (r.eps is None or r.eps == eps)]
            by_formula = _group(cols, lambda r: r.formula)
            what = f"label {label}, {dtype}, {mode}" + (f", eps {fmt(eps, 3)}" if eps is not None else "")
            for errors, each, legend in ((False, 10, BCE_SAMPLE_LEGEND), (True, 6, BITS_LEGEND)):
                widths = [max(each, len(str(f))) + 2 for f, _ in by_formula]
                for part in fitting(by_formula, widths, width, 17):
                    kind = "Bits of error" if errors else "Sampled"
                    tables.append(_bce_table(f"{kind}: {noun}, {what}", part, idx, errors=errors))
                tables.append(_legend(legend))
    return tables


def _bce_table(title: str, by_formula: list, idx: list[int], errors: bool) -> Table:
    """Formulas side by side at sampled x: their values, or their bits of error."""
    t = _table(title)
    t.add_column("x", justify="right", no_wrap=True)
    t.add_column("exact", justify="right", no_wrap=True)
    for f, _ in by_formula:
        t.add_column(f, justify="right", no_wrap=True)
    for i in idx:
        first = by_formula[0][1][i]
        if errors:
            cells = (bits_cell(fr[i]) for _, fr in by_formula)
        else:
            cells = (cell(fr[i].value, fr[i].ulp_err, 3) for _, fr in by_formula)
        t.add_row(fmt(first.x, 6), fmt(first.exact, 3), *cells)
    return t


WORST_DETAIL_LEGEND = (  # under 80 columns
    "audited: the formula, or the sigmoid and round trip; label: y; eps: the clip's",
    "max ULP, bits, max rel: the largest error on the grid, in ULPs of the dtype,",
    "  as log2(1 + ULP), and relative; at x: where; inf/nan: non-finite points",
)
CLIP_LEGEND = (  # under 80 columns
    "clip rel: the clipped formula in exact arithmetic against the exact BCE",
    "  (clipping's share); round ULP: the computed value against that clipped",
    "  value, in ULPs (rounding's share); error from: the larger share, or",
    "  neither (no clip, and within 4 ULP)",
)


def worst_tables(worst: Sequence[Worst]) -> list[RenderableType]:
    """The largest error per formula over the grid; then, for clipped formulas, whose fault it is.
    One dtype: named in the titles, not in a column."""
    one = len({w.dtype for w in worst}) == 1
    of = f": {worst[0].dtype}" if one and worst else ""
    lead = () if one else ("dtype",)
    t = _table(f"Worst error over the grid{of}")
    for name in (*lead, "audited", "label", "eps"):
        t.add_column(name, no_wrap=name != "audited", overflow="fold")
    for name in ("max ULP", "bits", "max rel", "at x", "inf/nan"):
        t.add_column(name, justify="right", no_wrap=True)
    for w in worst:
        t.add_row(*(() if one else (w.dtype,)), _what(w.quantity, w.formula), _label(w.label), _eps(w.eps),
                  cell(w.max_ulp, w.max_ulp, 3), fmt(w.max_bits, 3), fmt(w.max_rel, 3), fmt(w.x, 6),
                  Text(f"{w.nonfinite}/{w.points}", style="bold red" if w.nonfinite else ""))
    tables: list[RenderableType] = [t, _legend(WORST_DETAIL_LEGEND)]
    clipped = [w for w in worst if w.max_clip_rel is not None]
    if clipped:
        c = _table(f"Clipping or rounding?{of}")
        for name in (*lead, "audited", "label", "eps"):
            c.add_column(name, no_wrap=name != "audited", overflow="fold")
        for name in ("clip rel", "round ULP", "error from"):
            c.add_column(name, justify="right", no_wrap=True)
        for w in clipped:
            c.add_row(*(() if one else (w.dtype,)), _what(w.quantity, w.formula), _label(w.label),
                      _eps(w.eps), fmt(w.max_clip_rel, 3), fmt(w.max_round_ulp, 3), _bites(w))
        tables += [c, _legend(CLIP_LEGEND)]
    return tables


def _bites(w: Worst) -> str:
    """Which share is larger, both as relative errors (a ULP is about eps relative)."""
    clip, rnd = w.max_clip_rel or 0.0, (w.max_round_ulp or 0.0) * dtype_eps(w.dtype)
    if clip == 0 and (w.max_round_ulp or 0.0) <= 4:
        return "neither"
    return "clipping" if clip >= rnd else "rounding"


def dtype_eps(name: str) -> float:
    return get_dtype(name).eps


# ---------------------------------------------------------------- the verdict


_BREAKS = {"bce_floor": "floor", "bce_ceiling": "ceiling"}
VERDICT_LEGEND = (  # under 80 columns
    "y: the label (-: none); from x: the first value of the dtype from which it holds",
    "breaks: the first failure out from x = 0 on that side: floor / ceiling (the loss",
    "  stops falling / rising there), loss 0, inf or nan; round trip: logit(sigmoid)",
    "cause: what the arithmetic does at that x; formula: as FORMULAS.md names them",
)


def _breaks(f: verdict.Finding) -> str:
    """What a finding says breaks, in a few words."""
    if f.name == "roundtrip_rel_err_onset":
        return f"{fmt((f.threshold or 0) * 100, 3)}% rel error"
    if f.name in ("roundtrip_overflow", "roundtrip_underflow"):
        return fmt(f.value)
    if f.name in _BREAKS:
        return f"{_BREAKS[f.name]} {fmt(f.value)}"
    noun = "gradient" if f.name.startswith("grad") else "loss"
    return f"{noun} {fmt(f.value)}"


def verdict_tables(found: Sequence[verdict.Finding]) -> list[Table]:
    """One table per dtype and mode: the round trip, then each formula family's first breaks."""
    tables = []
    for (dtype, mode, backend), group in _group(found, lambda f: (f.dtype, f.mode, f.backend)):
        eps_set = {f.eps for f in group if f.eps is not None}
        title = f"Verdict: {dtype}, {mode}" + ("" if backend == "numpy" else f", {backend}") + (
            f", eps {fmt(min(eps_set), 3)}" if len(eps_set) == 1 else "") + ": where it breaks, and why"
        tables.append(_verdict_table(title, group, len(eps_set) > 1, by_dtype=False))
    return tables


def _what_breaks(f: verdict.Finding, many_eps: bool) -> str:
    what = ", ".join(f.what) if f.what else "round trip"
    if f.what and f.name.startswith("roundtrip"):
        what = f"round trip, {what}"
    if many_eps and f.eps is not None:
        what += f" (eps {fmt(f.eps, 3)})"
    return what


def _verdict_table(title: str, group: Sequence[verdict.Finding], many_eps: bool, by_dtype: bool) -> Table:
    t = _table(title)
    many_modes = len({f.mode for f in group}) > 1
    heads = {(f.dtype, f.mode, f.backend): _dtype_mode(f) + (f", {f.mode}" if many_modes else "")
             for f in group} if by_dtype else {}
    # a heading row is read whole: the column is as wide as the longest one
    t.add_column("formula", max_width=max([20, *map(len, heads.values())]), overflow="fold")
    t.add_column("y", no_wrap=True)
    t.add_column("breaks", no_wrap=True)
    t.add_column("from x", justify="right", no_wrap=True)
    t.add_column("cause")
    names = _family_names(group, many_eps)
    last: tuple = ()
    for f, name in zip(group, names, strict=True):
        where = (f.dtype, f.mode, f.backend)
        if by_dtype and where != last:  # each dtype a heading row: the cause keeps the width
            t.add_row(Text(heads[where], style="bold"), "", "", "", "")
        style = "bold red" if not math.isfinite(f.value) else ""
        t.add_row(name, _label(f.label), Text(_breaks(f), style=style), fmt_at(f.x, f.dtype), f.cause)
        last = where
    return t


def _family_names(group: Sequence[verdict.Finding], many_eps: bool) -> list[str]:
    """The formula column of each row: a family's members one a row down its rows (the last
    row takes the rest), blank below them."""
    out: list[str] = []
    runs: list[tuple[tuple, int]] = []
    for f in group:
        key = (f.dtype, f.mode, f.backend, f.what, f.eps)
        if runs and runs[-1][0] == key:
            runs[-1] = (key, runs[-1][1] + 1)
        else:
            runs.append((key, 1))
    i = 0
    for _, n in runs:
        f = group[i]
        members = [_what_breaks(replace(f, what=(m,)), many_eps) for m in f.what] or \
            [_what_breaks(f, many_eps)]
        if f.what and f.name.startswith("roundtrip"):
            members = [_what_breaks(f, many_eps)]
        lines = [*members[:n - 1], ", ".join(members[n - 1:])] if len(members) > n else members
        lines = [m + ("," if k < len(lines) - 1 else "") for k, m in enumerate(lines)]
        out += lines + [""] * (n - len(lines))
        i += n
    return out


def _dtype_mode(f: verdict.Finding) -> str:
    return f.dtype if f.backend == "numpy" else f"{f.dtype} ({f.backend})"


def verdict_view(kps: Sequence[KeyPoint], detail: bool = False) -> list[RenderableType]:
    """The verdict: for one dtype (and mode), each formula family's breaks; for several, three
    rows a dtype, and each one's families with ``detail``. With the legend; [] without key points."""
    found = verdict.findings(kps)
    if not found:
        return []
    legend = Text("\n".join(VERDICT_LEGEND) + "\n", style="dim")
    one = len({(f.dtype, f.mode, f.backend) for f in found}) == 1
    if one:
        return [*verdict_tables(found), legend]
    head = verdict_overview(found)
    return [head, *(verdict_tables(found) if detail else []), legend]


def verdict_overview(found: Sequence[verdict.Finding]) -> Table:
    """Every dtype in three rows: the round trip's overflow and 1% onset, and the first loss to
    break."""
    top = verdict.overview(found)
    modes = ", ".join(dict.fromkeys(f.mode for f in top))
    return _verdict_table(f"Verdict ({modes}): where each dtype breaks first, and why", top,
                          len({f.eps for f in top if f.eps is not None}) > 1, by_dtype=True)


WORST_LEGEND = (  # under 80 columns
    "worst ULP: largest error on the grid in ULPs of the dtype (*: over 4), at x, y;",
    "bits: log2(1 + ULP); inf/nan: non-finite points; error from: clipping, rounding",
)




def _summary_name(w: Worst) -> str:
    return "round trip" if w.quantity == "roundtrip" and w.formula is None else _what(w.quantity, w.formula)


def worst_summary(worst: Sequence[Worst]) -> list[RenderableType]:
    """The worst error of each formula on the grid, over its labels: one row each, per dtype."""
    out: list[RenderableType] = []
    for (dtype, mode), group in _group(worst, lambda w: (w.dtype, w.mode)):
        t = _table(f"Worst error on the grid: {dtype}, {mode}")
        t.add_column("computed", no_wrap=True)
        for name in ("worst ULP", "bits", "at x", "y", "inf/nan"):
            t.add_column(name, justify="right", no_wrap=True)
        t.add_column("error from", no_wrap=True)
        for (what, eps), ws in _group(group, lambda w: (_summary_name(w), w.eps)):
            w = max(ws, key=lambda w: (w.max_ulp if not math.isnan(w.max_ulp) else math.inf))
            bad = sum(v.nonfinite for v in ws)
            t.add_row(what + (f" (eps {fmt(eps, 3)})" if eps is not None and len({v.eps for v in group
                                                                                     if v.eps}) > 1 else ""),
                      cell(w.max_ulp, w.max_ulp, 3), fmt(w.max_bits, 3), fmt(w.x, 6), _label(w.label),
                      Text(f"{bad}/{sum(v.points for v in ws)}", style="bold red" if bad else ""),
                      _bites(w) if w.max_clip_rel is not None else "")
        out.append(t)
    return [*out, Text("\n".join(WORST_LEGEND), style="dim")] if out else []


DETAIL_HINT = "--detail (-v): every key point, the sampled grid and the worst errors"


def sweep_view(result: SweepResult, show: int = 11, width: int = 100, detail: bool = False) -> Group:
    """The table view of a sweep: the verdict; with ``detail``, then every key point, the
    sampled rows and worst errors."""
    parts: list[RenderableType] = [Text(f"note: {n}", style="yellow") for n in result.notes]
    parts += verdict_view(result.keypoints, detail)
    if not detail:
        parts += worst_summary(result.worst)
        parts.append(Text(DETAIL_HINT if result.rows else "--detail (-v): every key point", style="dim"))
        return Group(*parts)
    parts += keypoint_tables(result.keypoints, width)
    if result.rows:
        parts += sample_tables(result.rows, show, width)
        parts += worst_tables(result.worst)
        parts.append(Text(LEGEND, style="dim"))
    return Group(*parts)


DTYPES_LEGEND = (  # under 80 columns
    "bits: storage width; mant: explicit fraction bits (precision is one more)",
    "eps: the gap between 1 and the next value; tiny: the smallest normal value",
    "max: the largest finite value; rt overflow: the x from which the round trip",
    "  logit(sigmoid(x)) is predicted to overflow, -ln(eps/2) (--mode decides)",
)


def dtypes_view(infos: Sequence[DtypeInfo], overflow: dict[str, float]) -> Group:
    """`bce-audit dtypes`: the table and its legend."""
    return Group(dtypes_table(infos, overflow), _legend(DTYPES_LEGEND))


def dtypes_table(infos: Sequence[DtypeInfo], overflow: dict[str, float]) -> Table:
    t = _table("Dtypes")
    t.add_column("dtype", no_wrap=True)
    for name in ("bits", "mant", "eps", "tiny", "max", "rt overflow"):
        t.add_column(name, justify="right", no_wrap=True)
    t.add_column("what it is", overflow="fold")
    for i in infos:
        t.add_row(i.name, str(i.bits), str(i.nmant), fmt(i.eps, 4), _fmt_exact(i.tiny),
                  _fmt_exact(i.max), fmt(overflow[i.name], 6), i.description)
    return t


def exact_text(e: float, cells: Sequence[tuple[float, str]]) -> str:
    """The exact value with the digits that keep it apart from every cell that differs from it
    (``cells``: each value and its text): nearer the exact value than halfway to any cell, 4
    digits at least. So no starred cell prints equal to the exact one, and 0.99999993 never
    reads as 1 beside a cell of 0.9999999."""
    if not math.isfinite(e) or e == 0:
        return fmt(e)
    shown = [float(t) for v, t in cells if float(v) != e and math.isfinite(float(v))]
    for d in range(4, 18):
        t = float(text := _digits(e, d))
        if all(2 * abs(t - e) < abs(c - e) for c in shown):
            return text
    return repr(e)


def ulp_text(ulp: float, value: float) -> str:
    """A cell's error in ULPs of its dtype, short: 0, 0.5, 3, 2.2e5; '-' where not finite."""
    return "-" if not math.isfinite(value) or math.isnan(ulp) else fmt(ulp, 2)


CHECK_LEGEND = (  # under 80 columns
    "exact: mpmath at x as given (x in dtype: the input each dtype really sees),",
    "with the digits that tell it from every cell; each cell: the dtype's result in",
    "its shortest repr, and ULP: its error in ULPs of its dtype against the exact",
    "value at its own input; green: correctly rounded; *: over 4 ULP; red: inf/nan",
)


def check_tables(rows: Sequence[Row], exact: dict[tuple, float], width: int = 100) -> list[Table]:
    """`check`: for each logit, every dtype side by side with the exact value at that logit,
    as many dtypes a table as fit ``width`` (measured on the texts themselves).

    Each dtype's cell is classed against the exact value at *its* rounded input.
    """
    tables = []
    for x, group in _group(rows, lambda r: r.x):
        dts = list(dict.fromkeys(r.dtype for r in group))
        body = _check_body(x, group, exact)
        fixed = 2 + sum(max(len(line[k]) for line in body) + 2 for k in (0, 1))
        wide = {d: max(len(d), *(len(line[2][d][0]) for line in body if d in line[2])) + 2
                + max(3, *(len(line[2][d][2]) for line in body if d in line[2])) + 2 for d in dts}
        parts: list[list[str]] = [[]]
        for d in dts:
            if parts[-1] and fixed + sum(wide[p] for p in parts[-1]) + wide[d] > width:
                parts.append([])
            parts[-1].append(d)
        tables += [_check_table(x, body, part) for part in parts]
    return tables


def _check_body(x: float, group: list[Row], exact: dict) -> list[tuple[str, str, dict]]:
    """The rows of a logit's tables: name, exact text, and per dtype (text, style, ULP text)."""
    first = {r.dtype: r for r in reversed(group)}
    body = [("x in dtype", repr(float(x)), {d: (shortest(r.x_dtype, d), "", "") for d, r in first.items()})]
    keys = list(dict.fromkeys((r.quantity, r.formula, r.eps, str(r.label)) for r in group))
    for key in keys:
        q, f, eps, label = key
        cells = {r.dtype: r for r in group if (r.quantity, r.formula, r.eps, str(r.label)) == key}
        texts = {d: shortest(r.value, d) for d, r in cells.items()}
        e = exact[(x, q, f, eps, _unlabel(label))]
        out = {}
        for d, r in cells.items():
            _, style, marker = CLASSES[error_class(r.ulp_err, r.value)]
            out[d] = (texts[d] + marker, style, ulp_text(r.ulp_err, r.value))
        body.append((_check_row_name(next(iter(cells.values()))),
                     exact_text(e, [(cells[d].value, texts[d]) for d in cells]), out))
    return body


def _check_row_name(r: Row) -> str:
    if r.quantity in ("bce", "grad"):
        assert r.formula is not None  # BCE and gradient rows name their formula
        return _check_name(("grad " if r.quantity == "grad" else "") + r.formula, str(r.label))
    return _what(r.quantity, r.formula)


def _check_table(x: float, body: list[tuple[str, str, dict]], dts: list[str]) -> Table:
    t = _table(f"x = {fmt_x(x)}")
    t.add_column("quantity", overflow="fold")  # wraps at its label before any number is cut
    t.add_column("exact", justify="right", no_wrap=True)
    for d in dts:
        t.add_column(d, justify="right", no_wrap=True)
        t.add_column("ULP", justify="right", no_wrap=True)
    for name, exact_cell, cells in body:
        row: list[RenderableType] = [name, exact_cell]
        for d in dts:
            text, style, ulp = cells.get(d, ("-", "", ""))
            row += [Text(text, style=style), Text(ulp, style="dim")]
        t.add_row(*row)
    return t


_QUANTITY = {"sigmoid": "sigmoid", "roundtrip": "logit(sigmoid)"}


def _what(quantity: str, formula: str | None) -> str:
    """What a row audits: a formula's name, or the sigmoid / round trip (of a user op)."""
    if quantity == "bce":
        return formula or "-"
    if quantity == "grad":
        return f"grad {formula}"
    return _QUANTITY[quantity] + (f" {formula}" if formula else "")


def _unlabel(label: str):
    return {"None": None, "1": 1, "0": 0}.get(label, label)


def _check_name(formula: str, label: str) -> str:
    return f"{formula} pair" if label == "pair" else f"{formula} y={label}"


def check_view(rows: Sequence[Row], exact: dict[tuple, float], width: int = 100,
               kps: Sequence[KeyPoint] = (), detail: bool = False) -> Group:
    """`check`: the verdict of the dtypes, then the logits' tables."""
    return Group(*verdict_view(kps, detail), *check_tables(rows, exact, width),
                 Text("\n".join(CHECK_LEGEND), style="dim"))


def width_for(path: str | None) -> int:
    """Columns the table view may use: the terminal's, or 100 when writing a file."""
    return Console().width if path is None else 100


def check_markdown(rows: Sequence[Row], exact: dict[tuple, float]) -> str:
    """`check` as markdown: one table per logit, dtypes side by side."""
    out = []
    for x, group in _group(rows, lambda r: r.x):
        dts = list(dict.fromkeys(r.dtype for r in group))
        keys = list(dict.fromkeys((r.quantity, r.formula, r.eps, str(r.label)) for r in group))
        body = []
        for key in keys:
            cells = {r.dtype: r for r in group if (r.quantity, r.formula, r.eps, str(r.label)) == key}
            q, f, _, label = key
            texts = {d: shortest(r.value, d) for d, r in cells.items()}
            e = exact[(x, q, f, key[2], _unlabel(label))]
            body.append([_check_row_name(next(iter(cells.values()))),
                         exact_text(e, [(cells[d].value, texts[d]) for d in cells]),
                         *(texts[d] + CLASSES[error_class(cells[d].ulp_err, cells[d].value)][2]
                           + f" ({ulp_text(cells[d].ulp_err, cells[d].value)} ULP)"
                           if d in cells else "-" for d in dts)])
        out += [f"### x = {fmt_x(x)}", "", *_md_table(["quantity", "exact", *dts], body), ""]
    out.append("Each cell: the dtype's result (its shortest repr) and its error in ULPs of the dtype; "
               "`*`: more than 4 ULP.")
    return "\n".join(out) + "\n"


def exact_number(q: Fraction) -> float | str:
    """A float where it represents q exactly enough, else a decimal string (longdouble limits)."""
    try:
        f = float(q)
    except OverflowError:
        f = math.inf
    if f != 0 and math.isfinite(f):
        return f
    d = Decimal(q.numerator) / Decimal(q.denominator)
    return f"{d:.10e}"


def _fmt_exact(q: Fraction) -> str:
    n = exact_number(q)
    if isinstance(n, str):
        mant, exp = n.split("e")
        return f"{float(mant):.4g}e{int(exp)}"
    return fmt(n, 4)


def dtypes_records(infos: Sequence[DtypeInfo], overflow: dict[str, float]) -> list[dict]:
    return [{"name": i.name, "bits": i.bits, "mantissa_bits": i.nmant, "precision": i.precision, "eps": i.eps,
             "tiny": exact_number(i.tiny), "smallest_subnormal": exact_number(i.smallest_subnormal),
             "max": exact_number(i.max), "predicted_roundtrip_overflow": overflow[i.name],
             "description": i.description} for i in infos]


PIPE_WIDTH = 1000  # piped stdout: tables as wide as they need, never a number cut to fit 80


def color_on(stream, color: bool | None = None) -> bool:
    """Whether to write colour to ``stream``: ``color`` True or False (--color always, never)
    decides; None (auto) is colour on a terminal, unless NO_COLOR is set to anything non-empty
    (https://no-color.org)."""
    if color is not None:
        return color
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def console(file=None, color: bool | None = None, stderr: bool = False, **kw) -> Console:
    """A rich Console that writes colour exactly when `color_on` says so (on stdout and stderr,
    auto also honours FORCE_COLOR, as rich does)."""
    on = color_on(file or (sys.stderr if stderr else sys.stdout), color)
    if color is None and file is None and os.environ.get("FORCE_COLOR") and not os.environ.get("NO_COLOR"):
        on = True
    return Console(file=file, stderr=stderr, force_terminal=True if on else None, no_color=not on,
                   color_system="auto" if on else None, highlight=False, **kw)


def print_view(view, file=None, color: bool | None = None) -> None:
    """Print a renderable: to the terminal, or to a file as text 100 columns wide. Piped
    (stdout not a terminal, no COLUMNS) a table takes the width it needs: nothing is cut.
    ``color``: see `color_on` (a file is a pipe: plain unless True)."""
    if file is None:
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        console(color=color, width=PIPE_WIDTH if piped else None).print(view)
    else:
        console(file, color=color, width=100).print(view)


def _first(rows, dtype):
    return next(r for r in rows if r.dtype == dtype)


# ---------------------------------------------------------------- machine formats




def document(settings: dict, kps: Sequence[KeyPoint], rows: Sequence[Row] | None = None,
             worst: Sequence[Worst] | None = None, notes: Sequence[str] = ()) -> dict:
    doc = {"schema": SCHEMA, "version": __version__, "settings": settings,
           "keypoints": [asdict(k) for k in kps], "notes": list(notes)}
    if rows is not None:
        doc["rows"] = [asdict(r) for r in rows]
    if worst is not None:
        doc["worst"] = [asdict(w) for w in worst]
    return doc


def to_csv(records: Sequence, cls) -> str:
    """One record a line; header from the dataclass fields; inf/nan as words, None empty."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(cls)]
    w.writerow(names)
    for r in records:
        w.writerow(["" if (v := getattr(r, n)) is None else _csv_cell(v) for n in names])
    return buf.getvalue()


def _csv_cell(v):
    c = clean(v)
    return repr(c) if isinstance(c, float) else c


def _md_cell(text: str) -> str:
    """A table cell: a ``|`` would end the cell and a newline the row, so neither survives raw."""
    return " ".join(str(text).split()).replace("|", "\\|") or "-"


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return lines


def _md_settings(s) -> str:
    lo, hi = s.range
    return (f"eps {', '.join(fmt(e, 3) for e in s.eps)} · label {s.label} · "
            f"formulas {', '.join(s.formulas)} · x in [{fmt(lo, 6)}, {fmt(hi, 6)}]")


def to_markdown(result: SweepResult) -> str:
    """A compact report for a PR comment: settings, key points, then worst errors.

    ``predicted`` reads as in the table view (``x 16.635532`` stands beside x, a bare number
    beside the value); a worst error of more than 4 ULP carries ``*``.
    """
    s = result.settings
    out = [f"## bce-audit {__version__}: {', '.join(s.dtypes)} ({s.mode})", "", _md_settings(s), ""]
    notes = list(result.notes)
    out += [f"> note: {n}" for n in notes] + ([""] if notes else [])
    out += _md_table(
        ["dtype", "key point", "formula", "label", "eps/thr", "x", "value", "predicted", "cause"],
        ([k.dtype, k.name, k.formula or "round trip", _label(k.label),
          fmt(k.threshold, 3) if k.threshold is not None else _eps(k.eps), fmt_at(k.x, k.dtype),
          fmt(k.value, 5), _pred(k), k.cause] for k in result.keypoints),
    )
    if result.worst:
        out += ["", "### Worst error over the grid", ""]
        out += _md_table(
            ["dtype", "audited", "label", "eps", "max ULP", "bits", "at x", "inf/nan", "clip rel",
             "round ULP"],
            ([w.dtype, _what(w.quantity, w.formula), _label(w.label), _eps(w.eps),
              fmt(w.max_ulp, 3) + CLASSES[error_class(w.max_ulp, w.max_ulp)][2],
              fmt(w.max_bits, 3), fmt(w.x, 6), f"{w.nonfinite}/{w.points}", fmt(w.max_clip_rel, 3),
              fmt(w.max_round_ulp, 3)] for w in result.worst),
        )
        out += ["", "`*`: more than 4 ULP off; clip rel: the clipping's share of the error, round ULP: "
                    "the rounding's (against the clipped formula in exact arithmetic)."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the gate


_STATUS_STYLE = {"PASS": "bold green", "FAIL": "bold red", "ERROR": "bold magenta"}


def _gate_worst(r) -> str:
    w = r.worst
    if not w or r.passed:
        return ""
    where = f"x={fmt_x(w['x'])} {w['dtype']}" + (f" y={w['label']}" if w.get("label") is not None else "")
    if "computed" in w:
        return f"{where}: {fmt(w['computed'], 5)} vs exact {fmt(w['exact'], 5)}"
    return f"{where}: value {fmt(w['value'], 5)}"


def _gate_detail(r) -> str:
    """What a row says: the error, else the broken limits and regressions, else the figures."""
    if r.error:
        return printable(r.error)
    return printable("; ".join(r.failures + r.regressions)) or _gate_figure(r)


def _gate_figure(r) -> str:
    """The measured figures against their limits, e.g. ``max_ulp 1.99 <= 2``."""
    if r.error:
        return ""
    if r.note:
        return r.note
    parts = []
    for key, limit in r.limits.items():
        got = r.figures[key] if r.kind == "grid" else r.figures["x" if key.endswith("_x") else "value"]
        op = "<=" if key.startswith("max") else ">="
        name = key.split("_", 1)[1] if r.kind == "keypoint" else key
        parts.append(f"{name} {fmt(got, 6)} {op} {fmt(limit, 6)}")
    if r.kind == "grid" and r.figures.get("nonfinite"):
        parts.append(f"{int(r.figures['nonfinite'])} inf/nan")
    return ", ".join(parts)


def gate_table(results) -> Table:
    """One row per check: PASS/FAIL, measured against limit, and the worst input of a failure."""
    t = Table(title="bce-audit gate", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0),
              title_justify="left", title_style="bold")
    t.add_column("", no_wrap=True)
    t.add_column("check", ratio=2)
    t.add_column("measured vs limit", ratio=2)
    t.add_column("worst input: computed vs exact", ratio=2)
    for r in results:
        status = Text(r.status, style=_STATUS_STYLE[r.status])
        t.add_row(status, Text(printable(r.name)), _gate_detail(r), _gate_worst(r))
    return t


def _summary_text(results) -> str:
    """'N checks passed', or 'K of N checks failed: a, b' and/or 'E of N errored: c'."""
    failed = [printable(r.name) for r in results if not r.ok and not r.error]
    errored = [printable(r.name) for r in results if r.error]
    if not failed and not errored:
        return f"{len(results)} check{'s' if len(results) != 1 else ''} passed"
    parts = []
    if failed:
        parts.append(f"{len(failed)} of {len(results)} checks failed: {', '.join(failed)}")
    if errored:
        parts.append(f"{len(errored)} of {len(results)} checks errored: {', '.join(errored)}")
    return "; ".join(parts)


def gate_summary(results) -> Text:
    ok = all(r.ok for r in results)
    return Text(_summary_text(results), style="green" if ok else "bold red")


def gate_view(results) -> Group:
    return Group(gate_table(results), gate_summary(results))


def _failure_message(r) -> str:
    if r.error:
        return printable(r.error)
    text = "; ".join(r.failures + r.regressions)
    worst = _gate_worst(r)
    return printable(text + (f" (worst: {worst})" if worst else ""))


def printable(text: str) -> str:
    """Text from a config or user code, safe for a terminal, a log or a CI annotation: control
    characters (newlines, ESC sequences) written as escapes, never passed through."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _xml_safe(text: str) -> str:
    """Text XML 1.0 can hold: its invalid characters (most control characters) as escapes."""
    def ok(c: str) -> bool:
        return c in "\t\n\r" or (c >= " " and c not in "\ufffe\uffff" and not 0xD800 <= ord(c) <= 0xDFFF)

    return "".join(c if ok(c) else repr(c)[1:-1] for c in text)


def junit_xml(results, suite: str = "bce-audit gate") -> str:
    """JUnit XML: one testcase per check; a failed one has a <failure>, one whose user function
    failed (it could not be measured) an <error>, each with its message."""
    import xml.etree.ElementTree as ET

    failed = [r for r in results if not r.ok and not r.error]
    errored = [r for r in results if r.error]
    root = ET.Element("testsuites", tests=str(len(results)), failures=str(len(failed)),
                      errors=str(len(errored)))
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(results)), failures=str(len(failed)),
                       errors=str(len(errored)), skipped="0")
    for r in results:
        tc = ET.SubElement(ts, "testcase", classname="bce_audit.gate", name=_xml_safe(r.name))
        if r.error:
            e = ET.SubElement(tc, "error", message=_xml_safe(_failure_message(r)), type="UserFunctionError")
            e.text = _xml_safe(_failure_message(r))
        elif not r.ok:
            f = ET.SubElement(tc, "failure", message=_failure_message(r), type="PrecisionGateFailure")
            f.text = _failure_message(r)
        else:
            out = ET.SubElement(tc, "system-out")
            out.text = _xml_safe(_gate_figure(r))
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def github_annotations(results) -> str:
    """``::error`` workflow commands, one per failed check (GitHub Actions renders them)."""
    def esc(s: str) -> str:
        return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")

    def esc_property(s: str) -> str:
        return esc(s).replace(":", "%3A").replace(",", "%2C")

    lines = [f"::error title={esc_property('bce-audit gate: ' + printable(r.name))}::"
             f"{esc(_failure_message(r))}"
             for r in results if not r.ok]
    return "\n".join(lines) + ("\n" if lines else "")


def gate_json(results, configs, baseline: str | None) -> str:
    doc = {"schema": SCHEMA, "version": __version__, "kind": "gate", "configs": list(configs),
           "baseline": baseline, "passed": all(r.ok for r in results),
           "checks": [r.to_dict() for r in results]}
    return to_json(doc)


def gate_markdown(results) -> str:
    """The gate as a markdown table for a PR comment: PASS/FAIL, measured vs limit, worst input.

    A failed check shows its failures (and regressions) as the terminal table does, not the
    passing form of its figures.
    """
    rows = [["PASS" if r.ok else f"**{r.status}**", printable(r.name), _gate_detail(r),
             _gate_worst(r) or "-"]
            for r in results]
    passed = sum(r.ok for r in results)
    head = f"## bce-audit gate: {passed}/{len(results)} passed"
    summary = _summary_text(results)
    table = _md_table(["result", "check", "measured vs limit", "worst input"], rows)
    return "\n".join([head, "", *table, "", summary]) + "\n"


# ---------------------------------------------------------------- fidelity


def fidelity_tables(diffs, pairs, backend_label: str) -> list[Table]:
    """Model against real op: where they differ; then the key points found through each."""
    t = _table(f"Fidelity: numpy models vs {backend_label} (every float16/bfloat16 value, dense float32)")
    for name in ("dtype", "audited", "y"):
        t.add_column(name, no_wrap=True)
    for name in ("differ", "inputs", "worst ULP", "first x", "worst x"):
        t.add_column(name, justify="right", no_wrap=True)
    for d in diffs:
        style = "" if d.differ == 0 else ("yellow" if d.worst_ulp <= 4 else "bold red")
        t.add_row(d.dtype, d.quantity, _label(d.label),
                  Text(str(d.differ), style=style), str(d.inputs), fmt(d.worst_ulp, 3), fmt_x(d.first_x),
                  fmt_x(d.worst_x))
    tables = [t]
    for dtype, group in _group(pairs, lambda p: p.dtype):
        k = _table(f"Key points, model vs real: {dtype} (steps: dtype values between them)")
        for name in ("key point", "formula", "y", "thr"):
            k.add_column(name, no_wrap=True)
        for name in ("model x", "real x", "steps"):
            k.add_column(name, justify="right", no_wrap=True)
        for p in group:
            steps = "absent" if p.steps is None else str(p.steps)
            k.add_row(p.name, p.formula or "-", _label(p.label),
                      fmt(p.threshold, 3) if p.threshold is not None else "-", fmt_x(p.model_x),
                      fmt_x(p.real_x), Text(steps, style="" if p.steps == 0 else "yellow"))
        tables.append(k)
    return tables


def fidelity_view(diffs, pairs, backend_label: str, notes: Sequence[str] = ()) -> Group:
    return Group(*fidelity_tables(diffs, pairs, backend_label), *(Text(f"note: {n}") for n in notes))


def fidelity_json(diffs, pairs, backend_label: str, notes: Sequence[str] = ()) -> str:
    return to_json({"schema": SCHEMA, "version": __version__, "kind": "fidelity", "backend": backend_label,
                    "differences": [asdict(d) for d in diffs], "keypoints": [asdict(p) for p in pairs],
                    "notes": list(notes)})


@contextlib.contextmanager
def progress_bar(total: int, enabled: bool, color: bool | None = None):
    """A rich progress bar on stderr (only on a terminal); yields ``advance(n)``; ``color``: see
    `color_on`.

    Drawn again at an advance (at most every `REDRAW` seconds), never by a thread of its own: none
    of its columns moves between advances, and a process with no other thread may fork its
    workers (`heap.can_fork`)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("auditing"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} points"),
                  TimeRemainingColumn(), console=console(stderr=True, color=color), transient=True,
                  auto_refresh=False) as bar:
        task = bar.add_task("audit", total=total)
        drawn = time.monotonic()

        def advance(n: int) -> None:
            nonlocal drawn
            bar.advance(task, n)
            if time.monotonic() - drawn >= REDRAW:
                bar.refresh()
                drawn = time.monotonic()

        yield advance


REDRAW = 0.1  # seconds between two drawings of the progress bar (a drawing costs about 0.4 ms)


# ---------------------------------------------------------------- reproduce

REPRO_A = (0, 4, 8, 12, 14, 15, 15.5, 16, 16.5, 17, 18, 20, 25, 30, 35, 40)  # the table's a values
REPRO_OFF = 0.01  # a curve cell more than this far from the exact loss, relative, is marked *
_POLICY = {"float32": "f32", "mixed_float16": "mixed"}
_FEEDING = {"in-graph": "in-graph", "fed": "fed p"}
REPRO_LEGEND = (  # lines under 80 columns: rich wraps nothing at a terminal's width
    "votes: of the a where the clip-and-log and the with-logits models differ by\n"
    "more than a factor of 2, those where the loss is nearer the path's model.\n"
    "_keras_logits: carried by the model's output (in the graph, on TensorFlow).\n"
    "in-graph: model.evaluate; fed p: BinaryCrossentropy() on sigmoid(a) as numpy.\n"
    "*: more than 1% off the exact loss.")


def repro_verdict(c: ReproCase) -> str:
    """One line: the path the data show, then the floor (or zero) and the first a on it.

    >>> from bce_audit.records import ReproCase
    >>> c = ReproCase("keras", "jax", {}, "float32", "fed", "float32", [15.0, 16.0], [3e-7, 1.1920929e-7],
    ...               [3.06e-7, 1.125e-7], [], [], "clipped", 2, 2, "floor", 1.1920929e-7, 16.0, False, False)
    >>> repro_verdict(c)
    'clipped, floor 1.1921e-07 from a = 16'
    """
    path = {"logits": "logits path", "clipped": "clipped"}.get(c.path, "path unclear")
    if c.tail == "floor":
        return f"{path}, floor {c.floor:.4e} from a = {c.floor_a:g}"
    if c.tail == "zero" and c.floor_a is not None:
        return f"{path}, loss 0 from a = {c.floor_a:g} (exact {c.exact[c.a.index(c.floor_a)]:.4g})"
    return f"{path}, no floor (loss {c.loss[-1]:.4g} at a = {c.a[-1]:g})"


def _repro_case(c: ReproCase) -> str:
    return f"{c.policy}, {_FEEDING[c.feeding]}"


def _repro_title(c: ReproCase) -> str:
    versions = c.versions
    if c.framework == "tf-keras":
        who = f"tf_keras {versions.get('tf_keras', '?')} on tensorflow {versions.get('tensorflow', '?')}"
    else:
        who = f"keras {versions.get('keras', '?')} on {c.backend} {versions.get(c.backend, '?')}"
    return who


def repro_view(cases: list[ReproCase]) -> Group:
    """Answers first: one verdict line per case; then the evidence for each path, then the
    curve beside the exact loss at a subset of the a values. Fits 80 columns."""
    first = cases[0]
    head = Text.assemble((_repro_title(first), "bold"), ": the question's model, Dense(1, sigmoid),\n"
                         "w = 1, b = 0, on {(-a, 0), (a, 1)}; exact mean loss log1p(exp(-a))")
    wide = max(len(_repro_case(c)) for c in cases) + 1
    lines = [Text(f"  {(_repro_case(c) + ':').ljust(wide)} {repro_verdict(c)}") for c in cases]
    ev = _table("Which path: the data, and the output tensor")
    ev.add_column("case", no_wrap=True)
    ev.add_column("path", no_wrap=True)
    ev.add_column("votes", justify="right", no_wrap=True)
    ev.add_column("_keras_logits", no_wrap=True)
    ev.add_column("loss reads it", no_wrap=True)
    for c in cases:
        ev.add_row(_repro_case(c), c.path, f"{c.agree}/{c.differ}",
                   "yes" if c.carries_logits else "no", "yes" if c.reads_logits else "no")
    curve = _table("The mean loss of the pair at a")
    curve.add_column("a", justify="right", no_wrap=True)
    curve.add_column("exact", justify="right", no_wrap=True)
    for c in cases:
        curve.add_column(f"{_POLICY.get(c.policy, c.policy)} {_FEEDING[c.feeding]}", justify="right",
                         no_wrap=True)
    wanted = set(REPRO_A) | {c.floor_a for c in cases if c.floor_a is not None}
    for i, a in enumerate(first.a):
        if a not in wanted:
            continue
        cells = []
        for c in cases:
            v, e = c.loss[i], c.exact[i]
            off = not math.isfinite(v) or abs(v - e) > REPRO_OFF * e
            cells.append(Text(fmt(v) + ("*" if off else " "), style="yellow" if off else ""))
        curve.add_row(f"{a:g}", fmt(first.exact[i]) + " ", *cells)
    notes = [Text(f"note: {_repro_case(c)}: _keras_logits carried and read, yet {c.path}", style="yellow")
             for c in cases if c.carries_logits and c.reads_logits and c.path != "logits"]
    return Group(head, Text(""), *lines, *([Text(""), *notes] if notes else []), Text(""), ev, curve,
                 Text(REPRO_LEGEND, style="dim"))


def repro_json(cases: list[ReproCase]) -> str:
    """Every case with every a, the exact curve, both models and the verdict, as JSON."""
    doc = {"schema": SCHEMA, "version": __version__, "kind": "reproduce",
           "cases": [asdict(c) | {"verdict": repro_verdict(c)} for c in cases]}
    return to_json(doc)
