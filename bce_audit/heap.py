"""glibc's allocator, set up for the sweep's numpy temporaries (Linux; elsewhere nothing happens).

By default glibc serves each block over 128 KiB with an mmap of its own (the threshold then
creeps up to the sizes freed) and hands free memory at the top of the heap back to the system
as soon as there is twice that much. A chunk's float64 temporaries are 512 KiB each: most came
back as fresh pages, and the first touch of every page is a page fault. Measured, the faults
were half of an exhaustive float32 sweep's time (and of numpy's own time on such arrays).

Raising both thresholds lets freed blocks be reused: the process keeps up to `TRIM` of free
memory instead of returning it. Only the numbers' speed changes, never the numbers. The CLI and
its worker processes call `tune` once; a library user may call it too.

The worker processes' own set-up is here too: whether this process may fork them (`can_fork`),
and how they end with it (`die_with_parent` for a forked one, `worker` for a forkserver's).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, Generic, TypeVar

T = TypeVar("T")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # mallopt parameters (glibc malloc.h)
MMAP = 16 << 20    # blocks of 16 MiB or more still get an mmap of their own
TRIM = 128 << 20   # free memory kept for reuse before it goes back to the system


PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h)


def worker(main_pid: int) -> None:
    """A pool worker's set-up: the allocator as the CLI's, and an end with the main process (a
    worker left running after `kill -9` of it would compute for no one, and keep the forkserver
    and the resource tracker alive). Its parent is the forkserver, not the main process: a thread
    watches the main process and ends the worker once it is gone."""
    tune()
    threading.Thread(target=_watch, args=(main_pid,), name="bce-audit-watch", daemon=True).start()


def _watch(pid: int, every: float = 0.5) -> None:
    while _alive(pid):
        time.sleep(every)
    os._exit(1)


def _alive(pid: int) -> bool:
    """Whether a process runs: not gone, and not a zombie waiting for its parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


FORK_UNSAFE = ("torch", "jax", "tensorflow")  # frameworks whose own thread pools make fork unsafe


def can_fork() -> bool:
    """Whether this process may fork workers (instant, where a fresh interpreter costs about
    0.3 s): on Linux, with no other Python thread and no framework with a thread pool of its own
    loaded. numpy's OpenBLAS threads stay idle (no linear algebra here), and OpenBLAS quiesces
    them around a fork. A forked worker calls `die_with_parent`."""
    return (sys.platform.startswith("linux") and threading.active_count() == 1
            and not any(m in sys.modules for m in FORK_UNSAFE))


class Later(Generic[T]):
    """A result `forked` computes: called, it waits for it (or raises the exception it ended
    with); `raise_early` raises that exception as soon as it is known, without waiting."""

    def __init__(self, fn: Callable[[], T], reader: IO[bytes] | None = None, pid: int = 0):
        self._fn, self._reader, self._pid = fn, reader, pid
        self._outcome: tuple[bool, Any, str | None] | None = None

    def __call__(self) -> T:
        if self._reader is None:  # no child: done here, now
            return self._fn()
        if self._outcome is None:
            self._outcome = self._collect()
        ok, value, trace = self._outcome
        if not ok:
            raise value from ChildTraceback(trace)
        return value

    def raise_early(self) -> None:
        """If the child has ended with an exception, raise it now (else return at once)."""
        if self._reader is None or self._outcome is not None:
            return
        if select.select([self._reader], [], [], 0)[0]:  # its payload, or its end, is there
            self._outcome = self._collect()
            if not self._outcome[0]:
                self()

    @property
    def collected(self) -> bool:
        return self._outcome is not None

    def _collect(self) -> tuple[bool, Any, str | None]:
        assert self._reader is not None
        data = self._reader.read()
        os.waitpid(self._pid, 0)
        if not data:
            return False, RuntimeError("a forked worker died before it gave its result"), None
        try:
            return pickle.loads(data)
        except Exception as e:  # an exception that pickles but will not unpickle
            return False, RuntimeError(f"a forked worker's result could not be read: {e}"), None


@contextlib.contextmanager
def forked(fn: Callable[[], T]) -> Iterator[Later[T]]:
    """``fn()`` run in a forked child (only where `can_fork`) while this process goes on; yields
    a `Later` that waits for its result (or raises its exception, with the child's traceback
    as its cause). A child whose result is not collected is killed on leaving the block. Where
    no child can be made, the `Later` runs ``fn`` here when its result is asked for.

    The output buffers are flushed before the fork, and the child ends with `os._exit`: nothing
    this process has written or will write is written twice (a child that forks workers of its
    own would otherwise flush the copies it inherited), and no exit handler runs in the child."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # closed, or a reader gone: nothing of it to write twice
            pass
    parent = os.getpid()
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no process to be had (a limit on processes): done here, when asked for
        os.close(r)
        os.close(w)
        yield Later(fn)
        return
    if pid == 0:  # the child
        try:
            os.close(r)
            die_with_parent(parent)
            payload = outcome(fn)
            with os.fdopen(w, "wb") as f:
                f.write(payload)
        finally:
            os._exit(0)
    os.close(w)
    reader = os.fdopen(r, "rb")
    later = Later(fn, reader, pid)
    try:
        yield later
    finally:
        reader.close()
        if not later.collected:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


class ChildTraceback(Exception):
    """Where a forked child's exception was raised (its traceback, as text)."""


def outcome(fn: Callable[[], T]) -> bytes:
    """``fn()``'s result, or the exception it ended with and its traceback, pickled as a `Later`
    reads them (all of it goes to the parent)."""
    try:
        return pickle.dumps((True, fn(), None))
    except BaseException as e:
        return _pickled_error(e)


def _pickled_error(e: BaseException) -> bytes:
    import traceback

    trace = traceback.format_exc()
    try:
        return pickle.dumps((False, e, trace))
    except Exception:  # an exception that does not pickle: its words
        return pickle.dumps((False, RuntimeError(f"{type(e).__name__}: {e}"), trace))


def die_with_parent(parent: int | None = None) -> bool:
    """Ask Linux for SIGKILL when the parent process dies; True if it was set. With ``parent``
    (its pid, taken before the fork): end now if it died before the request was made."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return False
    done = prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    if parent is not None and os.getppid() != parent:  # gone already: no signal would come
        os._exit(1)
    return done


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds; True if they were set. Threads share the one heap:
    a process pool's result thread would otherwise keep an arena of its own, with free memory
    of its own (measured: 15 to 20 MB more at the peak of a streamed sweep)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc, or no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(M_ARENA_MAX, 1)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM))
