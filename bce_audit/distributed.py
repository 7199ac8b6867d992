"""Running chunks on a Dask cluster (``--scheduler ADDRESS``; extra ``bce-audit[dask]``).

Each chunk is one task; results come back in submission order, so the merged audit equals a
local run's. Finished chunks are also in the cache, so a run that stops resumes from them.
A worker's threads run chunks side by side: each computes in an mpmath context of its own
(`reference.context`), and each chunk carries the ``impl:`` formulas it needs (`impl.Source`).

Every fault of the cluster is a `DaskMissing` with one line for the user: an address that is
not one, a scheduler that does not answer within CONNECT_TIMEOUT, a cluster with no worker
after WORKER_TIMEOUT, and a scheduler lost or a task cancelled in the middle of the run.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
from collections.abc import Callable, Iterator, Sequence

CONNECT_TIMEOUT = 10.0  # seconds to reach the scheduler
WORKER_TIMEOUT = 30.0   # seconds to wait for a first worker
_ADDRESS = re.compile(r"(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}/?"
                      r"|inproc://\S+")  # inproc: a cluster of threads in this process


class DaskMissing(RuntimeError):
    """dask.distributed is not installed, or the cluster cannot be reached or was lost."""


def check_address(address: str) -> str:
    """The scheduler address as given, if it is one (``[tcp://]host:port``); DaskMissing if not."""
    ok = _ADDRESS.fullmatch(address) is not None
    if ok and not address.startswith("inproc://"):
        ok = 0 < int(address.rstrip("/").rsplit(":", 1)[1]) < 65536
    if not ok:
        raise DaskMissing(f"--scheduler {address!r} is not a scheduler address; write tcp://HOST:PORT "
                          "(e.g. tcp://127.0.0.1:8786)")
    return address


def _connect(client_class: type, address: str):
    """A Client, or DaskMissing within CONNECT_TIMEOUT: Dask's own timeout does not cover a peer
    that accepts the connection and never answers, so the attempt runs in a thread of its own
    (a daemon: left behind, it cannot keep the process alive)."""
    box: dict = {}

    def connect() -> None:
        try:
            box["client"] = client_class(address, timeout=CONNECT_TIMEOUT)
        except Exception as e:  # OSError, TimeoutError, or whatever a non-Dask peer provokes
            box["error"] = e

    attempt = threading.Thread(target=connect, name="bce-audit-dask-connect", daemon=True)
    attempt.start()
    attempt.join(CONNECT_TIMEOUT + 1)
    if "client" in box:
        return box["client"]
    why = f"{type(box['error']).__name__}: {box['error']}" if "error" in box else "no answer"
    raise DaskMissing(f"--scheduler {address}: no Dask scheduler answered within {CONNECT_TIMEOUT:g} s "
                      f"({why})")


def run(address: str, fn: Callable, args: Sequence[tuple]) -> Iterator:
    check_address(address)
    try:
        from dask.distributed import Client
    except ImportError:
        raise DaskMissing("--scheduler needs dask.distributed: pip install 'bce-audit[dask]'") from None
    client = _connect(Client, address)
    done = 0
    try:
        try:
            client.wait_for_workers(1, timeout=WORKER_TIMEOUT)
        except (TimeoutError, OSError) as e:
            raise DaskMissing(f"--scheduler {address}: the cluster has no worker after {WORKER_TIMEOUT:g} s "
                              f"({type(e).__name__}); start one with `dask worker {address}`") from None
        futures = [client.submit(fn, *a, pure=True) for a in args]
        for f in futures:
            try:
                result = f.result()
            except (concurrent.futures.CancelledError, OSError, TimeoutError) as e:
                raise DaskMissing(f"--scheduler {address}: the cluster was lost after {done} of {len(args)} "
                                  f"chunks ({type(e).__name__}); the finished ones are cached: run again "
                                  "to resume") from None
            done += 1
            yield result
    finally:
        client.close()
