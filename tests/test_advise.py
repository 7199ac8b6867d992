"""`bce-audit advise` (issue 13): every fix verified, and the verified figures checked here
independently, through `api.sweep` and `api.gate`, never copied constants."""

from __future__ import annotations

import math
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json

from bce_audit import advise, advise_view, api, dtypes, formulas

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"


def _worst(formula: str, dtype: str, eps: float | None = None, mode: str = "native") -> tuple[int, float]:
    """inf/nan count and max ULP of a formula's BCE over the default grid, every label, by api.sweep."""
    r = api.sweep(dtype=dtype, formula=formula, eps=eps, mode=mode, rows=2)
    ws = [w for w in r.worst if w.formula == formula and w.quantity == "bce"]
    return sum(w.nonfinite for w in ws), max(w.max_ulp for w in ws if w.x is not None)


def _fix(a, kind: str):
    return next(f for f in a.fixes if f.kind == kind)


@pytest.fixture(scope="module")
def keras3_f16():
    return api.advise(dtype="float16", formula="keras3", eps=1e-7)[0]


def test_issue_13_float16_keras3_safe_eps_verified(keras3_f16):
    a = keras3_f16
    assert not a.ok
    assert a.safe_eps is not None and not a.safe_eps["safe"]  # 1 - 1e-7 rounds to 1 in float16
    eps = a.safe_eps["smallest"]
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
        assert advise.score(f.after, f.figure) < advise.score(b, f.figure)
    assert _fix(keras3_f16, "precision").after.dtype == "float32"


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
    assert out.splitlines()[1].startswith(("  Fix: ", "  Nothing to fix", "  No fix"))


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
    subnormal eps to 0 in float16; numpy (per-op) keeps it."""
    lo_tf, _ = advise.clip_bounds("keras3", 1e-7, "float16", "native")
    lo_np, _ = advise.clip_bounds("keras3", 1e-7, "float16", "per-op")
    assert lo_np == float(np.float16(1e-7)) > 0
    assert lo_tf in (0.0, lo_np)
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


@pytest.mark.parametrize("dtype", dtypes.NAMES)
@pytest.mark.parametrize("mode", ["native", "per-op", "upcast"])
def test_smallest_safe_eps_over_every_dtype(dtype, mode):
    """Invariant: the smallest safe eps keeps both clip bounds inside (0, 1) as the framework
    rounds them, and no smaller candidate does."""
    for name in CLIPPING:
        safe = advise.safe_candidates(name, dtype, mode)
        assert safe, (name, dtype, mode)
        lo, hi = advise.clip_bounds(name, safe[0], dtype, mode)
        assert lo > 0 and hi < 1
        for e in advise.EPS_CANDIDATES:
            if e < safe[0]:
                lo, hi = advise.clip_bounds(name, e, dtype, mode)
                assert lo <= 0 or hi >= 1, (name, e)


@pytest.mark.parametrize("dtype", [d for d in dtypes.NAMES if d != "longdouble"])
def test_every_fix_improves_over_every_dtype(dtype):
    """Invariant: a shown fix lowers its figure; the stable loss needs none where it is within 4 ULP."""
    [a] = api.advise(dtype=dtype, formula="keras3", range="-20:20", points=41)
    assert not a.ok
    for f in a.fixes:
        assert advise.score(f.after, f.figure) < advise.score(a.before, f.figure), (dtype, f.kind)
    assert [f.kind for f in a.fixes][:1] == ["logits"]


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
