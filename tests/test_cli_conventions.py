"""CLI conventions (issue 12): bare groups print their help, dtype aliases, "did you mean" for every
choice, NO_COLOR and --color, --version, and --format inferred from the -o extension."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from cli_support import assert_usage_error, ok, run, strict_json
from rich.text import Text

from bce_audit import __version__, compiled, config, dtypes, gate, report
from bce_audit.cli import _Choice, cli

ROOT = Path(__file__).resolve().parent.parent
ESC = "\x1b["
FAST_POINTS = ("--dtype", "float16", "--formula", "keras3", "--label", "1", "--eps", "1e-7")


def _python_m(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "100", "NO_COLOR": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bce_audit", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _params(group: click.Group = cli, path: str = ""):
    """(command path, parameter) for every parameter of every command, subgroups included."""
    for p in group.params:
        yield path or "bce-audit", p
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _params(cmd, f"{path} {name}".strip())
        else:
            for p in cmd.params:
                yield f"{path} {name}".strip(), p


# ---------------------------------------------------------------- bare groups and --version


def test_bare_bce_audit_prints_help_and_exits_0():
    out = ok()
    assert out.startswith("Usage: bce-audit [OPTIONS] COMMAND")
    for command in ("sweep", "points", "check", "dtypes", "gate", "cache", "baseline"):
        assert f"  {command}  " in out


@pytest.mark.parametrize(("group", "commands"), [("cache", ("clear", "info")), ("baseline", ("save",))])
def test_group_without_its_command_prints_usage_and_exits_2(group, commands):
    r = run(group)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert r.stdout == ""
    assert "Traceback" not in r.output
    assert r.stderr.startswith(f"Usage: bce-audit {group} [OPTIONS] COMMAND")
    for command in commands:
        assert f"  {command}  " in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last == f"bce-audit: error: bce-audit {group} needs a command: {', '.join(commands)}"


def test_bare_groups_through_the_real_entry_point():
    bare = _python_m()
    assert (bare.returncode, bare.stderr) == (0, "")
    assert bare.stdout.startswith("Usage: bce-audit [OPTIONS] COMMAND")
    cache = _python_m("cache")
    assert (cache.returncode, cache.stdout) == (2, "")
    assert cache.stderr.startswith("Usage: bce-audit cache")


def test_version():
    """The version, and whether the compiled kernels run, as black prints it."""
    line = f"bce-audit {__version__} (compiled: {'yes' if compiled.active() else 'no'})\n"
    assert ok("--version") == line
    p = _python_m("--version")
    assert (p.returncode, p.stdout, p.stderr) == (0, line, "")
    p = subprocess.run([sys.executable, "-m", "bce_audit", "--version"], capture_output=True, text=True,
                       env={**os.environ, compiled.ENV: "numpy"})
    assert p.stdout == f"bce-audit {__version__} (compiled: no)\n"


# ---------------------------------------------------------------- dtype aliases


def _bits_named(alias: str) -> int | None:
    """The width an alias spells out (f16, fp8, bf16, binary32), if it spells one."""
    m = re.fullmatch(r"(?:b?f|fp|binary)(\d+)", alias)
    return int(m.group(1)) if m else None


@pytest.mark.parametrize(("alias", "name"), sorted(dtypes.ALIASES.items()))
def test_every_alias_resolves(alias, name):
    """One invariant over the alias table: every alias, in any case, is its dtype everywhere a
    dtype is taken (dtypes.get, config files and gate checks, every --dtype option)."""
    assert name in dtypes.NAMES
    assert alias == alias.lower() and alias not in dtypes.NAMES
    width = _bits_named(alias)
    assert width is None or dtypes.get(name).bits == width, (alias, name)
    for spelling in (alias, alias.upper(), alias.capitalize()):
        assert dtypes.canonical(spelling) == name
        assert dtypes.get(spelling).name == name
        assert config.check_dtypes((spelling,), "x") == (name,)
        for where, p in _params():
            if p.name in ("dtypes", "dtype") and isinstance(p.type, _Choice) and name in p.type.choices:
                assert p.type.convert(spelling, p, None) == name, where


@pytest.mark.parametrize("name", dtypes.NAMES)
def test_canonical_names_in_any_case(name):
    assert dtypes.canonical(name) == name
    assert dtypes.canonical(name.upper()) == name
    assert config.check_dtypes((name.upper(), name, "all"), "x") == dtypes.NAMES


def test_every_dtype_option_takes_aliases():
    dtype_params = [(w, p) for w, p in _params() if p.name in ("dtypes", "dtype")]
    assert {w for w, _ in dtype_params} >= {"sweep", "points", "check", "plot", "fidelity"}
    for where, p in dtype_params:
        assert p.type.convert("bf16", p, None) == "bfloat16", where
        assert "bf16" in (p.help or ""), where


def test_alias_on_the_command_line_keeps_canonical_names_in_records():
    doc = strict_json(ok("points", "--dtype", "fp16", "--dtype", "BF16", "--formula", "keras3",
                         "--label", "1", "--format", "json"))
    assert doc["settings"]["dtypes"] == ["float16", "bfloat16"]
    assert {k["dtype"] for k in doc["keypoints"]} == {"float16", "bfloat16"}


def test_alias_in_a_config_file(tmp_path):
    cfg = tmp_path / "a.toml"
    cfg.write_text('dtypes = ["half", "F32"]\nformulas = ["keras3"]\nlabel = 1\n')
    doc = strict_json(ok("points", "--config", str(cfg), "--format", "json"))
    assert doc["settings"]["dtypes"] == ["float16", "float32"]


def test_alias_in_a_gate_check(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[[check]]\nname = "c"\nformula = "keras3"\ndtype = "bf16"\nmax_ulp = 4\n')
    (check,) = gate.load_checks([str(cfg)])
    assert check.dtypes == ("bfloat16",)


def test_aliases_are_documented():
    out = ok("sweep", "--help")
    for alias in ("fp16", "bf16", "f32", "e5m2"):
        assert alias in out
    readme = (ROOT / "README.md").read_text()
    for alias in dtypes.ALIASES:
        assert f"`{alias}`" in readme, alias


# ---------------------------------------------------------------- did you mean


def test_every_choice_option_is_a_suggesting_choice():
    for where, p in _params():
        if isinstance(p.type, click.Choice):
            assert isinstance(p.type, _Choice), (where, p.name)


DID_YOU_MEAN = [
    (("sweep", "--mode", "nativ"), "--mode", "nativ", "native"),
    (("dtypes", "--mode", "per_op"), "--mode", "per_op", "per-op"),
    (("points", "--label", "bth"), "--label", "bth", "both"),
    (("sweep", "--spacing", "lgo"), "--spacing", "lgo", "log"),
    (("points", "--format", "jsn"), "--format", "jsn", "json"),
    (("sweep", "--format", "parquett"), "--format", "parquett", "parquet"),
    (("sweep", "--backend", "nunpy"), "--backend", "nunpy", "numpy"),
    (("points", "--reference", "mpmat"), "--reference", "mpmat", "mpmath"),
    (("points", "--impl-kind", "bce-logit"), "--impl-kind", "bce-logit", "bce-logits"),
    (("points", "--dtype", "flaot32"), "--dtype", "flaot32", "float32"),
    (("check", "1", "--dtype", "bfloat61"), "--dtype", "bfloat61", "bfloat16"),
    (("plot", "--kind", "roundtip"), "--kind", "roundtip", "roundtrip"),
    (("fidelity", "--backend", "trch"), "--backend", "trch", "torch"),
    (("reproduce", "--backend", "tf_keras"), "--backend", "tf_keras", "tf-keras"),
    (("--color", "alway", "dtypes"), "--color", "alway", "always"),
]


@pytest.mark.parametrize(("args", "flag", "bad", "near"), DID_YOU_MEAN,
                         ids=[f"{a[1]}-{a[2]}" for a in DID_YOU_MEAN])
def test_did_you_mean_for_every_choice_option(args, flag, bad, near):
    line = assert_usage_error(run(*args))
    assert line.startswith(f"bce-audit: error: {flag} {bad!r} is not one of "), line
    assert line.endswith(f"; did you mean {near!r}?"), line


def test_no_suggestion_when_nothing_is_near():
    line = assert_usage_error(run("sweep", "--mode", "zzzzzz"))
    assert "did you mean" not in line
    assert "native" in line


def test_choices_in_any_case():
    assert strict_json(ok("dtypes", "--mode", "PER-OP", "--format", "JSON"))["mode"] == "per-op"


@pytest.mark.parametrize(("text", "needles"), [
    ('mode = "nativ"\n', ("a.toml: mode", "'nativ'", "did you mean 'native'")),
    ('dtypes = ["flaot16"]\n', ("a.toml: dtypes", "'flaot16'", "did you mean 'float16'")),
    ('formulas = ["kers3"]\n', ("a.toml: formulas", "'kers3'", "did you mean 'keras3'")),
    ('label = "bth"\n', ("a.toml: label", "'bth'", "did you mean 'both'")),
    ('format = "jsn"\n', ("a.toml: format", "'jsn'", "did you mean 'json'")),
])
def test_did_you_mean_for_config_values(tmp_path, text, needles):
    cfg = tmp_path / "a.toml"
    cfg.write_text(text)
    assert_usage_error(run("points", "--config", str(cfg)), *needles)


def test_did_you_mean_in_a_gate_check(tmp_path):
    cfg = tmp_path / "g.toml"
    cfg.write_text('[[check]]\nname = "c"\nformula = "keras3"\nmode = "upcats"\nmax_ulp = 4\n')
    with pytest.raises(config.ConfigError, match="did you mean 'upcast'"):
        gate.load_checks([str(cfg)])


# ---------------------------------------------------------------- colour


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("env", "color", "on"), [
    ({}, None, True), ({"NO_COLOR": "1"}, None, False), ({"NO_COLOR": ""}, None, True),
    ({"NO_COLOR": "1"}, True, True), ({}, False, False),
])
def test_color_on_a_terminal(monkeypatch, env, color, on):
    monkeypatch.delenv("NO_COLOR", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert report.color_on(_Tty(), color) is on
    tty = _Tty()
    report.console(tty, color=color).print(Text("x", style="bold red"))
    assert (ESC in tty.getvalue()) is on


def test_no_color_off_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert report.color_on(io.StringIO(), None) is False


def test_color_always_and_never():
    """--color decides over NO_COLOR (set by conftest) and over a pipe, as no-color.org asks."""
    assert ESC in ok("--color", "always", "dtypes")
    assert ESC not in ok("--color", "never", "dtypes")
    assert ESC not in ok("dtypes")


def test_color_always_reaches_an_output_file(tmp_path):
    ok("--color", "always", "dtypes", "-o", str(tmp_path / "d.txt"))
    ok("dtypes", "-o", str(tmp_path / "plain.txt"))
    assert ESC in (tmp_path / "d.txt").read_text()
    assert ESC not in (tmp_path / "plain.txt").read_text()


def _on_pty(*args: str, env: dict[str, str]) -> str:
    """Run the real command with stdout on a pseudo-terminal; return what it wrote there."""
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    full = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color"} | env
    p = subprocess.Popen([sys.executable, "-m", "bce_audit", *args], cwd=ROOT, env=full, stdout=slave,
                         stderr=subprocess.PIPE)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a pseudo-terminal")
def test_no_color_on_a_real_terminal():
    assert ESC in _on_pty("dtypes", env={})
    assert ESC not in _on_pty("dtypes", env={"NO_COLOR": "1"})
    assert ESC not in _on_pty("--color", "never", "dtypes", env={})


# ---------------------------------------------------------------- --format from -o


def _points_file(tmp_path: Path, name: str, *extra: str) -> str:
    target = tmp_path / name
    assert ok("points", *FAST_POINTS, "-o", str(target), *extra) == ""
    return target.read_text()


def test_points_o_json_writes_json(tmp_path):
    doc = strict_json(_points_file(tmp_path, "p.json"))
    assert doc["keypoints"] and doc["settings"]["dtypes"] == ["float16"]


def test_points_o_csv_and_markdown(tmp_path):
    rows = list(csv.reader(io.StringIO(_points_file(tmp_path, "p.csv"))))
    assert "dtype" in rows[0] and len(rows) > 1
    assert _points_file(tmp_path, "p.md").lstrip().startswith(("#", "|"))
    assert _points_file(tmp_path, "P.JSON").lstrip().startswith("{")


def test_explicit_format_beats_the_extension(tmp_path):
    text = _points_file(tmp_path, "p.json", "--format", "csv")
    assert text.startswith(next(csv.reader(io.StringIO(text)))[0])
    assert not text.lstrip().startswith("{")


@pytest.mark.parametrize(("args", "name"), [
    (("check", "16.5", "--dtype", "f32"), "c.json"),
    (("dtypes",), "d.json"),
    (("sweep", "--dtype", "f16", "--points", "5", "--formula", "keras3", "--label", "1"), "s.json"),
])
def test_every_document_command_infers_json(tmp_path, args, name):
    assert ok(*args, "-o", str(tmp_path / name)) == ""
    assert isinstance(strict_json((tmp_path / name).read_text()), dict)


def test_sweep_o_jsonl_streams_rows(tmp_path):
    target = tmp_path / "s.jsonl"
    ok("sweep", "--dtype", "f16", "--points", "5", "--formula", "keras3", "--label", "1", "-o", str(target))
    lines = target.read_text().splitlines()
    assert len(lines) >= 5 and all(isinstance(strict_json(line), dict) for line in lines)


def test_alias_in_the_python_api():
    from bce_audit import api

    kps = api.points(dtype="BF16", formula="keras3", label="1")
    assert kps and {k.dtype for k in kps} == {"bfloat16"}


THREADS = ("import os, sys\n"
           "{setup}\n"
           "import numpy\n"
           "print(len(os.listdir('/proc/self/task')), os.environ.get('OPENBLAS_NUM_THREADS'))\n")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir() or (os.cpu_count() or 1) < 2,
                    reason="counts a process's threads in /proc, on more than one core")
@pytest.mark.parametrize(("user", "threads"), [(None, 1), ("2", 2)])
def test_the_command_starts_no_blas_thread(user, threads):
    """The command's entry (``bce_audit.__main__``) asks numpy's OpenBLAS for one thread before
    numpy loads, so none spins beside the audit; a value the user set stands. (Without the entry,
    OpenBLAS starts a thread per core: the count below tells the two apart.)"""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user is not None:
        env["OPENBLAS_NUM_THREADS"] = user
    def count(setup: str) -> list[str]:
        code = THREADS.format(setup=setup)
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=60, check=True).stdout.split()
    assert count("import bce_audit.__main__") == [str(threads), user or "1"]
    if user is None:  # what the entry changes: OpenBLAS's own default
        assert int(count("")[0]) > 1


END = ("import atexit, sys\n"
       "marker = sys.argv[1]\n"
       "atexit.register(lambda: open(marker, 'w').write('ran'))\n"
       "sys.argv = ['bce-audit', *sys.argv[2:]]\n"
       "import runpy\n"
       "runpy.run_module('bce_audit', run_name='__main__')\n"
       "print('NOT REACHED')\n")


@pytest.mark.parametrize(("argv", "code"), [(["check", "0.5", "--dtype", "float16", "--format", "json"], 0),
                                            (["sweep", "--dtype", "bogus"], 2)])
def test_the_command_ends_with_its_code_its_handlers_run_and_its_output_whole(tmp_path, argv, code):
    """The command ends without the interpreter's teardown (`__main__._end`), as `sys.exit` would
    end it otherwise: its exit code, its exit handlers run (here one that writes a file), and
    every byte of its output flushed; nothing after the command runs."""
    marker = tmp_path / "ran"
    r = subprocess.run([sys.executable, "-c", END, str(marker), *argv], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == code, r.stderr
    assert marker.read_text() == "ran"
    assert "NOT REACHED" not in r.stdout
    if code == 0:
        assert json.loads(r.stdout)["schema"]
    else:
        assert r.stderr.startswith("bce-audit: error: --dtype 'bogus'")
