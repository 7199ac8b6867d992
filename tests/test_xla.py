"""The numpy models of XLA's CPU code (bce_audit/xla.py): bit for bit against real jax where it is
installed on an x86-64 CPU with FMA, and close to the exact values everywhere."""

from __future__ import annotations

import platform
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bce_audit import xla
from tests.ulp_support import every_value, float32_sample, round_f32, same_bits, ulp_distance

DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16),
          "bfloat16": np.dtype(ml_dtypes.bfloat16)}
UNARY = ("exp", "log", "log1p", "logistic", "logit", "softplus", "log_sigmoid",
         "roundtrip", "roundtrip_fused")
BINARY = ("optax_bce", "optax_bce_grad")  # (x, y)
F32 = np.float32


def labels(x: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [np.zeros_like(x), np.ones_like(x), rng.uniform(0, 1, x.size).astype(x.dtype)]


# ---------------------------------------------------------------- without jax


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**60), max_value=2.0**60)


@given(_f32, _f32, _f32)
@example(1.0 + 2**-23, 1.0 - 2**-23, -1.0)  # exact product below 1: the float64 sum alone is exact
@example(1.0 + 2**-12, 1.0 + 2**-12, 2**-80)  # float64 lands on a float32 tie: naive rounding is wrong
@example(3.0, 1.0 + 2**-23, -3.0 + 2**-60)
def test_fma_rounds_once(a, b, c):
    """`xla.fma` is the correctly rounded ``a*b + c`` (what ``vfmadd`` returns), past float64's tie."""
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    got = xla.fma(np.array([a], F32), np.array([b], F32), np.array([c], F32))[0]
    want = round_f32(exact)
    if abs(want) < np.finfo(F32).tiny:
        want = F32(0.0)
    assert got == want or (got == 0 and want == 0), (a, b, c, got, want)


def test_flush_zeroes_float32_and_bfloat16_subnormals_only():
    sub = np.array([1e-40, -1e-40, 1.2e-38, 0.0], F32)
    assert xla.flush(sub).tolist() == [0.0, 0.0, float(F32(1.2e-38)), 0.0]
    assert np.signbit(xla.flush(sub)).tolist() == [False, True, False, False]
    assert xla.flush(sub.astype(ml_dtypes.bfloat16))[:2].astype(F32).tolist() == [0.0, 0.0]
    half = np.array([6e-8, -1e-5], np.float16)  # subnormal float16 survives XLA's float32 arithmetic
    assert (xla.flush(half) == half).all()


@pytest.mark.parametrize("name", [*UNARY, *BINARY])
@pytest.mark.parametrize("dtype", DTYPES)
def test_models_keep_dtype_and_shape(name, dtype):
    x = np.linspace(-3, 3, 12).reshape(3, 4).astype(DTYPES[dtype])
    out = getattr(xla, name)(x, np.full_like(x, 0.25)) if name in BINARY else getattr(xla, name)(x)
    assert out.dtype == DTYPES[dtype] and out.shape == (3, 4)


def test_every_model_is_listed():
    assert set(xla.MODELS) == {*UNARY, *BINARY}
    assert all(callable(getattr(xla, name)) for name in xla.MODELS)


def test_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="float64"):
        xla.logistic(np.zeros(3))


def _exact(name: str, x: np.ndarray) -> np.ndarray:
    """float64 references (within an ULP of float32's exact value where it matters here). logit's
    is the exact log of the quotient as the dtype rounds it: near p = 1/2 the log cancels."""
    with np.errstate(all="ignore"):
        q = (x / (x.dtype.type(1) - x)).astype(np.float64)
        x = x.astype(np.float64)
        return {"exp": np.exp(x), "log": np.log(x), "log1p": np.log1p(x), "logistic": 1 / (1 + np.exp(-x)),
                "logit": np.log(q), "softplus": np.logaddexp(x, 0.0),
                "log_sigmoid": -np.logaddexp(-x, 0.0)}[name]


# (inputs, ULP bound): XLA's polynomials are a few ULP off, never more
ACCURACY = {
    "exp": (np.linspace(-87, 88, 50_001), 2),
    "log": (np.exp(np.linspace(-87, 88, 50_001)), 2),
    "log1p": (np.linspace(-0.999, 50, 50_001), 2),
    "logistic": (np.linspace(-87, 30, 50_001), 3),
    "softplus": (np.linspace(-80, 80, 50_001), 3),
    "log_sigmoid": (np.linspace(-80, 80, 50_001), 3),
    "logit": (np.linspace(0.001, 0.999, 50_001), 2),
}


@pytest.mark.parametrize("name", ACCURACY)
def test_float32_models_are_within_a_few_ulp_of_exact(name):
    x, bound = ACCURACY[name]
    x = x.astype(F32)
    got, want = getattr(xla, name)(x), _exact(name, x).astype(F32)
    ok = np.isfinite(want) & (np.abs(want) >= np.finfo(F32).tiny)
    assert ulp_distance(got[ok], want[ok]).max() <= bound


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("name", "bound"), [("exp", 1), ("log", 1), ("log1p", 1), ("logistic", 2)])
def test_narrow_models_are_within_an_ulp_of_exact(name, bound, dtype):
    """An op computed in float32 and rounded once is at most one step of the narrow dtype off;
    sigmoid rounds three times (exp, + 1, the division)."""
    x = every_value(DTYPES[dtype])
    got = getattr(xla, name)(x)
    with np.errstate(all="ignore"):
        want = _exact(name, x.astype(F32)).astype(DTYPES[dtype])
        w = want.astype(F32)
        tiny = float(ml_dtypes.finfo(DTYPES[dtype]).tiny)
        ok = np.isfinite(w) & (np.abs(w) >= tiny)
        if dtype == "bfloat16":  # DAZ: a subnormal input reads as zero
            ok &= (np.abs(x.astype(F32)) >= tiny) | (x == 0)
    assert ulp_distance(got[ok], want[ok]).max() <= bound


def test_optax_grad_is_sigmoid_minus_label():
    """d BCE/dx = sigmoid(x) - y; XLA's route through exp(x - softplus(x)) loses a few bits."""
    x = np.linspace(-15, 15, 30_001, dtype=F32)
    y = np.random.default_rng(2).uniform(0, 1, x.size).astype(F32)
    got = xla.optax_bce_grad(x, y).astype(np.float64)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    assert (np.abs(got - (s - y)) <= 64 * np.finfo(F32).eps * (s + y)).all()


def test_facts_ftz_and_exp_clamps():
    """exp is zero from about -87.68 (2**n with n = -127 is built as +0) and flushed below 2**-126;
    sigmoid follows it; log reads a subnormal as zero (DAZ)."""
    assert xla.exp(np.array([-87.7, -87.4, -87.3], F32)).tolist()[:2] == [0.0, 0.0]
    assert xla.exp(np.array([-87.3], F32))[0] > 0
    assert xla.logistic(np.array([-87.5, -87.0], F32))[0] == 0 and xla.logistic(np.array([-87.0], F32))[0] > 0
    assert xla.log(np.array([1e-40], F32))[0] == -np.inf
    assert xla.exp(np.array([88.75], F32))[0] == np.inf  # 2**127 times the polynomial's 2.05


def test_fact_one_jit_rewrites_the_round_trip():
    """In one jit the float32 round trip is ``log(1 / (a * (1 - p)))``: it differs from two jits."""
    x = np.linspace(-20, 20, 40_001, dtype=F32)
    fused, apart = xla.roundtrip_fused(x), xla.roundtrip(x)
    assert (~same_bits(fused, apart)).sum() > 1000
    b = every_value(DTYPES["bfloat16"])  # bfloat16: converts around every op block the rewrite
    assert same_bits(xla.roundtrip_fused(b), xla.roundtrip(b)).all()


# ---------------------------------------------------------------- against real jax


def _x86_fma() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return " fma " in f" {f.read()} ".replace("\n", " ")
    except OSError:
        return False


needs_jax = pytest.mark.skipif(not _x86_fma(), reason="the models are of XLA's x86-64 code with FMA")


def _jax():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    return jax


def _real(name: str):
    jax = _jax()
    import jax.numpy as jnp
    import jax.scipy.special as jss
    import optax

    if name == "roundtrip":
        sig, log = jax.jit(jax.nn.sigmoid), jax.jit(jss.logit)
        return lambda x: np.asarray(log(sig(x)))
    fn = {"exp": jnp.exp, "log": jnp.log, "log1p": jnp.log1p, "logistic": jax.nn.sigmoid, "logit": jss.logit,
          "softplus": jax.nn.softplus, "log_sigmoid": jax.nn.log_sigmoid,
          "roundtrip_fused": lambda x: jss.logit(jax.nn.sigmoid(x)),
          "optax_bce": optax.sigmoid_binary_cross_entropy,
          "optax_bce_grad": lambda x, y: jax.grad(
              lambda t: jnp.sum(optax.sigmoid_binary_cross_entropy(t, y)))(x)}[name]
    jitted = jax.jit(fn)
    return lambda *a: np.asarray(jitted(*a))


def _diff(real: np.ndarray, model: np.ndarray, x: np.ndarray) -> str:
    bad = np.flatnonzero(~same_bits(real, model))
    r, m, xs = real.ravel(), model.ravel(), x.ravel()
    shown = ", ".join(f"x={xs[i]!r}: jax {r[i]!r} model {m[i]!r}" for i in bad[:5])
    return f"{bad.size} differ: {shown}"


@needs_jax
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", UNARY)
def test_narrow_models_match_jax_on_every_value(name, dtype):
    x = every_value(DTYPES[dtype])
    real, model = _real(name)(x), getattr(xla, name)(x)
    assert same_bits(real, model).all(), _diff(real, model, x)


@needs_jax
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", BINARY)
def test_narrow_optax_bce_matches_jax_on_every_value(name, dtype):
    x = every_value(DTYPES[dtype])
    real = _real(name)
    for y in labels(x):
        r, m = real(x, y), getattr(xla, name)(x, y)
        assert same_bits(r, m).all(), _diff(r, m, x)


@needs_jax
@pytest.mark.parametrize("name", [*UNARY, *(pytest.param(n, marks=pytest.mark.slow) for n in BINARY)])
def test_float32_models_match_jax_on_a_dense_sample(name):
    x = float32_sample()
    assert x.size >= 200_000
    if name in BINARY:
        for y in labels(x):
            real, model = _real(name)(x, y), getattr(xla, name)(x, y)
            assert same_bits(real, model).all(), _diff(real, model, x)
        return
    real, model = _real(name)(x), getattr(xla, name)(x)
    assert same_bits(real, model).all(), _diff(real, model, x)


@needs_jax
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7, 8, 9, 11, 15, 16, 17, 1000])
@pytest.mark.parametrize("name", ["exp", "log"])
def test_small_float32_arrays_match_jax(name, n):
    """Fewer than 16 float32 elements: XLA calls libm for a 3, 5, 6 or 7 wide rest."""
    rng = np.random.default_rng(n)
    real = _real(name)
    for _ in range(50):
        x = (rng.uniform(0.01, 60, n) if name == "log" else rng.uniform(-80, 80, n)).astype(F32)
        assert same_bits(real(x), getattr(xla, name)(x)).all(), _diff(real(x), getattr(xla, name)(x), x)
