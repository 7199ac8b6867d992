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
from dataclasses import dataclass

import numpy as np

from bce_audit import dtypes, files
from bce_audit.records import ReproCase, Row, Settings, SweepResult
from bce_audit.report import fmt, fmt_x

KINDS = ("roundtrip", "bce", "error", "grad")
SUFFIXES = (".png", ".svg", ".pdf")
DEFAULT_SIZE = (1200, 700)  # pixels, at DPI
DPI = 100
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
    """A key point drawn as a vertical line at x."""

    x: float
    text: str
    name: str


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
    title, ylabel = _what(kind, label)
    return PlotData(
        kind=kind, title=title, subtitle=_subtitle(s, kind, label, len(np.unique(xs))),
        xlabel="a (the pair is (-a, 0) and (a, 1))" if label == "pair" and kind != "roundtrip" else "logit x",
        ylabel=ylabel, xscale=x_scale(s, xs), yscale=yscale, xlim=(float(s.range[0]), float(s.range[1])),
        series=series, exact=exact, markers=_markers(result, kind, label, series, s), guides=guides,
        notes=tuple(notes),
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
    many_dtypes = len(s.dtypes) > 1
    formulas = {sr.formula for sr in series}
    eps_set = {sr.eps for sr in series}
    out: list[Marker] = []
    for k in result.keypoints:
        if not (lo <= k.x <= hi):
            continue
        pre = f"{k.dtype} " if many_dtypes else ""
        if k.name == "roundtrip_overflow" and (k.formula is None or k.formula in formulas):
            who = f"{k.formula} " if k.formula else ""
            text = (f"{pre}{who}round trip inf from {fmt_x(k.x)}" if kind == "roundtrip"
                    else f"{pre}sigmoid rounds to 1 from {fmt_x(k.x)}")
        elif kind == "roundtrip" and k.name == "roundtrip_underflow" and k.formula in formulas:
            text = f"{pre}round trip -inf from {fmt_x(k.x)}"
        elif kind == "roundtrip" and k.name == "roundtrip_rel_err_onset" and k.formula in formulas:
            text = f"{pre}rel err {fmt(k.threshold, 3)} from {fmt_x(k.x)}"
        elif (kind in ("bce", "error") and k.name in ("bce_floor", "bce_ceiling") and k.formula in formulas
              and k.label == label and k.eps in eps_set):
            what = "floor" if k.name == "bce_floor" else "ceiling"
            eps = f" (eps {fmt(k.eps, 3)})" if len(eps_set - {None}) > 1 and k.eps is not None else ""
            text = f"{pre}{k.formula}{eps} {what} {fmt(k.value, 4)} from {fmt_x(k.x)}"
        elif (kind == "grad" and k.name in GRAD_POINTS and k.formula in formulas and k.label == label
              and k.eps in eps_set):
            eps = f" (eps {fmt(k.eps, 3)})" if len(eps_set - {None}) > 1 and k.eps is not None else ""
            text = f"{pre}{k.formula}{eps} gradient {GRAD_POINTS[k.name]} from {fmt_x(k.x)}"
        else:
            continue
        m = Marker(float(k.x), text, k.name)
        if m not in out:
            out.append(m)
    return tuple(sorted(out, key=lambda m: m.x))


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


def render_file(data: PlotData, path: str, width_px: int = DEFAULT_SIZE[0], height_px: int = DEFAULT_SIZE[1],
                dpi: int = DPI) -> None:
    """Draw with matplotlib (no pyplot, no global backend) and write PNG, SVG or PDF atomically.

    PNG is ``width_px`` x ``height_px`` pixels; SVG and PDF have the same size in inches at ``dpi``.
    """
    fmt_ = check_path(path)
    mpl = require("matplotlib", "--output")
    figure = require("matplotlib.figure", "--output")
    backend = require("matplotlib.backends.backend_agg", "--output")
    fig = figure.Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    backend.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
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
    ax.set_xlabel(data.xlabel)
    ax.set_ylabel(data.ylabel)
    ax.grid(True, which="major", color="#DDDDDD", lw=0.6)
    chars = max(40, int(width_px / dpi * 72 / 6.5))  # about 6.5 pt a character at 11 pt
    title = "\n".join([data.title, *_wrap_settings(data.subtitle, chars),
                       *(w for n in data.notes for w in textwrap.wrap(n, chars))])
    ax.set_title(title, fontsize=11, loc="left")
    handles = ax.get_legend_handles_labels()[0] + _draw_markers(ax, data.markers)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    with mpl.rc_context({"svg.hashsalt": "bce-audit"}):  # SVG ids from a fixed salt, not a random one
        _save(fig, path, fmt_)


MAX_LABELS = 4  # key points labelled in the plot; more are numbered there and named in the legend


def _draw_markers(ax, markers: Sequence[Marker]) -> list:
    """Vertical lines at the key points, labelled from the top down so no two labels overlap.

    Up to MAX_LABELS the labels are written beside the lines; beyond, the lines carry numbers and
    the returned legend entries name them.
    """
    from matplotlib.lines import Line2D

    numbered = len(markers) > MAX_LABELS
    step = min(0.065, 0.9 / max(1, len(markers))) if not numbered else min(0.04, 0.9 / len(markers))
    entries = []
    for k, m in enumerate(markers):
        ax.axvline(m.x, color="#333333", linestyle=(0, (2, 2)), lw=1.0, zorder=2)
        frac = ax.transAxes.inverted().transform(ax.transData.transform((m.x, ax.get_ylim()[1])))[0]
        right = frac > 0.62
        text = str(k + 1) if numbered else m.text
        ax.annotate(text, xy=(m.x, 0.98 - k * step), xycoords=("data", "axes fraction"),
                    xytext=(-3 if right else 3, 0), textcoords="offset points",
                    ha="right" if right else "left", va="top", fontsize=9, color="#222222", zorder=4,
                    bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
        if numbered:
            entries.append(Line2D([], [], linestyle="none", marker=f"${k + 1}$", color="#222222",
                                  markersize=7 + 2 * len(str(k + 1)), label=m.text))
    return entries


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
        markers=[float(v) for v in tx([m.x for m in data.markers])],
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
    out += _wrap([f"{k} {m.text}" for k, m in enumerate(data.markers, 1)], width)
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
