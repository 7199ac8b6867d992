"""The gradient d BCE / dx: each formula's backward pass as its framework computes it.

The exact gradient is ``sigmoid(x) - y``. The models follow each framework's backward rules
in the audited dtype and mode (the same `Evaluator` as the forward pass):

- torch (aten ``native/Loss.cpp``, ``cpu/BinaryOpsKernel.cpp``): BCELoss backward
  ``grad * (p - y) / max((1 - p) * p, 1e-12)`` elementwise in the dtype (so in float16 the
  1e-12 rounds to 0), then ``sigmoid_backward = (grad * (1 - p)) * p``, rounded op by op for
  float16 but in float32 opmath for bfloat16 (as torch 2.13's CPU kernels do, checked against
  its autograd); BCEWithLogits backward ``(sigmoid(x) - y) * grad``.
- TensorFlow (Keras formulas, logits-stable, naive): ``LogGrad = grad * reciprocal(x)``,
  ``Log1pGrad = grad * reciprocal(1 + x)``, ``ExpGrad = grad * exp(x)``, ``RealDivGrad``,
  ``SigmoidGrad = grad * p * (1 - p)``, clip passes the gradient only inside [lo, hi]. In mode
  "tf" the ops are TensorFlow's CPU kernels: ``Reciprocal`` is a ``vrcpps`` estimate and one
  Newton step (`eigen.reciprocal`, up to 3 ULP from ``1 / x``; the estimate is the CPU's own),
  ``SigmoidGrad`` the fused ``grad * (p * (1 - p))`` (`eigen.sigmoid_grad`); the rest (Mul, Neg,
  the selects, RealDiv, the sums of a tensor's gradients) round as numpy does, under FTZ/DAZ.
  These match GradientTape bit for bit (tests/test_tf_gradients.py).
- JAX (optax): reverse mode through ``log_sigmoid = -softplus(-x)`` and ``logaddexp``'s custom
  JVP ``t * exp(x - logaddexp(x, 0))``.
- JAX (Keras 3 on JAX, keras3 in mode xla): ``log``'s ``g / x``, ``jnp.clip``'s
  ``_balanced_eq`` products, ``logistic``'s ``g * (p * (1 - p))``.

>>> import numpy as np
>>> from bce_audit.formulas import Evaluator
>>> ev = Evaluator("float32")
>>> x, y = np.array([20.0], dtype=np.float32), np.ones(1)
>>> float(grad("torch-bce-logits", x, y, None, ev)[0])  # sigmoid(20) rounds to 1: no gradient
0.0
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from bce_audit import eigen, fastref, reference
from bce_audit.formulas import Evaluator

NAMES = ("grad_dead_zone", "grad_vanishing", "grad_nonfinite")
VANISH = 10.0  # "vanishing": more than this many times too small


# ---------------------------------------------------------------- backward rules, TF-style


def _tf_kernels(ev: Evaluator) -> bool:
    """Mode "tf" on a dtype `eigen` models: TensorFlow's own gradient kernels, not numpy's ops."""
    return ev.mode == "tf" and ev.dtype in eigen.DTYPES


def _recip(ev: Evaluator, a, name: str):
    """``tf.math.reciprocal``: on TF's CPU packet path an estimate and a Newton step (`eigen.reciprocal`).
    ``name``: what the cause calls ``a`` (`Evaluator.divided`)."""
    out = eigen.reciprocal(a) if _tf_kernels(ev) else ev.c(1.0) / a
    return ev.divided(out, ev.c(1.0), a, name)


def _sigmoid_grad_tf(ev: Evaluator, g, p):
    """``SigmoidGrad(p, g)``: TF's fused kernel computes ``g * (p * (1 - p))`` (`eigen.sigmoid_grad`)."""
    if _tf_kernels(ev):
        return eigen.sigmoid_grad(p, g)
    return (g * p) * (ev.c(1.0) - p)


def _stable_grad_tf(ev: Evaluator, x, y):
    """TF's autodiff of ``where(x>=0, x, 0) - x*y + log1p(exp(where(x>=0, -x, x)))``."""
    one, zero = ev.c(1.0), ev.c(0.0)
    cond = x >= zero
    neg_abs = np.where(cond, -x, x)
    e = ev.exp(neg_abs)
    g_e = one * _recip(ev, one + e, "1 + e")  # Log1pGrad
    g_z = g_e * e                            # ExpGrad
    g_relu = np.where(cond, one, zero)
    g_neg = np.where(cond, -g_z, g_z)
    return (g_relu + (-y)) + g_neg


def _clipped_grad_tf(ev: Evaluator, x, y, eps, shift: bool, hi_in_dtype: bool):
    """Keras clip-and-log BCE on tf.sigmoid: through the logs, the clip mask and SigmoidGrad."""
    one = ev.c(1.0)
    p = ev.sigmoid(x)
    lo = ev.c(eps)
    hi = one - lo if hi_in_dtype else ev.c(1.0 - eps)
    pc = ev.clip(p, lo, hi)
    s = lo if shift else ev.c(0.0)
    g_log_p = -y
    g_log_q = -(one - y)
    g_pc = g_log_p * _recip(ev, pc + s, "p") - g_log_q * _recip(ev, (one - pc) + s, "1 - p")
    g_p = np.where((p >= lo) & (p <= hi), g_pc, ev.c(0.0))
    return _sigmoid_grad_tf(ev, g_p, p)


def _naive_grad(x, y, eps, ev):
    """The textbook formula on tf.sigmoid, differentiated by TF."""
    one = ev.c(1.0)
    p = ev.sigmoid(x)
    g_p = (-y) * _recip(ev, p, "p") - (-(one - y)) * _recip(ev, one - p, "1 - p")
    return _sigmoid_grad_tf(ev, g_p, p)


def _keras2_grad(x, y, eps, ev):
    """Keras 2: clip, ``z = log(p / (1 - p))``, then TF's stable loss on z."""
    one = ev.c(1.0)
    p = ev.sigmoid(x)
    lo = ev.c(eps)
    hi = one - lo
    pc = ev.clip(p, lo, hi)
    q = one - pc
    r = ev.divided(pc / q, pc, q, "1 - p", "p/(1 - p)")
    z = ev.log(r)
    g_z = _stable_grad_tf(ev, z, y)
    g_r = g_z * _recip(ev, r, "p/(1 - p)")  # LogGrad
    g_pc = ev.divided(g_r / q, g_r, q, "1 - p", "g/(1 - p)")  # RealDivGrad, numerator
    g_q = g_r * ev.divided((-pc / q) / q, -pc / q, q, "1 - p", "p/(1 - p)^2")  # RealDivGrad, denominator
    g_pc = g_pc - g_q
    g_p = np.where((p >= lo) & (p <= hi), g_pc, ev.c(0.0))
    return _sigmoid_grad_tf(ev, g_p, p)


# ---------------------------------------------------------------- torch


def _sigmoid_backward(ev: Evaluator, g, p):
    return g * (ev.c(1.0) - p) * p


def _torch_bce_grad(x, y, eps, ev):
    p = ev.sigmoid(x)
    return _torch_sigmoid_backward(ev, p, _bce_loss_backward(ev, p, y))


def _bce_loss_backward(ev: Evaluator, p, y):
    """BCELoss backward: ``(p - y) / max((1 - p) * p, 1e-12)``, elementwise in the dtype."""
    q = (ev.c(1.0) - p) * p
    den = ev.clamped(np.maximum(q, ev.c(1e-12)), q, "p(1-p) clamped at 1e-12")
    return ev.divided((p - y) / den, p - y, den, "p(1-p)", "(p-y)/(p(1-p))")


def _keras3_torch_grad(x, y, eps, ev):
    """Keras 3 on torch: BCELoss backward on the clipped p, clamp's mask (inside [lo, hi]), sigmoid."""
    p = ev.sigmoid(x)
    lo, hi = ev.c(eps), ev.c(1.0 - eps)
    g_pc = _bce_loss_backward(ev, ev.clip(p, lo, hi), y)
    return _torch_sigmoid_backward(ev, p, np.where((p >= lo) & (p <= hi), g_pc, ev.c(0.0)))


def _torch_sigmoid_backward(ev: Evaluator, p, g_p):
    if ev.info.name == "bfloat16":  # torch 2.13 CPU: float32 opmath for bfloat16, per-op for half
        return ev.kernel(_sigmoid_backward, g_p, p)
    return _sigmoid_backward(ev, g_p, p)


def _torch_bce_logits_grad(x, y, eps, ev):
    return (ev.sigmoid(x) - y) * ev.c(1.0)


# ---------------------------------------------------------------- jax (optax)


def _softplus_jvp(ev: Evaluator, u):
    """``exp(u - logaddexp(u, 0))``: the tangent jax's logaddexp JVP gives softplus."""
    zero = ev.c(0.0)
    sp = np.maximum(u, zero) + ev.log1p(ev.exp(-np.abs(u - zero)))
    return ev.exp(u - sp)


def _optax_grad(x, y, eps, ev):
    if ev.xla:  # jax.grad of the jitted loss, as XLA compiles it (`xla.optax_bce_grad`)
        from bce_audit import xla

        return ev.compiled("optax-grad", xla.optax_bce_grad, np.asarray(x), np.asarray(y))
    one = ev.c(1.0)
    g_x1 = -((-y) * ev.kernel(_softplus_jvp, -x) * (-one))   # -y * log_sigmoid(x)
    g_x2 = (one - y) * ev.kernel(_softplus_jvp, x)           # -(1-y) * log_sigmoid(-x)
    return g_x1 + g_x2


def _keras3_jax_grad(ev: Evaluator, x, y, eps):
    """Keras 3 on JAX (mode xla): ``jax.grad`` of its ``binary_crossentropy`` on ``jax.nn.sigmoid``,
    op by op as Keras runs it (eagerly; ``jax/_src/lax/lax.py`` rules). ``log``'s JVP is ``g / x``;
    ``jnp.clip`` is ``minimum(hi, maximum(lo, p))``, whose JVPs multiply by ``_balanced_eq`` (1 on
    the side taken, 1/2 at a tie, 0 on the other: an infinite cotangent times 0 is NaN, as in
    float16 once ``1 / p`` overflows); ``logistic``'s is ``g * (p * (1 - p))``."""
    one, zero, two = ev.c(1.0), ev.c(0.0), ev.c(2.0)
    p = ev.sigmoid(x)
    lo, hi = ev.c(eps), ev.c(1.0 - eps)
    m = np.maximum(lo, p)
    pc = ev.clip(p, lo, hi)  # = minimum(hi, m), where the tracer sees the clip
    g_pc = (ev.divided((-y) / pc, -y, pc, "p", "1/p")  # through log(pc) and log(1 - pc)
            + -ev.divided((-(one - y)) / (one - pc), -(one - y), one - pc, "1 - p"))

    def balanced(a, ans, other):
        return np.where(a == ans, one, zero) / np.where(other == ans, two, one)

    g_p = (g_pc * balanced(m, pc, hi)) * balanced(p, m, lo)
    return g_p * (p * (one - p))


MODELS: dict[str, Callable] = {
    "naive": _naive_grad,
    "keras2-logits": _keras2_grad,
    "tf-keras": lambda x, y, eps, ev: _clipped_grad_tf(ev, x, y, eps, True, True),
    "keras3": lambda x, y, eps, ev: (_keras3_jax_grad(ev, x, y, eps) if ev.mode == "xla"
                                     else _clipped_grad_tf(ev, x, y, eps, False, False)),
    "torch-bce": _torch_bce_grad,
    "logits-stable": lambda x, y, eps, ev: _stable_grad_tf(ev, x, y),
    "torch-bce-logits": _torch_bce_logits_grad,
    "optax": _optax_grad,
    "keras3-torch": _keras3_torch_grad,
    "keras-sigmoid-logits": lambda x, y, eps, ev: _stable_grad_tf(ev, x, y),  # TF differentiates x itself
    # keras3-numpy: numpy has no autodiff, so no gradient
}


def grad(name: str, x: np.ndarray, y: np.ndarray, eps: float | None, ev: Evaluator) -> np.ndarray:
    """The modelled gradient of one formula, in the dtype."""
    with np.errstate(all="ignore"):
        out = MODELS[name](ev.inputs(x), ev.inputs(y), eps, ev)
    return np.asarray(out).astype(ev.dtype, copy=False)


def grad_fn(name: str, eps: float | None, label: int, ev: Evaluator, backend=None) -> Callable:
    """x -> gradient, through the model or a real backend's autograd."""
    if backend is not None:
        op = backend.grad[name]
        extra = (eps,) if eps is not None else ()
        return lambda v: op(np.asarray(v), ev.arr(np.full(np.shape(v), label)), *extra)
    return lambda v: grad(name, v, np.full(np.shape(v), label), eps, ev)


def has_grad(name: str, backend=None) -> bool:
    return name in (backend.grad if backend is not None else MODELS)


# ---------------------------------------------------------------- exact values


def exact_grad(e: reference.Exact, label: int):
    """``sigmoid(x) - y`` exactly: -(1 - p) = -q for label 1, p for label 0."""
    return -e.q if label == 1 else e.p  # in the baseline's own context, at its precision


def exact_magnitude(v: np.ndarray, label: int) -> np.ndarray:
    """|sigmoid(x) - y| in float64 (longdouble for wide dtypes): plenty for a 10x test."""
    work = np.longdouble if np.asarray(v).dtype in (np.float64, np.longdouble) else np.float64
    t = np.asarray(v).astype(work) * (-1 if label == 1 else 1)  # label 1: sigmoid(-x)
    return fastref.sigmoid(t)


# ---------------------------------------------------------------- key points
