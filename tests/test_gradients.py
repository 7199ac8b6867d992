"""The gradient audit: models against real autograd, the exact gradient, and tight key points.

The exact gradient of BCE with respect to the logit is ``sigmoid(x) - y``. Real torch and jax
gradients are computed here with their own autograd (not through `bce_audit.backends`);
ULP distances count dtype steps between two values through their bit patterns. Key points are
checked for tightness by scans written here: the property holds at the reported x (and, for a
dead zone, all the way to the end of the tail) and not one step closer to 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from cli_support import ok, strict_json
from mpmath import mp, mpf
from ulp_support import ordinals, ulp_distance

from bce_audit import dtypes, formulas, gradients, keypoints, reference, sleef
from bce_audit.formulas import Evaluator

NO_TORCH = "the torch extra is not installed: pip install 'bce-audit[torch]'"
NO_JAX = "the jax extra is not installed: pip install 'bce-audit[jax]'"
TORCH_FORMULAS = ("torch-bce", "torch-bce-logits")
F32 = np.float32
F32_TINY = float(np.finfo(np.float32).tiny)  # 2**-126, 1.18e-38
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
KERAS_EPS = 1e-7
TEN = 10.0  # "vanishing": the gradient is more than ten times too small


# ---------------------------------------------------------------- helpers



def from_ordinals(o, dtype) -> np.ndarray:
    dt = np.dtype(dtype)
    bits = dt.itemsize * 8
    o = np.asarray(o, dtype=np.int64)
    raw = np.where(o < 0, np.abs(o) | (1 << (bits - 1)), o).astype(f"uint{bits}")
    return raw.view(dt)



def exact64(x: np.ndarray, label: int) -> np.ndarray:
    """sigmoid(x) - y in float64 without cancellation: -sigmoid(-x) for label 1, sigmoid(x) for 0."""
    t = x.astype(np.float64) * (-1.0 if label == 1 else 1.0)
    with np.errstate(over="ignore"):
        e = np.exp(-np.abs(t))
        s = np.where(t >= 0, 1 / (1 + e), e / (1 + e))
    return -s if label == 1 else s


def model_grad(name: str, x: np.ndarray, label: int, mode: str, eps=KERAS_EPS) -> np.ndarray:
    ev = Evaluator(x.dtype.name, mode)
    return gradients.grad(name, x, np.full(x.shape, label), eps, ev)


def torch_grad(torch, name: str, x: np.ndarray, label: int) -> np.ndarray:
    """torch's autograd of one loss, elementwise, in x's dtype (float16, bfloat16 or float32)."""
    F = torch.nn.functional
    tdt = getattr(torch, x.dtype.name)
    xt = torch.tensor(x.astype(np.float32)).to(tdt).requires_grad_()  # exact in every case
    yt = torch.full(xt.shape, float(label), dtype=tdt)
    if name == "torch-bce":
        loss = F.binary_cross_entropy(torch.sigmoid(xt), yt, reduction="none")
    else:
        loss = F.binary_cross_entropy_with_logits(xt, yt, reduction="none")
    loss.backward(torch.ones_like(loss))
    return xt.grad.float().numpy().astype(x.dtype)


def torch_sigmoid(torch, x: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.tensor(x.astype(np.float32))).numpy()


# ---------------------------------------------------------------- models vs torch autograd


@pytest.mark.slow  # every 16-bit value through torch's autograd
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", TORCH_FORMULAS)
def test_torch_gradient_models_match_autograd_on_every_value(dtype, name):
    """Bit for bit (NaNs in the same places) but for a handful of inputs, each 1 ULP off.

    The exceptions were float16 inputs near x = -0.0103 and -0.0044, where torch's vectorised exp
    (SLEEF's) gives a sigmoid 1 ULP away from numpy's; where `sleef.py` models torch's float32
    kernels (upcast's float32 opmath runs them) there are none.
    """
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    x = dtypes.get(dtype).finite_values()
    for label in (1, 0):
        d = ulp_distance(model_grad(name, x, label, "upcast"), torch_grad(torch, name, x, label))
        bad = np.flatnonzero(d)
        assert len(bad) <= 4, (label, x[bad])
        assert d.max() <= 1, (label, x[bad], d[bad])
        if dtype == "bfloat16" or sleef.modelled():
            assert len(bad) == 0, x[bad]


@pytest.mark.slow  # torch autograd on every float16 value
def test_torch_float16_bce_gradient_is_nan_once_sigmoid_saturates():
    """In float16 BCELoss's backward clamp 1e-12 rounds to 0, so once p rounds to 1 the
    gradient is 0/0 (label 1) or inf*0 (label 0): NaN in torch, and in the model."""
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    x = np.array([9.0, 12.0, 60000.0], dtype=np.float16)
    assert np.all(torch_sigmoid(torch, x).astype(np.float16) == 1)
    for label in (1, 0):
        assert np.isnan(torch_grad(torch, "torch-bce", x, label)).all()
        assert np.isnan(model_grad("torch-bce", x, label, "upcast")).all()


# ULPs of max(|g|, p) allowed on the float32 grid where the gradient is p - 1 (label 1)
F32_TOLERANCE = {"torch-bce": 8, "torch-bce-logits": 4}


@pytest.mark.parametrize("name", TORCH_FORMULAS)
def test_torch_gradient_models_float32_within_a_few_ulp(name):
    """Dense float32 grid, where both are normal numbers.

    Label 0 (g = p scaled): within 6 ULP. Label 1: the backward pass forms ``p - 1`` from a p near 1,
    so a last-bit difference in p (numpy's and torch's exp differ there) is many ULPs of a small
    gradient: measured in ULPs of max(|g|, p), the magnitude the backward pass computes in.
    """
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    x = np.linspace(-100, 100, 20001).astype(np.float32)
    p = torch_sigmoid(torch, x).astype(np.float64)
    for label in (1, 0):
        model = model_grad(name, x, label, "upcast")
        real = torch_grad(torch, name, x, label)
        normal = (np.abs(model) >= F32_TINY) & (np.abs(real) >= F32_TINY)
        normal &= np.isfinite(model) & np.isfinite(real)
        assert normal.sum() > 5000
        if label == 0:
            assert ulp_distance(model[normal], real[normal]).max() <= 6
            continue
        scale = np.maximum(np.abs(real.astype(np.float64)), p)
        ulp = np.spacing(scale.astype(np.float32)).astype(np.float64)
        gap = np.abs(model.astype(np.float64) - real.astype(np.float64))
        assert (gap[normal] / ulp[normal]).max() <= F32_TOLERANCE[name]
        # where p is not near 1 there is no cancellation: plain ULPs
        far = normal & (x < 0)
        assert ulp_distance(model[far], real[far]).max() <= F32_TOLERANCE[name]


# ---------------------------------------------------------------- optax model vs jax.grad


def _jax_grad(x: np.ndarray, label: int) -> np.ndarray:
    jax = pytest.importorskip("jax", reason=NO_JAX)
    optax = pytest.importorskip("optax", reason=NO_JAX)
    import jax.numpy as jnp

    y = jnp.asarray(np.full(x.shape, label, dtype=x.dtype))
    g = jax.grad(lambda t: jnp.sum(optax.sigmoid_binary_cross_entropy(t, y)))(jnp.asarray(x))
    out = np.asarray(g)
    assert out.dtype == x.dtype
    return out


@pytest.mark.slow  # jax's gradients
def test_optax_gradient_model_float32_within_4_ulp_of_jax():
    """Where the exact gradient is a normal float32 number (XLA flushes subnormals, the model not)."""
    x = np.linspace(-100, 100, 20001).astype(np.float32)
    for label in (1, 0):
        real = _jax_grad(x, label)
        model = model_grad("optax", x, label, "per-op")
        normal = np.abs(exact64(x, label)) >= F32_TINY
        assert normal.sum() > 15_000
        assert ulp_distance(model[normal], real[normal]).max() <= 4, label


@pytest.mark.slow  # jax's gradients
def test_optax_gradient_model_float16_matches_jax():
    """Every finite float16: bit for bit but for at most a handful, each 1 ULP off."""
    x = dtypes.get("float16").finite_values()
    for label in (1, 0):
        d = ulp_distance(model_grad("optax", x, label, "per-op"), _jax_grad(x, label))
        assert np.count_nonzero(d) <= 4, x[np.flatnonzero(d)]
        assert d.max() <= 1


# ---------------------------------------------------------------- the exact gradient


XS_EXACT = [0.0, 1e-300, 1e-8, 0.5, 1.0, 2.0, 16.6, 30.0, 100.0, 700.0]


@pytest.mark.parametrize("x", [*XS_EXACT, *(-v for v in XS_EXACT[1:])])
@pytest.mark.parametrize("label", [1, 0])
def test_exact_grad_against_mpmath(x, label):
    """``1/(1+exp(-x)) - y`` evaluated directly in mpmath at 200 bits, plus the bits the subtraction
    cancels for label 1 (p - 1 loses about x / ln 2 bits when x > 0)."""
    with mp.workprec(200 + int(1.45 * abs(x))):
        mx = mpf(x)
        want = 1 / (1 + mp.exp(-mx)) - label
        got = gradients.exact_grad(reference.exact(np.float64(x)), label)
        assert (got < 0) == (label == 1)
        assert abs(got - want) <= abs(want) * mpf(2) ** -120, (got, want)
    # the float64 magnitude used for the 10x test agrees with it
    mag = gradients.exact_magnitude(np.array([x], dtype=np.float64), label)[0]
    if abs(float(want)) > 1e-300:
        assert mag == pytest.approx(abs(float(want)), rel=1e-14)


# ---------------------------------------------------------------- tight key points


FLOOR = {d: float(np.finfo(d).smallest_subnormal) / 2 * TEN for d in ("float16", "float32")}


def _vanishing(g: np.ndarray, x: np.ndarray, label: int) -> np.ndarray:
    """|g| more than 10x below |sigmoid(x) - y|, where that is above 10x the rounding-to-0 limit
    (half the smallest subnormal: below it even a correctly rounded gradient is 0)."""
    exact = np.abs(exact64(x, label))
    return (np.abs(g.astype(np.float64)) * TEN < exact) & (exact > FLOOR[x.dtype.name])


def _tail(dtype, o, end, sign) -> np.ndarray:
    """Ordinals from o to end (inclusive): all of them for 16-bit dtypes, else a sample."""
    if np.dtype(dtype).itemsize <= 2:
        return np.arange(o, end + sign, sign)
    lo, hi = sorted((o, end))
    sample = np.concatenate([np.arange(lo, min(lo + 4096, hi + 1)), np.arange(max(hi - 4096, lo), hi + 1),
                             np.linspace(lo, hi, 20011).round().astype(np.int64)])
    return np.unique(sample)


def _before(dtype, o, sign) -> np.ndarray:
    """Ordinals strictly between 0 and o: all for 16-bit dtypes, else the last 4096 and a sample."""
    if np.dtype(dtype).itemsize <= 2:
        return np.arange(0, o, sign)
    n = abs(o)
    part = np.concatenate([np.arange(max(n - 4096, 0), n),
                           np.linspace(0, n - 1, 20011).round().astype(np.int64)])
    return np.unique(part) * sign


GRID_CASES = [(d, m, f) for d, m in (("float16", "per-op"), ("float16", "upcast"), ("float32", "per-op"))
              for f in formulas.NAMES if gradients.has_grad(f)]  # sklearn and keras3-numpy: no autodiff


@pytest.mark.parametrize(("dtype", "mode", "name"), GRID_CASES)
@pytest.mark.parametrize("label", [1, 0])
def test_grad_points_are_tight(dtype, mode, name, label):
    kps = keypoints.grad_points(dtype, mode, name, KERAS_EPS, label)
    top = int(ordinals(np.array([np.finfo(dtype).max], dtype=dtype))[0])

    def g(o):
        x = from_ordinals(o, dtype)
        return x, model_grad(name, x, label, mode)

    for k in kps:
        assert k.dtype == dtype and k.mode == mode and k.formula == name and k.label == label
        assert k.backend == "numpy"
    for sign in (1, -1):
        end = sign * top
        found = {k.name: k for k in kps if math.copysign(1, k.x) == sign}
        assert len(found) == len([k for k in kps if math.copysign(1, k.x) == sign])

        dead = found.get("grad_dead_zone")
        if dead is None:
            assert model_grad(name, from_ordinals([end], dtype), label, mode)[0] != 0
        else:
            o = int(ordinals(np.array([dead.x], dtype=dtype))[0])
            _, run_ = g(_tail(dtype, o, end, sign))
            assert np.all(run_ == 0), (dead.x, run_[run_ != 0][:5])
            _, prev = g([o - sign])
            assert prev[0] != 0, dead.x
            assert dead.value == 0.0

        van = found.get("grad_vanishing")
        if van is None:
            if np.dtype(dtype).itemsize <= 2:
                x, gv = g(np.arange(0, end + sign, sign))
                assert not _vanishing(gv, x, label).any()
        else:
            o = int(ordinals(np.array([van.x], dtype=dtype))[0])
            x, gv = g([o, o - sign])
            assert list(_vanishing(gv, x, label)) == [True, False], (van.x, gv)
            assert van.value == float(gv[0])
            x, gv = g(_before(dtype, o, sign))
            assert not _vanishing(gv, x, label).any(), x[_vanishing(gv, x, label)][:5]

        bad = found.get("grad_nonfinite")
        if bad is not None:
            o = int(ordinals(np.array([bad.x], dtype=dtype))[0])
            _, gv = g([o, o - sign])
            assert list(np.isfinite(gv)) == [False, True], (bad.x, gv)
            _, gv = g(_before(dtype, o, sign))
            assert np.isfinite(gv).all()
        elif np.dtype(dtype).itemsize <= 2:
            _, gv = g(np.arange(0, end + sign, sign))
            assert np.isfinite(gv).all()


def _one(kps, name: str, sign: int):
    found = [k for k in kps if k.name == name and math.copysign(1, k.x) == sign]
    assert len(found) == 1, (name, sign, kps)
    return found[0]


def _f32_sigmoid(x: np.ndarray) -> np.ndarray:
    one = F32(1)
    with np.errstate(over="ignore"):
        return one / (one + np.exp(-x.astype(np.float32)))


def test_torch_bce_logits_dead_zone_is_the_float32_overflow_point():
    """Label 1: g = sigmoid(x) - 1 is exactly 0 once sigmoid(x) rounds to 1, i.e. once exp(-x) is
    below half of eps: x = -ln(eps/2) = 16.64, the round trip's overflow point."""
    kps = keypoints.grad_points("float32", "upcast", "torch-bce-logits", None, 1)
    dead = _one(kps, "grad_dead_zone", 1)
    predicted = -math.log(EPS32 / 2)
    assert abs(dead.x - predicted) <= float(np.spacing(F32(predicted)))
    overflow = keypoints.roundtrip_points("float32", "upcast", ())
    assert [k.x for k in overflow if k.name == "roundtrip_overflow"] == [dead.x]
    x = np.array([dead.x], dtype=np.float32)
    prev = np.nextafter(x, F32(0))
    assert _f32_sigmoid(x)[0] == 1 and _f32_sigmoid(prev)[0] < 1


def test_torch_bce_logits_dead_zone_in_real_torch():
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    dead = _one(keypoints.grad_points("float32", "upcast", "torch-bce-logits", None, 1), "grad_dead_zone", 1)
    x = np.array([dead.x], dtype=np.float32)
    xs = np.concatenate([np.nextafter(x, F32(0)), x, np.float32([30.0, 1e30])])
    g = torch_grad(torch, "torch-bce-logits", xs, 1)
    assert g[0] != 0
    assert np.all(g[1:] == 0)


def _issue_103316_x() -> float:
    """Where BCELoss's backward makes the gradient 10x too small for label 1.

    aten's BCELoss backward is ``(p - y) / max((1 - p) * p, 1e-12)``, then sigmoid's backward
    multiplies by ``(1 - p) * p``. Once ``(1 - p) * p < 1e-12`` the gradient is
    ``-(1 - p)**2 * p * 1e12`` against the exact ``-(1 - p)``: ten times too small when
    ``p * (1 - p) * 1e12 < 1/10``, i.e. (to first order) ``sigmoid(x) = 1e-13``.
    """
    p = 1e-13
    return math.log(p / (1 - p))


def test_issue_103316_torch_bce_gradient_vanishes_for_negative_logits():
    """pytorch issue 103316: BCELoss(sigmoid(x)) gives a vanishing gradient for very negative x."""
    kps = keypoints.grad_points("float32", "upcast", "torch-bce", None, 1)
    van = _one(kps, "grad_vanishing", -1)
    want = _issue_103316_x()  # -29.934
    assert abs(van.x - want) <= 4 * float(np.spacing(F32(abs(want))))
    assert van.value == pytest.approx(-1 / TEN, rel=1e-4)  # just past 10x too small
    # label 0's gradient p**2 (1 - p) 1e12 against the exact p vanishes at the same p
    van0 = _one(keypoints.grad_points("float32", "upcast", "torch-bce", None, 0), "grad_vanishing", -1)
    assert abs(van0.x - want) <= 4 * float(np.spacing(F32(abs(want))))


def test_issue_103316_in_real_torch():
    """The same point through torch's own autograd: 10x too small at x, not one step toward 0."""
    torch = pytest.importorskip("torch", reason=NO_TORCH)
    van = _one(keypoints.grad_points("float32", "upcast", "torch-bce", None, 1), "grad_vanishing", -1)
    x = np.array([van.x], dtype=np.float32)
    xs = np.concatenate([x, np.nextafter(x, F32(0)), np.float32([-40.0, -60.0])])
    g = torch_grad(torch, "torch-bce", xs, 1).astype(np.float64)
    exact = np.abs(exact64(xs, 1))
    assert list(np.abs(g) * TEN < exact) == [True, False, True, True]


def test_keras3_dead_zone_on_the_bad_tail_is_the_clip_bound():
    """Keras 3 clips p to [eps, 1 - eps] and the clip passes no gradient outside: label 1's gradient
    is exactly 0 once sigmoid(x) < float32(1e-7), from x = ln(lo / (1 - lo)) = -16.12 on."""
    kps = keypoints.grad_points("float32", "per-op", "keras3", KERAS_EPS, 1)
    dead = _one(kps, "grad_dead_zone", -1)
    lo = float(F32(KERAS_EPS))  # 1.0000000117e-07
    want = math.log(lo / (1 - lo))
    assert abs(dead.x - want) <= 2 * float(np.spacing(F32(abs(want))))
    x = np.array([dead.x], dtype=np.float32)
    assert _f32_sigmoid(x)[0] < F32(KERAS_EPS)
    assert _f32_sigmoid(np.nextafter(x, F32(0)))[0] >= F32(KERAS_EPS)


# ---------------------------------------------------------------- the CLI


def test_sweep_grad_json_rows_and_keypoints():
    doc = strict_json(ok("sweep", "--grad", "--formula", "torch-bce", "--dtype", "float32",
                         "--format", "json", "--rows", "161"))
    assert doc["settings"]["grad"] is True
    rows = [r for r in doc["rows"] if r["quantity"] == "grad"]
    assert {r["label"] for r in rows} == {1, 0}
    assert len(rows) == 2 * 161
    for r in rows:
        assert r["formula"] == "torch-bce"
        x = np.array([r["x_dtype"]], dtype=np.float32)
        assert float(x[0]) == r["x_dtype"]
        want = float(exact64(x, r["label"])[0])
        if abs(want) > 1e-300:
            assert r["exact"] == pytest.approx(want, rel=1e-12), r
    names = {k["name"] for k in doc["keypoints"] if k["formula"] == "torch-bce"}
    assert {"grad_dead_zone", "grad_vanishing"} <= names
    # the grid's value at x = -40 (label 1) is issue 103316's: far below the exact -1
    (r,) = [r for r in rows if r["label"] == 1 and r["x"] == -40.0]
    assert abs(r["value"]) * TEN < abs(r["exact"])


def _grad_points_json(*args: str) -> set[tuple]:
    doc = strict_json(ok("points", "--grad", "--formula", "torch-bce", "--format", "json", *args))
    return {(k["name"], k["label"], k["x"], k["backend"]) for k in doc["keypoints"]
            if k["name"].startswith("grad_")}


@pytest.mark.slow  # torch's gradient key points
def test_points_grad_backend_torch():
    pytest.importorskip("torch", reason=NO_TORCH)
    real = _grad_points_json("--backend", "torch")
    assert real
    assert {b for *_, b in real} == {"torch-cpu"}
    assert {n for n, *_ in real} >= {"grad_dead_zone", "grad_vanishing"}
    # float32: torch's real gradient has the model's key points, at the same x
    model = _grad_points_json("--mode", "upcast")
    assert {k[:3] for k in real} == {k[:3] for k in model}


def test_check_grad_shows_gradient_rows():
    out = ok("check", "17", "--grad", "--dtype", "float32")
    lines = [line.strip() for line in out.splitlines()]
    grad_lines = [line for line in lines if line.startswith("grad ")]
    assert len(grad_lines) >= 2 * len([f for f in formulas.NAMES if gradients.has_grad(f)]), grad_lines
    doc = strict_json(ok("check", "17", "--grad", "--dtype", "float32", "--format", "json"))
    rows = [r for r in doc["rows"] if r["quantity"] == "grad"]
    audited = [f for f in formulas.NAMES if gradients.has_grad(f)]
    assert {(r["formula"], r["label"]) for r in rows} == {(f, lab) for f in audited for lab in (1, 0)}
    x = np.array([17.0], dtype=np.float32)
    for r in rows:
        assert r["exact"] == pytest.approx(float(exact64(x, r["label"])[0]), rel=1e-12)
