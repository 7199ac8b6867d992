"""Every float32 of a C-library model's domain against the process's libm, bit for bit.

    python bench/libm_exhaustive.py expf     # eigen's glibc expf: normal inputs, normal results
    python bench/libm_exhaustive.py logf     # glibc.libm("logf"): every positive finite float32
    python bench/libm_exhaustive.py log1pf   # glibc.libm("log1pf"): every float32 in (-1, inf)

Each calls the libm through ctypes on 2 to 3 billion inputs: 20 to 30 minutes a function on
one core of the 2-core machine. The tests check the same on a dense sample (tests/test_glibc.py).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from bce_audit import eigen, glibc, heap

F32, U32 = np.float32, np.uint32


def main(name: str) -> int:
    heap.tune()
    if name == "expf":  # DAZ keeps subnormal inputs out; results below the smallest normal are flushed
        ranges = [(0x00800000, int(F32(88.72).view(U32))), (0x80800000, int(F32(-87.33).view(U32)))]
        model = eigen._expf_libm
    elif name in ("logf", "log1pf"):
        ranges = [(1, 0x7F800000)] if name == "logf" else [(0, 0x7F800000), (0x80000000, 0xBF800000)]

        def model(x: np.ndarray) -> np.ndarray:
            return glibc.libm(name, x)
    else:
        print(f"unknown function {name!r}; choose from expf, logf, log1pf", file=sys.stderr)
        return 2
    call = np.frompyfunc(glibc._functions()[name], 1, 1)
    t0 = time.time()
    n = bad = 0
    for lo, hi in ranges:
        for start in range(lo, hi, 1 << 22):
            x = np.arange(start, min(start + (1 << 22), hi), dtype=U32).view(F32)
            with np.errstate(all="ignore"):
                got = model(x)
                want = np.asarray(call(x), dtype=F32)
            differ = got.view(U32) != want.view(U32)
            n += x.size
            bad += int(differ.sum())
            for v, a, b in zip(x[differ][:3], got[differ][:3], want[differ][:3], strict=True):
                print(f"differs at {v!r}: model {a!r}, libm {b!r}", flush=True)
    print(f"{name}: {n:,} inputs, {bad} differ, {time.time() - t0:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ""))
