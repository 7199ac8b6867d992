"""`bce-audit reproduce`: the seed question's Keras experiment, checked against derivations.

The real runs (one Keras worker per Keras backend, several seconds each) are slow and skip where
the framework is missing; the worker's failures are checked with a stand-in worker. Every
expected floor is derived here from the float32-rounded clip bounds with mpmath, never copied
from the tool's output.
"""

from __future__ import annotations

import importlib.util

import mpmath
import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json

from bce_audit import keras_runner, reproduce
from bce_audit.records import ReproCase

F32 = np.float32
EPS32 = F32(1e-7)             # keras.backend.epsilon() as a float32 tensor: 1.0000000117e-07
HI_PY = F32(1.0 - 1e-7)       # Keras 3: the Python float 1 - eps, rounded: 1 - 2**-23
HI_TF = F32(1.0) - EPS32      # tf_keras: 1 - eps computed in float32: also 1 - 2**-23
ULP = float(np.spacing(F32(1.2e-7)))  # float32 spacing at the floor: 2**-46


def _mp(v) -> mpmath.mpf:
    return mpmath.mpf(float(v))  # exact: a float32 converts to a double without rounding


def _f32(v: mpmath.mpf) -> float:
    return float(F32(float(v)))


def keras3_floor() -> float:
    """Keras 3 (tensorflow, jax, numpy): label 1 clipped to hi, -log(hi); label 0 clipped to
    eps, -log(1 - eps) with 1 - eps rounded to float32 first. Each log rounded once."""
    with mpmath.workprec(200):
        one = _f32(-mpmath.log(_mp(HI_PY)))
        zero = _f32(-mpmath.log(_mp(F32(1) - EPS32)))
    return float((F32(one) + F32(zero)) / F32(2))


def torch_floor() -> float:
    """Keras 3 on torch: the same clip, then torch's BCE, whose label-0 term is -log1p(-p):
    no rounding of 1 - eps, so it is eps itself, not 2**-23 (the question's 1.09e-7)."""
    with mpmath.workprec(200):
        one = _f32(-mpmath.log(_mp(HI_PY)))
        zero = _f32(-mpmath.log1p(-_mp(EPS32)))
    return float((F32(one) + F32(zero)) / F32(2))


def test_derived_floors():
    assert keras3_floor() == pytest.approx(2.0**-23, rel=1e-6)
    assert torch_floor() == pytest.approx((2.0**-23 + 1e-7) / 2, rel=1e-6)
    # tf_keras adds eps inside the logs: hi + eps and (1 - eps) + eps both round to exactly 1
    assert F32(1) == HI_TF + EPS32 and (F32(1) - EPS32) + EPS32 == F32(1)


def first_a_on_floor(a: list[float], hi: np.float32, lo: np.float32, log1p: bool = False) -> float:
    """The first grid a from which both fed float32 probabilities sit on their clipped value:
    sigmoid(a) rounds to hi or above, and 1 - max(sigmoid(-a), lo) rounds to 1 - lo's float
    (``log1p``: torch's -log1p(-p) sees p itself, so sigmoid(-a) must be clipped to lo)."""
    target = F32(1) - lo
    start = None
    for v in a:
        with mpmath.workprec(200):
            p1 = F32(float(1 / (1 + mpmath.exp(-v))))
            p0 = F32(float(1 / (1 + mpmath.exp(v))))
        on = p1 >= hi and (p0 <= lo if log1p else F32(1) - max(p0, lo) == target)
        start = (v if start is None else start) if on else None
    assert start is not None
    return start


# ---------------------------------------------------------------- pure parts


def test_grid_covers_the_onset():
    g = reproduce.grid()
    assert g[0] == 0 and g[-1] == 40 and g == sorted(set(g))
    assert {12 + k / 4 for k in range(33)} <= set(g)


def test_exact_mean_is_log1p_exp():
    with mpmath.workdps(40):
        for a in (0.0, 1.0, 16.0, 40.0):
            assert reproduce.exact_mean(a) == pytest.approx(float(mpmath.log1p(mpmath.exp(-a))), rel=1e-15)


@pytest.mark.parametrize(("framework", "backend", "floor"), [
    ("keras", "jax", keras3_floor), ("keras", "torch", torch_floor), ("keras", "tensorflow", keras3_floor)])
def test_clipped_model_floors_at_the_derived_value(framework, backend, floor):
    m = reproduce.clipped_model(framework, backend, [30.0, 40.0], "float32")
    assert m.tolist() == pytest.approx([floor(), floor()], abs=ULP)


def test_tf_keras_clipped_model_is_zero():
    assert reproduce.clipped_model("tf-keras", "tensorflow", [30.0, 40.0], "float32").tolist() == [0, 0]


def test_classify_and_tail():
    a = [10.0, 20.0, 30.0]
    exact = np.array([reproduce.exact_mean(v) for v in a])
    clipped = reproduce.clipped_model("keras", "jax", a, "float32")
    logits = reproduce.logits_model(a, "float32")
    assert reproduce.classify(logits, clipped, logits)[0] == "logits"
    assert reproduce.classify(clipped, clipped, logits)[0] == "clipped"
    assert reproduce.classify(np.sqrt(clipped * logits), clipped, logits)[0] == "unclear"
    assert reproduce.tail(a, logits, exact) == ("none", None, None)
    kind, value, start = reproduce.tail(a, clipped, exact)
    assert (kind, start) == ("floor", 20.0) and value == pytest.approx(keras3_floor(), abs=ULP)
    assert reproduce.tail(a, np.array([1e-5, 0.0, 0.0]), exact) == ("zero", 0.0, 20.0)


# ---------------------------------------------------------------- errors, without a framework


@pytest.mark.parametrize(("args", "needle"), [
    (("--backend", "tf-keras"), "pip install 'bce-audit[tensorflow]'"),
    (("--backend", "keras", "--keras-backend", "jax"), "pip install 'bce-audit[keras,jax]'"),
    (("--backend", "keras", "--keras-backend", "numpy"), "pip install 'bce-audit[keras]'"),
])
def test_missing_framework_is_one_line(monkeypatch, args, needle):
    real = importlib.util.find_spec
    hidden = {"tf_keras", "keras"}
    monkeypatch.setattr(reproduce.importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))
    assert_usage_error(run("reproduce", *args), "not installed", needle)


# a stand-in for the Keras worker: raw protocol messages (no arrays), no Keras
FAKE = """import json, sys, time
def send(header):
    sys.stdout.write(json.dumps({**header, "arrays": []}) + "\\n")
    sys.stdout.flush()
"""
HELLO = 'send({"ok": True, "keras": "3.0.0", "backend": "jax"}); sys.stdin.readline()\n'


def _fake_worker(monkeypatch, tmp_path, body: str) -> None:
    """The worker run by `reproduce` is the module FAKE + body, in place of bce_audit.keras_runner."""
    monkeypatch.setattr(reproduce, "check_installed", lambda framework, backend: None)
    (tmp_path / "fake_keras_worker.py").write_text(FAKE + body)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(keras_runner, "MODULE", "fake_keras_worker")


@pytest.mark.parametrize(("body", "needle"), [
    ('sys.stderr.write("Traceback (most recent call last):\\n  File x\\n")\n'
     'sys.stderr.write("ValueError: Unable to import backend\\n"); sys.exit(1)\n',
     "failed (exit 1): ValueError: Unable to import backend"),
    ('send({"ok": False, "error": "ValueError: Unable to import backend"})\n',
     "failed: ValueError: Unable to import backend"),
    (HELLO + 'sys.stderr.write("Fatal Python error: Aborted\\n"); sys.exit(134)\n',
     "failed (exit 134): Fatal Python error: Aborted"),
    (HELLO + 'print("not json")\n', "failed (exit 0): it answered no message"),
    (HELLO + 'send({"ok": False, "error": "ValueError: no policy float64"})\n',
     "failed: ValueError: no policy float64"),
    (HELLO + 'send({"ok": True, "result": [1, 2]})\n', "answered list"),
    (HELLO + 'send({"ok": True, "result": {"cases": [{"policy": "float32"}]}})\n', "malformed result"),
    ('send({"ok": False, "error": "ModuleNotFoundError: No module named \'jax\'", "missing": "jax"})\n',
     "needs jax, which cannot be imported: pip install 'bce-audit[keras,jax]'"),
])
def test_worker_failure_is_one_line(monkeypatch, tmp_path, body, needle):
    _fake_worker(monkeypatch, tmp_path, body)
    line = assert_usage_error(run("reproduce", "--backend", "keras", "--keras-backend", "jax"), needle)
    assert "Traceback" not in line


@pytest.mark.parametrize("body", ["time.sleep(30)\n", HELLO + "time.sleep(30)\n"])
def test_worker_timeout_is_one_line(monkeypatch, tmp_path, body):
    """Whether the worker hangs on starting or on the experiment: the run's whole time is TIMEOUT."""
    _fake_worker(monkeypatch, tmp_path, body)
    monkeypatch.setattr(reproduce, "TIMEOUT", 1.0)
    assert_usage_error(run("reproduce", "--backend", "tf-keras"), "the Keras run took longer than 1 s")


def test_worker_that_cannot_start_is_one_line(monkeypatch):
    monkeypatch.setattr(reproduce, "check_installed", lambda framework, backend: None)
    monkeypatch.setattr(keras_runner, "MODULE", "bce_audit.no_such_worker")
    assert_usage_error(run("reproduce", "--backend", "tf-keras"),
                       "reproduce --backend tf-keras: the Keras run failed (exit 1)",
                       "No module named bce_audit.no_such_worker")


def test_keras_backend_needs_keras():
    assert_usage_error(run("reproduce", "--backend", "tf-keras", "--keras-backend", "jax"),
                       "applies to --backend keras")


def test_bad_plot_suffix_fails_before_the_run():
    assert_usage_error(run("reproduce", "--backend", "tf-keras", "--plot", "out.txt"), "--plot")


# ---------------------------------------------------------------- real runs


def _needs(framework: str, backend: str) -> None:
    for m in reproduce.requirements(framework, backend)[0]:
        pytest.importorskip(m)


_RUNS: dict[tuple[str, str], dict[tuple[str, str], ReproCase]] = {}


def cases(framework: str, backend: str = "tensorflow") -> dict[tuple[str, str], ReproCase]:
    """One CLI run per Keras, --format json, shared by the tests: (policy, feeding) -> case."""
    _needs(framework, backend)
    key = (framework, backend)
    if key not in _RUNS:
        args = ["--backend", framework] + (["--keras-backend", backend] if framework == "keras" else [])
        doc = strict_json(ok("reproduce", *args, "--format", "json"))
        assert doc["kind"] == "reproduce" and doc["schema"].startswith("bce-audit/")
        _RUNS[key] = {}
        for d in doc["cases"]:
            d.pop("verdict")
            c = ReproCase(**d)
            _RUNS[key][c.policy, c.feeding] = c
    return _RUNS[key]


def _floor_ok(c: ReproCase, floor: float) -> None:
    assert c.tail == "floor", c
    assert c.floor == pytest.approx(floor, abs=ULP)
    assert c.exact[-1] < floor / 1e10  # the exact loss has long gone under it


@pytest.mark.slow  # a tf_keras worker, importing TensorFlow
def test_tf_keras_worker_has_no_keras3_ops():
    """The one Keras worker runs tf_keras too: its versions say so, and keras.ops's calls are absent."""
    _needs("tf-keras", "tensorflow")
    w = keras_runner.Worker("tf-keras")
    try:
        assert w.versions["backend"] == "tensorflow" and "tf_keras" in w.versions
        header, arrays = w.request({"op": "sigmoid"}, [np.zeros(4, np.float32)])
        assert header == {"ok": False, "error": "ValueError: tf-keras has no op 'sigmoid'"} and arrays == []
    finally:
        w.close()


@pytest.mark.slow
def test_tf_keras_in_graph_takes_the_logits_path():
    c = cases("tf-keras")["float32", "in-graph"]
    assert c.path == "logits" and c.tail == "none"
    assert c.carries_logits and c.reads_logits
    assert c.agree == c.differ > 10
    assert c.loss[-1] == pytest.approx(c.exact[-1], rel=1e-5)  # 4.25e-18 at a = 40


@pytest.mark.slow
def test_tf_keras_fed_probabilities_clip_to_zero():
    c = cases("tf-keras")["float32", "fed"]
    assert c.path == "clipped" and not c.carries_logits
    assert (c.tail, c.floor) == ("zero", 0.0)  # test_derived_floors: both sums round to 1
    assert c.floor_a == first_a_on_floor(c.a, HI_TF, EPS32)


@pytest.mark.slow
def test_tf_keras_mixed_float16_in_graph_is_logits_in_float16():
    c = cases("tf-keras")["mixed_float16", "in-graph"]
    assert c.path == "logits" and c.output_dtype == "float16"
    # log1p(exp(-a)) in float16 is 0 once exp(-a) is under half the smallest subnormal, 2**-25
    with mpmath.workprec(200):
        first_zero = min(v for v in c.a if mpmath.exp(-v) < mpmath.mpf(2) ** -25)
    assert c.tail == "zero" and c.floor_a == first_zero


@pytest.mark.slow
def test_keras3_tensorflow_logits_in_float32_clipped_when_fed():
    got = cases("keras", "tensorflow")
    graph, fed = got["float32", "in-graph"], got["float32", "fed"]
    assert graph.path == "logits" and graph.tail == "none" and graph.carries_logits and graph.reads_logits
    assert fed.path == "clipped"
    _floor_ok(fed, keras3_floor())
    assert fed.floor_a == first_a_on_floor(fed.a, HI_PY, EPS32)
    # mixed_float16: the float16 output is converted to float32 for the loss, and the clip is back
    assert got["mixed_float16", "in-graph"].path == "clipped"


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "floor"), [("jax", keras3_floor), ("numpy", keras3_floor),
                                                ("torch", torch_floor)])
def test_keras3_backends_without_the_shortcut_floor(backend, floor):
    got = cases("keras", backend)
    for (policy, feeding), c in got.items():
        assert c.path == "clipped", (policy, feeding)
        assert not c.reads_logits
        _floor_ok(c, floor())
    fed = got["float32", "fed"]
    assert fed.floor_a == first_a_on_floor(fed.a, HI_PY, EPS32, log1p=backend == "torch")


@pytest.mark.slow
def test_table_answers_first_in_80_columns(tmp_path, monkeypatch):
    _needs("keras", "numpy")
    monkeypatch.setenv("COLUMNS", "80")
    png = tmp_path / "floor.png"
    out = ok("reproduce", "--backend", "keras", "--keras-backend", "numpy", "--policy", "float32",
             "--plot", str(png))
    lines = out.splitlines()
    assert max(len(ln) for ln in lines) <= 80
    assert lines[0].startswith("keras 3.") and "on numpy" in lines[0]
    assert lines[3].split()[:3] == ["float32,", "in-graph:", "clipped,"]
    assert f"floor {keras3_floor():.4e} from a = " in lines[3] and lines[4].split()[:2] == ["float32,", "fed"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
