"""The precision gate: checks as data, measured, then judged.

Two kinds of check: a *grid* check bounds a formula's error over a logit grid (max ULP, rel,
abs, bits; non-finite results fail unless allowed); a *key-point* check bounds where a key
point falls or what it is worth. ``Check.measure()`` computes the figures and
``Check.fails(m)`` returns the list of broken limits (empty: pass), so every check runs and
every failure is reported before the exit code is decided.

A key point that does not exist (the round trip never overflows, a formula has no floor)
means the problem never happens in the dtype's range: its limits pass.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bce_audit import backends, config, formulas, gradients, impl, keypoints, records, sweep
from bce_audit.config import ConfigError
from bce_audit.records import CheckResult

GRID_LIMITS = ("max_ulp", "max_rel", "max_abs", "max_bits")
KEYPOINT_LIMITS = ("min_x", "max_x", "min_value", "max_value")
QUANTITIES = ("sigmoid", "roundtrip")  # built-in quantities a grid check may bound instead of a BCE
CHECK_LABELS = ("1", "0", "both", "pair")


@dataclass(frozen=True)
class Measurement:
    """What one check measured: named figures, and the input where it was worst.

    ``found``: the key points a key-point check measured, kept for its ``fails`` (not reported).
    """

    figures: Mapping[str, float | None]
    worst: dict | None = None
    note: str = ""
    found: tuple[records.KeyPoint, ...] = ()


@dataclass(frozen=True, kw_only=True)
class _Runs:
    """How a check runs its formula, the same for grid and key-point checks (keyword-only: they
    come after each check's own fields)."""

    timeout: float | None = None  # seconds each impl: call may take (None: --impl-timeout)
    keras_backend: str = records.KERAS_BACKENDS[0]  # with backend "keras"
    impl_kind: str = impl.KINDS[0]  # what an impl: formula computes
    pythonpath: tuple[str, ...] = ()  # where its impl: module is looked for (absolute directories)


@dataclass(frozen=True)
class GridCheck(_Runs):
    name: str
    formula: str
    dtypes: tuple[str, ...]
    mode: str
    eps: float
    label: str
    grid: dict
    limits: dict[str, float]
    allow_nonfinite: bool = False
    kind: str = "grid"
    backend: str = "numpy"
    grad: bool = False  # bound the gradient d BCE / dx instead of the loss

    def identity(self) -> dict:
        """What is measured (not the limits): baselines are tied to it."""
        return {"name": self.name, "kind": self.kind, "formula": self.formula,
                "dtypes": list(self.dtypes), "mode": self.mode, "eps": self.eps, "label": self.label,
                "grid": {k: list(v) if isinstance(v, tuple) else v for k, v in self.grid.items()},
                "backend": self.backend, "grad": self.grad, **_keras_identity(self)}

    def _labels(self) -> tuple:
        return {"1": (1,), "0": (0,), "both": (1, 0), "pair": ("pair",)}[self.label]

    def measure(self) -> Measurement:
        """The figures over every grid point, reduced chunk by chunk by the sweep's engine."""
        basics = self.formula in QUANTITIES
        g = self.grid
        s = sweep.native(records.Settings(
            dtypes=self.dtypes, eps=(self.eps,), mode=self.mode, label="both",
            formulas=() if basics else (self.formula,), backend=self.backend, grad=self.grad,
            keras_backend=self.keras_backend,
            range=tuple(g["range"]), points=g["points"], step=g["step"], spacing=g["spacing"], keep=0))
        series = [w for d in self.dtypes for w in sweep.audit_grid(s, d, set())[0] if self._selects(w)]
        found = [w for w in series if w.x is not None]
        figures = {
            "max_ulp": max((w.max_ulp for w in found), default=0.0),
            "max_rel": max((w.max_rel for w in found), default=0.0),
            "max_abs": max((w.max_abs for w in found), default=0.0),
            "max_bits": max((w.max_bits for w in found), default=0.0),
            "nonfinite": float(sum(w.nonfinite for w in series)),
            "points": float(sum(w.points for w in series)),
        }
        bad = next((w for w in series if w.nonfinite), None) if not self.allow_nonfinite else None
        worst = None
        if bad is not None:
            worst = {"x": bad.nonfinite_x, "label": bad.label, "dtype": bad.dtype,
                     "computed": bad.nonfinite_value, "exact": bad.nonfinite_exact}
        elif found:
            top = found[0]
            for w in found[1:]:  # the first of the largest, as one pass over the rows finds it
                if w.max_ulp > top.max_ulp:
                    top = w
            worst = {"x": top.x_dtype, "label": top.label, "dtype": top.dtype, "computed": top.value,
                     "exact": top.exact}
        return Measurement(figures, worst)

    def _selects(self, r: records.Worst) -> bool:
        if self.formula in QUANTITIES:
            return r.quantity == self.formula and r.formula is None
        if r.formula != self.formula:
            return False
        if r.quantity in ("bce", "grad"):
            return r.quantity == ("grad" if self.grad else "bce") and r.label in self._labels()
        return True

    def fails(self, m: Measurement) -> list[str]:
        out = []
        for key, limit in self.limits.items():
            got = m.figures[key]
            assert got is not None  # a grid check's figures are all numbers
            if got > limit:
                out.append(f"{key} {_fmt(got)} > {_fmt(limit)}")
        if m.figures["nonfinite"] and not self.allow_nonfinite:
            out.append(f"{int(m.figures['nonfinite'])} non-finite results (allow_nonfinite = false)")
        return out


@dataclass(frozen=True)
class KeypointCheck(_Runs):
    name: str
    keypoint: str
    dtypes: tuple[str, ...]
    mode: str
    formula: str | None
    eps: float | None
    label: int | str | None
    threshold: float | None
    limits: dict[str, float]
    kind: str = "keypoint"
    backend: str = "numpy"
    side: str = "both"  # key points found on each tail (bce_nonfinite, grad_*): which x sign counts

    def identity(self) -> dict:
        return {"name": self.name, "kind": self.kind, "keypoint": self.keypoint, "dtypes": list(self.dtypes),
                "mode": self.mode, "formula": self.formula, "eps": self.eps, "label": self.label,
                "threshold": self.threshold, "backend": self.backend, "side": self.side,
                **_keras_identity(self)}

    def matches(self) -> list[records.KeyPoint]:
        found: list[records.KeyPoint] = []
        backend = backends.get(self.backend, "cpu", self.keras_backend)
        mode = sweep.native(records.Settings(mode=self.mode, backend=self.backend,
                                             keras_backend=self.keras_backend)).mode
        for d in self.dtypes:
            if self.keypoint.startswith("roundtrip"):
                user = formulas.get(self.formula) if self.formula else None
                thr = (self.threshold,) if self.threshold is not None else records.DEFAULT_THRESHOLDS
                kps = keypoints.roundtrip_points(d, mode, thr, user=user, backend=backend)
            elif self.keypoint.startswith("grad"):
                assert self.formula is not None and isinstance(self.label, int)  # see _keypoint_check
                kps = keypoints.grad_points(d, mode, self.formula, self.eps, self.label, backend)
            else:
                assert self.formula is not None and self.label is not None  # see _keypoint_check
                kps = keypoints.formula_points(d, mode, self.formula, self.eps, self.label, backend)
            found += [k for k in kps if k.name == self.keypoint
                      and (self.threshold is None or k.threshold == self.threshold)
                      and (self.side == "both" or (k.x < 0) == (self.side == "negative"))]
        return found

    def measure(self) -> Measurement:
        kps = self.matches()
        if not kps:
            return Measurement({"x": None, "value": None}, None, "absent: never happens in the dtype range")
        worst = max(kps, key=lambda k: len(self._broken(k)))
        return Measurement({"x": worst.x, "value": worst.value},
                           {"x": worst.x, "label": worst.label, "dtype": worst.dtype, "value": worst.value,
                            "predicted": worst.predicted}, found=tuple(kps))

    def _broken(self, k: records.KeyPoint) -> list[str]:
        out = []
        for key, limit in self.limits.items():
            got = k.x if key.endswith("_x") else k.value
            ok = got >= limit if key.startswith("min") else got <= limit
            if not ok:  # also false for nan
                out.append(f"{key.split('_')[1]} {_fmt(got)} {'<' if key.startswith('min') else '>'} "
                           f"{_fmt(limit)} ({k.dtype})")
        return out

    def fails(self, m: Measurement) -> list[str]:
        out = []
        for k in m.found:  # the key points measure() found: none when absent
            out += [b for b in self._broken(k) if b not in out]
        return out


Check = GridCheck | KeypointCheck


def _fmt(v) -> str:
    if v is None:
        return "-"
    v = float(v)
    if math.isnan(v) or math.isinf(v):
        return str(v)
    return f"{v:.6g}"


def run_check(check: Check) -> CheckResult:
    """Measure and judge one check. Its user function failing (at import or in a call: raising,
    returning garbage, hanging) makes it an errored result carrying the one-line message."""
    before = impl.TIMEOUT
    if check.timeout is not None:  # the check's own limit on its impl: calls
        impl.TIMEOUT = check.timeout
    try:
        if check.formula is not None and impl.is_impl(check.formula):
            formulas.register_impl(check.formula, check.impl_kind, check.pythonpath)
        m = check.measure()
    except impl.ImplError as e:
        return CheckResult(check.name, check.kind, False, [], {}, dict(check.limits), None,
                           error=" ".join(str(e).split()))
    finally:
        impl.TIMEOUT = before
    failures = check.fails(m)
    return CheckResult(check.name, check.kind, not failures, failures, m.figures, dict(check.limits),
                       m.worst, m.note)


def run(checks: Sequence[Check]) -> list[CheckResult]:
    """Run every check; never stops at the first failure or error."""
    return [run_check(c) for c in checks]


# ---------------------------------------------------------------- checks from config tables

GRID_KEYS = ("name", "formula", "dtype", "dtypes", "mode", "eps", "label", "range", "points", "step",
             "spacing", "kind", "backend", "grad", *GRID_LIMITS, "allow_nonfinite", "timeout",
             "keras_backend")
KEYPOINT_KEYS = ("name", "keypoint", "formula", "dtype", "dtypes", "mode", "eps", "label", "threshold",
                 "kind", "backend", "side", "timeout", *KEYPOINT_LIMITS, "keras_backend")
SIDES = ("both", "positive", "negative")
INHERITED = ("dtypes", "mode", "eps", "label", "range", "points", "step", "spacing", "kind", "backend",
             "timeout", "keras_backend")
KEYPOINT_NAMES = (*keypoints.NAMES, *gradients.NAMES)


def checks_from(cf: config.ConfigFile) -> list[Check]:
    """Validate a config's [[check]] tables; top-level options are their defaults."""
    if not cf.checks:
        raise ConfigError(f"{cf.path}: no [[check]] tables: a gate config needs at least one")
    out = []
    for i, table in enumerate(cf.checks):
        out.append(_check(cf, i, table))
    return out


def _check(cf: config.ConfigFile, i: int, table: Mapping[str, Any]) -> Check:
    check = _check_table(cf, i, table)
    timeout = table.get("timeout", cf.options.get("timeout"))
    if timeout is None:
        return check
    where = f"{cf.path}: check[{i + 1}] ({check.name!r}): timeout"
    return replace(check, timeout=config.check_timeout(config._number(timeout, where), where))


def _check_table(cf: config.ConfigFile, i: int, table: Mapping[str, Any]) -> Check:
    name = table.get("name")
    where = f"{cf.path}: check[{i + 1}]" + (f" ({name!r})" if isinstance(name, str) else "")
    is_kp = "keypoint" in table
    allowed = KEYPOINT_KEYS if is_kp else GRID_KEYS
    for key in table:
        if key not in allowed:
            raise config.unknown_key(key, allowed, where)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: name: every check needs a non-empty string name")
    ignored = sorted(k for k in cf.options if k not in (*INHERITED, "pythonpath"))
    if ignored:
        raise ConfigError(f"{cf.path}: top-level {', '.join(ignored)}: [[check]] tables inherit only "
                          f"{', '.join(INHERITED)}; set the others in each check")
    values = {k: v for k, v in cf.options.items() if k in INHERITED}
    opts = config.typed_options({k: v for k, v in table.items()
                                 if k in config.TYPES or k in config.ALIASES}, where, allowed)
    values.update(opts)

    def origin(key: str) -> str:
        return f"{where}: {key}"

    chosen = config.check_dtypes(values.get("dtypes", ("float32",)), origin("dtypes"))
    mode = config._one_of(values.get("mode", "native"), formulas.MODES, "mode", origin("mode"))
    kind = config._one_of(values.get("kind", "bce-logits"), ("bce-logits", "bce-probs", "sigmoid", "logit"),
                          "implementation kind", origin("kind"))
    eps_all = config.check_eps(values.get("eps", records.DEFAULT_EPS), origin("eps"))
    if len(eps_all) != 1:
        raise ConfigError(f"{origin('eps')}: a check takes one eps, got {list(eps_all)}")
    eps = eps_all[0]
    backend = config._one_of(values.get("backend", "numpy"), backends.NAMES, "backend", origin("backend"))
    keras_backend = config._one_of(values.get("keras_backend", records.KERAS_BACKENDS[0]),
                                   records.KERAS_BACKENDS, "Keras backend", origin("keras_backend"))
    try:
        backends.get(backend, "cpu", keras_backend)
    except backends.BackendMissing as e:
        raise ConfigError(f"{origin('backend')}: {e}") from None
    limits_keys = KEYPOINT_LIMITS if is_kp else GRID_LIMITS
    limits = {}
    for key in limits_keys:
        if key in table:
            limits[key] = config._number(table[key], origin(key))
            if math.isnan(limits[key]):
                raise ConfigError(f"{origin(key)}: a limit must be a number, not nan")
    if not limits:
        raise ConfigError(f"{where}: no limit; give at least one of {', '.join(limits_keys)}")
    formula = table.get("formula")
    if formula is not None:
        formula = config._str(formula, origin("formula"))
    if is_kp:
        check = _keypoint_check(name, table, where, origin, chosen, mode, kind, eps, formula, limits)
        check = replace(check, impl_kind=kind, pythonpath=cf.options.get("pythonpath", ()))
        side = config._one_of(config._str(table.get("side", "both"), origin("side")), SIDES, "side",
                              origin("side"))
        roundtrip = check.keypoint.startswith("roundtrip")
        kp_formula = None if roundtrip else check.formula
        _check_backend_formula(backend, kp_formula, check.keypoint.startswith("grad"), origin("formula"),
                               keras_backend)
        return replace(check, backend=backend, side=side, keras_backend=keras_backend)
    if formula is None:
        raise ConfigError(f"{origin('formula')}: a grid check needs a formula: "
                          f"{', '.join((*formulas.NAMES, *QUANTITIES))} or impl:module:function")
    if formula not in QUANTITIES:
        config.check_formulas((formula,), kind, origin("formula"))
    label = config._one_of(config._label(values.get("label", "both"), origin("label")), CHECK_LABELS,
                           "label", origin("label"))
    grid = config.check_grid(values, origin)
    allow = config._bool(table.get("allow_nonfinite", False), origin("allow_nonfinite"))
    for key, limit in limits.items():
        if limit < 0:
            raise ConfigError(f"{origin(key)}: {limit!r} must be >= 0")
    grad = table.get("grad", False)  # a bool: typed_options checked it (config.TYPES)
    _check_backend_formula(backend, formula, grad, origin("formula"), keras_backend)
    return GridCheck(name, formula, chosen, mode, eps, label, grid, limits, allow, backend=backend, grad=grad,
                     keras_backend=keras_backend, impl_kind=kind,
                     pythonpath=cf.options.get("pythonpath", ()))


def _keras_identity(check: GridCheck | KeypointCheck) -> dict:
    """The Keras backend, in the identity of a keras check only (the others' baselines stay valid)."""
    return {"keras_backend": check.keras_backend} if check.backend == "keras" else {}


def _check_backend_formula(backend: str, formula: str | None, grad: bool, where: str,
                           keras_backend: str = records.KERAS_BACKENDS[0]) -> None:
    """A real backend audits only the formulas it has (and their gradients)."""
    if backend == "numpy" or formula is None or formula in QUANTITIES:
        return
    be = backends.get(backend, "cpu", keras_backend)
    assert be is not None  # None only for numpy
    if be.formula(formula) is None:
        raise ConfigError(f"{where}: {be.label} has no real counterpart of {formula!r}; it has "
                          f"{', '.join(be.bce)}")
    if grad and formula not in be.grad:
        raise ConfigError(f"{where}: {be.label} has no gradient of {formula!r}")


def _keypoint_check(name, table, where, origin, chosen, mode, kind, eps, formula, limits) -> KeypointCheck:
    kp = config._str(table["keypoint"], origin("keypoint"))
    kp = config._one_of(kp, KEYPOINT_NAMES, "key point", origin("keypoint"))
    threshold = None
    if "threshold" in table:
        threshold = config.check_thresholds((config._number(table["threshold"], origin("threshold")),),
                                            origin("threshold"))[0]
    if kp.startswith("roundtrip"):
        label = None
        if formula is not None:
            config.check_formulas((formula,), kind, origin("formula"))
            if not impl.is_impl(formula) or kind.startswith("bce"):  # the built-ins are all BCE
                raise ConfigError(f"{origin('formula')}: a round-trip key point takes no BCE formula "
                                  "(only a user sigmoid or logit)")
        if kp in ("roundtrip_rel_err_onset", "roundtrip_small_x_limit") and threshold is None:
            raise ConfigError(f"{origin('threshold')}: {kp} needs a threshold, e.g. 0.01")
        return KeypointCheck(name, kp, chosen, mode, formula, None, None, threshold, limits)
    if formula is None:
        raise ConfigError(f"{origin('formula')}: {kp} needs a formula: {', '.join(formulas.NAMES)}")
    config.check_formulas((formula,), kind, origin("formula"))
    raw = config._label(table.get("label", "1"), origin("label"))
    raw = config._one_of(raw, ("1", "0", "pair"), "label", origin("label"))
    label = raw if raw == "pair" else int(raw)
    if kp.startswith("grad") and label == "pair":
        raise ConfigError(f"{origin('label')}: gradient key points take label 1 or 0")
    uses_eps = not impl.is_impl(formula) and formulas.get(formula).uses_eps  # user code takes no eps
    return KeypointCheck(name, kp, chosen, mode, formula, eps if uses_eps else None, label, threshold,
                         limits)


def load_checks(paths: Sequence[str], pythonpath: Sequence[str] = ()) -> list[Check]:
    """All checks of several gate configs; names must be unique. Their impl: modules are looked
    for in ``pythonpath`` (--pythonpath, absolute), then each config's own pythonpath and
    directory. Nothing is imported here: a config error is found before any user code runs."""
    checks: list[Check] = []
    seen: dict[str, str] = {}
    for p in paths:
        for c in checks_from(config.load(p)):
            c = replace(c, pythonpath=tuple(dict.fromkeys((*pythonpath, *c.pythonpath))))
            if c.name in seen:
                raise ConfigError(f"{p}: check name {c.name!r} is used twice (also in {seen[c.name]})")
            seen[c.name] = p
            checks.append(c)
    return checks


def digest(checks: Sequence[Check]) -> str:
    """Fingerprint of what the checks measure (not their limits), for baselines."""
    text = json.dumps([c.identity() for c in checks], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
