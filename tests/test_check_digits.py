"""`check` shows the error it finds (issue 12): each cell in the shortest decimal that reads back
as its dtype's value, its ULP error beside it, and the exact value with the digits that tell it
from every cell, so no starred cell prints equal to the exact one."""

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bce_audit import report, sweep
from bce_audit.records import Settings

DTYPES = ("float8_e4m3fn", "float8_e5m2", "float16", "bfloat16", "float32", "float64")
FORMULAS = ("naive", "keras2-logits", "tf-keras", "keras3", "torch-bce", "logits-stable",
            "torch-bce-logits", "optax", "sklearn")


def _cells(x: float, dts: tuple[str, ...], formulas=FORMULAS):
    """(quantity, exact text, [(dtype, cell text, ULP text)]) for each row of check's tables."""
    rows, exact = sweep.check_rows([x], Settings(dtypes=dts, formulas=formulas))
    out = []
    for t in report.check_tables(rows, exact, width=400):
        cols = [c._cells for c in t.columns]
        names = [c.header for c in t.columns]
        for i in range(1, len(cols[0])):  # row 0: x in dtype
            cells = [(names[j], str(cols[j][i]), str(cols[j + 1][i])) for j in range(2, len(cols), 2)]
            out.append((str(cols[0][i]), str(cols[1][i]), cells))
    return out


@settings(max_examples=25, deadline=None)
@given(x=st.floats(min_value=-120, max_value=120, allow_subnormal=False),
       dts=st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3, unique=True))
@example(x=16.5, dts=["float32", "float64"])
@example(x=-50.0, dts=["float16", "bfloat16"])
@example(x=1e-30, dts=["float64", "float32"])
@example(x=36.7, dts=["float64"])
def test_issue_12_no_starred_cell_prints_equal_to_the_exact_value(x, dts):
    for name, exact, cells in _cells(x, tuple(dts)):
        for dtype, text, ulp in cells:
            if text == "-" or not text.endswith("*"):
                continue
            value = text.rstrip("*")
            assert value != exact, (x, name, dtype, text, exact)
            if value not in ("inf", "-inf", "nan") and exact not in ("inf", "-inf", "nan"):
                assert float(value) != float(exact), (x, name, dtype, text, exact)
            assert ulp != "0", (x, name, dtype, text, ulp)


def test_issue_12_the_cells_of_the_issue():
    """float32 sigmoid(16.5) is not printed as 1; the float64 round trip at 16.5 is not 16.5."""
    rows = {name: (exact, dict((d, (t, u)) for d, t, u in cells))
            for name, exact, cells in _cells(16.5, ("float32", "float64"), ("naive",))}
    exact, sig = rows["sigmoid"]
    assert sig["float32"][0] != "1" and float(sig["float32"][0]) < 1
    exact, rt = rows["logit(sigmoid)"]
    # the float64 round trip as numpy computes it, op by op; its ULP error against the exact
    # 16.5, in ULPs of 16.5 (float64 spacing there: 2**-48)
    one, x = np.float64(1.0), np.float64(16.5)
    p = one / (one + np.exp(-x))
    v = float(np.log(p / (one - p)))
    ulp = (v - 16.5) / float.fromhex("0x1p-48")  # 2**-48 = 3.55e-15
    assert ulp == float(np.round(ulp)) and ulp > 1  # a whole number of ULPs: 220355
    assert rt["float64"][0] == repr(v) + "*" and exact == "16.5"
    assert rt["float64"][1] == report.ulp_text(ulp, v)
    rows64, _ = sweep.check_rows([16.5], Settings(dtypes=("float64",), formulas=("naive",)))
    (row,) = [r for r in rows64 if r.quantity == "roundtrip"]
    assert row.value == v and row.ulp_err == ulp


@pytest.mark.parametrize(("value", "dtype", "text"), [
    (0.99999994, "float32", "0.99999994"), (1 - 2.0 ** -24, "float32", "0.99999994"),
    (16.500000000782858, "float64", "16.500000000782858"), (0.5, "bfloat16", "0.5"),
    (1.1920928955078125e-07, "float32", "1.1920929e-7"), (math.inf, "float16", "inf"),
    (-0.0, "float32", "-0"), (448.0, "float8_e4m3fn", "448"),
    (6.845220923423767e-08, "bfloat16", "6.85e-8"), (0.99999994, "bfloat16", "1"),
])
def test_shortest_reads_back_as_the_dtype_value(value, dtype, text):
    assert report.shortest(value, dtype) == text


def test_exact_text_grows_until_it_differs():
    assert report.exact_text(16.5, [(16.5, "16.5")]) == "16.5"
    assert report.exact_text(16.500000068256032, [(16.5, "16.5")]) == "16.5000001"
    below = report.exact_text(0.9999999330717, [(0.9999999403953552, "0.99999994")])
    assert float(below) < 0.99999994  # never "1": on the exact value's side of the cell
