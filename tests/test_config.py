"""Config files: every sweep/points option from TOML (`--config FILE`), flags override, errors name the file.

Each test writes its own small config into tmp_path; the shipped presets in configs/ run as they are
and their JSON settings are compared with what tomllib reads from the same file.

Tests marked xfail(strict=True) pin known bugs: each states the correct behaviour, so the marker must
go when the bug is fixed.
"""

from __future__ import annotations

import csv
import io
import re
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json

from bce_audit import formulas
from bce_audit.records import Row, Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
SWEEP_PRESETS = ("default.toml", "keras.toml", "pytorch.toml", "mixed-precision.toml", "seed-article.toml")
GATE_PRESETS = ("gate-example.toml",)

# ---------------------------------------------------------------- helpers








def config(tmp_path: Path, text: str, name: str = "audit.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def points_json(*args: str) -> dict:
    return strict_json(ok("points", *args, "--format", "json"))


def sweep_json(*args: str) -> dict:
    return strict_json(ok("sweep", *args, "--format", "json"))


def sigmoid_xs(doc: dict) -> list[float]:
    return [r["x"] for r in doc["rows"] if r["quantity"] == "sigmoid" and r["formula"] is None]


def sampled_rows(out: str) -> int:
    """Data rows of the 'Sampled: sigmoid and round trip' table of a sweep table view."""
    table = out.split("Sampled: sigmoid and round trip")[1].split("Sampled: BCE")[0]
    lines = [line.rstrip() for line in table.splitlines()]
    rule = next(i for i, line in enumerate(lines) if "─" in line)
    body = []
    for line in lines[rule + 1:]:
        if not line.strip():
            break
        body.append(line)
    return len(body)


# Fast formulas (no bce_zero key point) for the override tests.
FAST = 'formulas = ["keras3"]\n'


# ---------------------------------------------------------------- config values reach the output


def test_dtypes_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, 'dtypes = ["float16"]\n' + FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["dtypes"] == ["float16"]
    assert doc["keypoints"]
    assert {k["dtype"] for k in doc["keypoints"]} == {"float16"}
    doc = points_json("--config", path, "--dtype", "float32")
    assert doc["settings"]["dtypes"] == ["float32"]
    assert {k["dtype"] for k in doc["keypoints"]} == {"float32"}


def test_singular_alias_from_config(tmp_path):
    path = config(tmp_path, 'dtype = "bfloat16"\nformula = "keras3"\nthreshold = 0.05\n')
    doc = points_json("--config", path)
    assert doc["settings"]["dtypes"] == ["bfloat16"]
    assert doc["settings"]["formulas"] == ["keras3"]
    assert doc["settings"]["thresholds"] == [0.05]


def test_eps_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, 'eps = [1e-4]\n' + FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["eps"] == [1e-4]
    assert {k["eps"] for k in doc["keypoints"] if k["formula"]} == {1e-4}
    doc = points_json("--config", path, "--eps", "1e-3")
    assert doc["settings"]["eps"] == [1e-3]
    assert {k["eps"] for k in doc["keypoints"] if k["formula"]} == {1e-3}


def test_formulas_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["formulas"] == ["keras3"]
    assert {k["formula"] for k in doc["keypoints"]} == {"keras3", None}
    doc = points_json("--config", path, "--formula", "tf-keras")
    assert doc["settings"]["formulas"] == ["tf-keras"]
    assert {k["formula"] for k in doc["keypoints"]} == {"tf-keras", None}


def test_mode_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, 'dtypes = ["float16"]\nmode = "upcast"\n' + FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["mode"] == "upcast"
    assert {k["mode"] for k in doc["keypoints"]} == {"upcast"}
    # the flag wins even when it names the default
    doc = points_json("--config", path, "--mode", "per-op")
    assert doc["settings"]["mode"] == "per-op"
    assert {k["mode"] for k in doc["keypoints"]} == {"per-op"}


@pytest.mark.parametrize("label", ['"1"', "1"], ids=["string", "integer"])
def test_label_from_config_and_flag_override(tmp_path, label):
    path = config(tmp_path, f"label = {label}\n" + FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["label"] == "1"
    assert {k["label"] for k in doc["keypoints"] if k["formula"]} == {1}
    doc = points_json("--config", path, "--label", "0")
    assert doc["settings"]["label"] == "0"
    assert {k["label"] for k in doc["keypoints"] if k["formula"]} == {0}


def test_thresholds_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, "thresholds = [0.05]\n" + FAST)
    doc = points_json("--config", path)
    assert doc["settings"]["thresholds"] == [0.05]
    assert {k["threshold"] for k in doc["keypoints"] if k["threshold"] is not None} == {0.05}
    doc = points_json("--config", path, "--threshold", "0.2")
    assert doc["settings"]["thresholds"] == [0.2]
    assert {k["threshold"] for k in doc["keypoints"] if k["threshold"] is not None} == {0.2}


def test_range_and_points_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, "range = [-10.0, 10.0]\npoints = 5\nspacing = \"lin\"\n" + FAST)
    doc = sweep_json("--config", path)
    assert doc["settings"]["range"] == [-10.0, 10.0]
    assert doc["settings"]["points"] == 5
    assert sigmoid_xs(doc) == np.linspace(-10.0, 10.0, 5).tolist()
    doc = sweep_json("--config", path, "--range", "-4:4", "--points", "3")
    assert doc["settings"]["range"] == [-4.0, 4.0]
    assert doc["settings"]["points"] == 3
    assert sigmoid_xs(doc) == [-4.0, 0.0, 4.0]
    # only --points given: the range still comes from the file
    doc = sweep_json("--config", path, "--points", "3")
    assert sigmoid_xs(doc) == [-10.0, 0.0, 10.0]


def test_range_as_string_and_step_from_config(tmp_path):
    doc = sweep_json("--config", config(tmp_path, 'range = "-20:20"\nstep = 10.0\n' + FAST))
    assert doc["settings"]["range"] == [-20.0, 20.0]
    assert doc["settings"]["step"] == 10.0
    assert sigmoid_xs(doc) == [-20.0, -10.0, 0.0, 10.0, 20.0]


def test_log_spacing_from_config(tmp_path):
    path = config(tmp_path, 'range = [1.0, 100.0]\npoints = 3\nspacing = "log"\n' + FAST)
    doc = sweep_json("--config", path)
    assert doc["settings"]["spacing"] == "log"
    assert sigmoid_xs(doc) == pytest.approx([1.0, 10.0, 100.0])


def test_step_flag_overrides_points_from_config(tmp_path):
    path = config(tmp_path, "range = [-20.0, 20.0]\npoints = 161\n" + FAST)
    doc = sweep_json("--config", path, "--step", "10")
    assert sigmoid_xs(doc) == [-20.0, -10.0, 0.0, 10.0, 20.0]


def test_format_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, 'format = "json"\nrange = [-20.0, 20.0]\npoints = 3\n' + FAST)
    doc = strict_json(ok("sweep", "--config", path))
    assert doc["settings"]["points"] == 3
    assert "keypoints" in strict_json(ok("points", "--config", path))
    rows = list(csv.reader(io.StringIO(ok("sweep", "--config", path, "--format", "csv"))))
    assert rows[0] == [f.name for f in fields(Row)]
    assert ok("sweep", "--config", path, "--format", "markdown").startswith("## bce-audit ")


def test_rows_from_config_and_flag_override(tmp_path):
    path = config(tmp_path, 'range = [-20.0, 20.0]\npoints = 9\nlabel = "1"\nrows = 3\n' + FAST)
    assert sampled_rows(ok("sweep", "--config", path, "--detail")) == 3
    assert sampled_rows(ok("sweep", "--config", path, "--rows", "5", "-v")) == 5


def test_options_not_in_the_file_keep_their_defaults(tmp_path):
    doc = points_json("--config", config(tmp_path, FAST))
    assert doc["settings"]["dtypes"] == ["float32"]
    assert doc["settings"]["eps"] == [1e-7]
    assert doc["settings"]["mode"] == "native"
    assert doc["settings"]["label"] == "both"
    assert doc["settings"]["thresholds"] == [1e-3, 1e-2]


def test_flag_errors_still_name_the_flag(tmp_path):
    """A bad flag beside a good config names the flag, not the file."""
    path = config(tmp_path, "eps = [1e-4]\n" + FAST)
    line = assert_usage_error(run("points", "--config", path, "--eps", "0.7"), "--eps", "[0, 0.5)")
    assert path not in line


def test_impl_kind_from_config_and_flag_override(tmp_path, monkeypatch):
    """`kind` in the file says what an impl: formula computes; --impl-kind overrides it."""
    module = "cfg_kind_sigmoid"
    (tmp_path / f"{module}.py").write_text(
        "import numpy as np\n\n\ndef sig(x):\n"
        "    one = x.dtype.type(1)\n    return one / (one + np.exp(-x))\n",
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delitem(sys.modules, module, raising=False)
    spec = f"impl:{module}:sig"
    path = config(tmp_path, f'formulas = ["{spec}"]\nkind = "sigmoid"\ndtypes = ["float16"]\n')
    doc = points_json("--config", path)
    assert doc["settings"]["formulas"] == [spec]
    assert any(k["formula"] == spec and k["name"] == "roundtrip_overflow" for k in doc["keypoints"])
    # as a BCE f(x, y) the one-argument sigmoid cannot be called: the flag really took over
    assert_usage_error(run("points", "--config", path, "--impl-kind", "bce-logits"), spec, "TypeError")


# ---------------------------------------------------------------- config errors


def _bad(tmp_path, text: str) -> str:
    return config(tmp_path, text, "bad.toml")


CONFIG_ERRORS = [
    # unknown keys suggest the nearest valid one
    pytest.param('dtpyes = ["float16"]\n', ("bad.toml", "'dtpyes'", "did you mean 'dtypes'", "allowed"),
                 id="typo-dtypes"),
    pytest.param("epss = [1e-7]\n", ("bad.toml", "'epss'", "did you mean 'eps'"), id="typo-eps"),
    pytest.param("zzz = 1\n", ("bad.toml", "unknown key 'zzz'", "allowed: dtypes"), id="unknown-key"),
    # wrong types
    pytest.param('points = "many"\n', ("bad.toml: points", "integer", "'many'"), id="points-string"),
    pytest.param("points = 5.5\n", ("bad.toml: points", "integer", "5.5"), id="points-float"),
    pytest.param("points = true\n", ("bad.toml: points", "integer"), id="points-bool"),
    pytest.param('eps = "small"\n', ("bad.toml: eps", "number", "'small'"), id="eps-string"),
    pytest.param("dtypes = 3\n", ("bad.toml: dtypes", "string", "3"), id="dtypes-number"),
    pytest.param("dtypes = []\n", ("bad.toml: dtypes", "string"), id="dtypes-empty"),
    pytest.param('range = "wide"\n', ("bad.toml: range", "'wide'", "LO:HI"), id="range-string"),
    pytest.param("range = [1.0]\n", ("bad.toml: range", "[LO, HI]"), id="range-one"),
    pytest.param("thresholds = [true]\n", ("bad.toml: thresholds", "number"), id="thresholds-bool"),
    pytest.param("rows = 2.5\n", ("bad.toml: rows", "integer"), id="rows-float"),
    pytest.param("mode = 1\n", ("bad.toml: mode", "string"), id="mode-number"),
    # bad values: what is allowed
    pytest.param("eps = 0.7\n", ("bad.toml: eps", "0.7", "[0, 0.5)"), id="eps-big"),
    pytest.param("eps = [1e-7, -1e-7]\n", ("bad.toml: eps", "-1e-07", "[0, 0.5)"), id="eps-negative"),
    pytest.param("eps = nan\n", ("bad.toml: eps", "[0, 0.5)"), id="eps-nan"),
    pytest.param('mode = "fast"\n', ("bad.toml: mode", "'fast'", "per-op", "upcast"), id="mode"),
    pytest.param("label = 2\n", ("bad.toml: label", "'2'", "both"), id="label-2"),
    pytest.param('label = "pair"\n', ("bad.toml: label", "'pair'", "both"), id="label-pair"),
    pytest.param("range = [5, 1]\n", ("bad.toml: range", "LO must be less than HI"), id="range-reversed"),
    pytest.param('range = "5:1"\n', ("bad.toml: range", "LO must be less than HI"), id="range-str-reversed"),
    pytest.param("range = [-inf, 1.0]\n", ("bad.toml: range", "finite"), id="range-inf"),
    pytest.param('formulas = ["nope"]\n', ("bad.toml: formulas", "'nope'", "keras3", "logits-stable"),
                 id="formula"),
    pytest.param('dtypes = ["float99"]\n', ("bad.toml: dtypes", "'float99'", "float16", "float32"),
                 id="dtype"),
    pytest.param("thresholds = [1.5]\n", ("bad.toml: thresholds", "1.5", "(0, 1)"), id="threshold"),
    pytest.param("points = 1\n", ("bad.toml: points", "2 to"), id="points-1"),
    pytest.param("step = -1.0\n", ("bad.toml: step", "positive"), id="step-negative"),
    pytest.param('spacing = "exp"\n', ("bad.toml: spacing", "'exp'", "lin", "log"), id="spacing"),
    pytest.param('format = "xml"\n', ("bad.toml: format", "'xml'", "json", "csv"), id="format"),
    pytest.param("rows = 1\n", ("bad.toml: rows", "2 to 1000"), id="rows"),
    pytest.param('kind = "softmax"\n', ("bad.toml: kind", "'softmax'", "bce-logits", "sigmoid"), id="kind"),
    # conflicting keys
    pytest.param("points = 5\nstep = 1.0\n", ("bad.toml: points", "bad.toml: step", "not both"),
                 id="points-and-step"),
    pytest.param('dtype = "float16"\ndtypes = ["float32"]\n', ("bad.toml", "'dtypes'", "twice"),
                 id="alias-twice"),
]


@pytest.mark.parametrize(("text", "needles"), CONFIG_ERRORS)
def test_config_error_is_one_line_naming_file_and_key(tmp_path, text, needles):
    path = _bad(tmp_path, text)
    assert_usage_error(run("sweep", "--config", path), path, *needles)


@pytest.mark.parametrize(("text", "needles"), [
    pytest.param('dtpyes = ["float16"]\n', ("did you mean 'dtypes'",), id="typo"),
    pytest.param("eps = 0.7\n", ("bad.toml: eps", "[0, 0.5)"), id="eps"),
    pytest.param('formulas = ["nope"]\n', ("bad.toml: formulas", "'nope'"), id="formula"),
])
def test_points_config_errors(tmp_path, text, needles):
    path = _bad(tmp_path, text)
    assert_usage_error(run("points", "--config", path), path, *needles)


@pytest.mark.parametrize("text", [
    'dtypes = ["float16",, "float32"]\n',   # bad array
    'dtypes = ["float16"]\neps = \n',         # missing value
    'mode = "per-op"\nmode = "upcast"\n',    # duplicate key
    "[[check]\nname = 1\n",                   # broken table header
])
def test_malformed_toml_names_file_and_line(tmp_path, text):
    path = _bad(tmp_path, text)
    line = assert_usage_error(run("sweep", "--config", path), path, "line")
    # the line number is the one tomllib reports for this text
    with pytest.raises(tomllib.TOMLDecodeError) as e:
        tomllib.loads(text)
    lineno = re.search(r"line (\d+)", str(e.value)).group(1)
    assert f"line {lineno}" in line


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nowhere.toml")
    assert_usage_error(run("sweep", "--config", path), path, "no such config file")


def test_directory_as_config(tmp_path):
    assert_usage_error(run("points", "--config", str(tmp_path)), str(tmp_path), "directory")


def test_config_error_writes_no_output_file(tmp_path):
    path = _bad(tmp_path, "eps = 0.7\n")
    target = tmp_path / "out.json"
    assert_usage_error(run("sweep", "--config", path, "--format", "json", "-o", str(target)), "eps")
    assert not target.exists()


# ---------------------------------------------------------------- the shipped presets


def test_presets_are_all_covered():
    assert {p.name for p in CONFIGS.glob("*.toml")} == {*SWEEP_PRESETS, *GATE_PRESETS}


def _expected_settings(toml: dict) -> dict:
    """What `sweep --format json` should report in settings for a preset, read from the TOML itself."""
    out: dict = {}
    for key, value in toml.items():
        key = {"dtype": "dtypes", "formula": "formulas", "threshold": "thresholds"}.get(key, key)
        if key in ("rows", "format", "kind"):
            continue  # presentation, not settings
        if key in ("dtypes", "formulas", "eps", "thresholds") and not isinstance(value, list):
            value = [value]
        if key == "formulas" and "all" in value:
            value = list(formulas.NAMES)
        if key in ("eps", "thresholds", "range"):
            value = [float(v) for v in value]
        out[key] = value
    return out


@pytest.mark.parametrize("name", SWEEP_PRESETS)
def test_sweep_preset(name):
    path = CONFIGS / name
    toml = tomllib.loads(path.read_text(encoding="utf-8"))
    r = run("sweep", "--config", str(path), "--format", "json")
    assert r.exit_code == 0, (r.exit_code, r.stderr, r.exception)
    assert r.stderr == ""
    doc = strict_json(r.stdout)
    expected = _expected_settings(toml)
    assert expected, "the preset sets nothing"
    assert {k: doc["settings"][k] for k in expected} == expected
    dts = set(doc["settings"]["dtypes"])
    assert {k["dtype"] for k in doc["keypoints"]} == dts
    assert {r["dtype"] for r in doc["rows"]} == dts
    assert {r["mode"] for r in doc["rows"]} == {doc["settings"]["mode"]}
    xs = sigmoid_xs(doc)
    assert len(xs) == min(11, doc["settings"]["points"]) * len(dts)  # --rows 11 by default, ends included
    assert min(xs) == doc["settings"]["range"][0] and max(xs) == doc["settings"]["range"][1]


def _first_float32_overflow(lo: float, hi: float) -> float:
    """The smallest float32 x in [lo, hi] where logit(sigmoid(x)) is not finite, with numpy alone."""
    a = np.arange(np.float32(lo).view(np.int32), np.float32(hi).view(np.int32) + 1, dtype=np.int32)
    x = a.view(np.float32)
    one = np.float32(1)
    with np.errstate(all="ignore"):
        p = one / (one + np.exp(-x))
        rt = np.log(p / (one - p))
    bad = ~np.isfinite(rt)
    assert bad.any() and not bad[0]
    return float(x[np.argmax(bad)])


def test_seed_article_preset_reproduces_the_article():
    doc = sweep_json("--config", str(CONFIGS / "seed-article.toml"))
    kps = doc["keypoints"]
    overflow = [k for k in kps if k["name"] == "roundtrip_overflow" and k["dtype"] == "float32"
                and k["formula"] is None]
    assert len(overflow) == 1
    assert overflow[0]["value"] == "inf"
    assert overflow[0]["x"] == pytest.approx(16.6, abs=0.05)
    assert overflow[0]["x"] == _first_float32_overflow(16.0, 17.0)
    floor = [k for k in kps if k["name"] == "bce_floor" and k["formula"] == "keras2-logits"
             and k["label"] == "pair"]
    assert len(floor) == 1
    assert floor[0]["eps"] == 1e-7
    assert floor[0]["value"] == pytest.approx(1.09e-7, rel=0.01)
    # the floor is a value the loss takes on the grid too: the pair rows level off there
    pair = [r for r in doc["rows"] if r["formula"] == "keras2-logits" and r["label"] == "pair"]
    assert min(r["value"] for r in pair) == pytest.approx(floor[0]["value"], rel=1e-6)


def test_gate_example_preset_passes(tmp_path):
    path = CONFIGS / "gate-example.toml"
    names = [c["name"] for c in tomllib.loads(path.read_text(encoding="utf-8"))["check"]]
    out = tmp_path / "gate.json"
    r = run("gate", str(path), "--json", str(out))
    assert r.exit_code == 0, (r.exit_code, r.stdout, r.stderr, r.exception)
    assert r.stderr == ""
    assert f"{len(names)} checks passed" in r.stdout
    assert "FAIL" not in r.stdout
    doc = strict_json(out.read_text(encoding="utf-8"))
    assert doc["passed"] is True
    assert [c["name"] for c in doc["checks"]] == names
    assert all(c["passed"] and not c["failures"] for c in doc["checks"])


def test_make_run_uses_the_default_config():
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = text.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    commands = [line.strip() for line in recipe.splitlines()[1:] if line.startswith("\t")]
    assert any("bce-audit sweep" in c and "--config configs/default.toml" in c for c in commands), commands
    assert (ROOT / "configs" / "default.toml").is_file()


def test_default_config_matches_the_built_in_defaults():
    """configs/default.toml is "the shipped defaults": the same settings as a bare `sweep`."""
    toml = tomllib.loads((CONFIGS / "default.toml").read_text(encoding="utf-8"))
    expected = _expected_settings(toml)
    defaults = Settings().as_dict()
    assert {k: defaults[k] for k in expected} == expected
