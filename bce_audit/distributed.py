"""Running chunks on a Dask cluster (``--scheduler ADDRESS``; extra ``bce-audit[dask]``).

Each chunk is one task; results come back in submission order, so the merged audit equals a
local run's. Finished chunks are also in the cache, so a run that stops resumes from them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

# mpmath's working precision is one global per process: chunks that run in a worker's threads at
# the same time must take turns (run workers with --nthreads 1 to lose nothing by it).
_ONE_AT_A_TIME = threading.Lock()


def _serialised(fn: Callable, *args):
    with _ONE_AT_A_TIME:
        return fn(*args)


class DaskMissing(RuntimeError):
    """dask.distributed is not installed or the scheduler cannot be reached."""


def run(address: str, fn: Callable, args: Sequence[tuple]) -> Iterator:
    try:
        from dask.distributed import Client
    except ImportError:
        raise DaskMissing("--scheduler needs dask.distributed: pip install 'bce-audit[dask]'") from None
    try:
        client = Client(address, timeout=10)
    except (OSError, TimeoutError) as e:
        raise DaskMissing(f"--scheduler {address}: cannot reach the Dask scheduler ({e})") from None
    try:
        futures = [client.submit(_serialised, fn, *a, pure=True) for a in args]
        for f in futures:
            yield f.result()
    finally:
        client.close()
