"""Scale features: the result cache, resuming a chunked run, --jobs, Dask, --exhaustive, big grids.

The cache must give the same answer as computing (hit, miss, corruption, an unwritable
directory, two writers at once); a chunked run gives the same records however its chunks run
(serially, in a process pool, on a Dask cluster, or half from the cache after an interruption).

conftest.py gives every test its own $XDG_CACHE_HOME and resets ``cache.use(None)`` afterwards.
Regression tests pin the bugs found here; each states the correct behaviour.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from cli_support import assert_usage_error, ok, run, strict_json
from mpmath import mp

from bce_audit import cache, cli, heap, keypoints, records, report, sweep
from bce_audit.records import Settings
from bce_audit.sweep import CHUNK

# a JSON sweep light enough to run several times: one formula, one label, every row kept
SMALL = ("sweep", "--points", "5000", "--format", "json", "--rows", "1000", "--dtype", "float16",
         "--formula", "keras3", "--label", "1", "--jobs", "1")
WARNING = "bce-audit: warning: "


# ---------------------------------------------------------------- helpers


def canon(records) -> list[str]:
    """Records as exact text: repr keeps every float bit (and -0.0, nan) where == would not."""
    return [repr(asdict(r)) for r in records]


def assert_same_result(a: records.SweepResult, b: records.SweepResult) -> None:
    assert len(a.rows) == len(b.rows)
    assert canon(a.rows) == canon(b.rows)
    assert canon(a.worst) == canon(b.worst)
    assert canon(a.keypoints) == canon(b.keypoints)


def entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json")) if root.is_dir() else []


def temp_leftovers(root: Path) -> list[Path]:
    return sorted(root.rglob(".bce-audit-*")) if root.is_dir() else []


def assert_valid_entry(path: Path) -> None:
    """A whole entry file: the format, its own key, and a checksum that matches the payload."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == cache.FORMAT
    assert doc["key"] == path.stem
    assert doc["sha256"] == cache._digest(doc["payload"])


class Spy:
    """Wraps a function, recording the arguments of every call."""

    def __init__(self, fn):
        self.fn = fn
        self.calls: list[tuple] = []

    def __call__(self, *args, **kw):
        self.calls.append(args)
        return self.fn(*args, **kw)


@pytest.fixture
def cache_root() -> Path:
    """The directory the CLI caches in for this test (conftest points $XDG_CACHE_HOME at a fresh one)."""
    return cache.default_dir()


@pytest.fixture
def chunk_spy(monkeypatch) -> Spy:
    spy = Spy(sweep.audit_chunk)
    monkeypatch.setattr(sweep, "audit_chunk", spy)
    return spy


# ---------------------------------------------------------------- the Cache class


def test_cache_miss_returns_none_and_counts(tmp_path):
    c = cache.Cache(tmp_path)
    assert c.get(cache.key_of("t", {"a": 1})) is None
    assert c.warnings == []
    assert entries(tmp_path) == []


def test_cache_put_then_get_round_trips_values(tmp_path):
    c = cache.Cache(tmp_path)
    value = {"floats": [0.1, -0.0, 5e-324, 1.7976931348623157e308, math.inf, -math.inf, math.nan],
             "nested": {"x": [1, "pair", None, True]}, "label": "pair"}
    key = cache.key_of("t", {"a": 1})
    c.put(key, value)
    got = c.get(key)
    assert got["floats"][4:] == ["inf", "-inf", "nan"]  # the one encoding: records.clean's strings
    floats = records.decode_floats(got["floats"])
    assert floats[:6].tolist() == value["floats"][:6]
    assert math.copysign(1.0, floats[1]) == -1.0
    assert math.isnan(floats[6])
    assert got["nested"] == value["nested"]
    assert got["label"] == "pair"
    (path,) = entries(tmp_path)
    assert path == c.path(key)
    assert_valid_entry(path)
    # the file itself is strict JSON: inf and nan are encoded, never bare Infinity / NaN
    strict_json(path.read_text(encoding="utf-8"))
    assert temp_leftovers(tmp_path) == []


def test_cache_key_depends_on_every_part():
    k = cache.key_of("chunk", {"a": 1, "b": [0.5, math.inf]})
    assert k == cache.key_of("chunk", {"b": [0.5, math.inf], "a": 1})
    assert k != cache.key_of("chunk", {"a": 2, "b": [0.5, math.inf]})
    assert k != cache.key_of("chunk", {"a": 1, "b": [0.5, -math.inf]})
    assert k != cache.key_of("keypoints", {"a": 1, "b": [0.5, math.inf]})


def _floats_back(v):
    """The test values' floats read back (records.decode does this for records, by field type)."""
    if isinstance(v, dict):
        return {k: _floats_back(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_floats_back(x) for x in v]
    return records.decode_float(v) if v in ("inf", "-inf", "nan") else v


def _memo(c: cache.Cache, kind: str, parts: dict, compute):
    """The cached value for these parts, or compute and store it (as run_chunks does)."""
    key = cache.key_of(kind, parts)
    hit = c.lookup(key, _floats_back)
    if hit is not None:
        return hit
    value = compute()
    c.put(key, value)
    return value


def test_cache_computes_once_then_hits(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return [1.5, math.inf]

    c = cache.Cache(tmp_path)
    assert _memo(c, "t", {"n": 3}, compute) == [1.5, math.inf]
    assert _memo(c, "t", {"n": 3}, compute) == [1.5, math.inf]
    assert len(calls) == 1
    # another cache object on the same directory (a later run) hits too
    again = cache.Cache(tmp_path)
    assert _memo(again, "t", {"n": 3}, compute) == [1.5, math.inf]
    assert len(calls) == 1
    # different parts: a different entry
    assert _memo(c, "t", {"n": 4}, compute) == [1.5, math.inf]
    assert len(calls) == 2
    assert len(entries(tmp_path)) == 2


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_payload_byte(p: Path) -> None:
    """Change one digit of the payload: still valid JSON, but the sha256 no longer matches."""
    doc = json.loads(p.read_text(encoding="utf-8"))
    text = p.read_text(encoding="utf-8")
    payload = json.dumps(doc["payload"], sort_keys=True)
    assert "12345" in payload
    p.write_text(text.replace("12345", "12346"), encoding="utf-8")
    assert json.loads(p.read_text(encoding="utf-8"))["payload"] != doc["payload"]


def _garbage(p: Path) -> None:
    p.write_bytes(b"not json at all {")


def _binary_garbage(p: Path) -> None:
    """Bytes that are not even UTF-8 (a disk error, another program's file)."""
    p.write_bytes(b"\x00\xff\xfe garbage \x80")


def _wrong_key(p: Path) -> None:
    """A whole, self-consistent entry that belongs to another key (a renamed or copied file)."""
    doc = json.loads(p.read_text(encoding="utf-8"))
    doc["key"] = "0" * 64
    p.write_text(json.dumps(doc, sort_keys=True), encoding="utf-8")


@pytest.mark.parametrize("damage", [_truncate, _flip_payload_byte, _garbage, _binary_garbage, _wrong_key])
def test_cache_corrupted_entry_is_reported_and_rebuilt(tmp_path, damage):
    value = {"v": [0.12345, 2.0, -math.inf]}
    key = cache.key_of("t", {"n": 1})
    cache.Cache(tmp_path).put(key, value)
    (path,) = entries(tmp_path)
    damage(path)

    c = cache.Cache(tmp_path)
    assert c.get(key) is None
    assert len(c.warnings) == 1
    assert str(path) in c.warnings[0]
    assert "corrupted" in c.warnings[0]

    calls = []

    def compute():
        calls.append(1)
        return value

    c = cache.Cache(tmp_path)
    assert _memo(c, "t", {"n": 1}, compute) == value
    assert calls == [1]
    assert len(c.warnings) == 1 and str(path) in c.warnings[0]
    # the entry was rewritten whole: the next run hits and is not warned
    assert_valid_entry(path)
    fresh = cache.Cache(tmp_path)
    assert _memo(fresh, "t", {"n": 1}, compute) == value
    assert calls == [1]
    assert fresh.warnings == []
    assert temp_leftovers(tmp_path) == []


def test_cache_same_warning_is_recorded_once(tmp_path):
    key = cache.key_of("t", {"n": 1})
    cache.Cache(tmp_path).put(key, [1.0])
    _garbage(cache.Cache(tmp_path).path(key))
    c = cache.Cache(tmp_path)
    assert c.get(key) is None
    assert c.get(key) is None
    assert len(c.warnings) == 1


def _unwritable_chmod(tmp_path: Path) -> Path:
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    if os.access(root, os.W_OK):
        root.chmod(0o700)
        pytest.skip("running as root: chmod does not make a directory read-only")
    return root


def _unwritable_under_file(tmp_path: Path) -> Path:
    plain = tmp_path / "plain-file"
    plain.write_text("not a directory\n")
    return plain / "bce-audit"


@pytest.mark.parametrize("make_root", [_unwritable_chmod, _unwritable_under_file],
                         ids=["chmod", "under-file"])
def test_cache_unwritable_directory_runs_without_it(tmp_path, make_root):
    root = make_root(tmp_path)
    try:
        c = cache.Cache(root)
        key = cache.key_of("t", {"n": 1})
        c.put(key, [1.0, 2.0])  # must not raise
        assert c.writable is False
        assert len(c.warnings) == 1
        assert "not writable" in c.warnings[0]
        assert "without the cache" in c.warnings[0]
        assert str(root) in c.warnings[0]
        c.put(cache.key_of("t", {"n": 2}), [3.0])  # stays quiet once off
        assert len(c.warnings) == 1
        calls = []
        assert _memo(c, "t", {"n": 3}, lambda: calls.append(1) or [4.0]) == [4.0]
        assert calls == [1]
        assert c.get(key) is None
        assert len(c.warnings) == 1, c.warnings  # a missing entry is a plain miss, not another warning
    finally:
        if root.is_dir():
            root.chmod(0o700)
    assert entries(root) == []


_WRITER = """
import sys
from pathlib import Path
from bce_audit import cache
root, key, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = cache.Cache(root)
for i in range(n):
    c.put(key, {"who": who, "i": i, "data": [who + i / 7 for _ in range(2000)], "inf": float("inf")})
assert c.writable and not c.warnings, c.warnings
"""


def _is_written_value(v) -> bool:
    who, i = v["who"], v["i"]
    ok = who in (1, 2) and 0 <= i < 200 and v["data"] == [who + i / 7] * 2000
    return ok and v["inf"] == "inf"  # inf as records.clean writes it


@pytest.mark.slow
def test_cache_concurrent_writers_and_a_reader(tmp_path):
    key = cache.key_of("t", {"shared": True})
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), key, str(who), "200"],
                                stderr=subprocess.PIPE, text=True) for who in (1, 2)]
    reader = cache.Cache(tmp_path)
    reads = 0
    deadline = time.monotonic() + 60
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        v = reader.get(key)  # never raises
        reads += 1
        assert v is None or _is_written_value(v), v
    for w in writers:
        _, err = w.communicate(timeout=60)
        assert w.returncode == 0, err
    assert reader.warnings == [], reader.warnings  # no torn or half-written file was ever seen
    assert reads > 0
    final = cache.Cache(tmp_path)
    v = final.get(key)
    assert v is not None and _is_written_value(v) and v["i"] == 199
    assert_valid_entry(final.path(key))
    assert entries(tmp_path) == [final.path(key)]
    assert temp_leftovers(tmp_path) == []


def test_cache_info_counts_entries_and_bytes(tmp_path):
    c = cache.Cache(tmp_path / "c")
    empty = c.info()
    assert (empty["path"], empty["entries"], empty["stale"], empty["bytes"]) == (str(tmp_path / "c"), 0, 0, 0)
    for n in range(3):
        c.put(cache.key_of("t", {"n": n}), [float(n)] * (n + 1))
    info = c.info()
    assert info["entries"] == 3
    assert info["bytes"] == sum(p.stat().st_size for p in entries(tmp_path / "c")) > 0


def test_cache_clear_removes_its_entries_and_returns_the_count(tmp_path):
    c = cache.Cache(tmp_path)
    keys = [cache.key_of("t", {"n": n}) for n in range(5)]
    for k in keys:
        c.put(k, [1.0])
    (tmp_path / "README.txt").write_text("not ours\n")
    assert c.clear() == 5
    assert entries(tmp_path) == []
    assert (tmp_path / "README.txt").read_text() == "not ours\n"
    assert tmp_path.is_dir()
    assert c.info()["entries"] == 0
    assert all(c.get(k) is None for k in keys)
    assert c.clear() == 0
    assert cache.Cache(tmp_path / "missing").clear() == 0


def test_cache_clear_and_info_leave_foreign_json_files(tmp_path):
    """Only the entries the cache wrote count and go (regression: every *.json under the root went)."""
    c = cache.Cache(tmp_path)
    key = cache.key_of("t", {"n": 1})
    c.put(key, [1.0])
    foreign = [tmp_path / "settings.json", c.path(key).parent / "notes.json",
               tmp_path / "sub" / "deeper" / f"{key}.json"]
    for f in foreign:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("{}\n")
    assert c.info()["entries"] == 1
    assert c.info()["bytes"] == c.path(key).stat().st_size
    assert c.clear() == 1
    assert not c.path(key).exists()
    assert all(f.read_text() == "{}\n" for f in foreign)


# ---------------------------------------------------------------- the cache through the CLI


def test_cli_second_run_is_served_from_the_cache(cache_root, chunk_spy, monkeypatch):
    kp_spy = Spy(keypoints.formula_points)
    monkeypatch.setattr(keypoints, "formula_points", kp_spy)
    first = ok(*SMALL)
    assert len(chunk_spy.calls) == 1 and kp_spy.calls
    assert len(entries(cache_root)) >= 2
    doc = strict_json(first)
    assert len(doc["rows"]) == 3 * 1000  # sigmoid, round trip, keras3 at label 1
    chunk_spy.calls.clear()
    kp_spy.calls.clear()

    second = ok(*SMALL)
    assert chunk_spy.calls == []
    assert kp_spy.calls == []
    assert second == first


def test_cli_no_cache_computes_and_writes_nothing(cache_root, chunk_spy):
    first = ok(*SMALL, "--no-cache")
    second = ok(*SMALL, "--no-cache")
    assert len(chunk_spy.calls) == 2
    assert not cache_root.exists() or entries(cache_root) == []
    assert ok(*SMALL) == first == second  # cached and uncached runs agree


def _info_head(root) -> str:
    return ok("cache", "info").splitlines()[0]


def test_cli_cache_info_and_clear(cache_root):
    assert _info_head(cache_root) == f"{cache_root}: 0 entries (0 stale), 0 bytes"
    ok(*SMALL)
    stored = entries(cache_root)
    assert stored
    size = sum(p.stat().st_size for p in stored)
    assert _info_head(cache_root) == f"{cache_root}: {len(stored)} entries (0 stale), {size:,} bytes"
    assert ok("cache", "clear") == f"removed {len(stored)} entries from {cache_root}\n"
    assert entries(cache_root) == []
    assert _info_head(cache_root) == f"{cache_root}: 0 entries (0 stale), 0 bytes"


def test_cli_corrupted_entry_warns_once_and_rebuilds(cache_root, chunk_spy):
    first = ok(*SMALL)
    chunk_spy.calls.clear()
    # the chunk's entry: the one whose payload carries rows
    (chunk_entry,) = [p for p in entries(cache_root) if '"blocks"' in p.read_text(encoding="utf-8")]
    _truncate(chunk_entry)

    r = run(*SMALL)
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stdout == first
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(WARNING) and str(chunk_entry) in lines[0]
    assert len(chunk_spy.calls) == 1  # only the damaged chunk was computed again
    assert_valid_entry(chunk_entry)
    assert ok(*SMALL) == first  # and the run after that is quiet again


@pytest.fixture
def uncreatable_cache(tmp_path, monkeypatch) -> Path:
    """$XDG_CACHE_HOME below a regular file: the cache directory can never be made."""
    plain = tmp_path / "plain-file"
    plain.write_text("not a directory\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(plain / "xdg"))
    return cache.default_dir()


def test_cli_unwritable_cache_runs_without_it(uncreatable_cache):
    expected = ok(*SMALL, "--no-cache")
    r = run(*SMALL)
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stdout == expected
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines and all(line.startswith(WARNING) for line in lines), r.stderr
    assert any("without the cache" in line and str(uncreatable_cache) in line for line in lines), r.stderr


def test_cli_unwritable_cache_warns_once(uncreatable_cache):
    """Regression: every entry looked up under the missing directory used to add a warning of its own."""
    r = run(*SMALL)
    assert r.exit_code == 0
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(WARNING) and "without the cache" in lines[0]


# ---------------------------------------------------------------- --jobs


class RecordingPool:
    """Records that the process pool was used (wraps the real one), and that its workers start
    from a fresh interpreter ("forkserver"), not a fork of this one: the fixtures say fork is
    unsafe here (other test modules load JAX, whose threads make it so). Fresh workers are also
    the stricter test that a chunk needs nothing but its arguments."""

    made: ClassVar[list[int]] = []

    def __new__(cls, *args, **kw):
        cls.made.append(kw.get("max_workers", args[0] if args else None))
        assert kw.get("mp_context") is multiprocessing.get_context("forkserver")
        return ProcessPoolExecutor(*args, **kw)


@pytest.fixture
def pool_spy(monkeypatch):
    import concurrent.futures

    RecordingPool.made = []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(heap, "can_fork", lambda: False)
    monkeypatch.setattr(sweep, "POOL_MIN_POINTS", 0)  # these grids are small: make the pool run anyway
    return RecordingPool.made


MULTI = Settings(points=3 * CHUNK + 17, range=(-60.0, 60.0), keep=11)


FORKED_GRID = r"""
import concurrent.futures, json, multiprocessing, threading
from dataclasses import asdict
from bce_audit import heap, records, sweep

real, made = concurrent.futures.ProcessPoolExecutor, []
def recording(*args, **kw):
    made.append(kw["mp_context"].get_start_method())
    return real(*args, **kw)
concurrent.futures.ProcessPoolExecutor = recording
real_forked, searched = heap.forked, []
def forked(fn):
    searched.append(1)
    return real_forked(fn)
heap.forked = forked

s = records.Settings(points=2 * sweep.CHUNK + 17, range=(-60.0, 60.0), keep=11, dtypes=("float32",),
                     grad=True)  # (notes: two formulas have no gradient)
serial = sweep.run_sweep(s, jobs=1)
assert made == []
forked = sweep.run_sweep(s, jobs=2)
same = [repr(asdict(r)) for r in serial.keypoints + serial.worst + serial.rows] == [
    repr(asdict(r)) for r in forked.keypoints + forked.worst + forked.rows] and serial.notes == forked.notes
t = threading.Thread(target=threading.Event().wait, args=(5,), daemon=True)
t.start()  # a thread running (or a framework loaded): no fork
sweep.run_sweep(s, jobs=2)
print(json.dumps({"made": made, "same": same, "worst": len(forked.worst), "searched": len(searched),
                  "keypoints": len(forked.keypoints), "notes": len(forked.notes)}))
"""


@pytest.mark.slow  # three sweeps of 131,089 points
def test_grid_chunks_forked_equal_serial():
    """A process with no other thread forks its grid workers (milliseconds: any grid of two
    chunks pays) and a child that searches the key points meanwhile; the results are the serial
    ones. With a thread running, a forkserver's fresh interpreters do the work only where they
    pay (not this grid: serial). (A fresh interpreter: this test process may hold JAX, where no
    fork is made.)"""
    r = subprocess.run([sys.executable, "-c", FORKED_GRID], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["made"] == ["fork"]
    assert doc["searched"] == 1  # the key points, beside the grid, once: not with a thread running
    assert doc["same"] and doc["worst"] > 30 and doc["keypoints"] > 30 and doc["notes"] == 2


@pytest.mark.slow  # a CLI run in a fresh interpreter
def test_nothing_buffered_is_written_twice_by_forked_children():
    """The CSV header sits in stdout's buffer when the key points are searched in a forked child,
    whose own workers (several dtypes) flush what they inherited: the buffers are flushed
    before any fork. (PYTHONUNBUFFERED would hide it: unset here.)"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    outs = []
    for jobs in ("2", "1"):
        r = subprocess.run([sys.executable, "-m", "bce_audit", "sweep", "--dtype", "float16", "--dtype",
                            "bfloat16", "--formula", "naive", "--points", str(2 * CHUNK + 1), "--rows", "all",
                            "--format", "csv", "--jobs", jobs, "--no-cache"],
                           capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, r.stderr
        outs.append(r.stdout)
    lines = outs[0].splitlines()
    assert lines[0].startswith("dtype,") and lines.count(lines[0]) == 1
    assert outs[0] == outs[1]


FORKED_CALL = r"""
import json, os, signal, time
from bce_audit import heap

with heap.forked(lambda: (os.getpid(), [1.5, "x"])) as later:
    pid, value = later()
ours = pid != os.getpid() and value == [1.5, "x"]

def caught(fn, kind):  # the exception of kind that fn's forked result raises (None: none)
    try:
        with heap.forked(fn) as later:
            later()
    except kind as e:
        return e
    return None

def fails():
    raise ValueError("no such dtype")

def dies():
    os.kill(os.getpid(), signal.SIGKILL)

class Odd(Exception):  # pickles, but will not unpickle (its __init__ wants two arguments)
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")
def odd():
    raise Odd(1, 2)

def deep():
    raise KeyError("in the child")

failed, killed, odd_one, deeper = (caught(fails, ValueError), caught(dies, RuntimeError),
                                   caught(odd, RuntimeError), caught(deep, KeyError))
raised = failed and str(failed)
died = killed and str(killed)
unread = odd_one and str(odd_one).split(":")[0]
cause = deeper is not None and "in deep" in str(deeper.__cause__) and "KeyError" in str(deeper.__cause__)

with heap.forked(lambda: time.sleep(60)) as later:  # never collected: killed on leaving
    pass
import sys
sys.stdout, saved = None, sys.stdout  # no stdout at all (a daemon): the flush before the fork skips it
with heap.forked(lambda: 7) as later:
    seven = later()
sys.stdout = saved

def no_fork():
    raise BlockingIOError(11, "Resource temporarily unavailable")
real_fork, os.fork = os.fork, no_fork  # a limit on processes: the work is done here instead
with heap.forked(lambda: os.getpid()) as later:
    here = later() == os.getpid()
os.fork = real_fork
print(json.dumps({"ours": ours, "raised": raised, "died": died, "unread": unread, "cause": cause,
                  "seven": seven, "here": here}))
"""


EARLY = r"""
import json
from bce_audit import keypoints, records, sweep

def fails(*args, **kw):
    raise ValueError("the key-point search failed")
keypoints.keypoints = fails  # (the forked child runs it)
chunks = []
s = records.Settings(points=12 * sweep.CHUNK, range=(-60.0, 60.0), keep=11, dtypes=("float32",))
try:
    sweep.run_sweep(s, jobs=2, progress=chunks.append)
    told = None
except ValueError as e:
    told = str(e)
print(json.dumps({"told": told, "chunks": len(chunks)}))
"""


def test_a_failed_key_point_search_is_told_before_the_grid_ends():
    """The key points are searched by a forked child beside the grid: its failure is raised
    after the next chunk, not after a grid that may take hours."""
    r = subprocess.run([sys.executable, "-c", EARLY], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["told"] == "the key-point search failed"
    assert 1 <= out["chunks"] < 12


def test_forked_gives_the_childs_result_or_its_exception():
    """`heap.forked`: the value, the exception, a child killed mid-way (one line), and a child
    left behind killed on leaving the block (the script would wait a minute otherwise)."""
    r = subprocess.run([sys.executable, "-c", FORKED_CALL], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ours": True, "raised": "no such dtype",
                                    "died": "a forked worker died before it gave its result",
                                    "unread": "a forked worker's result could not be read", "cause": True,
                                    "seven": 7, "here": True}


@pytest.mark.slow  # two sweeps of 200,000 points
def test_small_fast_grids_run_without_a_pool(monkeypatch):
    import concurrent.futures

    RecordingPool.made = []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
    monkeypatch.setattr(heap, "can_fork", lambda: False)  # (a forked pool pays for any grid of two chunks)
    sweep.run_sweep(MULTI, jobs=2)
    assert RecordingPool.made == []  # under POOL_MIN_POINTS on the fast baseline: serial
    monkeypatch.setattr(sweep, "CHUNK", 100)
    sweep.run_sweep(replace(MULTI, points=250, reference="mpmath", formulas=("naive",)), jobs=2)
    assert RecordingPool.made == [2]  # the mpmath baseline always pays for the pool


@pytest.mark.slow  # a process pool over a multi-chunk grid
def test_jobs_2_equals_jobs_1(pool_spy):
    one = sweep.run_sweep(MULTI, jobs=1)
    assert pool_spy == []
    two = sweep.run_sweep(MULTI, jobs=2)
    assert pool_spy == [2]
    assert_same_result(one, two)
    assert one.rows and one.worst
    assert {w.points for w in two.worst} == {MULTI.points}
    assert len(one.rows) == 11 * len(one.worst)


def test_cli_jobs_1_and_2_give_identical_json(pool_spy):
    args = ("sweep", "--points", str(2 * CHUNK + 5), "--range", "-30:30", "--dtype", "float16",
            "--formula", "keras3", "--formula", "logits-stable", "--format", "json", "--rows", "9",
            "--no-cache")
    one = ok(*args, "--jobs", "1")
    two = ok(*args, "--jobs", "2")
    assert pool_spy == [2]
    assert one == two
    doc = strict_json(one)
    assert {w["points"] for w in doc["worst"]} == {2 * CHUNK + 5}


@pytest.mark.parametrize("jobs", ["0", "-3"])
def test_cli_jobs_below_1_is_a_usage_error(jobs, chunk_spy):
    assert_usage_error(run(*SMALL[:-2], "--jobs", jobs), "--jobs")
    assert chunk_spy.calls == []


# ---------------------------------------------------------------- key points: one entry per dtype, forked

TWO_DTYPES = ("points", "--dtype", "float16", "--dtype", "float8_e5m2", "--format", "json", "--jobs", "1")


def test_points_cache_one_entry_per_dtype(cache_root, monkeypatch):
    spy = Spy(keypoints.dtype_points)
    monkeypatch.setattr(keypoints, "dtype_points", spy)
    first = ok(*TWO_DTYPES)
    assert [c[0] for c in spy.calls] == ["float16", "float8_e5m2"]
    assert len(entries(cache_root)) == 2
    spy.calls.clear()
    assert ok(*TWO_DTYPES) == first
    assert spy.calls == []
    # another selection is another entry; the cached dtype is not searched again
    ok("points", "--dtype", "float16", "--format", "json", "--jobs", "1", "--label", "0")
    assert [c[0] for c in spy.calls] == ["float16"]
    assert len(entries(cache_root)) == 3
    spy.calls.clear()
    ok("points", "--dtype", "float8_e5m2", "--dtype", "float16", "--format", "json", "--jobs", "1")
    assert spy.calls == []


def test_points_cache_entry_of_another_shape_is_rebuilt(cache_root):
    first = ok("points", "--dtype", "float8_e5m2", "--format", "json", "--jobs", "1")
    (entry,) = entries(cache_root)
    store = cache.Cache(cache_root)
    store.put(entry.stem, {"keypoints": [{"not": "a key point"}], "notes": []})  # valid checksum
    r = run("points", "--dtype", "float8_e5m2", "--format", "json", "--jobs", "1")
    assert r.exit_code == 0, (r.stderr, r.exception)
    assert r.stdout == first
    assert r.stderr.startswith(WARNING) and "does not fit this version" in r.stderr and entry.stem in r.stderr
    assert_valid_entry(entry)
    assert json.loads(entry.read_text(encoding="utf-8"))["payload"]["keypoints"][0]["dtype"] == "float8_e5m2"


FORKED_POINTS = r"""
import json, multiprocessing
from dataclasses import asdict
from bce_audit import dtypes, formulas, keypoints

ctx = type(multiprocessing.get_context("fork"))
real, pools = ctx.Pool, []
def recording(self, *args, **kw):
    pools.append(args)
    return real(self, *args, **kw)
ctx.Pool = recording

args = (dtypes.NAMES, "per-op", formulas.NAMES, (1e-7, 1e-3), (1, 0, "pair"), (1e-3, 1e-2))
serial = keypoints.keypoints(*args, jobs=1)
assert pools == []
forked_notes = []
forked = keypoints.keypoints(*args, notes=forked_notes, jobs=2)
same = [repr(asdict(k)) for k in serial] == [repr(asdict(k)) for k in forked]
print(json.dumps({"pools": pools, "same": same,
                  "n": len(forked), "dtypes": sorted({k.dtype for k in forked}), "notes": forked_notes}))
"""


@pytest.mark.slow
def test_key_points_forked_equal_serial():
    """Forked workers search the dtypes side by side; the records are the same, in the same order.
    (Run in a fresh interpreter: this test process may hold JAX, where no fork is made.)"""
    r = subprocess.run([sys.executable, "-c", FORKED_POINTS], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["pools"] == [[2]]
    assert doc["same"] and doc["n"] > 300 and doc["notes"] == []
    assert doc["dtypes"] == sorted(keypoints.dtypes.NAMES)


SEL = keypoints.Selection("per-op", ("keras3",), (1e-7,), (1,), (1e-3,))


def test_forkable_only_without_frameworks_threads_or_user_code(monkeypatch):
    import threading
    import types

    monkeypatch.setattr(sys, "platform", "linux")
    for m in heap.FORK_UNSAFE:
        monkeypatch.delitem(sys.modules, m, raising=False)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert keypoints._forkable(SEL, None)
    assert not keypoints._forkable(SEL, backend=object())
    monkeypatch.setattr(keypoints.Selection, "has_user_code", True)
    assert not keypoints._forkable(SEL, None)
    monkeypatch.setattr(keypoints.Selection, "has_user_code", False)
    monkeypatch.setitem(sys.modules, "jax", types.ModuleType("jax"))
    assert not keypoints._forkable(SEL, None)
    monkeypatch.delitem(sys.modules, "jax")
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert not keypoints._forkable(SEL, None)
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert not keypoints._forkable(SEL, None)


def test_unforkable_process_searches_one_dtype_after_another(monkeypatch):
    monkeypatch.setattr(keypoints, "_forkable", lambda sel, backend: False)
    monkeypatch.setattr(type(multiprocessing.get_context("fork")), "Pool", None)  # a pool would fail
    spy = Spy(keypoints.dtype_points)
    monkeypatch.setattr(keypoints, "dtype_points", spy)
    kps = keypoints.keypoints(("float8_e5m2", "float8_e4m3fn"), *astuple_sel(SEL), jobs=2)
    assert [c[0] for c in spy.calls] == ["float8_e5m2", "float8_e4m3fn"]
    assert kps[0].dtype == "float8_e5m2" and kps[-1].dtype == "float8_e4m3fn"


def astuple_sel(sel: keypoints.Selection) -> tuple:
    return sel.mode, sel.formulas, sel.eps, sel.labels, sel.thresholds


@pytest.mark.parametrize("jobs", ["0", "-1"])
def test_points_jobs_below_1_is_a_usage_error(jobs):
    assert_usage_error(run("points", "--dtype", "float16", "--jobs", jobs), "--jobs")


# ---------------------------------------------------------------- resume


def test_resume_after_an_interrupted_run(tmp_path, monkeypatch):
    s = Settings(dtypes=("float16",), points=3 * CHUNK + 17, range=(-60.0, 60.0), keep=13,
                 formulas=("keras3", "logits-stable"))
    expected = sweep.run_sweep(s)  # no cache active: the uninterrupted reference

    original = sweep.audit_chunk
    failed = []

    def flaky(s, dtype, start, stop, index, *rest):
        if start == 2 * CHUNK and not failed:
            failed.append(start)
            raise KeyboardInterrupt  # the user stopped the run in the third chunk
        return original(s, dtype, start, stop, index, *rest)

    cache.use(cache.Cache(tmp_path))
    monkeypatch.setattr(sweep, "audit_chunk", flaky)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(s)
    assert failed == [2 * CHUNK]

    spy = Spy(original)
    monkeypatch.setattr(sweep, "audit_chunk", spy)
    cache.use(cache.Cache(tmp_path))
    resumed = sweep.run_sweep(s)
    assert [c[2] for c in spy.calls] == [2 * CHUNK, 3 * CHUNK]
    assert cache.active().warnings == []
    assert_same_result(resumed, expected)

    spy.calls.clear()
    assert_same_result(sweep.run_sweep(s), expected)
    assert spy.calls == []  # everything is in the cache now


def test_cache_key_tells_settings_apart(tmp_path, chunk_spy):
    """A cached chunk is only reused for the very same work."""
    cache.use(cache.Cache(tmp_path))
    base = Settings(dtypes=("float16",), points=300, formulas=("keras3",), label="1")
    sweep.run_sweep(base)
    assert len(chunk_spy.calls) == 1
    for other in (replace(base, range=(-10.0, 10.0)), replace(base, eps=(1e-4,)),
                  replace(base, mode="upcast"), replace(base, dtypes=("bfloat16",)), replace(base, keep=7)):
        chunk_spy.calls.clear()
        fresh = sweep.run_sweep(other)
        assert len(chunk_spy.calls) == 1, other
        cache.use(None)
        assert_same_result(fresh, sweep.run_sweep(other))
        cache.use(cache.Cache(tmp_path))


# ---------------------------------------------------------------- Dask


@pytest.mark.slow  # a Dask cluster of processes
def test_dask_local_cluster_equals_local_run(monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    from bce_audit import distributed as bce_distributed

    spy = Spy(bce_distributed.run)
    monkeypatch.setattr(bce_distributed, "run", spy)
    s = Settings(dtypes=("float32",), points=3 * CHUNK + 101, range=(-60.0, 60.0), keep=9,
                 formulas=("keras3", "logits-stable"))
    local = sweep.run_sweep(s)
    args = ("sweep", "--dtype", "float32", "--points", str(s.points), "--range", "-60:60", "--rows", "9",
            "--formula", "keras3", "--formula", "logits-stable", "--format", "json", "--no-cache")
    local_json = ok(*args, "--jobs", "1")
    assert spy.calls == []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, scheduler_port=0,
                                  dashboard_address=":0") as cluster:
        remote = sweep.run_sweep(s, scheduler=cluster.scheduler_address)
        remote_json = ok(*args, "--scheduler", cluster.scheduler_address)
    assert [(c[0], len(c[2])) for c in spy.calls] == [(cluster.scheduler_address, 4)] * 2
    assert_same_result(local, remote)
    assert {w.points for w in remote.worst} == {s.points}
    assert remote_json == local_json


@pytest.mark.slow
def test_dask_worker_with_threads_equals_local_run(monkeypatch):
    """A `dask worker` runs as many threads as cores by default: chunks run side by side in one process.

    Regression: mpmath's precision is one global per process, so chunks in one worker's threads
    raced on it (values computed at 53 bits, mp.prec left at 128); each thread now computes in an
    mpmath context of its own (see also test_distributed.py).
    """
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.setattr(sweep, "CHUNK", 1500)  # chunking never changes the result; small chunks overlap more
    s = Settings(dtypes=("float16",), points=8 * 1500, range=(-30.0, 30.0), formulas=("keras3",), label="1",
                 reference="mpmath")
    local = sweep.run_sweep(s)
    before = mp.prec
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=4, processes=False, scheduler_port=0,
                                      dashboard_address=":0") as cluster:
            remote = sweep.run_sweep(s, scheduler=cluster.scheduler_address)
        after = mp.prec
    finally:
        mp.prec = before  # conftest checks for leaks after the test; this one is the bug itself
    assert after == before, "a worker thread left mpmath's global precision changed"
    assert_same_result(local, remote)


@pytest.mark.slow  # starts Dask
def test_cli_unreachable_scheduler_is_a_usage_error(monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    real = distributed.Client

    def quick(address, timeout=None, **kw):  # the code waits 10 s; 1 s shows the same failure
        return real(address, timeout=1, **kw)

    monkeypatch.setattr(distributed, "Client", quick)
    r = run(*SMALL, "--no-cache", "--scheduler", "tcp://127.0.0.1:1")
    assert_usage_error(r, "--scheduler tcp://127.0.0.1:1", "scheduler")


# ---------------------------------------------------------------- --exhaustive


def test_exhaustive_float16_covers_every_finite_value():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = bits[np.isfinite(bits)]
    n = np.unique(finite).size  # -0 and +0 are one value
    assert n == (1 << 16) - 2 * (1 << 10) - 1
    doc = strict_json(ok("sweep", "--exhaustive", "--dtype", "float16", "--format", "json", "--rows", "7",
                         "--no-cache"))
    assert doc["settings"]["exhaustive"] is True
    assert doc["worst"] and {w["points"] for w in doc["worst"]} == {n}
    series: dict[tuple, list] = {}
    for r in doc["rows"]:
        series.setdefault((r["quantity"], r["formula"], r["eps"], str(r["label"])), []).append(r["x"])
    assert len(series) == len(doc["worst"])
    for xs in series.values():
        assert len(xs) == 7
        assert xs[0] == float(finite.min()) and xs[-1] == float(finite.max())
        assert xs == sorted(xs)


def test_exhaustive_float32_is_a_usage_error():
    assert_usage_error(run("sweep", "--exhaustive", "--dtype", "float32", "--format", "json"), "float32")


# ---------------------------------------------------------------- big grids


def _no_sweep(s, with_rows=True, progress=None, jobs=1, scheduler=None, sink=None):
    if progress is not None:
        progress(sum(sweep.grid_size(s, d) for d in s.dtypes))
    return records.SweepResult(s, [])


def test_big_json_grid_keeps_rows_and_every_row_streams(monkeypatch):
    called = []
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **kw: called.append(1) or _no_sweep(*a, **kw))
    big = ("sweep", "--points", "2000000", "--format", "json")
    assert_usage_error(run(*big, "--rows", "all"), "--rows all", "jsonl")
    assert_usage_error(run(*big, "--rows", "1001"), "--rows 1001", "2 to 1000")
    assert called == []
    doc = strict_json(ok(*big, "--rows", "5"))
    assert called == [1]
    assert doc["settings"]["points"] == 2_000_000
    ok("sweep", "--points", "2000000")  # the table keeps its sample
    ok(*big[:-1], "jsonl", "--rows", "all")  # a stream may carry every row
    assert called == [1, 1, 1]


def test_rows_keeps_an_even_spread_of_a_big_grid():
    s = Settings(dtypes=("float16",), points=CHUNK + 3, formulas=("keras3",), label="1", keep=5)
    r = sweep.run_sweep(s)
    grid = sweep.grid_slice(s, "float16", 0, s.points)
    want = [float(grid[i]) for i in records.sample_indices(s.points, 5)]
    assert len(r.worst) == 3
    for w in r.worst:
        xs = [row.x for row in r.rows if (row.quantity, row.formula) == (w.quantity, w.formula)]
        assert xs == want
        assert w.points == s.points


# ---------------------------------------------------------------- progress


def test_progress_bar_is_a_no_op_off_a_terminal(capsys):
    with report.progress_bar(100, enabled=True) as advance:
        advance(50)
        advance(50)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


def _sweep_on_a_terminal(monkeypatch, *extra: str, points: int = cli.PROGRESS_POINTS,
                         fake=_no_sweep) -> tuple[int, str, str]:
    """Run the sweep command with stderr on a (fake) terminal and a run that costs nothing."""
    monkeypatch.setattr(sweep, "run_sweep", fake)
    monkeypatch.setenv("TERM", "xterm")
    err, out = FakeTerminal(), io.StringIO()
    with pytest.MonkeyPatch.context() as streams:
        streams.setattr(sys, "stderr", err)
        streams.setattr(sys, "stdout", out)
        argv = ["sweep", "--points", str(points), "--format", "json", "--rows", "5", "--no-cache", *extra]
        code = cli.cli.main(argv, prog_name="bce-audit", standalone_mode=False)
    return code, out.getvalue(), err.getvalue()


def test_progress_bar_shows_on_a_terminal(monkeypatch):
    code, out, err = _sweep_on_a_terminal(monkeypatch)
    assert code == 0
    strict_json(out)
    assert "auditing" in err and f"{cli.PROGRESS_POINTS:,}" in err, repr(err)
    assert "\r" in err or "\x1b" in err, repr(err)


def test_progress_bar_starts_no_thread(monkeypatch):
    """The bar is drawn at each advance, by no thread of its own: the run may fork its workers."""
    seen = []

    def counting(s, progress=None, **kw):
        seen.append(threading.active_count())
        return _no_sweep(s, progress=progress, **kw)

    before = threading.active_count()
    code, _, err = _sweep_on_a_terminal(monkeypatch, fake=counting)
    assert code == 0 and "auditing" in err
    assert seen == [before]


def test_no_bar_for_a_short_run(monkeypatch):
    code, out, err = _sweep_on_a_terminal(monkeypatch, points=cli.PROGRESS_POINTS - 1)
    assert code == 0
    strict_json(out)
    assert err == ""


def test_quiet_never_shows_a_bar(monkeypatch):
    code, out, err = _sweep_on_a_terminal(monkeypatch, "--quiet")
    assert code == 0
    strict_json(out)
    assert err == ""


def test_worst_records_the_worst_point_and_the_first_nonfinite_one():
    """Each Worst carries what the gate reports: the largest abs error, the computed and exact values
    at the worst input, and the first non-finite result, as one pass over the rows finds them."""
    s = Settings(dtypes=("float16",), points=(CHUNK >> 4) + 77, range=(-30.0, 30.0), eps=(1e-7,), keep=None)
    assert sweep.chunk_size(s) < s.points  # two chunks, merged
    r = sweep.run_sweep(s)
    assert any(w.nonfinite for w in r.worst)
    for w in r.worst:
        rows = [x for x in r.rows if (x.quantity, x.formula, x.eps, x.label) == (w.quantity, w.formula, w.eps,
                                                                                   w.label)]
        assert len(rows) == w.points
        finite = [x for x in rows if math.isfinite(x.value)]
        bad = [x for x in rows if not math.isfinite(x.value)]
        assert w.max_abs == max(x.abs_err for x in finite)
        top = max(finite, key=lambda x: x.ulp_err)
        assert (w.x, w.x_dtype, w.value, w.exact) == (top.x, top.x_dtype, top.value, top.exact)
        if bad:
            assert w.nonfinite_x == bad[0].x_dtype
            assert repr((w.nonfinite_value, w.nonfinite_exact)) == repr((bad[0].value, bad[0].exact))
        else:
            assert w.nonfinite_x is None


@pytest.mark.slow  # two sweeps of 196,625 points
def test_chunks_leave_no_reference_cycles():
    """A chunk's evaluators and their memos go with the chunk, freed by reference counts: a cycle
    (an evaluator holding kernels that held it) kept every remembered array until the cyclic
    collector happened to run, and the peak RSS of a float32 sweep grew with its grid (524 MB
    at 10^7 points)."""
    import gc

    s = replace(MULTI, dtypes=("float32",), mode="native")
    sweep.audit_grid(s, "float32", set())  # imports and module-level caches made before counting
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        sweep.audit_grid(s, "float32", set())
        gc.collect()
        cyclic = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert "Evaluator" not in cyclic and "KernelMemo" not in cyclic, sorted(set(cyclic))
