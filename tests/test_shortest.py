"""The compiled JSON Lines formatter (csrc/shortest.c, csrc/lines.c): every float64 written as the
shortest text that reads back as the same double, with Arrow's layout, so that the lines are the
bytes Arrow's cast would give (the path taken where the extension is not built).

Three oracles: Arrow's cast itself, on a sample that reaches every exponent, every float16,
bfloat16 and float32 pattern class, the integers near 2^53 and the powers of 2 and 10 with their
neighbours; Python's repr, whose digits are also the shortest and nearest (David Gay's dtoa), on
the same sample; and a table of layouts derived by hand from double-conversion's rules.
"""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from bce_audit import compiled, streams, sweep
from bce_audit.records import Settings

pytestmark = pytest.mark.skipif(not compiled.active(), reason="bce_audit._kernels is not built")


def _sample() -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # (signalling NaNs quieted, overflows to inf: dropped)
        return _values()


def _values() -> np.ndarray:
    rng = np.random.default_rng(20261130)
    patterns = rng.integers(0, 1 << 64, 200_000, dtype=np.uint64).view(np.float64)
    scaled = rng.standard_normal(50_000) * 10.0 ** rng.integers(-300, 300, 50_000)
    p2 = np.ldexp(1.0, np.arange(-1074, 1024))
    p10 = 10.0 ** np.arange(-323, 309)
    edges = np.concatenate([p2, p10])
    edges = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, np.inf)])
    ints = np.concatenate([np.arange(-3000, 3000.0), 2.0**53 - np.arange(1000), 2.0**53 + 2 * np.arange(1000),
                           rng.integers(1, 10**6, 5000) * 10.0 ** rng.integers(0, 25, 5000)])
    subnormal = rng.integers(1, 1 << 52, 20_000, dtype=np.uint64).view(np.float64)
    half = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
    bf16 = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32).astype(np.float64)
    f32 = rng.integers(0, 1 << 32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    mantissas, exponents = rng.integers(1, 10**6, 5000), rng.integers(-320, 300, 5000)
    short = np.array([float(f"{m}e{e}") for m, e in zip(mantissas, exponents, strict=True)])
    a = np.concatenate([patterns, scaled, edges, ints, subnormal, half, bf16, f32.astype(np.float64), short])
    return np.concatenate([a, -a])[np.isfinite(np.concatenate([a, -a]))]


SAMPLE = _sample()


def _texts(values: np.ndarray, absent: np.ndarray | None = None) -> list[str]:
    got = compiled.texts(values, absent)
    assert got is not None
    data, ends = got
    e = np.frombuffer(ends, np.uint32)
    starts = np.concatenate([[0], e[:-1]])[:len(e)]
    text = data.decode()
    return [text[s:t] for s, t in zip(starts.tolist(), e.tolist(), strict=True)]


def test_texts_are_arrows():
    pa = pytest.importorskip("pyarrow")
    import pyarrow.compute as pc

    want = pc.cast(pa.array(SAMPLE), pa.string()).to_pylist()
    got = _texts(SAMPLE)
    wrong = [(float(v), g, w) for v, g, w in zip(SAMPLE, got, want, strict=True) if g != w]
    assert not wrong, f"{len(wrong)} of {len(SAMPLE)} differ from Arrow's, e.g. {wrong[:3]}"


def _digits(text: str) -> tuple[str, int]:
    """A decimal text as (significant digits, exponent of the last one)."""
    mantissa, _, exp = text.lower().lstrip("-").partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    e = int(exp or 0) - len(frac)
    stripped = digits.rstrip("0")
    return (stripped, e + len(digits) - len(stripped)) if stripped else ("0", 0)


@pytest.mark.parametrize("part", [pytest.param(0, id="a fifth"), *(pytest.param(k, marks=pytest.mark.slow)
                                                                   for k in range(1, 5))])
def test_texts_read_back_with_the_shortest_nearest_digits(part):
    """Each text reads back as the same double, with repr's digits (the shortest, and of those
    the nearest): no Arrow needed. A fifth of the sample in the quick run, the rest with the
    slow tests."""
    sample = SAMPLE[part::5]
    got = _texts(sample)
    for v, g in zip(sample.tolist(), got, strict=True):
        assert float(g) == v and math.copysign(1, float(g)) == math.copysign(1, v), (v, g)
        assert _digits(g) == _digits(repr(v)), (v, g, repr(v))


@pytest.mark.parametrize(("value", "text"), [
    (0.0, "0"), (-0.0, "-0"), (1.0, "1"), (-2.5, "-2.5"), (0.1, "0.1"), (123.456, "123.456"),
    (1e-6, "0.000001"), (1.5e-6, "0.0000015"), (9.99e-7, "9.99e-7"), (1e-7, "1e-7"),
    (999999999.0, "999999999"), (1e9, "1000000000"), (1e10, "1e+10"), (12345678901.0, "1.2345678901e+10"),
    (2.0**53, "9.007199254740992e+15"), (5e-324, "5e-324"),
    (2.2250738585072014e-308, "2.2250738585072014e-308"),
    (1.7976931348623157e308, "1.7976931348623157e+308"), (1 / 3, "0.3333333333333333"), (1e100, "1e+100"),
])
def test_layout(value, text):
    """Arrow's layout (double-conversion's shortest, exponent sign shown, a decimal point for
    exponents -6 to 9), derived by hand."""
    assert _texts(np.array([value])) == [text]


def test_words_and_absent_values():
    values = np.array([np.nan, np.inf, -np.inf, 1.0, 2.0])
    absent = np.array([False, False, False, False, True])
    assert _texts(values, absent) == ['"nan"', '"inf"', '"-inf"', "1", "null"]
    assert _texts(np.array([])) == []


def test_lines_splice_literals_and_texts():
    a, b = compiled.texts(np.array([1.0, 0.5, -1e-9])), compiled.texts(np.array([np.nan, 2.0, 3.0]))
    assert a is not None and b is not None
    long = b"," + b"x" * 70 + b":"  # a literal longer than the copies' 32 bytes
    out = compiled.jsonl([b'{"a":', long, b"}\n"], [a, b])
    x = b"x" * 70
    assert out == b'{"a":1,' + x + b':"nan"}\n{"a":0.5,' + x + b':2}\n{"a":-1e-9,' + x + b":3}\n"
    assert compiled.jsonl([b"[]\n"], []) == b""


def test_lines_refuse_columns_of_other_lengths():
    a, b = compiled.texts(np.array([1.0, 2.0])), compiled.texts(np.array([1.0]))
    assert a is not None and b is not None
    with pytest.raises(ValueError, match="different lengths"):
        compiled.jsonl([b"", b"", b""], [a, b])
    with pytest.raises(ValueError, match="absent flags"):
        compiled.texts(np.array([1.0, 2.0]), np.array([True]))
    with pytest.raises(ValueError, match="not as texts"):
        compiled.jsonl([b"", b""], [(b"1", b"")])  # no room after the texts for the 32-byte moves
    with pytest.raises(TypeError, match="pairs of bytes"):
        compiled.jsonl([b"", b""], [(b"1", 2)])


@pytest.mark.parametrize("ends", [[200, 100], [40, 100], [1, 2, 3]])
def test_lines_refuse_texts_they_did_not_make(ends):
    """Ends out of order, a text longer than the 32-byte moves or a stray byte are refused
    before any copying (they would read or write out of bounds)."""
    raw = np.asarray(ends, np.uint32).tobytes()
    with pytest.raises(ValueError, match="not as texts"):
        compiled.jsonl([b"", b"\n"], [(b"1" * ends[-1] + bytes(32), raw + (b"x" if len(ends) == 3 else b""))])


def test_every_way_of_writing_json_lines_gives_the_same_records(monkeypatch):
    """Compiled, through Arrow, through Python's repr: the compiled lines are Arrow's bytes, and
    repr's lines (``1e-07`` for Arrow's ``1e-7``) the same records."""
    pytest.importorskip("pyarrow")
    s = Settings(dtypes=("float16",), formulas=("naive", "keras3"), eps=(1e-7, 1e-3), points=2001, keep=None)
    blocks = [b for r in sweep.run_chunks(s, "float16", None) for b in r.blocks]

    def lines() -> str:
        f = io.StringIO()
        w = streams.writer("jsonl", f)
        w.write(blocks)
        w.close()
        return f.getvalue()

    fast = lines()
    with compiled.pure():
        arrow = lines()
        monkeypatch.setattr(streams.JsonLines, "__init__", _no_arrow(streams.JsonLines.__init__))
        plain = lines()
    assert fast == arrow
    assert fast != plain  # (repr writes 1e-07)
    assert [json.loads(x) for x in fast.splitlines()] == [json.loads(x) for x in plain.splitlines()]
    assert len(fast.splitlines()) == sum(len(b) for b in blocks) > 10_000


def _no_arrow(init):
    def without(self, f):
        init(self, f)
        self.arrow = None
        self.every_core = False
    return without
