"""The command line: parse, call one core function, render, return an exit code.

Exit codes: 0 success, 1 a check failed, 2 bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Callable

import click

from bce_audit import __version__, dtypes, formulas, keypoints, report, sweep
from bce_audit.sweep import MAX_POINTS, Settings

FORMATS = ("table", "json", "csv", "markdown")


class _Group(click.Group):
    """A group whose usage errors are one line on stderr with exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name or "bce-audit", complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            click.echo(f"bce-audit: error: {_one_line(e.format_message())}", err=True)
            code = 2 if isinstance(e, (click.UsageError, click.BadParameter)) else e.exit_code
            if not standalone_mode:
                return code
            sys.exit(code)
        except click.exceptions.Abort:
            click.echo("bce-audit: aborted", err=True)
            sys.exit(130)
        if not standalone_mode:
            return rv
        sys.exit(rv or 0)


def _one_line(msg: str) -> str:
    return " ".join(msg.split())


def _fail(msg: str) -> None:
    raise click.UsageError(msg)


# ---------------------------------------------------------------- options


def _choice_list(values: tuple[str, ...], all_names: tuple[str, ...]) -> tuple[str, ...]:
    if not values:
        return ()
    if "all" in values:
        return all_names
    return tuple(dict.fromkeys(values))


def _selection(f: Callable) -> Callable:
    opts = [
        click.option("--dtype", "dtype", multiple=True, metavar="NAME",
                     type=click.Choice((*dtypes.NAMES, "all")),
                     help=f"Dtype to audit (repeatable, or 'all'): {', '.join(dtypes.NAMES)}."),
        click.option("--eps", "eps", multiple=True, type=float, metavar="EPS",
                     help="Clip epsilon, in [0, 0.5) (repeatable; default 1e-7). "
                          "Formulas that do not clip ignore it."),
        click.option("--formula", "formula", multiple=True, metavar="NAME",
                     type=click.Choice((*formulas.NAMES, "all")),
                     help=f"BCE formula (repeatable; default all): {', '.join(formulas.NAMES)}."),
        click.option("--mode", type=click.Choice(formulas.MODES), default="per-op", show_default=True,
                     help="per-op: every op rounds to the dtype; upcast: framework ops on dtypes "
                          "narrower than float32 run in float32 and round once (PyTorch opmath)."),
        click.option("--label", type=click.Choice(sweep.LABELS), default="both", show_default=True,
                     help="Label to audit; 'both' adds the seed article's two-point pair."),
        click.option("--threshold", "threshold", multiple=True, type=float, metavar="REL",
                     help="Relative error for the round-trip onset points, in (0, 1) "
                          "(repeatable; default 1e-3 and 1e-2)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _grid(f: Callable) -> Callable:
    opts = [
        click.option("--range", "range_", metavar="LO:HI", default=None,
                     help="Logit range of the grid (default -40:40)."),
        click.option("--points", type=int, default=None, metavar="N",
                     help=f"Grid points, 2 to {MAX_POINTS:,} (default {sweep.DEFAULT_POINTS})."),
        click.option("--step", type=float, default=None, metavar="S",
                     help="Grid step instead of --points (linear spacing)."),
        click.option("--spacing", type=click.Choice(sweep.SPACINGS), default="lin", show_default=True,
                     help="lin, or log (geometric on each side of zero)."),
        click.option("--rows", "show", type=click.IntRange(2, 1000), default=11, show_default=True,
                     help="Rows of the grid shown in the table view."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _output(formats: tuple[str, ...]) -> Callable:
    def deco(f: Callable) -> Callable:
        f = click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
                         metavar="FILE", help="Write to FILE (atomically) instead of stdout.")(f)
        return click.option("--format", "fmt", type=click.Choice(formats), default="table",
                            show_default=True, help="Output format.")(f)
    return deco


def _parse_range(text: str) -> tuple[float, float]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        _fail(f"--range {text!r} is malformed; write LO:HI, e.g. -40:40")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        _fail(f"--range {text!r} is malformed; LO and HI must be numbers, e.g. -40:40")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        _fail(f"--range {text!r}: bounds must be finite numbers")
    if lo >= hi:
        _fail(f"--range {text!r}: LO must be less than HI")
    if not math.isfinite(hi - lo):
        _fail(f"--range {text!r} is too wide: HI - LO overflows a float64")
    return lo, hi


def _settings(kw: dict, default_dtypes: tuple[str, ...] = ("float32",)) -> Settings:
    """Validate the options once into a frozen Settings."""
    eps = tuple(dict.fromkeys(kw["eps"])) or sweep.DEFAULT_EPS
    for e in eps:
        if not (math.isfinite(e) and 0 <= e < 0.5):
            _fail(f"--eps {e!r} is out of range; it must be in [0, 0.5)")
    thresholds = tuple(dict.fromkeys(kw["threshold"])) or sweep.DEFAULT_THRESHOLDS
    for t in thresholds:
        if not (math.isfinite(t) and 0 < t < 1):
            _fail(f"--threshold {t!r} is out of range; it must be in (0, 1)")
    grid = {}
    if "range_" in kw:
        rng = _parse_range(kw["range_"]) if kw["range_"] is not None else sweep.DEFAULT_RANGE
        points, step = kw["points"], kw["step"]
        if points is not None and step is not None:
            _fail("use --points or --step, not both")
        if step is not None:
            if not (math.isfinite(step) and step > 0):
                _fail(f"--step {step!r} must be a positive number")
            if kw["spacing"] == "log":
                _fail("--step needs --spacing lin; use --points with --spacing log")
            ratio = (rng[1] - rng[0]) / step
            if not math.isfinite(ratio):
                _fail(f"--step {step!r} gives more than {MAX_POINTS:,} points over the range")
            n = math.floor(ratio + 1e-9) + 1
            if n > MAX_POINTS:
                _fail(f"--step {step!r} gives {n:,} points; the most is {MAX_POINTS:,}")
            if n < 2:
                _fail(f"--step {step!r} leaves fewer than 2 points in the range")
        points = sweep.DEFAULT_POINTS if points is None else points
        if not 2 <= points <= MAX_POINTS:
            _fail(f"--points {points} is out of range; it must be 2 to {MAX_POINTS:,}")
        grid = {"range": rng, "points": points, "step": step, "spacing": kw["spacing"]}
    return Settings(
        dtypes=_choice_list(kw["dtype"], dtypes.NAMES) or default_dtypes,
        eps=eps,
        formulas=_choice_list(kw["formula"], formulas.NAMES) or formulas.NAMES,
        label=kw["label"], mode=kw["mode"], thresholds=thresholds, **grid,
    )


# ---------------------------------------------------------------- output


def _emit(kw: dict, render: Callable[[str], object]) -> None:
    """Render in the chosen format to stdout or, atomically, to --output."""
    fmt, path = kw["fmt"], kw["output"]
    out = render(fmt)
    if path is None:
        if isinstance(out, str):
            click.echo(out, nl=False)
        else:
            report.print_view(out)
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bce-audit-", dir=directory)
    except OSError as e:
        _fail(f"cannot write --output {path!r}: {e.strerror or e}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if isinstance(out, str):
                f.write(out)
            else:
                report.print_view(out, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# ---------------------------------------------------------------- commands


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bce-audit")
def cli() -> None:
    """Precision audit of sigmoid, logit and binary cross-entropy against an mpmath baseline.

    \b
    Examples:
      bce-audit sweep --dtype float32
      bce-audit sweep --dtype float16 --dtype bfloat16 --eps 1e-7 --eps 1e-4 --mode upcast
      bce-audit points --dtype float32 --format json
      bce-audit check 16.5 17 -50
      bce-audit dtypes
    """


@cli.command("sweep")
@_selection
@_grid
@_output(FORMATS)
def sweep_cmd(**kw) -> int:
    """Sweep a logit grid: key points, sampled values and errors, worst errors."""
    s = _settings(kw)
    result = sweep.run_sweep(s)

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(s.as_dict(), result.keypoints, result.rows, result.worst))
        if fmt == "csv":
            return report.to_csv(result.rows, sweep.Row)
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result, kw["show"])

    _emit(kw, render)
    return 0


@cli.command()
@_selection
@_output(FORMATS)
def points(**kw) -> int:
    """Key points only: overflow, floors, ceilings, zeros and onsets, found on the dtype grid."""
    s = _settings(kw)
    result = sweep.run_sweep(s, with_rows=False)

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(s.as_dict(), result.keypoints))
        if fmt == "csv":
            return report.to_csv(result.keypoints, keypoints.KeyPoint)
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result)

    _emit(kw, render)
    return 0


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("logits", nargs=-1, required=True, metavar="X [X ...]")
@_selection
@_output(FORMATS)
def check(logits: tuple[str, ...], **kw) -> int:
    """Check single logits: every dtype's sigmoid, round trip and BCE beside the exact values."""
    xs = []
    for text in logits:
        try:
            x = float(text)
        except ValueError:
            _fail(f"{text!r} is not a logit: give finite numbers, e.g. check 16.5 17 -50")
        if not math.isfinite(x):
            _fail(f"{text!r} is not a finite logit")
        xs.append(x)
    s = _settings(kw, default_dtypes=dtypes.NAMES)
    rows, exact = sweep.check_rows(xs, s)

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(s.as_dict() | {"logits": xs}, [], rows))
        if fmt == "csv":
            return report.to_csv(rows, sweep.Row)
        if fmt == "markdown":
            return report.check_markdown(rows, exact)
        return report.check_view(rows, exact)

    _emit(kw, render)
    return 0


@cli.command("dtypes")
@click.option("--mode", type=click.Choice(formulas.MODES), default="per-op", show_default=True,
              help="Evaluation mode for the predicted overflow point.")
@_output(("table", "json"))
def dtypes_cmd(mode: str, **kw) -> int:
    """The audited dtypes: bits, significand, eps, tiny, max and predicted round-trip overflow."""
    infos = list(dtypes.DTYPES.values())
    overflow = {i.name: keypoints.predicted_overflow(i, mode) for i in infos}

    def render(fmt: str):
        if fmt == "json":
            return report.to_json({"schema": report.SCHEMA, "version": __version__, "mode": mode,
                                   "dtypes": report.dtypes_records(infos, overflow)})
        return report.dtypes_table(infos, overflow)

    _emit(kw, render)
    return 0


def main() -> None:
    """Console-script entry point."""
    cli.main()
