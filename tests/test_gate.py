"""The precision gate: `gate` and `baseline save` through the real CLI, with configs written into tmp_path.

Exit codes: 0 every check passed, 1 a check failed (every failure named), 2 bad input (one stderr
line). Failing checks are built to fail for reasons derived here with numpy alone, never from
figures the tool printed.

User implementations (`impl:module:function`) are small modules written into tmp_path, which becomes
the current directory (the CLI makes it importable). Imported modules stay in sys.modules, so each
test uses module names of its own.

Tests marked xfail(strict=True) pin known bugs: each states the correct behaviour, so the marker must
go when the bug is fixed.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_usage_error, run, strict_json
from click.testing import Result

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def _not_in_github_actions(monkeypatch):
    """Annotations only where a test asks for them (CI may set GITHUB_ACTIONS itself)."""
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)




def assert_exit(r: Result, code: int) -> None:
    assert r.exit_code == code, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stderr == ""
    assert "Traceback" not in r.output





def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def summary(out: str) -> str:
    """The gate's closing line: 'N checks passed' or 'K of N checks failed: a, b'."""
    lines = [line.strip() for line in out.splitlines() if line.strip() and not line.startswith("::")]
    return lines[-1]


def status_of(out: str, names) -> dict[str, str]:
    """PASS/FAIL/ERROR per check name, from the table rows (names short enough not to wrap)."""
    found = {}
    for line in out.splitlines():
        m = re.match(r"\s*(PASS|FAIL|ERROR)\s+(.*?)\s{2,}", line)
        if m and m.group(2) in names:
            found[m.group(2)] = m.group(1)
    return found


def no_temp_files(directory: Path) -> None:
    assert not list(directory.glob(".bce-audit-*"))


def float32_between(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi] (0 < lo < hi), in order."""
    a = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32) + 1, dtype=np.int32)
    return a.view(np.float32)


def float32_roundtrip(x: np.ndarray) -> np.ndarray:
    """logit(sigmoid(x)) with the naive formulas, every op in float32."""
    one = np.float32(1)
    with np.errstate(all="ignore"):
        p = one / (one + np.exp(-x))
        return np.log(p / (one - p))


def float32_overflow() -> float:
    """Where the float32 round trip first overflows, found with numpy alone (about 16.6)."""
    x = float32_between(1.0, 40.0)
    bad = ~np.isfinite(float32_roundtrip(x))
    return float(x[np.argmax(bad)])


OVERFLOW = float32_overflow()


# ---------------------------------------------------------------- configs


PASSING = """\
dtype = "float32"
points = 101

[[check]]
name = "stable within 4 ULP"
formula = "logits-stable"
range = [-40.0, 40.0]
max_ulp = 4

[[check]]
name = "round trip to 16"
keypoint = "roundtrip_overflow"
min_x = 16
"""

# keras3 floors near 1e-7 for label 1, where the exact loss is ~exp(-40) = 4e-18: far beyond 1 ULP.
# The float32 round trip overflows at OVERFLOW (< 20). Naive float16 BCE takes log(1 - 1) at x = 20.
FAILING = """\
dtype = "float32"
points = 101

[[check]]
name = "keras3 within 1 ULP"
formula = "keras3"
range = [0.0, 40.0]
max_ulp = 1

[[check]]
name = "round trip to 20"
keypoint = "roundtrip_overflow"
min_x = 20

[[check]]
name = "naive float16 finite"
formula = "naive"
dtype = "float16"
range = [-20.0, 20.0]
points = 41
max_rel = 1

[[check]]
name = "stable within 4 ULP"
formula = "logits-stable"
range = [-40.0, 40.0]
max_ulp = 4
"""
FAILING_NAMES = ("keras3 within 1 ULP", "round trip to 20", "naive float16 finite")
PASSING_NAMES = ("stable within 4 ULP",)


def test_failing_config_fails_for_independent_reasons():
    """The reasons FAILING must fail, with numpy and math alone."""
    assert 16 < OVERFLOW < 20
    # keras3 label 1 at x = 40: the clipped p gives -log(1 - 1e-7) ~ 1e-7; exact softplus(-40) ~ 4e-18
    exact = math.log1p(math.exp(-40.0))
    p = np.float32(1) / (np.float32(1) + np.exp(np.float32(-40.0)))
    clipped = min(float(p), float(np.float32(1.0 - 1e-7)))
    assert -math.log(clipped) > 1e9 * exact
    # naive float16 at x = 20: sigmoid rounds to 1, so log(1 - p) is -inf
    one = np.float16(1)
    with np.errstate(all="ignore"):
        p16 = one / (one + np.exp(-np.float16(20.0)))
        assert not np.isfinite(np.log(one - p16))


# ---------------------------------------------------------------- pass and fail


def test_gate_passes(tmp_path):
    r = run("gate", write(tmp_path, "pass.toml", PASSING))
    assert_exit(r, 0)
    assert summary(r.stdout) == "2 checks passed"
    assert status_of(r.stdout, ("stable within 4 ULP", "round trip to 16")) == {
        "stable within 4 ULP": "PASS", "round trip to 16": "PASS"}
    assert "FAIL" not in r.stdout
    assert "::error" not in r.stdout


def test_gate_fails_and_names_every_failing_check(tmp_path):
    r = run("gate", write(tmp_path, "fail.toml", FAILING))
    assert_exit(r, 1)
    line = summary(r.stdout)
    total = len(FAILING_NAMES) + len(PASSING_NAMES)
    assert line.startswith(f"{len(FAILING_NAMES)} of {total} checks failed: ")
    listed = line.split("failed: ", 1)[1].split(", ")
    assert listed == list(FAILING_NAMES)
    status = status_of(r.stdout, (*FAILING_NAMES, *PASSING_NAMES))
    assert status == {**dict.fromkeys(FAILING_NAMES, "FAIL"), **dict.fromkeys(PASSING_NAMES, "PASS")}


def test_failures_say_what_broke(tmp_path):
    r = run("gate", write(tmp_path, "fail.toml", FAILING))
    assert_exit(r, 1)
    text = " ".join(r.stdout.split())
    assert "max_ulp" in text and "> 1" in text
    assert "< 20 (float32)" in text
    assert "non-finite" in text


def test_gate_with_two_configs_runs_both(tmp_path):
    a = write(tmp_path, "a.toml", PASSING)
    b = write(tmp_path, "b.toml", 'dtype = "float32"\n[[check]]\nname = "b overflow"\n'
                                  'keypoint = "roundtrip_overflow"\nmax_x = 10\n')
    r = run("gate", a, b)
    assert_exit(r, 1)
    assert summary(r.stdout) == "1 of 3 checks failed: b overflow"


# ---------------------------------------------------------------- machine outputs


def test_junit_xml(tmp_path):
    target = tmp_path / "gate.xml"
    r = run("gate", write(tmp_path, "fail.toml", FAILING), "--junit", str(target))
    assert_exit(r, 1)
    root = ET.parse(target).getroot()
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [*FAILING_NAMES, *PASSING_NAMES]  # config order
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == len(FAILING_NAMES)
    if root.tag == "testsuites":
        assert int(root.get("failures")) == len(FAILING_NAMES)
    for case in cases:
        failures = case.findall("failure")
        if case.get("name") in FAILING_NAMES:
            assert len(failures) == 1
            assert failures[0].get("message")
        else:
            assert failures == []
    no_temp_files(tmp_path)


def test_junit_xml_all_passing(tmp_path):
    target = tmp_path / "gate.xml"
    assert_exit(run("gate", write(tmp_path, "pass.toml", PASSING), "--junit", str(target)), 0)
    suite = ET.parse(target).getroot().find("testsuite")
    assert int(suite.get("failures")) == 0
    assert len(suite.findall("testcase")) == 2
    assert suite.findall("testcase/failure") == []


def test_json_output(tmp_path):
    target = tmp_path / "gate.json"
    config = write(tmp_path, "fail.toml", FAILING)
    assert_exit(run("gate", config, "--json", str(target)), 1)
    text = target.read_text(encoding="utf-8")
    doc = strict_json(text)
    assert doc["passed"] is False
    assert doc["configs"] == [config]
    assert doc["baseline"] is None
    assert [c["name"] for c in doc["checks"]] == [*FAILING_NAMES, *PASSING_NAMES]
    by_name = {c["name"]: c for c in doc["checks"]}
    for name in FAILING_NAMES:
        assert by_name[name]["passed"] is False and by_name[name]["failures"], name
    for name in PASSING_NAMES:
        assert by_name[name]["passed"] is True and by_name[name]["failures"] == [], name
    overflow = by_name["round trip to 20"]
    assert overflow["figures"]["x"] == OVERFLOW
    assert overflow["figures"]["value"] == "inf"  # strict JSON: inf as a string
    assert "Infinity" not in text and "NaN" not in text
    no_temp_files(tmp_path)


def test_json_output_all_passing(tmp_path):
    target = tmp_path / "gate.json"
    assert_exit(run("gate", write(tmp_path, "pass.toml", PASSING), "--json", str(target)), 0)
    doc = strict_json(target.read_text(encoding="utf-8"))
    assert doc["passed"] is True
    assert len(doc["checks"]) == 2


def test_markdown_output(tmp_path):
    target = tmp_path / "gate.md"
    assert_exit(run("gate", write(tmp_path, "fail.toml", FAILING), "--markdown", str(target)), 1)
    text = target.read_text(encoding="utf-8")
    total = len(FAILING_NAMES) + len(PASSING_NAMES)
    assert text.startswith(f"## bce-audit gate: {len(PASSING_NAMES)}/{total} passed")
    for name in (*FAILING_NAMES, *PASSING_NAMES):
        assert f"| {name} |" in text
    assert text.count("**FAIL**") == len(FAILING_NAMES)


def test_github_annotations_one_per_failed_check(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    r = run("gate", write(tmp_path, "fail.toml", FAILING))
    assert_exit(r, 1)
    errors = [line for line in r.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == len(FAILING_NAMES)
    for line, name in zip(errors, FAILING_NAMES, strict=True):
        title = re.match(r"::error title=([^:]*)::(.+)$", line)
        assert title, line
        assert title.group(1).endswith(name.replace(":", "%3A").replace(",", "%2C"))


def test_github_annotations_none_when_passing(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    r = run("gate", write(tmp_path, "pass.toml", PASSING))
    assert_exit(r, 0)
    assert "::error" not in r.stdout


def test_no_github_annotations_outside_github_actions(tmp_path):
    r = run("gate", write(tmp_path, "fail.toml", FAILING))
    assert_exit(r, 1)
    assert "::error" not in r.stdout


def test_github_annotation_title_is_escaped(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    name = "rt: 50%, float32"
    config = write(tmp_path, "esc.toml", f'[[check]]\nname = "{name}"\ndtype = "float32"\n'
                                         'keypoint = "roundtrip_overflow"\nmin_x = 20\n')
    r = run("gate", config)
    assert_exit(r, 1)
    errors = [line for line in r.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1
    props, message = errors[0][len("::error "):].split("::", 1)
    assert props.startswith("title=")
    title = props[len("title="):]
    assert "rt%3A 50%25%2C float32" in title
    assert "," not in title and ":" not in title  # a raw ',' or ':' would end the property
    assert message


# ---------------------------------------------------------------- config errors


def _check(body: str, name: str = "c") -> str:
    return f'[[check]]\nname = "{name}"\n{body}'


GATE_ERRORS = [
    pytest.param(_check('formula = "keras3"\nmax_ulp = 4\n[[check]\n'), ("invalid TOML", "line 5"),
                 id="malformed-toml"),
    pytest.param(_check('formula = "keras3"\nmax_ulpp = 4\n'),
                 ("check[1] ('c')", "'max_ulpp'", "did you mean 'max_ulp'"), id="typo-limit"),
    pytest.param(_check('formula = "keras3"\ndtpye = "float16"\nmax_ulp = 4\n'),
                 ("check[1]", "'dtpye'", "did you mean 'dtype'"), id="typo-dtype"),
    pytest.param(_check('keypoint = "bce_floor"\nformula = "keras3"\nmax_ulp = 4\n'),
                 ("check[1]", "'max_ulp'", "allowed"), id="grid-limit-on-keypoint"),
    pytest.param(_check('formula = "keras3"\nmax_ulp = -1\n'), ("check[1] ('c'): max_ulp", "-1", ">= 0"),
                 id="negative-limit"),
    pytest.param(_check('formula = "keras3"\nmax_ulp = "four"\n'), ("max_ulp", "number", "'four'"),
                 id="limit-string"),
    pytest.param(_check('formula = "keras3"\nmax_ulp = nan\n'), ("max_ulp", "nan"), id="limit-nan"),
    pytest.param(_check('keypoint = "bce_flor"\nformula = "keras3"\nmax_value = 1e-7\n'),
                 ("keypoint", "'bce_flor'", "bce_floor"), id="unknown-keypoint"),
    pytest.param(_check('formula = "keras3"\n'), ("check[1] ('c')", "no limit", "max_ulp"), id="no-limit"),
    pytest.param(_check('keypoint = "roundtrip_overflow"\n'), ("no limit", "min_x"), id="keypoint-no-limit"),
    pytest.param('[[check]]\nformula = "keras3"\nmax_ulp = 4\n', ("check[1]", "name"), id="no-name"),
    pytest.param('[[check]]\nname = "  "\nformula = "keras3"\nmax_ulp = 4\n', ("check[1]", "name"),
                 id="blank-name"),
    pytest.param('[[check]]\nname = 3\nformula = "keras3"\nmax_ulp = 4\n', ("check[1]", "name"),
                 id="name-number"),
    pytest.param(_check("max_ulp = 4\n"), ("formula", "needs a formula", "keras3"), id="no-formula"),
    pytest.param(_check('formula = "nope"\nmax_ulp = 4\n'), ("formula", "'nope'"), id="unknown-formula"),
    pytest.param(_check('formula = "keras3"\ndtype = "float99"\nmax_ulp = 4\n'), ("dtypes", "'float99'"),
                 id="unknown-dtype"),
    pytest.param(_check('formula = "keras3"\nlabel = 2\nmax_ulp = 4\n'), ("label", "'2'", "pair"),
                 id="bad-label"),
    pytest.param(_check('formula = "keras3"\neps = [1e-7, 1e-4]\nmax_ulp = 4\n'), ("eps", "one eps"),
                 id="two-eps"),
    pytest.param(_check('formula = "keras3"\nallow_nonfinite = "yes"\nmax_ulp = 4\n'),
                 ("allow_nonfinite", "true or false"), id="allow-nonfinite-string"),
    pytest.param(_check('formula = "keras3"\nrange = [5.0, 1.0]\nmax_ulp = 4\n'), ("range", "less than"),
                 id="range-reversed"),
    pytest.param(_check('keypoint = "roundtrip_rel_err_onset"\nmin_x = 10\n'), ("threshold", "needs"),
                 id="onset-without-threshold"),
    pytest.param(_check('keypoint = "roundtrip_overflow"\nformula = "keras3"\nmin_x = 10\n'),
                 ("formula", "round-trip"), id="roundtrip-with-bce-formula"),
    pytest.param(_check('keypoint = "bce_floor"\nmax_value = 1\n'), ("formula", "needs a formula"),
                 id="bce-keypoint-without-formula"),
    pytest.param('dtype = "float32"\n', ("no [[check]]",), id="no-checks"),
    pytest.param('dtpyes = "float32"\n' + _check('formula = "keras3"\nmax_ulp = 4\n'),
                 ("'dtpyes'", "did you mean 'dtypes'"), id="typo-top-level"),
]


@pytest.mark.parametrize(("text", "needles"), GATE_ERRORS)
def test_gate_config_error_is_one_line(tmp_path, text, needles):
    path = write(tmp_path, "bad.toml", text)
    assert_usage_error(run("gate", path), path, *needles)


def test_gate_malformed_toml_line_is_tomllib_s(tmp_path):
    text = _check('formula = "keras3"\nmax_ulp = 4\n[[check]\n')
    with pytest.raises(tomllib.TOMLDecodeError) as e:
        tomllib.loads(text)
    where = re.search(r"line \d+", str(e.value)).group(0)
    path = write(tmp_path, "bad.toml", text)
    assert_usage_error(run("gate", path), path, where)


def test_gate_missing_config(tmp_path):
    path = str(tmp_path / "nowhere.toml")
    assert_usage_error(run("gate", path), path, "no such config file")


def test_gate_needs_a_config():
    assert_usage_error(run("gate"), "Missing argument")


def test_duplicate_check_names_across_configs(tmp_path):
    a = write(tmp_path, "a.toml", PASSING)
    b = write(tmp_path, "b.toml", _check('formula = "keras3"\nmax_ulp = 4\n', name="round trip to 16"))
    assert_usage_error(run("gate", a, b), b, "'round trip to 16'", a)


def test_duplicate_check_names_in_one_config(tmp_path):
    path = write(tmp_path, "dup.toml", _check('formula = "keras3"\nmax_ulp = 4\n') * 2)
    assert_usage_error(run("gate", path), path, "'c'", "twice")


def test_a_config_error_in_the_second_config_runs_nothing(tmp_path):
    a = write(tmp_path, "a.toml", PASSING)
    b = write(tmp_path, "b.toml", _check('formula = "keras3"\nmax_ulp = -1\n'))
    target = tmp_path / "gate.json"
    assert_usage_error(run("gate", a, b, "--json", str(target)), b)
    assert not target.exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_bad_tolerance(tmp_path, value):
    path = write(tmp_path, "pass.toml", PASSING)
    assert_usage_error(run("gate", path, "--tolerance", value), "--tolerance")
    assert_usage_error(run("baseline", "save", path, "-o", str(tmp_path / "b.json"), "--tolerance", value),
                       "--tolerance")
    assert not (tmp_path / "b.json").exists()


# ---------------------------------------------------------------- baselines


def save_baseline(tmp_path: Path, config: str, *extra: str) -> Path:
    target = tmp_path / "baseline.json"
    r = run("baseline", "save", config, "-o", str(target), *extra)
    assert_exit(r, 0)
    assert str(target) in r.stdout
    return target


def edit(path: Path, change) -> None:
    doc = json.loads(path.read_text(encoding="utf-8"))
    change(doc)
    path.write_text(json.dumps(doc), encoding="utf-8")


def test_baseline_save_writes_versioned_json(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    doc = strict_json(target.read_text(encoding="utf-8"))
    assert doc["schema"] == "bce-audit-baseline/1"
    assert doc["configs"] == [config]
    assert set(doc["checks"]) == {"stable within 4 ULP", "round trip to 16"}
    assert doc["checks"]["round trip to 16"]["figures"]["x"] == OVERFLOW
    # the figures are the ones the gate measures
    report = tmp_path / "gate.json"
    assert_exit(run("gate", config, "--json", str(report)), 0)
    measured = {c["name"]: c["figures"] for c in strict_json(report.read_text(encoding="utf-8"))["checks"]}
    assert {name: c["figures"] for name, c in doc["checks"].items()} == measured
    no_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline.json", "gate.json", "pass.toml"]


def test_baseline_save_replaces_a_file_atomically(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = tmp_path / "baseline.json"
    target.write_text("old\n" * 1000, encoding="utf-8")
    save_baseline(tmp_path, config)
    assert strict_json(target.read_text(encoding="utf-8"))["schema"] == "bce-audit-baseline/1"
    no_temp_files(tmp_path)


def test_baseline_save_into_missing_directory(tmp_path):
    target = tmp_path / "missing" / "baseline.json"
    r = run("baseline", "save", write(tmp_path, "pass.toml", PASSING), "-o", str(target))
    assert_usage_error(r, str(target))
    assert not target.parent.exists()


def test_baseline_save_config_error(tmp_path):
    path = write(tmp_path, "bad.toml", _check('formula = "keras3"\nmax_ulp = -1\n'))
    assert_usage_error(run("baseline", "save", path, "-o", str(tmp_path / "b.json")), path, "max_ulp")
    assert not (tmp_path / "b.json").exists()


def test_gate_passes_right_after_saving(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    before = target.read_bytes()
    report = tmp_path / "gate.json"
    r = run("gate", config, "--baseline", str(target), "--json", str(report))
    assert_exit(r, 0)
    assert summary(r.stdout) == "2 checks passed"
    doc = strict_json(report.read_text(encoding="utf-8"))
    assert doc["baseline"] == str(target)
    assert all(c["regressions"] == [] for c in doc["checks"])
    assert target.read_bytes() == before


@pytest.mark.parametrize(("figure", "better"), [
    pytest.param("max_ulp", lambda v: 0.0, id="max_ulp-zero"),
    pytest.param("max_rel", lambda v: v / 2, id="max_rel-halved"),
    pytest.param("max_abs", lambda v: v / 2, id="max_abs-halved"),
])
def test_grid_regression_is_detected(tmp_path, figure, better):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    name = "stable within 4 ULP"
    saved = json.loads(target.read_text(encoding="utf-8"))["checks"][name]["figures"][figure]
    assert saved > 0

    def improve(doc):
        doc["checks"][name]["figures"][figure] = better(saved)

    edit(target, improve)
    junit = tmp_path / "gate.xml"
    r = run("gate", config, "--baseline", str(target), "--junit", str(junit))
    assert_exit(r, 1)
    assert summary(r.stdout) == f"1 of 2 checks failed: {name}"
    assert status_of(r.stdout, (name, "round trip to 16")) == {name: "FAIL", "round trip to 16": "PASS"}
    text = " ".join(r.stdout.split())
    assert "baseline" in text and figure in text
    suite = ET.parse(junit).getroot().find("testsuite")
    assert int(suite.get("failures")) == 1
    failed = [c.get("name") for c in suite.findall("testcase") if c.find("failure") is not None]
    assert failed == [name]
    assert "baseline" in suite.find("testcase/failure").get("message")


def test_keypoint_regression_is_detected(tmp_path, monkeypatch):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    name = "round trip to 16"

    def later(doc):
        doc["checks"][name]["figures"]["x"] = OVERFLOW * 1.5  # the baseline overflowed later

    edit(target, later)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    report = tmp_path / "gate.json"
    r = run("gate", config, "--baseline", str(target), "--json", str(report))
    assert_exit(r, 1)
    assert summary(r.stdout) == f"1 of 2 checks failed: {name}"
    errors = [line for line in r.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "baseline" in errors[0]
    doc = strict_json(report.read_text(encoding="utf-8"))
    assert doc["passed"] is False
    record = next(c for c in doc["checks"] if c["name"] == name)
    assert record["failures"] == []  # its own limit still holds: only the baseline fails it
    assert len(record["regressions"]) == 1 and "baseline" in record["regressions"][0]


def test_tolerance_lets_a_small_worsening_pass(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    name = "stable within 4 ULP"

    def slightly_better(doc):
        fig = doc["checks"][name]["figures"]
        fig["max_rel"] = fig["max_rel"] / 1.3  # now 30% worse than the baseline

    edit(target, slightly_better)
    assert_exit(run("gate", config, "--baseline", str(target)), 1)  # default tolerance: 10%
    assert_exit(run("gate", config, "--baseline", str(target), "--tolerance", "0.5"), 0)
    assert_exit(run("gate", config, "--baseline", str(target), "--tolerance", "0.2"), 1)


def test_tolerance_saved_with_the_baseline(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config, "--tolerance", "0.5")
    assert json.loads(target.read_text(encoding="utf-8"))["tolerance"] == 0.5
    name = "stable within 4 ULP"

    def slightly_better(doc):
        fig = doc["checks"][name]["figures"]
        fig["max_rel"] = fig["max_rel"] / 1.3

    edit(target, slightly_better)
    assert_exit(run("gate", config, "--baseline", str(target)), 0)
    assert_exit(run("gate", config, "--baseline", str(target), "--tolerance", "0"), 1)


def test_changed_limits_keep_the_baseline(tmp_path):
    """A baseline is tied to what is measured, not to the limits."""
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    write(tmp_path, "pass.toml", PASSING.replace("max_ulp = 4", "max_ulp = 3"))
    assert_exit(run("gate", config, "--baseline", str(target)), 0)


def test_baseline_of_another_schema_is_refused(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)

    def other(doc):
        doc["schema"] = "bce-audit-baseline/0"

    edit(target, other)
    assert_usage_error(run("gate", config, "--baseline", str(target)), str(target), "schema",
                       "'bce-audit-baseline/0'")


def test_json_that_is_not_a_baseline_is_refused(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = tmp_path / "gate.json"
    assert_exit(run("gate", config, "--json", str(target)), 0)  # valid JSON, but a gate report
    assert_usage_error(run("gate", config, "--baseline", str(target)), str(target), "schema")
    listing = write(tmp_path, "list.json", "[1, 2]\n")
    assert_usage_error(run("gate", config, "--baseline", listing), listing, "schema")


def test_baseline_of_another_config_is_refused(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    other = write(tmp_path, "other.toml", PASSING.replace("points = 101", "points = 51"))
    assert_usage_error(run("gate", other, "--baseline", str(target)), str(target), "another config")


def test_corrupt_baseline_is_refused_and_left_alone(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    truncated = target.read_bytes()
    assert_usage_error(run("gate", config, "--baseline", str(target)), str(target), "invalid JSON")
    assert target.exists()
    assert target.read_bytes() == truncated
    no_temp_files(tmp_path)


def test_missing_baseline(tmp_path):
    config = write(tmp_path, "pass.toml", PASSING)
    path = str(tmp_path / "nowhere.json")
    assert_usage_error(run("gate", config, "--baseline", path), path, "baseline save")


@pytest.mark.parametrize("damage", [
    pytest.param(lambda doc: doc["checks"]["stable within 4 ULP"]["figures"].update(max_ulp="abc"),
                 id="figure-not-a-number"),
    pytest.param(lambda doc: doc["checks"].update({"stable within 4 ULP": 5}), id="entry-not-a-table"),
    pytest.param(lambda doc: doc["checks"]["stable within 4 ULP"].update(figures=[1]),
                 id="figures-not-a-table"),
    pytest.param(lambda doc: doc.update(tolerance="abc"), id="tolerance-not-a-number"),
])
def test_hand_damaged_baseline_is_refused(tmp_path, damage):
    config = write(tmp_path, "pass.toml", PASSING)
    target = save_baseline(tmp_path, config)
    edit(target, damage)
    assert_usage_error(run("gate", config, "--baseline", str(target)), str(target))


# ---------------------------------------------------------------- user implementations


GOOD_LOSS = '''\
import numpy as np


def bce(x, y):
    """The stable form, in the input's dtype (examples/good_loss.py)."""
    zero = np.zeros((), dtype=x.dtype)
    return np.maximum(x, zero) - x * y + np.log1p(np.exp(-np.abs(x)))
'''

POOR_LOSS = '''\
import numpy as np


def bce(x, y):
    """Through the probability, clipped to [1e-7, 1 - 1e-7]: floors near 1e-7."""
    eps = x.dtype.type(1e-7)
    one = x.dtype.type(1)
    p = one / (one + np.exp(-x))
    p = np.minimum(np.maximum(p, eps), one - eps)
    return -(y * np.log(p) + (one - y) * np.log(one - p))
'''

BROKEN = '''\
import numpy as np


def raises(x, y):
    raise ValueError("boom from the user")


def wrong_dtype(x, y):
    return (x * y).astype(np.float64)


def wrong_shape(x, y):
    return x[:1]


def not_an_array(x, y):
    return [0.0] * len(x)


not_callable = 3
'''


@pytest.fixture
def user_module(request, tmp_path, monkeypatch):
    """Write a module under a name unique to this test into tmp_path, which becomes the cwd."""
    made = []

    def make(source: str, tag: str = "") -> str:
        name = re.sub(r"\W", "_", f"bce_user_{request.node.name}_{tag}").strip("_")
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        made.append(name)
        return name

    monkeypatch.chdir(tmp_path)
    yield make
    for name in made:
        sys.modules.pop(name, None)


def grid_check(spec: str, name: str = "user within 4 ULP", limit: float = 4) -> str:
    return (f'dtype = "float32"\nrange = [-50.0, 50.0]\npoints = 201\nlabel = "both"\n'
            f'[[check]]\nname = "{name}"\nformula = "{spec}"\nmax_ulp = {limit}\n')


def test_good_user_implementation_passes(tmp_path, user_module):
    spec = f"impl:{user_module(GOOD_LOSS)}:bce"
    r = run("gate", write(tmp_path, "own.toml", grid_check(spec)))
    assert_exit(r, 0)
    assert re.fullmatch(r"1 checks? passed", summary(r.stdout))


def test_poor_user_implementation_fails(tmp_path, user_module):
    spec = f"impl:{user_module(POOR_LOSS)}:bce"
    # why it must fail: at x = 50 the clipped loss is ~1e-7, the exact one ~exp(-50)
    assert -math.log(float(np.float32(1) - np.float32(1e-7))) > 1e10 * math.exp(-50.0)
    r = run("gate", write(tmp_path, "own.toml", grid_check(spec)))
    assert_exit(r, 1)
    assert re.fullmatch(r"1 of 1 checks? failed: user within 4 ULP", summary(r.stdout))


def floor_checks(*named: tuple[str, str]) -> str:
    """A config of float32 label-1 `bce_floor` checks (max 1e-30), one per (name, formula)."""
    return "".join(f'[[check]]\nname = "{n}"\nformula = "{s}"\ndtype = "float32"\n'
                   f'keypoint = "bce_floor"\nlabel = 1\nmax_value = 1e-30\n' for n, s in named)


def test_user_keypoint_check(tmp_path, user_module):
    good = f"impl:{user_module(GOOD_LOSS, 'good')}:bce"
    poor = f"impl:{user_module(POOR_LOSS, 'poor')}:bce"
    text = floor_checks(("good floor", good), ("poor floor", poor))
    r = run("gate", write(tmp_path, "own.toml", text))
    assert_exit(r, 1)
    assert summary(r.stdout) == "1 of 2 checks failed: poor floor"


def test_issue_12_a_keypoint_check_whose_function_raises_errors(tmp_path, user_module):
    good = f"impl:{user_module(GOOD_LOSS, 'good')}:bce"
    broken = f"impl:{user_module(BROKEN, 'broken')}:raises"
    text = floor_checks(("broken floor", broken), ("good floor", good))
    r = run("gate", write(tmp_path, "own.toml", text))
    assert_exit(r, 1)
    assert summary(r.stdout) == "1 of 2 checks errored: broken floor"
    assert status_of(r.stdout, ("broken floor", "good floor")) == {"broken floor": "ERROR",
                                                                   "good floor": "PASS"}


BROKEN_CASES = [
    pytest.param("raises", ("raised ValueError", "boom from the user"), id="raises"),
    pytest.param("wrong_dtype", ("float64", "float32"), id="wrong-dtype"),
    pytest.param("wrong_shape", ("shape",), id="wrong-shape"),
    pytest.param("not_an_array", ("list", "numpy array"), id="not-an-array"),
    pytest.param("not_callable", ("not a function",), id="not-callable"),
    pytest.param("missing", ("no attribute 'missing'",), id="missing-function"),
]


def gate_with_errored(spec: str) -> str:
    """A passing check, the check of ``spec`` (which must error), and a failing check after it."""
    return (f'dtype = "float32"\nrange = [-50.0, 50.0]\npoints = 201\n'
            f'[[check]]\nname = "stable first"\nformula = "logits-stable"\nmax_ulp = 4\n'
            f'[[check]]\nname = "mine"\nformula = "{spec}"\nmax_ulp = 4\n'
            f'[[check]]\nname = "keras3 after"\nformula = "keras3"\nrange = [0.0, 40.0]\nmax_ulp = 1\n')


def assert_errored(tmp_path: Path, spec: str, *needles: str) -> ET.Element:
    """Issue 12: the check of ``spec`` is an errored testcase and the others still run: exit 1, the
    table, JUnit (exactly one <error>, not a <failure>), JSON and markdown say ERROR with its message."""
    config = write(tmp_path, "own.toml", gate_with_errored(spec))
    junit, doc, md = tmp_path / "gate.xml", tmp_path / "gate.json", tmp_path / "gate.md"
    r = run("gate", config, "--junit", str(junit), "--json", str(doc), "--markdown", str(md))
    assert_exit(r, 1)
    assert status_of(r.stdout, ("stable first", "mine", "keras3 after")) == {
        "stable first": "PASS", "mine": "ERROR", "keras3 after": "FAIL"}
    assert summary(r.stdout) == "1 of 3 checks failed: keras3 after; 1 of 3 checks errored: mine"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    errors = suite.findall("testcase/error")
    assert len(errors) == 1
    case = suite.find("testcase[error]")
    assert case.get("name") == "mine" and case.find("failure") is None
    message = errors[0].get("message")
    for needle in (spec, *needles):
        assert needle in message, (needle, message)
    assert "\n" not in message
    checks = {c["name"]: c for c in strict_json(doc.read_text(encoding="utf-8"))["checks"]}
    assert {n: c["status"] for n, c in checks.items()} == {
        "stable first": "PASS", "mine": "ERROR", "keras3 after": "FAIL"}
    assert checks["mine"]["error"] == message and checks["mine"]["passed"] is False
    assert checks["stable first"]["error"] == ""
    text = md.read_text(encoding="utf-8")
    assert "| **ERROR** | mine |" in text and "1 of 3 checks errored: mine" in text
    return errors[0]


@pytest.mark.parametrize(("func", "needles"), BROKEN_CASES)
def test_issue_12_broken_user_implementation_is_an_errored_check(tmp_path, user_module, func, needles):
    assert_errored(tmp_path, f"impl:{user_module(BROKEN)}:{func}", *needles)


@pytest.mark.parametrize(("func", "needles"), BROKEN_CASES)
def test_broken_user_implementation_in_sweep(user_module, func, needles):
    spec = f"impl:{user_module(BROKEN)}:{func}"
    r = run("sweep", "--formula", spec, "--dtype", "float32", "--range", "-5:5", "--points", "3")
    assert_usage_error(r, spec, *needles)


@pytest.mark.parametrize(("source", "needles"), [
    pytest.param('raise RuntimeError("kaput at import")\n', ("cannot import", "RuntimeError", "kaput"),
                 id="raises-at-import"),
    pytest.param("def bce(x, y)\n    return x\n", ("cannot import", "SyntaxError"), id="syntax-error"),
])
def test_user_module_that_fails_to_import(tmp_path, user_module, source, needles):
    spec = f"impl:{user_module(source)}:bce"
    assert_errored(tmp_path, spec, *needles)
    assert_usage_error(run("points", "--formula", spec), spec, *needles)


def test_user_module_that_does_not_exist(tmp_path, user_module):
    """Issue 12: the import error names the directories searched (the config's, the cwd)."""
    spec = "impl:bce_user_no_such_module_anywhere:bce"
    assert_errored(tmp_path, spec, "cannot import", "No module named", f"searched {tmp_path}")


def test_issue_12_a_config_error_runs_no_user_code(tmp_path, user_module):
    """A config error anywhere is exit 2 before any check runs or any impl: module is imported."""
    marker = tmp_path / "imported"
    source = f"open({str(marker)!r}, 'w').close()\n" + GOOD_LOSS
    spec = f"impl:{user_module(source)}:bce"
    a = write(tmp_path, "a.toml", grid_check(spec))
    b = write(tmp_path, "b.toml", _check('formula = "keras3"\nmax_ulps = 1\n'))
    junit = tmp_path / "gate.xml"
    assert_usage_error(run("gate", a, b, "--junit", str(junit)), "b.toml", "max_ulps", "max_ulp")
    assert not junit.exists() and not marker.exists()
    assert_exit(run("gate", a), 0)
    assert marker.exists()  # the same module, imported when its check runs


def test_issue_12_pythonpath_from_another_directory(tmp_path, monkeypatch, request):
    """pythonpath in a gate config is relative to the config's directory, whatever the cwd; the
    config's own directory is searched too, and --pythonpath (relative to the cwd) adds one."""
    name = re.sub(r"\W", "_", f"bce_user_{request.node.name}")
    project, other, ci = tmp_path / "project", tmp_path / "other", tmp_path / "ci"
    for d in (project / "src", other, ci):
        d.mkdir(parents=True)
    (project / "src" / f"{name}_src.py").write_text(GOOD_LOSS, encoding="utf-8")
    (project / f"{name}_beside.py").write_text(GOOD_LOSS, encoding="utf-8")
    (other / f"{name}_flag.py").write_text(GOOD_LOSS, encoding="utf-8")
    monkeypatch.chdir(ci)
    check = '[[check]]\nname = "{}"\nformula = "impl:{}:bce"\ndtype = "float32"\nmax_ulp = 4\n'
    try:
        text = ('pythonpath = ["src"]\n' + check.format("from src", f"{name}_src")
                + check.format("beside", f"{name}_beside"))
        config = write(project, "gate.toml", text)
        assert_exit(run("gate", config), 0)
        flagged = write(project, "flag.toml", check.format("by flag", f"{name}_flag"))
        r = run("gate", flagged)
        assert_exit(r, 1)
        assert status_of(r.stdout, ("by flag",)) == {"by flag": "ERROR"}
        assert_exit(run("gate", flagged, "--pythonpath", "../other"), 0)
    finally:
        for suffix in ("src", "beside", "flag"):
            sys.modules.pop(f"{name}_{suffix}", None)


def test_issue_12_two_modules_of_one_name_are_never_mixed_up(tmp_path, monkeypatch, request):
    """Two configs, each beside a module of the same name: the second is an errored check, never
    a second audit of the first's module."""
    name = re.sub(r"\W", "_", f"bce_user_{request.node.name}")
    monkeypatch.chdir(tmp_path)
    configs = []
    for sub, source in (("a", GOOD_LOSS), ("b", POOR_LOSS)):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / f"{name}.py").write_text(source, encoding="utf-8")
        configs.append(write(tmp_path / sub, "gate.toml", grid_check(f"impl:{name}:bce", f"from {sub}")))
    try:
        out = tmp_path / "gate.json"
        assert_exit(run("gate", *configs, "--json", str(out)), 1)
        a, b = strict_json(out.read_text(encoding="utf-8"))["checks"]
        assert (a["status"], b["status"]) == ("PASS", "ERROR")
        assert f"imported from {tmp_path / 'a'} already" in b["error"] and "rename one" in b["error"]
    finally:
        sys.modules.pop(name, None)


def test_issue_12_import_error_names_the_searched_directories(tmp_path, monkeypatch):
    (tmp_path / "src").mkdir()
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    spec = "impl:bce_user_nowhere_to_be_found:bce"
    config = write(tmp_path, "gate.toml", 'pythonpath = ["src"]\n' + grid_check(spec))
    json_out = tmp_path / "gate.json"
    assert_exit(run("gate", config, "--json", str(json_out)), 1)
    error = strict_json(json_out.read_text(encoding="utf-8"))["checks"][0]["error"]
    assert f"searched {tmp_path / 'src'}, {tmp_path}, {tmp_path / 'run'}, then" in error, error


@pytest.mark.parametrize(("text", "args", "needles"), [
    ('pythonpath = ["no-such-dir"]\n', (), ("gate.toml: pythonpath", "'no-such-dir'", "no such directory")),
    ("pythonpath = 3\n", (), ("gate.toml: pythonpath", "list of strings")),
    ("", ("--pythonpath", "no-such-dir"), ("--pythonpath", "'no-such-dir'", "no such directory")),
])
def test_issue_12_bad_pythonpath_is_a_config_error(tmp_path, text, args, needles):
    config = write(tmp_path, "gate.toml", text + grid_check("logits-stable"))
    assert_usage_error(run("gate", config, *args), *needles)


def test_issue_12_baseline_save_refuses_an_errored_check(tmp_path, user_module):
    spec = f"impl:{user_module(BROKEN)}:raises"
    out = tmp_path / "base.json"
    r = run("baseline", "save", write(tmp_path, "own.toml", gate_with_errored(spec)), "-o", str(out))
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert not out.exists()
    assert "check 'mine'" in r.stderr and "boom from the user" in r.stderr and "not saved" in r.stderr
    assert "Traceback" not in r.output


@pytest.mark.parametrize("spec", ["impl:", "impl:mod", "impl::f", "impl:mod:"])
def test_malformed_impl_spec(spec):
    assert_usage_error(run("points", "--formula", spec), repr(spec), "impl:package.module:function")


SIGMOID = '''\
import numpy as np


def sig(x):
    """The naive sigmoid, every op in the input's dtype."""
    one = x.dtype.type(1)
    return one / (one + np.exp(-x))
'''


def test_user_sigmoid_round_trip_points(user_module):
    spec = f"impl:{user_module(SIGMOID)}:sig"
    r = run("points", "--formula", spec, "--impl-kind", "sigmoid", "--dtype", "float32", "--format", "json")
    assert_exit(r, 0)
    doc = strict_json(r.stdout)
    assert doc["settings"]["formulas"] == [spec]
    mine = {(k["name"], k["threshold"]): k for k in doc["keypoints"] if k["formula"] == spec}
    assert {name for name, _ in mine} == {"roundtrip_overflow", "roundtrip_underflow",
                                          "roundtrip_rel_err_onset", "roundtrip_small_x_limit"}
    assert {k["dtype"] for k in mine.values()} == {"float32"}
    overflow = mine[("roundtrip_overflow", None)]
    assert overflow["x"] == OVERFLOW
    assert overflow["value"] == "inf"
    # the same sigmoid as the built-in one: the same overflow and underflow
    builtin = {(k["name"], k["threshold"]): k for k in doc["keypoints"] if k["formula"] is None}
    for key in (("roundtrip_overflow", None), ("roundtrip_underflow", None)):
        assert mine[key]["x"] == builtin[key]["x"], key


def test_user_sigmoid_in_a_gate_keypoint_check(tmp_path, user_module):
    spec = f"impl:{user_module(SIGMOID)}:sig"
    text = 'kind = "sigmoid"\ndtype = "float32"\n' + "".join(
        f'[[check]]\nname = "own sigmoid to {x}"\nformula = "{spec}"\n'
        f'keypoint = "roundtrip_overflow"\nmin_x = {x}\n' for x in (16, 20))
    r = run("gate", write(tmp_path, "own.toml", text))
    assert_exit(r, 1)
    assert summary(r.stdout) == "1 of 2 checks failed: own sigmoid to 20"


@pytest.mark.parametrize("who", [
    "builtin",
    "user",
])
def test_round_trip_onset_is_the_first_bad_x(user_module, who):
    """No float32 x in the half unit below the reported onset is already that far off (numpy only)."""
    spec = f"impl:{user_module(SIGMOID)}:sig"
    doc = strict_json(run("points", "--formula", spec, "--impl-kind", "sigmoid", "--dtype", "float32",
                          "--format", "json").stdout)
    formula = spec if who == "user" else None
    onsets = [k for k in doc["keypoints"]
              if k["formula"] == formula and k["name"] == "roundtrip_rel_err_onset"]
    assert {k["threshold"] for k in onsets} == {1e-3, 1e-2}
    for k in onsets:
        x = float32_between(k["x"] - 0.5, k["x"])[:-1]
        rel = np.abs(float32_roundtrip(x).astype(np.float64) - x) / x
        early = x[rel >= k["threshold"] * (1 + 1e-9)]
        assert early.size == 0, (k["threshold"], k["x"], float(early[0]))


def test_shipped_example_gate_own_loss(monkeypatch, tmp_path):
    """From the repo root: the good example passes, both checks of the poor one fail."""
    monkeypatch.chdir(ROOT)
    config = "examples/gate-own-loss.toml"
    names = [c["name"] for c in tomllib.loads((ROOT / config).read_text(encoding="utf-8"))["check"]]
    good = [n for n in names if n.startswith("good")]
    poor = [n for n in names if n.startswith("poor")]
    assert len(good) == 1 and len(poor) == 2
    report = tmp_path / "gate.json"
    r = run("gate", config, "--json", str(report))
    assert_exit(r, 1)
    assert summary(r.stdout) == f"2 of 3 checks failed: {', '.join(poor)}"
    doc = strict_json(report.read_text(encoding="utf-8"))
    assert {c["name"]: c["passed"] for c in doc["checks"]} == {good[0]: True, poor[0]: False, poor[1]: False}
    text = " ".join(r.stdout.split())
    assert "PASS good" in text


@pytest.mark.parametrize(("config", "golden"), [("configs/gate-example.toml", "gate-example.json"),
                                                ("examples/gate-own-loss.toml", "gate-own-loss.json")])
def test_issue_10_grid_checks_through_the_engine_keep_their_verdicts(monkeypatch, tmp_path, config, golden):
    """The shipped presets give the verdicts, figures and worst inputs the gate gave when it built a
    Row per grid point (the goldens are that gate's --json, taken at 686e2b4 before the change)."""
    monkeypatch.chdir(ROOT)
    report = tmp_path / "gate.json"
    r = run("gate", config, "--json", str(report))
    want = json.loads((ROOT / "tests" / "golden" / golden).read_text(encoding="utf-8"))
    assert r.exit_code == (0 if want["passed"] else 1), r.stderr
    assert strict_json(report.read_text(encoding="utf-8")) == want
