"""`bce-audit advise` (issue 13): every fix verified, and the verified figures checked here
independently: through `api.sweep` and `api.gate`, against exact arithmetic (mpmath), and with
plain comparisons of the figures, never advise's own scoring."""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json
from hypothesis import example, given
from hypothesis import strategies as st
from mpmath import mp

from bce_audit import advise, advise_view, api, dtypes, formulas
from bce_audit.records import Advice, Audited, Fix

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def _worst(formula: str, dtype: str, eps: float | None = None, mode: str = "native") -> tuple[int, float]:
    """inf/nan count and max ULP of a formula's BCE over the default grid, every label, by api.sweep."""
    r = api.sweep(dtype=dtype, formula=formula, eps=eps, mode=mode, rows=2)
    ws = [w for w in r.worst if w.formula == formula and w.quantity == "bce"]
    return sum(w.nonfinite for w in ws), max(w.max_ulp for w in ws if w.x is not None)


def _fix(a, kind: str):
    return next(f for f in a.fixes if f.kind == kind)


def _err(before, after) -> tuple[float, float]:
    """The error figures a fix is judged on, before and after: max ULP within a dtype, max rel
    across dtypes (ULPs of two dtypes do not compare); None (nothing measured) as inf."""
    key = "max_ulp" if before.dtype == after.dtype else "max_rel"
    b, a = getattr(before, key), getattr(after, key)
    return (math.inf if b is None else b), (math.inf if a is None else a)


def _no_figure_worse(before, f) -> None:
    """A fix or partial fix: neither the inf/nan count nor the worst error got worse; a
    trade-off: one of them did."""
    b, a = _err(before, f.after)
    worse = f.after.nonfinite > before.nonfinite or a > b
    if before.dtype == f.after.dtype:  # max rel may not grow either, beyond a factor of 4 (noise)
        worse = worse or f.after.max_rel > 4 * before.max_rel
    assert worse == (f.verdict == "trade-off"), (f.kind, f.verdict, before.nonfinite, f.after.nonfinite, b, a)
    if f.verdict == "fix":
        assert f.after.nonfinite == 0 and f.after.max_ulp <= advise.TOLERANCE_ULP


@pytest.fixture(scope="module")
def keras3_f16():
    return api.advise(dtype="float16", formula="keras3", eps=1e-7)[0]


def test_issue_13_float16_keras3_safe_eps_verified(keras3_f16):
    a = keras3_f16
    assert not a.ok
    assert a.safe_eps is not None and not a.safe_eps.safe  # 1 - 1e-7 rounds to 1 in float16
    assert a.safe_eps.smallest is not None
    eps = a.safe_eps.smallest.eps
    # the definition, here with ml-free numpy: 1 - eps and eps stay apart from 1 and 0 in float16
    assert np.float16(1.0 - eps) < 1 and np.float16(eps) > 0
    assert all(np.float16(1.0 - e) == 1 for e in advise.EPS_CANDIDATES if e < eps)
    fix = _fix(a, "eps")
    assert fix.after.eps == eps
    before, after = _worst("keras3", "float16", 1e-7), _worst("keras3", "float16", eps)
    assert (a.before.nonfinite, a.before.max_ulp) == before
    assert (fix.after.nonfinite, fix.after.max_ulp) == after
    assert after[0] == 0 < before[0]  # the inf/nan are gone
    assert "floor" in fix.note and "ceiling" in fix.note


def test_issue_13_float16_keras3_from_logits_verified(keras3_f16):
    fix = _fix(keras3_f16, "logits")
    assert "keras.losses.BinaryCrossentropy(from_logits=True)" in fix.title
    assert 'Dense(1)(h)  # no activation="sigmoid"' in fix.snippet
    assert fix.after.formula == "logits-stable"  # Keras 3 on TensorFlow: from_logits=True runs it
    got = _worst("logits-stable", "float16")
    assert (fix.after.nonfinite, fix.after.max_ulp) == got
    assert got[0] == 0 and got[1] <= advise.TOLERANCE_ULP
    assert keras3_f16.fixes[0] is fix  # the best, and the answer given first
    text = advise_view.text([keras3_f16])
    first = "  Fix: Keras 3: keras.losses.BinaryCrossentropy(from_logits=True)"
    assert text.splitlines()[1].startswith(first)
    assert max(len(line) for line in text.splitlines()) <= 80


def test_every_fix_shown_improves_its_figure(keras3_f16):
    b = keras3_f16.before
    for f in keras3_f16.fixes:
        _no_figure_worse(b, f)
    assert _fix(keras3_f16, "precision").after.dtype == "float32"


def test_review_f3_a_fix_that_makes_the_error_worse_is_a_trade_off(keras3_f16):
    """float16 keras3, eps 1e-7: float32 loss and eps 2**-11 remove the 260 inf/nan but leave
    a far larger finite error (max rel 1 -> 2.8e10 and 1.2e14): trade-offs, never "Fix"."""
    b = keras3_f16.before
    for kind in ("precision", "eps"):
        f = _fix(keras3_f16, kind)
        assert f.verdict == "trade-off", kind
        assert f.after.nonfinite == 0 < b.nonfinite and f.after.max_rel > 1e9 * b.max_rel
    assert [f.verdict for f in keras3_f16.fixes] == ["fix", "trade-off", "trade-off"]
    text = advise_view.text([keras3_f16])
    assert "Trade-off, not a fix: it trades 260 inf/nan for a" in text
    assert "float32 loss (trade-off)" in text and "eps 4.88e-4 (trade-off)" in text


@pytest.mark.parametrize("eps", [1e-7, 0.4999])
def test_review_f3_keras3_numpy_eps_is_not_a_fix(eps):
    """float32 keras3-numpy: eps 2**-24 halves a 58-bit error (1 bit): no fix, and the answer is
    a built-in within the tolerance; with eps 0.4999 the same eps is a real gain, but partial."""
    [a] = api.advise(dtype="float32", formula="keras3-numpy", eps=eps)
    first = advise_view.answer(a)
    assert first.startswith("Fix: use the built-in "), first
    assert a.fixes[0].after.max_ulp <= advise.TOLERANCE_ULP and a.fixes[0].after.nonfinite == 0
    for f in a.fixes:
        _no_figure_worse(a.before, f)
        b, after = _err(a.before, f.after)
        assert after * 4 <= b or after == 0  # each shown gain at least two bits
    eps_fixes = [f for f in a.fixes if f.kind == "eps"]
    if eps == 1e-7:
        assert eps_fixes == []  # 2.882e17 -> 1.441e17 is one bit
    else:
        assert [f.verdict for f in eps_fixes] == ["partial"]


def _audited(nonfinite: int, ulp: float | None, dtype: str = "float16") -> Audited:
    rel = None if ulp is None else ulp * 1e-3
    return Audited("keras3", dtype, "native", 1e-7, (-40.0, 40.0), 101, ulp, None, rel, nonfinite, None, ())


@given(st.integers(0, 500), st.floats(0, 1e20), st.integers(0, 500), st.floats(0, 1e20))
@example(260, 1707.0, 0, 8192.0)            # inf/nan traded for a worse error (F3)
@example(0, 2.882e17, 0, 1.441e17)          # one bit: noise, no fix (F3)
@example(0, 1.632e17, 0, 1.631e17)          # --eps 0.4999 (F3)
@example(0, 1707.0, 0, 3.0)                 # within the tolerance: the fix
def test_verdict_never_calls_a_worse_figure_a_fix(n0, e0, n1, e1):
    before, after = _audited(n0, e0), _audited(n1, e1)
    v = advise.verdict(before, after, advise.TOLERANCE_ULP)
    gain = n1 < n0 or e1 * 4 <= e0 or (e1 == 0 < e0)
    assert (v is None) == (not gain)
    if v in ("fix", "partial"):
        assert n1 <= n0 and e1 <= e0
    if v == "fix":
        assert n1 == 0 and e1 <= advise.TOLERANCE_ULP
    if v == "trade-off":
        assert n1 > n0 or e1 > e0


def test_review_f3_answer_says_partial_and_trade_off():
    before = _audited(0, 1e6)
    partial = Fix("eps", "eps = 0.001", "eps=0.001", "", _audited(0, 1e3), "max_ulp", verdict="partial")
    trade = Fix("precision", "float32", "x", "", _audited(0, 1e9), "max_ulp", verdict="trade-off")
    a = Advice(before, "both", 4.0, False, ("worst error",), (partial,), tried=1)
    assert advise_view.answer(a).startswith("Best partial fix (still above 4 ULP): eps = 0.001.")
    b = Advice(_audited(5, 1e6), "both", 4.0, False, ("x",), (trade,), tried=1)
    assert advise_view.answer(b).startswith("No fix without a cost. Trade-off: float32: it trades 5 inf/nan")
    assert advise_view.answer(replace(a, fixes=(), tried=0)) == "No candidate fix applies."
    assert "none of the 3 candidates" in advise_view.answer(replace(a, fixes=(), tried=3))


def test_issue_13_logits_stable_float32_nothing_to_fix():
    [a] = api.advise(dtype="float32", formula="logits-stable")
    assert a.ok and a.fixes == () and a.problems == ()
    assert a.before.max_ulp == _worst("logits-stable", "float32")[1]
    out = ok("advise", "--dtype", "float32", "--formula", "logits-stable", "--no-cache")
    assert out.splitlines()[1].startswith("  Nothing to fix")


def test_a_fix_that_does_not_improve_is_not_shown():
    # Keras's numpy backend runs from_logits=True through the same clip: no with-logits fix there
    [a] = api.advise(dtype="float32", formula="keras3-numpy", range="0:8", points=33)
    assert all(f.kind != "logits" for f in a.fixes)


def test_issue_13_impl_poor_gets_a_builtin_that_passes_the_gate(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    found = api.advise(config="examples/gate-own-loss.toml")
    grid = next(a for a in found if a.check == "poor: within 4 ULP")
    fix = _fix(grid, "builtin")
    assert fix.gate == "PASS"
    # the same gate check, on the recommended built-in, run by the gate itself
    cfg = tmp_path / "gate.toml"
    cfg.write_text((ROOT / "examples/gate-own-loss.toml").read_text().replace(
        "impl:examples.poor_loss:bce_with_logits", fix.after.formula))
    results = {r.name: r for r in api.gate(cfg)}
    assert results["poor: within 4 ULP"].ok
    assert results["poor: within 4 ULP"].figures["max_ulp"] <= 4


@pytest.mark.parametrize("args", [
    ("--formula", "torch-bce", "--dtype", "float16", "--range", "-20:20"),
    ("--formula", "impl:examples.probs_loss:bce", "--impl-kind", "bce-probs", "--dtype", "bfloat16"),
    ("--formula", "tf-keras", "--dtype", "bfloat16", "--points", "41"),
])
def test_text_fits_80_columns_answer_first(args, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = ok("--color", "never", "advise", *args, "--no-cache")
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert out.splitlines()[1].startswith(("  Fix: ", "  Best partial fix", "  Nothing to fix", "  No fix"))


def test_markdown_parses():
    from markdown_it import MarkdownIt

    [a] = api.advise(dtype="float16", formula="torch-bce", range="-20:20", points=81)
    md = advise_view.markdown([a])
    tokens = MarkdownIt("commonmark").enable("table").parse(md)
    types = [t.type for t in tokens]
    assert "table_open" in types and "fence" in types and "heading_open" in types
    rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len({line.count("|") - line.count("\\|") for line in rows}) == 1  # every row as wide as the head
    assert "torch.nn.BCEWithLogitsLoss()" in md


def test_json_is_strict_and_versioned():
    out = ok("advise", "--dtype", "bfloat16", "--formula", "naive", "--format", "json", "--no-cache")
    doc = strict_json(out)
    assert doc["schema"] == "bce-audit/1" and len(doc["advice"]) == 1
    assert doc["advice"][0]["fixes"][0]["after"]["formula"] == "logits-stable"


def test_gate_advise_appends_the_advice(monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    md, js = tmp_path / "gate.md", tmp_path / "gate.json"
    r = run("--color", "never", "gate", "examples/gate-own-loss.toml", "--advise", "--markdown", str(md),
            "--json", str(js))
    assert r.exit_code == 1, r.stderr  # the gate's verdict is unchanged
    assert "Check 'poor: within 4 ULP' failed" in r.stdout
    # F9: the rewrite runs per-op (numpy), the built-ins were ranked native: each row says its mode
    assert "logits: logits-stable (per-op)" in r.stdout
    assert "best of the 11 other built-ins on float32 (native)" in r.stdout
    assert "## bce-audit advise" in md.read_text()
    doc = strict_json(js.read_text())
    assert {a["check"] for a in doc["advice"]} == {"poor: within 4 ULP", "poor: no loss floor above 1e-30"}
    assert all(f["gate"] in ("PASS", "FAIL") for a in doc["advice"] for f in a["fixes"])


@pytest.mark.parametrize(("args", "needle"), [
    (("--dtype", "f99", "--formula", "keras3"), "--dtype 'f99'"),
    (("--formula", "kerass3"), "did you mean 'keras3'"),
    (("--formula", "keras3", "--max-ulp", "-1"), "--max-ulp"),
    (("--formula", "keras3", "--format", "tabel"), "--format"),
    (("--config", "examples/gate-own-loss.toml", "--dtype", "float16"), "--dtype would be ignored"),
    (("--formula", "impl:no_such_module_here:f"), "no_such_module_here"),
])
def test_bad_input_is_one_line_exit_2(args, needle, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert_usage_error(run("advise", *args), needle)


def test_a_user_sigmoid_is_refused_in_one_line(tmp_path):
    (tmp_path / "mysig.py").write_text("def sig(x):\n    return 1 / (1 + (-x).__array__())\n")
    assert_usage_error(run("advise", "--formula", "impl:mysig:sig", "--impl-kind", "sigmoid",
                           "--pythonpath", str(tmp_path)), "advise covers BCE formulas", "sigmoid")


def test_safe_eps_follows_the_mode():
    """The clip bounds as the framework rounds them: TensorFlow (native keras3) flushes a
    float32 subnormal eps to 0 and keeps float16's (computed in float32); numpy keeps both."""
    tiny16 = float.fromhex("0x1p-23")  # 1.19e-07: float16(1e-7), a float16 subnormal
    lo_tf, _ = advise.clip_bounds("keras3", 1e-7, "float16", "native")
    lo_np, _ = advise.clip_bounds("keras3", 1e-7, "float16", "per-op")
    assert lo_np == float(np.float16(1e-7)) == tiny16
    assert lo_tf == tiny16  # TensorFlow computes float16 in float32, where 2**-23 is normal: kept
    sub32 = float(np.float32(1e-40))  # a float32 subnormal: TensorFlow's FTZ flushes it, numpy keeps it
    assert advise.clip_bounds("keras3", 1e-40, "float32", "native")[0] == 0.0
    assert advise.clip_bounds("keras3", 1e-40, "float32", "per-op")[0] == sub32 > 0
    assert advise.clip_bounds("keras3", 1e-7, "bfloat16", "per-op")[1] == float(ml_dtypes.bfloat16(1 - 1e-7))
    assert not math.isnan(advise.clip_bounds("keras3", 1e-3, "float32", "native")[1])


def test_golden_first_example():
    """The README's first example, byte for byte (BCE_AUDIT_REGEN=1 rewrites the file)."""
    out = ok("--color", "never", "advise", "--dtype", "float16", "--formula", "keras3", "--eps", "1e-7",
             "--no-cache")
    path = GOLDEN / "advise_keras3_float16.txt"
    if os.environ.get("BCE_AUDIT_REGEN") == "1":
        path.write_text(out, encoding="utf-8")
    assert out == path.read_text(encoding="utf-8")
    assert max(len(line) for line in out.splitlines()) <= 80


CLIPPING = [n for n in formulas.NAMES if formulas.get(n).uses_eps]


def _survives(name: str, e: float, dtype: str) -> bool:
    """eps and 1 - eps, each rounded once to the dtype the formula clips in, stay off 0 and 1:
    numpy alone. ``np.clip`` on a float16/bfloat16/float8 array with Python floats clips in
    the dtype numpy promotes to (float64 for ml_dtypes' types), so the bounds live there."""
    dt = dtypes.get(dtype).dtype
    clip = formulas.get(name).clip
    if clip is not None and clip.np_clip:
        dt = np.clip(np.asarray([0.5], dt), e, 1 - e).dtype
    return bool(np.asarray(1 - e, dt) < 1 and np.asarray(e, dt) > 0)


@pytest.mark.parametrize("dtype", dtypes.NAMES)
@pytest.mark.parametrize("mode", ["native", "per-op", "upcast"])
def test_smallest_safe_eps_over_every_dtype(dtype, mode):
    """Invariant: the smallest safe eps survives the dtype (checked with numpy directly, not
    advise's clip bounds), and in per-op mode (numpy's own rounding) no smaller candidate does."""
    for name in CLIPPING:
        safe = advise.safe_candidates(name, dtype, mode)
        assert safe, (name, dtype, mode)
        assert _survives(name, safe[0], dtype), (name, safe[0])
        if mode == "per-op" and dtype != "longdouble":
            smaller = [e for e in advise.EPS_CANDIDATES if e < safe[0] and _survives(name, e, dtype)]
            assert smaller == [], (name, smaller[:1])


@pytest.mark.parametrize("dtype", [d for d in dtypes.NAMES if d != "longdouble"])
def test_every_fix_improves_over_every_dtype(dtype):
    """Invariant: a shown fix lowers its figure; the stable loss needs none where it is within 4 ULP."""
    [a] = api.advise(dtype=dtype, formula="keras3", range="-20:20", points=41)
    assert not a.ok
    for f in a.fixes:
        _no_figure_worse(a.before, f)
        b, after = _err(a.before, f.after)
        assert f.after.nonfinite < a.before.nonfinite or after * 4 <= b or after == 0 < b, (dtype, f.kind)
    assert [f.kind for f in a.fixes][:1] == ["logits"]
    assert a.fixes[0].verdict == "fix"


def _resolve(path: str):
    """An attribute path as the advice spells it (``tf.nn.x``, ``torch.nn.X``), imported."""
    import importlib

    top, *rest = path.split(".")
    obj = importlib.import_module({"tf": "tensorflow", "np": "numpy", "jnp": "jax.numpy"}.get(top, top))
    for name in rest:
        obj = getattr(obj, name)
    return obj


# each with-logits call the advice names -> how the audited backends call the same thing
BACKEND_SPELLING = {
    "keras.losses.BinaryCrossentropy(from_logits=True)": "from_logits=True",
    "tf.keras.losses.BinaryCrossentropy(from_logits=True)": "from_logits=True",
    "tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)": "tf.nn.sigmoid_cross_entropy_with_logits(",
    "torch.nn.BCEWithLogitsLoss()": "F.binary_cross_entropy_with_logits(",
    "optax.sigmoid_binary_cross_entropy(x, y)": "optax.sigmoid_binary_cross_entropy(",
}


def test_calls_are_the_ones_the_backends_run():
    """The with-logits calls advised are those the real-framework backends audit (by the name
    they call them), so the measured model stands for the call named."""
    sources = "".join((ROOT / "bce_audit" / f).read_text() for f in ("backends.py", "keras_runner.py"))
    named = {r[2] for r in advise.REWRITES.values()} | {advise._KERAS_XLA[2], advise.CALLS["optax"],
                                                         advise.CALLS["torch-bce-logits"]}
    for call in named - {advise._NUMPY_CALL}:
        assert BACKEND_SPELLING[call] in sources, call


@pytest.mark.slow
def test_calls_exist_in_the_installed_frameworks():
    import inspect

    for call in BACKEND_SPELLING:
        pytest.importorskip({"tf": "tensorflow"}.get(call.split(".")[0], call.split(".")[0]))
        obj = _resolve(call.split("(")[0])
        if "from_logits=True" in call:
            assert "from_logits" in inspect.signature(obj).parameters, call
        assert callable(obj), call


def test_review_t2_safe_eps_limits_against_exact_arithmetic(keras3_f16):
    """float16, eps 2**-11: the floor is -log1p(-2**-11) and the ceiling -log(2**-11) = 11 ln 2,
    exactly (mpmath); the measured ones lie within one float16 ULP, on their own tails."""
    s = keras3_f16.safe_eps.smallest
    eps = float.fromhex("0x1p-11")  # 4.88e-04
    assert s.eps == eps
    with mp.workprec(200):
        floor, ceiling = -mp.log1p(-mp.mpf(eps)), -mp.log(mp.mpf(eps))
        assert abs(ceiling - 11 * mp.log(2)) < mp.mpf(2) ** -150
        floor, ceiling = float(floor), float(ceiling)
    for got, exact in ((s.floor, floor), (s.ceiling, ceiling)):
        assert abs(got - exact) <= float(np.spacing(np.float16(exact))), (got, exact)
    assert s.floor_where.startswith("x >= ") and s.ceiling_where.startswith("x <= ")
    text = advise_view.text([keras3_f16])
    assert "floor 4.883e-4 from x >= 7.91; ceiling 7.625 from" in text  # one helper, both places
    assert "floor 4.883e-4 from x >= 7.91; ceiling 7.625 from x <= -7.625" in _fix(keras3_f16, "eps").note


def test_review_f10_limits_only_in_the_range():
    """A floor or ceiling outside the range is not what the eps implies there."""
    [a] = api.advise(dtype="float16", formula="keras3", eps=1e-7, range="-5:5", points=41)
    s = a.safe_eps
    assert s is not None and s.smallest is not None and s.smallest.eps == float.fromhex("0x1p-11")
    assert s.smallest.floor is None and s.smallest.ceiling is None  # at x >= 7.91 and x <= -7.625


def test_review_f4_a_range_the_dtype_cannot_hold_is_refused():
    assert_usage_error(run("advise", "--dtype", "float16", "--formula", "keras3", "--range=100000:100001"),
                       "--range 100000:100001", "no finite float16 value")
    assert advise.holds("float16", (65504.0, 1e6)) and not advise.holds("float16", (1000.1, 1000.2))
    # measured directly (as a gate check would): nothing finite measured is None, never 0
    t = advise.Target("keras3", "float16", range=(1e5, 100001.0), points=11)
    a = advise.measure(t)
    assert a.max_ulp is None and a.max_rel is None and a.nonfinite > 0
    assert advise_view.range_text(t.range) == ("100000", "100001")  # not "1e5" twice
    assert advise_view.range_text((-40.0, 40.0)) == ("-40", "40")


def test_review_f5_key_points_at_zero_on_their_tail():
    """eps 0.4999 in float16: both bounds round to 0.5, the loss is a constant from x = 0 on
    both tails: the floor on label 1's good tail, the cap on its bad one; the clip is not safe."""
    assert not advise._safe("keras3", 0.4999, "float16", "native")
    [a] = api.advise(dtype="float16", formula="keras3", eps=0.4999)
    assert "y=1 x >= 0: loss floors at 0.6934 (clip at 1-eps)" in a.problems
    assert "y=1 x <= 0: loss caps at 0.6934 (clip at eps)" in a.problems
    assert "y=0 x <= 0: loss floors at 0.6934 (clip at eps)" in a.problems
    assert any("both round to 0.5 in float16 (native)" in p for p in a.problems)


def test_review_f6_a_better_builtin_of_another_framework():
    """torch-bce-logits in float32 (y=0 loss 0 from x <= -14.56): optax (JAX) does better."""
    [a] = api.advise(dtype="float32", formula="torch-bce-logits")
    first = advise_view.answer(a)
    assert first.startswith("Fix: use the built-in optax: optax.sigmoid_binary_cross_entropy(x, y), "
                            "a JAX call")
    assert "(torch-bce-logits is PyTorch's)" in first
    assert a.tried >= 1 and a.fixes[0].after.formula == "optax"
    assert a.fixes[0].after.max_ulp <= advise.TOLERANCE_ULP
    assert a.fixes[0].after.max_ulp == _worst("optax", "float32")[1]


@pytest.mark.parametrize(("eps", "needle"), [
    (1e-7, "eps 1e-7: the upper bound 1 - eps rounds to 1 in float16 (native)"),
    (0.0, "eps is 0: the clip does nothing"),
])
def test_review_f7_the_bound_that_collapses(eps, needle):
    [a] = api.advise(dtype="float16", formula="keras3", eps=eps, range="-20:20", points=41)
    assert a.problems[0].startswith(needle), a.problems[0]
