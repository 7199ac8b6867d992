"""Output targets and streaming formats: what `-o` writes to, and rows written chunk by chunk."""

from __future__ import annotations

import csv
import json
import math
import os
import stat
import subprocess
import sys
import threading
from dataclasses import asdict, fields

import pytest
from cli_support import assert_usage_error, ok, run, strict_json

from bce_audit import records, sweep
from bce_audit.records import Settings

# ---------------------------------------------------------------- targets that are not regular files


def test_issue_10_output_onto_a_fifo_writes_through_it(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        ok("dtypes", "--format", "json", "-o", str(fifo))
    finally:
        reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file renamed over it
    assert got and got[0].startswith(b"{") and got[0] == ok("dtypes", "--format", "json").encode()
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no temporary file left beside it


def test_issue_10_output_onto_a_char_device_keeps_the_device(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mknod of a character device needs root")
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # the same device as /dev/null
        null.write_bytes(b"probe")
    except OSError as e:  # a nodev mount, or a container without mknod
        pytest.skip(f"cannot make or open a device here: {e}")
    link = tmp_path / "link"
    link.symlink_to(null)
    ok("dtypes", "-o", str(null))
    ok("dtypes", "-o", str(link))
    assert stat.S_ISCHR(os.lstat(null).st_mode)
    assert os.path.islink(link) and os.readlink(link) == str(null)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "null"]


def test_a_replaced_file_is_synced_first_a_new_one_is_not(tmp_path, monkeypatch):
    """fsync protects the file a write replaces (a power cut cannot swap it for an empty one);
    a new file has nothing to protect and does not wait for the disk."""
    from bce_audit import files

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    target = tmp_path / "rows.jsonl"
    files.write_text(str(target), "first\n")
    assert synced == [] and target.read_text() == "first\n"
    files.write_text(str(target), "second\n")
    assert len(synced) == 1 and target.read_text() == "second\n"
    files.write_text(str(target), "third\n", durable=False)  # a cache entry
    assert len(synced) == 1 and target.read_text() == "third\n"
    late = tmp_path / "late.jsonl"  # a file that appears while the rows are written is protected too
    with files.atomic_open(str(late)) as f:
        late.write_text("someone else's\n")
        f.write("rows\n")
    assert len(synced) == 2 and late.read_text() == "rows\n"


def test_output_onto_a_symlink_to_a_regular_file_replaces_the_link_not_the_file(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("mine\n")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    ok("dtypes", "--format", "json", "-o", str(link))
    assert target.read_text() == "mine\n"
    assert not link.is_symlink() and link.read_text().startswith("{")


# ---------------------------------------------------------------- streaming formats

STREAM = ("sweep", "--points", "301", "--dtype", "float16", "--dtype", "float32", "--eps", "1e-7",
          "--eps", "1e-3", "--grad", "--jobs", "1")


def _memory_rows() -> list[dict]:
    """The rows of the same sweep, made in memory and cleaned as the JSON document cleans them."""
    s = Settings(dtypes=("float16", "float32"), eps=(1e-7, 1e-3), points=301, grad=True)
    return [json.loads(records.to_json(asdict(r))) for r in sweep.run_sweep(s).rows]


@pytest.mark.slow
def test_issue_10_jsonl_rows_equal_the_in_memory_rows():
    lines = ok(*STREAM, "--format", "jsonl").splitlines()
    assert [strict_json(line) for line in lines] == _memory_rows()
    assert all(list(json.loads(line)) == sorted(json.loads(line)) for line in lines[:50])  # sorted keys


@pytest.mark.slow
def test_jsonl_written_in_order_and_a_formatting_error_told(monkeypatch):
    """Blocks are formatted on several threads and written in their order; one that fails to
    format stops the writing (nothing after it is written) and is raised by the next write or
    by close."""
    import io

    from bce_audit import compiled, streams

    if not compiled.active():
        pytest.importorskip("pyarrow")

    s = Settings(dtypes=("float16",), formulas=("naive", "keras3"), points=301, keep=None)
    blocks = [b for r in sweep.run_chunks(s, "float16", None) for b in r.blocks]
    f = io.StringIO()
    w = streams.writer("jsonl", f)
    w.write(blocks)
    w.close()
    lines = f.getvalue().splitlines()
    assert len(lines) == sum(len(b) for b in blocks)
    want = [(b.formula, b.label) for b in blocks for _ in range(len(b))]
    assert [(json.loads(x)["formula"], json.loads(x)["label"]) for x in lines] == want

    real = streams.JsonLines._lines

    def fails_third(self, b, memo):
        if b is blocks[2]:
            raise RuntimeError("formatting failed")
        return real(self, b, memo)

    monkeypatch.setattr(streams.JsonLines, "_lines", fails_third)
    f = io.StringIO()
    w = streams.writer("jsonl", f)
    w.write(blocks)
    with pytest.raises(RuntimeError, match="formatting failed"):
        w.close()
    assert len(f.getvalue().splitlines()) == len(blocks[0]) + len(blocks[1])


def _blocks_of_chunks(chunks: int) -> list[list]:
    points = chunks * sweep.chunk_size(Settings(keep=None))
    s = Settings(dtypes=("float16",), formulas=("naive",), points=points, keep=None)
    return [r.blocks for r in sweep.run_chunks(s, "float16", None)]


def test_parquet_encoding_error_told_and_no_thread_left(tmp_path, monkeypatch):
    """Chunks are encoded on a thread of their own: one that fails is raised by a later write or
    by close, what was queued after it is dropped, and no thread is left running either way."""
    pytest.importorskip("pyarrow")
    import threading

    from bce_audit import streams

    chunks = _blocks_of_chunks(4)
    before = threading.active_count()
    with (tmp_path / "rows.parquet").open("wb") as f:
        w = streams.writer("parquet", f)
        real, calls = w.w.write_table, []

        def fails_second(table):
            calls.append(len(table))
            if len(calls) == 2:
                raise OSError("disk full")
            return real(table)

        monkeypatch.setattr(w.w, "write_table", fails_second)
        with pytest.raises(OSError, match="disk full"):
            for blocks in chunks:
                w.write(blocks)
            w.close()
        assert threading.active_count() == before
        assert len(calls) == 2  # (nothing encoded after the failure)
        w.abort()  # (as the CLI does when the run fails: safe after the error)
    assert threading.active_count() == before


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv"])
def test_writers_let_go_of_their_threads_after_each_dtype(tmp_path, fmt):
    """A writer's threads would keep the next dtype's grid workers from being forked
    (`heap.can_fork`): each dtype's grid ends with its writer paused, every row written."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    import threading

    from bce_audit import streams

    s = Settings(dtypes=("float16",), formulas=("naive",), points=3000, keep=None)
    before = threading.active_count()
    with (tmp_path / f"rows.{fmt}").open("wb" if fmt == "parquet" else "w") as f:
        w = streams.writer(fmt, f)
        sweep.audit_grid(s, "float16", None, sink=w)
        assert threading.active_count() == before
        sweep.audit_grid(s, "float16", None, sink=w)
        w.close()
    assert threading.active_count() == before
    if fmt == "jsonl":
        assert len((tmp_path / "rows.jsonl").read_text().splitlines()) == 2 * 3000 * 5  # 5 series


def test_issue_10_csv_rows_equal_the_in_memory_rows(tmp_path):
    out = tmp_path / "rows.csv"
    ok(*STREAM, "-o", str(out))  # the format is inferred from the extension
    with out.open(newline="") as f:
        got = list(csv.DictReader(f))
    want = _memory_rows()
    assert len(got) == len(want) > 10_000
    for g, w in zip(got, want, strict=True):
        assert list(g) == [f.name for f in fields(records.Row)]
        for k, v in w.items():
            cell = g[k]
            if v is None:
                assert cell == "", (k, g)
            elif isinstance(v, float):
                assert float(cell) == v and cell == repr(v), (k, cell, v)
            else:
                assert cell == str(v), (k, cell, v)


@pytest.mark.slow
def test_issue_10_parquet_rows_equal_the_in_memory_rows(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "rows.parquet"
    ok(*STREAM, "-o", str(out))
    table = pq.read_table(out).to_pylist()
    want = _memory_rows()
    assert len(table) == len(want)
    words = {"inf": math.inf, "-inf": -math.inf}
    for g, w in zip(table, want, strict=True):
        for k, v in w.items():
            if k == "label":
                assert g[k] == (None if v is None else str(v))
            elif isinstance(v, str) and v in ("inf", "-inf", "nan") and k not in ("dtype", "mode"):
                assert (math.isnan(g[k]) if v == "nan" else g[k] == words[v]), (k, g[k], v)
            else:
                assert g[k] == v, (k, g[k], v)


@pytest.mark.parametrize(("fmt", "reference", "jobs"), [("jsonl", "fast", 1), ("parquet", "fast", 1),
                                                       ("csv", "fast", 2), ("jsonl", "mpmath", 2)])
def test_a_writer_on_every_core_gets_its_chunks_computed_here(monkeypatch, tmp_path, fmt, reference, jobs):
    """JSON Lines formats on every core itself, and Parquet encodes on a thread of its own: on
    the fast baseline a pool's workers would only add the pickling of every row, so their grid
    is computed in this process. CSV's writer is this thread, and on the mpmath baseline
    computing is what costs: the grid's chunks may go to the pool there."""
    pytest.importorskip("pyarrow")
    monkeypatch.setattr(sweep, "run_chunks", spy := _RunChunksSpy(sweep.run_chunks))
    monkeypatch.setattr(sweep, "_execute", _in_process)
    ok("sweep", "--points", "101", "--formula", "naive", "--rows", "all", "--format", fmt, "--jobs", "2",
       "--reference", reference, "--no-cache", "-o", str(tmp_path / f"rows.{fmt}"))
    assert spy.jobs == [jobs]


def test_every_row_in_memory_is_computed_here_on_the_fast_baseline(monkeypatch):
    """Rows kept in memory come back from a worker pickled: on the fast baseline that costs about
    what computing them does (measured: 10% slower with two workers than without)."""
    monkeypatch.setattr(sweep, "run_chunks", spy := _RunChunksSpy(sweep.run_chunks))
    monkeypatch.setattr(sweep, "_execute", _in_process)
    sweep.run_sweep(Settings(dtypes=("float16",), points=101, formulas=("naive",), keep=None), jobs=2)
    sweep.run_sweep(Settings(dtypes=("float16",), points=101, formulas=("naive",), keep=11), jobs=2)
    assert spy.jobs == [1, 2]


class _RunChunksSpy:
    """`sweep.run_chunks`, noting the jobs it is given."""

    def __init__(self, real):
        self.real, self.jobs = real, []

    def __call__(self, s, dtype, keep, jobs=1, *args, **kw):
        self.jobs.append(jobs)
        return self.real(s, dtype, keep, jobs, *args, **kw)


def _in_process(s, dtype, specs, ks, jobs, scheduler):
    """`sweep._execute` without a pool, whatever the jobs."""
    return ((k, sweep.audit_chunk(s, dtype, *spec)) for k, spec in zip(ks, specs, strict=True))


def test_json_document_keeps_the_rows_asked_for():
    doc = strict_json(ok("sweep", "--points", "301", "--format", "json", "--rows", "5", "--formula", "naive"))
    assert sorted({r["x"] for r in doc["rows"]}) == [-40.0, -20.0, 0.0, 20.0, 40.0]
    assert {"settings", "keypoints", "worst", "rows"} <= set(doc)


@pytest.mark.parametrize("fmt", ["json", "table", "markdown"])
def test_rows_all_is_for_the_streaming_formats(fmt):
    assert_usage_error(run("sweep", "--format", fmt, "--rows", "all"), "--rows all", "jsonl", "parquet")


@pytest.mark.parametrize(("args", "needles"), [
    (("sweep", "--rows", "many"), ("--rows", "'many'", "all")),
    (("sweep", "--rows", "1"), ("--rows 1", "2 to 1000")),
    (("sweep", "--format", "parquet"), ("parquet", "-o")),
    (("points", "-o", "points.parquet"), ("cannot write parquet", "table, json, csv, markdown")),
    (("dtypes", "-o", "d.csv"), ("cannot write csv", "table, json")),
])
def test_output_choices_are_checked_before_the_work(args, needles, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_usage_error(run(*args), *needles)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("name", "start"), [("p.json", "{"), ("p.csv", "dtype,"), ("p.md", "## bce-audit"),
                                             ("p.txt", "")])
def test_points_format_follows_the_output_extension(tmp_path, name, start):
    out = tmp_path / name
    ok("points", "--dtype", "float16", "-o", str(out))
    assert out.read_text().startswith(start)
    if name == "p.txt":
        assert "overflow" in out.read_text()


_HWM = """
import atexit, sys
from bce_audit.cli import main
def report(path=sys.argv[1]):
    with open("/proc/self/status") as f, open(path, "w") as out:
        out.write(next(line for line in f if line.startswith("VmHWM:")).split()[1])
atexit.register(report)
sys.argv = ["bce-audit", *sys.argv[2:]]
main()
"""


def _peak_rss_kb(args: list[str], cwd) -> int:
    """The command's own peak RSS (VmHWM, which exec resets: wait4's ru_maxrss would also count the
    pytest process it was forked from)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("no /proc: cannot read a process's peak RSS")
    hwm = cwd / "hwm"
    done = subprocess.run([sys.executable, "-c", _HWM, str(hwm), *args], cwd=cwd, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return int(hwm.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_issue_10_streaming_every_fp16_row_stays_in_bounded_memory(tmp_path, fmt):
    """1.7 million rows: the document would take gigabytes; the stream stays under 300 MB."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"rows.{fmt}"
    args = ["sweep", "--exhaustive", "--dtype", "float16", "--no-cache", "-q", "-j1", "-o", str(out)]
    peak = _peak_rss_kb(args, tmp_path)  # one process: the whole computation is measured
    assert 30 * 1024 < peak < 300 * 1024, f"peak RSS {peak / 1024:.0f} MB"  # measured, and bounded
    if fmt == "jsonl":
        with out.open() as f:
            n = sum(1 for _ in f)
        points = sweep.grid_size(Settings(dtypes=("float16",), exhaustive=True, range=(-math.inf, math.inf)),
                                 "float16")
        doc = strict_json(ok("sweep", "--dtype", "float16", "--points", "2", "--format", "json"))
        series = len(doc["worst"])
        assert n == points * series
