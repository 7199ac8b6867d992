"""The sweep's fast path gives the numbers of the full one, bit for bit.

With rows sampled (``keep``) and the fast baseline, a chunk measures every point for its worst
errors only (`fastref.Scale`, shared by the series with the same exact column) and computes the
kept rows in full from the kept points alone; built-in formulas share one sigmoid per input
(`Evaluator` memo). Here each shortcut is checked against the computation it replaces.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, replace

import numpy as np
import pytest

from bce_audit import compiled, dtypes, fastref, formulas, sweep
from bce_audit.formulas import Evaluator
from bce_audit.sweep import Settings


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.uint64)


def _inputs(name: str) -> np.ndarray:
    """Every finite value of a narrow dtype, or a spread of float32 ones, with the edge cases."""
    info = dtypes.get(name)
    if info.exhaustive:
        x = info.finite_values().astype(np.float64)
    else:
        rng = np.random.default_rng(7)
        x = info.value(rng.integers(-info.max_ordinal, info.max_ordinal + 1, 100_000)).astype(np.float64)
    edges = [0.0, -0.0, 1e-45, -1e-45, 16.6, 745.2, -745.2, 710.0, -710.0, 0.5, np.inf, -np.inf, np.nan]
    return np.concatenate([x, edges])


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16"])
def test_exact_shares_one_exp_and_equals_the_four_functions(name):
    x = _inputs(name)
    e = fastref.exact(x)
    with np.errstate(all="ignore"):
        want = (fastref.softplus(-x), fastref.softplus(x), fastref.sigmoid(x), fastref.sigmoid(-x))
    for got, ref in zip((e.sp_neg, e.sp_pos, e.p, e.q), want, strict=True):
        assert np.array_equal(_bits(got), _bits(ref))


KINDS = [("sigmoid", None), ("roundtrip", None), ("bce", 1), ("bce", 0), ("grad", 1), ("grad", 0)]


def _of(e: fastref.Exact64, kind: str, label):
    if kind == "sigmoid":
        return e.p, e.x, e.q
    if kind == "roundtrip":
        return e.x, None, None
    if kind == "bce":
        return e.bce(label), e.log_bce(label), None
    return e.grad(label), e.log_grad_magnitude(label), (e.p if label == 1 else e.q)


@pytest.mark.parametrize("name", ["float32", "float16", "bfloat16", "float8_e5m2"])
@pytest.mark.parametrize(("kind", "label"), KINDS)
def test_scale_measure_equals_errors_at_finite_values(name, kind, label):
    info = dtypes.get(name)
    x = _inputs(name)
    e = fastref.exact(np.where(np.isfinite(x), x, 0.0))
    exact, log_exact, comp = _of(e, kind, label)
    below, _ = fastref.ties(kind, label, e.x, exact, comp)
    sc = fastref.scale(exact, log_exact, info, comp, below)
    rng = np.random.default_rng(3)
    rounded = info.ordinal(np.asarray(exact).astype(info.dtype))
    for step in (0, 1, 3):  # the rounded exact value, and values a few ULPs off
        top = info.max_ordinal
        o = np.clip(rounded + rng.integers(-step, step + 1, rounded.size), -top, top)
        c = info.value(o).copy()
        c[::7] = 0
        diff, rel, ulps, _ = fastref.errors(c, exact, log_exact, info, comp, below)
        got_ulps, got_rel, got_diff = sc.measure(c)
        finite = np.isfinite(c.astype(np.float64))
        assert np.array_equal(_bits(got_ulps[finite]), _bits(ulps[finite]))
        assert np.array_equal(_bits(got_rel[finite]), _bits(rel[finite]))
        assert np.array_equal(_bits(got_diff[finite]), _bits(diff[finite]))
        only_ulps, none, _ = sc.measure(c, rel=False)
        assert none is None and np.array_equal(_bits(only_ulps[finite]), _bits(ulps[finite]))


def _full(s: Settings, dtype: str, n: int, keep: set[int], monkeypatch):
    """Worst errors and kept rows the long way: every measure at every point."""
    with monkeypatch.context() as m:
        m.setattr(sweep, "_sampled_fast", lambda *a: False)
        return _lean(s, dtype, n, keep)


def _lean(s: Settings, dtype: str, n: int, keep: set[int]):
    assert n == sweep.grid_size(s, dtype)
    return sweep.audit_grid(s, dtype, keep)


CASES = [
    pytest.param(Settings(dtypes=("float16",), exhaustive=True, keep=9, grad=True), "float16",
                 marks=pytest.mark.slow),  # every float16, with gradients: seconds
    (Settings(dtypes=("bfloat16",), exhaustive=True, keep=9, mode="upcast"), "bfloat16"),
    (Settings(points=9001, range=(-800.0, 800.0), keep=13, grad=True, eps=(1e-7, 0.1)), "float32"),
    (Settings(points=5001, range=(-40.0, 40.0), keep=7, spacing="log", label="0"), "float32"),
    (Settings(points=3001, range=(16.0, 40.0), keep=7), "float32"),  # saturated: many equal columns
    (Settings(dtypes=("float8_e4m3fn",), exhaustive=True, keep=5, grad=True), "float8_e4m3fn"),
    # inputs with no exact value, infinite losses, underflows and zeros among measured ones
    (Settings(values=(math.nan, math.inf, -math.inf, 0.0, -0.0, 745.2, -745.2, 16.6, 1e-45, 88.7, -88.7,
                      3e38, -3e38, 0.5, -0.5, 1e-30, 17.0, -17.0, 104.0, -104.0, 1e4), keep=5, grad=True,
              eps=(1e-7, 0.5)), "float32"),
]


def _same(a, b) -> None:
    """Equal records, bit for bit: repr tells -0.0 from 0.0 and takes nan as equal to nan."""
    assert [repr(asdict(w)) for w in a[0]] == [repr(asdict(w)) for w in b[0]]
    assert [repr(asdict(r)) for r in a[1]] == [repr(asdict(r)) for r in b[1]]


@pytest.mark.parametrize(("s", "dtype"), CASES)
def test_sampled_chunks_equal_the_full_computation(s, dtype, monkeypatch):
    monkeypatch.setattr(sweep, "CHUNK", 4096)  # several chunks, kept rows in some of them only
    n = sweep.grid_size(s, dtype)
    keep = set(sweep.sample_indices(n, s.keep))
    full, lean = _full(s, dtype, n, keep, monkeypatch), _lean(s, dtype, n, keep)
    assert len(full[1]) == len(lean[1]) > 0
    _same(lean, full)


@pytest.mark.parametrize("fused", [True, False])
def test_equal_columns_are_measured_once_and_reduce_alike(fused, monkeypatch):
    """Series whose values are equal bit for bit (keras-sigmoid-logits is logits-stable) share one
    measurement and one reduction: the same worst errors under their own names; measured and
    reduced in one compiled pass (``fused``, where the extension is built) or in numpy."""
    if fused and not compiled.active():
        pytest.skip("the compiled extension is not built")
    calls = []
    real, real_fused = fastref.Scale.measure, compiled.measure_worst

    def counted(self, computed, rel=True):
        calls.append(len(computed))
        return real(self, computed, rel)

    def counted_fused(computed, *args):
        out = real_fused(computed, *args)
        if out is not None:
            calls.append(len(computed))
        return out

    monkeypatch.setattr(fastref.Scale, "measure", counted)
    monkeypatch.setattr(compiled, "measure_worst", counted_fused)
    s = Settings(points=3001, range=(16.0, 40.0), keep=7, formulas=("logits-stable", "keras-sigmoid-logits"))
    with contextlib.nullcontext() if fused else compiled.pure():
        r = sweep.audit_chunk(s, "float32", 0, 3001, [0, 1500])
    # over the whole chunk: the sigmoid, the round trip, and one per label (not two); the kept
    # rows' errors (2 points a column) go through the scale too, as alike
    assert calls.count(3001) == 2 + 3
    assert calls.count(2) == 2 + 3
    by = {(w.formula, w.label): w for w in r.worst}
    for label in (1, 0, "pair"):
        a, b = by["logits-stable", label], by["keras-sigmoid-logits", label]
        assert repr(asdict(b)) == repr(asdict(replace(a, formula="keras-sigmoid-logits")))
    blocks = {(b.formula, b.label): b for b in r.blocks}
    for label in (1, 0, "pair"):
        a, b = blocks["logits-stable", label], blocks["keras-sigmoid-logits", label]
        assert a.floats.keys() == b.floats.keys()
        assert all(np.array_equal(_bits(a.floats[k]), _bits(b.floats[k])) for k in a.floats)


def test_ties_for_mpmath_are_decided_alike_on_both_paths(monkeypatch):
    """Ties float64 cannot decide are rare (none in float32 near the likely places), so some are
    made: about one input in three (chosen by its value, as a tie is) goes to the mpmath baseline."""
    real = fastref.ties

    def more_ties(kind, label, x, exact_, complement):
        below, undecided = real(kind, label, x, exact_, complement)
        return below, undecided | (np.floor(np.asarray(x) * 8) % 3 == 0)

    monkeypatch.setattr(fastref, "ties", more_ties)
    monkeypatch.setattr(sweep, "CHUNK", 512)
    s = Settings(points=1501, range=(-30.0, 30.0), keep=11, grad=True)
    n = sweep.grid_size(s, "float32")
    keep = set(sweep.sample_indices(n, s.keep))
    _same(_lean(s, "float32", n, keep), _full(s, "float32", n, keep, monkeypatch))


def test_memo_shares_the_sigmoid_and_changes_no_value():
    x = Evaluator("float32").arr(np.linspace(-30, 30, 1001))
    plain, shared = Evaluator("float32"), Evaluator("float32", memo=True)
    calls = []
    real = formulas._sigmoid

    def counting(ev, v):
        calls.append(1)
        return real(ev, v)

    formulas_sigmoid = formulas._sigmoid
    try:
        formulas._sigmoid = counting
        for name in ("naive", "keras3", "torch-bce", "tf-keras"):
            f = formulas.get(name)
            for y in (0.0, 1.0):
                ys = np.full(x.shape, y)
                want = f(x, ys, 1e-7, plain)
                got = f(x, ys, 1e-7, shared)
                assert np.array_equal(want.view(np.uint32), got.view(np.uint32))
    finally:
        formulas._sigmoid = formulas_sigmoid
    assert len(calls) == 8 + 1  # every plain call, and one for the memo
    assert not shared.sigmoid(x).flags.writeable  # shared results cannot be changed under the others


def test_user_code_gets_arrays_of_its_own(tmp_path, monkeypatch):
    (tmp_path / "inplace_user.py").write_text(
        "import numpy as np\n"
        "def bce(p, y):\n"
        "    p *= 1\n"  # in place: must not fail, nor reach the built-in formulas' shared sigmoid
        "    return -(y * np.log(p) + (1 - y) * np.log1p(-p))\n")
    monkeypatch.chdir(tmp_path)
    spec = "impl:inplace_user:bce"
    formulas.register_impl(spec, "bce-probs")
    s = Settings(points=101, range=(-20.0, 20.0), formulas=("naive", spec), keep=5)
    res = sweep.run_sweep(s)
    assert {w.formula for w in res.worst} >= {"naive", spec}
