"""Pictures of a sweep: the data to draw (pure), matplotlib files and plotext terminal charts.

`plot_data` turns a `SweepResult` into a plain `PlotData`: one series per dtype / formula / eps,
the exact mpmath curve, key-point markers, axis scales chosen from the data and a title that
states the settings. The renderers only draw it, so tests check the data, never pixels.
matplotlib and plotext are the optional ``plot`` extra, imported only when something is drawn;
without them the renderers raise `PlotExtraMissing`, whose message is the install command.

Kinds:

- ``roundtrip``: relative error of ``logit(sigmoid(x))`` against x, per dtype; inf/nan is a
  gap, so the curve of float32 ends where the round trip overflows (16.64). The exact error
  is 0: on a log axis it is not drawn (the title says so).
- ``bce``: the BCE each formula computes beside the exact BCE. ``--label 1`` or ``0`` plots
  that label; ``both`` (the default) plots the seed article's two-point pair: the mean of
  BCE(-a, 0) and BCE(a, 1) at a = x.
- ``error``: bits of error of each formula, ``log2(1 + ULPs)`` (same label choice).
- ``grad``: the magnitude of the gradient dBCE/dx each formula computes beside the exact
  ``|sigmoid(x) - y|``, from sweep rows of quantity ``"grad"`` (label 1 for ``both``: the pair's
  gradient is not audited); a sweep without them raises `PlotUnavailable`.
"""

from __future__ import annotations

import importlib
import math
import os
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bce_audit import dtypes, files
from bce_audit.records import (
    DEFAULT_RANGE,
    PLOT_DPI,
    PLOT_KINDS,
    PLOT_SIZE,
    ReproCase,
    Row,
    Settings,
    SweepResult,
)
from bce_audit.report import fmt, fmt_x

KINDS = PLOT_KINDS
SUFFIXES = (".png", ".svg", ".pdf")
DEFAULT_SIZE = PLOT_SIZE  # pixels, at DPI
DPI = PLOT_DPI
MIN_PIXELS, MAX_PIXELS = 200, 10_000  # per side
INSTALL = "pip install 'bce-audit[plot]'"
GRAD_QUANTITY = "grad"  # the Row.quantity of gradient rows (a sweep with --grad)
LOG_DECADES = 3  # a log axis once the positive finite values span more than this many decades
TERMINAL_HEIGHT = 25
GRAD_POINTS = {"grad_dead_zone": "exactly 0", "grad_vanishing": "vanishing", "grad_nonfinite": "inf/nan"}

# Okabe-Ito: distinguishable with every common colour-vision deficiency; yellow (low contrast
# on white) comes last.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
DASHES = ("solid", "dashed", "dashdot", "dotted")
MARKS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "d", "8", "H", "x")  # matplotlib
CHARS = ("•", "+", "x", "o", "◆", "▲", "■", "*", "#", "%", "@", "&", "=", "~", "$", "?")  # terminal
EXACT_COLOR = "#9A9A9A"
MAX_POINTS = 20_000  # grid points a curve draws, evenly spread: ten to a pixel of the widest picture


ROUNDTRIP_RANGE = (0.0, 40.0)  # for x < 0 the round trip is exact, or nearly: half of -40:40 was empty


def default_range(kind: str) -> tuple[float, float]:
    """The grid a picture of ``kind`` gets without --range: 0:40 for the round trip, else -40:40."""
    return ROUNDTRIP_RANGE if kind == "roundtrip" else DEFAULT_RANGE


class PlotError(ValueError):
    """A picture that cannot be drawn as asked: one line for the user."""


class PlotExtraMissing(PlotError):
    """matplotlib or plotext is not installed; the message says how to install them."""


class PlotUnavailable(PlotError):
    """The sweep holds no data for this kind of picture (yet)."""


@dataclass(frozen=True)
class Style:
    """How to tell a series apart without colour: dash and marker as well as the colour."""

    color: str
    dash: str
    marker: str
    char: str


@dataclass(frozen=True, eq=False)
class Series:
    """One curve: x (the dtype-rounded inputs) and y, NaN where the computed value is inf/nan."""

    label: str
    x: np.ndarray
    y: np.ndarray
    style: Style
    dtype: str | None = None
    formula: str | None = None
    eps: float | None = None


@dataclass(frozen=True)
class Marker:
    """One key point inside the range: ``who`` (dtype, formula, eps where they vary) and ``what``
    happens from x; a floor or ceiling also has its ``level`` (the BCE it settles on)."""

    x: float
    text: str
    name: str
    dtype: str | None = None
    who: str = ""  # without the dtype: `labels` prefixes it where several dtypes share a picture
    what: str = ""
    level: float | None = None


@dataclass(frozen=True)
class Label:
    """What the picture writes. A vertical line at x labelled with every key point there, or (``y``
    set) a floor or ceiling written at the edge its plateau runs to, ``edge`` "right" or "left"."""

    x: float
    text: str
    y: float | None = None
    edge: str = "right"
    dtype: str | None = None
    xs: tuple[float, ...] = ()  # a level's key points (their vertical lines are drawn unlabelled)


@dataclass(frozen=True)
class Guide:
    """A horizontal reference line (a threshold, a ULP bound)."""

    y: float
    text: str


@dataclass(frozen=True, eq=False)
class PlotData:
    kind: str
    title: str  # what is plotted
    subtitle: str  # the settings
    xlabel: str
    ylabel: str
    xscale: str  # "linear", "log" or "symlog"
    yscale: str  # "linear" or "log"
    xlim: tuple[float, float]
    series: tuple[Series, ...]
    exact: Series | None
    markers: tuple[Marker, ...]
    guides: tuple[Guide, ...] = ()
    notes: tuple[str, ...] = ()
    labels: tuple[Label, ...] = ()  # the markers merged: what is written (see `labels`)


# ---------------------------------------------------------------- the data


def style(i: int) -> Style:
    """Series i's style: colour, dash and markers; no two of the first 16 series share all three."""
    return Style(PALETTE[i % len(PALETTE)], DASHES[(i + i // len(PALETTE)) % len(DASHES)],
                 MARKS[i % len(MARKS)], CHARS[i % len(CHARS)])


EXACT_STYLE = Style(EXACT_COLOR, "solid", "", "·")


def plot_label(s: Settings, kind: str = "bce") -> int | str:
    """The label a picture shows: 1, 0, or for ``both`` the seed's pair (label 1 for gradients)."""
    return {"1": 1, "0": 0, "both": 1 if kind == "grad" else "pair"}[s.label]


def _label_text(label: int | str) -> str:
    return "pair {(-a, 0), (a, 1)}" if label == "pair" else f"label {label}"


def decades(values: np.ndarray) -> float:
    """How many decades the positive finite values span (0 if fewer than two).

    >>> decades(np.array([1e-7, 0.5, 0.0, np.inf, np.nan]))
    6.698970004336019
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    return float(np.log10(v.max() / v.min())) if v.size > 1 else 0.0


def y_scale(values: np.ndarray) -> str:
    return "log" if decades(values) > LOG_DECADES else "linear"


def x_scale(s: Settings, xs: np.ndarray) -> str:
    if s.spacing != "log" or s.step is not None:
        return "linear"
    return "log" if xs.size and xs.min() > 0 else "symlog"


def check_available(kind: str, rows: Sequence[Row]) -> None:
    """Raise `PlotUnavailable` when the rows hold nothing for this kind (only grad, for now)."""
    if kind not in KINDS:
        raise PlotError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "grad" and not any(r.quantity == GRAD_QUANTITY for r in rows):
        raise PlotUnavailable("the sweep has no gradient rows to plot (no formula has a gradient model here)")


def _groups(rows: Sequence[Row], key) -> list[list[Row]]:
    out: dict = {}
    for r in rows:
        out.setdefault(key(r), []).append(r)
    return list(out.values())


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    return np.where(np.isfinite(a), a, np.nan)


def _names(groups: list[list[Row]], s: Settings, kind: str) -> list[str]:
    """Series labels: the formula, plus the dtype and eps only where they vary."""
    many_dtypes = len(s.dtypes) > 1
    many_eps = len({g[0].eps for g in groups if g[0].eps is not None}) > 1
    out = []
    for g in groups:
        r = g[0]
        parts = []
        if kind == "roundtrip":
            parts.append(r.dtype)
            if r.formula:
                parts.append(r.formula)
        else:
            if many_dtypes:
                parts.append(r.dtype)
            parts.append(r.formula or "-")
            if many_eps and r.eps is not None:
                parts.append(f"eps {fmt(r.eps, 3)}")
        out.append(" ".join(parts))
    return out


def plot_data(result: SweepResult, kind: str) -> PlotData:
    """What a picture of ``kind`` shows, computed from the sweep's rows and key points only."""
    check_available(kind, result.rows)
    s = result.settings
    if not result.rows:
        raise PlotUnavailable("the sweep has no grid rows to plot")
    label = plot_label(s, kind)
    if kind == "roundtrip":
        rows = [r for r in result.rows if r.quantity == "roundtrip"]
        groups = _groups(rows, lambda r: (r.dtype, r.formula))
        ys = [_finite([r.rel_err for r in g]) for g in groups]
    else:
        quantity = GRAD_QUANTITY if kind == "grad" else "bce"
        rows = [r for r in result.rows if r.quantity == quantity and r.label == label]
        groups = _groups(rows, lambda r: (r.dtype, r.formula, r.eps))
        if kind == "error":
            ys = [np.where(np.isfinite([r.value for r in g]), _finite([r.bits for r in g]), np.nan)
                  for g in groups]
        else:  # a gradient's sign is the label's; its magnitude spans the decades
            ys = [_magnitude(kind, [r.value for r in g]) for g in groups]
    if not groups:
        raise PlotUnavailable(f"the sweep has no {kind} rows to plot for {_label_text(label)}")
    names = _names(groups, s, kind)
    series = tuple(Series(name, _finite([r.x_dtype for r in g]), y, style(i), g[0].dtype, g[0].formula,
                          g[0].eps) for i, (name, g, y) in enumerate(zip(names, groups, ys, strict=True)))
    xs = np.concatenate([sr.x for sr in series])
    exact, guides = _exact(kind, groups, s, series)
    notes = list(result.notes)
    every_y = np.concatenate([sr.y for sr in series] + ([exact.y] if exact is not None else []))
    yscale = "linear" if kind == "error" else y_scale(every_y)  # bits are already logarithmic
    if kind == "roundtrip" and yscale == "linear":
        exact = Series("exact: error 0", series[0].x, np.zeros_like(series[0].x), EXACT_STYLE)
    elif kind == "roundtrip":
        notes.append("exact round trip: error 0, below the log axis")
    if yscale == "log" and kind != "roundtrip" and np.any(every_y <= 0):
        notes.append("values of 0 are not drawn on the log axis")
    markers = _markers(result, kind, label, series, s)
    notes += trivial_note(markers, len(s.dtypes) > 1)
    title, ylabel = _what(kind, label)
    return PlotData(
        kind=kind, title=title, subtitle=_subtitle(s, kind, label, len(np.unique(xs))),
        xlabel="a (the pair is (-a, 0) and (a, 1))" if label == "pair" and kind != "roundtrip" else "logit x",
        ylabel=ylabel, xscale=x_scale(s, xs), yscale=yscale, xlim=(float(s.range[0]), float(s.range[1])),
        series=series, exact=exact, markers=markers, guides=guides, notes=tuple(notes),
        labels=labels(markers, len(s.dtypes) > 1),
    )


def _exact(kind: str, groups, s: Settings, series) -> tuple[Series | None, tuple[Guide, ...]]:
    """The exact curve (None where it is 0 on a log axis) and the horizontal guides."""
    if kind == "roundtrip":
        return None, tuple(Guide(t, f"rel err {fmt(t, 3)}") for t in s.thresholds)
    if kind == "error":
        x = series[0].x
        return Series("exact: 0 bits", x, np.zeros_like(x), EXACT_STYLE), (Guide(math.log2(5.0), "4 ULP"),)
    # the widest dtype's exact values: the baseline at its (finest) rounded inputs
    widest = max(range(len(groups)), key=lambda i: _bits(groups[i][0].dtype))
    g = groups[widest]
    return Series("exact (mpmath)", _finite([r.x_dtype for r in g]), _magnitude(kind, [r.exact for r in g]),
                  EXACT_STYLE, g[0].dtype), ()


def _magnitude(kind: str, values) -> np.ndarray:
    v = _finite(values)
    return np.abs(v) if kind == "grad" else v


def _bits(dtype: str) -> int:
    return dtypes.get(dtype).bits


def _what(kind: str, label) -> tuple[str, str]:
    lab = _label_text(label)
    return {
        "roundtrip": ("Round trip logit(sigmoid(x)): relative error against x",
                      "relative error |logit(sigmoid(x)) - x| / |x|"),
        "bce": (f"Binary cross-entropy, {lab}: computed beside exact", f"BCE, {lab}"),
        "error": (f"Bits of error of BCE, {lab}: log2(1 + ULPs)", "bits of error"),
        "grad": (f"Gradient of BCE, {lab}: |dBCE/dx| computed beside exact |sigmoid(x) - y|",
                 f"|dBCE/dx|, {lab}"),
    }[kind]


def _subtitle(s: Settings, kind: str, label, points: int) -> str:
    parts = [", ".join(s.dtypes), s.mode]
    if s.backend != "numpy":
        keras = f" ({s.keras_backend})" if s.backend == "keras" else ""
        parts.append(f"{s.backend}{keras} on {s.device}")
    if kind != "roundtrip":
        parts += ["eps " + ", ".join(fmt(e, 3) for e in s.eps), _label_text(label), ", ".join(s.formulas)]
    lo, hi = s.range
    parts.append(f"x in [{fmt(lo, 6)}, {fmt(hi, 6)}], {points} points"
                 + (", log spacing" if s.spacing == "log" and s.step is None else ""))
    return " | ".join(parts)


def _markers(result: SweepResult, kind: str, label, series, s: Settings) -> tuple[Marker, ...]:
    """Overflow, onsets, floors and ceilings that fall inside the plotted range."""
    lo, hi = s.range
    formulas = {sr.formula for sr in series}
    eps_set = {sr.eps for sr in series}
    several_eps = len(eps_set - {None}) > 1
    out: list[Marker] = []
    for k in result.keypoints:
        if not (lo <= k.x <= hi):
            continue
        eps = f" (eps {fmt(k.eps, 3)})" if several_eps and k.eps is not None else ""
        who, level = k.formula or "", None
        if k.name == "roundtrip_overflow" and (k.formula is None or k.formula in formulas):
            what = "round trip inf" if kind == "roundtrip" else "sigmoid rounds to 1"
        elif kind == "roundtrip" and k.name == "roundtrip_underflow" and k.formula in formulas:
            what = "round trip -inf"
        elif kind == "roundtrip" and k.name == "roundtrip_rel_err_onset" and k.formula in formulas:
            what = f"rel err {fmt(k.threshold, 3)}"
        elif (kind in ("bce", "error") and k.name in ("bce_floor", "bce_ceiling") and k.formula in formulas
              and k.label == label and k.eps in eps_set):
            who += eps
            what = f"{'floor' if k.name == 'bce_floor' else 'ceiling'} {fmt(k.value, 4)}"
            level = float(k.value) if kind == "bce" else None  # the error plot's y is bits, not BCE
        elif (kind == "grad" and k.name in GRAD_POINTS and k.formula in formulas and k.label == label
              and k.eps in eps_set):
            who += eps
            what = f"gradient {GRAD_POINTS[k.name]}"
        else:
            continue
        full = " ".join(w for w in (k.dtype if len(s.dtypes) > 1 else "", who) if w)
        text = f"{full}{' ' if full else ''}{what} from {fmt_x(k.x)}"
        m = Marker(float(k.x), text, k.name, k.dtype, who, what, level)
        if m not in out:
            out.append(m)
    return tuple(sorted(out, key=lambda m: m.x))


ONSET_START = 1.0  # where the search for a round-trip error onset starts (keypoints: smallest x >= 1)


def trivial(m: Marker) -> bool:
    """An error onset at the very start of its search: the error is above the threshold from
    x = 1 on, which the curve already shows; a line there says nothing (a note does)."""
    return m.name == "roundtrip_rel_err_onset" and m.x == ONSET_START


def _join(names: Sequence[str]) -> str:
    return ", ".join(dict.fromkeys(names))


LEVEL_CHARS = 56  # a level's label is wrapped to this many characters: it lies over the picture


def labels(markers: Sequence[Marker], with_dtype: bool) -> tuple[Label, ...]:
    """The markers merged into what a picture writes, one label per x and one per level.

    Key points at one x share one vertical line and one label; who shares the same events is
    named once (``keras3, tf-keras: gradient exactly 0 from 16.2``); a vanishing gradient where it
    is also exactly 0 is left out. Floors and ceilings of one value share one label written at the
    edge the plateau runs to (floors right, ceilings left), at the height of the level, so close
    levels (keras2's 1.096e-7, keras3's 1.192e-7) are told apart by their own labels.

    >>> ms = [Marker(16.2, "", "grad_dead_zone", "float32", "keras3", "gradient exactly 0"),
    ...       Marker(16.2, "", "grad_vanishing", "float32", "keras3", "gradient vanishing"),
    ...       Marker(16.2, "", "grad_dead_zone", "float32", "tf-keras", "gradient exactly 0")]
    >>> [lb.text for lb in labels(ms, False)]
    ['keras3, tf-keras: gradient exactly 0 from 16.2']
    """
    def name(m: Marker) -> str:
        return " ".join(w for w in ((m.dtype or "") if with_dtype else "", m.who) if w)

    out: list[Label] = []
    lines: dict[float, dict[str, list[str]]] = {}  # x -> who -> what
    for m in markers:
        if m.level is None and not trivial(m):
            whats = lines.setdefault(m.x, {}).setdefault(name(m), [])
            whats += [m.what] if m.what not in whats else []
    for x, who in lines.items():
        for whats in who.values():
            if "gradient exactly 0" in whats and "gradient vanishing" in whats:
                whats.remove("gradient vanishing")
        same: dict[tuple[str, ...], list[str]] = {}
        for w, whats in who.items():
            same.setdefault(tuple(whats), []).append(w)
        parts = [f"{_join([w for w in ws if w])}: {' and '.join(wh)}" if any(ws) else " and ".join(wh)
                 for wh, ws in same.items()]
        text = (f"{parts[0]} from {fmt_x(x)}" if len(parts) == 1
                else "\n".join([f"from {fmt_x(x)}:", *parts]))
        dts = {m.dtype for m in markers if m.x == x and m.level is None}
        out.append(Label(x, text, dtype=dts.pop() if len(dts) == 1 else None))
    levels: dict[tuple[str, str], list[Marker]] = {}
    for m in markers:
        if m.level is not None:  # one label per value as written (keras2-logits' and keras3-torch's 1.096e-7)
            levels.setdefault((m.name, m.what), []).append(m)
    for (kname, what), ms in levels.items():
        level = ms[0].level
        xs = sorted({m.x for m in ms})
        nb = "\N{NO-BREAK SPACE}"  # textwrap breaks at ASCII spaces only: "from x" stays whole
        if len(xs) == 1:
            text = f"{what}: {_join([name(m) for m in ms])} from{nb}{fmt_x(xs[0])}"
        else:
            text = f"{what}: " + ", ".join(f"{name(m)} from{nb}{fmt_x(m.x)}" for m in ms)
        text = "\n".join(textwrap.wrap(text, LEVEL_CHARS, subsequent_indent="  ", break_on_hyphens=False))
        text = text.replace(nb, " ")
        dts = {m.dtype for m in ms}
        out.append(Label(xs[0], text, level, "right" if kname == "bce_floor" else "left",
                         dts.pop() if len(dts) == 1 else None, tuple(xs)))
    return tuple(sorted(out, key=lambda lb: (lb.y is not None, lb.x)))


def trivial_note(markers: Sequence[Marker], with_dtype: bool) -> list[str]:
    """The trivial onsets in one line each, so leaving out their lines loses nothing."""
    by_what: dict[str, list[str]] = {}
    for m in markers:
        if trivial(m):
            who = " ".join(w for w in ((m.dtype or "") if with_dtype else "", m.who) if w)
            by_what.setdefault(m.what, []).append(who)
    return [f"{what} already at x = {fmt_x(ONSET_START)}" + (f": {_join(ws)}" if any(ws) else "")
            for what, ws in by_what.items()]


def facets(data: PlotData) -> list[PlotData]:
    """One picture per dtype (``--facet``): its series, key points and labels, without the dtype in
    every name; a formula keeps one style across the panels."""
    dts = list(dict.fromkeys(sr.dtype for sr in data.series))
    keys = list(dict.fromkeys(_short(sr) for sr in data.series))
    out = []
    for d in dts:
        series = tuple(sr if data.kind == "roundtrip" else replace(sr, label=_short(sr),
                                                                   style=style(keys.index(_short(sr))))
                       for sr in data.series if sr.dtype == d)
        markers = tuple(m for m in data.markers if m.dtype in (d, None))
        notes = tuple(trivial_note(markers, False))
        out.append(replace(data, title=str(d), subtitle="", series=series, markers=markers,
                           labels=labels(markers, False), notes=notes))
    return out


def _short(sr: Series) -> str:
    """A series' label without its dtype (which a panel's title says)."""
    return sr.label[len(sr.dtype) + 1:] if sr.dtype and sr.label.startswith(sr.dtype + " ") else sr.label


# ---------------------------------------------------------------- optional imports


def require(module: str, what: str):
    """Import an optional module of the plot extra, or raise `PlotExtraMissing` naming ``what``."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise PlotExtraMissing(f"{what} needs {module.split('.')[0]}, which is not installed: "
                               f"{INSTALL}") from None


def parse_size(text: str) -> tuple[int, int]:
    """``"1200x700"`` -> (1200, 700), each side MIN_PIXELS to MAX_PIXELS.

    >>> parse_size("1200x700")
    (1200, 700)
    """
    parts = text.lower().split("x")
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise PlotError(f"--size {text!r} is malformed; write WIDTHxHEIGHT in pixels, "
                        "e.g. 1200x700") from None
    if not (MIN_PIXELS <= w <= MAX_PIXELS and MIN_PIXELS <= h <= MAX_PIXELS):
        raise PlotError(f"--size {text!r} is out of range; each side must be {MIN_PIXELS} to {MAX_PIXELS} "
                        "pixels")
    return w, h


def check_path(path: str, flag: str = "--output") -> str:
    """The picture format from the file's suffix: png, svg or pdf."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise PlotError(f"{flag} {path!r}: unsupported picture format {suffix or '(no suffix)'!r}; "
                        f"use {', '.join(SUFFIXES)}")
    return suffix[1:]


# ---------------------------------------------------------------- matplotlib


def _masked(y: np.ndarray, log: bool) -> np.ndarray:
    return np.where(y > 0, y, np.nan) if log else y


PANEL_HEIGHT = 300  # pixels a panel of --facet gets by default
MAX_LABELS = 6  # vertical labels written in one picture; more are numbered and named in the legend
LABEL_GAP = 3  # pixels kept between two labels


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of ``n`` panels: one column up to two panels, then two.

    >>> grid_shape(7)
    (4, 2)
    """
    cols = 1 if n <= 2 else 2
    return -(-n // cols), cols


def default_size(data: PlotData, facet: bool = False) -> tuple[int, int]:
    """DEFAULT_SIZE, taller with ``facet`` so that each panel keeps PANEL_HEIGHT pixels."""
    if not facet:
        return DEFAULT_SIZE
    rows, _ = grid_shape(len(facets(data)))
    return DEFAULT_SIZE[0], min(MAX_PIXELS, max(DEFAULT_SIZE[1], PANEL_HEIGHT * rows + 160))


def render_file(data: PlotData, path: str, width_px: int = DEFAULT_SIZE[0], height_px: int = DEFAULT_SIZE[1],
                dpi: int = DPI, facet: bool = False) -> None:
    """Draw with matplotlib (no pyplot, no global backend) and write PNG, SVG or PDF atomically.

    PNG is ``width_px`` x ``height_px`` pixels; SVG and PDF have the same size in inches at ``dpi``.
    """
    fmt_ = check_path(path)
    mpl = require("matplotlib", "--output")
    fig = figure(data, width_px, height_px, dpi, facet)
    with mpl.rc_context({"svg.hashsalt": "bce-audit"}):  # SVG ids from a fixed salt, not a random one
        _save(fig, path, fmt_)


def figure(data: PlotData, width_px: int = DEFAULT_SIZE[0], height_px: int = DEFAULT_SIZE[1], dpi: int = DPI,
           facet: bool = False):
    """The picture as a laid-out matplotlib Figure (on an Agg canvas), one axes per panel.

    Its key-point labels are placed so that no two overlap: each goes where it belongs (the top of
    its line, or its level at the edge) and moves down (or up, at the bottom) past those already
    placed, as measured by the renderer.
    """
    figure_ = require("matplotlib.figure", "--output")
    backend = require("matplotlib.backends.backend_agg", "--output")
    fig = figure_.Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    backend.FigureCanvasAgg(fig)
    panels = facets(data) if facet else [data]
    rows, cols = grid_shape(len(panels)) if facet else (1, 1)
    axes = list(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel())
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    chars = max(40, int(width_px / dpi * 72 / 6.5))  # about 6.5 pt a character at 11 pt
    title = "\n".join([data.title, *_wrap_settings(data.subtitle, chars),
                       *(w for n in data.notes for w in textwrap.wrap(n, chars))])
    handles: dict[str, Any] = {}
    texts = []
    for i, (ax, panel) in enumerate(zip(axes, panels, strict=False)):
        numbered = not facet and sum(lb.y is None for lb in panel.labels) > MAX_LABELS
        entries, placed = _draw_panel(ax, panel, numbered)
        texts.append((ax, placed, panel))
        if facet:
            ax.set_title(panel.title, fontsize=10, loc="left")
            if i + cols >= len(panels):  # the lowest panel of its column
                ax.set_xlabel(data.xlabel)
                ax.xaxis.set_tick_params(labelbottom=True)
            if i % cols == 0:
                ax.set_ylabel(data.ylabel)
        else:
            ax.set_xlabel(data.xlabel)
            ax.set_ylabel(data.ylabel)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
        handles.update({e.get_label(): e for e in entries})
    if facet:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
        curves = {sr.label for panel in panels for sr in panel.series}
        ordered = sorted(handles.values(), key=lambda h: h.get_label() not in curves)  # curves first
        fig.legend(handles=ordered, loc="outside right upper", fontsize=9, frameon=False)
    else:
        axes[0].set_title(title, fontsize=11, loc="left")
        axes[0].legend(handles=list(handles.values()), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       fontsize=9, frameon=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.draw_without_rendering()  # the layout, once: the labels are placed in it
    for w in caught:
        if "constrained_layout not applied" in str(w.message):
            raise PlotError(f"--size {width_px}x{height_px} is too small for this picture; try "
                            "{}x{}".format(*default_size(data, facet)))
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fig.set_layout_engine("none")  # keep that layout: moving labels inside the axes must not change it
    renderer = fig.canvas.get_renderer()
    for ax, placed, panel in texts:
        starts = [t.xyann for t, _ in placed]
        _declutter(ax, placed, renderer)
        hung = [t for t, _ in placed if t.xycoords[1] == "axes fraction"]
        if _headroom(ax, hung, _ymax(panel), renderer):
            for (t, _), start in zip(placed, starts, strict=True):
                t.xyann = start
            _declutter(ax, placed, renderer)
    return fig


def _headroom(ax, tops: Sequence, ymax: float, renderer) -> bool:
    """Raise the top of the y axis so that the curves (up to ``ymax``) stay below the labels hung
    from it, giving the labels at most half the height; True if it moved."""
    if not tops or not math.isfinite(ymax):
        return False
    frame = ax.get_window_extent(renderer)
    lowest = min(t.get_window_extent(renderer).y0 for t in tops) - LABEL_GAP
    if float(ax.transData.transform((ax.get_xlim()[0], ymax))[1]) <= lowest:
        return False
    f = max(0.5, (lowest - frame.y0) / frame.height)  # where the data's top should be, as a fraction
    lo, _ = ax.get_ylim()
    if ax.get_yscale() == "log":
        ax.set_ylim(lo, 10.0 ** (math.log10(lo) + (math.log10(ymax) - math.log10(lo)) / f))
    else:
        ax.set_ylim(lo, lo + (ymax - lo) / f)
    return True


def _ymax(data: PlotData) -> float:
    """The highest value a panel draws (positive, on a log axis)."""
    ys = np.concatenate([sr.y for sr in ([data.exact] if data.exact is not None else []) + list(data.series)])
    ys = ys[np.isfinite(ys) & ((ys > 0) if data.yscale == "log" else True)]
    return float(ys.max()) if ys.size else math.nan


def _draw_panel(ax, data: PlotData, numbered: bool) -> tuple[list, list]:
    """Curves, guides and key points of one panel; returns numbered legend entries and the labels."""
    log = data.yscale == "log"
    if data.exact is not None:
        ax.plot(data.exact.x, _masked(data.exact.y, log), color=EXACT_COLOR, lw=6, alpha=0.5,
                solid_capstyle="butt", label=data.exact.label, zorder=1)
    several = len(data.series) > 1
    for i, sr in enumerate(data.series):
        n = max(1, len(sr.x) // 12)  # a marker every n points, staggered so overlapping curves show
        ax.plot(sr.x, _masked(sr.y, log), color=sr.style.color, linestyle=sr.style.dash, lw=1.6,
                marker=sr.style.marker if several else None, markevery=(i * n // len(data.series), n),
                markersize=5, label=sr.label, zorder=3)
    for g in data.guides:
        ax.axhline(g.y, color="#555555", linestyle=(0, (6, 3, 1, 3)), lw=0.9, label=g.text, zorder=2)
    if data.xscale == "symlog":
        nonzero = np.abs(np.concatenate([sr.x for sr in data.series]))
        ax.set_xscale("symlog", linthresh=float(nonzero[nonzero > 0].min()) if np.any(nonzero > 0) else 1.0)
    else:
        ax.set_xscale(data.xscale)
    ax.set_yscale(data.yscale)
    ax.set_xlim(*data.xlim)
    ax.grid(True, which="major", color="#DDDDDD", lw=0.6)
    return _draw_labels(ax, data.labels, numbered)


def _draw_labels(ax, labels_: Sequence[Label], numbered: bool) -> tuple[list, list]:
    """Vertical lines at the key points, labelled at the top (or numbered, the legend naming them);
    floors and ceilings labelled at the edge, at their level. Returns (legend entries, labels)."""
    from matplotlib.lines import Line2D

    entries, placed = [], []
    box = {"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85}
    vertical = [lb for lb in labels_ if lb.y is None]
    for k, lb in enumerate(vertical):
        ax.axvline(lb.x, color="#333333", linestyle=(0, (2, 2)), lw=1.0, zorder=2)
        right = _frac(ax, lb.x) > 0.62
        text = str(k + 1) if numbered else lb.text
        placed.append((ax.annotate(text, xy=(lb.x, 1.0), xycoords=("data", "axes fraction"),
                                   xytext=(-3 if right else 3, -3), textcoords="offset points",
                                   ha="right" if right else "left", va="top", fontsize=9, color="#222222",
                                   zorder=4, bbox=box, annotation_clip=False), -1))
        if numbered:
            entries.append(Line2D([], [], linestyle="none", marker=f"${k + 1}$", color="#222222",
                                  markersize=7 + 2 * len(str(k + 1)), label=lb.text))
    # the floor nearest its line first, as they stack: floors upwards from the lowest, ceilings down
    levels = sorted((lb for lb in labels_ if lb.y is not None),
                    key=lambda lb: (lb.edge == "right", (lb.y or 0.0) * (1 if lb.edge == "right" else -1)))
    for lb in levels:
        for x in lb.xs:
            ax.axvline(x, color="#999999", linestyle=(0, (1, 3)), lw=0.8, zorder=2)
        right = lb.edge == "right"  # a floor: written above it, going up; a ceiling: below, going down
        t = ax.annotate(lb.text, xy=(1.0 if right else 0.0, lb.y), xycoords=("axes fraction", "data"),
                        xytext=(-3 if right else 3, 2 if right else -2), textcoords="offset points",
                        ha="right" if right else "left", va="bottom" if right else "top",
                        fontsize=9, color="#222222", zorder=4, bbox=box, annotation_clip=False)
        placed.insert(len(placed) - len(vertical), (t, 1 if right else -1))
    for t, _ in placed:
        t.set_in_layout(False)
        t.set_multialignment("left")
    return entries, placed


def _frac(ax, x: float) -> float:
    return float(ax.transAxes.inverted().transform(ax.transData.transform((x, 1.0)))[0])


def _declutter(ax, texts: Sequence, renderer) -> None:
    """Move each label its way (-1 down, 1 up; the other way if it would leave the axes) past the
    labels placed before it. ``texts``: (annotation, direction) pairs, placed in that order."""
    frame = ax.get_window_extent(renderer)
    scale = 72.0 / ax.figure.dpi  # display pixels to the annotations' offset points
    done: list = []
    for t, way in texts:
        start = t.xyann
        for direction in (way, -way, way):  # its way; the other; else its way, wherever that ends
            t.xyann = start
            for _ in range(4 * len(texts) + 4):
                bb = t.get_window_extent(renderer)
                hits = [b for b in done if _overlap(bb, b)]
                if not hits:
                    break
                shift = (min(b.y0 for b in hits) - LABEL_GAP - bb.y1 if direction < 0
                         else max(b.y1 for b in hits) + LABEL_GAP - bb.y0)
                t.xyann = (t.xyann[0], t.xyann[1] + shift * scale)
            bb = t.get_window_extent(renderer)
            if not any(_overlap(bb, b) for b in done) and frame.y0 <= bb.y0 and bb.y1 <= frame.y1 + 1:
                break
        done.append(t.get_window_extent(renderer))


def _overlap(a, b) -> bool:
    """Two display boxes closer than LABEL_GAP (the labels' white boxes reach a little past the text)."""
    g = LABEL_GAP - 0.5
    return a.x0 < b.x1 + g and b.x0 < a.x1 + g and a.y0 < b.y1 + g and b.y0 < a.y1 + g


_METADATA = {"png": {"Software": None}, "svg": {"Date": None}, "pdf": {"CreationDate": None}}


def _save(fig, path: str, fmt_: str, flag: str = "--output") -> None:
    try:
        with files.atomic_open(path, "wb", suffix="." + fmt_) as f:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fig.savefig(f, format=fmt_, dpi=fig.dpi, metadata=_METADATA[fmt_])
            for w in caught:
                if "constrained_layout not applied" in str(w.message):
                    w_in, h_in = fig.get_size_inches() * fig.dpi
                    raise PlotError(f"--size {w_in:.0f}x{h_in:.0f} is too small for this picture; try "
                                    "{}x{}".format(*DEFAULT_SIZE))
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    except files.WriteError as e:
        raise PlotError(f"cannot write {flag}: {e}") from None


def _repro_label(c: ReproCase) -> str:
    what = f"{'model.evaluate' if c.feeding == 'in-graph' else 'fed p'}: {c.path}"
    if c.tail == "zero":
        return f"{what}, 0 (not drawn) from a = {c.floor_a:g}"
    if c.tail == "floor":
        return f"{what}, floor {fmt(c.floor, 5)} from a = {c.floor_a:g}"
    return what


def render_repro(cases: Sequence[ReproCase], path: str, width_px: int = DEFAULT_SIZE[0],
                 height_px: int = DEFAULT_SIZE[1], dpi: int = DPI) -> None:
    """`bce-audit reproduce --plot`: the mean loss of the pair against a, log scale, one panel
    per dtype policy, each case beside the exact curve. A loss of exactly 0 is a gap."""
    fmt_ = check_path(path, "--plot")
    mpl = require("matplotlib", "--plot")
    figure = require("matplotlib.figure", "--plot")
    backend = require("matplotlib.backends.backend_agg", "--plot")
    policies = list(dict.fromkeys(c.policy for c in cases))
    fig = figure.Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    backend.FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(policies), sharey=True, squeeze=False)[0]
    for ax, policy in zip(axes, policies, strict=True):
        mine = [c for c in cases if c.policy == policy]
        a = np.asarray(mine[0].a)
        ax.plot(a, _masked(np.asarray(mine[0].exact), True), color=EXACT_COLOR, lw=6, alpha=0.5,
                solid_capstyle="butt", label="exact log1p(exp(-a))", zorder=1)
        for i, c in enumerate(mine):
            st = style(i)
            ax.plot(a, _masked(np.asarray(c.loss), True), color=st.color, linestyle=st.dash, lw=1.6,
                    marker=st.marker, markevery=(i * 3, 6), markersize=5,
                    label=_repro_label(c), zorder=3)
        ax.set_yscale("log")
        ax.set_xlabel("a")
        ax.set_title(policy, fontsize=11, loc="left")
        ax.grid(True, which="major", color="#DDDDDD", lw=0.6)
        ax.legend(loc="lower left", fontsize=9, frameon=False)
    axes[0].set_ylabel("mean BCE of {(-a, 0), (a, 1)}")
    c0 = cases[0]
    who = "tf_keras" if c0.framework == "tf-keras" else f"keras {c0.backend}"
    versions = ", ".join(f"{k} {v}" for k, v in sorted(c0.versions.items()))
    fig.suptitle(f"The Keras BCE floor: Dense(1, sigmoid), w = 1, b = 0, {who} ({versions})", fontsize=11)
    with mpl.rc_context({"svg.hashsalt": "bce-audit"}):
        _save(fig, path, fmt_, "--plot")


# ---------------------------------------------------------------- the terminal


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def _segments(x: np.ndarray, y: np.ndarray) -> list[tuple[list[float], list[float]]]:
    """Runs of finite points: a gap between runs, never a NaN (plotext cannot take them)."""
    ok = np.isfinite(x) & np.isfinite(y)
    out, start = [], None
    for i, good in enumerate([*ok.tolist(), False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            out.append((x[start:i].tolist(), y[start:i].tolist()))
            start = None
    return out


def _decade_ticks(lo: float, hi: float, most: int = 6) -> tuple[list[float], list[str]]:
    a, b = math.floor(lo), math.ceil(hi)
    step = max(1, math.ceil((b - a) / most))
    ticks = [float(k) for k in range(a, b + 1) if k % step == 0 and lo <= k <= hi]
    return ticks, [("1" if k == 0 else f"1e{int(k)}") for k in ticks]


@dataclass(frozen=True)
class _Chart:
    """What the plotext adapters draw: log axes already taken to log10, no NaN anywhere."""

    curves: list  # (Style, [(xs, ys), ...] runs of finite points)
    guides: list[float]
    markers: list[float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    yticks: tuple[list[float], list[str]] | None
    title: str
    width: int
    height: int


def _log10(v: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)


def render_terminal(data: PlotData, width: int = 80, height: int = TERMINAL_HEIGHT,
                    color: bool = False) -> str:
    """A plotext chart ``width`` columns wide, with its key, key points and settings below it.

    A log axis is drawn as log10 of the values (plotext's own log scale differs between
    versions), its ticks labelled as powers of ten; a symlog x axis is drawn linear.
    """
    plt = require("plotext", "the terminal chart")
    ylog, xlog = data.yscale == "log", data.xscale == "log"

    def ty(v) -> np.ndarray:
        return _log10(np.asarray(v, dtype=np.float64)) if ylog else np.asarray(v, dtype=np.float64)

    def tx(v) -> np.ndarray:
        return _log10(np.asarray(v, dtype=np.float64)) if xlog else np.asarray(v, dtype=np.float64)

    drawn = ([data.exact] if data.exact is not None else []) + list(data.series)
    ys = [ty(sr.y) for sr in drawn]
    every = np.concatenate([*ys, ty([g.y for g in data.guides])])
    every = every[np.isfinite(every)]
    lo, hi = (float(every.min()), float(every.max())) if every.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 1.0, hi + 1.0
    pad = (hi - lo) * 0.04
    ylim = (lo - pad, hi + pad)
    x0, x1 = (float(v) for v in tx(data.xlim))
    chart = _Chart(
        curves=[(sr.style, _segments(tx(sr.x), y)) for sr, y in zip(drawn, ys, strict=True)],
        guides=[float(v) for v in ty([g.y for g in data.guides]) if ylim[0] <= v <= ylim[1]],
        markers=[float(v) for v in tx([lb.x for lb in data.labels if lb.y is None])],
        xlim=(x0, x1), ylim=ylim,
        yticks=_decade_ticks(*ylim) if ylog else None,
        title=_fit(data.title, width), width=width, height=max(8, height),
    )
    if hasattr(plt, "figure") and hasattr(plt.figure, "signal"):
        text = _plotext6(plt, chart, color)
    else:  # pragma: no cover - plotext 5 (the classic API); CI installs plotext 6
        text = _plotext5(plt, chart, color)
    axes = f"x: {data.xlabel}" + (" (log scale)" if xlog else "") + f"; y: {data.ylabel}" + (
        " (log scale)" if ylog else "")
    return "\n".join([text.rstrip("\n"), *_wrap([axes], width), *_legend(plt, data, width, color)]) + "\n"


GREY = (120, 120, 120)


def _marker_y(chart: _Chart, k: int) -> float:
    """Key point k's number, one row lower than the one before so close markers stay legible."""
    lo, hi = chart.ylim
    return hi - (hi - lo) * k / max(1, chart.height - 6)


def _plotext6(plt, chart: _Chart, color: bool) -> str:
    """plotext 6 (the figure API). Guides and key points are drawn as segments, under the curves."""
    f = plt.figure
    f.clear()
    f.theme("simple")
    f.plot_size(chart.width, chart.height)
    grey = plt.pixel(foreground=GREY)
    for y in chart.guides:
        f.draw(f.segment(chart.xlim, (y, y), marker=plt.marker("┈", pixel=grey)))
    for x in chart.markers:
        f.draw(f.segment((x, x), chart.ylim, marker=plt.marker("┊", pixel=grey)))
    for st, runs in chart.curves:
        for xs, ys in runs:
            f.draw(f.signal(xs, ys, marker=plt.marker(st.char, pixel=_rgb(st.color))).lines())
    for k, x in enumerate(chart.markers):
        number = plt.colorize(str(k + 1), plt.pixel(style="bold"))
        f.draw(f.signal([x], [_marker_y(chart, k)], marker=plt.marker(number)))
    f.title(chart.title)
    f.ruler("x").lim(*chart.xlim)
    f.ruler("y").lim(*chart.ylim)
    if chart.yticks:
        f.ruler("y").ticks(*chart.yticks)
    return f.build().string(colorless=not color)


def _plotext5(plt, chart: _Chart, color: bool) -> str:  # pragma: no cover - plotext 5
    plt.clear_figure()
    plt.theme("pro" if color else "clear")
    plt.plotsize(chart.width, chart.height)
    for st, runs in chart.curves:
        for xs, ys in runs:
            plt.plot(xs, ys, marker=st.char, color=_rgb(st.color))
    for y in chart.guides:
        plt.hline(y, GREY)
    for k, x in enumerate(chart.markers):
        plt.vline(x, GREY)
        plt.text(str(k + 1), x, _marker_y(chart, k))
    plt.title(chart.title)
    plt.xlim(*chart.xlim)
    plt.ylim(*chart.ylim)
    if chart.yticks:
        plt.yticks(*chart.yticks)
    out = plt.build()
    return out if color else plt.uncolorize(out)


def one_line(text: str) -> str:
    r"""A label on one line: ``from x:`` and its events joined by semicolons, wrapped lines rejoined.

    >>> one_line("from 16.6:\nsigmoid rounds to 1\nnaive: gradient inf/nan")
    'from 16.6: sigmoid rounds to 1; naive: gradient inf/nan'
    """
    first, *rest = text.split("\n")
    if first.endswith(":") and rest:
        return f"{first} {'; '.join(rest)}"
    return " ".join([first, *(r.strip() for r in rest)])


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _legend(plt, data: PlotData, width: int, color: bool) -> list[str]:
    """The key below the chart: each curve's marker, the guides, the numbered key points, settings."""
    def paint(text: str, st: Style) -> str:
        if not color:
            return text
        c = plt.colorize(text, _rgb(st.color))
        return c if isinstance(c, str) else c.string()

    drawn = ([data.exact] if data.exact is not None else []) + list(data.series)
    out, line, used = [], "", 0
    for sr in drawn:
        text = _fit(f"{sr.style.char} {sr.label}", width)
        if used and used + 3 + len(text) > width:
            out.append(line)
            line, used = "", 0
        line += ("   " if used else "") + paint(text, sr.style)
        used += len(text) + (3 if used else 0)
    out += [line] if line else []
    out += _wrap([f"··· {g.text}" for g in data.guides], width)
    vertical = [lb for lb in data.labels if lb.y is None]
    out += _wrap([f"{k} {one_line(lb.text)}" for k, lb in enumerate(vertical, 1)], width)
    out += _wrap([f"— {one_line(lb.text)}" for lb in data.labels if lb.y is not None], width)
    return out + _wrap_settings(data.subtitle, width) + _wrap(list(data.notes), width)


def _wrap(items: list[str], width: int) -> list[str]:
    return [w for it in items for w in textwrap.wrap(it, width, subsequent_indent="  ")]


def _wrap_settings(text: str, width: int) -> list[str]:
    """The settings line broken between its `` | ``-separated parts, a part split only if too long."""
    out: list[str] = []
    for part in text.split(" | "):
        if out and len(out[-1]) + 3 + len(part) <= width:
            out[-1] += " | " + part
        else:
            out += textwrap.wrap(part, width, subsequent_indent="  ")
    return out
