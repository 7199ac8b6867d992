"""Atomic file writes: a temporary file beside the target, renamed over it when complete.

An interrupted run never leaves a half-written file (a power cut may leave a new file empty,
never a replaced one), and the finished file gets the ordinary permissions (the umask), not
mkstemp's private 0600. A target that exists and is not a regular
file (``/dev/null``, a FIFO, a terminal, or a symlink to one) is written to directly: renaming
over it would replace the device with a plain file.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from typing import IO

MAX_INPUT = 4 << 20  # bytes a config or a baseline may have: a file (or a stream) past it is refused


class TooLarge(ValueError):
    """An input past MAX_INPUT bytes."""


def read_limited(path: str, limit: int = MAX_INPUT) -> bytes:
    """A file's bytes, read up to ``limit``: a bigger file, or a stream with no end, is refused
    after ``limit`` + 1 bytes instead of filling the memory."""
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(f"larger than {limit / (1 << 20):g} MiB; not a config or baseline bce-audit wrote")
    return data


class WriteError(OSError):
    """The target cannot be written; the message names it."""


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", suffix: str = "", durable: bool = True) -> Iterator[IO]:
    """Open a temporary file for writing; on success it replaces ``path``, on failure it goes.

    ``durable``: where ``path`` already holds a file, fsync before the rename, so that a power
    cut cannot swap that file for an empty one (a cache, which checks its entries anyway, can
    skip it). A new file has nothing to protect: the OS writes it back as it writes any file,
    and a gigabyte of rows does not wait for the disk.
    """
    if _special(path):
        try:
            f = open(path, mode, encoding=None if "b" in mode else "utf-8")  # noqa: SIM115
        except OSError as e:
            raise WriteError(f"cannot write {path!r}: {e.strerror or e}") from None
        with f:
            yield f
        return
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".bce-audit-", suffix=suffix, dir=directory)
    except OSError as e:
        raise WriteError(f"cannot write {path!r}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            if durable and os.path.lexists(path):  # asked now: a file may have appeared meanwhile
                os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _special(path: str) -> bool:
    """An existing target that is not a regular file or a directory (a device, a FIFO, a socket)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def write_text(path: str, text: str, durable: bool = True) -> None:
    with atomic_open(path, durable=durable) as f:
        f.write(text)
