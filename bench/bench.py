"""`make bench`: measured figures and their ratios to references taken in the same run.

Ratios survive a noisy machine better than seconds: each figure is divided by a reference
measured moments before (bare import time; a plain per-point mpmath loop; numpy's own speed).
Prints one line per figure; exits 0 (targets are reported, not asserted).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
from mpmath import mp

REPEAT = 3


def wall(cmd: list[str]) -> float:
    """Best of REPEAT wall-clock runs of a command, in seconds."""
    best = float("inf")
    for _ in range(REPEAT):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - t)
    return best


def per_point_mpmath(xs: np.ndarray, prec: int = 128) -> float:
    """Seconds per point of the naive reference: log1p(exp(-x)) at `prec` bits, one at a time."""
    t = time.perf_counter()
    with mp.workprec(prec):
        for x in xs:
            mp.log1p(mp.exp(-mp.mpf(float(x))))
    return (time.perf_counter() - t) / len(xs)


def main() -> int:
    py = sys.executable
    cli = [py, "-m", "bce_audit"]
    env_note = f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, mpmath backend "
    import mpmath.libmp

    print(f"bce-audit benchmark ({env_note}{mpmath.libmp.BACKEND})")
    t_import = wall([py, "-c", "import bce_audit.cli"])
    print(f"  import bce_audit.cli                    {t_import:8.3f} s   (reference)")

    t_sweep = wall([*cli, "sweep", "--dtype", "float32"])
    print(f"  sweep --dtype float32 (defaults)        {t_sweep:8.3f} s   {t_sweep / t_import:6.1f}x import")

    t_points = wall([*cli, "points", "--dtype", "float32"])
    print(f"  points --dtype float32                  {t_points:8.3f} s   {t_points / t_import:6.1f}x import")

    t_all = wall([*cli, "points", "--dtype", "all"])
    print(f"  points --dtype all                      {t_all:8.3f} s   {t_all / t_import:6.1f}x import")

    t_half = wall([*cli, "sweep", "--dtype", "float16", "--dtype", "bfloat16", "--points", "2001"])
    print(f"  sweep float16+bfloat16, 2001 points     {t_half:8.3f} s   {t_half / t_import:6.1f}x import")

    xs = np.linspace(-100, 100, 2000)
    mp_point = per_point_mpmath(xs)
    from bce_audit import reference

    t = time.perf_counter()
    for x in xs:
        reference.exact(np.float32(x))
    ours = (time.perf_counter() - t) / len(xs)
    print(f"  mpmath log1p(exp(-x)), 128 bits         {mp_point * 1e6:8.1f} us/pt (reference)")
    print(f"  reference.exact (sigmoid + both labels) {ours * 1e6:8.1f} us/pt {ours / mp_point:6.1f}x")

    big = np.linspace(-100, 100, 1_000_000).astype(np.float32)
    from bce_audit import formulas

    ev = formulas.Evaluator("float32")
    t = time.perf_counter()
    formulas.FORMULAS["logits-stable"](big, np.ones_like(big), None, ev)
    per = (time.perf_counter() - t) / big.size
    print(f"  numpy logits-stable float32             {per * 1e9:8.1f} ns/pt "
          f"(mpmath is {mp_point / per:,.0f}x slower)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
