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
import math
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from bce_audit import compiled, glibc

REQUIRED = "BCE_AUDIT_REQUIRE_KERNELS"  # set (by .ci/run) where the extension must have been built
needs_kernels = pytest.mark.skipif(not compiled.active(), reason="bce_audit._kernels is not built")


def test_built_where_required():
    """Where a C compiler is known to be there (CI sets the variable), the extension was built:
    a build that fails (its install is optional) must not pass unseen."""
    if not os.environ.get(REQUIRED):
        pytest.skip(f"{REQUIRED} is not set")
    assert compiled.active(), "bce_audit._kernels did not build (or BCE_AUDIT_KERNELS=numpy is set)"

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


@needs_kernels
def test_every_twin_is_compiled():
    twins = [p.values[0].kernel for p in _twins()]
    assert twins, "no function is marked compiled.twin"
    assert set(twins) <= set(compiled.names())


@needs_kernels
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


@needs_kernels
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


@needs_kernels
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


@needs_kernels
def test_turned_off_by_the_environment(tmp_path):
    import subprocess
    import sys

    code = "from bce_audit import compiled; print(compiled.active())"
    env = {"BCE_AUDIT_KERNELS": "numpy", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- ftz.flush's test


@needs_kernels
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


@needs_kernels
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


# ---------------------------------------------------------------- layouts; the loops the CPU does not pick


def _unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` whose data starts one byte past an aligned address."""
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


@needs_kernels
def test_layouts_give_the_numpy_codes_bits():
    """Unaligned, non-contiguous and 0-d inputs take the compiled path with the numpy code's bits;
    inputs of different shapes (broadcast), subclasses and a missing libm take the numpy code."""
    from bce_audit import eigen, ftz, sleef, xla

    x = SAMPLE[:4000]
    with np.errstate(all="ignore"):
        for fn in (sleef.exp, eigen._plog_f32, xla._log1p32):
            with compiled.pure():
                want = fn(x)
            for variant in (_unaligned(x), x.reshape(40, 100).T.copy().T.reshape(-1), x[::1]):
                assert np.array_equal(fn(variant).view(np.uint32), want.view(np.uint32)), fn
            assert np.shape(fn(np.float32(1.5))) == () and fn(x[:0]).shape == (0,)
        assert ftz.flush(_unaligned(np.float32([1e-40, 1.0]))).tolist() == [0.0, 1.0]
        assert glibc.libm("logf", _unaligned(x)).view(np.uint32).tolist() == glibc.libm("logf", x).view(
            np.uint32).tolist()
    y = np.full(1, np.float32(1))
    assert compiled.run("xla_optax_bce32", x, y, x) is None  # shapes differ: numpy broadcasts
    assert compiled.run("sleef_exp", np.ma.masked_array(x)) is None
    assert compiled.run("sleef_exp", np.ones(3)) is None


@needs_kernels
def test_no_libm_means_the_correctly_rounded_value(monkeypatch):
    """Where ctypes finds no C library, `glibc.libm` gives the correctly rounded value, compiled or
    not (the C library the extension links is not the one asked for)."""
    monkeypatch.setattr(glibc, "_FUNCS", {})
    x = np.float32([0.3, 2.0, 1e-30])
    want = np.log(x.astype(np.float64)).astype(np.float32)
    assert np.array_equal(glibc.libm("logf", x), want)


def test_ftz_fma_is_the_same_in_any_order():
    """`ftz.fma` on Fortran-ordered inputs fixes the same elements as on C-ordered ones (its
    fixes go in through a flat view of a C-ordered result)."""
    from bce_audit import ftz

    rng = np.random.default_rng(5)
    a = rng.normal(size=(30, 40)).astype(np.float32)
    b = (rng.normal(size=(30, 40)) * 1e-36).astype(np.float32)
    c = np.zeros((30, 40), np.float32)
    c[::3] = np.float32(1e-38)
    want = ftz.fma(a, b, c, ftz=True)
    got = ftz.fma(np.asfortranarray(a), np.asfortranarray(b), np.asfortranarray(c), ftz=True)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.slow
@needs_kernels
def test_plain_loops_give_the_same_bits(tmp_path):
    """The loops built for CPUs without AVX2 and FMA (-DBCE_NO_CLONES, and the files' own
    switches), which this machine's CPU would never pick: a copy of the package with that build
    runs this file's twin comparisons."""
    cc = shutil.which(sysconfig.get_config_var("CC").split()[0]) or shutil.which("cc")
    root = Path(__file__).resolve().parent.parent
    if cc is None or not (root / "csrc").is_dir():
        pytest.skip("no C compiler, or no csrc/ (an installed package)")
    pkg = tmp_path / "bce_audit"
    shutil.copytree(root / "bce_audit", pkg, ignore=shutil.ignore_patterns("_kernels*", "__pycache__"))
    so = pkg / ("_kernels" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = [cc, "-shared", "-fPIC", "-O2", "-ffp-contract=off", "-fno-fast-math", "-DBCE_NO_CLONES",
             "-DEIGEN_NO_CLONES", "-DXLA_NO_CLONES", f"-I{sysconfig.get_paths()['include']}",
             *map(str, sorted((root / "csrc").glob("*.c"))), "-o", str(so), "-lm"]
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{root / 'tests'}"}
    code = "import bce_audit._kernels as k; print(k.__file__)"
    where = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=tmp_path)  # (not this checkout's directory: its package would come first)
    assert where.stdout.strip() == str(so)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                        "twin or measure", str(Path(__file__))], env=env, capture_output=True, text=True,
                       timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:]


@needs_kernels
def test_measure_scale_equals_numpy():
    """`fastref.scale`'s |exact| and inverse ULPs compiled and as numpy code, bit for bit: every
    binade of float64 (random bit patterns), subnormals, zeros, infinities and NaN, with and
    without a complement and values known below a power of two, for each dtype it serves."""
    from bce_audit import dtypes, fastref

    rng = np.random.default_rng(11)
    e = rng.integers(0, 2**64, 100_003, dtype=np.uint64).view(np.float64)
    edges = [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, -5e-324, 1e-310, 2.0**-1022, 2.0**-1023, 0.5,
             np.nextafter(0.5, 0), 1.0, 1.7976931348623157e308]
    e = np.concatenate([edges, rng.random(1000), e])
    below = rng.random(e.size) < 0.3
    with np.errstate(all="ignore"):
        complement = 1.0 - e
    for name in ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"):
        info = dtypes.get(name)
        for comp in (None, complement):
            for b in (None, below):
                with np.errstate(all="ignore"):
                    want = fastref._scale(e, info, comp, b)
                got = compiled.scale(e, comp is not None, b, info.minexp, info.nmant)
                assert got is not None
                for g, w in zip(got, want, strict=True):
                    assert np.array_equal(g.view(np.uint64), w.view(np.uint64)), (name, comp, b)
    assert compiled.scale(np.float32([1.0, 2.0]), False, None, -126, 23) is None  # float64 only


def _reductions(c, e, inv_ulp, mag, comp, skip, clip):
    """What `compiled.measure_worst` gives, from numpy: the compiled `measure` arithmetic, then
    numpy's count, argmax and max where the values are finite and not skipped."""
    n = c.size
    ulps, rels, diffs = np.empty(n), np.empty(n), np.empty(n)
    if n:
        from bce_audit import _kernels  # type: ignore[attr-defined]

        _kernels.measure(c, e, inv_ulp, mag, comp, ulps, rels, diffs)
    finite = np.isfinite(c)
    where = finite & (skip == 0)
    first = int(np.argmin(finite)) if not finite.all() else -1
    u = np.where(where, ulps, -np.inf)
    nans = np.flatnonzero(np.isnan(u))
    measured = where.any()
    at = int(nans[0]) if nans.size else int(np.argmax(u)) if measured else -1
    best = float(u[at]) if at >= 0 else -math.inf
    rel = float(np.max(np.where(where, rels, -np.inf))) if n else -math.inf
    ab = float(np.max(np.where(where, diffs, -np.inf))) if n else -math.inf
    out = [int(finite.sum()), first, int(nans[0]) if nans.size else -1, at, best, rel, ab]
    if clip is None:
        return (*out, None, None, None)
    clip_exact, clip_rel, clip_e, clip_inv = clip
    has = finite & ~np.isnan(clip_exact)
    with np.errstate(all="ignore"):
        round_ulps = np.abs(c.astype(np.float64) - clip_e) * clip_inv
    cr = float(np.max(np.where(has, clip_rel, -np.inf))) if n else -math.inf
    ru = float(np.max(np.where(has, round_ulps, -np.inf))) if n else -math.inf
    return (*out, int(has.sum()), cr, ru)


def _same_numbers(got, want) -> bool:
    return len(got) == len(want) and all(
        (g is None and w is None) or (g is not None and w is not None and
                                      (g == w or (math.isnan(g) and math.isnan(w))) and
                                      repr(g) == repr(w))
        for g, w in zip(got, want, strict=True))


@needs_kernels
def test_measure_worst_equals_numpy_reductions():
    """`compiled.measure_worst` is `measure`'s arithmetic reduced as numpy reduces it: finite
    values counted, the first non-finite one, the first NaN ULP error or else the first largest,
    the largest relative and absolute errors (NaN wins), where values are finite and not skipped;
    and the clipped-exact distance and rounding ULPs where a clipped-exact value exists. On the
    chunk columns of `test_measure_equals_numpy`, lengths that are not a multiple of four, skips,
    NaN exact values (NaN errors) and zero ones (0/0 relative errors)."""
    rng = np.random.default_rng(5)
    for k, (sc, c) in enumerate(_columns(20_000)):
        e, mag = sc.exact.copy(), sc.mag.copy()
        e[rng.integers(0, e.size, 5)] = np.nan  # NaN errors where measured
        zero = rng.integers(0, e.size, 5)
        e[zero], mag[zero] = 0.0, 0.0
        clip_exact = e * 1.5
        clip_exact[rng.integers(0, e.size, 40)] = np.nan
        inv = np.ldexp(1.0, rng.integers(0, 40, e.size))
        clip = (clip_exact, rng.random(e.size), np.abs(clip_exact), inv)
        for n in (0, 1, 3, 5, 4099, c.size):
            for skip in (np.zeros(n, np.uint8), (rng.random(n) < 0.2).astype(np.uint8)):
                for cl in (None, tuple(a[:n] for a in clip)):
                    args = (c[:n], e[:n], sc.inv_ulp[:n], mag[:n], None if sc.complement is None else
                            sc.complement[:n], skip, cl)
                    with np.errstate(all="ignore"):
                        want = _reductions(*args)
                    got = compiled.measure_worst(*args)
                    assert _same_numbers(got, want), (k, n, got, want)
    # ties: every error 0, then one largest error at several positions (numpy takes the first)
    n = 1001
    x = np.arange(n, dtype=np.float32)
    e, inv, mag = x.astype(np.float64), np.ones(n), np.abs(x.astype(np.float64)) + 1
    for top in ([], [7, 8, 13, 100, 999], [998, 999, 1000]):
        e2 = e.copy()
        e2[top] += 0.5
        for skip in (np.zeros(n, np.uint8), (np.arange(n) % 3 == 0).astype(np.uint8)):
            args = (x, e2, inv, mag, None, skip, None)
            with np.errstate(all="ignore"):
                want = _reductions(*args)
            assert _same_numbers(compiled.measure_worst(*args), want), (top, want)
    assert compiled.measure_worst(c.astype(np.float64), *args[1:]) is None  # float32 values only


@needs_kernels
def test_measure_clipped_and_relative_equal_numpy():
    """`fastref.clipped`'s tail (the bounds' logs where p is past them, the log floor, the
    negation) and `_clip_exact`'s relative distance compiled and as numpy code: the same bits,
    NaN included, for every clipping formula, bounds, shift and label, on both tails, the
    underflows, zeros, infinities and NaN."""
    from bce_audit import fastref, formulas

    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-800, 800, 20_000), rng.uniform(-20, 20, 20_000),
                        [0.0, -0.0, np.nan, np.inf, -np.inf, 16.6, -16.6, 745.2, -745.2]])
    finite = np.isfinite(x)
    e = fastref.exact(np.where(finite, x, 0.0))
    e = fastref.Exact64(*(np.where(finite, a, np.nan) for a in (e.x, e.sp_neg, e.sp_pos, e.p, e.q)))
    on_bounds = [1e-7, 1 - 1e-7, 0.25, 0.75, float(np.float32(1e-7)), float(np.float32(1 - 1e-7))]
    e.p[:len(on_bounds)] = on_bounds  # p on a bound: not past it
    cases = 0
    for name in formulas.FORMULAS:
        f = formulas.get(name)
        if f.clip is None:
            continue
        bounds = ((None, None), (1e-7, 1 - 1e-7), (0.25, 0.75), (np.float32(1e-7), np.float32(1 - 1e-7)))
        for lo, hi in bounds:
            for shift in (None, 1e-7, 0.1):
                for label in (0, 1):
                    with np.errstate(all="ignore"):
                        got = fastref.clipped(e, label, f.clip, lo, hi, shift)
                        with compiled.pure():
                            want = fastref.clipped(e, label, f.clip, lo, hi, shift)
                    assert np.array_equal(got.view(np.uint64), want.view(np.uint64)), (name, lo, shift, label)
                    cases += 1
    assert cases >= 48
    a, b = e.sp_neg * 1.5, e.sp_neg
    b[:3] = 0.0
    with np.errstate(all="ignore"):
        got = compiled.relative(a, b)
        want = np.abs(a - b) / b
    assert got is not None and np.array_equal(got.view(np.uint64), want.view(np.uint64))
    assert compiled.relative(a.astype(np.float32), b) is None
    assert compiled.clipped(a[:1].reshape(1, 1), True, a, None, None) is None


@needs_kernels
def test_measure_kernels_refuse_what_they_cannot_read():
    """The measuring kernels called directly: a buffer they need given as None, or a dtype whose
    inverse ULPs are not all normal powers of two, is a TypeError or ValueError, not a crash."""
    from bce_audit import _kernels  # type: ignore[attr-defined]

    f, d = np.ones(4, np.float32), np.ones(4)
    calls = [lambda: _kernels.measure_worst(f, d, d, d, None, None, None, None, None, None),  # no skip
             lambda: _kernels.clip(None, True, None, 0.0, 0.0, 0.0, 0.0, None, d.copy()),
             lambda: _kernels.clip(d, True, None, 0.0, 0.0, 0.0, 0.0, None, None),
             lambda: _kernels.scale(d, False, None, -1000, 60, d.copy(), d.copy()),
             lambda: _kernels.measure_worst(f, d, d, d[:3], None, np.zeros(4, np.uint8), *[None] * 4)]
    for call in calls:
        with pytest.raises((TypeError, ValueError)):
            call()
