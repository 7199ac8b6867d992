"""Configuration: TOML files and command-line options -> one validated `Settings`.

Every value goes through the same checks whether it came from a flag or a file; an error
names where it came from (``--eps`` or ``configs/x.toml: eps``) and what is allowed, and is
raised as `ConfigError` (the CLI prints it on one line and exits 2). Unknown keys suggest the
nearest valid one.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bce_audit import backends, dtypes, files, formulas, impl
from bce_audit.records import (
    DEFAULT_EPS,
    DEFAULT_POINTS,
    DEFAULT_RANGE,
    DEFAULT_THRESHOLDS,
    KERAS_BACKENDS,
    LABELS,
    MAX_POINTS,
    SPACINGS,
    Settings,
    setting_flags,
    step_count,
)

FORMATS = ("table", "json", "jsonl", "csv", "parquet", "markdown")
STREAMING = ("jsonl", "csv", "parquet")  # written chunk by chunk: any number of rows
EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
              ".pq": "parquet", ".md": "markdown", ".markdown": "markdown", ".txt": "table"}
MAX_EXHAUSTIVE = 1 << 33  # dtype values one exhaustive grid may walk: every float32, on a cluster


def exhaustive_count(dtype: str, rng: tuple[float, float]) -> int:

    lo, hi = dtypes.exhaustive_bounds(dtypes.get(dtype), rng)
    return hi - lo + 1
MAX_ROWS = 1000


class ConfigError(ValueError):
    """A mistake in a config file or an option: one line, naming where and what is allowed."""


# ---------------------------------------------------------------- TOML -> typed values

ALIASES = {"dtype": "dtypes", "formula": "formulas", "threshold": "thresholds"}
# config key -> command-line flag: the Settings options, and the output and impl choices
FLAGS = {**setting_flags(), "rows": "--rows", "format": "--format", "kind": "--impl-kind",
         "timeout": "--impl-timeout", "pythonpath": "--pythonpath"}
SELECTION_KEYS = tuple(FLAGS)
TOP_KEYS = (*SELECTION_KEYS, *ALIASES, "check")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _strs(v, where: str) -> tuple[str, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(isinstance(i, str) for i in items):
        raise ConfigError(f"{where}: expected a string or a list of strings, got {v!r}")
    return tuple(items)


def _numbers(v, where: str) -> tuple[float, ...]:
    items = v if isinstance(v, list) else [v]
    if not items or not all(_is_number(i) for i in items):
        raise ConfigError(f"{where}: expected a number or a list of numbers, got {v!r}")
    return tuple(float(i) for i in items)


def _number(v, where: str) -> float:
    if not _is_number(v):
        raise ConfigError(f"{where}: expected a number, got {v!r}")
    return float(v)


def _int(v, where: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where}: expected an integer, got {v!r}")
    return v


def _str(v, where: str) -> str:
    if not isinstance(v, str):
        raise ConfigError(f"{where}: expected a string, got {v!r}")
    return v


def _bool(v, where: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{where}: expected true or false, got {v!r}")
    return v


def _rows(v, where: str) -> int | str:
    if v == "all":
        return v
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{where}: expected an integer or \"all\", got {v!r}")
    return v


def _label(v, where: str) -> str:
    if isinstance(v, int) and not isinstance(v, bool):
        v = str(v)
    return _str(v, where)


def _range(v, where: str) -> tuple[float, float] | str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and len(v) == 2 and all(_is_number(i) for i in v):
        return float(v[0]), float(v[1])
    raise ConfigError(f"{where}: expected [LO, HI] or \"LO:HI\", got {v!r}")


TYPES = {  # how a config value of each key is read (one entry for each key of FLAGS)
    "dtypes": _strs, "eps": _numbers, "formulas": _strs, "range": _range, "points": _int,
    "step": _number, "spacing": _str, "label": _label, "mode": _str, "thresholds": _numbers,
    "rows": _rows, "format": _str, "kind": _str, "backend": _str, "device": _str, "reference": _str,
    "grad": _bool, "exhaustive": _bool, "timeout": _number, "keras_backend": _str,
    "pythonpath": _strs,
}


def nearest(value: str, candidates) -> str | None:
    """The candidate closest to a mistyped value (ignoring case), or None when none is close."""
    by_lower = {str(c).lower(): str(c) for c in candidates}
    near = difflib.get_close_matches(value.lower(), list(by_lower), n=1)
    return by_lower[near[0]] if near else None


def did_you_mean(value: str, candidates) -> str:
    """'; did you mean 'x'?' for the nearest candidate, or '' when none is close."""
    near = nearest(value, candidates)
    return f"; did you mean {near!r}?" if near else ""


def not_one_of(where: str, value: str, names, candidates=None) -> str:
    """The one message for a value outside a fixed set of choices (an option's or a config key's)."""
    return (f"{where} {value!r} is not one of {', '.join(names)}"
            f"{did_you_mean(value, names if candidates is None else candidates)}")


def unknown_key(key: str, allowed, where: str) -> ConfigError:
    near = nearest(key, allowed)
    hint = f" (did you mean {near!r}?)" if near else ""
    return ConfigError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def typed_options(table: Mapping[str, Any], where: str, allowed) -> dict[str, Any]:
    """Check the keys and value types of a table of selection options; aliases resolved."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in allowed:
            raise unknown_key(key, allowed, where)
        canon = ALIASES.get(key, key)
        if canon in out:
            raise ConfigError(f"{where}: {key!r} given twice (as {canon!r} and its alias)")
        if canon in TYPES:
            out[canon] = TYPES[canon](value, f"{where}: {key}")
        else:
            out[canon] = value
    return out


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config: its selection options (typed, not yet validated) and raw check tables."""

    path: str
    options: Mapping[str, Any]
    checks: tuple[Mapping[str, Any], ...]

    def origin(self, key: str) -> str:
        return f"{self.path}: {key}"


def load(path: str) -> ConfigFile:
    """Read and type-check one TOML config; every problem is a ConfigError naming the file."""
    try:
        data = tomllib.loads(files.read_limited(path).decode("utf-8"))
    except files.TooLarge as e:
        raise ConfigError(f"{path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8)") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: nested too deep") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    options = typed_options({k: v for k, v in data.items()}, path, TOP_KEYS)
    options["pythonpath"] = config_pythonpath(options.get("pythonpath", ()), path)  # absolute
    checks = options.pop("check", [])
    if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
        raise ConfigError(f"{path}: check: expected [[check]] tables")
    return ConfigFile(path, options, tuple(checks))


def config_pythonpath(dirs: tuple[str, ...], path: str) -> tuple[str, ...]:
    """A config's ``pythonpath`` (relative to the config's directory), then that directory: where
    its impl: modules are looked for, as absolute paths."""
    base = os.path.dirname(os.path.abspath(path))
    return (*pythonpath_dirs(dirs, base, f"{path}: pythonpath"), base)


def pythonpath_dirs(dirs, base: str, where: str) -> tuple[str, ...]:
    """Directories for impl: modules, made absolute against ``base``; each must exist."""
    out = []
    for d in dirs:
        full = os.path.normpath(os.path.join(base, os.path.expanduser(d)))
        if not os.path.isdir(full):
            raise ConfigError(f"{where} {d!r}: no such directory ({full})")
        out.append(full)
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------- values -> Settings


def _choices(values: tuple[str, ...], names: tuple[str, ...], what: str, where: str,
             extra: str = "") -> tuple[str, ...]:
    if "all" in values:
        return names
    for v in values:
        if v not in names and not (extra and v.startswith(extra)):
            raise ConfigError(f"{where}: unknown {what} {v!r}; choose from {', '.join(names)}, all"
                              + (f" or {extra}module:function" if extra else "")
                              + did_you_mean(v, (*names, "all")))
    return tuple(dict.fromkeys(values))


DTYPE_SPELLINGS = (*dtypes.NAMES, "all", *dtypes.ALIASES)  # what a dtype may be given as


def check_dtypes(values: tuple[str, ...], where: str) -> tuple[str, ...]:
    """Dtype names or aliases (any case, or "all") -> canonical names, in order, once each."""
    if any(v.strip().lower() == "all" for v in values):
        return dtypes.NAMES
    out = []
    for v in values:
        name = dtypes.canonical(v)
        if name is None:
            raise ConfigError(f"{where}: unknown dtype {v!r}; choose from {', '.join(dtypes.NAMES)}, all "
                              f"(or an alias, e.g. fp16, bf16, f32){did_you_mean(v, DTYPE_SPELLINGS)}")
        out.append(name)
    return tuple(dict.fromkeys(out))


def _one_of(value: str, names, what: str, where: str) -> str:
    if value not in names:
        raise ConfigError(f"{where}: unknown {what} {value!r}; choose from {', '.join(names)}"
                          + did_you_mean(value, names))
    return value


def parse_range(text: str, where: str) -> tuple[float, float]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise ConfigError(f"{where} {text!r} is malformed; write LO:HI, e.g. -40:40")
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise ConfigError(f"{where} {text!r} is malformed; LO and HI must be numbers, e.g. -40:40") from None


def check_range(rng: tuple[float, float] | str, where: str, infinite: bool = False) -> tuple[float, float]:
    """LO < HI, finite (``infinite``: +-inf allowed, for an exhaustive walk of the dtype)."""
    lo, hi = parse_range(rng, where) if isinstance(rng, str) else rng
    shown = repr(rng) if isinstance(rng, str) else f"[{lo!r}, {hi!r}]"
    if math.isnan(lo) or math.isnan(hi) or not (infinite or (math.isfinite(lo) and math.isfinite(hi))):
        raise ConfigError(f"{where} {shown}: bounds must be finite numbers")
    if lo >= hi:
        raise ConfigError(f"{where} {shown}: LO must be less than HI")
    if not infinite and not math.isfinite(hi - lo):
        raise ConfigError(f"{where} {shown} is too wide: HI - LO overflows a float64")
    return lo, hi


def check_eps(values: tuple[float, ...], where: str) -> tuple[float, ...]:
    for e in values:
        if not (math.isfinite(e) and 0 <= e < 0.5):
            raise ConfigError(f"{where} {e!r} is out of range; it must be in [0, 0.5)")
    return tuple(dict.fromkeys(values))


def check_thresholds(values: tuple[float, ...], where: str) -> tuple[float, ...]:
    for t in values:
        if not (math.isfinite(t) and 0 < t < 1):
            raise ConfigError(f"{where} {t!r} is out of range; it must be in (0, 1)")
    return tuple(dict.fromkeys(values))


def check_grid(values: Mapping[str, Any], origin, default_range: tuple[float, float] = DEFAULT_RANGE) -> dict:
    exhaustive = bool(values.get("exhaustive", False))
    if exhaustive:
        meaningless = [k for k in ("points", "step", "spacing") if k in values]
        if meaningless:
            flag = origin(meaningless[0])
            raise ConfigError(f"{flag} and {origin('exhaustive')}: an exhaustive grid is every dtype value "
                              f"in the range; {flag} means nothing with it")
    rng = check_range(values["range"], origin("range"), exhaustive) if "range" in values else default_range
    spacing = _one_of(values.get("spacing", "lin"), SPACINGS, "spacing", origin("spacing"))
    points, step = values.get("points"), values.get("step")
    if points is not None and step is not None:
        raise ConfigError(f"{origin('points')} and {origin('step')}: use points or step, not both")
    if step is not None:
        where = origin("step")
        if not (math.isfinite(step) and step > 0):
            raise ConfigError(f"{where} {step!r} must be a positive number")
        if spacing == "log":
            raise ConfigError(f"{where} needs {origin('spacing')} lin; use points with log spacing")
        if not math.isfinite((rng[1] - rng[0]) / step):
            raise ConfigError(f"{where} {step!r} gives more than {MAX_POINTS:,} points over the range")
        n = step_count(rng[0], rng[1], step)
        if n > MAX_POINTS:
            raise ConfigError(f"{where} {step!r} gives {n:,} points; the most is {MAX_POINTS:,}")
        if n < 2:
            raise ConfigError(f"{where} {step!r} leaves fewer than 2 points in the range")
    points = DEFAULT_POINTS if points is None else points
    if not 2 <= points <= MAX_POINTS:
        raise ConfigError(f"{origin('points')} {points} is out of range; it must be 2 to {MAX_POINTS:,}")
    return {"range": rng, "points": points, "step": step, "spacing": spacing}


def check_formulas(names: tuple[str, ...], kind: str, where: str) -> tuple[str, ...]:
    """Validate formula names and the spelling of ``impl:`` ones, importing nothing."""
    names = _choices(names, formulas.NAMES, "formula", where, extra=impl.PREFIX)
    for n in names:
        if impl.is_impl(n):
            try:
                impl.check(n, kind)
            except impl.ImplError as e:
                raise ConfigError(f"{where}: {e}") from None
    return names


def resolve_formulas(names: tuple[str, ...], kind: str, where: str,
                     pythonpath: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Validate formula names and import any ``impl:`` ones (ImplError becomes ConfigError)."""
    names = check_formulas(names, kind, where)
    for n in names:
        if impl.is_impl(n):
            try:
                formulas.register_impl(n, kind, pythonpath)
            except impl.ImplError as e:
                raise ConfigError(f"{where}: {e}") from None
    return names


def build_settings(values: Mapping[str, Any], origin, default_dtypes=("float32",),
                   with_grid: bool = True, default_range: tuple[float, float] = DEFAULT_RANGE) -> Settings:
    """Validate merged option values into Settings; ``origin(key)`` says where a key came from."""
    kind = _one_of(values.get("kind", "bce-logits"), impl.KINDS, "implementation kind", origin("kind"))
    chosen = check_dtypes(values.get("dtypes", ()), origin("dtypes"))
    grid = check_grid(values, origin, default_range) if with_grid else {}
    backend = _one_of(values.get("backend", "numpy"), backends.NAMES, "backend", origin("backend"))
    keras_backend = _one_of(values.get("keras_backend", KERAS_BACKENDS[0]), KERAS_BACKENDS, "Keras backend",
                            origin("keras_backend"))
    device = _one_of(values.get("device", "cpu"), ("cpu", "cuda"), "device", origin("device"))
    if device != "cpu" and backend != "torch":
        raise ConfigError(f"{origin('device')} {device}: only the torch backend runs on cuda")
    reference = _one_of(values.get("reference", "fast"), ("fast", "mpmath"), "reference", origin("reference"))
    exhaustive = bool(values.get("exhaustive", False)) and with_grid
    if exhaustive:
        if "range" not in values:  # every finite value: by default only of the 8- and 16-bit dtypes
            wide = [d for d in chosen or default_dtypes if not dtypes.get(d).exhaustive]
            if wide:
                raise ConfigError(f"{origin('exhaustive')}: give {origin('range')} for {', '.join(wide)} "
                                  "(--range=-inf:inf walks every value: many core-hours, see --scheduler)")
            grid = {**grid, "range": (-math.inf, math.inf)}
        for d in chosen or default_dtypes:
            n = exhaustive_count(d, grid["range"])
            if n > MAX_EXHAUSTIVE:
                raise ConfigError(f"{origin('exhaustive')}: {n:,} {d} values in the range, more than "
                                  f"{MAX_EXHAUSTIVE:,}; narrow --range (or use --points)")
            if n < 1:
                raise ConfigError(f"{origin('range')}: no {d} value lies in the range")
    return Settings(
        exhaustive=exhaustive and with_grid,
        backend=backend, device=device, keras_backend=keras_backend, grad=bool(values.get("grad", False)),
        reference=reference,
        dtypes=chosen or default_dtypes,
        eps=check_eps(values.get("eps", DEFAULT_EPS), origin("eps")),
        formulas=resolve_formulas(values.get("formulas", ("all",)), kind, origin("formulas"),
                                  pythonpath_dirs(values.get("pythonpath", ()), os.getcwd(),
                                                  origin("pythonpath"))),
        label=_one_of(values.get("label", "both"), LABELS, "label", origin("label")),
        mode=_one_of(values.get("mode", "native"), formulas.MODES, "mode", origin("mode")),
        thresholds=check_thresholds(values.get("thresholds", DEFAULT_THRESHOLDS), origin("thresholds")),
        **grid,
    )


def check_timeout(value: float, where: str) -> float:
    """Seconds an impl: call may take (0: no limit)."""
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{where} {value!r} must be a number of seconds, 0 or more")
    return value


def check_rows_option(value: int | str | None, where: str, fmt: str) -> int | None:
    """Grid rows to keep: N evenly spread (2 to MAX_ROWS), or None for every row ("all", and the
    default of the streaming formats)."""
    if value is None:
        return None if fmt in STREAMING else 11
    if value == "all":
        if fmt not in STREAMING:
            raise ConfigError(f"{where} all: a {fmt} output keeps at most {MAX_ROWS} rows; write every row "
                              f"with --format jsonl, csv or parquet")
        return None
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{where} {value!r} is not a number of rows; give 2 to {MAX_ROWS}, or all "
                          "(with --format jsonl, csv or parquet)") from None
    if not 2 <= n <= MAX_ROWS:
        raise ConfigError(f"{where} {n} is out of range; it must be 2 to {MAX_ROWS}, or all "
                          "(with --format jsonl, csv or parquet)")
    return n


def format_for(path: str | None) -> str:
    """The format an output file's extension names (table when it names none)."""
    return EXTENSIONS.get(os.path.splitext(path or "")[1].lower(), "table")
