"""glibc's allocator, set up for the sweep's numpy temporaries (Linux; elsewhere nothing happens).

By default glibc serves each block over 128 KiB with an mmap of its own (the threshold then
creeps up to the sizes freed) and hands free memory at the top of the heap back to the system
as soon as there is twice that much. A chunk's float64 temporaries are 512 KiB each: most came
back as fresh pages, and the first touch of every page is a page fault. Measured, the faults
were half of an exhaustive float32 sweep's time (and of numpy's own time on such arrays).

Raising both thresholds lets freed blocks be reused: the process keeps up to `TRIM` of free
memory instead of returning it. Only the numbers' speed changes, never the numbers. The CLI and
its worker processes call `tune` once; a library user may call it too.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP = 16 << 20    # blocks of 16 MiB or more still get an mmap of their own
TRIM = 128 << 20   # free memory kept for reuse before it goes back to the system


def tune() -> bool:
    """Raise glibc's mmap and trim thresholds; True if they were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc, or no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM))
