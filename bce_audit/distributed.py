"""Running chunks on a Dask cluster (``--scheduler ADDRESS``; extra ``bce-audit[dask]``).

Each chunk is one task; results come back in submission order, so the merged audit equals a
local run's. Finished chunks are also in the cache, so a run that stops resumes from them.
A worker's threads run chunks side by side: each computes in an mpmath context of its own
(`reference.context`), and each chunk carries the ``impl:`` formulas it needs (`impl.Source`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence


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
        futures = [client.submit(fn, *a, pure=True) for a in args]
        for f in futures:
            yield f.result()
    finally:
        client.close()
