"""Is this CPU's ``vrcpps`` the one `eigen` models? TensorFlow's reciprocal (and every gradient
through a log) depends on it, and Intel's and AMD's estimates differ."""

from __future__ import annotations

import numpy as np

from bce_audit import eigen


def rcpps_mismatches(tf) -> int:
    """Inputs (two in each of the estimate table's 4096 buckets) where ``tf.math.reciprocal``
    differs from `eigen.reciprocal`: 0 on a CPU whose ``vrcpps`` is `eigen.RCP_TABLE`."""
    base = (np.uint32(0x3F800000) | np.arange(0, 1 << 23, 1 << 11, dtype=np.uint32)).view(np.float32)
    a = np.concatenate([base, base + np.float32(2.0**-12)])
    got = tf.math.reciprocal(eigen.pad(a)).numpy()[: a.size]
    return int(np.count_nonzero(got.view(np.uint32) != eigen.reciprocal(a).view(np.uint32)))


SKIP = ("this CPU's vrcpps is not the one eigen.RCP_TABLE holds (AMD Zen 4): tf.math.reciprocal differs "
        "from the model on {} of 8192 inputs")
