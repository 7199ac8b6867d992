"""Each key point says why it is where it is (``cause``) and on which side of 0 (``side``).

The causes are read off the arithmetic at the key point's x (`causes.Tracer`), so they move
with the dtype, the mode and eps, never with a table of numbers: the same formula gets another
cause where another thing happens.
"""

import functools
import math

import pytest

from bce_audit import causes, formulas, keypoints, records

KERAS_EPS = 1e-7


@functools.cache
def _points(dtype: str, mode: str = "native", eps: float = KERAS_EPS, grad: bool = True):
    return tuple(keypoints.keypoints([dtype], mode, formulas.NAMES, [eps], [1, 0, "pair"],
                                     [1e-3, 1e-2], grad=grad))


def _cause(points, name, formula=None, label=None, side=None) -> str:
    found = [k for k in points if k.name == name and k.formula == formula and k.label == label
             and (side is None or k.side == side)]
    assert len(found) == 1, (name, formula, label, side, found)
    return found[0].cause


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_every_key_point_has_a_cause_and_the_sign_of_x(dtype):
    pts = _points(dtype)
    assert pts
    for k in pts:
        assert k.cause and "\n" not in k.cause and len(k.cause) <= 40, k
        assert k.side == ("-" if math.copysign(1.0, k.x) < 0 else "+"), k


def test_side_tells_two_records_of_one_name_apart():
    seen: dict = {}
    for k in _points("float32"):
        key = (k.name, k.formula, k.label, k.eps, k.threshold, k.side)
        assert key not in seen, (k, seen.get(key))
        seen[key] = k


def test_the_seed_causes_in_float32():
    pts = _points("float32")
    assert _cause(pts, "roundtrip_overflow") == "sigmoid rounds to 1"
    assert _cause(pts, "roundtrip_underflow") == "exp(-x) overflows, sigmoid = 0"
    assert _cause(pts, "bce_floor", "keras2-logits", "pair") == "clip at 1-eps = 1-2^-23"
    assert _cause(pts, "bce_ceiling", "keras3", 1) == "clip at eps"
    assert _cause(pts, "bce_zero", "tf-keras", 1) == "p + eps rounds to 1"
    assert _cause(pts, "bce_zero", "torch-bce", 1) == "sigmoid rounds to 1"
    assert _cause(pts, "bce_ceiling", "torch-bce", 1) == "log clamped at -100"
    assert _cause(pts, "bce_zero", "torch-bce-logits", 0) == "log(1+e^x) lost beside x"
    assert _cause(pts, "bce_floor", "sklearn", 1) == "clip at 1-finfo.eps"
    assert _cause(pts, "grad_dead_zone", "torch-bce-logits", 1) == "sigmoid rounds to 1"
    assert _cause(pts, "grad_dead_zone", "keras3", 1, "+") == "clip at 1-eps = 1-2^-23"
    assert _cause(pts, "grad_dead_zone", "keras3", 1, "-") == "clip at eps"


def test_flushing_is_told_from_underflow():
    """TensorFlow flushes exp(-87.34) (below float32's smallest normal) to 0; numpy keeps it
    as a subnormal, and the stable loss reaches 0 only where exp underflows for real."""
    assert _cause(_points("float32"), "bce_zero", "logits-stable", 1) == "exp(-|x|) flushed to 0"
    assert _cause(_points("float32", "per-op", grad=False), "bce_zero", "logits-stable", 1) \
        in ("exp(-|x|) underflows", "log(1+e) rounds to 0")


def test_the_cause_follows_eps_not_a_table():
    """float16 rounds 1 - 1e-7 to 1, so Keras 3's upper clip does nothing there (the loss is
    0, not a floor); with eps = 1e-3 the same formula floors, because the clip binds."""
    assert _cause(_points("float16"), "bce_zero", "keras3-torch", 1) == "1 - eps rounds to 1"
    wide = _points("float16", eps=1e-3, grad=False)
    assert _cause(wide, "bce_floor", "keras3-torch", 1) == "clip at 1-eps = 1-2^-10"


def test_issue_12_keras3_label_0_floor_says_why_it_is_not_eps():
    """keras3's label-0 floor is 1.1921e-7, not the predicted 1e-7: float32 holds 1 - 1e-7 as
    1-2^-23, and the loss is -log(1 - eps). float64 holds it closely: no such words."""
    pts = _points("float32")
    floor = next(k for k in pts if (k.name, k.formula, k.label) == ("bce_floor", "keras3", 0))
    assert floor.value == pytest.approx(2.0 ** -23, rel=1e-6) and floor.predicted == pytest.approx(1e-7)
    assert floor.cause == "clip at eps; 1-eps = 1-2^-23"
    assert _cause(_points("float64", grad=False), "bce_floor", "keras3", 0) == "clip at eps"


def test_roundtrip_error_causes_count_the_steps_of_sigmoid():
    pts = _points("float32")
    onset = next(k for k in pts if k.name == "roundtrip_rel_err_onset" and k.threshold == 1e-2)
    assert onset.cause == "sigmoid 6 steps below 1"
    assert causes.explain_roundtrip("roundtrip_rel_err_onset", "float32", "per-op", 30.0, None) \
        == "sigmoid rounds to 1"


def test_cause_and_side_are_in_the_json_records():
    k = _points("float32")[0]
    d = k.to_dict()
    assert d["cause"] == k.cause and d["side"] == k.side
    assert records.decode(records.KeyPoint, d) == k
    old = {f: v for f, v in d.items() if f not in ("cause", "side")}  # a schema-1 record before them
    assert records.decode(records.KeyPoint, old).side == k.side
