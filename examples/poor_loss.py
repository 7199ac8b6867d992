"""A deliberately poor BCE-with-logits, of the kind often written by hand.

It goes through the probability and clips it, as legacy Keras did, so the loss floors near
1e-7 and caps near 16 however wrong or right the logit is. The gate catches it:
    bce-audit gate examples/gate-own-loss.toml
"""

import numpy as np


def bce_with_logits(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    eps = x.dtype.type(1e-7)
    one = x.dtype.type(1)
    p = one / (one + np.exp(-x))
    p = np.minimum(np.maximum(p, eps), one - eps)
    return -(y * np.log(p) + (one - y) * np.log(one - p))
