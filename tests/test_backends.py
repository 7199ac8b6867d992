"""Real frameworks against the numpy models: values, key points, and the CLI around `--backend`.

The torch calls are written here, not taken from `bce_audit.backends`, so a wrong conversion or
a wrong op in the backend cannot hide behind itself. Differences are counted in ULPs as the
distance between the two values on the dtype grid (their sign-magnitude bit patterns), with
no help from the package's ordinals.

torch and jax are optional extras: their tests skip, saying so, when the extra is missing.
"""

from __future__ import annotations

import math
import sys

import ml_dtypes
import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json
from ulp_support import ulp_distance

from bce_audit import backends, dtypes, formulas, keypoints, sleef, sweep
from bce_audit.formulas import Evaluator
from bce_audit.records import Settings

TORCH_FORMULAS = ("torch-bce", "torch-bce-logits")
NO_TORCH_COUNTERPART = ("naive", "keras2-logits", "tf-keras", "keras3", "logits-stable", "optax")
NO_TORCH = "the torch extra is not installed: pip install 'bce-audit[torch]'"
NO_JAX = "the jax extra is not installed: pip install 'bce-audit[jax]'"
F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, 1.18e-38


# ---------------------------------------------------------------- helpers




def _torch():
    return pytest.importorskip("torch", reason=NO_TORCH)


def to_torch(torch, a: np.ndarray):
    """float16/bfloat16/float32 array -> torch tensor of the same dtype; every value is exact in float32."""
    return torch.tensor(a.astype(np.float32)).to(getattr(torch, a.dtype.name))


def from_torch(t, dtype: np.dtype) -> np.ndarray:
    return t.detach().float().numpy().astype(dtype)


# ---------------------------------------------------------------- key points, model vs real


def _key(k) -> tuple:
    return (k.dtype, k.name, k.formula, str(k.label), k.threshold, math.copysign(1, k.x))


def _keypoints_by_key(settings: Settings) -> dict[tuple, float]:
    kps = sweep.run_sweep(settings, with_rows=False).keypoints
    out = {_key(k): k.x for k in kps}
    assert len(out) == len(kps), "two key points share a key"
    return out


def _model_and_real(dtype: str, formula_names: tuple[str, ...], mode: str, backend: str):
    base = Settings(dtypes=(dtype,), formulas=formula_names, mode=mode, grad=True)
    model = _keypoints_by_key(base)
    real = _keypoints_by_key(Settings(dtypes=(dtype,), formulas=formula_names, mode=mode, grad=True,
                                      backend=backend))
    return model, real


def _differing(model: dict, real: dict) -> set[tuple]:
    return {k for k in model.keys() | real.keys() if model.get(k) != real.get(k)}


def test_torch_native_mode_is_upcast():
    assert sweep.native(Settings(backend="torch")).mode == "upcast"
    assert sweep.native(Settings(backend="jax")).mode == "xla"
    assert sweep.native(Settings(backend="tensorflow")).mode == "tf"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_keypoints_identical_to_models_narrow(dtype):
    """Every key point (including the gradient's) of torch's real ops sits at the model's x."""
    _torch()
    model, real = _model_and_real(dtype, TORCH_FORMULAS, "upcast", "torch")
    assert model.keys() == real.keys()
    assert {k: real[k] for k in model} == model
    names = {k[1] for k in model}
    assert {"roundtrip_overflow", "bce_zero", "grad_dead_zone"} <= names


@pytest.mark.slow
def test_torch_keypoints_float32_are_torchs():
    """float32: every key point of the upcast models is torch's where its kernels are modelled
    (`sleef.py`), also the two numpy's functions missed:

    - ``roundtrip_small_x_limit`` (both thresholds): set by the last ULP of sigmoid near 1/2,
      where torch's vectorised exp (SLEEF's) and numpy's differ.
    - torch-bce-logits, label 1, ``bce_zero``: the loss is ``log1p(exp(-x))``; torch's vectorised
      log1p (SLEEF's, AVX2/AVX512) returns 0 for the smallest subnormal, whose correctly rounded
      log1p is itself, so torch's loss reaches 0 near 102.9 instead of -ln(2**-150) = 104.0.
      torch's scalar kernel (ATEN_CPU_CAPABILITY=default, the C library's log1pf) has no such gap.
    """
    torch = _torch()
    if not sleef.modelled():
        pytest.skip(f"torch's float32 kernels on this CPU ({sleef.torch_capability()}) are not modelled")
    model, real = _model_and_real("float32", TORCH_FORMULAS, "upcast", "torch")
    assert model.keys() == real.keys()
    key = ("float32", "bce_zero", "torch-bce-logits", "1", None, 1.0)
    smallest = torch.tensor(float.fromhex("0x1p-149"), dtype=torch.float32)  # 1.4e-45
    if float(torch.log1p(smallest)) == 0.0:
        assert real[key] < 150 * math.log(2) - 1
        x = np.float32(real[key])
        assert float(torch.exp(-torch.tensor(x))) == float.fromhex("0x1p-149")
        below = np.nextafter(x, np.float32(0))
        xt = torch.tensor([float(below)], dtype=torch.float32)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt, torch.ones(1), reduction="none")
        assert float(loss[0]) > 0.0  # one step toward 0 torch's loss is not yet 0
    assert _differing(model, real) == set()


def _first_torch_onset(torch, thr: float, lo: float, hi: float) -> float:
    """First float32 x in [lo, hi] where torch's logit(sigmoid(x)) is off by thr relative, by a
    scan of every value in blocks of 2**22 (whole 32-element blocks: one kernel path)."""
    o_lo, o_hi = (int(np.float32(v).view(np.int32)) for v in (lo, hi))
    for start in range(o_lo, o_hi + 1, 1 << 22):
        x = np.arange(start, min(start + (1 << 22), o_hi + 1), dtype=np.int32).view(np.float32)
        rt = torch.logit(torch.sigmoid(torch.from_numpy(x))).numpy()
        with np.errstate(all="ignore"):
            rel = np.abs(rt.astype(np.float64) - x) / x
        rel[~np.isfinite(rel)] = np.inf
        hits = np.flatnonzero(rel >= thr)
        if hits.size:
            return float(x[hits[0]])
    raise AssertionError("no onset")


@pytest.mark.slow  # torch's key points on float32
def test_torch_float32_roundtrip_onset_is_the_first_x():
    """The 1e-3 round-trip onset through real torch is the first float32 x with that error.

    Regression: torch's float32 sigmoid differs by 1 ULP between its SIMD blocks and an array's
    scalar remainder (AVX512: x = 12.0816555 gives 0.99999428 in a block, 0.99999440 alone), which
    made single-point evaluations disagree with bulk ones; the backend now pads to whole blocks.
    """
    torch = _torch()
    thr = 1e-3
    want = _first_torch_onset(torch, thr, 1.0, 12.6)  # 12.24105
    kps = keypoints.roundtrip_points("float32", "upcast", (thr,), backend=backends.get("torch"))
    (onset,) = [k for k in kps if k.name == "roundtrip_rel_err_onset"]
    assert onset.x == want


def _first_bf16_above(t: float) -> float:
    """The smallest bfloat16 value greater than t > 0."""
    v = np.asarray([t]).astype(ml_dtypes.bfloat16)
    if float(v[0]) <= t:
        v = (v.view(np.uint16) + np.uint16(1)).view(ml_dtypes.bfloat16)
    return float(v[0])


def _jax():
    jax = pytest.importorskip("jax", reason=NO_JAX)
    pytest.importorskip("optax", reason=NO_JAX)
    return jax


@pytest.mark.slow
def test_jax_keypoints_identical_to_models_float16():
    """float16 with optax: identical key points. XLA flushes float32 subnormals to 0 (see below),
    but any value that small is far below float16's smallest subnormal, 2**-24, and rounds to 0
    in float16 anyway."""
    _jax()
    model, real = _model_and_real("float16", ("optax",), "per-op", "jax")
    assert model.keys() == real.keys()
    assert {k: real[k] for k in model} == model


@pytest.mark.slow  # jax's key points
def test_jax_keypoints_bfloat16_differ_where_xla_flushes_subnormals():
    """bfloat16 with optax: XLA on CPU flushes float32 subnormals to zero (results and inputs).

    bfloat16 has float32's exponent range, so exp(-x) below 2**-126 (x > 126 ln 2 = 87.34) is 0 in
    XLA but a subnormal in numpy. The first bfloat16 value past it is 87.5 (spacing 0.5 there), so
    at x = -87.5 the round trip fails (sigmoid is 0) instead of at -89, and optax's loss and gradient
    are exactly 0 from |x| = 87.5 instead of 93; at 87.5 XLA's gradient is also more than 10x too
    small, a grad_vanishing point the model (which keeps subnormals) does not have. Everything else
    is identical.
    """
    jax = _jax()
    import jax.numpy as jnp

    # the cause, on jax itself
    flush = jax.jit(lambda a, b: a * b)
    assert float(flush(jnp.float32(float.fromhex("0x1p-127")), jnp.float32(1.0))) == 0.0
    assert float(jax.jit(jnp.exp)(jnp.float32(-87.5))) == 0.0
    assert np.exp(np.float32(-87.5)) > 0

    model, real = _model_and_real("bfloat16", ("optax",), "per-op", "jax")
    first = _first_bf16_above(126 * math.log(2))  # exp(-x) < 2**-126: 87.5
    moved = {
        ("bfloat16", "roundtrip_underflow", None, "None", None, -1.0): -first,
        ("bfloat16", "bce_zero", "optax", "1", None, 1.0): first,
        ("bfloat16", "bce_zero", "optax", "0", None, -1.0): -first,
        ("bfloat16", "bce_zero", "optax", "pair", None, 1.0): first,
        ("bfloat16", "grad_dead_zone", "optax", "1", None, 1.0): first,
        ("bfloat16", "grad_dead_zone", "optax", "0", None, -1.0): -first,
    }
    added = {
        ("bfloat16", "grad_vanishing", "optax", "1", None, 1.0): first,
        ("bfloat16", "grad_vanishing", "optax", "0", None, -1.0): -first,
    }
    assert real.keys() == model.keys() | added.keys()
    assert not added.keys() & model.keys()
    assert _differing(model, real) == moved.keys() | added.keys()
    assert {k: real[k] for k in (moved | added)} == moved | added
    # the model keeps subnormals: exp(-x) overflows bfloat16's max (round trip), and the loss
    # exp(-x) drops to half the smallest subnormal, 2**-134, and rounds to 0 (loss and gradient)
    bf16_max = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    assert model[("bfloat16", "roundtrip_underflow", None, "None", None, -1.0)] == -_first_bf16_above(
        math.log(bf16_max))
    assert model[("bfloat16", "bce_zero", "optax", "1", None, 1.0)] == _first_bf16_above(134 * math.log(2))
    assert model[("bfloat16", "grad_dead_zone", "optax", "1", None, 1.0)] == _first_bf16_above(
        134 * math.log(2))


# ---------------------------------------------------------------- values: model vs torch


@pytest.mark.slow  # torch on every 16-bit value
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_upcast_model_matches_torch_cpu_on_every_value(dtype):
    """Bit for bit on every finite value where `sleef.py` models torch's float32 kernels; elsewhere
    a handful where torch's vectorised exp is 1 ULP off numpy's (float16: two inputs near
    x = -0.0103 and -0.0044)."""
    torch = _torch()
    F = torch.nn.functional
    x = dtypes.get(dtype).finite_values()
    dt = x.dtype
    ev = Evaluator(dtype, "upcast")
    xt = to_torch(torch, x)
    assert np.array_equal(from_torch(xt, dt).view(np.uint16), x.view(np.uint16))  # exact conversion

    sig = ulp_distance(formulas.evaluate_sigmoid(x, ev), from_torch(torch.sigmoid(xt), dt))
    bad = np.flatnonzero(sig)
    assert len(bad) <= (0 if sleef.modelled() else 4), x[bad]
    assert sig.max() <= 1
    # the round trip differs only where its sigmoid does (a 1-ULP sigmoid near 1/2 moves the logit a lot)
    rt = ulp_distance(formulas.evaluate_roundtrip(x, ev), from_torch(torch.logit(torch.sigmoid(xt)), dt))
    assert set(np.flatnonzero(rt)) <= set(bad)

    for label in (1, 0):
        y = np.full(x.shape, label)
        yt = torch.full(xt.shape, float(label), dtype=xt.dtype)
        real = {
            "torch-bce": F.binary_cross_entropy(torch.sigmoid(xt), yt, reduction="none"),
            "torch-bce-logits": F.binary_cross_entropy_with_logits(xt, yt, reduction="none"),
        }
        for name, t in real.items():
            d = ulp_distance(formulas.get(name)(x, y, None, ev), from_torch(t, dt))
            assert np.count_nonzero(d) <= 4, (name, label, x[np.flatnonzero(d)])
            assert d.max() <= 1, (name, label)
    if dtype == "bfloat16":
        assert len(bad) == 0


@pytest.mark.slow  # torch on a dense float32 sample
def test_float32_bce_with_logits_model_within_4_ulp_of_torch():
    """Dense float32 grid: within 4 ULP wherever both are normal numbers.

    For label 0 and x < 0 both compute ``x - log_sigmoid(x)``, which cancels: 1 ULP of the
    log_sigmoid term (numpy's and torch's exp/log1p differ in the last bit) is many ULPs of the small
    loss. There the ULP is taken at the magnitude of the terms, max(|loss|, |x|).
    """
    torch = _torch()
    F = torch.nn.functional
    x = np.linspace(-100, 100, 20001).astype(np.float32)
    ev = Evaluator("float32", "upcast")
    xt = torch.from_numpy(x.copy())
    for label in (1, 0):
        y = np.full(x.shape, label, dtype=np.float32)
        real = F.binary_cross_entropy_with_logits(xt, torch.from_numpy(y), reduction="none").numpy()
        model = formulas.get("torch-bce-logits")(x, y, None, ev)
        normal = (np.abs(real) >= F32_TINY) & (np.abs(model) >= F32_TINY)
        normal &= np.isfinite(real) & np.isfinite(model)
        assert normal.sum() > 10_000
        scale = np.abs(real.astype(np.float64))
        if label == 0:
            scale = np.maximum(scale, np.abs(x.astype(np.float64)))
        ulp = np.spacing(scale.astype(np.float32)).astype(np.float64)
        gap = np.abs(model.astype(np.float64) - real.astype(np.float64))
        worst = (gap[normal] / ulp[normal]).max()
        assert worst <= 4, (label, worst)
        if label == 1:  # no cancellation: the plain ULP distance of the results
            assert ulp_distance(model[normal], real[normal]).max() <= 4


# ---------------------------------------------------------------- the CLI around --backend


@pytest.mark.slow  # torch's key points
def test_points_backend_torch_reports_formulas_without_counterpart():
    _torch()
    doc = strict_json(ok("points", "--backend", "torch", "--format", "json"))
    notes = " ".join(doc["notes"])
    for name in NO_TORCH_COUNTERPART:
        assert name in notes, (name, doc["notes"])
    assert "not audited" in notes
    kps = doc["keypoints"]
    assert kps
    assert {k["formula"] for k in kps} <= {None, *TORCH_FORMULAS}
    assert {k["formula"] for k in kps} >= set(TORCH_FORMULAS)
    assert {k["backend"] for k in kps} == {"torch-cpu"}
    assert {k["mode"] for k in kps} == {"upcast"}
    assert doc["settings"]["backend"] == "torch"
    assert doc["settings"]["mode"] == "upcast"  # regression: said the mode asked for, "per-op"


@pytest.mark.parametrize("command", [("sweep",), ("check", "3")])
def test_settings_carry_the_mode_the_backend_follows(command):
    """Regression: settings.mode said the mode asked for while the records carried torch's own."""
    _torch()
    doc = strict_json(ok(*command, "--backend", "torch", "--dtype", "float16", "--formula", "keras3",
                         "--format", "json"))
    assert doc["settings"]["mode"] == "upcast"
    assert {r["mode"] for r in doc.get("rows", [])} <= {"upcast"}


def test_points_backend_torch_float8_is_a_note_not_a_crash():
    _torch()
    r = run("points", "--backend", "torch", "--dtype", "float8_e4m3fn", "--dtype", "float8_e5m2",
            "--format", "json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stderr == ""
    doc = strict_json(r.stdout)
    assert doc["keypoints"] == []
    for d in ("float8_e4m3fn", "float8_e5m2"):
        mine = [n for n in doc["notes"] if n.startswith(f"{d}:")]
        assert mine, doc["notes"]
        assert all("torch" in n and "not audited" in n for n in mine)
        assert any("round trip" in n for n in mine)


def test_device_cuda_without_cuda_is_one_line():
    torch = _torch()
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    assert_usage_error(run("points", "--backend", "torch", "--device", "cuda"), "cuda")


@pytest.mark.parametrize(("module", "extra"), [("torch", "torch"), ("jax", "jax")])
def test_backend_without_extra_says_how_to_install(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # `import torch` now raises ImportError
    monkeypatch.setattr(backends, "_BACKENDS", {})
    line = assert_usage_error(run("points", "--backend", module, "--dtype", "float16"))
    assert f"pip install 'bce-audit[{extra}]'" in line


@pytest.mark.slow
def test_fidelity_torch_json():
    torch = _torch()
    r = run("fidelity", "--backend", "torch", "--format", "json")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stderr == ""
    doc = strict_json(r.stdout)
    assert doc["kind"] == "fidelity"
    assert doc["backend"] == "torch-cpu"
    diffs = doc["differences"]
    assert {d["dtype"] for d in diffs} == {"float16", "bfloat16", "float32"}
    quantities = {d["quantity"] for d in diffs}
    assert {"sigmoid", "roundtrip", *TORCH_FORMULAS, *(f"grad {n}" for n in TORCH_FORMULAS)} <= quantities

    # its float16 sigmoid count is the one computed here with torch directly
    x = dtypes.get("float16").finite_values()
    ev = Evaluator("float16", "upcast")
    mine = int(np.count_nonzero(ulp_distance(formulas.evaluate_sigmoid(x, ev),
                                             from_torch(torch.sigmoid(to_torch(torch, x)), x.dtype))))
    (f16,) = [d for d in diffs if d["dtype"] == "float16" and d["quantity"] == "sigmoid"]
    assert f16["differ"] == mine
    assert f16["inputs"] == len(x)
    assert all(d["differ"] == 0 for d in diffs if d["dtype"] == "bfloat16")

    pairs = doc["keypoints"]
    assert {p["dtype"] for p in pairs} == {"float16", "bfloat16", "float32"}
    narrow = [p for p in pairs if p["dtype"] in ("float16", "bfloat16")]
    assert narrow
    assert all(p["steps"] == 0 and p["model_x"] == p["real_x"] for p in narrow), narrow
    if sleef.modelled():  # torch's float32 kernels are modelled: its key points too
        assert all(p["steps"] == 0 for p in pairs), [p for p in pairs if p["steps"]]


# ---------------------------------------------------------------- jax: the xla mode


@pytest.mark.slow
def test_jax_backend_fidelity_is_exact_in_the_xla_mode():
    """Every float16/bfloat16 value and the dense float32 grid: the xla mode's models (XLA's own
    exp, log, log1p, sigmoid, logit, optax and its gradient, and the one-jit round trip) give
    what jax gives, bit for bit."""
    pytest.importorskip("jax", reason=NO_JAX)
    from bce_audit import fidelity

    diffs = fidelity.differences(backends.get("jax"))
    wanted = {"sigmoid", "roundtrip", "roundtrip in one jit", "optax", "grad optax"}
    assert {d.quantity for d in diffs} >= wanted
    for d in diffs:
        assert d.differ == 0, d


@pytest.mark.slow  # imports JAX and optax
def test_xla_mode_optax_matches_jax_on_a_sample():
    jax = pytest.importorskip("jax", reason=NO_JAX)
    optax = pytest.importorskip("optax", reason=NO_JAX)
    x = np.linspace(-120, 120, 40_001).astype(np.float32)
    ev = Evaluator("float32", "xla")
    for label in (0, 1):
        y = np.full(x.shape, label, dtype=np.float32)
        real = np.asarray(jax.jit(optax.sigmoid_binary_cross_entropy)(x, y))
        model = formulas.get("optax")(x, y, None, ev)
        np.testing.assert_array_equal(model, real)
        assert not np.array_equal(formulas.get("optax")(x, y, None, Evaluator("float32", "per-op")), real)
