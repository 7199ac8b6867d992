"""Each key point says why it is where it is (``cause``) and on which side of 0 (``side``).

The causes are read off the arithmetic at the key point's x (`causes.Tracer`), so they move
with the dtype, the mode and eps, never with a table of numbers: the same formula gets another
cause where another thing happens.
"""

import functools
import math

import pytest

from bce_audit import causes, dtypes, formulas, keypoints, records

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


# native runs the tf, xla and upcast kernels too: those alone are left to `make test`
@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m in ("tf", "xla", "upcast")
                                  else m for m in formulas.MODES])
def test_issue_t5_no_built_in_key_point_falls_back_to_a_guess(mode):
    """Every key point of every built-in formula, in every dtype and mode, has a cause the
    tracer saw (the words of `causes.WORDS`, a clip, a division, a clamp), never a fallback: not
    the guesses of old (F1 "division by 0 in the backward pass", F2 "loss underflows", F8
    "gradient 1/10.7 of exact"), nor `causes.UNTRACED`, which says nothing was seen."""
    guesses = ("division by 0 in the backward pass", "loss underflows", "loss flushed to 0",
               "constant from here", "inf or nan", "logit overflows", "gradient rounds to 0")
    for dtype in dtypes.NAMES:
        for k in _points(dtype, mode):
            assert k.cause not in guesses and " of exact" not in k.cause, k
            assert k.cause != causes.UNTRACED, k


def test_issue_f1_keras3_float16_gradient_overflows_1_over_p_not_a_division_by_0():
    """float16 Keras 3 at x = -11.09: p = 1.52e-5, 1/p = 65800 overflows float16 (max 65504);
    nothing divides by 0 there. Where p = 1 (x = 7.625, 1 - eps rounds to 1), 1 - p is 0."""
    pts = _points("float16")
    assert _cause(pts, "grad_nonfinite", "keras3", 1, "-") == "1/p overflows"
    assert _cause(pts, "grad_nonfinite", "keras3", 0, "-") == "1/p overflows, 0 * inf = nan"
    assert _cause(pts, "grad_nonfinite", "keras3", 1, "+") == "division by 1 - p = 0, 0 * inf = nan"


def test_issue_f1_a_format_without_inf_gets_no_0_times_inf():
    """float8_e4m3fn has no inf: 1/0 is nan itself, not inf times a zero weight."""
    found = [k.cause for k in _points("float8_e4m3fn", "per-op") if k.name == "grad_nonfinite"]
    assert found and not any("0 * inf" in c for c in found), found


def test_issue_f2_keras3_numpy_label_0_zero_is_1_minus_p_rounding_to_1():
    """keras3-numpy's logs are numpy's own (`Evaluator.np_log`), watched as keras3's are: at
    x = -8.32 in float16, 1 - p rounds to 1 (the exact loss is 2.44e-4; nothing underflows)."""
    pts = _points("float16")
    zero = next(k for k in pts if (k.name, k.formula, k.label) == ("bce_zero", "keras3-numpy", 0))
    assert zero.x == -8.3203125 and zero.cause == "1 - p rounds to 1"


def test_optax_under_xla_says_its_softplus_was_flushed():
    """XLA flushes softplus(-87.34) = 1.1e-38 (below float32's smallest normal) to 0; in float16
    softplus(-17.34) = 2.96e-8 is under half float16's smallest subnormal: it underflows."""
    assert _cause(_points("float32"), "bce_zero", "optax", 1) == "softplus flushed to 0"
    assert _cause(_points("float16"), "bce_zero", "optax", 1) == "softplus underflows"
    # its gradient's exp(x - softplus(x)), likewise (`xla.optax_bce_grad`, watched whole)
    assert _cause(_points("float32"), "grad_dead_zone", "optax", 1) == "exp(-|x|) flushed to 0"
    assert _cause(_points("float16"), "grad_dead_zone", "optax", 1) == "exp(-|x|) underflows"


def test_issue_f8_torch_bce_vanishing_gradient_is_the_1e_12_clamp():
    """torch's BCELoss backward divides by max(p(1-p), 1e-12): past p = 1e-12 the gradient is
    p^2/1e-12, not p (pytorch issue 103316). bfloat16 holds 1e-12; float16 rounds it to 0."""
    pts = _points("bfloat16")
    for label in (0, 1):
        assert _cause(pts, "grad_vanishing", "torch-bce", label, "-") == "p(1-p) clamped at 1e-12"


def test_issue_f1_the_division_hook_leaves_the_gradient_bit_identical():
    """`Evaluator.divided` and `clamped` only watch: the traced gradient is the model's."""
    import numpy as np

    from bce_audit import gradients

    x = np.linspace(-40, 40, 2001)
    for name in gradients.MODELS:
        for mode in ("tf", "upcast", "xla"):
            plain, traced = formulas.Evaluator("float16", mode), causes.Tracer("float16", mode, eps=KERAS_EPS)
            for y in (0, 1):
                a = gradients.grad(name, plain.arr(x), np.full(x.shape, y), KERAS_EPS, plain)
                b = gradients.grad(name, traced.arr(x), np.full(x.shape, y), KERAS_EPS, traced)
                assert a.tobytes() == b.tobytes(), (name, mode, y)
