"""Output targets and streaming formats: what `-o` writes to, and rows written chunk by chunk."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from cli_support import ok

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


def test_output_onto_a_symlink_to_a_regular_file_replaces_the_link_not_the_file(tmp_path):
    target = tmp_path / "kept.txt"
    target.write_text("mine\n")
    link = tmp_path / "out.json"
    link.symlink_to(target)
    ok("dtypes", "--format", "json", "-o", str(link))
    assert target.read_text() == "mine\n"
    assert not link.is_symlink() and link.read_text().startswith("{")
