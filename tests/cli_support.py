"""Helpers shared by the CLI test modules: run a command, and assert how it ended."""

from __future__ import annotations

import json

from click.testing import CliRunner, Result

from bce_audit.cli import cli


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click < 8.2
    except TypeError:
        return CliRunner()  # click >= 8.2 keeps stderr apart by default


def run(*args: str) -> Result:
    return _runner().invoke(cli, list(args), prog_name="bce-audit")


def ok(*args: str) -> str:
    """Run a command that must succeed quietly; return its stdout."""
    r = run(*args)
    assert r.exit_code == 0, (r.exit_code, r.stderr, r.exception)
    assert r.stderr == ""
    return r.stdout


def assert_usage_error(r: Result, *needles: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr naming the problem, no traceback."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.output
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    line = lines[0]
    assert line.startswith("bce-audit: error: "), line
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _reject_constant(name: str):
    raise ValueError(f"bare {name} in JSON output")


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity: the output must be valid JSON, not Python's dialect."""
    return json.loads(text, parse_constant=_reject_constant)
