"""Advice: the fix, not only the diagnosis (issue 13).

For one (formula, dtype, mode, eps) over a logit range: what goes wrong (its key points in the
range, one line each), then the fixes, best first. Every fix is verified: the audit is run again
with the fix applied, through the same engine (`sweep.run_sweep`, `sweep.audit_grid`,
`gate.run_check`), and judged figure by figure (`verdict`): a fix makes nothing worse and brings
the error within the tolerance, a partial fix makes nothing worse, a trade-off makes one figure
worse; a candidate with no real gain is not shown. The candidates:

- ``logits``: the with-logits rewrite, as the framework the formula models spells it;
- ``eps``: for clipping formulas, the smallest eps whose clip bounds survive the dtype and mode
  (``eps`` above 0, ``1 - eps`` below 1 and the two apart once rounded, as the framework rounds
  them), and the eps that minimises the worst error over the range;
- ``precision``: the loss computed in float32 (dtypes narrower than float32);
- ``builtin``: for user code, and for a built-in with no full fix above, the built-in formula
  that does best on its dtype.

The figures are the inf/nan count and the worst error over the range: max ULP where the dtype is
unchanged (there max rel may not grow either), max relative error where the fix changes the
dtype (ULPs of two dtypes do not compare). Measuring and searching live here; the words, in
`advise_view`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import replace

import numpy as np

from bce_audit import dtypes, formulas, gate, gradients, impl, sweep
from bce_audit.advise_view import (
    NOTES,
    eps_text,
    limits_text,
    line,
    problem_lines,
    range_text,
    unsafe_text,
    where,
)
from bce_audit.config import ConfigError
from bce_audit.records import (
    DEFAULT_EPS,
    Advice,
    Audited,
    EpsChoice,
    Fix,
    KeyPoint,
    Move,
    SafeEps,
    Settings,
    Target,
    tail,
)

TOLERANCE_ULP = 4.0  # the worst error, in ULPs of the dtype, below which there is nothing to fix
EPS_CEILING = 0.1  # the largest eps the best-eps search tries
# the eps tried: every power of two and of ten below 0.5
EPS_CANDIDATES = tuple(sorted({2.0 ** -k for k in range(1, 64)} | {10.0 ** -k for k in range(1, 20)}))


# ---------------------------------------------------------------- the frameworks' spellings

# formula -> (framework, the with-logits formula that models its with-logits call, the call, a snippet)
_KERAS_SNIPPET = ('outputs = keras.layers.Dense(1)(h)  # no activation="sigmoid"\n'
                  'model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))\n'
                  'p = keras.ops.sigmoid(model(x))  # probabilities, where needed')
_NUMPY_CALL = "np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))"
_NUMPY = ("numpy", "logits-stable", _NUMPY_CALL, f"# x: logits, not probabilities\nloss = {_NUMPY_CALL}")
REWRITES: dict[str, tuple[str, str, str, str]] = {
    "keras3": ("Keras 3", "logits-stable", "keras.losses.BinaryCrossentropy(from_logits=True)",
               _KERAS_SNIPPET),
    "keras3-torch": ("Keras 3 (torch backend)", "torch-bce-logits",
                     "keras.losses.BinaryCrossentropy(from_logits=True)", _KERAS_SNIPPET),
    "tf-keras": ("tf.keras", "logits-stable", "tf.keras.losses.BinaryCrossentropy(from_logits=True)",
                 'outputs = tf.keras.layers.Dense(1)(h)  # no activation="sigmoid"\n'
                 'model.compile(loss=tf.keras.losses.BinaryCrossentropy(from_logits=True))\n'
                 'p = tf.math.sigmoid(model(x))  # probabilities, where needed'),
    "keras2-logits": ("Keras 2 (TensorFlow)", "logits-stable",
                      "tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)",
                      "loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)  # x: logits"),
    "torch-bce": ("PyTorch", "torch-bce-logits", "torch.nn.BCEWithLogitsLoss()",
                  "loss_fn = torch.nn.BCEWithLogitsLoss()  # not BCELoss on torch.sigmoid(x)\n"
                  "loss = loss_fn(x, y)  # x: logits"),
    "naive": _NUMPY,
    "sklearn": _NUMPY,
}
_KERAS_XLA = ("Keras 3 (jax backend)", "optax", "keras.losses.BinaryCrossentropy(from_logits=True)",
              _KERAS_SNIPPET)
# the with-logits formulas' own calls (for the best built-in of user code)
CALLS = {
    "logits-stable": "tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)",
    "torch-bce-logits": "torch.nn.BCEWithLogitsLoss()",
    "optax": "optax.sigmoid_binary_cross_entropy(x, y)",
    "keras-sigmoid-logits": "keras.losses.BinaryCrossentropy() on keras.ops.sigmoid(x) (TensorFlow)",
    "keras3": "keras.losses.BinaryCrossentropy()",
    "keras3-torch": "keras.losses.BinaryCrossentropy() (torch backend)",
    "keras3-numpy": "keras.losses.BinaryCrossentropy() (numpy backend)",
    "tf-keras": "tf.keras.losses.BinaryCrossentropy()",
    "keras2-logits": "keras.losses.binary_crossentropy (Keras <= 2.2.4)",
    "torch-bce": "torch.nn.BCELoss()",
    "sklearn": "sklearn.metrics.log_loss",
    "naive": "-(y*log(p) + (1-y)*log(1-p))",
}
PREFERRED = ("logits-stable", "torch-bce-logits", "optax")  # the with-logits calls, plainest first
_NARROW_POLICY = {"float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}


def _framework(formula: str) -> str:
    if formula.startswith(("keras", "tf-keras")):
        return "keras"
    if formula.startswith("torch"):
        return "torch"
    return {"optax": "jax", "logits-stable": "tensorflow"}.get(formula, "numpy")


def _keras_module(formula: str) -> str:
    """How the formula's Keras is imported: ``tf.keras`` (Keras 2, in TensorFlow) or ``keras``."""
    return "tf.keras" if formula in ("tf-keras", "keras2-logits") else "keras"


def _precision_call(formula: str, dtype: str) -> tuple[str, str]:
    """The call that computes the loss in float32, and a snippet, for the formula's framework."""
    fw = _framework(formula)
    if fw == "keras":
        policy = _NARROW_POLICY.get(dtype, "mixed_float16")
        keras = _keras_module(formula)
        call = f'{keras}.layers.Dense(1, activation="sigmoid", dtype="float32")'
        return call, (f'{keras}.mixed_precision.set_global_policy("{policy}")\n'
                      f"last = {call}\n"
                      "outputs = last(h)  # the last layer in float32: the loss sees float32")
    if fw == "torch":
        name = "binary_cross_entropy_with_logits(x" if formula == "torch-bce-logits" else \
            "binary_cross_entropy(torch.sigmoid(x)"
        return "x.float()", f"x, y = x.float(), y.float()  # float32 before the loss\n" \
                            f"loss = torch.nn.functional.{name}, y)"
    if fw == "jax":
        return "x.astype(jnp.float32)", "loss = optax.sigmoid_binary_cross_entropy(x.astype(jnp.float32), y)"
    if fw == "tensorflow":
        return "tf.cast(x, tf.float32)", (
            "x, y = tf.cast(x, tf.float32), tf.cast(y, tf.float32)\n"
            "loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)")
    return "x.astype(np.float32)", "x = x.astype(np.float32)  # compute the loss in float32"


# ---------------------------------------------------------------- measuring


def _settings(t: Target, grad: bool, keep: int | None = 0) -> Settings:
    eps = t.eps if t.eps is not None else DEFAULT_EPS[0]
    return Settings(dtypes=(t.dtype,), formulas=(t.formula,), eps=(eps,),
                    mode=t.mode, label="both" if t.label == "pair" else t.label, range=t.range,
                    points=t.points, grad=grad, keep=keep)


def _uses_eps(formula: str) -> bool:
    return formulas.get(formula).uses_eps


def measure(t: Target, memo: dict | None = None) -> Audited:
    """The audit of ``t`` through the sweep's engine: the worst BCE error over the grid (every
    selected label), the worst gradient error, and the formula's key points (loss and gradient).
    ``memo``: audits already run for this advice, by target."""
    if memo is not None and t in memo:
        return memo[t]
    a = _measure(t)
    if memo is not None:
        memo[t] = a
    return a


def _measure(t: Target) -> Audited:
    grad = gradients.has_grad(t.formula)
    r = sweep.run_sweep(_settings(t, grad))
    labels = t.labels
    bce = [w for w in r.worst if w.formula == t.formula and w.quantity == "bce" and w.label in labels]
    found = [w for w in bce if w.x is not None]
    grads = [w for w in r.worst if w.formula == t.formula and w.quantity == "grad" and w.label in labels
             and w.x is not None]
    kps = tuple(k for k in r.keypoints if k.formula == t.formula and k.label in labels)
    # no finite result measured: None, not 0 (0 would read as exact)
    return Audited(t.formula, t.dtype, t.mode, t.eps if _uses_eps(t.formula) else None, t.range, t.points,
                   max((w.max_ulp for w in found), default=None),
                   max((w.max_bits for w in found), default=None),
                   max((w.max_rel for w in found), default=None), sum(w.nonfinite for w in bce),
                   max((w.max_ulp for w in grads), default=None) if grads else None, kps)


def _quick(t: Target) -> tuple[int, float, float]:
    """The grid figures only (no key points): inf/nan count, max ULP, max rel (inf where no
    finite result was measured: the worst, for ranking). For the searches."""
    s = sweep.native(_settings(t, False))
    series = [w for w in sweep.audit_grid(s, t.dtype, set())[0]
              if w.formula == t.formula and w.quantity == "bce" and w.label in t.labels]
    found = [w for w in series if w.x is not None]
    return (sum(w.nonfinite for w in series), max((w.max_ulp for w in found), default=math.inf),
            max((w.max_rel for w in found), default=math.inf))


def _figure(before: Audited, after: Audited) -> str:
    return "max_ulp" if before.dtype == after.dtype else "max_rel"


MIN_GAIN = 4.0  # an error must shrink by this factor (two bits) or more to count as a gain: a bit is noise


def _error(a: Audited, figure: str) -> float:
    """The error figure, inf where nothing finite was measured (nothing is known to be right)."""
    v = getattr(a, figure)
    return math.inf if v is None or math.isnan(v) else float(v)


def within(a: Audited, tolerance: float) -> bool:
    """No inf/nan, and the worst error within ``tolerance`` ULPs of its own dtype."""
    return a.nonfinite == 0 and a.max_ulp is not None and a.max_ulp <= tolerance


def verdict(before: Audited, after: Audited, tolerance: float) -> str | None:
    """How a candidate fix compares, figure by figure (the inf/nan count; the worst error, as
    max ULP within a dtype, where max rel must not grow either, and as max rel across dtypes):
    "fix" (none worse, within the tolerance), "partial" (none worse, a real gain, still outside
    it), "trade-off" (one better, one worse) or None (no real gain: an error less than
    `MIN_GAIN` times smaller is noise, not a fix)."""
    figure = _figure(before, after)
    e0, e1 = _error(before, figure), _error(after, figure)
    n0, n1 = before.nonfinite, after.nonfinite
    fewer = n1 < n0
    smaller = e1 * MIN_GAIN <= e0 or (e1 == 0 < e0) or (math.isinf(e0) and math.isfinite(e1))
    worse = n1 > n0 or e1 > e0
    if figure == "max_ulp":  # within a dtype the relative error must not grow either (beyond noise)
        worse = worse or _error(after, "max_rel") > MIN_GAIN * _error(before, "max_rel")
    if not (fewer or smaller):
        return None
    if worse:
        return "trade-off"
    return "fix" if within(after, tolerance) else "partial"


# ---------------------------------------------------------------- key points


def in_range(k: KeyPoint, rng: tuple[float, float]) -> bool:
    return rng[0] <= k.x <= rng[1]


def _ideal(k: KeyPoint, kps: Sequence[KeyPoint]) -> bool:
    """A zero that a correctly rounded result would also have (the loss or gradient underflows
    there), or a vanishing gradient where it does: no problem."""
    if k.name == "grad_vanishing":
        zero = next((z for z in kps if z.name == "grad_dead_zone" and z.label == k.label
                     and tail(z) == tail(k)), None)
        return zero is not None and _ideal(zero, kps) and abs(k.x) >= abs(zero.x)
    if k.name not in ("bce_zero", "grad_dead_zone") or k.predicts != "x" or k.predicted is None:
        return False
    slack = 4 * float(dtypes.get(k.dtype).finfo.eps)
    return abs(k.x) >= abs(k.predicted) * (1 - slack)


def problems(a: Audited) -> list[KeyPoint]:
    """The key points that spoil the range: inside it, and not what exact rounding gives."""
    return [k for k in a.keypoints if in_range(k, a.range) and not _ideal(k, a.keypoints)]


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def moves(before: Audited, after: Audited) -> list[Move]:
    """The problem key points that vanish, move or appear with a fix: one record each, loss
    before gradient, and in each what the fix costs first (new), then moved, then gone."""
    def keyed(a: Audited) -> dict[tuple, KeyPoint]:
        return {(k.name, str(k.label), tail(k)): k for k in problems(a)}

    b, a = keyed(before), keyed(after)
    out: list[Move] = []
    for key in (*b, *(k for k in a if k not in b)):
        old, new = b.get(key), a.get(key)
        if old is not None and new is not None and old.x == new.x and _same(old.value, new.value):
            continue
        status = "gone" if new is None else "new" if old is None else "moved"
        k = new or old
        assert k is not None
        out.append(Move(status, k.name, str(k.label), "gradient" if k.name.startswith("grad") else "loss",
                        old.x if old else None, new.x if new else None,
                        old.value if old else None, new.value if new else None,
                        line(old) if old else "", line(new) if new else ""))
    order = {"loss": 0, "gradient": 1}, {"new": 0, "moved": 1, "gone": 2}
    return sorted(out, key=lambda m: (order[0][m.quantity], order[1][m.status]))


# ---------------------------------------------------------------- the fixes


def clip_bounds(formula: str, eps: float, dtype: str, mode: str) -> tuple[float, float]:
    """The clip bounds the formula really uses in the dtype and mode (as its framework rounds
    and, where it flushes subnormals, flushes them)."""
    ev = formulas.Evaluator(dtype, formulas.framework_mode(mode, formula))
    lo, hi = formulas.clip_bounds(formulas.get(formula), eps, ev)
    lo_v = float(np.asarray(formulas.flush(np.asarray(lo)) if ev.ftz else lo, dtype=np.float64))
    return lo_v, float(np.asarray(hi, dtype=np.float64))


def _safe(formula: str, eps: float, dtype: str, mode: str) -> bool:
    lo, hi = clip_bounds(formula, eps, dtype, mode)
    return 0 < lo < hi < 1


def safe_candidates(formula: str, dtype: str, mode: str) -> list[float]:
    """The eps of `EPS_CANDIDATES` up to `EPS_CEILING` whose clip bounds survive the dtype and
    mode, smallest first."""
    return [e for e in EPS_CANDIDATES if e <= EPS_CEILING and _safe(formula, e, dtype, mode)]


def safe_eps(t: Target, memo: dict | None = None) -> SafeEps | None:
    """For a clipping formula: the current eps's bounds, the smallest eps whose bounds are
    distinct from 0 and 1 (and from each other) in the dtype and mode, and the eps (of
    `EPS_CANDIDATES`, from that one up to `EPS_CEILING`) that minimises the worst error over the
    range; for each of the two, the floor and ceiling it implies over the range, measured."""
    if impl.is_impl(t.formula) or not _uses_eps(t.formula) or t.eps is None:
        return None
    lo, hi = clip_bounds(t.formula, t.eps, t.dtype, t.mode)
    safe = safe_candidates(t.formula, t.dtype, t.mode)
    if not safe:
        return SafeEps(t.eps, lo, hi, 0 < lo < hi < 1)
    scores = {e: _quick(replace(t, eps=e)) for e in safe}
    best = min(safe, key=lambda e: (scores[e][0], scores[e][1], e))

    def choice(e: float) -> EpsChoice:
        a = measure(replace(t, eps=e), memo)
        found: dict = {}
        for name, what in LIMITS:
            k = limit(a, name)
            if k is not None:
                found.update({what: k.value, f"{what}_x": k.x, f"{what}_where": where(k)})
        return EpsChoice(e, *clip_bounds(t.formula, e, t.dtype, t.mode), **found)

    return SafeEps(t.eps, lo, hi, 0 < lo < hi < 1, choice(safe[0]), choice(best), len(safe), scores[best][1])


LIMITS = (("bce_floor", "floor"), ("bce_ceiling", "ceiling"))


def limit(a: Audited, name: str) -> KeyPoint | None:
    """The floor or ceiling (``name``) an eps implies over the range: label 1's, else the first
    label's, and only where it lies in the range."""
    found = [k for k in a.keypoints if k.name == name and in_range(k, a.range)]
    return next((k for k in found if k.label == 1), found[0] if found else None)


def _verified(before: Audited, t: Target, kind: str, title: str, call: str, snippet: str,
              note: str = "", memo: dict | None = None, tolerance: float = TOLERANCE_ULP) -> Fix | None:
    """The fix, measured, with its `verdict`; None when it brings no real gain (not shown)."""
    after = measure(t, memo)
    figure = _figure(before, after)
    v = verdict(before, after, tolerance)
    if v is None:
        same = (after.nonfinite, _error(after, figure)) == (before.nonfinite, _error(before, figure))
        if not (same and len(problems(after)) < len(problems(before))):
            return None
        v = "fix" if within(after, tolerance) else "partial"  # the same figures, fewer key points
    changed = moves(before, after)
    if before.grad_max_ulp is None and not any(k.name.startswith("grad") for k in before.keypoints):
        changed = [m for m in changed if m.quantity == "loss"]  # no gradient before: nothing to compare
        dead = [line(k) for k in problems(after) if k.name.startswith("grad")]
        if dead:
            note = "; ".join([*([note] if note else []), "its gradient: " + "; ".join(dead)])
    return Fix(kind, title, call, snippet, after, figure, tuple(changed), note=note, verdict=v)


VERDICTS = ("fix", "partial", "trade-off")  # best first


def _rank(f: Fix) -> tuple:
    """Fixes, then partial fixes, then trade-offs; within each, fewest inf/nan first, then the
    decade of the worst relative error (which compares across dtypes), then max ULP (within a
    dtype, the finer figure)."""
    rel = math.inf if f.after.max_rel is None else f.after.max_rel
    ulp = math.inf if f.after.max_ulp is None else f.after.max_ulp
    decade = math.ceil(math.log10(rel)) if rel > 0 and math.isfinite(rel) else \
        -math.inf if rel == 0 else math.inf
    return VERDICTS.index(f.verdict), f.after.nonfinite, decade, ulp


def fixes(t: Target, before: Audited, eps_info: SafeEps | None, memo: dict | None = None,
          tolerance: float = TOLERANCE_ULP) -> tuple[list[Fix], int]:
    """Every fix that brings a real gain, best first (`_rank`), and how many candidates ran."""
    out: list[Fix | None] = []
    user = impl.is_impl(t.formula)
    rewrite = _KERAS_XLA if t.formula == "keras3" and t.mode == "xla" else \
        (_NUMPY if user else REWRITES.get(t.formula))
    if rewrite is not None:
        fw, target, call, snippet = rewrite
        mode = "per-op" if fw == "numpy" and t.mode == "native" else t.mode
        drop = " without the sigmoid" if (fw != "numpy" and "Keras" in fw) or fw == "tf.keras" else ""
        out.append(_verified(before, replace(t, formula=target, mode=mode, eps=None), "logits",
                             f"{fw}: {call}{drop}", call, snippet, f"measured as {target} ({mode})", memo,
                             tolerance))
    if eps_info is not None and eps_info.smallest is not None and eps_info.best is not None:
        chosen = [("smallest safe", eps_info.smallest.eps)]
        if eps_info.best.eps != eps_info.smallest.eps:
            chosen.append(("best over the range", eps_info.best.eps))
        for what, e in chosen:
            if e == t.eps:
                continue
            fix = _verified(before, replace(t, eps=e), "eps", f"eps = {eps_text(e)} ({what})",
                            f"eps={e!r}", _eps_snippet(t.formula, e), memo=memo, tolerance=tolerance)
            out.append(fix if fix is None else replace(fix, note=limits_text(
                [(what, k) for name, what in LIMITS if (k := limit(fix.after, name)) is not None])))
    if dtypes.get(t.dtype).narrow:
        call, snippet = _precision_call(t.formula, t.dtype)
        out.append(_verified(before, replace(t, dtype="float32"), "precision",
                             f"compute the loss in float32: {call}", call, snippet, memo=memo,
                             tolerance=tolerance))
    return sorted((f for f in out if f is not None), key=_rank), len(out)


FRAMEWORKS = {"keras": "Keras", "torch": "PyTorch", "jax": "JAX", "tensorflow": "TensorFlow",
              "numpy": "NumPy"}


def _eps_snippet(formula: str, e: float) -> str:
    fw = _framework(formula)
    if fw == "keras":
        keras = _keras_module(formula)
        return f"{keras}.backend.set_epsilon({e!r})  # the clip: [eps, 1 - eps]"
    return f"p = np.clip(p, {e!r}, 1 - {e!r})"


def builtin_fix(t: Target, before: Audited, check: gate.Check | None = None,
                tolerance: float = TOLERANCE_ULP, skip: Collection[str] = ()) -> Fix | None:
    """The built-in formula that does best on the dtype and range (measured in ``t``'s mode),
    other than ``t``'s own and those in ``skip`` (already advised); with a gate check, the best
    one that passes it. Where the target is itself a built-in of another framework, the title
    says so."""
    prefer = [*PREFERRED, *formulas.NAMES]  # ties go to the plain with-logits calls
    names = [n for n in formulas.NAMES if n != t.formula and n not in skip]
    ranked = sorted(names, key=lambda n: (*_quick(replace(t, formula=n, eps=DEFAULT_EPS[0])),
                                          prefer.index(n)))
    for name in ranked:
        verdict_ = ""
        if check is not None:
            verdict_ = gate.run_check(_applied(check, name, t.dtype, DEFAULT_EPS[0], t.mode)).status
            if verdict_ != "PASS":
                continue
        title = f"use the built-in {name}: {CALLS[name]}"
        other = " other" if len(names) < len(formulas.NAMES) else ""  # than the target and the rewrite
        fw, own = _framework(name), _framework(t.formula)
        if not impl.is_impl(t.formula) and fw != own:
            title += f", a {FRAMEWORKS[fw]} call ({t.formula} is {FRAMEWORKS[own]}'s)"
        fix = _verified(before, replace(t, formula=name, eps=DEFAULT_EPS[0] if _uses_eps(name) else None),
                        "builtin", title, CALLS[name], "",
                        f"best of the {len(ranked)}{other} built-ins on {t.dtype} ({t.mode})",
                        tolerance=tolerance)
        return replace(fix, gate=verdict_) if fix is not None else None
    return None


# ---------------------------------------------------------------- the advice


def advise(t: Target, tolerance: float = TOLERANCE_ULP, check: gate.Check | None = None) -> Advice:
    """What goes wrong with ``t`` and the verified fixes, best first; with a gate ``check``, each
    fix also says whether the check passes with it applied."""
    memo: dict[Target, Audited] = {}
    before = measure(t, memo)
    bad = problems(before)
    eps_info = safe_eps(t, memo)
    unsafe = unsafe_text(eps_info, t.dtype, t.mode) if eps_info is not None and not eps_info.safe else ""
    lines = problem_lines(before, bad, tolerance, unsafe)
    ok = not lines
    notes = [NOTES[t.formula]] if t.formula in NOTES else []
    found: list[Fix] = []
    tried = 0
    if not ok:
        found, tried = fixes(t, before, eps_info, memo, tolerance)
        if impl.is_impl(t.formula) or not any(f.verdict == "fix" for f in found):
            best = builtin_fix(t, before, check, tolerance, skip={f.after.formula for f in found})
            tried += 1
            if best is not None:
                found = sorted([*found, best], key=_rank)
        if check is not None:
            found = [f if f.gate else replace(f, gate=_gate_with(check, f.after)) for f in found]
    return Advice(before, t.label, tolerance, ok, tuple(lines), tuple(found), eps_info,
                  check.name if check is not None else "", tuple(notes), tried)


def _applied(check: gate.Check, formula: str, dtype: str, eps: float | None, mode: str) -> gate.Check:
    """A gate check with a fix applied: another formula, dtype, eps or mode, the limits unchanged."""
    uses = not impl.is_impl(formula) and _uses_eps(formula)
    if isinstance(check, gate.GridCheck):
        return replace(check, formula=formula, dtypes=(dtype,), mode=mode,
                       eps=eps if uses and eps is not None else check.eps)
    return replace(check, formula=formula, dtypes=(dtype,), mode=mode,
                   eps=(eps if eps is not None else DEFAULT_EPS[0]) if uses else None)


def _gate_with(check: gate.Check, after: Audited) -> str:
    return gate.run_check(_applied(check, after.formula, after.dtype, after.eps, after.mode)).status


def targets_of(check: gate.Check) -> list[Target]:
    """What a gate check audits, as advice targets (one a dtype); none for the round trip and
    the bare sigmoid, which no BCE fix changes."""
    if check.formula is None or check.formula in gate.QUANTITIES:
        return []
    if formulas.get(check.formula).kind != "bce":  # a user sigmoid or logit: the round trip
        return []
    if isinstance(check, gate.GridCheck):
        g = check.grid
        rng = (float(g["range"][0]), float(g["range"][1]))
        points = g["points"] if g.get("step") is None else sweep.grid_size(
            Settings(range=rng, step=g["step"], points=g["points"]), check.dtypes[0])
        return [Target(check.formula, d, check.mode, check.eps, check.label, rng, points)
                for d in check.dtypes]
    label = "pair" if check.label == "pair" else str(check.label)
    return [Target(check.formula, d, check.mode, check.eps, label) for d in check.dtypes]


def advise_checks(checks: Sequence[gate.Check], results: Sequence | None = None,
                  tolerance: float = TOLERANCE_ULP) -> list[Advice]:
    """Advice for every failing check of a gate (run here unless ``results`` are given)."""
    results = gate.run(checks) if results is None else results
    out: list[Advice] = []
    for c, r in zip(checks, results, strict=True):
        if r.ok or r.error:
            continue
        out += [advise(t, tolerance, c) for t in targets_of(c)]
    return out


def holds(dtype: str, rng: tuple[float, float]) -> bool:
    """Whether a finite value of ``dtype`` lies in ``rng``."""
    info = dtypes.get(dtype)
    first, last = dtypes.exhaustive_bounds(info, rng)
    return first <= last and -info.max_ordinal <= last and first <= info.max_ordinal


def targets(s: Settings) -> list[Target]:
    """The advice targets of a selection: each dtype, formula and (for clipping formulas) eps.
    A user sigmoid or logit is a `ConfigError`: the advice is about BCE."""
    for name in s.formulas:
        kind = formulas.get(name).kind
        if kind != "bce":
            raise ConfigError(f"--formula {name}: advise covers BCE formulas, and this is a {kind} "
                              "(--impl-kind bce-logits or bce-probs)")
    points = sweep.grid_size(replace(s, exhaustive=False), s.dtypes[0]) if s.step is not None else s.points
    out: list[Target] = []
    for d in s.dtypes:
        if not holds(d, s.range):
            lo, hi = range_text(s.range)
            raise ConfigError(f"--range {lo}:{hi}: no finite {d} value lies in it; nothing to measure")
        for name in s.formulas:
            for e in s.eps if _uses_eps(name) else (None,):
                out.append(Target(name, d, s.mode, e, s.label, s.range, points))
    return out
