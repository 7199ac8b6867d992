"""The command line: parse, call one core function, render, return an exit code.

Exit codes: 0 success, 1 a check failed or errored, 2 bad input (one line on stderr, never a traceback).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace

import click
from click.core import ParameterSource

from bce_audit import (
    __version__,
    backends,
    cache,
    compiled,
    config,
    dtypes,
    files,
    formulas,
    heap,
    impl,
    keypoints,
    records,
    report,
    sweep,
)
from bce_audit.config import FORMATS
from bce_audit.records import MAX_POINTS, Settings

DOCUMENT_FORMATS = ("table", "json", "csv", "markdown")  # points and check: one document each


class _MissingCommand(click.UsageError):
    """A group given no command (`bce-audit cache`): its help goes to stderr, and exit 2."""


class _Group(click.Group):
    """A group whose usage errors are one line on stderr with exit code 2; bare, it prints its help
    (the root group to stdout with exit 0; a subgroup to stderr with exit 2, as click 8.2 does)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:
            if ctx.parent is None:
                click.echo(ctx.get_help(), color=ctx.color)
                ctx.exit(0)
            raise _MissingCommand(f"{ctx.command_path} needs a command: "
                                  f"{', '.join(self.list_commands(ctx))}", ctx)
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name or "bce-audit", complete_var, standalone_mode=False, **extra)
        except _MissingCommand as e:
            if e.ctx is not None:
                click.echo(e.ctx.get_help(), err=True, color=e.ctx.color)
            click.echo(f"bce-audit: error: {_one_line(e.format_message())}", err=True)
            if not standalone_mode:
                return 2
            sys.exit(2)
        except click.ClickException as e:
            click.echo(f"bce-audit: error: {_one_line(e.format_message())}", err=True)
            code = 2 if isinstance(e, (click.UsageError, click.BadParameter)) else e.exit_code
            if not standalone_mode:
                return code
            sys.exit(code)
        except click.exceptions.Abort:
            click.echo("bce-audit: aborted", err=True)
            sys.exit(130)
        except OSError as e:  # disk full, permission, a directory: one line, never a traceback
            where = f"{e.filename!r}: " if e.filename else ""
            click.echo(f"bce-audit: error: {where}{e.strerror or e}", err=True)
            if not standalone_mode:
                return 2
            sys.exit(2)
        if not standalone_mode:
            return rv
        sys.exit(rv or 0)


    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `bce-audit ... | head`: the reader left, and nothing is wrong
            _quiet_stdout()
            raise click.exceptions.Exit(0) from None


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's own flush at exit cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _one_line(msg: str) -> str:
    """One line, whatever a config or user code put in it (newlines, ESC sequences)."""
    return report.printable(" ".join(msg.split()))


def _fail(msg: str) -> None:
    raise click.UsageError(msg)


class _Choice(click.Choice):
    """The choice type of every option: any case, optional aliases (the dtype spellings), and a
    one-line error that names the option and suggests the nearest choice."""

    def __init__(self, choices, aliases: dict[str, str] | None = None) -> None:
        super().__init__(tuple(choices))
        self.aliases = {a: n for a, n in (aliases or {}).items() if n in self.choices}

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        text = str(value)
        key = text.strip().lower()
        for choice in self.choices:
            if str(choice).lower() == key:
                return choice
        if key in self.aliases:
            return self.aliases[key]
        flag = max(param.opts, key=len) if param is not None and param.opts else "value"
        raise click.UsageError(config.not_one_of(flag, text, self.choices, (*self.choices, *self.aliases)),
                               ctx)


COLORS = {"auto": None, "always": True, "never": False}


def _color() -> bool | None:
    """The group's --color: True, False, or None (auto: a terminal without NO_COLOR)."""
    ctx = click.get_current_context(silent=True)
    return COLORS[ctx.find_root().params.get("color") or "auto"] if ctx else None


# ---------------------------------------------------------------- options


_IMPL_TIMEOUT = click.option(
    "--impl-timeout", "timeout", type=float, default=None, metavar="SECONDS",
    help=f"Stop an impl: function (or its import) that runs longer than this (default {impl.TIMEOUT:g}; "
         "0: no limit): it is reported as an error, not waited for.")


_PYTHONPATH = click.option(
    "--pythonpath", "pythonpath", multiple=True, metavar="DIR",
    help="Look for impl: modules in DIR first (repeatable); then a config's pythonpath and its own "
         "directory, then the current directory.")


def _impl_timeout(value: float | None, where: str = "--impl-timeout") -> None:
    if value is not None:
        impl.TIMEOUT = config.check_timeout(value, where)


def _selection(f: Callable) -> Callable:
    opts = [
        click.option("--config", "config", type=str, default=None, metavar="FILE",
                     help="Read options from a TOML file (see configs/); flags given here override it."),
        click.option("--dtype", "dtypes", multiple=True, metavar="NAME",
                     type=_Choice((*dtypes.NAMES, "all"), dtypes.ALIASES),
                     help=f"Dtype to audit (repeatable, or 'all'): {', '.join(dtypes.NAMES)}. "
                          f"Aliases, in any case: {dtypes.aliases_help()}."),
        click.option("--eps", "eps", multiple=True, type=float, metavar="EPS",
                     help="Clip epsilon, in [0, 0.5) (repeatable; default 1e-7). "
                          "Formulas that do not clip ignore it."),
        click.option("--formula", "formulas", multiple=True, metavar="NAME",
                     help=f"BCE formula (repeatable; default all): {', '.join(formulas.NAMES)}, "
                          "or your own as impl:package.module:function."),
        click.option("--impl-kind", "kind", type=_Choice(impl.KINDS), default="bce-logits",
                     show_default=True, help="What an impl: formula computes: f(x, y), f(p, y), "
                                             "sigmoid f(x) or logit f(p)."),
        _IMPL_TIMEOUT,
        _PYTHONPATH,
        click.option("--mode", type=_Choice(formulas.MODES), default="native", show_default=True,
                     help="native: each formula as its framework computes it on CPU (the Keras and "
                          "TensorFlow formulas tf, torch's upcast, optax xla, the rest per-op); "
                          "per-op: every op rounds to the dtype (numpy); upcast: framework ops on "
                          "dtypes narrower than float32 run in float32 and round once (PyTorch "
                          "opmath); tf: TensorFlow's CPU kernels (Eigen's sigmoid, subnormals "
                          "flushed to zero); xla: JAX on CPU (subnormals flushed to zero)."),
        click.option("--label", type=_Choice(records.LABELS), default="both", show_default=True,
                     help="Label to audit; 'both' adds the seed article's two-point pair."),
        click.option("--threshold", "thresholds", multiple=True, type=float, metavar="REL",
                     help="Relative error for the round-trip onset points, in (0, 1) "
                          "(repeatable; default 1e-3 and 1e-2)."),
        click.option("--backend", type=_Choice(backends.NAMES), default="numpy",
                     show_default=True, help="numpy: the formula models; any other: the installed "
                                             "framework's real ops, audited the same way."),
        click.option("--keras-backend", "keras_backend", type=_Choice(records.KERAS_BACKENDS),
                     default=records.KERAS_BACKENDS[0], show_default=True,
                     help="For --backend keras: the backend Keras 3 runs on (each in a worker process)."),
        click.option("--device", type=_Choice(("cpu", "cuda")), default="cpu", show_default=True,
                     help="Device for --backend torch."),
        click.option("--grad", is_flag=True, default=False,
                     help="Also audit the gradient d BCE / dx (exact: sigmoid(x) - y)."),
        click.option("--no-cache", "no_cache", is_flag=True, default=False,
                     help="Neither read nor write the result cache ($XDG_CACHE_HOME/bce-audit)."),
        click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar."),
        click.option("--reference", type=_Choice(("fast", "mpmath")), default="fast",
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
        click.option("--range", "range", metavar="LO:HI", default=None,
                     help="Logit range of the grid (default -40:40)."),
        click.option("--points", type=int, default=None, metavar="N",
                     help=f"Grid points, 2 to {MAX_POINTS:,} (default {records.DEFAULT_POINTS})."),
        click.option("--step", type=float, default=None, metavar="S",
                     help="Grid step instead of --points (linear spacing)."),
        click.option("--spacing", type=_Choice(records.SPACINGS), default="lin", show_default=True,
                     help="lin, or log (geometric on each side of zero)."),
        click.option("--exhaustive", is_flag=True, default=False,
                     help="The grid is every value of each dtype in --range (every finite value "
                          "without --range): all of float16, or float32 a chunk of its bits at a time."),
        _JOBS,
        click.option("--scheduler", default=None, metavar="ADDRESS",
                     help="Run the chunks on an existing Dask cluster (tcp://host:8786)."),
        click.option("--rows", "rows", default=None, metavar="N|all",
                     help="Grid points whose rows are kept and shown, evenly spread: 2 to 1000 "
                          "(default 11), or all. jsonl, csv and parquet stream every row by default."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _detail(f: Callable) -> Callable:
    return click.option("--detail", "-v", is_flag=True, default=False,
                        help="After the verdict, every table: each key point (and for sweep the "
                             "sampled grid and the worst errors).")(f)


def _output(formats: tuple[str, ...]) -> Callable:
    def deco(f: Callable) -> Callable:
        f = click.option("--output", "-o", type=click.Path(dir_okay=False), default=None,
                         metavar="FILE", help="Write to FILE (atomically) instead of stdout.")(f)
        return click.option("--format", "format", type=_Choice(formats), default=None,
                            help="Output format (default: from the -o extension, else table).")(f)
    return deco


def _merge(kw: dict) -> tuple[dict, Callable[[str], str]]:
    """Config file values, overridden by the flags actually given on the command line."""
    ctx = click.get_current_context()
    values: dict = {}
    origin: dict[str, str] = {}
    if kw.get("config") is not None:
        if not kw["config"]:
            raise config.ConfigError("--config '': give the path of a TOML config file")
        cf = config.load(kw["config"])
        values.update(cf.options)
        origin.update({k: cf.origin(k) for k in cf.options})
    for key, flag in config.FLAGS.items():  # a click option's name is its config key
        if key not in kw or ctx.get_parameter_source(key) != ParameterSource.COMMANDLINE:
            continue
        if kw[key] == ():
            continue
        values[key], origin[key] = kw[key], flag
        rival = {"points": "step", "step": "points"}.get(key)
        if rival and origin.get(rival, "").startswith(kw.get("config") or "\0"):
            values.pop(rival)  # a grid flag replaces the file's other way of giving the grid
    return values, lambda k: origin.get(k, config.FLAGS.get(k, k))


def _settings(kw: dict, default_dtypes: tuple[str, ...] = ("float32",), with_grid: bool = True,
              formats: tuple[str, ...] = FORMATS,
              default_range: tuple[float, float] = records.DEFAULT_RANGE) -> tuple[Settings, dict]:
    """Validate options (and --config) once into Settings plus the output choices."""
    kw = {**kw, "output": _output_path(kw)}
    try:
        values, origin = _merge(kw)
        _impl_timeout(values.get("timeout"), origin("timeout"))  # before any impl: module is imported
        s = config.build_settings(values, origin, default_dtypes, with_grid, default_range)
        given = "format" in values
        fmt = values["format"] if given else config.format_for(kw.get("output"))
        if given and fmt not in FORMATS:
            raise config.ConfigError(f"{origin('format')}: unknown format {fmt!r}; choose from "
                                     f"{', '.join(formats)}{config.did_you_mean(fmt, formats)}")
        if fmt not in formats:
            where = origin("format") if given else f"--output {kw.get('output')!r}"
            raise config.ConfigError(f"{where}: this command cannot write {fmt}; choose --format from "
                                     f"{', '.join(formats)}")
        if fmt == "parquet" and kw.get("output") is None:
            raise config.ConfigError("--format parquet is binary: give -o FILE.parquet")
        keep = config.check_rows_option(values.get("rows"), origin("rows"), fmt)
    except config.ConfigError as e:
        _fail(str(e))
    jobs = kw.get("jobs")
    if jobs is not None and jobs < 1:
        _fail(f"--jobs {jobs} must be at least 1")
    if kw.get("scheduler") is not None:
        from bce_audit import distributed

        try:
            distributed.check_address(kw["scheduler"])
        except distributed.DaskMissing as e:
            _fail(str(e))
    _use_cache(kw)
    return replace(s, keep=keep), {"fmt": fmt, "show": keep, "output": kw.get("output"),
                                   "jobs": jobs or os.cpu_count() or 1, "scheduler": kw.get("scheduler"),
                                   "quiet": kw.get("quiet", False)}


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


def _output_path(kw: dict) -> str | None:
    """-o FILE (``-`` and no -o: stdout); never the config being read."""
    path = kw.get("output")
    if path is None or path == "-":
        return None
    if kw.get("config") and _same_file(path, kw["config"]):
        _fail(f"--output {path!r} is the config being read (--config); write elsewhere")
    return path


def _same_file(path: str, source: str) -> bool:
    """Whether writing ``path`` would write over the input ``source``."""
    return os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source)


def _document(kw: dict, formats: tuple[str, ...]) -> dict:
    """The output of a one-document command: --format (else the one the -o extension names; one
    the command cannot write is an error) and the target (None: stdout)."""
    path = _output_path(kw)
    fmt = kw["format"] or config.format_for(path)
    if fmt not in formats:
        _fail(f"--output {path!r}: this command cannot write {fmt}; choose --format from "
              f"{', '.join(formats)}")
    return {"fmt": fmt, "output": path}


@contextlib.contextmanager
def _writing(path: str | None) -> Iterator[None]:
    """Writing to stdout (None) or --output: a failure is one line naming the target (a closed
    pipe is no failure: `_Group.invoke` ends the run quietly)."""
    try:
        yield
    except files.WriteError as e:
        _fail(f"--output: {e}")
    except BrokenPipeError:
        raise
    except OSError as e:
        _fail(f"{'stdout' if path is None else f'--output {path!r}'}: {e.strerror or e}")


def _emit(kw: dict, render: Callable[[str], object]) -> None:
    """Render in the chosen format to stdout or, atomically, to --output."""
    fmt, path = kw["fmt"], kw["output"]
    out = render(fmt)
    with _writing(path):
        if path is None:
            if isinstance(out, str):
                click.echo(out, nl=False)
            else:
                report.print_view(out, color=_color())
            return
        with files.atomic_open(path) as f:
            if isinstance(out, str):
                f.write(out)
            else:
                report.print_view(out, f, color=_color())


def _stream(out: dict, run: Callable[[sweep.Sink], object]) -> None:
    """Write rows chunk by chunk as the run makes them: to stdout, or atomically to --output."""
    from bce_audit import streams

    fmt, path = out["fmt"], out["output"]
    try:
        with _writing(path):
            target = files.atomic_open(path, "wb" if fmt == "parquet" else "w") if path else \
                contextlib.nullcontext(sys.stdout)
            with target as f:
                w = streams.writer(fmt, f)
                try:
                    run(w)
                except BaseException:
                    w.abort()  # its threads stopped before the file is closed and discarded
                    raise
                w.close()
    except streams.ParquetMissing as e:
        _fail(str(e))


# ---------------------------------------------------------------- commands


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="bce-audit",
                      message=f"%(prog)s %(version)s (compiled: {'yes' if compiled.active() else 'no'})")
@click.option("--color", type=_Choice(tuple(COLORS)), default="auto", show_default=True,
              help="Colour in tables and charts: auto (on a terminal, unless NO_COLOR is set), always "
                   "or never.")
@click.pass_context
def cli(ctx: click.Context, color: str) -> None:
    """Precision audit of sigmoid, logit and binary cross-entropy against an mpmath baseline.

    \b
    Examples:
      bce-audit sweep --dtype float32
      bce-audit sweep --dtype float16 --dtype bfloat16 --eps 1e-7 --eps 1e-4
      bce-audit points --dtype float32 --format json
      bce-audit check 16.5 17 -50
      bce-audit advise --dtype float16 --formula keras3
      bce-audit gate configs/gate-example.toml
    """
    ctx.color = COLORS[color]


@cli.command("sweep")
@_selection
@_grid
@_detail
@_output(FORMATS)
def sweep_cmd(**kw) -> int:
    """Sweep a logit grid: key points, sampled values and errors, worst errors."""
    s, out = _settings(kw)
    total = sum(sweep.grid_size(s, d) for d in s.dtypes)

    def run(sink: sweep.Sink | None = None) -> records.SweepResult:
        with report.progress_bar(total, not out["quiet"] and total >= PROGRESS_POINTS, _color()) as advance:
            return _run(lambda: sweep.run_sweep(s, progress=advance, jobs=out["jobs"],
                                                scheduler=out["scheduler"], sink=sink))

    if out["fmt"] in config.STREAMING:
        _stream(out, run)
        _cache_warnings()
        return 0
    result = run()
    _cache_warnings()

    def render(fmt: str):
        if fmt == "json":
            return records.to_json(report.document(result.settings.as_dict(), result.keypoints, result.rows,
                                                  result.worst, result.notes))
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result, out["show"], report.width_for(out["output"]), kw["detail"])

    _emit(out, render)
    return 0


@cli.command()
@_selection
@_JOBS
@_detail
@_output(DOCUMENT_FORMATS)
def points(**kw) -> int:
    """Key points only: overflow, floors, ceilings, zeros and onsets, found on the dtype grid."""
    s, out = _settings(kw, with_grid=False, formats=DOCUMENT_FORMATS)
    result = _run(lambda: sweep.run_sweep(s, with_rows=False, jobs=out["jobs"]))
    _cache_warnings()

    def render(fmt: str):
        if fmt == "json":
            return records.to_json(report.document(result.settings.as_dict(), result.keypoints,
                                                  notes=result.notes))
        if fmt == "csv":
            return report.to_csv(result.keypoints, records.KeyPoint)
        if fmt == "markdown":
            return report.to_markdown(result)
        return report.sweep_view(result, width=report.width_for(out["output"]), detail=kw["detail"])

    _emit(out, render)
    return 0


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("logits", nargs=-1, required=True, metavar="X [X ...]")
@_selection
@_JOBS
@_detail
@_output(DOCUMENT_FORMATS)
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
    s, out = _settings(kw, default_dtypes=dtypes.NAMES, with_grid=False, formats=DOCUMENT_FORMATS)
    rows, exact = _run(lambda: sweep.check_rows(xs, s))
    kps: list[records.KeyPoint] = []
    if out["fmt"] == "table":  # the verdict above the logits' tables
        kps = _run(lambda: sweep.run_sweep(s, with_rows=False, jobs=out["jobs"])).keypoints

    def render(fmt: str):
        if fmt == "json":
            return records.to_json(report.document(sweep.native(s).as_dict() | {"logits": xs}, [], rows))
        if fmt == "csv":
            return report.to_csv(rows, records.Row)
        if fmt == "markdown":
            return report.check_markdown(rows, exact)
        return report.check_view(rows, exact, report.width_for(out["output"]), kps, kw["detail"])

    _emit(out, render)
    return 0


@cli.command("dtypes")
@click.option("--mode", type=_Choice(formulas.MODES), default="per-op", show_default=True,
              help="Evaluation mode for the predicted overflow point.")
@_output(("table", "json"))
def dtypes_cmd(mode: str, **kw) -> int:
    """The audited dtypes: bits, significand, eps, tiny, max and predicted round-trip overflow."""
    infos = list(dtypes.DTYPES.values())
    overflow = {i.name: keypoints.predicted_overflow(i, mode) for i in infos}

    def render(fmt: str):
        if fmt == "json":
            return records.to_json({"schema": records.SCHEMA, "version": __version__, "mode": mode,
                                   "dtypes": report.dtypes_records(infos, overflow)})
        return report.dtypes_view(infos, overflow)

    _emit(_document(kw, ("table", "json")), render)
    return 0


@cli.command("fidelity")
@click.option("--backend", type=_Choice(backends.NAMES[1:]), default="torch", show_default=True,
              help="The real framework to compare the numpy models with.")
@click.option("--device", type=_Choice(("cpu", "cuda")), default="cpu", show_default=True,
              help="Device for --backend torch.")
@click.option("--keras-backend", "keras_backend", type=_Choice(records.KERAS_BACKENDS),
              default=records.KERAS_BACKENDS[0], show_default=True,
              help="For --backend keras: the backend Keras 3 runs on.")
@click.option("--dtype", "dtype", multiple=True, metavar="NAME",
              type=_Choice(("float16", "bfloat16", "float32", "float64"), dtypes.ALIASES),
              help="Dtypes to compare (repeatable; default float16, bfloat16, float32): float16, "
                   "bfloat16, float32, float64, or an alias (fp16, bf16, f32, ...).")
@click.option("--no-keypoints", is_flag=True, help="Skip the key-point comparison (faster).")
@_output(("table", "json"))
def fidelity_cmd(backend, device, keras_backend, dtype, no_keypoints, **kw) -> int:
    """Compare each numpy model with the real framework op, value by value, and their key points."""
    from bce_audit import fidelity

    be = _run(lambda: backends.get(backend, device, keras_backend))
    chosen = tuple(dict.fromkeys(dtype)) or fidelity.DEFAULT_DTYPES
    diffs = _run(lambda: fidelity.differences(be, chosen))
    pairs = [] if no_keypoints else _run(lambda: fidelity.keypoint_pairs(be, chosen))
    out = _document(kw, ("table", "json"))
    mode = sweep.native(be.select(records.Settings())).mode
    notes = [f"the models run in mode {mode}, as {be.label} computes", be.evaluation]

    def render(fmt: str):
        if fmt == "json":
            return report.fidelity_json(diffs, pairs, be.label, notes)
        return report.fidelity_view(diffs, pairs, be.label, notes)

    _emit(out, render)
    return 0


@cli.command("reproduce")
@click.option("--backend", "framework", type=_Choice(("tf-keras", "keras")), required=True,
              help="tf-keras: import tf_keras (TensorFlow); keras: Keras 3 on --keras-backend.")
@click.option("--keras-backend", "keras_backend", type=_Choice(records.KERAS_BACKENDS),
              default=None, help="KERAS_BACKEND for --backend keras (default tensorflow).")
@click.option("--policy", "policies", multiple=True, type=_Choice(("float32", "mixed_float16")),
              help="Keras dtype policy (repeatable; default both).")
@_output(("table", "json"))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Also draw loss against a (log scale) beside the exact curve: .png, .svg or .pdf.")
def reproduce_cmd(framework: str, keras_backend: str | None, policies: tuple[str, ...],
                  plot_path: str | None, **kw) -> int:
    """Reproduce the Keras BCE floor: the question's model on {(-a, 0), (a, 1)}, end to end.

    Dense(1, activation='sigmoid') with weight 1 and bias 0, compiled with binary_crossentropy,
    evaluated on x = [[-a], [a]], y = [[0], [1]] for a = 0..40 (and every 0.25 from 12 to 20),
    in float32 and under mixed_float16; and the same loss on probabilities fed as a numpy
    array. Says for each case whether Keras took the logits path or clipped, and where the
    loss floors. Keras runs in a subprocess.

    \b
    Needs the framework:
      pip install 'bce-audit[tensorflow]'   (--backend tf-keras)
      pip install 'bce-audit[keras,jax]'    (--backend keras; or [keras,torch], ...)
    \b
    Examples:
      bce-audit reproduce --backend tf-keras
      bce-audit reproduce --backend keras --keras-backend torch --plot floor.png
    """
    from bce_audit import plot, reproduce  # (only this command needs them)

    if framework == "tf-keras" and keras_backend not in (None, "tensorflow"):
        _fail(f"--keras-backend {keras_backend} applies to --backend keras; tf-keras runs on tensorflow")
    backend = keras_backend or "tensorflow"
    out = _document(kw, ("table", "json"))
    if plot_path is not None:
        try:
            plot.check_path(plot_path, "--plot")
            plot.require("matplotlib.figure", "--plot")
        except plot.PlotError as e:
            _fail(str(e))
    try:
        cases = reproduce.reproduce(framework, backend, tuple(dict.fromkeys(policies)) or reproduce.POLICIES)
    except reproduce.ReproError as e:
        _fail(str(e))
    if plot_path is not None:
        try:
            plot.render_repro(cases, plot_path)
        except plot.PlotError as e:
            _fail(str(e))

    def render(fmt: str):
        return report.repro_json(cases) if fmt == "json" else report.repro_view(cases)

    _emit(out, render)
    return 0


@cli.command("plot")
@_selection
@_grid
@click.option("--kind", "plot_kind", type=_Choice(records.PLOT_KINDS), default="roundtrip", show_default=True,
              help="roundtrip: relative error of logit(sigmoid(x)); bce: each formula's BCE beside the "
                   "exact one; error: bits of error; grad: |dBCE/dx| beside the exact |sigmoid(x) - y|.")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write a .png, .svg or .pdf picture (matplotlib) instead of drawing in the terminal.")
@click.option("--size", default=None, metavar="WxH",
              help="Picture size in pixels for --output (default {}x{}, taller with --facet; at {} dpi; "
                   "SVG and PDF get the same size in inches).".format(*records.PLOT_SIZE, records.PLOT_DPI))
@click.option("--facet", is_flag=True, default=False,
              help="One panel per dtype, each with its own key points (in the terminal, one chart each).")
def plot_cmd(plot_kind: str, output: str | None, size: str | None, facet: bool, **kw) -> int:
    """Plot a sweep: in the terminal (plotext), or to a picture file with --output (matplotlib).

    \b
    With --label both (the default), --kind bce and error show the seed article's pair
    {(-a, 0), (a, 1)} and grad shows label 1; --label 1 or 0 shows one label. Needs the plot extra:
      pip install 'bce-audit[plot]'
    \b
    Examples:
      bce-audit plot --dtype float32                 (the round trip over 0:40)
      bce-audit plot --dtype all --facet -o roundtrip.png
      bce-audit plot --config configs/seed-article.toml --kind bce -o docs/seed-bce.png
    """
    from bce_audit import plot  # (only this command needs it)

    try:
        if output is not None:
            plot.check_path(output)
            if size is not None:
                plot.parse_size(size)
            plot.require("matplotlib.figure", "--output")
        else:
            plot.require("plotext", "the terminal chart")
    except plot.PlotError as e:
        _fail(str(e))
    s, _ = _settings(kw, default_range=plot.default_range(plot_kind))
    s = replace(s, keep=plot.MAX_POINTS)  # evenly spread: a picture's memory never grows with the grid
    if plot_kind == "grad":
        s = replace(s, grad=True)  # gradients are computed only when asked for
        # a one-point probe: fail fast when the sweep has no gradient rows
        one = replace(s, values=(0.0,), keep=None)
        probe = _run(lambda: sweep.audit_grid(one, s.dtypes[0], None)[1])
        try:
            plot.check_available(plot_kind, probe)
        except plot.PlotError as e:
            _fail(str(e))
    result = _run(lambda: sweep.run_sweep(s))
    try:
        data = plot.plot_data(result, plot_kind)
        if output is not None:
            width_px, height_px = plot.parse_size(size) if size else plot.default_size(data, facet)
            plot.render_file(data, output, width_px, height_px, facet=facet)
        else:
            color = report.color_on(sys.stdout, _color())
            panels = plot.facets(data) if facet else [data]
            for panel in panels:
                click.echo(plot.render_terminal(panel, report.width_for(None), plot.TERMINAL_HEIGHT, color),
                           nl=False)
    except plot.PlotError as e:
        _fail(str(e))
    return 0


ADVISE_FORMATS = ("text", "json", "markdown")


@cli.command("advise")
@click.option("--config", "config", type=str, default=None, metavar="FILE",
              help="A TOML config: with [[check]] tables, advice for every failing check; else its options.")
@click.option("--dtype", "dtypes", multiple=True, metavar="NAME",
              type=_Choice((*dtypes.NAMES, "all"), dtypes.ALIASES),
              help=f"Dtype (repeatable, or 'all'; default float32): {', '.join(dtypes.NAMES)}. "
                   f"Aliases, in any case: {dtypes.aliases_help()}.")
@click.option("--formula", "formulas", multiple=True, metavar="NAME",
              help=f"BCE formula (repeatable): {', '.join(formulas.NAMES)}, or impl:package.module:function.")
@click.option("--eps", "eps", multiple=True, type=float, metavar="EPS", help="Clip epsilon (default 1e-7).")
@click.option("--impl-kind", "kind", type=_Choice(impl.KINDS), default="bce-logits", show_default=True,
              help="What an impl: formula computes: f(x, y), f(p, y), sigmoid f(x) or logit f(p).")
@_IMPL_TIMEOUT
@_PYTHONPATH
@click.option("--mode", type=_Choice(formulas.MODES), default="native", show_default=True,
              help="How the arithmetic is done (see sweep --help).")
@click.option("--label", type=_Choice(records.LABELS), default="both", show_default=True,
              help="Label to audit; 'both' adds the seed article's two-point pair.")
@click.option("--range", "range", metavar="LO:HI", default=None,
              help="The range you care about (default -40:40).")
@click.option("--points", type=int, default=None, metavar="N",
              help=f"Grid points over the range (default {records.DEFAULT_POINTS}).")
@click.option("--max-ulp", "tolerance", type=float, default=None, metavar="ULP",
              help="Worst error, in ULPs of the dtype, below which there is nothing to fix (default 4).")
@click.option("--no-cache", "no_cache", is_flag=True, default=False, help="Skip the result cache.")
@_output(ADVISE_FORMATS)
def advise_cmd(tolerance: float | None, **kw) -> int:
    """The fix, not only the diagnosis: what goes wrong, then fixes, each verified by re-running
    the audit with it applied (with-logits rewrite, safe eps, float32 loss, best built-in).

    \b
    Examples:
      bce-audit advise --dtype float16 --formula keras3 --eps 1e-7
      bce-audit advise --config my-gate.toml          # advice for every failing check
      bce-audit advise --formula impl:mypkg.losses:bce --impl-kind bce-probs --dtype bfloat16
    """
    from bce_audit import advise, advise_view, gate  # (only this command needs them)

    tol = advise.TOLERANCE_ULP if tolerance is None else tolerance
    if not (math.isfinite(tol) and tol >= 0):
        _fail(f"--max-ulp {tolerance!r} must be a number >= 0")
    path = _output_path(kw)
    fmt = kw.pop("format") or {"json": "json", "markdown": "markdown"}.get(config.format_for(path), "text")
    kw = {**kw, "output": None}
    ctx = click.get_current_context()
    checks = None
    if kw["config"]:
        try:
            cf = config.load(kw["config"])
        except config.ConfigError as e:
            _fail(str(e))
        if cf.checks:
            flags = {"dtypes": "--dtype", "formulas": "--formula", "eps": "--eps", "mode": "--mode",
                     "label": "--label", "range": "--range", "points": "--points", "kind": "--impl-kind"}
            given = [flag for key, flag in flags.items()
                     if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE]
            if given:
                _fail(f"--config {kw['config']!r} has [[check]] tables, which say what to advise on; "
                      f"{given[0]} would be ignored")
            try:
                _impl_timeout(kw.get("timeout"))
                dirs = config.pythonpath_dirs(kw.get("pythonpath", ()), os.getcwd(), "--pythonpath")
                checks = gate.load_checks([kw["config"]], dirs)
            except config.ConfigError as e:
                _fail(str(e))
    if checks is not None:
        _use_cache(kw)
        found = _run(lambda: advise.advise_checks(checks, tolerance=tol))
    else:
        s, _ = _settings(kw)
        ignored = [f"{key} {value!r}" for key, value, default in (
            ("backend", s.backend, "numpy"), ("spacing", s.spacing, "lin"),
            ("exhaustive", s.exhaustive, False)) if value != default]
        if ignored:
            _fail(f"--config {kw['config']!r}: {ignored[0]}: advise audits the models on a linear grid; "
                  "drop it")
        try:
            todo = advise.targets(s)
        except config.ConfigError as e:
            _fail(str(e))
        found = _run(lambda: [advise.advise(t, tol) for t in todo])
    _cache_warnings()
    render = {"json": advise_view.json_doc, "markdown": advise_view.markdown, "text": advise_view.text}[fmt]
    _emit({"fmt": fmt, "output": path}, lambda _: render(found))
    return 0


@cli.command("gate")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@click.option("--baseline", "baseline_path", default=None, metavar="FILE",
              help="Also fail any check whose figures got worse than this baseline.")
@click.option("--tolerance", type=float, default=None, metavar="REL",
              help="How much worse than the baseline a figure may get, relative "
                   f"(default: the baseline's own, {records.BASELINE_TOLERANCE:g}).")
@click.option("--junit", "junit_path", default=None, metavar="FILE", help="Write JUnit XML for CI.")
@click.option("--json", "json_path", default=None, metavar="FILE", help="Write the results as JSON.")
@click.option("--markdown", "markdown_path", default=None, metavar="FILE",
              help="Write a markdown summary (for a PR comment).")
@click.option("--advise", "with_advice", is_flag=True, default=False,
              help="Append the advice for each failing check (bce-audit advise) to the report.")
@_IMPL_TIMEOUT
@_PYTHONPATH
def gate_cmd(configs, baseline_path, tolerance, junit_path, json_path, markdown_path, timeout,
             pythonpath, with_advice=False) -> int:
    """Run the [[check]] tables of gate configs: exit 0 if all pass, 1 if any fails or errors, 2 on
    bad input (a config error: nothing runs).

    Every check runs and every failure is reported; a check whose impl: function fails (does not
    import, raises, returns garbage, hangs) is reported as ERROR with its message, and the others
    still run. With GITHUB_ACTIONS=true each failure is also printed as an ::error annotation.
    """
    from bce_audit import baseline, gate  # (only this command needs them)

    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        _fail(f"--tolerance {tolerance!r} must be a number >= 0")
    try:
        _impl_timeout(timeout)
    except config.ConfigError as e:
        _fail(str(e))
    try:
        dirs = config.pythonpath_dirs(pythonpath, os.getcwd(), "--pythonpath")
        checks = gate.load_checks(configs, dirs)
        base = baseline.load(baseline_path, checks) if baseline_path else None
        inputs = (*configs, *((baseline_path,) if baseline_path else ()))
        for path, flag in ((junit_path, "--junit"), (json_path, "--json"), (markdown_path, "--markdown")):
            if path:
                _writable(path, flag, inputs)
    except config.ConfigError as e:
        _fail(str(e))
    results = _run(lambda: gate.run(checks))
    if base is not None:
        tol = tolerance if tolerance is not None else float(base.get("tolerance", baseline.DEFAULT_TOLERANCE))

        results = [r if r.error else
                   replace(r, regressions=baseline.regressions(c, r, base["checks"].get(r.name), tol))
                   for c, r in zip(checks, results, strict=True)]
    actions = os.environ.get("GITHUB_ACTIONS") == "true"
    token = secrets.token_hex(16)
    if actions:  # check names come from configs: nothing in the table may act as a workflow command
        click.echo(f"::stop-commands::{token}")
    report.print_view(report.gate_view(results), color=_color())
    gate_doc, gate_md = report.gate_json(results, configs, baseline_path), report.gate_markdown(results)
    if with_advice:  # the advice for each failing check: after the table, in --markdown and --json
        from bce_audit import advise, advise_view

        found = _run(lambda: advise.advise_checks(checks, results))
        if found:
            click.echo("\n" + advise_view.text(found), nl=False)
            gate_md += "\n" + advise_view.markdown(found)
        gate_doc = records.to_json({**json.loads(gate_doc), "advice": [a.to_dict() for a in found]})
    if actions:
        click.echo(f"::{token}::")
    for path, text in ((junit_path, report.junit_xml(results)), (json_path, gate_doc),
                       (markdown_path, gate_md)):
        if path:
            _write(path, text)
    if actions:
        click.echo(report.github_annotations(results), nl=False)
    return 0 if all(r.ok for r in results) else 1


@cli.group("baseline", cls=_Group)
def baseline_group() -> None:
    """Record the gate's measured figures, to fail later runs that get worse."""


@baseline_group.command("save")
@click.argument("configs", nargs=-1, required=True, metavar="CONFIG...")
@click.option("--output", "-o", "output", required=True, metavar="FILE", help="Baseline file to write.")
@click.option("--tolerance", type=float, default=records.BASELINE_TOLERANCE, show_default=True,
              metavar="REL", help="Relative worsening allowed by later gates (stored in the file).")
def baseline_save(configs, output, tolerance) -> int:
    """Run the checks of gate configs and save every measured figure to FILE (atomically)."""
    from bce_audit import baseline, gate  # (only this command needs them)

    if not (math.isfinite(tolerance) and tolerance >= 0):
        _fail(f"--tolerance {tolerance!r} must be a number >= 0")
    try:
        _writable(output, "--output", tuple(configs))  # before every check runs, not after
        checks = gate.load_checks(configs)
    except config.ConfigError as e:
        _fail(str(e))
    results = _run(lambda: gate.run(checks))
    errored = [r for r in results if r.error]
    for r in errored:
        click.echo(f"bce-audit: error: check {_one_line(r.name)!r}: {_one_line(r.error)}", err=True)
    if errored:
        click.echo(f"bce-audit: error: baseline not saved: {len(errored)} of {len(results)} checks "
                   "could not be measured", err=True)
        return 1
    try:
        baseline.save(output, checks, results, configs, tolerance)
    except config.ConfigError as e:
        _fail(str(e))
    click.echo(f"saved {len(results)} checks to {output}")
    return 0


@cli.group("cache", cls=_Group)
def cache_group() -> None:
    """The result cache: where it is, how big, and clearing it."""


@cache_group.command("info")
def cache_info() -> int:
    """Where the cache is, how many entries and bytes it holds, and which are stale.

    An entry is stale when the code or a library it was computed with has changed since: it is
    never served (the key holds the code stamp), only kept until `cache clear --stale`.
    """
    info = cache.Cache(cache.default_dir()).info()
    click.echo(f"{info['path']}: {info['entries']} entries ({info['stale']} stale), {info['bytes']:,} bytes")
    deps = ", ".join(f"{k} {v or 'absent'}" for k, v in info["deps"].items())
    click.echo(f"code stamp {info['stamp']}: source sha256 {info['code'][:16]}, {deps}")
    return 0


@cache_group.command("clear")
@click.option("--stale", is_flag=True, help="Remove only the entries of other code or library versions.")
def cache_clear(stale: bool) -> int:
    """Delete every cache entry (only bce-audit's own files), or only the stale ones."""
    store = cache.Cache(cache.default_dir())
    try:
        n = store.clear(stale_only=stale)
    except OSError as e:
        _fail(f"cannot clear {store.root}: {e.strerror or e}")
    click.echo(f"removed {n} {'stale ' if stale else ''}entries from {store.root}")
    return 0


def _writable(path: str, flag: str, inputs: tuple[str, ...] = ()) -> None:
    """Fail before the work, not after it, when an output file cannot be written or is one of
    the ``inputs`` being read (a config, a baseline)."""
    for source in inputs:
        if _same_file(path, source):
            raise config.ConfigError(f"{flag} {path!r} is an input being read ({source}); write elsewhere")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise config.ConfigError(f"{flag} {path!r}: no such directory {directory!r}")
    if os.path.isdir(path):
        raise config.ConfigError(f"{flag} {path!r} is a directory")


def _write(path: str, text: str) -> None:
    from bce_audit import baseline  # (only this command needs it)

    try:
        baseline.write_atomic(path, text)
    except config.ConfigError as e:
        _fail(str(e))


def main() -> None:
    """Console-script entry point."""
    heap.tune()
    cli.main()
