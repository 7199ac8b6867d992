"""Baselines: every check's measured figures, saved, and the regression gate against them.

A baseline file is versioned JSON tied to the configs it was saved from (a digest of what
the checks measure). One from another schema or another config is refused, never misread.
Files are written atomically (temporary file + rename).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from bce_audit import __version__, files, records
from bce_audit.config import ConfigError
from bce_audit.gate import Check, digest
from bce_audit.records import CheckResult

SCHEMA = "bce-audit-baseline/1"
# Schema history: bce-audit-baseline/1 (0.1.0): checks -> {kind, figures}.
DEFAULT_TOLERANCE = records.BASELINE_TOLERANCE  # a figure may worsen by 10% of its baseline before it counts
SLACK = {"max_ulp": 0.5, "max_bits": 0.1}  # and by these absolute amounts (rounding noise)
GRID_FIGURES = ("max_ulp", "max_rel", "max_abs", "max_bits", "nonfinite")


def _float(v):
    return float(v) if isinstance(v, str) else v


def document(checks: Sequence[Check], results: Sequence[CheckResult], configs: Sequence[str],
             tolerance: float) -> dict:
    return {
        "schema": SCHEMA, "version": __version__, "configs": list(configs), "digest": digest(checks),
        "tolerance": tolerance,
        "checks": {r.name: {"kind": r.kind, "figures": dict(r.figures)}
                   for r in results},
    }


def write_atomic(path: str, text: str) -> None:
    """Write text so that an interrupted run never leaves a half-written file."""
    try:
        files.write_text(path, text)
    except files.WriteError as e:
        raise ConfigError(str(e)) from None


def save(path: str, checks, results, configs, tolerance: float = DEFAULT_TOLERANCE) -> None:
    write_atomic(path, records.to_json(document(checks, results, configs, tolerance)))


def load(path: str, checks: Sequence[Check]) -> dict:
    """Read a baseline and make sure it belongs to these checks; ConfigError otherwise."""
    try:
        doc = json.loads(files.read_limited(path).decode("utf-8"))
    except files.TooLarge as e:
        raise ConfigError(f"{path}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a bce-audit baseline (nested too deep)") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such baseline file; create it with "
                          "`bce-audit baseline save`") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read baseline: {e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not a bce-audit baseline (invalid JSON: {e.msg} "
                          f"at line {e.lineno})") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if schema != SCHEMA:
        raise ConfigError(f"{path}: baseline schema {schema!r} is not {SCHEMA!r}; save it again with "
                          "`bce-audit baseline save`")
    if doc.get("digest") != digest(checks):
        raise ConfigError(f"{path}: baseline was saved from another config (configs "
                          f"{', '.join(doc.get('configs', [])) or '?'}; the checks differ); save it again")
    _validate(path, doc)
    return doc


def _number_like(v) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, (int, float)) or v is None:
        return True
    return v in ("inf", "-inf", "nan")


def _validate(path: str, doc: dict) -> None:
    """Every entry the regression gate reads must be there and of the right type."""
    checks = doc.get("checks")
    if not isinstance(checks, dict) or not checks:
        raise ConfigError(f"{path}: baseline has no checks: nothing to compare against; save it again "
                          "with `bce-audit baseline save`")
    tol = doc.get("tolerance", DEFAULT_TOLERANCE)
    if not _number_like(tol) or isinstance(tol, str) or tol is None or not (math.isfinite(tol) and tol >= 0):
        raise ConfigError(f"{path}: tolerance {tol!r} must be a number >= 0")
    if not isinstance(doc.get("configs", []), list):
        raise ConfigError(f"{path}: configs must be a list of file names")
    for name, entry in checks.items():
        figures = entry.get("figures") if isinstance(entry, dict) else None
        if not isinstance(figures, dict):
            raise ConfigError(f"{path}: check {name!r}: expected {{\"kind\": ..., \"figures\": {{...}}}}")
        for key, v in figures.items():
            if not _number_like(v) or v == "nan":  # nan compares false with everything: no regression
                raise ConfigError(f"{path}: check {name!r}: figure {key!r} = {v!r} is not a number")


def regressions(check: Check, result: CheckResult, old: dict, tolerance: float) -> list[str]:
    """The figures of one check that got worse than the baseline beyond the tolerance."""
    if old is None:
        return []
    before = {k: _float(v) for k, v in old.get("figures", {}).items()}
    now = result.figures
    out = []
    if result.kind == "grid":
        for key in GRID_FIGURES:
            b, n = before.get(key), now.get(key)
            if b is None or n is None:
                continue
            allowed = b + max(tolerance * abs(b), SLACK.get(key, 0.0))
            if n > allowed:
                out.append(f"{key} {n:.6g} worse than baseline {b:.6g} (tolerance {tolerance:g})")
        return out
    b_x, n_x = before.get("x"), now.get("x")
    if b_x is None and n_x is not None:
        return ["key point appeared: the baseline had none"]
    if b_x is None or n_x is None:
        return []
    limits = check.limits
    if "min_x" in limits:
        worse_x = n_x < b_x - tolerance * abs(b_x)
    elif "max_x" in limits or getattr(check, "keypoint", "") == "roundtrip_small_x_limit":
        worse_x = n_x > b_x + tolerance * abs(b_x)
    else:  # a problem that starts closer to zero starts earlier
        worse_x = abs(n_x) < abs(b_x) * (1 - tolerance)
    if worse_x:
        out.append(f"x {n_x:.8g} worse than baseline {b_x:.8g} (tolerance {tolerance:g})")
    b_v, n_v = before.get("value"), now.get("value")
    if b_v is not None and n_v is not None:
        if "min_value" in limits and n_v < b_v - tolerance * abs(b_v):
            out.append(f"value {n_v:.6g} below baseline {b_v:.6g} (tolerance {tolerance:g})")
        if "max_value" in limits and n_v > b_v + tolerance * abs(b_v):
            out.append(f"value {n_v:.6g} above baseline {b_v:.6g} (tolerance {tolerance:g})")
    return out
