"""CLI tests: the real `bce-audit` commands through click's CliRunner, at a fixed width (COLUMNS=100).

conftest.py sets COLUMNS=100 and NO_COLOR for every test, so table output is reproducible.
Golden files live in tests/golden/ and are compared byte for byte (text tables after stripping
trailing spaces from each line). After an intended change of output, regenerate them with

    BCE_AUDIT_REGEN=1 .venv/bin/python -m pytest tests/test_cli.py

and review `git diff tests/golden/` before committing.

Tests marked xfail(strict=True) pin known bugs: each states the correct behaviour, so the
marker must go when the bug is fixed.
"""

from __future__ import annotations

import csv
import io
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json

from bce_audit import __version__, compiled, dtypes, formulas
from bce_audit.records import MAX_POINTS, KeyPoint, Row

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("BCE_AUDIT_REGEN") == "1"
WIDTH = 100

SMALL_SWEEP = ("sweep", "--dtype", "float16", "--range", "-20:20", "--points", "9",
               "--formula", "keras3", "--formula", "logits-stable")
KEYPOINT_FIELDS = {"dtype", "mode", "formula", "eps", "label", "name", "threshold", "x", "value", "predicted"}


# ---------------------------------------------------------------- helpers








def assert_sorted_keys(doc) -> None:
    """Every object's keys in sorted order, at every depth (json.dumps(sort_keys=True))."""
    if isinstance(doc, dict):
        assert list(doc) == sorted(doc), list(doc)
        for v in doc.values():
            assert_sorted_keys(v)
    elif isinstance(doc, list):
        for v in doc:
            assert_sorted_keys(v)


def strip_lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


def assert_fits(text: str, width: int = WIDTH) -> None:
    """No line wider than the terminal, and nothing truncated with an ellipsis."""
    too_long = [line for line in strip_lines(text) if len(line) > width]
    assert not too_long, too_long
    assert "…" not in text


def golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME byte for byte; BCE_AUDIT_REGEN=1 rewrites the file."""
    path = GOLDEN / name
    data = text.encode("utf-8")
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"{path} is missing: run with BCE_AUDIT_REGEN=1 to create it"
    assert data.decode("utf-8") == path.read_bytes().decode("utf-8")


def golden_text(name: str, text: str) -> None:
    """Tables: golden after stripping trailing spaces, which rich pads each line with."""
    golden(name, "\n".join(strip_lines(text)) + "\n")


def csv_rows(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    assert rows, "empty CSV"
    assert all(len(r) == len(rows[0]) for r in rows), "ragged CSV"
    return rows


# ---------------------------------------------------------------- help and version


def test_version():
    assert ok("--version") == f"bce-audit {__version__} (compiled: {'yes' if compiled.active() else 'no'})\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_group_help_lists_every_command(flag):
    out = ok(flag)
    assert out.startswith("Usage: bce-audit [OPTIONS] COMMAND")
    for command in ("sweep", "points", "check", "dtypes"):
        assert f"  {command}  " in out
    assert "--version" in out
    assert_fits(out)


SELECTION = ("--dtype", "--eps", "--formula", "--mode", "--label", "--threshold")
OUTPUT = ("--format", "--output", "-o", "--help")


@pytest.mark.parametrize(("command", "options"), [
    ("sweep", (*SELECTION, "--range", "--points", "--step", "--spacing", "--rows", *OUTPUT, "markdown")),
    ("points", (*SELECTION, *OUTPUT, "json", "csv")),
    ("check", (*SELECTION, *OUTPUT, "X [X ...]")),
    ("dtypes", ("--mode", *OUTPUT, "per-op", "upcast")),
])
def test_command_help_mentions_its_options(command, options):
    out = ok(command, "--help")
    assert out.startswith(f"Usage: bce-audit {command} [OPTIONS]")
    for option in options:
        assert option in out, option
    assert_fits(out)


def test_points_has_no_grid_options():
    out = ok("points", "--help")
    for option in ("--range", "--points", "--step", "--spacing"):
        assert option not in out


def _python_m(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"COLUMNS": str(WIDTH), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "bce_audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_python_m_help():
    p = _python_m("--help")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert p.stdout.startswith("Usage: bce-audit [OPTIONS] COMMAND")
    assert "sweep" in p.stdout and "dtypes" in p.stdout


def test_python_m_usage_error_is_one_line():
    """The real entry point, not only the runner: exit 2, one line, no traceback."""
    p = _python_m("sweep", "--range", "5:1")
    assert p.returncode == 2
    assert p.stdout == ""
    assert p.stderr == "bce-audit: error: --range '5:1': LO must be less than HI\n"


# ---------------------------------------------------------------- bad input


DTYPE_CHOICES = ("float8_e4m3fn", "float16", "bfloat16", "float32", "float64", "longdouble", "all")
BAD_INPUT = [
    # unknown choices: name the bad value and the valid choices
    pytest.param(("points", "--dtype", "float99"), ("--dtype", "'float99'", *DTYPE_CHOICES), id="dtype"),
    pytest.param(("check", "1", "--dtype", "hlf"), ("--dtype", "'hlf'", *DTYPE_CHOICES), id="check-dtype"),
    pytest.param(("points", "--formula", "nope"), ("--formula", "'nope'", *formulas.NAMES), id="formula"),
    pytest.param(("points", "--format", "xml"), ("--format", "'xml'", "table", "json", "csv", "markdown"),
                 id="format"),
    pytest.param(("dtypes", "--format", "csv"), ("--format", "'csv'", "table", "json"), id="dtypes-format"),
    pytest.param(("points", "--mode", "fast"), ("--mode", "'fast'", "per-op", "upcast"), id="mode"),
    pytest.param(("dtypes", "--mode", "fast"), ("--mode", "'fast'", "per-op", "upcast"), id="dtypes-mode"),
    pytest.param(("points", "--label", "2"), ("--label", "'2'", "1, 0, both"), id="label"),
    pytest.param(("sweep", "--spacing", "exp"), ("--spacing", "'exp'", "lin", "log"), id="spacing"),
    # --range
    pytest.param(("sweep", "--range", "abc"), ("--range", "'abc'", "LO:HI"), id="range-abc"),
    pytest.param(("sweep", "--range", "1:"), ("--range", "'1:'", "LO:HI"), id="range-no-hi"),
    pytest.param(("sweep", "--range", ":2"), ("--range", "':2'", "LO:HI"), id="range-no-lo"),
    pytest.param(("sweep", "--range", "1:2:3"), ("--range", "'1:2:3'", "LO:HI"), id="range-three"),
    pytest.param(("sweep", "--range", "a:b"), ("--range", "'a:b'", "number"), id="range-words"),
    pytest.param(("sweep", "--range", ""), ("--range", "''"), id="range-empty"),
    pytest.param(("sweep", "--range", "5:1"), ("--range", "'5:1'", "less than"), id="range-reversed"),
    pytest.param(("sweep", "--range", "3:3"), ("--range", "'3:3'", "less than"), id="range-equal"),
    pytest.param(("sweep", "--range", "-inf:1"), ("--range", "'-inf:1'", "finite"), id="range-inf"),
    pytest.param(("sweep", "--range", "nan:1"), ("--range", "'nan:1'", "finite"), id="range-nan"),
    pytest.param(("sweep", "--range", "0:1e400"), ("--range", "finite"), id="range-overflowing"),
    # --eps in [0, 0.5)
    *(pytest.param(("points", "--eps", e), ("--eps", "[0, 0.5)"), id=f"eps-{e}")
      for e in ("-1e-7", "0.5", "0.7", "nan", "inf")),
    pytest.param(("points", "--eps", "tiny"), ("--eps", "'tiny'"), id="eps-word"),
    # --threshold in (0, 1)
    *(pytest.param(("points", "--threshold", t), ("--threshold", "(0, 1)"), id=f"threshold-{t}")
      for t in ("0", "1", "-0.1", "2", "nan", "inf")),
    # --points and --step
    *(pytest.param(("sweep", "--points", n), ("--points", n, f"{MAX_POINTS:,}"), id=f"points-{n}")
      for n in ("1", "0", "-5", str(10**9), str(10**30))),
    pytest.param(("sweep", "--points", "many"), ("--points", "'many'"), id="points-word"),
    pytest.param(("sweep", "--points", "5", "--step", "1"), ("--points", "--step"), id="points-and-step"),
    *(pytest.param(("sweep", "--step", s), ("--step", "positive"), id=f"step-{s}")
      for s in ("0", "-1", "nan", "inf", "-inf")),
    pytest.param(("sweep", "--step", "1e-9"), ("--step", "80,000,000,001", f"{MAX_POINTS:,}"),
                 id="step-too-many"),
    pytest.param(("sweep", "--step", "100"), ("--step", "fewer than 2"), id="step-too-few"),
    pytest.param(("sweep", "--step", "1", "--spacing", "log"), ("--step", "--spacing"), id="step-log"),
    pytest.param(("sweep", "--step", "1e-320"), ("--step", f"{MAX_POINTS:,}"), id="step-subnormal"),
    pytest.param(("sweep", "--range", "-1e308:1e308", "--step", "1"), ("--range", "too wide"),
                 id="step-huge-range"),
    pytest.param(("sweep", "--rows", "1"), ("--rows",), id="rows"),
    # unknown options and commands
    pytest.param(("sweep", "--bogus"), ("--bogus",), id="option-sweep"),
    pytest.param(("points", "--range", "-1:1"), ("--range",), id="option-points-range"),
    pytest.param(("dtypes", "--bogus"), ("--bogus",), id="option-dtypes"),
    pytest.param(("check", "1", "--bogus"), ("--bogus",), id="option-check"),
    pytest.param(("--bogus",), ("--bogus",), id="option-group"),
    pytest.param(("bogus",), ("bogus",), id="command"),
    pytest.param(("sweep", "--dtype"), ("--dtype",), id="option-missing-value"),
    # check's logits
    pytest.param(("check", "abc"), ("'abc'", "logit"), id="logit-abc"),
    pytest.param(("check", "0x10"), ("'0x10'", "logit"), id="logit-hex"),
    pytest.param(("check", "inf"), ("'inf'", "finite"), id="logit-inf"),
    pytest.param(("check", "--", "-inf"), ("'-inf'", "finite"), id="logit-minus-inf"),
    pytest.param(("check", "nan"), ("'nan'", "finite"), id="logit-nan"),
    pytest.param(("check", "1e400"), ("'1e400'", "finite"), id="logit-overflowing"),
    pytest.param(("check", "16.5", "abc", "17"), ("'abc'",), id="logit-among-good"),
    pytest.param(("check",), ("Missing argument",), id="logit-none"),
    pytest.param(("check", "--dtype", "float32"), ("Missing argument",), id="logit-none-with-options"),
]


@pytest.mark.parametrize(("args", "needles"), BAD_INPUT)
def test_bad_input_is_one_line_exit_2(args, needles):
    assert_usage_error(run(*args), *needles)


def test_output_directory_instead_of_file():
    assert_usage_error(run("dtypes", "--output", str(ROOT)), "--output", "directory")


def test_output_into_missing_directory(tmp_path):
    target = tmp_path / "missing" / "out.json"
    assert_usage_error(run("dtypes", "--format", "json", "--output", str(target)), "--output", "missing")
    assert not target.parent.exists()


def test_huge_finite_range_is_rejected_or_gridded_correctly():
    r = run("sweep", "--range", "-1e308:1e308", "--points", "3", "--format", "csv")
    if r.exit_code == 2:
        assert_usage_error(r, "--range")
        return
    assert r.exit_code == 0, (r.exit_code, r.exception)
    assert r.stderr == ""
    rows = csv_rows(r.stdout)
    xs = [float(row[rows[0].index("x")]) for row in rows[1:]]
    assert all(math.isfinite(x) for x in xs)
    assert sorted(set(xs)) == [-1e308, 0.0, 1e308]


# ---------------------------------------------------------------- sweep


def test_sweep_json_golden():
    """A small sweep, byte for byte: settings, key points, rows and worst errors."""
    text = ok(*SMALL_SWEEP, "--format", "json")
    golden("sweep_small.json", text)
    doc = strict_json(text)
    assert_sorted_keys(doc)
    assert doc["schema"] == "bce-audit/1"
    assert doc["version"] == __version__
    assert doc["settings"]["dtypes"] == ["float16"]
    assert doc["settings"]["formulas"] == ["keras3", "logits-stable"]
    assert doc["settings"]["range"] == [-20.0, 20.0]
    assert doc["settings"]["points"] == 9
    assert {"keypoints", "rows", "worst"} <= doc.keys()
    sig = [r for r in doc["rows"] if r["quantity"] == "sigmoid"]
    assert [r["x"] for r in sig] == [-20.0, -15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0, 20.0]
    assert {r["formula"] for r in doc["rows"] if r["quantity"] == "bce"} == {"keras3", "logits-stable"}


def test_sweep_table_detail():
    """--detail (-v): after the verdict, every table the default used to print."""
    out = ok("sweep", "--dtype", "float32", "--detail")
    assert out.index("Verdict: float32") < out.index("Round-trip key points: float32, native")
    assert "roundtrip_overflow" in out
    assert "Worst error over the grid" in out
    assert_fits(out)
    assert ok("sweep", "--dtype", "float32", "-v") == out


def test_sweep_table_default_is_not_truncated():
    assert_fits(ok("sweep", "--dtype", "float32"))


def test_issue_12_sweep_default_is_a_verdict_on_one_screen(monkeypatch):
    """`sweep --dtype float32` answers where float32 breaks, and why, first and in under 60
    lines at 100 columns; it fits 80 columns too (rich wraps the causes)."""
    out = ok("sweep", "--dtype", "float32")
    lines = strip_lines(out)
    assert len(lines) < 60, len(lines)
    assert lines[0].startswith("Verdict: float32, native, eps 1e-7")
    for needle in ("sigmoid rounds to 1", "clip at 1-eps", "keras2-logits", "torch-bce-logits",
                   "Worst error on the grid", "--detail"):
        assert needle in out, needle
    assert "Round-trip key points" not in out and "Sampled" not in out
    golden_text("sweep_default.txt", out)
    monkeypatch.setenv("COLUMNS", "80")
    narrow = ok("sweep", "--dtype", "float32")
    assert_fits(narrow, 80)
    assert strip_lines(narrow)[0].startswith("Verdict: float32")


def test_sweep_csv_has_row_fields():
    rows = csv_rows(ok(*SMALL_SWEEP, "--format", "csv"))
    header = rows[0]
    assert header == [f.name for f in fields(Row)]
    body = [dict(zip(header, r, strict=True)) for r in rows[1:]]
    assert {r["quantity"] for r in body} == {"sigmoid", "roundtrip", "bce"}
    assert sum(r["quantity"] == "sigmoid" for r in body) == 9
    assert {r["dtype"] for r in body} == {"float16"}


def test_sweep_markdown_has_keypoint_table():
    out = ok(*SMALL_SWEEP, "--format", "markdown")
    assert out.startswith(f"## bce-audit {__version__}: float16 (native)")
    assert any(line.startswith("| dtype | key point |") for line in out.splitlines())
    assert "### Worst error over the grid" in out


def test_sweep_step_grid():
    rows = csv_rows(ok("sweep", "--dtype", "float32", "--range", "-20:20", "--step", "10",
                       "--formula", "naive", "--format", "csv"))
    x = rows[0].index("x")
    q = rows[0].index("quantity")
    assert [float(r[x]) for r in rows[1:] if r[q] == "sigmoid"] == [-20.0, -10.0, 0.0, 10.0, 20.0]


def test_sweep_log_spacing_is_geometric_around_zero():
    doc = strict_json(ok("sweep", "--dtype", "float32", "--range", "-20:20", "--points", "9",
                         "--spacing", "log", "--formula", "naive", "--format", "json"))
    xs = [r["x"] for r in doc["rows"] if r["quantity"] == "sigmoid"]
    assert len(xs) == 9
    assert xs[0] == pytest.approx(-20.0) and xs[-1] == pytest.approx(20.0)
    assert 0.0 in xs
    assert xs == sorted(xs)


def test_sweep_rows_option_limits_sampled_rows():
    out = ok("sweep", "--dtype", "float32", "--range", "-20:20", "--points", "9", "--formula", "naive",
             "--label", "1", "--rows", "3", "--detail")
    table = "\n".join(strip_lines(out.split("Sampled: sigmoid and round trip")[1]))
    data = [line for line in table.split("─")[-1].split("\n\n")[0].splitlines() if line.strip()]
    assert len(data) == 3, data


# ---------------------------------------------------------------- points


def test_points_json_is_strict_and_complete():
    text = ok("points", "--dtype", "float32", "--format", "json")
    doc = strict_json(text)
    assert doc["schema"] == "bce-audit/1"
    assert doc["version"] == __version__
    assert isinstance(doc["settings"], dict) and doc["settings"]["dtypes"] == ["float32"]
    assert "rows" not in doc
    kps = doc["keypoints"]
    assert kps
    for kp in kps:
        assert kp.keys() >= KEYPOINT_FIELDS, KEYPOINT_FIELDS - kp.keys()
        assert kp.keys() == {f.name for f in fields(KeyPoint)}
        assert kp["dtype"] == "float32" and kp["mode"] == "native"
        for key in ("x", "value", "predicted", "eps", "threshold"):
            v = kp[key]
            assert v is None or isinstance(v, (int, float)) or v in ("inf", "-inf", "nan"), (key, v)
    overflow = next(k for k in kps if k["name"] == "roundtrip_overflow")
    assert overflow["value"] == "inf"
    assert 16 < overflow["x"] < 17
    values = {k["value"] for k in kps}
    assert "-inf" in values and "nan" in values
    # deterministic: sorted keys, and the same bytes twice
    assert_sorted_keys(doc)
    assert ok("points", "--dtype", "float32", "--format", "json") == text


def test_points_csv_has_keypoint_fields():
    rows = csv_rows(ok("points", "--dtype", "float16", "--format", "csv"))
    assert rows[0] == [f.name for f in fields(KeyPoint)]
    names = {r[rows[0].index("name")] for r in rows[1:]}
    assert "roundtrip_overflow" in names


@pytest.mark.parametrize("args", [
    ("sweep", "--dtype", "float32", "--detail"),
    ("points", "--dtype", "float16", "--dtype", "longdouble", "--eps", "1e-7", "--eps", "1e-3"),
    ("check", "16.5", "-50", "--dtype", "float8_e4m3fn", "--dtype", "float64", "--dtype", "longdouble",
     "--detail"),
], ids=["sweep-detail", "points-two-dtypes", "check-detail"])
def test_issue_12_every_table_fits_80_columns_without_cutting(monkeypatch, args):
    """At 80 columns text wraps or folds; no number is cut to an ellipsis."""
    monkeypatch.setenv("COLUMNS", "80")
    assert_fits(ok(*args), 80)


def test_issue_12_readme_pastes_the_real_default_sweep():
    """The README's verdict of `sweep --dtype float32` is the golden one, byte for byte."""
    readme = (GOLDEN.parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### `sweep`: the verdict first")[1]
    pasted = section.split("```\n")[1]
    assert pasted == (GOLDEN / "sweep_default.txt").read_text(encoding="utf-8")


def test_points_table():
    out = ok("points", "--dtype", "float32", "--detail")
    assert "roundtrip_overflow" in out
    assert "BCE key points: float32, native" in out
    assert "Sampled" not in out
    assert_fits(out)


def test_points_default_is_the_verdict():
    out = ok("points", "--dtype", "float32")
    assert out.startswith("Verdict: float32, native, eps 1e-7: where it breaks, and why")
    assert "BCE key points" not in out and "Worst error" not in out
    assert_fits(out)


def test_points_several_dtypes_open_with_one_table():
    """Several dtypes: one verdict table, three rows a dtype; --detail adds each one's families."""
    out = ok("points", "--dtype", "float16", "--dtype", "bfloat16")
    assert out.startswith("Verdict (native): where each dtype breaks first, and why")
    assert out.count("Verdict") == 1
    assert [line.split()[0] for line in strip_lines(out) if line.startswith((" float16", " bfloat16"))] \
        == ["float16", "bfloat16"]
    detail = ok("points", "--dtype", "float16", "--dtype", "bfloat16", "--detail")
    assert "Verdict: float16, native" in detail and "Verdict: bfloat16, native" in detail


def test_points_markdown():
    out = ok("points", "--dtype", "float16", "--format", "markdown")
    assert any(line.startswith("| dtype | key point |") for line in out.splitlines())


def test_points_mode_and_label_reach_the_output():
    doc = strict_json(ok("points", "--dtype", "float16", "--mode", "upcast", "--label", "1",
                         "--formula", "keras3", "--format", "json"))
    assert doc["settings"]["mode"] == "upcast" and doc["settings"]["label"] == "1"
    assert {k["mode"] for k in doc["keypoints"]} == {"upcast"}
    assert {k["label"] for k in doc["keypoints"]} <= {1, None}
    assert {k["formula"] for k in doc["keypoints"]} <= {"keras3", None}


@pytest.mark.filterwarnings("ignore:overflow encountered in scalar subtract:RuntimeWarning")
def test_points_all_dtypes():
    """Every dtype at once (the float64 warning is pinned by test_points_float64_without_warnings)."""
    doc = strict_json(ok("points", "--dtype", "all", "--format", "json"))
    assert doc["settings"]["dtypes"] == list(dtypes.NAMES)
    assert {k["dtype"] for k in doc["keypoints"]} == set(dtypes.NAMES)
    for name in dtypes.NAMES:
        assert any(k["dtype"] == name and k["name"] == "roundtrip_overflow" for k in doc["keypoints"]), name


def test_points_float64_without_warnings():
    rows = csv_rows(ok("points", "--dtype", "float64", "--format", "csv"))
    assert len(rows) > 1


# ---------------------------------------------------------------- check


def test_check_table_golden():
    out = ok("check", "16.5", "17", "-50", "--dtype", "float32", "--dtype", "float16")
    assert_fits(out)
    for x in ("x = 16.5", "x = 17", "x = -50"):
        assert x in out
    golden_text("check_table.txt", out)


def test_check_negative_logit_is_not_an_option():
    out = ok("check", "-50", "--dtype", "float32")
    assert "x = -50" in out


def test_check_every_dtype_by_default():
    rows = csv_rows(ok("check", "16.5", "--format", "csv"))
    assert rows[0] == [f.name for f in fields(Row)]
    assert {r[rows[0].index("dtype")] for r in rows[1:]} == set(dtypes.NAMES)


def test_check_json():
    doc = strict_json(ok("check", "16.5", "-50", "--dtype", "float32", "--format", "json"))
    assert doc["schema"] == "bce-audit/1"
    assert doc["settings"]["logits"] == [16.5, -50.0]
    assert {r["x"] for r in doc["rows"]} == {16.5, -50.0}


def test_check_markdown():
    out = ok("check", "16.5", "--dtype", "float32", "--format", "markdown")
    assert out.startswith("### x = 16.5")
    assert "| quantity | exact | float32 |" in out


def test_check_logit_beyond_dtype_max_without_warnings():
    out = ok("check", "1e39", "--dtype", "float32")
    assert "x = 1e+39" in out or "x = 1e39" in out


# ---------------------------------------------------------------- dtypes


@pytest.mark.skipif(np.finfo(np.longdouble).nmant != 63,
                    reason="the golden longdouble row is x87 80-bit extended (x86-64 Linux)")
def test_dtypes_table_golden():
    out = ok("dtypes")
    assert_fits(out)
    golden_text("dtypes_table.txt", out)


def test_dtypes_table_lists_every_dtype():
    out = ok("dtypes")
    for name in dtypes.NAMES:
        assert f" {name} " in out
    assert_fits(out)


@pytest.mark.parametrize("mode", formulas.MODES)
def test_dtypes_json(mode):
    doc = strict_json(ok("dtypes", "--format", "json", "--mode", mode))
    assert doc["schema"] == "bce-audit/1"
    assert doc["mode"] == mode
    assert [d["name"] for d in doc["dtypes"]] == list(dtypes.NAMES)
    f32 = next(d for d in doc["dtypes"] if d["name"] == "float32")
    assert f32["bits"] == 32 and f32["mantissa_bits"] == 23
    assert f32["eps"] == float.fromhex("0x1p-23")  # 1.19e-07


# ---------------------------------------------------------------- --output


def _no_temp_files(directory: Path) -> None:
    assert not list(directory.glob(".bce-audit-*"))


def test_output_json_file(tmp_path):
    target = tmp_path / "sweep.json"
    assert ok(*SMALL_SWEEP, "--format", "json", "--output", str(target)) == ""
    assert target.read_text(encoding="utf-8") == ok(*SMALL_SWEEP, "--format", "json")
    _no_temp_files(tmp_path)


def test_output_replaces_existing_file(tmp_path):
    target = tmp_path / "points.csv"
    target.write_text("old contents that are longer than nothing\n" * 100, encoding="utf-8")
    assert ok("points", "--dtype", "float16", "--format", "csv", "-o", str(target)) == ""
    assert target.read_text(encoding="utf-8").startswith("dtype,mode,formula,")
    assert "old contents" not in target.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["points.csv"]


def test_output_table_file_is_plain_100_columns(tmp_path):
    target = tmp_path / "check.txt"
    assert ok("check", "16.5", "17", "-50", "--dtype", "float32", "--dtype", "float16",
              "--output", str(target)) == ""
    text = target.read_text(encoding="utf-8")
    assert "\x1b[" not in text
    assert_fits(text)
    assert strip_lines(text) == strip_lines(ok("check", "16.5", "17", "-50", "--dtype", "float32",
                                                "--dtype", "float16"))
    _no_temp_files(tmp_path)


def test_failed_validation_writes_nothing(tmp_path):
    target = tmp_path / "out.json"
    assert_usage_error(run("sweep", "--range", "5:1", "--format", "json", "--output", str(target)), "--range")
    assert list(tmp_path.iterdir()) == []


def test_verdict_of_several_dtypes_heads_each_dtype_whole():
    """Each dtype (and backend, and mode where the findings hold several) heads its rows on one
    line: the heading is never folded, the table fits 80 columns."""
    from rich.console import Console

    from bce_audit import report, verdict

    def finding(dtype, mode, backend):
        return verdict.Finding(dtype, mode, backend, (), "roundtrip_overflow", None, None, None, 16.635532,
                               float("inf"), "sigmoid rounds to 1")

    found = [finding("float32", "per-op", "numpy"), finding("float32", "native", "numpy"),
             finding("bfloat16", "native", "keras-tensorflow")]
    console = Console(width=80, record=True, color_system=None)
    console.print(report.verdict_overview(found))
    text = console.export_text()
    assert_fits(text, 80)
    lines = strip_lines(text)
    for head in ("float32, per-op", "float32, native", "bfloat16 (keras-tensorflow), native"):
        assert f" {head}" in lines, (head, lines)
