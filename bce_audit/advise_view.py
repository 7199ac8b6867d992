"""Renderers of advice (`records.Advice`): text (80 columns, the answer first), markdown (a PR
comment) and JSON. They read the records only; no measuring here."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from bce_audit import __version__
from bce_audit.records import SCHEMA, Advice, Audited, Fix, KeyPoint, Move, SafeEps, tail, to_json
from bce_audit.report import fmt, fmt_at, printable

WIDTH = 80
MOVES_SHOWN = 4  # key-point moves listed per fix in text and markdown; JSON has them all
TAGS = {"fix": "", "partial": " (partial)", "trade-off": " (trade-off)"}  # after a table row's fix


# ---------------------------------------------------------------- the advice's words
# (advise.py measures and searches; the lines it stores in the records are built here)

RUNS = ("bce_floor", "bce_ceiling", "bce_zero", "grad_dead_zone")  # hold from x to the end of the tail

_WHAT = {"bce_nonfinite": "loss is {v}", "bce_floor": "loss floors at {v}", "bce_ceiling": "loss caps at {v}",
         "bce_zero": "loss is 0", "grad_dead_zone": "gradient is 0",
         "grad_vanishing": "gradient 10x too small", "grad_nonfinite": "gradient is {v}"}


def where(k: KeyPoint) -> str:
    """Where a key point holds: a run to the end of its tail, or the first x walking out from 0."""
    x = fmt_at(k.x, k.dtype)  # the dtype's value, as the verdict writes it
    if k.name in RUNS:
        return f"x >= {x}" if tail(k) == "+" else f"x <= {x}"
    return f"from x = {x}"


def line(k: KeyPoint) -> str:
    """One line: label, where, what, and why (the key point's cause, where it has one)."""
    label = "pair" if k.label == "pair" else f"y={k.label}"
    what = _WHAT.get(k.name, k.name).format(v=fmt(k.value))
    cause = k.cause
    return f"{label} {where(k)}: {what}" + (f" ({cause})" if cause else "")


def unsafe_text(info: SafeEps, dtype: str, mode: str) -> str:
    """Which clip bound collapses in the dtype and mode, and what that leaves of the clip."""
    eps, lo, hi = info.eps, info.lo, info.hi
    where_ = f"in {dtype} ({mode})"
    if eps == 0:
        return "eps is 0: the clip does nothing"
    if lo <= 0 and hi >= 1:
        return f"eps {fmt(eps)}: eps rounds to 0 and 1 - eps to 1 {where_}; the clip does nothing"
    if lo >= hi:
        return (f"eps {fmt(eps)}: the bounds eps and 1 - eps both round to {fmt(lo)} {where_}; "
                "the loss is a constant")
    if lo <= 0:
        return f"eps {fmt(eps)}: the lower bound eps rounds to 0 {where_}; the clip does nothing at p = 0"
    return f"eps {fmt(eps)}: the upper bound 1 - eps rounds to 1 {where_}; the clip does nothing at p = 1"


def eps_text(e: float) -> str:
    m, x = math.frexp(e)
    return f"{e!r} (2**{x - 1})" if m == 0.5 else repr(e)


def limits_text(found: Sequence[tuple[str, KeyPoint]]) -> str:
    """The floor and ceiling an eps implies (each "floor"/"ceiling" and its key point)."""
    return "; ".join(f"{what} {fmt(k.value)} from {where(k)}" for what, k in found)


NOTES = {"keras3-numpy": "from_logits=True on Keras's numpy backend runs the same sigmoid-then-clip path"}


def problem_lines(before: Audited, bad: Sequence[KeyPoint], tolerance: float, unsafe: str = "") -> list[str]:
    """What goes wrong, one line each: the unsafe clip, the worst error, the inf/nan count, then
    the key points that spoil the range."""
    lines = [line(k) for k in bad]
    if before.nonfinite:
        lines.insert(0, f"{before.nonfinite} inf/nan results on the grid")
    if before.max_ulp is None:
        lines.insert(0, "no finite result on the grid: nothing could be measured")
    elif before.max_ulp > tolerance:
        lines.insert(0, f"worst error {fmt(before.max_ulp)} ULP ({fmt(before.max_bits, 3)} bits), "
                        f"more than {fmt(tolerance)}")
    return [unsafe, *lines] if unsafe else lines


def _subject(a: Advice) -> str:
    b = a.before
    eps = f", eps {fmt(b.eps)}" if b.eps is not None else ""
    lo, hi = range_text(b.range)
    label = "" if a.label == "both" else f", label {a.label}"
    return f"{b.formula}, {b.dtype}, {b.mode}{eps}{label}, x in [{lo}, {hi}]"


def range_text(rng: tuple[float, float]) -> tuple[str, str]:
    """``lo`` and ``hi`` with enough digits to tell them apart (4 where they allow)."""
    for digits in (4, 6, 8, 12, 17):
        lo, hi = fmt(rng[0], digits), fmt(rng[1], digits)
        if lo != hi:
            break
    return lo, hi


def _change(b: Audited, f: Fix) -> str:
    unit = "max ULP" if f.figure == "max_ulp" else "max rel"
    was, now = (b.max_ulp, f.after.max_ulp) if f.figure == "max_ulp" else (b.max_rel, f.after.max_rel)
    return f"inf/nan {b.nonfinite} -> {f.after.nonfinite}, {unit} {fmt(was)} -> {fmt(now)}"


def trade(b: Audited, f: Fix) -> str:
    """What a trade-off gives up for what: "trades 260 inf/nan for a 58-bit error (max rel 1 ->
    2.81e10)", or the other way round."""
    unit = "max ULP" if f.figure == "max_ulp" else "max rel"
    was, now = (b.max_ulp, f.after.max_ulp) if f.figure == "max_ulp" else (b.max_rel, f.after.max_rel)
    if f.after.nonfinite < b.nonfinite:
        return (f"trades {b.nonfinite - f.after.nonfinite} inf/nan for a {fmt(f.after.max_bits, 3)}-bit "
                f"error ({unit} {fmt(was)} -> {fmt(now)})")
    return (f"trades a smaller error ({unit} {fmt(was)} -> {fmt(now)}) for "
            f"{f.after.nonfinite - b.nonfinite} more inf/nan")


def answer(a: Advice) -> str:
    """The first line: nothing to fix, the fix, the best partial fix, only trade-offs, or none."""
    b = a.before
    if a.ok:
        return (f"Nothing to fix: worst error {fmt(b.max_ulp)} ULP (tolerance {fmt(a.tolerance)}), "
                "no inf/nan, no key point spoils the range.")
    if not a.fixes:
        if not a.tried:
            return "No candidate fix applies."
        return (f"No fix: none of the {a.tried} candidates, each run and measured, lowers the "
                "error without making a figure worse.")
    f = a.fixes[0]
    gate = "; the check passes with it" if f.gate == "PASS" else ""
    if f.verdict == "fix":
        return f"Fix: {f.title}. Verified: {_change(b, f)}{gate}."
    if f.verdict == "partial":
        return (f"Best partial fix (still above {fmt(a.tolerance)} ULP): {f.title}. "
                f"Verified: {_change(b, f)}{gate}.")
    return f"No fix without a cost. Trade-off: {f.title}: it {trade(b, f)}{gate}."


_GLUED = ("x = ", "x >= ", "x <= ", " -> ")  # never broken across lines


def _wrap(text: str, indent: str = "", first: str = "") -> list[str]:
    text = printable(text)
    for glued in _GLUED:
        text = text.replace(glued, glued.replace(" ", "\0"))
    lines = textwrap.wrap(text, WIDTH, initial_indent=first or indent, subsequent_indent=indent,
                          break_on_hyphens=False, break_long_words=False) or [first.rstrip()]
    return [line.replace("\0", " ") for line in lines]


def _what(f: Fix, b: Audited) -> str:
    """A fix in a table row: what it is, its mode where that differs, and a partial or trade-off tag."""
    what = {"eps": f"eps {fmt(f.after.eps, 3)}", "precision": "float32 loss"}.get(
        f.kind, f"{f.kind}: {f.after.formula}")
    mode = f" ({f.after.mode})" if f.after.mode != b.mode else ""
    return what + mode + TAGS[f.verdict]


def _table(a: Advice) -> list[str]:
    """The before/after rows; the bits column goes first if the table would pass 80 columns."""
    head: tuple[str, ...] = ("", "fix", "dtype", "max ULP", "bits", "max rel", "inf/nan", "gate")
    b = a.before
    rows: list[tuple[str, ...]] = [("", "before", b.dtype, fmt(b.max_ulp), fmt(b.max_bits, 3),
                                    fmt(b.max_rel, 3), str(b.nonfinite), "FAIL" if a.check else "")]
    for i, f in enumerate(a.fixes, 1):
        rows.append((f"{i}.", _what(f, b), f.after.dtype, fmt(f.after.max_ulp), fmt(f.after.max_bits, 3),
                     fmt(f.after.max_rel, 3), str(f.after.nonfinite), f.gate))
    keep = [i for i in range(len(head)) if i < 7 or a.check]

    def width(cols: list[int]) -> int:
        return 1 + sum(max(len(r[i]) for r in (head, *rows)) for i in cols) + 2 * (len(cols) - 1)

    if width(keep) > WIDTH:
        keep.remove(4)
    widths = {i: max(len(r[i]) for r in (head, *rows)) for i in keep}

    def cells(r: Sequence[str]) -> str:
        return "  ".join(r[i].rjust(widths[i]) if 3 <= i <= 6 else r[i].ljust(widths[i]) for i in keep)
    rule = " " + "─" * (width(keep) - 1)
    return [" " + cells(head).rstrip(), rule, *(" " + cells(r).rstrip() for r in rows)]


SHORT = {"bce_nonfinite": "inf/nan", "bce_floor": "floor", "bce_ceiling": "cap", "bce_zero": "zero",
         "grad_dead_zone": "dead", "grad_vanishing": "vanishing", "grad_nonfinite": "inf/nan"}


def _label(m: Move) -> str:
    return "pair" if m.label == "pair" else f"y={m.label}"


def _moves(f: Fix) -> list[tuple[str, list[str]]]:
    """The key points a fix changes, per quantity: what it costs first (new, at most
    `MOVES_SHOWN` lines), then what moves, then what is gone, in one line."""
    out = []
    for quantity in ("loss", "gradient"):
        ms = [m for m in f.moves if m.quantity == quantity]
        if not ms:
            continue
        lines = []
        for m in ms:
            if m.status == "new":
                lines.append(f"new: {m.after}")
            elif m.status == "moved":
                what = f"x {fmt(m.x_before, 6)} -> {fmt(m.x_after, 6)}"
                if fmt(m.value_before) != fmt(m.value_after):
                    what += f", value {fmt(m.value_before)} -> {fmt(m.value_after)}"
                lines.append(f"moved: {_label(m)} {SHORT.get(m.name, m.name)} {what}")
        if len(lines) > MOVES_SHOWN:
            lines[MOVES_SHOWN:] = [f"... {len(lines) - MOVES_SHOWN} more (--format json lists them all)"]
        gone = [f"{_label(m)} {SHORT.get(m.name, m.name)} ({fmt(m.x_before)})"
                for m in ms if m.status == "gone"]
        if gone:
            lines.append("gone: " + ", ".join(gone))
        out.append((quantity, lines))
    return out


def text(advice: Sequence[Advice]) -> str:
    """Plain text, at most 80 columns where the words allow: the answer first."""
    out: list[str] = []
    for a in advice:
        if out:
            out.append("")
        if a.check:
            out += _wrap(f"Check {a.check!r} failed: {_subject(a)}")
        else:
            out += _wrap(_subject(a))
        out += _wrap(answer(a), "  ", "  ")
        for n in a.notes:
            out += _wrap(f"note: {n}", "    ", "  ")
        if a.ok:
            continue
        out += ["", "What goes wrong"]
        for p in a.problems:
            out += _wrap(p, "    ", "  ")
        s = a.safe_eps
        if s is not None and s.smallest is not None and s.best is not None:
            out += ["", "Safe eps"]
            bounds = f"bounds {fmt(s.smallest.lo, 6)}, {fmt(s.smallest.hi, 8)}"
            out += _wrap(f"smallest whose clip survives {a.before.dtype} ({a.before.mode}): "
                         f"{fmt(s.smallest.eps, 6)} ({bounds}); best over the range: "
                         f"{fmt(s.best.eps, 6)} (of {s.tried} tried, measured)", "    ", "  ")
            for c in (s.smallest, s.best) if s.best.eps != s.smallest.eps else (s.smallest,):
                implied = [f"floor {fmt(c.floor)} from {c.floor_where}"] if c.floor is not None else []
                if c.ceiling is not None:
                    implied.append(f"ceiling {fmt(c.ceiling)} from {c.ceiling_where}")
                if implied:
                    out += _wrap(f"eps {fmt(c.eps, 6)} implies: {'; '.join(implied)} (measured)",
                                 "    ", "  ")
            eps_fixes = [f for f in a.fixes if f.kind == "eps"]
            if not eps_fixes:
                out += _wrap("not a fix here: it brings no real gain in the measured figures", "    ", "  ")
            elif all(f.verdict == "trade-off" for f in eps_fixes):
                out += _wrap("not a fix here: a trade-off (see below)", "    ", "  ")
        if not a.fixes:
            continue
        out += ["", "Fixes, best first: each measured by the audit with the fix applied", ""]
        out += _table(a)
        if any(f.after.dtype != a.before.dtype for f in a.fixes):
            out += _wrap("max ULP is in each row's own dtype; across dtypes compare max rel", "  ", "  ")
        for i, f in enumerate(a.fixes, 1):
            out.append("")
            out += _wrap(f.title + {"fix": "", "partial": " (partial: still above the tolerance)",
                                    "trade-off": ""}[f.verdict], "     ", f"{i}. ")
            if f.verdict == "trade-off":
                out += _wrap(f"Trade-off, not a fix: it {trade(a.before, f)}", "     ", "     ")
            for code in f.snippet.splitlines():
                out.append(f"       {printable(code)}")
            if f.note:
                out += _wrap(f.note, "     ", "     ")
            for quantity, lines in _moves(f):
                out.append(f"     {quantity}:")
                for m in lines:
                    out += _wrap(m, "         ", "       ")
    return "\n".join(out) + "\n"


def _md_cell(v: str) -> str:
    return " ".join(str(v).split()).replace("|", "\\|") or "-"


def markdown(advice: Sequence[Advice]) -> str:
    """A PR comment: per target, the answer, what goes wrong, a before/after table, the code."""
    out = [f"## bce-audit advise: {sum(not a.ok for a in advice)} of {len(advice)} need a fix", ""]
    for a in advice:
        check = f"check {a.check!r}: " if a.check else ""
        out += [f"### {_md_cell(check + _subject(a))}",
                "", f"**{_md_cell(answer(a))}**", ""]
        out += [f"- note: {_md_cell(n)}" for n in a.notes]
        if a.ok:
            continue
        out += ["What goes wrong:", ""] + [f"- {_md_cell(p)}" for p in a.problems] + [""]
        if not a.fixes:
            continue
        head = ["#", "fix", "dtype", "max ULP", "bits", "max rel", "inf/nan"] + (["gate"] if a.check else [])
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        rows = [["", "before", a.before.dtype, fmt(a.before.max_ulp), fmt(a.before.max_bits, 3),
                 fmt(a.before.max_rel, 3), str(a.before.nonfinite)] + (["FAIL"] if a.check else [])]
        for i, f in enumerate(a.fixes, 1):
            mode = f" ({f.after.mode})" if f.after.mode != a.before.mode else ""
            rows.append([str(i), f.title + mode + TAGS[f.verdict], f.after.dtype, fmt(f.after.max_ulp),
                         fmt(f.after.max_bits, 3),
                         fmt(f.after.max_rel, 3), str(f.after.nonfinite)] + ([f.gate] if a.check else []))
        out += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows] + [""]
        if any(f.after.dtype != a.before.dtype for f in a.fixes):
            out += ["max ULP is in each row's own dtype; across dtypes compare max rel.", ""]
        for i, f in enumerate(a.fixes, 1):
            out += [f"{i}. {_md_cell(f.title)}"]
            if f.snippet:
                out += ["", "   ```python", *(f"   {line}" for line in f.snippet.splitlines()), "   ```"]
            if f.verdict == "trade-off":
                out += ["", f"   Trade-off, not a fix: it {_md_cell(trade(a.before, f))}"]
            if f.note:
                out += ["", f"   {_md_cell(f.note)}"]
            for quantity, lines in _moves(f):
                out += ["", f"   - {quantity}:"] + [f"     - {_md_cell(m)}" for m in lines]
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def json_doc(advice: Sequence[Advice]) -> str:
    """The advice as versioned, deterministic JSON (inf/nan as strings)."""
    return to_json({"schema": SCHEMA, "version": __version__, "advice": [a.to_dict() for a in advice]})
