"""Keras 3 as a real backend (`--backend keras --keras-backend ...`): each Keras backend in a worker.

The models are checked against what each Keras backend really runs, fed the real sigmoid, so a
wrong mapping (formula -> call) shows as a difference; the sigmoids themselves are compared
where the models follow them (TensorFlow's is Eigen's, modelled elsewhere). The few values
where a framework's own elementary function differs from numpy's are pinned by x:

- float16 ``log1p(exp(-|x|))`` at x = +-0.0214691162109375 (XLA and Eigen, not numpy), and TF's
  gradient at +-0.0472412109375;
- bfloat16 |x| in [87.5, 92.5]: XLA and TensorFlow flush the subnormal ``exp(-|x|)`` to zero.

keras and its backends are optional: the tests skip, saying so, where one is missing.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from cli_support import assert_usage_error, run, strict_json

from bce_audit import (
    backends,
    config,
    dtypes,
    fidelity,
    formulas,
    gradients,
    keras_backend,
    keras_runner,
    sweep,
)
from bce_audit.formulas import Evaluator
from bce_audit.records import KERAS_BACKENDS, Settings

EPS = 1e-7
FRAMEWORK = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}
# XLA's and Eigen's float16 log1p(exp(-|x|)) (and exp, in TF's gradient) differ from numpy's here
F16_LOG1P = {-0.0214691162109375, 0.0214691162109375, -0.0472412109375, 0.0472412109375}


def _has_keras() -> None:
    """Keras is imported only by the workers, never here (it would pick a backend for this process)."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("the keras extra is not installed: pip install 'bce-audit[keras]'")


def _keras(kb: str) -> backends.Backend:
    _has_keras()
    if importlib.util.find_spec(FRAMEWORK[kb]) is None:
        pytest.skip(f"Keras's {kb} backend is not installed")
    be = backends.get("keras", "cpu", kb)
    assert be is not None
    return be


def _allowed(kb: str, formula: str, dtype: str, x: float) -> bool:
    """The pinned libm-level differences (module docstring)."""
    if formula in ("optax", "logits-stable", "keras-sigmoid-logits"):
        if dtype == "float16":
            return x in F16_LOG1P
        if dtype == "bfloat16":
            return 87.5 <= abs(x) <= 92.5
    return False


# gradients compared with their models (all of them: TensorFlow's rules in mode tf, JAX's in xla)
GRAD_MODELLED = {"tensorflow": {"keras3", "keras-sigmoid-logits", "logits-stable"},
                 "jax": {"keras3", "optax"}, "torch": {"keras3-torch", "torch-bce-logits"}, "numpy": set()}


def _formula_gaps(be: backends.Backend, dtype: str, x: np.ndarray) -> dict[tuple, list[float]]:
    """Each real BCE (and modelled gradient) against its model fed the real sigmoid: the
    differing x, per (formula, label, "bce" or "grad")."""
    ev = Evaluator(dtype, keras_backend.MODES[be.keras_backend or ""], be.ops())
    out = {}
    for name, op in be.bce.items():
        for label in (1, 0):
            y = ev.arr(np.full(x.shape, label))
            pairs = [("bce", op(x, y), formulas.get(name)(x, y, EPS, ev))]
            if name in GRAD_MODELLED[be.keras_backend or ""]:
                pairs.append(("grad", be.grad[name](x, y), gradients.grad(name, x, y, EPS, ev)))
            for what, real, model in pairs:
                assert real.dtype == ev.dtype, (name, what, real.dtype)
                bad = ~((real == model) | (np.isnan(real) & np.isnan(model)))
                out[(name, label, what)] = [float(v) for v in x[bad]]
    return out


def _check(kb: str, dtype: str, x: np.ndarray) -> None:
    be = _keras(kb)
    x = Evaluator(dtype).arr(x)
    for key, xs in _formula_gaps(be, dtype, x).items():
        assert all(_allowed(kb, key[0], dtype, v) for v in xs), (kb, dtype, key, xs[:5])
    # the sigmoid itself: numpy's, torch's opmath, XLA's (flushing), Eigen's (bce_audit.eigen)
    model = formulas.evaluate_sigmoid(x, Evaluator(dtype, keras_backend.MODES[kb]))
    bad = x[model != be.sigmoid(x)].astype(float)
    # float16: torch's and XLA's exp differ from numpy's by an ULP at two x near 0 (torch
    # -0.0102539, XLA -0.0246 and 0.04724)
    assert len(bad) <= 2 and all(dtype == "float16" and abs(v) < 0.05 for v in bad), (kb, dtype, bad)


def _f16_subset() -> np.ndarray:
    x = dtypes.get("float16").finite_values()
    return np.concatenate([x[::16], np.asarray([-0.0214691162109375, 0.0214691162109375], np.float16)])


# ---------------------------------------------------------------- fidelity


@pytest.mark.slow  # a Keras worker per backend, each importing its framework
@pytest.mark.parametrize("kb", KERAS_BACKENDS)
def test_keras_float16_formulas_are_the_models(kb):
    """A quick look: every 16th float16 value; each mapped formula is the call Keras really makes."""
    _check(kb, "float16", _f16_subset())


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kb", KERAS_BACKENDS)
def test_keras_every_16_bit_value(kb, dtype):
    _check(kb, dtype, dtypes.get(dtype).finite_values())


@pytest.mark.slow
def test_keras_numpy_fidelity_is_exact():
    """Keras's numpy backend is numpy: every model value is the real one, float32 grid included,
    bfloat16's float32 clip (keras3-numpy) and all."""
    diffs = fidelity.differences(_keras("numpy"))
    assert {d.dtype for d in diffs} == set(fidelity.DEFAULT_DTYPES)
    assert [d for d in diffs if d.differ] == []


def test_keras_mapping():
    """What each Keras backend runs, per formula (keras/src/backend/*/nn.py binary_crossentropy)."""
    assert keras_backend.FORMULAS == {
        "tensorflow": {"keras3": "bce-probs", "keras-sigmoid-logits": "bce-sigmoid",
                       "logits-stable": "bce-logits"},
        "jax": {"keras3": "bce-probs", "optax": "bce-logits"},
        "torch": {"keras3-torch": "bce-probs", "torch-bce-logits": "bce-logits"},
        "numpy": {"keras3-numpy": "bce-probs"},
    }
    assert set(keras_backend.FORMULAS) == set(KERAS_BACKENDS) == set(keras_backend.MODES)
    for calls in keras_backend.FORMULAS.values():
        assert set(calls) <= set(formulas.NAMES)
        assert set(calls.values()) <= set(keras_runner.CALLS)


@pytest.mark.slow  # a Keras worker process, importing its framework
def test_tensorflow_sigmoid_output_takes_the_logits_shortcut():
    """Keras on TF: a loss on ops.sigmoid's own output uses its _keras_logits (no clip), bit for bit
    the from_logits=True loss; the probabilities as a plain array take the clipped path."""
    _keras("tensorflow")
    w = keras_backend.worker("tensorflow")
    x = np.linspace(-30, 30, 512).astype(np.float32)
    y = np.ones_like(x)
    shortcut, logits, probs = (w.call(op, x, y) for op in ("bce-sigmoid", "bce-logits", "bce-probs"))
    assert np.array_equal(shortcut, logits)
    assert probs[0] == np.float32(-np.log(np.float32(EPS)))  # clipped at eps: 16.118095
    assert shortcut[0] == 30


@pytest.mark.slow  # a Keras worker process, importing its framework
def test_numpy_from_logits_runs_the_clipped_path():
    """Keras's numpy backend with from_logits=True: sigmoid, then the same clip (keras3-numpy)."""
    _keras("numpy")
    w = keras_backend.worker("numpy")
    x = dtypes.get("float16").finite_values()
    for label in (0, 1):
        y = np.full_like(x, label)
        a, b = w.call("bce-logits", x, y), w.call("bce-probs", x, y)
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))


@pytest.mark.slow  # starts a Keras worker
def test_numpy_bfloat16_comes_back_float32_and_is_rounded():
    """np.clip promotes bfloat16: Keras's numpy backend returns float32, which the adapter rounds."""
    import ml_dtypes

    be = _keras("numpy")
    x = np.array([10.0, 100.0], dtype=ml_dtypes.bfloat16)
    got = be.bce["keras3-numpy"](x, np.zeros_like(x))
    assert got.dtype == ml_dtypes.bfloat16 and np.isfinite(got.astype(np.float32)).all()


@pytest.mark.slow  # starts a Keras worker
def test_keras_float64_on_numpy_is_unsupported():
    """Keras's numpy backend converts float64 arrays to floatx (float32): not audited as float64."""
    be = _keras("numpy")
    with pytest.raises(backends.Unsupported, match="returned float32 for float64"):
        be.sigmoid(np.zeros(3))


# ---------------------------------------------------------------- the worker


def test_message_round_trip_is_bit_exact():
    import io

    import ml_dtypes

    arrays = [dtypes.get(d).finite_values()[::97] for d in ("float16", "bfloat16", "float8_e4m3fn")]
    arrays.append(np.array([np.nan, -0.0, np.inf], dtype=np.float32))
    buf = io.BytesIO()
    keras_runner.write_message(buf, {"op": "x"}, arrays)
    buf.seek(0)
    header, back = keras_runner.read_message(buf)
    assert header == {"op": "x"}
    for a, b in zip(arrays, back, strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert back[1].dtype == ml_dtypes.bfloat16
    with pytest.raises(EOFError):
        keras_runner.read_message(io.BytesIO(b'{"arrays": [{"dtype": "float32", "shape": [4]}]}\n\0\0'))


def test_unknown_keras_backend_is_backend_missing():
    with pytest.raises(backends.BackendMissing, match="unknown Keras backend 'theano'"):
        backends._keras("theano")


def test_keras_that_cannot_import_its_backend_is_one_line():
    """KERAS_BACKEND names no backend Keras has: Keras fails to import, the worker says so."""
    _has_keras()
    with pytest.raises(keras_backend.Missing) as e:
        keras_backend.Worker("theano")
    msg = str(e.value)
    assert "\n" not in msg and "cannot import Keras with the theano backend" in msg
    assert "pip install 'bce-audit[keras]'" in msg


def test_worker_that_cannot_start_is_backend_missing(monkeypatch):
    monkeypatch.setattr(keras_runner, "MODULE", "bce_audit.no_such_worker")
    with pytest.raises(keras_backend.Missing) as e:
        keras_backend.Worker("numpy")
    msg = str(e.value)
    assert "\n" not in msg and "the Keras worker stopped during import keras" in msg
    assert "No module named bce_audit.no_such_worker" in msg and "pip install 'bce-audit[keras]'" in msg


@pytest.mark.slow  # starts a Keras worker
def test_worker_that_dies_mid_run_is_backend_missing():
    be = _keras("numpy")
    w = keras_backend.Worker("numpy")
    w._proc.kill()
    w._proc.wait()
    for _ in range(2):  # and it stays dead, with the same message
        with pytest.raises(keras_backend.Missing, match=r"worker stopped during sigmoid \(exit code -9\)"):
            w.call("sigmoid", np.zeros(4, np.float32))
    assert be.sigmoid(np.zeros(4, np.float32)).tolist() == [0.5] * 4  # the cached one runs on


def test_cli_keras_import_failure_is_exit_2_one_line(monkeypatch, tmp_path):
    """A Keras that cannot be imported (here a stand-in that raises) is exit 2 and one line."""
    fake = tmp_path / "keras"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('keras is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(backends, "_BACKENDS", {})
    monkeypatch.setattr(keras_backend, "_WORKERS", {})
    r = run("sweep", "--backend", "keras", "--keras-backend", "numpy", "--dtype", "float16", "--no-cache")
    assert_usage_error(r, "--keras-backend numpy", "keras is broken here", "pip install 'bce-audit[keras]'")


# ---------------------------------------------------------------- settings, CLI, cache


def test_keras_backend_setting_and_native_modes():
    assert Settings().keras_backend == "tensorflow"
    for kb, mode in {"tensorflow": "tf", "jax": "xla", "torch": "upcast", "numpy": "per-op"}.items():
        assert sweep.native(Settings(backend="keras", keras_backend=kb)).mode == mode
    s = config.build_settings({"backend": "keras", "keras_backend": "jax"}, lambda k: k)
    assert (s.backend, s.keras_backend) == ("keras", "jax")
    with pytest.raises(config.ConfigError, match="unknown Keras backend 'theano'; choose from tensorflow"):
        config.build_settings({"keras_backend": "theano"}, lambda k: f"x.toml: {k}")


def test_cache_key_names_the_keras_backend_and_versions():
    _has_keras()
    a = sweep._chunk_key(Settings(backend="keras", keras_backend="jax"), "float16", 0, 10, None)
    b = sweep._chunk_key(Settings(backend="keras", keras_backend="torch"), "float16", 0, 10, None)
    assert a != b
    assert a["backend_version"].startswith("keras 3.") and "jax" in a["backend_version"]
    assert "torch" in b["backend_version"]


@pytest.mark.slow  # a Keras worker process, importing its framework
def test_cli_sweep_keras_jax_float16():
    _keras("jax")
    r = run("sweep", "--backend", "keras", "--keras-backend", "jax", "--dtype", "float16", "--format",
            "json", "--no-cache", "--formula", "keras3", "--formula", "optax", "--formula", "naive")
    assert r.exit_code == 0, (r.stderr, r.exception)
    doc = strict_json(r.stdout)
    assert doc["settings"]["backend"] == "keras" and doc["settings"]["keras_backend"] == "jax"
    assert {k["backend"] for k in doc["keypoints"]} == {"keras-jax-cpu"}
    assert {r["formula"] for r in doc["rows"] if r["quantity"] == "bce"} == {"keras3", "optax"}
    assert any("no real counterpart of naive" in n for n in doc["notes"])


@pytest.mark.slow
def test_cli_sweep_keras_jax_float16_table():
    _keras("jax")
    r = run("sweep", "--backend", "keras", "--keras-backend", "jax", "--dtype", "float16", "--no-cache")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert "keras-jax-cpu" in r.stdout


def test_cli_fidelity_keras_numpy_float16():
    _keras("numpy")
    r = run("fidelity", "--backend", "keras", "--keras-backend", "numpy", "--dtype", "float16",
            "--no-keypoints", "--format", "json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    doc = strict_json(r.stdout)
    assert doc["backend"] == "keras-numpy-cpu"
    assert doc["notes"][0] == "the models run in mode per-op, as keras-numpy-cpu computes"


@pytest.mark.slow  # a Keras worker process, importing its framework
def test_jax_float16_keras3_gradient_is_nan_where_1_over_p_overflows():
    """Keras 3 on JAX, float16: d/dx of binary_crossentropy(y, sigmoid(x)) is NaN for label 1 below
    x = -11.1 (1/p overflows float16 and jnp.clip's derivative multiplies it by 0), and for both
    labels from 7.625 (p rounds to 1 = the float16 upper clip, so 1/(1 - p) is inf)."""
    be = _keras("jax")
    x = np.array([-30.0, -12.0, -10.0, 0.0, 7.0, 7.625, 30.0], dtype=np.float16)
    g1 = be.grad["keras3"](x, np.ones_like(x))
    g0 = be.grad["keras3"](x, np.zeros_like(x))
    assert np.isnan(g1).tolist() == [True, True, False, False, False, True, True]
    assert np.isnan(g0).tolist() == [False, False, False, False, False, True, True]
    ev = Evaluator("float16", "xla")  # and the model of JAX's rules says the same, bit for bit
    for label, g in ((1, g1), (0, g0)):
        model = gradients.grad("keras3", x, np.full_like(x, label), EPS, ev)
        assert np.array_equal(model, g, equal_nan=True), label


def test_keras_what_says_the_padding():
    be = _keras("numpy")
    assert all("padded to whole blocks" in w for w in be.what.values())
    assert set(be.what) == set(be.bce) == {"keras3-numpy"}
    assert be.grad == {}  # numpy has no autodiff


def test_gate_checks_take_a_keras_backend(tmp_path):
    """`keras_backend` in a gate config (inherited by its checks); only keras checks name it in
    their identity, so every other check's baseline stays valid."""
    from bce_audit import gate

    _keras("numpy")
    path = tmp_path / "g.toml"
    path.write_text('backend = "keras"\nkeras_backend = "numpy"\ndtypes = ["float16"]\n'
                    '[[check]]\nname = "k"\nformula = "keras3-numpy"\nlabel = "0"\nmax_ulp = 1e9\n'
                    'allow_nonfinite = true\n'
                    '[[check]]\nname = "n"\nformula = "keras3"\nlabel = "0"\nmax_ulp = 1e9\n'
                    'backend = "numpy"\nallow_nonfinite = true\n')
    k, n = gate.checks_from(config.load(str(path)))
    assert k.keras_backend == "numpy" and k.identity()["keras_backend"] == "numpy"
    assert "keras_backend" not in n.identity()
    result = gate.run_check(k)
    assert result.passed, result.failures
    bad = tmp_path / "bad.toml"
    bad.write_text('backend = "keras"\nkeras_backend = "numpy"\n'
                   '[[check]]\nname = "k"\nformula = "keras3"\nmax_ulp = 1\n')
    with pytest.raises(config.ConfigError, match="keras-numpy-cpu has no real counterpart of 'keras3'"):
        gate.checks_from(config.load(str(bad)))


@pytest.mark.slow  # a Keras worker process, importing its framework
@pytest.mark.parametrize("kb", ["numpy", "jax"])
def test_eps_reaches_keras_epsilon(kb):
    """--eps sets keras.config.set_epsilon in the worker: the clip follows it, as the model does
    (float16, where every backend's log is numpy's)."""
    be = _keras(kb)
    name = next(f for f in be.bce if formulas.get(f).uses_eps)
    ev = Evaluator("float16", keras_backend.MODES[kb], be.ops())
    x = ev.arr(np.linspace(-20, 20, 401))
    for eps in (1e-2, 1e-3):
        y = ev.arr(np.zeros(x.shape))
        real = be.bce[name](x, y, eps)
        assert np.array_equal(real, formulas.get(name)(x, y, eps, ev)), eps
        hi = np.float16(1.0 - eps)
        assert real[-1] == -np.log(np.float16(1) - hi)  # the upper clip, at 1 - eps


def test_keras_worker_sees_no_gpu(monkeypatch):
    """Keras's backends run on the CPU (the models are of CPU kernels; --device applies to torch
    only): the worker starts with no CUDA device visible, whatever this process sees."""
    import subprocess

    from bce_audit import keras_backend

    seen: dict = {}

    def fake_popen(args, env=None, **kwargs):
        seen.update(env or {})
        raise OSError("not started in this test")

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(subprocess, "Popen", fake_popen)
    with pytest.raises(keras_backend.Missing):
        keras_backend.Worker("torch")
    assert seen["CUDA_VISIBLE_DEVICES"] == "" and seen["JAX_PLATFORMS"] == "cpu"
