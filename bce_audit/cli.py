"""The command line: parse, call one core function, render, return an exit code.

Exit codes: 0 success, 1 a check failed, 2 bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace

import click
from click.core import ParameterSource

from bce_audit import (
    __version__,
    backends,
    baseline,
    cache,
    config,
    dtypes,
    files,
    formulas,
    gate,
    heap,
    impl,
    keypoints,
    report,
    sweep,
)
from bce_audit.config import FORMATS
from bce_audit.sweep import MAX_POINTS, Settings


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


def _selection(f: Callable) -> Callable:
    opts = [
        click.option("--config", "config", type=str, default=None, metavar="FILE",
                     help="Read options from a TOML file (see configs/); flags given here override it."),
        click.option("--dtype", "dtype", multiple=True, metavar="NAME",
                     type=click.Choice((*dtypes.NAMES, "all")),
                     help=f"Dtype to audit (repeatable, or 'all'): {', '.join(dtypes.NAMES)}."),
        click.option("--eps", "eps", multiple=True, type=float, metavar="EPS",
                     help="Clip epsilon, in [0, 0.5) (repeatable; default 1e-7). "
                          "Formulas that do not clip ignore it."),
        click.option("--formula", "formula", multiple=True, metavar="NAME",
                     help=f"BCE formula (repeatable; default all): {', '.join(formulas.NAMES)}, "
                          "or your own as impl:package.module:function."),
        click.option("--impl-kind", "impl_kind", type=click.Choice(impl.KINDS), default="bce-logits",
                     show_default=True, help="What an impl: formula computes: f(x, y), f(p, y), "
                                             "sigmoid f(x) or logit f(p)."),
        click.option("--mode", type=click.Choice(formulas.MODES), default="per-op", show_default=True,
                     help="per-op: every op rounds to the dtype; upcast: framework ops on dtypes "
                          "narrower than float32 run in float32 and round once (PyTorch opmath)."),
        click.option("--label", type=click.Choice(sweep.LABELS), default="both", show_default=True,
                     help="Label to audit; 'both' adds the seed article's two-point pair."),
        click.option("--threshold", "threshold", multiple=True, type=float, metavar="REL",
                     help="Relative error for the round-trip onset points, in (0, 1) "
                          "(repeatable; default 1e-3 and 1e-2)."),
        click.option("--backend", type=click.Choice(("numpy", "torch", "jax")), default="numpy",
                     show_default=True, help="numpy: the formula models; torch / jax: the installed "
                                             "framework's real ops, audited the same way."),
        click.option("--device", type=click.Choice(("cpu", "cuda")), default="cpu", show_default=True,
                     help="Device for --backend torch."),
        click.option("--grad", is_flag=True, default=False,
                     help="Also audit the gradient d BCE / dx (exact: sigmoid(x) - y)."),
        click.option("--no-cache", "no_cache", is_flag=True, default=False,
                     help="Neither read nor write the result cache ($XDG_CACHE_HOME/bce-audit)."),
        click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar."),
        click.option("--reference", type=click.Choice(("fast", "mpmath")), default="fast",
                     show_default=True, help="fast: vectorised float64 baseline, proved within 2**-49 "
                                             "(dtypes of 32 bits or fewer); mpmath: 128-bit mpmath "
                                             "at every point."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


_JOBS = click.option("--jobs", "-j", type=int, default=None, metavar="N",
                     help="Processes for the grid's chunks and for the key points of several "
                          "dtypes (default: the machine's cores); the result is the same for any N.")


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
        click.option("--exhaustive", is_flag=True, default=False,
                     help="The grid is every value of each dtype in --range (every finite value "
                          "without --range): all of float16, or float32 a chunk of its bits at a time."),
        _JOBS,
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run the chunks on an existing Dask cluster (tcp://host:8786)."),
        click.option("--rows", "show", type=int, default=11, show_default=True, metavar="N",
                     help="Grid rows kept and shown (2 to 1000; evenly spread). JSON and CSV keep "
                          "every row unless --rows is given."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _output(formats: tuple[str, ...]) -> Callable:
    def deco(f: Callable) -> Callable:
        f = click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                         metavar="FILE", help="Write to FILE (atomically) instead of stdout.")(f)
        return click.option("--format", "fmt", type=click.Choice(formats), default="table",
                            show_default=True, help="Output format.")(f)
    return deco


# option parameter -> (config key, flag as the user typed it)
PARAMS = {
    "dtype": ("dtypes", "--dtype"), "eps": ("eps", "--eps"), "formula": ("formulas", "--formula"),
    "impl_kind": ("kind", "--impl-kind"), "mode": ("mode", "--mode"), "label": ("label", "--label"),
    "threshold": ("thresholds", "--threshold"), "range_": ("range", "--range"),
    "points": ("points", "--points"), "step": ("step", "--step"), "spacing": ("spacing", "--spacing"),
    "show": ("rows", "--rows"), "fmt": ("format", "--format"), "backend": ("backend", "--backend"),
    "device": ("device", "--device"), "grad": ("grad", "--grad"),
    "reference": ("reference", "--reference"), "exhaustive": ("exhaustive", "--exhaustive"),
}
FLAGS = {key: flag for key, flag in PARAMS.values()}


def _merge(kw: dict) -> tuple[dict, Callable[[str], str]]:
    """Config file values, overridden by the flags actually given on the command line."""
    ctx = click.get_current_context()
    values: dict = {}
    origin: dict[str, str] = {}
    if kw.get("config"):
        cf = config.load(kw["config"])
        values.update(cf.options)
        origin.update({k: cf.origin(k) for k in cf.options})
    for param, (key, flag) in PARAMS.items():
        if param not in kw or ctx.get_parameter_source(param) != ParameterSource.COMMANDLINE:
            continue
        if kw[param] == ():
            continue
        values[key], origin[key] = kw[param], flag
        rival = {"points": "step", "step": "points"}.get(key)
        if rival and origin.get(rival, "").startswith(kw.get("config") or "\0"):
            values.pop(rival)  # a grid flag replaces the file's other way of giving the grid
    return values, lambda k: origin.get(k, FLAGS.get(k, k))


def _settings(kw: dict, default_dtypes: tuple[str, ...] = ("float32",), with_grid: bool = True
              ) -> tuple[Settings, dict]:
    """Validate options (and --config) once into Settings plus the output choices."""
    try:
        values, origin = _merge(kw)
        s = config.build_settings(values, origin, default_dtypes, with_grid)
        fmt = values.get("format", "table")
        if fmt not in FORMATS:
            raise config.ConfigError(f"{origin('format')}: unknown format {fmt!r}; choose from "
                                     f"{', '.join(FORMATS)}")
        rows = config.check_rows_option(values.get("rows", 11), origin("rows"))
    except config.ConfigError as e:
        _fail(str(e))
    # the table shows a sample; JSON and CSV carry every row unless --rows is given
    keep = rows if fmt in ("table", "markdown") or ("rows" in values and origin("rows") == "--rows") else None
    if keep is None and with_grid and max(sweep.grid_size(s, d) for d in s.dtypes) > MAX_KEPT:
        _fail(f"--format {fmt} keeps every grid row, and this grid has more than {MAX_KEPT:,}: "
              "give --rows N to keep N evenly spread rows (the worst errors cover every point)")
    jobs = kw.get("jobs")
    if jobs is not None and jobs < 1:
        _fail(f"--jobs {jobs} must be at least 1")
    _use_cache(kw)
    return replace(s, keep=keep), {"fmt": fmt, "show": rows, "output": kw.get("output"),
                                   "jobs": jobs or os.cpu_count() or 1, "scheduler": kw.get("scheduler"),
                                   "quiet": kw.get("quiet", False)}


MAX_KEPT = 1_000_000  # grid rows a JSON or CSV document may carry


def _use_cache(kw: dict) -> None:
    cache.use(None if kw.get("no_cache") else cache.Cache(cache.default_dir()))


def _cache_warnings() -> None:
    store = cache.active()
    for w in store.warnings if store else ():
        click.echo(f"bce-audit: warning: {w}", err=True)


# ---------------------------------------------------------------- output


PROGRESS_POINTS = 200_000  # grid points from which a run takes long enough for a progress bar


def _run(job: Callable):
    """Run a core computation; a user implementation's failure, a missing framework or an
    unreachable scheduler becomes a one-line error."""
    from bce_audit import distributed

    try:
        return job()
    except (impl.ImplError, backends.BackendMissing, distributed.DaskMissing) as e:
        _fail(str(e))


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
    try:
        with files.atomic_open(path) as f:
            if isinstance(out, str):
                f.write(out)
            else:
                report.print_view(out, f)
    except files.WriteError as e:
        _fail(f"--output: {e}")


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
    s, out = _settings(kw)
    total = sum(sweep.grid_size(s, d) for d in s.dtypes)
    with report.progress_bar(total, enabled=not out["quiet"] and total >= PROGRESS_POINTS) as advance:
        result = _run(lambda: sweep.run_sweep(s, progress=advance, jobs=out["jobs"],
                                              scheduler=out["scheduler"]))
    _cache_warnings()

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(result.settings.as_dict(), result.keypoints, result.rows,
                                                  result.worst, result.notes))
        if fmt == "csv":
            return report.to_csv(result.rows, sweep.Row)
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result, out["show"], report.width_for(out["output"]))

    _emit(out, render)
    return 0


@cli.command()
@_selection
@_JOBS
@_output(FORMATS)
def points(**kw) -> int:
    """Key points only: overflow, floors, ceilings, zeros and onsets, found on the dtype grid."""
    s, out = _settings(kw, with_grid=False)
    result = _run(lambda: sweep.run_sweep(s, with_rows=False, jobs=out["jobs"]))
    _cache_warnings()

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(result.settings.as_dict(), result.keypoints,
                                                  notes=result.notes))
        if fmt == "csv":
            return report.to_csv(result.keypoints, keypoints.KeyPoint)
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result)

    _emit(out, render)
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
    s, out = _settings(kw, default_dtypes=dtypes.NAMES, with_grid=False)
    rows, exact = _run(lambda: sweep.check_rows(xs, s))

    def render(fmt: str):
        if fmt == "json":
            return report.to_json(report.document(sweep.native(s).as_dict() | {"logits": xs}, [], rows))
        if fmt == "csv":
            return report.to_csv(rows, sweep.Row)
        if fmt == "markdown":
            return report.check_markdown(rows, exact)
        return report.check_view(rows, exact, report.width_for(out["output"]))

    _emit(out, render)
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


@cli.command("fidelity")
@click.option("--backend", type=click.Choice(("torch", "jax")), default="torch", show_default=True,
              help="The real framework to compare the numpy models with.")
@click.option("--device", type=click.Choice(("cpu", "cuda")), default="cpu", show_default=True,
              help="Device for --backend torch.")
@click.option("--dtype", "dtype", multiple=True, type=click.Choice(("float16", "bfloat16", "float32",
                                                                    "float64")),
              help="Dtypes to compare (repeatable; default float16, bfloat16, float32).")
@click.option("--no-keypoints", is_flag=True, help="Skip the key-point comparison (faster).")
@_output(("table", "json"))
def fidelity_cmd(backend, device, dtype, no_keypoints, **kw) -> int:
    """Compare each numpy model with the real framework op, value by value, and their key points."""
    from bce_audit import fidelity

    be = _run(lambda: backends.get(backend, device))
    chosen = tuple(dict.fromkeys(dtype)) or fidelity.DEFAULT_DTYPES
    diffs = _run(lambda: fidelity.differences(be, chosen))
    pairs = [] if no_keypoints else _run(lambda: fidelity.keypoint_pairs(be, chosen))
    out = {"fmt": kw["fmt"], "output": kw["output"]}

    def render(fmt: str):
        if fmt == "json":
            return report.fidelity_json(diffs, pairs, be.label)
        return report.fidelity_view(diffs, pairs, be.label)

    _emit(out, render)
    return 0


@cli.command("gate")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@click.option("--baseline", "baseline_path", default=None, metavar="FILE",
              help="Also fail any check whose figures got worse than this baseline.")
@click.option("--tolerance", type=float, default=None, metavar="REL",
              help="How much worse than the baseline a figure may get, relative "
                   f"(default: the baseline's own, {baseline.DEFAULT_TOLERANCE:g}).")
@click.option("--junit", "junit_path", default=None, metavar="FILE", help="Write JUnit XML for CI.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the results as JSON.")
@click.option("--markdown", "markdown_path", default=None, metavar="FILE",
              help="Write a markdown summary (for a PR comment).")
def gate_cmd(configs, baseline_path, tolerance, junit_path, json_path, markdown_path) -> int:
    """Run the [[check]] tables of gate configs: exit 0 if all pass, 1 if any fails, 2 on bad input.

    Every check runs and every failure is reported. With GITHUB_ACTIONS=true each failure is
    also printed as an ::error annotation.
    """
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        _fail(f"--tolerance {tolerance!r} must be a number >= 0")
    try:
        checks = gate.load_checks(configs)
        base = baseline.load(baseline_path, checks) if baseline_path else None
        for path, flag in ((junit_path, "--junit"), (json_path, "--json"), (markdown_path, "--markdown")):
            if path:
                _writable(path, flag)
    except config.ConfigError as e:
        _fail(str(e))
    results = _run(lambda: gate.run(checks))
    if base is not None:
        tol = tolerance if tolerance is not None else float(base.get("tolerance", baseline.DEFAULT_TOLERANCE))

        results = [replace(r, regressions=baseline.regressions(c, r, base["checks"].get(r.name), tol))
                   for c, r in zip(checks, results, strict=True)]
    report.print_view(report.gate_view(results))
    for path, text in ((junit_path, report.junit_xml(results)),
                       (json_path, report.gate_json(results, configs, baseline_path)),
                       (markdown_path, report.gate_markdown(results))):
        if path:
            _write(path, text)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        click.echo(report.github_annotations(results), nl=False)
    return 0 if all(r.ok for r in results) else 1


@cli.group("baseline", cls=click.Group)
def baseline_group() -> None:
    """Record the gate's measured figures, to fail later runs that get worse."""


@baseline_group.command("save")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@click.option("--output", "-o", "output", required=True, metavar="FILE", help="Baseline file to write.")
@click.option("--tolerance", type=float, default=baseline.DEFAULT_TOLERANCE, show_default=True,
              metavar="REL", help="Relative worsening allowed by later gates (stored in the file).")
def baseline_save(configs, output, tolerance) -> int:
    """Run the checks of gate configs and save every measured figure to FILE (atomically)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        _fail(f"--tolerance {tolerance!r} must be a number >= 0")
    try:
        checks = gate.load_checks(configs)
    except config.ConfigError as e:
        _fail(str(e))
    results = _run(lambda: gate.run(checks))
    try:
        baseline.save(output, checks, results, configs, tolerance)
    except config.ConfigError as e:
        _fail(str(e))
    click.echo(f"saved {len(results)} checks to {output}")
    return 0


@cli.group("cache", cls=click.Group)
def cache_group() -> None:
    """The result cache: where it is, how big, and clearing it."""


@cache_group.command("info")
def cache_info() -> int:
    """Where the cache is, and how many entries and bytes it holds."""
    info = cache.Cache(cache.default_dir()).info()
    click.echo(f"{info['path']}: {info['entries']} entries, {info['bytes']:,} bytes")
    return 0


@cache_group.command("clear")
def cache_clear() -> int:
    """Delete every cache entry (only bce-audit's own files)."""
    store = cache.Cache(cache.default_dir())
    try:
        n = store.clear()
    except OSError as e:
        _fail(f"cannot clear {store.root}: {e.strerror or e}")
    click.echo(f"removed {n} entries from {store.root}")
    return 0


def _writable(path: str, flag: str) -> None:
    """Fail before the work, not after it, when an output file cannot be written."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise config.ConfigError(f"{flag} {path!r}: no such directory {directory!r}")
    if os.path.isdir(path):
        raise config.ConfigError(f"{flag} {path!r} is a directory")


def _write(path: str, text: str) -> None:
    try:
        baseline.write_atomic(path, text)
    except config.ConfigError as e:
        _fail(str(e))


def main() -> None:
    """Console-script entry point."""
    heap.tune()
    cli.main()
from bce_audit import cli_plot  # noqa: E402, F401  registers the plot command
