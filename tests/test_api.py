"""The Python API and the pytest helper (issue 12): the CLI's results without the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_support import ok, run, strict_json

from bce_audit import api, records
from bce_audit.impl import ImplError
from bce_audit.testing import assert_bce


def _cli_json(*args: str) -> dict:
    jobs = ("-j", "1") if args[0] in ("sweep", "points") else ()
    doc = strict_json(ok(*args, *jobs, "--format", "json"))
    doc.pop("version")
    return doc


def _json(d: dict) -> dict:
    """What the CLI's JSON would read back as (tuples as lists, keys sorted)."""
    return json.loads(records.to_json(d))


def stable(x, y):
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def naive(x, y):
    s = 1 / (1 + np.exp(-x))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def probs(p, y):
    return -(y * np.log(p) + (1 - y) * np.log1p(-p))


# ---------------------------------------------------------------- the API is the CLI


def test_sweep_equals_the_cli_json():
    args = dict(dtype=["float16", "bfloat16"], formula=["keras3", "optax"], eps=[1e-7, 1e-4],
                range="-20:30", points=41, label="both", rows=5)
    result = api.sweep(**args)
    assert isinstance(result, records.SweepResult)
    assert _json(result.to_dict()) == _cli_json(
        "sweep", "--dtype", "float16", "--dtype", "bfloat16", "--formula", "keras3", "--formula", "optax",
        "--eps", "1e-7", "--eps", "1e-4", "--range=-20:30", "--points", "41", "--rows", "5")
    series = {(r.dtype, r.quantity, r.formula, r.eps, r.label) for r in result.rows}
    assert len(result.rows) == 5 * len(series)


def test_sweep_defaults_are_the_clis():
    result = api.sweep(dtype="float16", formula="naive", points=21)
    assert _json(result.to_dict()) == _cli_json("sweep", "--dtype", "float16", "--formula", "naive",
                                                "--points", "21")
    assert result.settings.range == records.DEFAULT_RANGE and result.settings.keep == 11


def test_a_config_is_read_as_the_cli_reads_it(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('dtype = "bfloat16"\nformulas = ["keras3"]\nstep = 2.0\nrows = 3\nlabel = 1\n')
    result = api.sweep(config=path, points=9)  # an argument overrides the file (points over its step)
    assert _json(result.to_dict()) == _cli_json("sweep", "--config", str(path), "--points", "9")
    assert result.settings.points == 9 and result.settings.step is None and len(result.rows) == 3 * 3
    with pytest.raises(ValueError, match=r"c.toml: eps 0.9 is out of range"):
        path.write_text("eps = 0.9\n")
        api.points(config=path)


def test_points_equal_the_cli_json():
    kps = api.points(dtype="float16", formula="torch-bce", mode="upcast", label=1, threshold=0.01)
    doc = _cli_json("points", "--dtype", "float16", "--formula", "torch-bce", "--mode", "upcast",
                    "--label", "1", "--threshold", "0.01")
    assert [k.to_dict() for k in kps] == doc["keypoints"]
    assert all(isinstance(k, records.KeyPoint) for k in kps)


def test_check_equals_the_cli_json():
    rows = api.check([16.5, -50, 0.25], dtype=["float32", "float16"], formula="logits-stable")
    doc = _cli_json("check", "16.5", "-50", "0.25", "--dtype", "float32", "--dtype", "float16",
                    "--formula", "logits-stable")
    assert [r.to_dict() for r in rows] == doc["rows"]


def test_check_takes_every_dtype_by_default():
    rows = api.check(1.0, formula="naive", label="1")
    from bce_audit import dtypes

    assert [d for d in dict.fromkeys(r.dtype for r in rows)] == [d for d in dtypes.NAMES
                                                                 if any(r.dtype == d for r in rows)]
    assert len({r.dtype for r in rows}) > 5


def test_gate_equals_the_cli_json(tmp_path):
    out = tmp_path / "gate.json"
    r = run("gate", "examples/gate-own-loss.toml", "--json", str(out))
    assert r.exit_code == 1, r.stderr
    results = api.gate("examples/gate-own-loss.toml")
    assert [x.to_dict() for x in results] == strict_json(out.read_text())["checks"]
    assert [x.ok for x in results] == [True, False, False]


def test_gate_takes_check_objects():
    from bce_audit import gate

    checks = gate.load_checks(["examples/gate-own-loss.toml"])[:1]
    (result,) = api.gate(checks)
    assert result.ok and result.name == "good: within 4 ULP"


def test_to_dict_is_strict_json():
    result = api.sweep(dtype="float16", formula="naive", label="1", points=5, rows=2)
    d = result.to_dict()
    json.dumps(d, allow_nan=False)  # inf and nan are strings
    assert d["rows"][-1]["value"] == "nan" and result.rows[-1].to_dict()["value"] == "nan"
    assert result.worst[0].to_dict()["dtype"] == "float16"
    assert result.settings.to_dict()["dtypes"] == ["float16"]


# ---------------------------------------------------------------- a Python callable as a formula


def test_a_callable_is_audited_like_an_impl_spec():
    """The same function by import spec (the CLI's way) and as a callable: the same figures."""
    by_spec = api.sweep(dtype="float16", formula="impl:examples.good_loss:bce_with_logits", points=41)
    from bce_audit import formulas

    bce_with_logits = formulas.get("impl:examples.good_loss:bce_with_logits").user.func
    by_func = api.sweep(dtype="float16", formula=bce_with_logits, points=41)
    assert by_func.settings.formulas == ("impl:examples.good_loss:bce_with_logits",)
    assert [w.to_dict() for w in by_func.worst] == [w.to_dict() for w in by_spec.worst]
    assert [k.to_dict() for k in by_func.keypoints] == [k.to_dict() for k in by_spec.keypoints]


def test_callables_beside_built_ins_and_bce_probs():
    result = api.sweep(dtype="float16", formula=["naive", probs], kind="bce-probs", points=21, label="1")
    names = {w.formula for w in result.worst if w.quantity == "bce"}
    assert names == {"naive", "impl:test_api:probs"}
    # naive is 1/(1+exp(-x)) then the logs: fed that sigmoid, probs computes the same
    by = {w.formula: w for w in result.worst if w.quantity == "bce"}
    assert by["naive"].max_ulp == by["impl:test_api:probs"].max_ulp


def test_two_lambdas_get_two_names():
    result = api.sweep(dtype="float16", formula=[lambda x, y: x * 0, lambda x, y: x * 0 + 1], points=5,
                       label="1")
    names = [w.formula for w in result.worst if w.quantity == "bce"]
    assert names == ["impl:test_api:test_two_lambdas_get_two_names.<locals>.<lambda>",
                     "impl:test_api:test_two_lambdas_get_two_names.<locals>.<lambda>#2"]


def test_a_callable_that_raises_is_an_impl_error_naming_it():
    def broken(x, y):
        raise RuntimeError("no")

    with pytest.raises(ImplError, match=r"impl:test_api:.*broken \(bce-logits\) raised RuntimeError: no"):
        api.sweep(dtype="float16", formula=broken, points=5)


def test_a_callable_runs_serially_whatever_jobs():
    result = api.sweep(dtype="float16", formula=stable, points=5, jobs=4)
    assert result.worst


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(("call", "kwargs", "needles"), [
    (api.sweep, {"dtype": "float99"}, ["sweep(): dtype", "'float99'", "float32"]),
    (api.sweep, {"formula": "keras9"}, ["sweep(): formula", "'keras9'", "keras3"]),
    (api.sweep, {"eps": 0.7}, ["sweep(): eps", "0.7", "[0, 0.5)"]),
    (api.sweep, {"range": (5, 1)}, ["sweep(): range", "LO must be less than HI"]),
    (api.sweep, {"range": "a:b"}, ["sweep(): range", "malformed"]),
    (api.sweep, {"points": 1}, ["sweep(): points", "2 to"]),
    (api.sweep, {"points": 2.5}, ["sweep(): points", "expected an integer"]),
    (api.sweep, {"points": 11, "step": 0.5}, ["points or step"]),
    (api.sweep, {"mode": "fast"}, ["sweep(): mode", "'fast'", "per-op"]),
    (api.sweep, {"label": "2"}, ["sweep(): label", "'2'", "both"]),
    (api.sweep, {"backend": "mxnet"}, ["sweep(): backend", "'mxnet'", "torch"]),
    (api.sweep, {"kind": "mse"}, ["sweep(): kind", "'mse'", "bce-logits"]),
    (api.sweep, {"rows": 1}, ["sweep(): rows", "2 to 1000"]),
    (api.sweep, {"jobs": 0}, ["sweep(): jobs", "at least 1"]),
    (api.sweep, {"threshold": 2.0}, ["sweep(): threshold", "(0, 1)"]),
    (api.points, {"dtype": ["float16", "f99"]}, ["points(): dtype", "'f99'"]),
    (api.check, {"xs": [float("inf")]}, ["check(): xs", "inf", "finite"]),
    (api.check, {"xs": [1.0], "formula": 3}, ["check(): formula", "expected a string"]),
    (api.gate, {"config_or_checks": "no/such.toml"}, ["no/such.toml", "no such config file"]),
    (assert_bce, {"fn": stable, "kind": "sigmoid"}, ["assert_bce(): kind", "bce-probs"]),
    (assert_bce, {"fn": stable, "labels": 2}, ["assert_bce(): labels", "0, 1 or (0, 1)"]),
    (assert_bce, {"fn": stable, "dtype": "half8"}, ["assert_bce(): dtype", "'half8'"]),
    (assert_bce, {"fn": stable, "max_ulp": -1}, ["assert_bce(): max_ulp"]),
])
def test_bad_arguments_raise_value_error_naming_the_option(call, kwargs, needles):
    with pytest.raises(ValueError) as e:
        call(**kwargs)
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- assert_bce


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "float64"])
def test_assert_bce_passes_a_stable_loss(dtype):
    worst = assert_bce(stable, dtype=dtype)
    assert isinstance(worst, records.Worst)
    assert worst.max_ulp <= 4 and worst.nonfinite == 0 and worst.points == 2001
    assert worst.formula == "impl:test_api:stable" and worst.label in (0, 1)


def test_assert_bce_fails_a_naive_loss_naming_x():
    with pytest.raises(AssertionError) as e:
        assert_bce(naive, dtype="float32", range=(-40, 40), points=2001)
    msg = str(e.value)
    assert msg.startswith("naive (bce-logits, float32): ")
    # the worst point, as given and as float32 holds it, its label, computed and exact values
    assert "ULP > max_ulp 4 at x = -18.72 (float32 -18.719999313354492), y = 0: computed -0.0, exact 7.4132" \
        in msg
    assert "returned inf at x = 16.639999389648438, y = 0" in msg
    assert "returned nan at x = 16.639999389648438, y = 1" in msg


def test_assert_bce_names_x_in_every_dtype():
    for dtype in ("float16", "bfloat16", "float64"):
        with pytest.raises(AssertionError, match=r"at x = -?\d"):
            assert_bce(naive, dtype=dtype, labels=0, range=(-40, 0))


def test_assert_bce_on_probabilities():
    worst = assert_bce(probs, kind="bce-probs", dtype="float32", labels=0, range=(-40, 0))
    assert worst.max_ulp <= 4
    with pytest.raises(AssertionError, match=r"x = 16.62 \(float32 16.6200008392334\), y = 1: computed 1.19"):
        assert_bce(probs, kind="bce-probs", dtype="float32", labels=1, range=(0, 40))


def test_assert_bce_max_ulp_is_the_limit():
    worst = assert_bce(stable, dtype="float32")
    assert_bce(stable, dtype="float32", max_ulp=worst.max_ulp)
    with pytest.raises(AssertionError, match=rf"{worst.max_ulp:.4g} ULP > max_ulp"):
        assert_bce(stable, dtype="float32", max_ulp=worst.max_ulp / 2)
    assert not math.isnan(worst.max_ulp)


def test_the_helper_needs_no_pytest():
    import ast
    import pathlib

    from bce_audit import testing

    tree = ast.parse(pathlib.Path(testing.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m.startswith("pytest") for m in imported)


def test_the_api_costs_the_cli_nothing():
    """`import bce_audit` (what the CLI imports first) loads neither the API nor the helper."""
    import subprocess
    import sys

    code = ("import sys, bce_audit.cli; "
            "print(sorted(m for m in sys.modules if m in ('bce_audit.api', 'bce_audit.testing')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
