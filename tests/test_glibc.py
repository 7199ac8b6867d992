"""glibc's logf and log1pf modelled in numpy (`glibc`) against the process's libm, bit for bit."""

from __future__ import annotations

import platform
from fractions import Fraction

import numpy as np
import pytest
from ulp_support import every_value, float32_sample

from bce_audit import compiled, glibc

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or not glibc._functions(),
                                reason="the models are of glibc's code")
F32, U32 = np.float32, np.uint32
DOMAIN = {"logf": (0x00000001, 0x7F7FFFFF), "log1pf": (0x00000000, 0x7F7FFFFF)}


def _inputs(name: str, step: int) -> np.ndarray:
    """Every ``step``-th float32 of the model's domain (log1pf: (-1, 0] too), every float16
    value, the dense float32 sample and runs around the probe's thresholds."""
    lo, hi = DOMAIN[name]
    bits = [np.arange(lo, hi, step, dtype=np.int64)]
    if name == "log1pf":
        bits.append(np.arange(0x80000000, 0xBF800000, step, dtype=np.int64))
    x = np.concatenate([np.concatenate(bits).astype(U32).view(F32), every_value(np.float16).astype(F32),
                        float32_sample(), glibc._probe(name)])
    with np.errstate(invalid="ignore"):
        return x[(x > (0 if name == "logf" else -1)) & np.isfinite(x)]


def _compare(name: str, x: np.ndarray) -> tuple[int, int]:
    """How many values the model answers with bits other than the libm's, and how many it asks."""
    if name not in glibc._MODELS:
        pytest.skip(f"no {name} model on this CPU: the libm answers every value")
    out, ask = glibc._modelled(name, glibc._MODELS[name], x)
    want = glibc._ctypes(glibc._functions()[name], x)
    differ = ~ask & (out.view(U32) != want.view(U32))
    assert not differ.any(), [(float(v), float(a), float(b)) for v, a, b in
                              zip(x[differ][:5], out[differ][:5], want[differ][:5], strict=True)]
    return int(differ.sum()), int(ask.sum())


@pytest.mark.parametrize("name", ["logf", "log1pf"])
def test_model_gives_the_libms_bits(name):
    """Every 4099th float32 of the domain (a prime step: every mantissa pattern's neighbourhood
    in every binade), every float16 value and the dense sample: the same bits as the libm."""
    x = _inputs(name, 4099)
    assert x.size > 500_000
    differ, asked = _compare(name, x)
    assert differ == 0
    assert asked <= x.size * 1e-4  # the libm answers only the rare values too near a boundary


@pytest.mark.slow
@pytest.mark.parametrize("name", ["logf", "log1pf"])
def test_model_gives_the_libms_bits_densely(name):
    """Every 257th float32 of the domain: over 8 million values of each."""
    differ, _ = _compare(name, _inputs(name, 257))
    assert differ == 0


@pytest.mark.parametrize("name", ["logf", "log1pf"])
def test_agrees_on_this_machine(name):
    """The probe finds the model right here, so the model is the one in use."""
    if name not in glibc._MODELS:
        pytest.skip(f"no {name} model on this CPU: the libm answers every value")
    glibc._AGREES.pop(name, None)
    assert glibc._agrees(name)


@pytest.mark.parametrize("pure", [True, False], ids=["numpy", "compiled"])
def test_libm_is_the_libms_for_small_and_large_arrays_and_special_values(pure):
    if pure:
        with compiled.pure():
            test_libm_is_the_libms_for_small_and_large_arrays_and_special_values(False)
        return
    fn = glibc._functions()
    specials = np.float32([0.0, -0.0, -1.0, -2.0, np.inf, -np.inf, np.nan, 1.0, 1e-45, 0.5])
    big = np.concatenate([np.linspace(1e-6, 3, glibc.SMALL * 2, dtype=F32), specials])
    for name in ("logf", "log1pf"):
        for x in (specials, big, big.reshape(2, -1)[:, ::-1]):
            got = glibc.libm(name, x)
            want = glibc._ctypes(fn[name], x.reshape(-1)).reshape(x.shape)
            assert got.shape == x.shape
            assert np.array_equal(got.view(U32), want.view(U32))


def test_a_model_the_probe_rejects_is_not_used(monkeypatch):
    """A model that is off by an ULP somewhere (another libm, say) leaves every value to the libm."""
    def off(x):
        out, ask = glibc._logf(x)
        return np.where(x > F32(1e30), np.nextafter(out, F32(np.inf)), out), ask

    monkeypatch.setitem(glibc._MODELS, "logf", off)
    monkeypatch.delitem(glibc._AGREES, "logf", raising=False)
    x = np.geomspace(1e-30, 3e38, 10_000).astype(F32)
    with compiled.pure():  # (compiled, the libm itself is called)
        got = glibc.libm("logf", x)
    assert glibc._AGREES["logf"] is False
    assert np.array_equal(got, glibc._ctypes(glibc._functions()["logf"], x))


def test_near_boundary_marks_midpoints_and_spares_values():
    one = np.float64(1.0)
    mid = one + 2.0**-24  # halfway from 1 to the next float32
    y = np.array([mid, mid - 2.0**-40, mid + 2.0**-40, one, one + 2.0**-26, 3.0])
    slack = np.full(y.shape, 2.0**-36)
    assert glibc.near_boundary(y, slack).tolist() == [True, True, True, False, False, False]
    assert glibc.near_boundary(y, np.zeros(y.shape)).tolist() == [True, False, False, False, False, False]


def _fused_logf(x: np.float32) -> Fraction:
    """``__logf_fma`` with every multiply-add of e_logf.c fused (each rounded once to float64),
    in exact rational arithmetic: the evaluation the slack must cover."""
    def rnd(q: Fraction) -> Fraction:
        return Fraction(float(q))  # int / int in CPython: correctly rounded

    ix = int(np.array([x], F32).view(U32)[0])
    tmp = (ix - 0x3F330000) % 2**32
    i = (tmp >> 19) % 16
    k = (tmp if tmp < 2**31 else tmp - 2**32) >> 23
    iz = (ix - (tmp & (0x1FF << 23))) % 2**32
    z = Fraction(float(np.array([iz], U32).view(F32)[0]))
    invc, logc = Fraction(glibc._INVC[i]), Fraction(glibc._LOGC[i])
    a0, a1, a2, ln2 = (Fraction(c) for c in (glibc._A0, glibc._A1, glibc._A2, glibc._LN2))
    r = rnd(z * invc - 1)
    y0 = rnd(logc + k * ln2)
    r2 = rnd(r * r)
    y = rnd(a1 * r + a2)
    y = rnd(a0 * r2 + y)
    return rnd(y * r2 + rnd(y0 + r))


def test_slack_covers_the_fused_evaluation():
    """The unfused float64 result lies within an eighth of the slack from the fused one, on
    values near 1 (the exact subinterval), in every other subinterval, and at large |k|."""
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.uniform(0.97, 1.03, 400), rng.uniform(0.7, 1.4, 400),
                        np.geomspace(1e-38, 3e38, 400), np.float32([1e-45, 1e-40])]).astype(F32)
    x = x[x.view(U32) >= 0x00800000]  # subnormals: exercised by the bit-for-bit tests
    y, k, i = glibc._logf_unfused(x)
    slack = glibc._logf_slack(y, k, i)
    for j in range(x.size):
        assert abs(Fraction(float(y[j])) - _fused_logf(x[j])) <= Fraction(slack[j]) / 8, float(x[j])
