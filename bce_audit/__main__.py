"""``python -m bce_audit`` and the ``bce-audit`` command: the CLI in a process of its own."""

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

    cli_main()


if __name__ == "__main__":
    main()
