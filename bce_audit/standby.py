"""A child forked as the command starts, that readies the key-point search and then runs it.

A sweep searches its key points in a forked child while the grid is audited (`heap.forked`).
Forked when the search is asked for, that child starts cold: it imports mpmath and the kernel
models and works out their constants (about 50 ms of CPU) while the grid's workers compete for
the same cores. The command's entry (``bce_audit.__main__``) forks it instead as soon as numpy
and the search's modules are loaded: the child readies itself (``ready``) on the core the main
process leaves idle while it imports the rest and parses the command line, then waits for the
one function it is given (`running`), whose result comes back as `forked`'s does (a
`heap.Later`). A standby that is not asked for ends with the main process.

Only where a fork is safe (`heap.can_fork`), and only for what that fork would run: the same
code, on the same state, gives the same result (the search's arguments travel in the request).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from typing import Any

from bce_audit import heap

_WAITING: tuple[int, int, int] | None = None  # the standby: its pid, the request's fd, the result's fd


def start(ready: Callable[[], object]) -> bool:
    """Fork the standby, which runs ``ready()`` and waits; True if there is one."""
    global _WAITING
    if _WAITING is not None or not heap.can_fork():
        return _WAITING is not None
    parent = os.getpid()
    req_r, req_w = os.pipe()
    res_r, res_w = os.pipe()
    try:
        pid = os.fork()
    except OSError:  # no process to be had: the search forks its own, as without a standby
        for fd in (req_r, req_w, res_r, res_w):
            os.close(fd)
        return False
    if pid == 0:
        try:
            os.close(req_w)
            os.close(res_r)
            _serve(parent, req_r, res_w, ready)
        finally:
            os._exit(0)
    os.close(req_r)
    os.close(res_w)
    _WAITING = (pid, req_w, res_r)
    atexit.register(_dismiss)
    return True


def _serve(parent: int, req_r: int, res_w: int, ready: Callable[[], object]) -> None:
    heap.die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle; it ends this
    heap.tune()
    with contextlib.suppress(BaseException):  # a failed start only costs the head start
        ready()
    with os.fdopen(req_r, "rb") as f:  # its length, then itself: a worker forked by the main
        head = f.read(8)                 # process after this one keeps a copy of the pipe's end
        request = f.read(int.from_bytes(head, "little")) if len(head) == 8 else b""
    if not request:
        return

    def call() -> object:
        fn, args = pickle.loads(request)
        return fn(*args)

    payload = heap.outcome(call)  # as `forked` sends it
    with os.fdopen(res_w, "wb") as out:
        out.write(payload)


@contextlib.contextmanager
def running(fn: Callable[..., Any], *args: Any) -> Iterator[heap.Later | None]:
    """``fn(*args)`` in the standby (``fn`` and ``args`` pickled: a module's function), as
    `heap.forked` runs a function: yields a `heap.Later` of its result, or None where there is
    no standby (taken already, never started, or the request would not pickle). A standby whose
    result is not collected is killed on leaving the block."""
    global _WAITING
    if _WAITING is None:
        yield None
        return
    try:
        request = pickle.dumps((fn, args))
    except Exception:
        yield None
        return
    pid, req_w, res_r = _WAITING
    _WAITING = None
    atexit.unregister(_dismiss)
    if not _send(req_w, len(request).to_bytes(8, "little") + request):  # it has died (killed):
        os.close(res_r)                                                  # the caller forks its own
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        yield None
        return
    reader = os.fdopen(res_r, "rb")
    later = heap.Later(lambda: fn(*args), reader, pid)
    try:
        yield later
    finally:
        reader.close()
        if not later.collected:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _send(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to the pipe ``fd`` and close it; False if its reader has gone."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return True
    except OSError:  # BrokenPipeError: no reader left
        return False
    finally:
        os.close(fd)


def _dismiss() -> None:
    """End a standby that was never asked (at exit): it has nothing to finish."""
    global _WAITING
    if _WAITING is None:
        return
    pid, req_w, res_r = _WAITING
    _WAITING = None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.close(req_w)
    os.close(res_r)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
