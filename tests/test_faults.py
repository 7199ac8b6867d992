"""Fault injection (issue 14): user code that exits, prints, hangs or interrupts; each ends as one
line on stderr and exit 2 (in a gate: an errored check, exit 1), never a traceback, a silent exit 0
or a broken stdout."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

import pytest
from cli_support import assert_usage_error, run, strict_json

GOOD = "import numpy as np\ndef bce(x, y):\n    return np.logaddexp(0, x).astype(x.dtype) - x * y\n"


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Write a user module into a fresh directory and run from there (impl: imports from the cwd)."""
    monkeypatch.chdir(tmp_path)
    names = iter(range(1000))

    def write(body: str) -> str:
        name = f"user_mod_{next(names)}_{time.monotonic_ns()}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
        return f"impl:{name}:bce"

    return write


def _sweep(spec: str, *extra: str):
    return run("sweep", "--dtype", "float32", "--points", "11", "--formula", spec, "--jobs", "1",
               "--no-cache", *extra)


@pytest.mark.parametrize(("body", "needles"), [
    ("import sys\ndef bce(x, y):\n    sys.exit(0)\n", ("raised SystemExit",)),
    ("def bce(x, y):\n    raise KeyboardInterrupt\n", ("raised KeyboardInterrupt",)),
    ("def bce(x, y):\n    raise GeneratorExit\n", ("raised GeneratorExit",)),
    ("import sys\nsys.exit(0)\ndef bce(x, y):\n    return x\n", ("cannot import module", "SystemExit")),
], ids=["exit-in-call", "interrupt-in-call", "generator-exit", "exit-at-import"])
def test_issue_14_user_code_cannot_end_the_tool(module, body, needles):
    assert_usage_error(_sweep(module(body)), *needles)


def test_issue_14_a_gate_whose_user_code_exits_0_does_not_pass(module, tmp_path):
    """sys.exit(0) in a check's function after a failing check: that check errors, naming what
    it raised; the gate ends with exit 1, never 0 (issue 12: not 2, which is for config errors)."""
    spec = module("import sys\ndef bce(x, y):\n    sys.exit(0)\n")
    config = tmp_path / "gate.toml"
    config.write_text(textwrap.dedent(f"""
        [[check]]
        name = "keras3 floors"
        formula = "keras3"
        max_ulp = 1
        [[check]]
        name = "mine"
        formula = "{spec}"
        max_ulp = 4
        """), encoding="utf-8")
    junit = tmp_path / "gate.xml"
    r = run("gate", str(config), "--junit", str(junit))
    assert r.exit_code == 1 and r.stderr == "", (r.exit_code, r.stderr)
    assert "1 of 2 checks failed: keras3 floors; 1 of 2 checks errored: mine" in r.stdout
    (error,) = ET.parse(junit).getroot().iter("error")
    assert spec in error.get("message") and "raised SystemExit" in error.get("message")


def test_issue_14_user_prints_never_reach_machine_readable_stdout(module):
    spec = module("import numpy as np\ndef bce(x, y):\n    print('hello from the user')\n"
                  "    return np.logaddexp(0, x).astype(x.dtype) - x * y\n")
    r = _sweep(spec, "--format", "json")
    assert r.exit_code == 0, r.stderr
    doc = strict_json(r.stdout)
    assert spec in doc["settings"]["formulas"]
    assert "hello from the user" in r.stderr


def test_issue_14_a_hanging_user_function_times_out(module):
    spec = module("import time\ndef bce(x, y):\n    time.sleep(30)\n    return x\n")
    t = time.monotonic()
    assert_usage_error(_sweep(spec, "--impl-timeout", "0.5"), spec, "did not return within 0.5 s",
                       "--impl-timeout")
    assert time.monotonic() - t < 15


def test_issue_14_a_hanging_import_times_out(module):
    spec = module("import time\ntime.sleep(30)\ndef bce(x, y):\n    return x\n")
    assert_usage_error(_sweep(spec, "--impl-timeout", "0.5"), "cannot import module", "more than 0.5 s")


def test_issue_14_a_user_loop_that_catches_exception_still_times_out(module):
    """The timer's exception is no Exception: `except Exception` in user code cannot swallow it."""
    spec = module("""
        def bce(x, y):
            while True:
                try:
                    sum(range(1000))
                except Exception:
                    pass
        """)
    assert_usage_error(_sweep(spec, "--impl-timeout", "0.3"), "did not return within 0.3 s")


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_impl_timeout_is_validated(value):
    assert_usage_error(run("sweep", "--impl-timeout", value), "--impl-timeout")


def test_a_good_user_function_is_unaffected(module):
    r = _sweep(module(GOOD), "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["worst"]


# ---------------------------------------------------------------- inputs with no bound, malformed inputs


def test_issue_14_a_config_that_never_ends_is_refused():
    assert_usage_error(run("sweep", "--config", "/dev/zero"), "/dev/zero", "larger than 4 MiB")


def test_issue_14_a_binary_config_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"dtype = \"float32\"\n\xff\xfe\x00garbage")
    assert_usage_error(run("sweep", "--config", str(bad)), "bad.toml", "not a text file")


def test_issue_14_a_config_nested_thousands_deep_is_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("eps = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    assert_usage_error(run("sweep", "--config", str(deep)), "deep.toml")


def test_issue_14_a_baseline_nested_thousands_deep_is_one_line(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('[[check]]\nname = "c"\nformula = "logits-stable"\nmax_ulp = 1000\n', encoding="utf-8")
    base = tmp_path / "base.json"
    base.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert_usage_error(run("gate", str(config), "--baseline", str(base)), "base.json", "nested too deep")


def test_issue_14_a_cache_entry_of_the_wrong_shape_is_rebuilt_with_a_warning(tmp_path, monkeypatch):
    from bce_audit import cache

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    args = ("sweep", "--dtype", "float16", "--points", "101", "--formula", "keras3", "--jobs", "1",
            "--format", "json")
    first = run(*args)
    assert first.exit_code == 0
    store = cache.Cache(cache.default_dir())
    damaged = 0
    for path, _ in store.entries():
        doc = json.loads(path.read_text(encoding="utf-8"))
        if "blocks" in doc["payload"]:
            key = path.stem
            store.put(key, {"worst": [], "blocks": [["not", "a", "block"]]})  # a valid checksum
            damaged += 1
    assert damaged
    again = run(*args)
    assert again.exit_code == 0 and again.stdout == first.stdout
    assert "does not fit this version: rebuilt" in again.stderr and "Traceback" not in again.stderr


# ---------------------------------------------------------------- OS errors


def test_issue_14_disk_full_on_output_is_one_line(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    assert_usage_error(run("dtypes", "-o", "/dev/full"), "--output '/dev/full'", "No space left")


def test_issue_14_disk_full_while_streaming_leaves_no_file(tmp_path, monkeypatch):
    """ENOSPC in the middle of a stream to a file: one line, exit 2, no partial or temporary file."""
    from bce_audit import streams

    calls = []
    original = streams.JsonLines.write

    def full(self, blocks):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, blocks)

    monkeypatch.setattr(streams.JsonLines, "write", full)
    out = tmp_path / "rows.jsonl"
    r = run("sweep", "--exhaustive", "--dtype", "float16", "--range", "0:10", "--no-cache", "-q", "-j1",
            "-o", str(out))
    assert_usage_error(r, f"--output {str(out)!r}", "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_issue_14_a_directory_as_output_is_refused_before_the_work(tmp_path):
    assert_usage_error(run("sweep", "-o", str(tmp_path)), str(tmp_path))


def test_issue_14_a_closed_pipe_is_no_error():
    """`bce-audit ... | head`: the reader leaving is not a failure (exit 0, nothing on stderr)."""
    args = ["sweep", "--format", "jsonl", "--points", "100000", "--no-cache", "-q", "-j1"]
    proc = subprocess.Popen([sys.executable, "-m", "bce_audit", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(100)
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0, err
    assert err == b""


# ---------------------------------------------------------------- output hygiene


FORGED = 'bad\\n::warning file=x::forged\\u001b[31mred\\u0001'  # TOML escapes: newline, ESC, SOH


def _forged_config(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text(f'[[check]]\nname = "{FORGED}"\nformula = "keras3"\nmax_ulp = 1\n', encoding="utf-8")
    return config


def test_issue_14_a_check_name_cannot_forge_an_annotation(tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    junit = tmp_path / "junit.xml"
    r = run("gate", str(_forged_config(tmp_path)), "--junit", str(junit))
    assert r.exit_code == 1, r.stderr
    lines = r.stdout.splitlines()
    assert not any(line.lstrip().startswith("::warning") for line in lines), r.stdout
    assert "\x1b" not in r.stdout and "\x01" not in r.stdout
    stop = [i for i, line in enumerate(lines) if line.startswith("::stop-commands::")]
    assert len(stop) == 1 and f"::{lines[stop[0]].split('::')[2]}::" in lines  # the table is fenced
    errors = [line for line in lines if line.startswith("::error ")]
    assert len(errors) == 1 and "%0A" not in errors[0] and "bad\\n%3A%3Awarning" in errors[0]
    root = ET.fromstring(junit.read_text(encoding="utf-8"))  # well-formed XML
    (case,) = root.iter("testcase")
    assert case.get("name", "").startswith("bad\n::warning") and "\\x1b" in case.get("name", "")


def test_issue_14_piped_tables_never_cut_a_number():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run([sys.executable, "-m", "bce_audit", "sweep", "--points", "7", "--no-cache", "-q"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "…" not in done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) > 80  # wider than a default terminal


# ---------------------------------------------------------------- integrity, ignored options


GATE = '[[check]]\nname = "stable"\nformula = "logits-stable"\npoints = 101\nmax_ulp = 1000\n'


def _saved_baseline(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text(GATE, encoding="utf-8")
    base = tmp_path / "base.json"
    r = run("baseline", "save", str(config), "-o", str(base))
    assert r.exit_code == 0, r.stderr
    return config, base


@pytest.mark.parametrize("damage", ["empty", "nan"])
def test_issue_14_a_baseline_that_compares_nothing_is_refused(tmp_path, damage):
    config, base = _saved_baseline(tmp_path)
    doc = json.loads(base.read_text(encoding="utf-8"))
    if damage == "empty":
        doc["checks"] = {}
    else:
        for entry in doc["checks"].values():
            entry["figures"]["max_ulp"] = "nan"
    base.write_text(json.dumps(doc), encoding="utf-8")
    assert_usage_error(run("gate", str(config), "--baseline", str(base)), "base.json")


@pytest.mark.parametrize(("flag", "value"), [("--points", "10"), ("--spacing", "log"), ("--step", "0.5")])
def test_issue_14_exhaustive_with_a_grid_option_is_an_error(flag, value):
    assert_usage_error(run("sweep", "--exhaustive", "--dtype", "float16", flag, value), flag, "exhaustive")


def test_issue_14_an_empty_config_path_is_an_error():
    assert_usage_error(run("sweep", "--config", ""), "--config ''")


def test_issue_14_gate_top_level_keys_it_would_ignore_are_errors(tmp_path):
    config = tmp_path / "gate.toml"
    config.write_text('formulas = ["keras3"]\n' + GATE, encoding="utf-8")
    assert_usage_error(run("gate", str(config)), "top-level formulas", "inherit only")


def test_issue_14_dash_output_is_stdout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("dtypes", "--format", "json", "-o", "-")
    assert r.exit_code == 0 and r.stdout.startswith("{")
    r = run("sweep", "--points", "5", "--format", "json", "-o", "-")
    assert r.exit_code == 0 and strict_json(r.stdout)["rows"]
    assert list(tmp_path.iterdir()) == []


def test_issue_14_output_over_the_config_being_read_is_refused(tmp_path):
    config = tmp_path / "mine.toml"
    config.write_text('dtype = "float16"\n', encoding="utf-8")
    assert_usage_error(run("sweep", "--config", str(config), "-o", str(config)), "is the config being read")
    assert config.read_text(encoding="utf-8") == 'dtype = "float16"\n'


# ---------------------------------------------------------------- no orphans


def _group(pgid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["forked", "forkserver"])
def test_issue_14_kill_9_of_the_main_process_leaves_no_worker(module, pool):
    """The pool's workers (forked ones, or a forkserver's with its resource tracker) and a forked
    key-point search all end with the main process. An ``impl:`` formula is never forked: its
    run gets the forkserver."""
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups and ps as on Linux")
    formulas = ["--formula", "naive"]
    if pool == "forkserver":
        formulas += ["--formula", module("def bce(x, y):\n    return x * 0\n")]
    args = ["sweep", "--reference", "mpmath", "--points", "200000", "--dtype", "float32", "--no-cache", "-q",
            "--jobs", "2", "--rows", "11", *formulas]
    proc = subprocess.Popen([sys.executable, "-m", "bce_audit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    at_least = 3 if pool == "forked" else 4  # main and 2 workers (and the forkserver)
    deadline = time.monotonic() + 60
    while len(_group(proc.pid)) < at_least and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_group(proc.pid)) >= at_least, "the pool never started"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 20
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _group(proc.pid)
    for pid in left:  # never leave them behind for the next test
        os.kill(pid, signal.SIGKILL)
    assert left == []


# ---------------------------------------------------------------- a remote scheduler that misbehaves


@pytest.mark.parametrize("address", ["not a url", "tcp://host", "tcp://host:99999", "http://x:1"])
def test_issue_14_a_scheduler_address_is_checked_before_the_work(address):
    assert_usage_error(run("sweep", "--scheduler", address), "--scheduler", "tcp://HOST:PORT")


@pytest.mark.slow  # waits for Dask's connect timeout
def test_issue_14_a_peer_that_is_no_scheduler_is_one_line(monkeypatch):
    """A TCP server that accepts and never answers: no wait past CONNECT_TIMEOUT, one line."""
    pytest.importorskip("dask.distributed")
    import socket

    from bce_audit import distributed

    monkeypatch.setattr(distributed, "CONNECT_TIMEOUT", 1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        t = time.monotonic()
        r = run("sweep", "--points", "11", "--no-cache", "--scheduler", f"tcp://127.0.0.1:{port}")
    assert_usage_error(r, f"tcp://127.0.0.1:{port}", "no Dask scheduler answered")
    assert time.monotonic() - t < 30


@pytest.mark.slow  # a Dask cluster, waited on
def test_issue_14_a_cluster_without_workers_is_one_line(monkeypatch):
    dd = pytest.importorskip("dask.distributed")
    from bce_audit import distributed

    monkeypatch.setattr(distributed, "WORKER_TIMEOUT", 1.0)
    with dd.LocalCluster(n_workers=0, processes=False, scheduler_port=0, dashboard_address=":0") as cluster:
        r = run("sweep", "--points", "11", "--no-cache", "--scheduler", cluster.scheduler_address)
    assert_usage_error(r, "has no worker after 1 s", "dask worker")


@pytest.mark.parametrize("target", ["dir", "missing"])
def test_issue_14_baseline_save_checks_its_output_before_running(tmp_path, monkeypatch, target):
    from bce_audit import gate

    ran = []
    monkeypatch.setattr(gate, "run", lambda checks: ran.append(1) or [])
    config = tmp_path / "gate.toml"
    config.write_text(GATE, encoding="utf-8")
    out = tmp_path if target == "dir" else tmp_path / "no" / "such" / "base.json"
    assert_usage_error(run("baseline", "save", str(config), "-o", str(out)), "--output", str(out))
    assert ran == []


def test_issue_14_a_checks_own_timeout_stops_its_user_function(module, tmp_path):
    spec = module("import time\ndef bce(x, y):\n    time.sleep(30)\n    return x\n")
    config = tmp_path / "gate.toml"
    config.write_text(f'[[check]]\nname = "slow"\nformula = "{spec}"\nmax_ulp = 4\ntimeout = 0.5\n',
                      encoding="utf-8")
    t = time.monotonic()
    out = tmp_path / "gate.json"
    r = run("gate", str(config), "--json", str(out))
    assert r.exit_code == 1 and r.stderr == "", (r.exit_code, r.stderr)
    (check,) = strict_json(out.read_text(encoding="utf-8"))["checks"]
    assert check["status"] == "ERROR" and spec in check["error"]
    assert "did not return within 0.5 s" in check["error"]
    assert time.monotonic() - t < 15


def test_issue_14_a_configs_timeout_applies_to_a_sweep(module, tmp_path):
    spec = module("import time\ndef bce(x, y):\n    time.sleep(30)\n    return x\n")
    config = tmp_path / "sweep.toml"
    config.write_text(f'formula = "{spec}"\ntimeout = 0.5\npoints = 11\n', encoding="utf-8")
    r = run("sweep", "--config", str(config), "--no-cache", "-j1")
    assert_usage_error(r, "did not return within 0.5 s")
    config.write_text('timeout = -3\n', encoding="utf-8")
    assert_usage_error(run("sweep", "--config", str(config)), "sweep.toml: timeout", "0 or more")


@pytest.mark.parametrize("flag", ["--junit", "--json", "--markdown"])
def test_issue_14_gate_outputs_never_overwrite_an_input(tmp_path, flag):
    config = tmp_path / "gate.toml"
    config.write_text(GATE, encoding="utf-8")
    assert_usage_error(run("gate", str(config), flag, str(config)), flag, "is an input being read")
    assert config.read_text(encoding="utf-8") == GATE


@pytest.mark.slow  # a process pool
def test_issue_14_the_timeout_reaches_pool_workers(module, monkeypatch):
    """A hung call in a --jobs worker stops at the parent's --impl-timeout, not at the default."""
    from bce_audit import sweep

    monkeypatch.setattr(sweep, "CHUNK", 4)
    monkeypatch.setattr(sweep, "POOL_MIN_POINTS", 0)
    spec = module(f"""
        import os, time
        def bce(x, y):
            if os.getpid() != {os.getpid()}:  # hangs in the pool's workers only, not in the key points here
                time.sleep(30)
            return x
        """)
    t = time.monotonic()
    r = run("sweep", "--dtype", "float32", "--points", "11", "--formula", spec, "--jobs", "2", "--no-cache",
            "--impl-timeout", "0.5")
    assert_usage_error(r, "did not return within 0.5 s")
    assert time.monotonic() - t < 20
