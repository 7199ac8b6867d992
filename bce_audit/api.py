"""The Python API: the commands as functions that return the typed records, for a notebook or a
test that uses bce-audit without the CLI.

Keyword arguments are named like the command-line options and config keys (``dtype``,
``formula``, ``eps``, ``range``, ``points``, ``mode``, ``label``, ``threshold``, ``backend``,
...); each takes one value or a list where the option repeats, and the defaults are the CLI's.
``config`` names a TOML config read as ``--config`` reads it (the arguments given override it).
Values go through the CLI's own validation: a bad one is a `ValueError` (`config.ConfigError`)
naming the argument and what is allowed. A formula is a built-in name, ``"all"``, an
``impl:package.module:function`` spec, or a Python callable: ``f(x, y)`` with
``kind="bce-logits"`` (the default) or ``f(p, y)`` with ``kind="bce-probs"``, called with numpy
arrays of the audited dtype and returning one of the same shape and dtype. A callable runs in
this process (``jobs`` is 1 with one) and is named ``impl:<module>:<qualname>`` in the records;
what it raises is an `impl.ImplError` (a ValueError) naming it.

Every record has ``to_dict()``: a JSON-safe dict (inf and nan as strings), as the CLI writes it.

>>> from bce_audit import api
>>> [(k.name, k.x) for k in api.points(dtype="float16", formula="keras3", label="1")
...  if k.formula == "keras3"]
[('bce_nonfinite', 7.625), ('bce_ceiling', -15.7265625)]
>>> api.sweep(dtype="f99")
Traceback (most recent call last):
bce_audit.config.ConfigError: sweep(): dtype: unknown dtype 'f99'; choose from ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from bce_audit import config as cfg
from bce_audit import dtypes, formulas
from bce_audit import gate as gate_mod
from bce_audit import sweep as sweep_mod
from bce_audit.records import Advice, CheckResult, KeyPoint, Row, Settings, SweepResult

FormulaArg = str | Callable[..., Any] | Sequence[str | Callable[..., Any]]
_PARAMS = {"dtypes": "dtype", "formulas": "formula", "thresholds": "threshold"}  # config key -> argument


def _split_formulas(value: Any) -> tuple[list[str], list[Callable]]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    return [v for v in items if not callable(v)], [v for v in items if callable(v)]


def function_name(func: Callable, taken: Iterable[str] = ()) -> str:
    """The formula name of a callable: ``impl:<module>:<qualname>`` (``#2``... when taken).

    >>> import numpy as np
    >>> def stable(x, y):
    ...     return np.logaddexp(0, x).astype(x.dtype) - x * y
    >>> function_name(stable)
    'impl:bce_audit.api:stable'
    """
    module = getattr(func, "__module__", None) or "python"
    name = f"impl:{module}:{getattr(func, '__qualname__', type(func).__name__)}"
    taken = set(taken)
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}#{n}"
    return out


def settings(call: str, given: dict[str, Any], config_path: str | os.PathLike | None = None,
             with_grid: bool = True, default_dtypes: tuple[str, ...] = ("float32",)) -> Settings:
    """Validate the keyword arguments ``given`` to ``call`` (None: not given) as the CLI validates
    its options, over a TOML config's values as ``--config`` reads them; register callables.

    >>> settings("sweep", {"dtype": "bfloat16", "eps": [1e-7, 1e-3], "rows": 5}).eps
    (1e-07, 0.001)
    >>> settings("sweep", {"points": 10**9})
    Traceback (most recent call last):
    bce_audit.config.ConfigError: sweep(): points 1000000000 is out of range; it must be 2 to 100,000,000
    """
    where = f"{call}()"
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if config_path is not None:
        cf = cfg.load(os.fspath(config_path))
        values.update(cf.options)
        origins.update({k: cf.origin(k) for k in cf.options})

    def origin(key: str) -> str:
        return origins.get(key, f"{where}: {_PARAMS.get(key, key)}")

    table: dict[str, Any] = {}
    funcs: list[Callable] = []
    for key, value in given.items():
        if value is None:
            continue
        if key == "formula":
            given_names, funcs = _split_formulas(value)
            value = given_names if given_names or not funcs else None
            if value is None:
                continue
        table[key] = list(value) if isinstance(value, tuple) else value
    for key, value in cfg.typed_options(table, where, tuple(table)).items():
        values[key] = value
        origins.pop(key, None)
        rival = {"points": "step", "step": "points"}.get(key)
        if rival in origins:
            values.pop(rival)  # an argument replaces the file's other way of giving the grid
    if funcs and "formula" not in table:
        values["formulas"] = ()  # only the callables
    s = cfg.build_settings(values, origin, default_dtypes, with_grid)
    rows = values.get("rows")
    keep = None if rows == "all" else cfg.check_rows_option(rows, origin("rows"), "json")
    kind = values.get("kind", "bce-logits")
    names: list[str] = list(s.formulas)
    for func in funcs:
        name = function_name(func, names)
        formulas.register_function(func, kind, name)
        names.append(name)
    return replace(s, formulas=tuple(names), keep=keep)


def _jobs(jobs: int | None, s: Settings, call: str) -> int:
    if jobs is None:
        return 1
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise cfg.ConfigError(f"{call}(): jobs {jobs!r} must be an integer, at least 1")
    for name in s.formulas:
        user = formulas.get(name).user
        if user is not None and (user.source is None or user.source.root is None):
            return 1  # a callable: no worker process can import it again
    return jobs


def sweep(*, config: str | os.PathLike | None = None, dtype: str | Sequence[str] | None = None,
          formula: FormulaArg | None = None,
          eps: float | Sequence[float] | None = None, range: tuple[float, float] | str | None = None,
          points: int | None = None, step: float | None = None, spacing: str | None = None,
          label: str | int | None = None, mode: str | None = None,
          threshold: float | Sequence[float] | None = None, backend: str | None = None,
          device: str | None = None, keras_backend: str | None = None, grad: bool | None = None,
          reference: str | None = None, exhaustive: bool | None = None, rows: int | str | None = None,
          kind: str | None = None, jobs: int | None = None) -> SweepResult:
    """``bce-audit sweep``: key points, the worst error of each series over the grid, and
    ``rows`` grid rows evenly spread (default 11; ``"all"``: every row).

    >>> r = sweep(dtype="float16", formula="naive", label="1", points=5, rows=2)
    >>> [(w.formula, w.label, w.nonfinite, w.nonfinite_x) for w in r.worst if w.quantity == "bce"]
    [('naive', 1, 4, -40.0)]
    >>> [(row.x, row.value, row.exact) for row in r.rows if row.quantity == "bce"]
    [(-40.0, inf, 40.0), (40.0, nan, 4.248354255291589e-18)]
    >>> sorted(r.to_dict())
    ['keypoints', 'notes', 'rows', 'schema', 'settings', 'worst']
    """
    given = {"dtype": dtype, "formula": formula, "eps": eps, "range": range, "points": points, "step": step,
             "spacing": spacing, "label": label, "mode": mode, "threshold": threshold, "backend": backend,
             "device": device, "keras_backend": keras_backend, "grad": grad, "reference": reference,
             "exhaustive": exhaustive, "rows": rows, "kind": kind}
    s = settings("sweep", given, config)
    return sweep_mod.run_sweep(s, jobs=_jobs(jobs, s, "sweep"))


def points(*, config: str | os.PathLike | None = None, dtype: str | Sequence[str] | None = None,
           formula: FormulaArg | None = None,
           eps: float | Sequence[float] | None = None, label: str | int | None = None,
           mode: str | None = None, threshold: float | Sequence[float] | None = None,
           backend: str | None = None, device: str | None = None, keras_backend: str | None = None,
           grad: bool | None = None, kind: str | None = None, jobs: int | None = None) -> list[KeyPoint]:
    """``bce-audit points``: the key points, found on the dtype's own grid of values.

    >>> [(k.name, k.x) for k in points(dtype="float16", formula="naive", label="1")
    ...  if k.formula == "naive"]
    [('bce_nonfinite', 7.625), ('bce_nonfinite', -11.09375)]
    """
    given = {"dtype": dtype, "formula": formula, "eps": eps, "label": label, "mode": mode,
             "threshold": threshold, "backend": backend, "device": device, "keras_backend": keras_backend,
             "grad": grad, "kind": kind}
    s = settings("points", given, config, with_grid=False)
    return sweep_mod.run_sweep(s, with_rows=False, jobs=_jobs(jobs, s, "points")).keypoints


def check(xs: float | Sequence[float], *, config: str | os.PathLike | None = None,
          dtype: str | Sequence[str] | None = None,
          formula: FormulaArg | None = None, eps: float | Sequence[float] | None = None,
          label: str | int | None = None, mode: str | None = None, backend: str | None = None,
          device: str | None = None, keras_backend: str | None = None, grad: bool | None = None,
          reference: str | None = None, kind: str | None = None) -> list[Row]:
    """``bce-audit check``: a row for each logit, dtype and quantity (every dtype by default).

    >>> [(r.x_dtype, r.value, r.exact) for r in check([16.5], dtype="float32")
    ...  if r.quantity == "sigmoid"]
    [(16.5, 0.9999998807907104, 0.999999931743971)]
    """
    values = [xs] if isinstance(xs, (int, float)) else list(xs)
    for x in values:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise cfg.ConfigError(f"check(): xs: {x!r} is not a logit; give finite numbers")
    if not values:
        raise cfg.ConfigError("check(): xs: give at least one logit")
    given = {"dtype": dtype, "formula": formula, "eps": eps, "label": label, "mode": mode, "backend": backend,
             "device": device, "keras_backend": keras_backend, "grad": grad, "reference": reference,
             "kind": kind}
    s = settings("check", given, config, with_grid=False, default_dtypes=dtypes.NAMES)
    return sweep_mod.check_rows([float(x) for x in values], s)[0]


def gate(config_or_checks: str | os.PathLike | Sequence[str | os.PathLike] | Sequence[gate_mod.Check]
         ) -> list[CheckResult]:
    """``bce-audit gate``: run every check of gate configs (or of `gate.Check` objects) and return
    each result; ``all(r.ok for r in results)`` is the verdict. A bad config is a ValueError.

    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "gate.toml"
    >>> _ = path.write_text('[[check]]\\nname = "f16"\\nformula = "logits-stable"\\n'
    ...                     'dtype = "float16"\\npoints = 101\\nmax_ulp = 4\\n')
    >>> [(r.name, r.ok, r.figures["max_ulp"]) for r in gate(path)]
    [('f16', True, 0.5605853698471037)]
    """
    items = [config_or_checks] if isinstance(config_or_checks, (str, os.PathLike)) else list(config_or_checks)
    if not items:
        raise cfg.ConfigError("gate(): give a config path or a list of checks")
    if all(isinstance(i, (str, os.PathLike)) for i in items):
        checks = gate_mod.load_checks([os.fspath(i) for i in items])  # type: ignore[arg-type]
    elif all(isinstance(i, (gate_mod.GridCheck, gate_mod.KeypointCheck)) for i in items):
        checks = items  # type: ignore[assignment]
    else:
        raise cfg.ConfigError("gate(): give config paths or gate.Check objects, not a mix")
    return gate_mod.run(checks)


def advise(*, config: str | os.PathLike | None = None, dtype: str | Sequence[str] | None = None,
           formula: FormulaArg | None = None, eps: float | Sequence[float] | None = None,
           range: tuple[float, float] | str | None = None, points: int | None = None,
           label: str | int | None = None, mode: str | None = None, kind: str | None = None,
           max_ulp: float | None = None) -> list[Advice]:
    """``bce-audit advise``: for each formula, dtype and eps, what goes wrong over the range and
    the fixes, best first, each verified by running the audit with it applied. A ``config`` with
    ``[[check]]`` tables gives the advice for each failing check (the other arguments unused).

    >>> [a] = advise(dtype="float32", formula="logits-stable")
    >>> a.ok, a.fixes
    (True, ())
    >>> [f.after.formula for f in advise(dtype="float16", formula="keras3")[0].fixes][:1]
    ['logits-stable']
    """
    from bce_audit import advise as advise_mod

    tolerance = advise_mod.TOLERANCE_ULP if max_ulp is None else max_ulp
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise cfg.ConfigError(f"advise(): max_ulp {max_ulp!r} must be a number >= 0")
    if config is not None and cfg.load(os.fspath(config)).checks:
        return advise_mod.advise_checks(gate_mod.load_checks([os.fspath(config)]), tolerance=tolerance)
    given = {"dtype": dtype, "formula": formula, "eps": eps, "range": range, "points": points, "label": label,
             "mode": mode, "kind": kind}
    s = settings("advise", given, config)
    return [advise_mod.advise(t, float(tolerance)) for t in advise_mod.targets(s)]
