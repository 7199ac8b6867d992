"""Pictures (`bce-audit plot`) and the markdown reports (`sweep --format markdown`, `gate --markdown`).

The plotted data is checked against the sweep's own rows and key points (`plot.plot_data`), never
through pixels; files are checked for their format and size; the terminal chart for its width.
conftest.py sets COLUMNS=100 and NO_COLOR; tests that need another width set COLUMNS themselves.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from bce_audit import plot, records, sweep
from bce_audit.cli import cli
from bce_audit.records import Settings

ROOT = Path(__file__).resolve().parent.parent
SMALL = ("--dtype", "float32", "--range", "0:40", "--points", "41", "--formula", "keras3",
         "--formula", "logits-stable", "--threshold", "1e-2")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by default


def run(*args: str, env: dict | None = None) -> Result:
    return _runner().invoke(cli, list(args), prog_name="bce-audit", env=env)


def assert_ok(r: Result) -> str:
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stderr == ""
    return r.stdout


def assert_usage_error(r: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr naming the problem, no traceback."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("bce-audit: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def result() -> records.SweepResult:
    """float32 over 0..40 (the seed article's range): keras3 floors, logits-stable does not."""
    s = Settings(dtypes=("float32",), formulas=("keras3", "logits-stable", "tf-keras"), range=(0.0, 40.0),
                 points=81, thresholds=(1e-3, 1e-2))
    return sweep.run_sweep(s)


@pytest.fixture(scope="module")
def two_dtypes() -> records.SweepResult:
    s = Settings(dtypes=("float16", "float32"), formulas=("keras3", "torch-bce"), eps=(1e-7, 1e-4),
                 range=(-20.0, 20.0), points=41, label="1")
    return sweep.run_sweep(s)


def _rows(res, **match) -> list[records.Row]:
    return [r for r in res.rows if all(getattr(r, k) == v for k, v in match.items())]


def _gapped(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


# ---------------------------------------------------------------- the plotted data is the sweep's data


def test_roundtrip_data_is_the_sweeps_relative_error(result):
    data = plot.plot_data(result, "roundtrip")
    assert [s.label for s in data.series] == ["float32"]
    (series,) = data.series
    rows = _rows(result, quantity="roundtrip", formula=None)
    np.testing.assert_array_equal(series.x, [r.x_dtype for r in rows])
    np.testing.assert_array_equal(series.y, _gapped([r.rel_err for r in rows]))
    # inf is a gap: the curve ends before the round trip overflows at 16.64
    overflow = next(k.x for k in result.keypoints if k.name == "roundtrip_overflow")
    finite = series.x[np.isfinite(series.y)]
    assert finite.max() < overflow <= series.x[~np.isfinite(series.y)].min()
    assert data.yscale == "log" and data.exact is None
    assert any("error 0" in n for n in data.notes)


def test_bce_data_is_the_sweeps_values_and_exact(result):
    data = plot.plot_data(result, "bce")
    assert [s.formula for s in data.series] == ["keras3", "logits-stable", "tf-keras"]
    for series in data.series:
        rows = _rows(result, quantity="bce", formula=series.formula, label="pair")  # --label both
        np.testing.assert_array_equal(series.x, [r.x_dtype for r in rows])
        np.testing.assert_array_equal(series.y, _gapped([r.value for r in rows]))
        assert series.eps == rows[0].eps
    rows = _rows(result, quantity="bce", formula="logits-stable", label="pair")
    np.testing.assert_array_equal(data.exact.y, [r.exact for r in rows])
    assert data.yscale == "log"  # 0.69 down to 1e-18
    assert any("0 are not drawn" in n for n in data.notes)  # tf-keras returns exactly 0


def test_error_data_is_bits_of_error(result):
    data = plot.plot_data(result, "error")
    for series in data.series:
        rows = _rows(result, quantity="bce", formula=series.formula, label="pair")
        want = [r.bits if np.isfinite(r.value) else np.nan for r in rows]
        np.testing.assert_array_equal(series.y, _gapped(want))
    assert data.yscale == "linear"  # bits are already a logarithm
    np.testing.assert_array_equal(data.exact.y, 0.0)


def test_label_choice_and_labels_of_several_dtypes_and_eps(two_dtypes):
    data = plot.plot_data(two_dtypes, "bce")
    labels = [s.label for s in data.series]
    assert labels == ["float16 keras3 eps 1e-7", "float16 keras3 eps 1e-4", "float16 torch-bce",
                      "float32 keras3 eps 1e-7", "float32 keras3 eps 1e-4", "float32 torch-bce"]
    for series in data.series:
        rows = _rows(two_dtypes, quantity="bce", dtype=series.dtype, formula=series.formula, eps=series.eps,
                     label=1)
        np.testing.assert_array_equal(series.y, _gapped([r.value for r in rows]))
    assert data.exact.dtype == "float32"  # the widest dtype's baseline
    assert len({(s.style.color, s.style.dash, s.style.char) for s in data.series}) == len(data.series)


def test_markers_are_the_sweeps_key_points(result):
    def xs(name, **match):
        return {k.x for k in result.keypoints
                if k.name == name and all(getattr(k, f) == v for f, v in match.items())}

    rt = plot.plot_data(result, "roundtrip")
    assert {m.x for m in rt.markers} == xs("roundtrip_overflow") | xs("roundtrip_rel_err_onset")
    assert [m.x for m in rt.markers] == sorted(m.x for m in rt.markers)
    bce = plot.plot_data(result, "bce")
    floors = xs("bce_floor", label="pair")
    assert floors and floors <= {m.x for m in bce.markers}
    assert all(0.0 <= m.x <= 40.0 for m in bce.markers)  # the ceilings at -16.1 lie outside 0..40
    assert any(m.name == "roundtrip_overflow" for m in bce.markers)


def test_title_states_the_settings(result):
    data = plot.plot_data(result, "bce")
    for part in ("float32", "native", "eps 1e-7", "pair", "keras3, logits-stable, tf-keras", "x in [0, 40]",
                 "81 points"):
        assert part in data.subtitle, (part, data.subtitle)


def test_linear_axis_when_values_span_few_decades():
    res = sweep.run_sweep(Settings(formulas=("logits-stable",), range=(-2.0, 2.0), points=9, label="1"))
    assert plot.plot_data(res, "bce").yscale == "linear"
    assert plot.decades(np.array([1e-7, 1.0, 0.0, np.inf, np.nan])) == pytest.approx(7.0)


def test_grad_needs_gradient_rows(result):
    assert not any(r.quantity == plot.GRAD_QUANTITY for r in result.rows)  # the sweep ran without --grad
    with pytest.raises(plot.PlotUnavailable, match="no gradient rows"):
        plot.plot_data(result, "grad")
    # rows of quantity "grad" are all the picture needs: their magnitudes, label 1 for --label both
    grads = [dataclasses.replace(r, quantity=plot.GRAD_QUANTITY, value=-r.value)
             for r in _rows(result, quantity="bce")]
    data = plot.plot_data(dataclasses.replace(result, rows=result.rows + grads), "grad")
    assert [s.formula for s in data.series] == ["keras3", "logits-stable", "tf-keras"]
    for series in data.series:
        rows = _rows(result, quantity="bce", formula=series.formula, label=1)
        np.testing.assert_array_equal(series.y, np.abs(_gapped([r.value for r in rows])))


def test_plot_kind_grad():
    """The gradient picture: plot turns --grad on for it."""
    r = run("plot", *SMALL, "--kind", "grad")
    out = assert_ok(r)
    assert "|dBCE/dx|, label 1" in out and "logits-stable" in out


# ---------------------------------------------------------------- files


@pytest.mark.slow
def test_png_svg_and_pdf_of_the_requested_size(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    png, svg, pdf = tmp_path / "rt.png", tmp_path / "bce.svg", tmp_path / "err.pdf"
    assert_ok(run("plot", *SMALL, "--output", str(png), "--size", "640x360"))
    assert_ok(run("plot", *SMALL, "--kind", "bce", "-o", str(svg), "--size", "800x500"))
    assert_ok(run("plot", *SMALL, "--kind", "error", "-o", str(pdf)))
    with pil.open(png) as im:
        assert im.format == "PNG" and im.size == (640, 360)
    root = ET.parse(svg).getroot()  # SVG sizes are in points: 72 per inch, at 100 pixels per inch
    assert (root.get("width"), root.get("height")) == ("576pt", "360pt")
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000
    assert not list(tmp_path.glob(".bce-audit-*"))  # written atomically, no temporary left


@pytest.mark.slow
def test_same_picture_same_bytes(result, tmp_path):
    """No timestamps and no random SVG ids: docs/*.png regenerate byte for byte."""
    data = plot.plot_data(result, "bce")
    for suffix in (".png", ".svg", ".pdf"):
        a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
        plot.render_file(data, str(a), 500, 300)
        plot.render_file(data, str(b), 500, 300)
        assert a.read_bytes() == b.read_bytes(), suffix


def _curves(ax) -> list[str]:
    """The labelled lines of an axes (the exact curve, one per series, the guides), not the labels'
    leaders."""
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_seed_article_figures_regenerate(tmp_path):
    """The seed article's BCE picture: the pair's loss of its three formulas over 0..40 beside
    the exact one, on a log axis, with keras2-logits' floor near the article's 1.09e-7."""
    pil = pytest.importorskip("PIL.Image")
    out = tmp_path / "seed-bce.png"
    seed = ROOT / "configs" / "seed-article.toml"
    assert_ok(run("plot", "--config", str(seed), "--kind", "bce", "-o", str(out)))
    doc = tomllib.loads(seed.read_text(encoding="utf-8"))
    s = Settings(dtypes=tuple(doc["dtypes"]), eps=tuple(doc["eps"]), formulas=tuple(doc["formulas"]),
                 range=tuple(doc["range"]), points=doc["points"], label=doc["label"],
                 thresholds=tuple(doc["thresholds"]))
    data = plot.plot_data(sweep.run_sweep(s), "bce")
    with pil.open(out) as im:
        assert im.format == "PNG" and im.size == plot.default_size(data)
    fig = plot.figure(data, *plot.default_size(data))
    (ax,) = fig.axes
    assert _curves(ax) == ["exact (mpmath)", *doc["formulas"]]
    assert tuple(ax.get_xlim()) == tuple(doc["range"]) and ax.get_yscale() == "log"
    assert ax.get_xlabel().startswith("a (the pair is (-a, 0) and (a, 1))") and "BCE" in ax.get_ylabel()
    floor = {sr.formula: float(np.nanmin(sr.y)) for sr in data.series}
    assert 1.09e-7 < floor["keras2-logits"] < 1.1e-7  # the seed's floor, about 1.09e-7
    assert floor["logits-stable"] < 1e-16  # no floor: the exact loss's tail
    assert any(lb.text.startswith("floor 1.096e-7: keras2-logits") for lb in data.labels)


@pytest.mark.parametrize(("args", "needles"), [
    (("-o", "x.jpg"), ("'.jpg'", ".png, .svg, .pdf")),
    (("-o", "x"), ("(no suffix)",)),
    (("-o", "x.png", "--size", "big"), ("--size", "WIDTHxHEIGHT")),
    (("-o", "x.png", "--size", "50x50"), ("--size", "200 to 10000")),
    (("-o", "x.png", "--size", "200x200"), ("--size 200x200 is too small",)),
    (("--kind", "pie"), ("--kind",)),
])
def test_usage_errors_are_one_line(args, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(run("plot", *SMALL, *args), *needles)
    assert not list(tmp_path.iterdir())


def _hide(monkeypatch, package: str) -> None:
    """Make ``import package`` (and its submodules) fail, as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_output_without_the_plot_extra_says_how_to_install(tmp_path, monkeypatch):
    _hide(monkeypatch, "matplotlib")
    assert_usage_error(run("plot", *SMALL, "-o", str(tmp_path / "x.png")), "pip install 'bce-audit[plot]'")
    assert not (tmp_path / "x.png").exists()


def test_terminal_without_the_plot_extra_says_how_to_install(monkeypatch):
    _hide(monkeypatch, "plotext")
    assert_usage_error(run("plot", *SMALL), "pip install 'bce-audit[plot]'")


# ---------------------------------------------------------------- the terminal


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("kind", ["roundtrip", "bce", "error"])
def test_terminal_chart_fits_the_terminal(width, kind, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(width))
    out = assert_ok(run("plot", *SMALL, "--kind", kind))
    lines = out.splitlines()
    assert len(lines) > plot.TERMINAL_HEIGHT
    too_long = [line for line in lines if len(line) > width]
    assert not too_long, too_long
    assert "\x1b[" not in out  # not a terminal, so no colour
    assert "x in [0, 40], 41 points" in out


@pytest.mark.parametrize("width", [80, 120])
def test_coloured_terminal_chart_fits_too(result, width):
    data = plot.plot_data(result, "bce")
    out = plot.render_terminal(data, width, 20, color=True)
    assert "\x1b[" in out
    assert max(len(ANSI.sub("", line)) for line in out.splitlines()) <= width


def test_terminal_chart_survives_nan_and_inf():
    """naive BCE is nan past the overflow in float16: gaps, never a NaN handed to plotext."""
    res = sweep.run_sweep(Settings(dtypes=("float16",), formulas=("naive",), range=(-20.0, 20.0), points=41))
    for kind in ("roundtrip", "bce", "error"):
        data = plot.plot_data(res, kind)
        assert any(np.isnan(s.y).any() for s in data.series)
        assert plot.render_terminal(data, 80)


# ---------------------------------------------------------------- markdown for a PR comment


def _cells(line: str) -> list[str]:
    assert line.startswith("|") and line.endswith("|"), line
    return [c.strip() for c in re.split(r"(?<!\\)\|", line[1:-1])]


def md_tables(text: str) -> list[list[list[str]]]:
    """Every table of a markdown text, parsed strictly: header, separator, rows of as many cells."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            header, sep, *body = block
            n = len(_cells(header))
            assert re.fullmatch(r"\|(---\|)+", sep) and sep.count("---") == n, sep
            rows = [_cells(r) for r in body]
            assert all(len(r) == n for r in rows), block
            tables.append([_cells(header), *rows])
            block = []
    return tables


def test_sweep_markdown_parses_as_tables():
    r = run("sweep", *SMALL, "--format", "markdown")
    text = assert_ok(r)
    keypoints, worst = md_tables(text)
    assert keypoints[0][:2] == ["dtype", "key point"]
    names = {row[1] for row in keypoints[1:]}
    assert {"roundtrip_overflow", "bce_floor"} <= names
    overflow = next(row for row in keypoints[1:] if row[1] == "roundtrip_overflow")
    assert overflow[5] == "16.635532" and overflow[7] == "x 16.635532"  # predicted x, beside x
    assert worst[0][4] == "max ULP" and len(worst) > 1
    assert "eps 1e-7" in text and "keras3, logits-stable" in text


GATE = """
[[check]]
name = "round trip survives to 16.6 | float32"
dtype = "float32"
keypoint = "roundtrip_overflow"
min_x = 16.6

[[check]]
name = "round trip survives to 20"
dtype = "float32"
keypoint = "roundtrip_overflow"
min_x = 20.0
"""


def test_gate_markdown_parses_and_states_pass_and_fail(tmp_path):
    config, target = tmp_path / "gate.toml", tmp_path / "gate.md"
    config.write_text(GATE, encoding="utf-8")
    r = run("gate", str(config), "--markdown", str(target))
    assert r.exit_code == 1, (r.stdout, r.stderr)
    text = target.read_text(encoding="utf-8")
    assert text.startswith("## bce-audit gate: 1/2 passed")
    (table,) = md_tables(text)
    assert table[0] == ["result", "check", "measured vs limit", "worst input"]
    passed, failed = table[1:]
    assert passed[:2] == ["PASS", r"round trip survives to 16.6 \| float32"]  # the pipe is escaped
    assert failed[:2] == ["**FAIL**", "round trip survives to 20"]
    assert "<" in failed[2] and ">=" not in failed[2], failed  # the failure, not the passing form
    assert "1 of 2 checks failed: round trip survives to 20" in text


@pytest.mark.slow  # a huge grid
def test_issue_14_plot_of_a_huge_grid_keeps_a_bounded_sample(monkeypatch):
    """A curve draws plot.MAX_POINTS evenly spread grid points, never a Row per grid point."""
    seen = []
    original = sweep.run_sweep

    def spy(s, *a, **kw):
        seen.append(s.keep)
        return original(s, *a, **kw)

    monkeypatch.setattr(sweep, "run_sweep", spy)
    out = assert_ok(run("plot", "--points", "3000000", "--dtype", "float16", "--formula", "keras3",
                        "--label", "1", "--kind", "bce", "-q"))
    assert seen == [plot.MAX_POINTS] and "keras3" in out


# ---------------------------------------------------------------- pictures people can read (issue 12)

ALL = ("float8_e4m3fn", "float8_e5m2", "float16", "bfloat16", "float32", "float64", "longdouble")
FLOORS = ("keras2-logits", "keras3", "keras3-torch", "logits-stable")


@pytest.fixture(scope="module")
def floors() -> records.SweepResult:
    """float32 over -40..40: keras2-logits and keras3-torch floor at 1.096e-7, keras3 at 1.192e-7."""
    return sweep.run_sweep(Settings(dtypes=("float32",), formulas=FLOORS, range=(-40.0, 40.0), points=81))


@pytest.fixture(scope="module")
def grads() -> records.SweepResult:
    s = Settings(dtypes=("float32",), grad=True, range=(-40.0, 40.0), points=81, label="1")
    return sweep.run_sweep(s)


@pytest.fixture(scope="module")
def every_dtype() -> records.SweepResult:
    return sweep.run_sweep(Settings(dtypes=ALL, formulas=("keras3",), range=plot.ROUNDTRIP_RANGE, points=81))


def _drawn(fig) -> list[tuple[object, list]]:
    """Each axes of a laid-out figure with the window extents of its key-point labels."""
    renderer = fig.canvas.get_renderer()
    return [(ax, [t.get_window_extent(renderer) for t in ax.texts]) for ax in fig.axes]


def assert_apart(fig) -> int:
    """No two labels of one axes overlap, and each lies inside its axes; returns how many there are."""
    count = 0
    renderer = fig.canvas.get_renderer()
    for ax, boxes in _drawn(fig):
        frame = ax.get_window_extent(renderer)
        for i, a in enumerate(boxes):
            assert frame.x0 - 1 <= a.x0 and a.x1 <= frame.x1 + 1, (a, frame)
            assert frame.y0 - 1 <= a.y0 and a.y1 <= frame.y1 + 1, (a, frame)
            for b in boxes[i + 1:]:
                assert not a.overlaps(b), (ax.texts[i].get_text(), a, b)
        count += len(boxes)
    return count


def test_issue_12_roundtrip_plot_defaults_to_0_40(tmp_path):
    small = ("--dtype", "float32", "--points", "41", "--formula", "keras3")
    assert plot.default_range("roundtrip") == (0.0, 40.0) == plot.ROUNDTRIP_RANGE
    assert "x in [0, 40], 41 points" in assert_ok(run("plot", *small))
    assert "x in [-40, 40], 41 points" in assert_ok(run("plot", *small, "--kind", "bce"))  # the others
    assert "x in [-5, 5], 41 points" in assert_ok(run("plot", *small, "--range=-5:5"))
    config = tmp_path / "c.toml"
    config.write_text("range = [-10.0, 10.0]\n", encoding="utf-8")
    assert "x in [-10, 10], 41 points" in assert_ok(run("plot", *small, "--config", str(config)))
    assert "x in [-40, 40]" in assert_ok(run("sweep", *small, "--format", "markdown"))  # only plot changed


def test_issue_12_markers_at_one_x_share_one_label(grads):
    data = plot.plot_data(grads, "grad")
    vertical = [lb for lb in data.labels if lb.y is None]
    xs = {m.x for m in data.markers}
    assert len(data.markers) > 2 * len(xs)  # several key points share each x
    assert sorted(lb.x for lb in vertical) == sorted(xs)  # one label per x, no more
    for m in data.markers:
        (lb,) = [lb for lb in vertical if lb.x == m.x]
        assert m.who in lb.text, (m.who, lb.text)
        assert m.what in lb.text or m.name == "grad_vanishing", (m.what, lb.text)  # exactly 0 says it
        assert lb.text.count(plot.fmt_x(m.x)) == 1  # the x is written once
    assert all(lb.text.count(f"{m.who}:") <= 1 for lb in vertical for m in data.markers if m.who)


def test_issue_12_close_floors_are_labelled_apart_at_the_right_edge(floors):
    data = plot.plot_data(floors, "bce")
    levels = [lb for lb in data.labels if lb.y is not None]
    floor_labels = {lb.y: lb for lb in levels if lb.edge == "right"}
    values = {k.value for k in floors.keypoints if k.name == "bce_floor" and k.label == "pair"}
    assert len(values) >= 2 and max(values) / min(values) < 1.5  # keras2's 1.096e-7, keras3's 1.192e-7
    assert {plot.fmt(v, 4) for v in floor_labels} == {plot.fmt(v, 4) for v in values}
    one = next(lb for lb in levels if "1.096e-7" in lb.text)
    assert "keras2-logits" in one.text and "keras3-torch" in one.text  # one label for one written value
    assert all(lb.edge == "left" for lb in levels if lb.text.startswith("ceiling"))
    fig = plot.figure(data)
    assert assert_apart(fig) == len(data.labels)
    (ax,) = fig.axes
    renderer = fig.canvas.get_renderer()
    at = {t.get_text(): t.get_window_extent(renderer) for t in ax.texts}
    frame = ax.get_window_extent(renderer)
    ordered = sorted(floor_labels.values(), key=lambda lb: lb.y)
    for lb in ordered:
        assert abs(at[lb.text].x1 - frame.x1) < 10  # at the right edge
    lows = [at[lb.text].y0 for lb in ordered]
    assert lows == sorted(lows)  # stacked in the order of their values
    y_line = ax.transData.transform((0.0, ordered[0].y))[1]
    assert at[ordered[0].text].y0 >= y_line  # above the lowest floor, not over the curves on it


def test_issue_12_grad_labels_do_not_overlap(grads):
    data = plot.plot_data(grads, "grad")
    assert assert_apart(plot.figure(data)) == len(data.labels) <= plot.MAX_LABELS


def test_issue_12_every_dtype_is_legible(every_dtype):
    data = plot.plot_data(every_dtype, "roundtrip")
    trivial = [m for m in data.markers if plot.trivial(m)]
    assert {m.dtype for m in trivial} >= {"float8_e4m3fn", "float8_e5m2"}  # their error is large from x = 1
    assert all(lb.x != 1.0 for lb in data.labels)  # no line for them ...
    assert any("already at x = 1: float8_e4m3fn, float8_e5m2" in n for n in data.notes)  # ... a note
    assert len(data.labels) == len({m.x for m in data.markers if not plot.trivial(m)})
    fig = plot.figure(data)
    assert assert_apart(fig) == len(data.labels)  # numbered: more than MAX_LABELS
    assert len(data.labels) > plot.MAX_LABELS
    assert {t.get_text() for t in fig.axes[0].texts} == {str(k) for k in range(1, len(data.labels) + 1)}


def test_issue_12_facet_is_one_panel_per_dtype(every_dtype):
    data = plot.plot_data(every_dtype, "roundtrip")
    panels = plot.facets(data)
    assert [p.title for p in panels] == list(ALL)
    for p in panels:
        assert {sr.dtype for sr in p.series} == {p.title}
        assert all(m.dtype == p.title for m in p.markers)
        assert all(p.title not in lb.text for lb in p.labels)  # the panel's title says the dtype
    fig = plot.figure(data, *plot.default_size(data, facet=True), facet=True)
    assert len(fig.axes) == len(ALL)
    assert assert_apart(fig) == sum(len(p.labels) for p in panels)
    assert all(t.get_text() != "1" for ax in fig.axes for t in ax.texts)  # written out, not numbered
    w, h = plot.default_size(data, facet=True)
    four = dataclasses.replace(data, series=tuple(sr for sr in data.series if sr.dtype in ALL[:4]))
    assert w == plot.DEFAULT_SIZE[0] and h > plot.default_size(four, facet=True)[1]  # 4 rows, not 2
    renderer = fig.canvas.get_renderer()
    heights = [ax.get_window_extent(renderer).height for ax in fig.axes]
    assert min(heights) >= plot.PANEL_HEIGHT * 2 / 3, heights  # each panel keeps room to read


def test_issue_12_facet_from_the_command_line(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    png = tmp_path / "all.png"
    two = ("--dtype", "float16", "--dtype", "float32", "--points", "41", "--formula", "keras3",
           "--kind", "bce")
    assert_ok(run("plot", *two, "--facet", "-o", str(png)))
    with pil.open(png) as im:
        w, h = im.size
    assert w == plot.DEFAULT_SIZE[0] and h >= 2 * plot.PANEL_HEIGHT  # one panel above the other
    out = assert_ok(run("plot", *two, "--facet"))  # the terminal: one chart each
    assert out.count("x: a (the pair is (-a, 0) and (a, 1))") == 2


@pytest.mark.slow
def test_issue_12_pictures_for_the_eye(floors, grads, every_dtype, tmp_path):
    """The pictures the issue names, written where a person can look at them (BCE_AUDIT_PLOTS=dir)."""
    import os

    where = Path(os.environ.get("BCE_AUDIT_PLOTS", tmp_path))
    for name, res, kind, facet in [("roundtrip-float32", every_dtype, "roundtrip", False),
                                   ("bce-float32", floors, "bce", False),
                                   ("grad-float32", grads, "grad", False),
                                   ("roundtrip-all", every_dtype, "roundtrip", False),
                                   ("roundtrip-all-facet", every_dtype, "roundtrip", True)]:
        data = plot.plot_data(res, kind)
        if name == "roundtrip-float32":
            data = plot.facets(data)[ALL.index("float32")]
        size = plot.default_size(data, facet)
        plot.render_file(data, str(where / f"{name}.png"), *size, facet=facet)
        fig = plot.figure(data, *size, facet=facet)
        panels = plot.facets(data) if facet else [data]
        assert len(fig.axes) == len(panels)
        for ax, panel in zip(fig.axes, panels, strict=True):
            exact = [panel.exact.label] if panel.exact is not None else []
            want = exact + [sr.label for sr in panel.series] + [g.text for g in panel.guides]  # drawn so
            assert _curves(ax) == want and tuple(ax.get_xlim()) == tuple(panel.xlim)
            assert ax.get_yscale() == panel.yscale
        assert assert_apart(fig) == sum(len(p.labels) for p in panels)
        pil = pytest.importorskip("PIL.Image")
        with pil.open(where / f"{name}.png") as im:
            assert im.size == size
