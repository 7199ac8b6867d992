"""The numpy models of torch's float32 CPU kernels (bce_audit/sleef.py): bit for bit against real
torch where it is installed on a CPU capability they model, and close to the exact values everywhere."""

from __future__ import annotations

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mpmath import mp

from bce_audit import formulas, sleef
from tests.ulp_support import every_value, float32_sample, round_f32, same_bits, ulp_distance

F32 = np.float32
UNARY = ("exp", "log", "log1p", "sigmoid", "log_sigmoid")


# ---------------------------------------------------------------- without torch


_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-(2.0**60), max_value=2.0**60)


@given(_f32, _f32, _f32)
@example(1.0 + 2**-23, 1.0 - 2**-23, -1.0)
@example(1.0 + 2**-12, 1.0 + 2**-12, 2**-80)  # float64 lands on a float32 tie: naive rounding is wrong
@example(2.0**-70, 2.0**-70, 2.0**-140)  # a subnormal result is kept, not flushed
def test_fma_rounds_once_and_keeps_subnormals(a, b, c):
    exact = Fraction(a) * Fraction(b) + Fraction(c)
    got = sleef.fma(np.array([a], F32), np.array([b], F32), np.array([c], F32))[0]
    want = round_f32(exact)
    assert got == want, (a, b, c, got, want)


def _mp_exact(name: str, v: float) -> float:
    x = mp.mpf(v)
    return float({"exp": lambda: mp.exp(x), "log": lambda: mp.log(x), "log1p": lambda: mp.log1p(x),
                  "sigmoid": lambda: 1 / (1 + mp.exp(-x)),
                  "log_sigmoid": lambda: -mp.log1p(mp.exp(-x))}[name]())


ACCURACY = {  # inputs where the result is a finite normal float32; SLEEF's u10 functions are < 1 ULP
    "exp": np.linspace(-87, 88, 1001),
    "log": np.exp(np.linspace(-100, 88, 1001)),
    "log1p": np.concatenate([np.linspace(-0.999, 50, 1001), np.exp(np.linspace(-100, 88, 201))]),
    "sigmoid": np.linspace(-87, 30, 1001),
    "log_sigmoid": np.linspace(-80, 80, 1001),
}


@pytest.mark.parametrize("name", ACCURACY)
def test_models_are_within_an_ulp_of_mpmath(name):
    x = ACCURACY[name].astype(F32)
    with mp.workprec(100):
        want = np.array([_mp_exact(name, float(v)) for v in x]).astype(F32)
    got = getattr(sleef, name)(x)
    assert got.dtype == F32 and got.shape == x.shape
    bound = 2 if name in ("sigmoid", "log_sigmoid") else 1  # two ops after SLEEF's: one rounding each
    assert ulp_distance(got, want).max() <= bound


def test_special_values():
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, -2.0, 1e-45, -104.5, 100.5], F32)
    ex = sleef.exp(x)
    assert np.isnan(ex[0]) and ex[[1, 2, 3, 4, 7, 8, 9]].tolist() == [np.inf, 0.0, 1.0, 1.0, 1.0, 0.0, np.inf]
    lg = sleef.log(x)
    assert np.isnan(lg[[0, 2, 5, 6]]).all() and lg[1] == np.inf and lg[3] == lg[4] == -np.inf
    # the smallest subnormal: getexp/getmant see its true exponent
    assert ulp_distance(lg[7:8], np.array([-103.27893], F32))[0] <= 1
    l1 = sleef.log1p(x)
    assert np.isnan(l1[[0, 2, 6]]).all() and l1[1] == np.inf and l1[5] == -np.inf
    assert l1[4] == 0 and np.signbit(l1[4]) and l1[3] == 0 and not np.signbit(l1[3])
    assert sleef.log1p(np.array([3e38], F32))[0] == sleef.log(np.array([3e38], F32))[0]  # past 1e38


def test_subnormal_results_are_kept():
    """torch CPU does not flush: exp underflows gradually down to SLEEF's cut-off at -104."""
    x = np.array([-90.0, -100.0, -103.9], F32)
    out = sleef.exp(x)
    assert (out > 0).all() and (out < np.finfo(F32).tiny).all()


def test_upcast_float32_runs_the_models_where_the_capability_is_modelled():
    ev = formulas.Evaluator("float32", "upcast")
    x = np.linspace(-30, 30, 4096, dtype=F32)
    if not sleef.modelled():
        assert not ev.torch_cpu
        return
    assert ev.torch_cpu and not formulas.Evaluator("float32", "per-op").torch_cpu
    assert same_bits(formulas.evaluate_sigmoid(x, ev), sleef.sigmoid(x)).all()
    assert same_bits(np.asarray(ev.log_sigmoid(x)), sleef.log_sigmoid(x)).all()
    half = formulas.Evaluator("float16", "upcast")  # float32 opmath through the same models
    assert (formulas.evaluate_sigmoid(x.astype(np.float16), half)
            == sleef.sigmoid(x.astype(np.float16).astype(F32)).astype(np.float16)).all()


# ---------------------------------------------------------------- against real torch


def _torch():
    torch = pytest.importorskip("torch")
    cap = torch.backends.cpu.get_cpu_capability()
    if cap not in sleef.CAPABILITIES:
        pytest.skip(f"torch runs CPU capability {cap} here; the SLEEF models cover "
                    f"{', '.join(sleef.CAPABILITIES)} (DEFAULT calls the C library: glibc.libm)")
    return torch


@pytest.fixture
def torch_one_thread():
    """One thread, so no chunk of the array ends in a scalar tail (arrays are whole vectors)."""
    torch = _torch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)


def _pad(x: np.ndarray, block: int = 256) -> np.ndarray:
    return np.concatenate([x, np.zeros((-x.size) % block, F32)])


def _real(torch, name: str, x: np.ndarray) -> np.ndarray:
    """torch's own float32 kernels on x, each through a vectorised path that calls the model's
    function: exp as the buffer of log_sigmoid's forward (``exp(-|x|)``, so on -|x|), log through
    ``logit`` of a strided 2-d view (MKL's vsLn serves a contiguous one), log1p, sigmoid and
    log_sigmoid directly (``torch.exp``/``torch.log`` call MKL's vsExp/vsLn, not SLEEF)."""
    t = torch.from_numpy(x)
    if name == "exp":
        return torch.ops.aten.log_sigmoid_forward(t)[1].numpy()
    if name == "log":
        q = x / (F32(1) - x)  # logit computes x / (1 - x) first, exactly as numpy does
        wide = torch.zeros((x.size // 256, 512), dtype=torch.float32)
        wide[:, :256] = t.reshape(-1, 256)
        return torch.logit(wide[:, :256]).reshape(-1).numpy(), q
    fn = {"log1p": torch.log1p, "sigmoid": torch.sigmoid,
          "log_sigmoid": torch.nn.functional.logsigmoid}[name]
    return fn(t).numpy()


def _check(torch, name: str, x: np.ndarray) -> None:
    x = _pad(x)
    with np.errstate(all="ignore"):
        if name == "exp":
            real, model = _real(torch, name, x), sleef.exp(-np.abs(x))
        elif name == "log":
            real, q = _real(torch, name, x)
            model = sleef.log(q)
        else:
            real, model = _real(torch, name, x), getattr(sleef, name)(x)
    bad = np.flatnonzero(~same_bits(real, model))
    shown = ", ".join(f"x={x[i]!r}: torch {real[i]!r} model {model[i]!r}" for i in bad[:5])
    assert bad.size == 0, f"{bad.size} differ: {shown}"


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", UNARY)
def test_models_match_torch_on_every_narrow_value(torch_one_thread, name, dtype):
    x = every_value(np.float16 if dtype == "float16" else ml_dtypes.bfloat16).astype(F32)  # torch's opmath
    if name == "log":
        with np.errstate(all="ignore"):
            x = np.abs(x) / (np.abs(x) + F32(1))  # probabilities for logit, from every value
    _check(torch_one_thread, name, x)


@pytest.mark.parametrize("name", UNARY)
def test_models_match_torch_on_a_dense_float32_sample(torch_one_thread, name):
    x = float32_sample()
    if name == "log":
        with np.errstate(all="ignore"):
            x = np.concatenate([np.abs(x) / (np.abs(x) + F32(1)), np.exp(-np.abs(x)), x])
            x = x[np.isfinite(x) | np.isnan(x)]
    _check(torch_one_thread, name, x)


def test_torch_bce_forward_calls_the_c_library(torch_one_thread):
    """BCE's forward is a scalar ``cpu_kernel``: the C library's logf and log1pf."""
    torch = torch_one_thread
    p = _pad(np.linspace(0, 1, 20_001, dtype=F32))
    for y in (0.0, 1.0):
        yy = np.full_like(p, y)
        real = torch.nn.functional.binary_cross_entropy(torch.from_numpy(p), torch.from_numpy(yy),
                                                        reduction="none").numpy()
        ev = formulas.Evaluator("float32", "upcast")
        with np.errstate(all="ignore"):
            model = formulas._torch_bce_kernel(ev, p, yy)
        assert same_bits(real, np.asarray(model, F32)).all()


_AVX2_SCRIPT = """
import numpy as np, torch
from bce_audit import sleef
assert torch.backends.cpu.get_cpu_capability() == "AVX2", torch.backends.cpu.get_cpu_capability()
assert sleef.torch_capability() == "AVX2"
torch.set_num_threads(1)
x = np.concatenate([np.linspace(-120, 120, 400_000, dtype=np.float32),
                    np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float32)])
x = np.concatenate([x, np.zeros((-x.size) % 256, np.float32)])
t = torch.from_numpy(x)
for name, real in [("sigmoid", torch.sigmoid(t)), ("log_sigmoid", torch.nn.functional.logsigmoid(t)),
                   ("log1p", torch.log1p(t))]:
    with np.errstate(all="ignore"):
        model = getattr(sleef, name)(x)
    r = real.numpy()
    bad = ~((r.view(np.uint32) == model.view(np.uint32)) | (np.isnan(r) & np.isnan(model)))
    assert not bad.any(), (name, int(bad.sum()), x[bad][:5])
"""


@pytest.mark.slow
def test_models_match_torch_on_avx2(tmp_path):
    """The AVX2 build of SLEEF computes the same numbers (integer exponent arithmetic instead of
    vgetexp/vgetmant/vfixupimm): torch forced to AVX2 in a fresh process."""
    import os
    import subprocess
    import sys

    _torch()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read().replace("\n", " ")
    except OSError:
        flags = ""
    if " avx2 " not in flags:
        pytest.skip("this CPU has no AVX2")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
