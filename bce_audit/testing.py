"""A pytest helper: audit your own loss function inside your own test suite.

`assert_bce` evaluates ``fn`` on a logit grid in a dtype, measures it against the exact BCE
(the mpmath-backed baseline of every bce-audit command) and raises `AssertionError` naming the
worst input when it is more than ``max_ulp`` ULPs off or returns inf or nan. No pytest import:
a plain ``assert``-style failure that any test runner reports.

>>> import numpy as np
>>> def stable(x, y):
...     return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))
>>> w = assert_bce(stable, dtype="float32")
>>> w.max_ulp < 4
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bce_audit import api, config, records, sweep
from bce_audit.records import Worst

KINDS = ("bce-logits", "bce-probs")
DEFAULT_MAX_ULP = 4.0  # a BCE of a few correctly rounded ops: a couple of ULPs, with room
DEFAULT_POINTS = 2001
LABEL_SETS = {(0, 1): "both", (1,): "1", (0,): "0"}


def _labels(labels: int | Sequence[int]) -> tuple[int, ...]:
    items = (labels,) if isinstance(labels, int) else tuple(labels)
    out = tuple(sorted(set(items)))
    if out not in LABEL_SETS or any(isinstance(i, bool) for i in items):
        raise config.ConfigError(f"assert_bce(): labels {labels!r}: give 0, 1 or (0, 1)")
    return out


def _g(v: float | None) -> str:
    return "-" if v is None else repr(float(v))


def assert_bce(fn: Callable[..., Any], kind: str = "bce-logits", dtype: str = "float32",
               max_ulp: float = DEFAULT_MAX_ULP, range: tuple[float, float] | str = records.DEFAULT_RANGE,
               points: int = DEFAULT_POINTS, labels: int | Sequence[int] = (0, 1),
               mode: str = "native") -> Worst:
    """Assert ``fn`` computes BCE within ``max_ulp`` ULPs of the exact value, with no inf or nan,
    at every point of the grid (``points`` evenly spaced logits over ``range``) and label.

    ``fn(x, y)`` (``kind="bce-logits"``) or ``fn(p, y)`` (``"bce-probs"``, p = sigmoid(x) in the
    dtype) is called with numpy arrays of ``dtype`` and must return one of the same shape and
    dtype. Returns the `Worst` record of the largest error; raises AssertionError naming the
    worst input x (as given and as the dtype holds it), the label, the computed and exact values
    and the ULP error. Bad arguments are a ValueError naming the argument.

    >>> import numpy as np
    >>> def naive(x, y):
    ...     s = 1 / (1 + np.exp(-x))
    ...     return -(y * np.log(s) + (1 - y) * np.log(1 - s))
    >>> assert_bce(naive, dtype="float16", points=101, labels=1)
    Traceback (most recent call last):
    AssertionError: naive (bce-logits, float16): ...
    """
    __tracebackhide__ = True  # pytest shows the failing test's line, not this helper's
    if kind not in KINDS:
        raise config.ConfigError(f"assert_bce(): kind: unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    wanted = _labels(labels)
    if not isinstance(max_ulp, (int, float)) or isinstance(max_ulp, bool) or not max_ulp >= 0:
        raise config.ConfigError(f"assert_bce(): max_ulp {max_ulp!r} must be a number >= 0")
    s = api.settings("assert_bce", {"dtype": dtype, "formula": fn, "range": range, "points": points,
                                     "label": LABEL_SETS[wanted], "mode": mode, "kind": kind})
    if len(s.dtypes) != 1:
        raise config.ConfigError(f"assert_bce(): dtype {dtype!r}: give one dtype")
    name = s.formulas[-1]
    s = sweep.native(s)
    series = [w for w in sweep.audit_grid(s, s.dtypes[0], set())[0]
              if w.quantity == "bce" and w.formula == name and w.label in wanted]
    shown = getattr(fn, "__qualname__", name)
    head = f"{shown} ({kind}, {s.dtypes[0]})"
    grid = f"{points} points over {s.range[0]:g}:{s.range[1]:g}"
    problems = []
    for w in series:
        if w.nonfinite:
            problems.append(f"returned {_g(w.nonfinite_value)} at x = {_g(w.nonfinite_x)}, y = {w.label}: "
                            f"exact {_g(w.nonfinite_exact)} ({w.nonfinite} non-finite of {w.points})")
    found = [w for w in series if w.x is not None]
    top = max(found, key=lambda w: w.max_ulp, default=None)  # the first of the largest
    if top is not None and top.max_ulp > max_ulp:
        at = _g(top.x) + ("" if top.x_dtype == top.x else f" ({s.dtypes[0]} {_g(top.x_dtype)})")
        problems.insert(0, f"{top.max_ulp:.4g} ULP > max_ulp {max_ulp:g} at x = {at}, y = {top.label}: "
                           f"computed {_g(top.value)}, exact {_g(top.exact)}")
    if problems:
        raise AssertionError(f"{head}: " + "; ".join(problems) + f" ({grid})")
    assert top is not None  # a grid of finite results has a worst point
    return top
