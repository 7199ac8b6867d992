"""``python -m bce_audit`` and the ``bce-audit`` command: the CLI in a process of its own."""

from __future__ import annotations

import os

# numpy's OpenBLAS starts a thread per core that spins for about 0.1 s of CPU waiting for
# linear algebra this tool never asks for (and is stopped and restarted around every fork):
# one thread, none started. Set before numpy is loaded; a value the user set stands.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def main() -> None:
    import sys

    if sys.argv[1:2] == ["sweep"]:  # its key points are searched beside its grid: readied now
        from bce_audit import keypoints, standby

        standby.start(keypoints.ready)
    from bce_audit.cli import main as cli_main

    try:
        cli_main()
    except SystemExit as e:
        _end(e.code)
    _end(0)


def _end(code: str | int | None) -> None:
    """End the process with ``code`` as `sys.exit` would, the exit handlers run (the standby
    dismissed, the pools' processes reaped) and the output flushed, but without the
    interpreter's teardown of every module and object, which serves nothing here (about 40 ms
    with numpy, click and rich loaded). With another thread still running: `sys.exit` itself."""
    import atexit
    import contextlib
    import sys
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # as the interpreter's own exit: its output lost, status 120
        code = 120
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
