"""A hand-written BCE on probabilities, f(p, y): the textbook formula, with no clip.

Ask what to change (from the repository root):
    bce-audit advise --formula impl:examples.probs_loss:bce --impl-kind bce-probs --dtype bfloat16
"""

import numpy as np


def bce(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    one = p.dtype.type(1)
    return -(y * np.log(p) + (one - y) * np.log(one - p))
