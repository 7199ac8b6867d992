"""The compiled kernels (`bce_audit.compiled`, csrc/) give their numpy code's bits on every input.

Every function marked `compiled.twin` in the kernel models is found here and run twice, compiled
and as numpy code, on every float16 and bfloat16 value (as float32), a dense float32 sample (a
stride through every bit pattern, and random ones) and the edge cases (signed zeros, infinities,
NaN payloads, subnormals, the smallest normals): the outputs must agree bit for bit. Kernels of
several inputs get the sample paired with a shuffled copy of it, and with the edge cases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib

import ml_dtypes
import numpy as np
import pytest

from bce_audit import compiled, glibc

pytestmark = pytest.mark.skipif(not compiled.active(), reason="the extension bce_audit._kernels is not built")

MODULES = ("eigen", "xla", "sleef", "glibc")
EDGES = np.array([0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345,
                  0x7FC12345, 0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF, 0x00800000, 0x80800000,
                  0x00800001, 0x80800001, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000, 0xBF800000, 0x3F7FFFFF,
                  0x3F800001, 0x33800000, 0xB3800000], dtype=np.uint32)


def _sample() -> np.ndarray:
    """float32 values: every float16 and bfloat16 value, a stride through all 2^32 bit patterns,
    random patterns, neighbours of the edge cases."""
    half = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    bf16 = np.arange(1 << 16, dtype=np.uint32) << 16
    stride = np.arange(0, 1 << 32, 4093, dtype=np.uint64).astype(np.uint32)
    rng = np.random.default_rng(20261130)
    random = rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)
    near = (EDGES.astype(np.int64)[:, None] + np.arange(-64, 65)).ravel()
    near = near[(near >= 0) & (near < 1 << 32)].astype(np.uint32)
    return np.concatenate([EDGES, half, bf16, stride, random, near]).view(np.float32)


SAMPLE = _sample()


def _twins() -> list:
    out = []
    for m in MODULES:
        module = importlib.import_module(f"bce_audit.{m}")
        for name in sorted(vars(module)):
            fn = getattr(module, name)
            if callable(fn) and hasattr(fn, "kernel"):
                out.append(pytest.param(fn, id=f"{m}.{name}"))
    return out


def _inputs(nin: int) -> list[np.ndarray]:
    """``nin`` float32 arrays of one length: the sample, then shuffled copies of it (each ending
    with every pair of edge cases)."""
    rng = np.random.default_rng(nin)
    pairs = np.array(np.meshgrid(EDGES, EDGES)).reshape(2, -1).view(np.float32)
    arrays = [np.concatenate([SAMPLE, pairs[0]])]
    for i in range(1, nin):
        arrays.append(np.concatenate([rng.permutation(SAMPLE), pairs[i % 2]]))
    return arrays


def _bits(out) -> list[np.ndarray]:
    return [np.asarray(o).view(np.uint32) for o in (out if isinstance(out, tuple) else (out,))]


def test_every_twin_is_compiled():
    twins = [p.values[0].kernel for p in _twins()]
    assert twins, "no function is marked compiled.twin"
    assert set(twins) <= set(compiled.names())


@pytest.mark.parametrize("fn", _twins())
def test_twin_equals_numpy_code(fn):
    nin = dict((n, i) for n, i, _ in _kernel_shapes())[fn.kernel]
    inputs = _inputs(nin)
    with np.errstate(all="ignore"):
        got = fn(*inputs)
        with compiled.pure():
            want = fn(*inputs)
    for g, w in zip(_bits(got), _bits(want), strict=True):
        bad = np.flatnonzero(g != w)
        assert not bad.size, (f"{fn.kernel}: {bad.size} differences, first at inputs "
                              f"{[hex(int(a.view(np.uint32)[bad[0]])) for a in inputs]}: "
                              f"{hex(int(g[bad[0]]))} compiled, {hex(int(w[bad[0]]))} numpy")


def _kernel_shapes():
    from bce_audit import _kernels

    return _kernels.names()


@pytest.mark.parametrize("name", ["logf", "log1pf", "expf"])
def test_libm_is_the_c_library(name):
    """`glibc.libm` runs the process's own C library function, as ctypes calls it."""
    fn = getattr(ctypes.CDLL(ctypes.util.find_library("m")), name)
    fn.restype, fn.argtypes = ctypes.c_float, [ctypes.c_float]
    x = np.concatenate([EDGES.view(np.float32), SAMPLE[::37]])
    with np.errstate(all="ignore"):
        want = np.array([fn(float(v)) for v in x], dtype=np.float32)
        got = glibc.libm(name, x)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_twin_runs_only_on_float32():
    """Other dtypes, Python scalars and keywords take the numpy code."""
    calls = []

    @compiled.twin("expf")
    def model(x):
        calls.append(x)
        return x

    model(np.float16([1.0]))
    model(np.ones(2, ml_dtypes.bfloat16))
    model(1.0)
    assert len(calls) == 3
    out = model(np.float32([0.0, 1.0]))
    assert len(calls) == 3 and out.dtype == np.float32 and out[0] == 1.0
    with compiled.pure():
        model(np.float32([1.0]))
    assert len(calls) == 4


def test_turned_off_by_the_environment(tmp_path):
    import subprocess
    import sys

    code = "from bce_audit import compiled; print(compiled.active())"
    env = {"BCE_AUDIT_KERNELS": "numpy", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- ftz.flush's test


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormals_is_flushs_test(dtype):
    """`compiled.subnormals` says what ``0 < |x| < smallest normal`` says, on every edge case alone
    and on blocks of the sample (as float64 too: its own subnormals, and float32's as normals)."""
    tiny = np.finfo(dtype).tiny
    with np.errstate(invalid="ignore"):  # (signalling NaNs)
        values = SAMPLE.astype(dtype)
    if dtype == np.float64:
        values = np.concatenate([values, np.array([5e-324, -5e-324, tiny, -tiny, np.nextafter(tiny, 0)])])
    blocks = [values[i:i + 1] for i in range(len(EDGES))] + np.array_split(values, 997)
    blocks += [values[i:i + 1] for i in range(len(values) - 5, len(values))]
    for b in blocks:
        with np.errstate(invalid="ignore"):
            want = bool(np.count_nonzero((np.abs(b) < tiny) & (b != 0)))
        assert compiled.subnormals(b) is want, b[:4]
    assert compiled.subnormals(values[::2]) is None  # not contiguous: numpy decides
    assert compiled.subnormals(np.zeros(4, np.float16)) is None


# ---------------------------------------------------------------- the fast baseline's measuring


def _columns(n: int = 50_000):
    """A chunk's exact columns (a sigmoid with its complement, a BCE with its log, a round trip)
    and float32 values near them: rounded, nudged by a few parts in 2^10, some infinite, NaN or 0."""
    from bce_audit import dtypes, fastref

    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-120, 120, n), [0.0, -0.0, 1e-30, 16.6, -800.0]]).astype(np.float32)
    e = fastref.exact(x.astype(np.float64))
    info = dtypes.get("float32")
    for exact, log_exact, comp in ((e.p, None, e.q), (e.bce(0), e.log_bce(0), None), (e.x, None, None)):
        c = (exact * (1 + rng.integers(-3, 4, exact.size) * 2.0**-10)).astype(np.float32)
        for special in (np.inf, -np.inf, np.nan, 0.0):
            c[rng.integers(0, c.size, 50)] = special
        yield fastref.scale(exact, log_exact, info, comp), c


@pytest.mark.parametrize("rel", [True, False])
def test_measure_equals_numpy(rel):
    """`fastref.Scale.measure` compiled and as numpy code: the same ULPs, relative and absolute
    errors, bit for bit (NaNs compared as NaNs), near 1 through the complement too."""
    for sc, c in _columns():
        with np.errstate(all="ignore"):
            got = sc.measure(c, rel)
            with compiled.pure():
                want = sc.measure(c, rel)
        assert (got[1] is None) == (want[1] is None) == (not rel)
        for g, w in zip(got, want, strict=True):
            if g is not None:
                nan = np.isnan(w)
                assert np.array_equal(np.isnan(g), nan)
                assert np.array_equal(g[~nan].view(np.uint64), w[~nan].view(np.uint64))
    assert compiled.measure(c.astype(np.float64), sc.exact, sc.inv_ulp, sc.mag, None, True) is None
