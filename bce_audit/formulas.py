"""Each audited formula, written once, evaluated in the audited dtype.

Formulas take numpy arrays of the audited dtype and an `Evaluator`, which decides how a
framework-level op is rounded:

- ``per-op``: every elementary operation rounds to the dtype (numpy's semantics);
- ``upcast``: for dtypes narrower than float32, each framework-level op (sigmoid,
  log_sigmoid, a fused loss kernel) runs in float32 and rounds once (PyTorch "opmath",
  aten ``cpu/UnaryOpsKernel.cpp``). Elementary ops on narrow dtypes already compute in float32
  and round once in numpy and ml_dtypes, so only kernels differ between the modes. The naive
  logit stays per-op: torch.logit on CPU rounds ``p / (1 - p)`` to the dtype before the log.
  float32 arithmetic (float32 itself and the narrow dtypes' opmath) runs torch 2.13's own CPU
  code where `sleef.py` models it (AVX512, AVX2, DEFAULT): SLEEF's exp, log, log1p (so the
  sigmoid and log_sigmoid kernels bit for bit) and the C library's logf/log1pf in BCE's scalar
  kernel; ``torch.logit``'s log is MKL's vsLn, which SLEEF's log matches to an ULP;
- ``tf``: TensorFlow on CPU: per-op, with TensorFlow's own sigmoid kernel (Eigen's logistic,
  `eigen.logistic`) and subnormals flushed to zero (FTZ/DAZ) in every op;
- ``xla``: JAX (XLA) on CPU: per-op, subnormals flushed to zero in every op;
- ``native``: each formula in the mode of the framework it models (`FRAMEWORK_MODES`: the
  Keras and TensorFlow formulas ``tf``, torch's ``upcast``, optax ``xla``, the rest ``per-op``);
  the sigmoid and the round trip, numpy's ``per-op``.

Flushing follows the CPU: the float32 arithmetic that float32, bfloat16, float16 and float8
compute in flushes below float32's smallest normal (1.18e-38), so float16 and float8 values,
all far above it, are never flushed; float64 flushes below its own.

Constants are cast to the dtype before use, as frameworks cast ``epsilon()``; a bare Python
float would silently promote an ml_dtypes array to float32.

>>> import numpy as np
>>> ev = Evaluator("float32", "per-op")
>>> x = np.array([20.0], dtype=np.float32)
>>> float(evaluate_roundtrip(x, ev)[0])
inf
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from bce_audit import dtypes, impl, records
from bce_audit.ftz import flush  # one definition (`ftz`); `formulas.flush` by name too

EVALUATED = ("per-op", "upcast", "tf", "xla")  # the modes an Evaluator computes in
MODES = (*EVALUATED, "native")  # and "native": each formula in its framework's
FLUSHING = ("tf", "xla")  # the modes that flush subnormals to zero (FTZ/DAZ)


class Flushed(np.ndarray):
    """An array on which every numpy op reads subnormal inputs as zero and flushes subnormal
    results to zero, as TensorFlow and XLA run their CPU kernels (FTZ/DAZ set)."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # a Flushed array holds no subnormal (it is made flushed: `Evaluator.inputs`, `_rewrap`)
        args = [(a.view(np.ndarray) if isinstance(a, Flushed) else flush(a)) if isinstance(a, np.ndarray)
                else a for a in inputs]
        return _rewrap(getattr(ufunc, method)(*args, **kwargs))

    def __array_function__(self, func, types, args, kwargs):
        plain = tuple(np.ndarray if issubclass(t, Flushed) else t for t in types)
        return _rewrap(super().__array_function__(func, plain, args, kwargs))


def _rewrap(out):
    if isinstance(out, tuple):
        return tuple(_rewrap(o) for o in out)
    if isinstance(out, np.ndarray) and out.dtype != np.bool_ and out.dtype.kind not in "iub":
        return flush(out.view(np.ndarray)).view(Flushed)
    return out


Kernel = Callable[[np.ndarray], np.ndarray]


class KernelMemo:
    """Kernel results remembered by the bits of their inputs, the least recently used dropped
    past ``budget`` bytes: the formulas, labels and key-point searches that evaluate one kernel
    on the same values share one evaluation. Results are read-only."""

    def __init__(self, budget: int = 64 << 20):
        self.budget = budget
        self.size = 0
        self._table: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()

    def __call__(self, key: tuple, compute: Callable[[], np.ndarray], *inputs) -> np.ndarray:
        """``compute()``, or what it gave before for the same ``key`` and inputs (compared by
        dtype, shape and bits)."""
        arrays = [np.asarray(a) for a in inputs]
        full = (*key, *(dtypes.bits_key(a) for a in arrays))
        hit = self._table.get(full)
        if hit is not None:
            self._table.move_to_end(full)
            return hit[0]
        out = compute()
        if isinstance(out, np.ndarray):  # (a 0-d input may give a numpy scalar: immutable)
            out.flags.writeable = False
        cost = np.asarray(out).nbytes + sum(a.nbytes for a in arrays)
        self._table[full] = (out, cost)
        self.size += cost
        while self.size > self.budget and len(self._table) > 1:
            _, (_, dropped) = self._table.popitem(last=False)
            self.size -= dropped
        return out


@dataclass(frozen=True)
class Ops:
    """Replacements for the built-in sigmoid and logit: a user's, or a real framework's."""

    sigmoid: Callable[[np.ndarray], np.ndarray] | None = None
    logit: Callable[[np.ndarray], np.ndarray] | None = None


class Evaluator:
    """Rounding semantics for one dtype and mode."""

    def __init__(self, dtype: str, mode: str = "per-op", ops: Ops | None = None,
                 memo: bool | KernelMemo | None = False):
        """``ops``: a sigmoid and/or logit that replace the built-in ones. ``memo``: the built-in
        sigmoid and log-sigmoid kernels and the frameworks' kernel models remember their results
        by the bits of their input, so the formulas and labels evaluated on the same inputs share
        one evaluation (results are read-only); a `KernelMemo` to share it with other evaluators
        (True: one of its own). Never with ``ops``: real or user code is called every time."""
        if mode not in EVALUATED:
            raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(EVALUATED)} "
                             "(native: resolve it per formula with framework_mode)")
        self.info = dtypes.get(dtype)
        self.mode = mode
        self.dtype = self.info.dtype
        self.ops = ops or Ops()
        self.ftz = mode in FLUSHING and ops is None  # real ops (and user code) see the values as they are
        self._kernels: dict[str, Callable] = {}
        self._constants: dict[tuple, np.ndarray] = {}
        if ops is not None or memo is None or memo is False:
            self._memo: KernelMemo | None = None
        else:
            self._memo = KernelMemo() if memo is True else memo

    def c(self, value) -> np.ndarray:
        """A constant rounded to the dtype (0-d array, so it never promotes; read-only, made
        once per evaluator and value)."""
        key = (type(value), repr(value))  # repr: -0.0 is not 0.0
        out = self._constants.get(key)
        if out is None:
            out = self.inputs(np.asarray(value, dtype=None if isinstance(value, np.generic) else np.float64))
            out.flags.writeable = False
            self._constants[key] = out
        return out

    def arr(self, values) -> np.ndarray:
        """Values rounded to the dtype; out-of-range values become inf (or nan in fn formats)."""
        a = np.asarray(values)
        if a.dtype == self.dtype:  # a copy: nothing to round
            return a.copy()
        with np.errstate(over="ignore", invalid="ignore"):
            return a.astype(self.dtype)

    def inputs(self, values) -> np.ndarray:
        """Values rounded to the dtype as an op reads them: flushed to zero where the mode flushes
        (an array that flushes every result computed from it)."""
        out = self.arr(values)
        return flush(out).view(Flushed) if self.ftz else out

    def kernel(self, fn: Callable[..., np.ndarray], *args: np.ndarray) -> np.ndarray:
        """Run a framework-level op: in float32 and rounded once when upcasting a narrow dtype."""
        if self.mode == "upcast" and self.info.narrow:
            ev32 = self.derived("float32", "upcast")  # torch's float32 kernels (`sleef`) where modelled
            out = fn(ev32, *(np.asarray(a).astype(np.float32) for a in args))
            return np.asarray(out).astype(self.dtype)
        return fn(self, *args)

    def derived(self, dtype: str, mode: str) -> Evaluator:
        """An evaluator for arithmetic this one hands to another dtype (upcast's float32 kernels,
        sklearn's float64); `causes.Tracer` keeps watching through it. It shares this one's memo
        (whose keys hold the dtype and mode)."""
        return Evaluator(dtype, mode, memo=self._memo)

    def shared(self, fn: Callable[..., np.ndarray], x: np.ndarray) -> np.ndarray:
        """``kernel(fn, x)``, remembered by the bits of x when ``memo`` is on."""
        flushed = isinstance(x, Flushed)  # what the kernel's own ops then do to subnormals
        return self.remember((fn, flushed), lambda: self.kernel(fn, x), x)

    def remember(self, key: tuple, compute: Callable[[], np.ndarray], *inputs) -> np.ndarray:
        """``compute()``, remembered under ``key`` by the bits of ``inputs`` when ``memo`` is on."""
        if self._memo is None:
            return compute()
        return self._memo(self._memo_key(key), compute, *inputs)

    def _memo_key(self, key: tuple) -> tuple:
        return (*key, self.dtype.str, self.mode)

    def remembered(self, name: str, fn: Kernel) -> Kernel:
        """A kernel model ``fn`` (one array in, one out), remembered by the bits of its input
        under ``name`` when ``memo`` is on. The kernel holds the memo, not the evaluator: an
        evaluator keeps its kernels, and a cycle through them would keep every remembered
        array until the cyclic collector ran (hundreds of MB over a long sweep)."""
        memo = self._memo
        if memo is None:
            return fn
        key = self._memo_key((name,))
        return lambda a: memo(key, lambda: fn(a), a)

    # Framework-level ops shared by several formulas.
    def sigmoid(self, x: np.ndarray) -> np.ndarray:
        if self.ops.sigmoid is not None:
            return self.ops.sigmoid(x)
        return self.shared(_tf_sigmoid if self.mode == "tf" else _xla_sigmoid if self.xla else _sigmoid, x)

    def logit(self, p: np.ndarray) -> np.ndarray:
        """Per-op in every mode: torch.logit on CPU rounds ``p / (1 - p)`` to half before the log."""
        if self.ops.logit is not None:
            return self.ops.logit(p)
        if self.xla:
            from bce_audit import xla

            return xla.logit(np.asarray(p))
        return _logit(self, p)

    # Elementary functions: numpy's, or the framework's own kernels where the mode models them.
    def exp(self, a: np.ndarray) -> np.ndarray:
        return self._elementary("exp", np.exp)(a)

    def log(self, a: np.ndarray) -> np.ndarray:
        return self._elementary("log", np.log)(a)

    def log1p(self, a: np.ndarray) -> np.ndarray:
        return self._elementary("log1p", np.log1p)(a)

    def _elementary(self, name: str, default: Callable) -> Callable:
        """numpy's ``default``, or the framework's kernel model (remembered: `remembered`);
        found once per evaluator."""
        fn = self._kernels.get(name)
        if fn is None:
            fn = self._kernels[name] = self._find_elementary(name, default)
        return fn

    def _find_elementary(self, name: str, default: Callable) -> Callable:
        if self.mode == "tf":
            from bce_audit import eigen

            if self.dtype in eigen.DTYPES:
                return self.remembered(name, _plain(getattr(eigen, name)))
        if self.xla:
            from bce_audit import xla

            return self.remembered(name, _plain(getattr(xla, name)))
        if self.torch_cpu:
            from bce_audit import sleef

            return self.remembered(name, _plain(sleef.elementary(name)))
        return default

    @property
    def torch_cpu(self) -> bool:
        """torch's own float32 kernels (`sleef.py`) apply: mode upcast, float32, and a CPU
        capability they model (SLEEF on AVX512 or AVX2, the C library on DEFAULT); elsewhere
        numpy's functions stand in. Vectorised kernels (sigmoid, log_sigmoid, log1p) call SLEEF; a bare
        ``torch.exp``/``torch.log`` (and ``torch.logit``) call MKL's vsExp/vsLn, which SLEEF
        matches to an ULP (bit for bit on 90 to 99% of inputs)."""
        if self.mode != "upcast" or self.dtype != np.float32:
            return False
        from bce_audit import sleef

        return sleef.modelled()

    @property
    def xla(self) -> bool:
        """XLA's own kernels (`xla.py`) apply: mode xla, a dtype they model."""
        return self.mode == "xla" and self.dtype.name in _XLA_DTYPES

    def log_sigmoid(self, x: np.ndarray) -> np.ndarray:
        return self.shared(_log_sigmoid, x)

    def clip(self, p: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """clip_by_value; np.clip would promote ml_dtypes arrays to float32."""
        return np.minimum(np.maximum(p, lo), hi)

    def np_clip(self, p: np.ndarray, lo: float, hi: float) -> np.ndarray:
        """``np.clip`` with Python-float bounds, in the dtype numpy promotes to (float32 for
        ml_dtypes arrays): Keras 3's numpy backend."""
        return np.clip(p, lo, hi)

    def np_log(self, a: np.ndarray) -> np.ndarray:
        """numpy's own ``np.log`` in every mode (Keras 3's numpy backend), where `causes.Tracer`
        watches it as it watches `log`."""
        return np.log(a)

    def divided(self, out: np.ndarray, dividend: np.ndarray, divisor: np.ndarray, name: str,
                quotient: str = "") -> np.ndarray:
        """A quotient just computed by a backward pass, returned as it is; `causes.Tracer` notes a
        division by 0 or an overflow. ``name``: what the cause calls the divisor; ``quotient``:
        the quotient (``1/name`` if not given)."""
        return out

    def compiled(self, name: str, fn: Callable[..., np.ndarray], *args: np.ndarray) -> np.ndarray:
        """``fn(*args)``: a model of a whole compiled function (``name``), not of its ops, so
        `causes.Tracer` watches its result instead."""
        return fn(*args)

    def clamped(self, out: np.ndarray, a: np.ndarray, name: str) -> np.ndarray:
        """``out = max(a, bound)`` of a backward pass, returned as it is; `causes.Tracer` notes
        where the bound (``name``) binds."""
        return out


def _sigmoid(ev: Evaluator, x: np.ndarray) -> np.ndarray:
    """Naive sigmoid ``1 / (1 + exp(-x))`` (numpy, jax ``lax.logistic``, scipy ``expit``)."""
    one = ev.c(1.0)
    return one / (one + ev.exp(-x))


_XLA_DTYPES = ("float32", "float16", "bfloat16")  # those `xla.py` models


def _plain(kernel: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A kernel model that does its own flushing, fed plain arrays (not `Flushed` ones)."""
    return lambda a: kernel(np.asarray(a))


def _xla_sigmoid(ev: Evaluator, x: np.ndarray) -> np.ndarray:
    """``jax.nn.sigmoid`` as XLA compiles it on CPU (`xla.logistic`)."""
    from bce_audit import xla

    return xla.logistic(np.asarray(x))


def _tf_sigmoid(ev: Evaluator, x: np.ndarray) -> np.ndarray:
    """TensorFlow's CPU sigmoid: Eigen's logistic kernel (`eigen.logistic`, its packet path)
    for the dtypes it models; the naive one for the rest."""
    from bce_audit import eigen

    return eigen.logistic(np.asarray(x)) if ev.dtype in eigen.DTYPES else _sigmoid(ev, x)


def _logit(ev: Evaluator, p: np.ndarray) -> np.ndarray:
    """Naive logit ``log(p / (1 - p))`` (jax.scipy.special.logit, torch.logit with eps=None)."""
    return ev.log(p / (ev.c(1.0) - p))


def _log_sigmoid(ev: Evaluator, x: np.ndarray) -> np.ndarray:
    """``min(x, 0) - log1p(exp(-|x|))`` (aten ``cpu/Activation.cpp`` log_sigmoid)."""
    zero = ev.c(0.0)
    return np.minimum(x, zero) - ev.log1p(ev.exp(-np.abs(x)))


def roundtrip(x: np.ndarray, ev: Evaluator) -> np.ndarray:
    """``logit(sigmoid(x))`` with the naive formulas; its exact value is x."""
    return ev.logit(ev.sigmoid(x))


# ---------------------------------------------------------------- the BCE formulas


def naive(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Textbook ``-(y*log(p) + (1-y)*log(1-p))`` on ``p = sigmoid(x)``."""
    p = ev.sigmoid(x)
    one = ev.c(1.0)
    return -(y * ev.log(p) + (one - y) * ev.log(one - p))


def keras2_logits(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Multi-backend Keras <= 2.2.4 ``keras/backend/tensorflow_backend.py`` binary_crossentropy.

    Clips p to [eps, 1-eps], goes back to logits with ``log(p/(1-p))`` (three TF ops) and
    feeds ``tf.nn.sigmoid_cross_entropy_with_logits``.
    """
    p = ev.sigmoid(x)
    one, e = ev.c(1.0), ev.c(eps)
    p = ev.clip(p, e, one - e)
    z = ev.log(p / (one - p))
    return logits_stable(z, y, None, ev)


def tf_keras(x, y, eps, ev: Evaluator) -> np.ndarray:
    """tf.keras 2.x ``tf_keras/backend.py`` (and Keras 3 ``keras/src/legacy/backend.py``).

    ``clip(p, eps, 1-eps)`` then ``-(y*log(p+eps) + (1-y)*log(1-p+eps))``: eps applied twice.
    """
    p = ev.sigmoid(x)
    one, e = ev.c(1.0), ev.c(eps)
    p = ev.clip(p, e, one - e)
    bce = y * ev.log(p + e)
    bce = bce + (one - y) * ev.log(one - p + e)
    return -bce


def keras3(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Keras 3 ``keras/src/backend/{numpy,tensorflow,jax}/nn.py`` binary_crossentropy.

    ``np.clip(output, epsilon(), 1.0 - epsilon())``: the bound ``1.0 - eps`` is a Python float
    rounded to the dtype afterwards (float16: exactly 1, so the upper clip does nothing).
    """
    p = ev.sigmoid(x)
    one = ev.c(1.0)
    p = ev.clip(p, ev.c(eps), ev.c(1.0 - eps))
    bce = y * ev.log(p)
    bce = bce + (one - y) * ev.log(one - p)
    return -bce


def _torch_bce_kernel(ev: Evaluator, p, y) -> np.ndarray:
    floor, one = ev.c(-100.0), ev.c(1.0)
    log: Kernel = ev.log
    log1p: Kernel = ev.log1p
    if ev.torch_cpu:  # a scalar cpu_kernel: std::log and std::log1p, the C library's
        from bce_audit import glibc

        log = ev.remembered("logf", lambda a: glibc.libm("logf", a))
        log1p = ev.remembered("log1pf", lambda a: glibc.libm("log1pf", a))
    return (y - one) * np.maximum(log1p(-p), floor) - y * np.maximum(log(p), floor)


def torch_bce(x, y, eps, ev: Evaluator) -> np.ndarray:
    """``torch.nn.functional.binary_cross_entropy`` on ``torch.sigmoid(x)`` (aten ``native/Loss.cpp``).

    ``(y-1)*max(log1p(-p), -100) - y*max(log(p), -100)``, one fused kernel.
    """
    return ev.kernel(_torch_bce_kernel, ev.sigmoid(x), y)


def logits_stable(x, y, eps, ev: Evaluator) -> np.ndarray:
    """``tf.nn.sigmoid_cross_entropy_with_logits`` (``tensorflow/python/ops/nn_impl.py``).

    ``max(x, 0) - x*y + log1p(exp(-|x|))``, written as TF's separate ops.
    """
    zero = ev.c(0.0)
    return (np.maximum(x, zero) - x * y) + ev.log1p(ev.exp(-np.abs(x)))


def torch_bce_logits(x, y, eps, ev: Evaluator) -> np.ndarray:
    """``binary_cross_entropy_with_logits`` (aten ``native/Loss.cpp``): ``(1-y)*x - log_sigmoid(x)``."""
    return (ev.c(1.0) - y) * x - ev.log_sigmoid(x)


def _jax_log_sigmoid(ev: Evaluator, x) -> np.ndarray:
    """``jax.nn.log_sigmoid(x) = -softplus(-x)``, ``softplus(x) = jnp.logaddexp(x, 0)``.

    ``jnp.logaddexp(a, b) = max(a, b) + log1p(exp(-|a - b|))`` (jax ``_src/numpy/ufuncs.py``).
    """
    t = -x
    zero = ev.c(0.0)
    softplus = np.maximum(t, zero) + ev.log1p(ev.exp(-np.abs(t - zero)))
    return -softplus


def optax(x, y, eps, ev: Evaluator) -> np.ndarray:
    """``optax.sigmoid_binary_cross_entropy``: ``-y*log_sigmoid(x) - (1-y)*log_sigmoid(-x)``;
    in mode xla as XLA compiles it in one jit (`xla.optax_bce`: simplified, with fused
    multiply-adds)."""
    if ev.xla:
        from bce_audit import xla

        x = np.asarray(x)  # the softplus pair is the same for every label: remembered
        softplus = ev.remembered("optax-softplus", xla.optax_softplus)(x)
        return xla.optax_bce_of(softplus, np.asarray(y), x.dtype)
    one = ev.c(1.0)
    return -y * ev.shared(_jax_log_sigmoid, x) - (one - y) * ev.shared(_jax_log_sigmoid, -x)


def sklearn(x, y, eps, ev: Evaluator) -> np.ndarray:
    """``sklearn.metrics.log_loss`` (``sklearn/metrics/_classification.py`` ``_log_loss``) on
    ``p = sigmoid(x)``: the columns ``[1 - p, p]``, each clipped to ``[e, 1 - e]`` with
    ``e = finfo(dtype).eps`` (not ``--eps``), then ``-(xlogy(y, p) + xlogy(1 - y, 1 - p))``.
    It computes in float16, float32 and float64; ``check_array`` turns any other dtype
    (bfloat16, float8, longdouble) into float64 first, and the loss is rounded back."""
    p = ev.sigmoid(x)
    work = ev if ev.dtype in _SKLEARN_DTYPES else ev.derived("float64", "xla" if ev.ftz else "per-op")
    p, y = work.arr(p), work.arr(y)
    one, zero = work.c(1.0), work.c(0.0)
    e = work.c(np.finfo(work.dtype).eps)
    q = one - p
    pc, qc = work.clip(p, e, one - e), work.clip(q, e, one - e)
    ones = np.where(y == zero, zero, y * work.log(pc))  # xlogy: a zero weight's term is 0
    zeros = np.where(one - y == zero, zero, (one - y) * work.log(qc))
    return -(ones + zeros)


_SKLEARN_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def keras3_torch(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Keras 3 ``keras/src/backend/torch/nn.py`` binary_crossentropy on ``torch.sigmoid(x)``.

    ``torch.clip(p, eps, 1.0 - eps)`` (Python-float bounds, rounded to the dtype), then
    ``F.binary_cross_entropy``: torch-bce's kernel, logs floored at -100.
    """
    p = ev.clip(ev.sigmoid(x), ev.c(eps), ev.c(1.0 - eps))
    return ev.kernel(_torch_bce_kernel, p, y)


def keras_sigmoid_logits(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Keras 3 on TensorFlow, ``binary_crossentropy(y, keras.ops.sigmoid(x))``: the sigmoid's output
    carries ``_keras_logits`` and ``_get_logits`` (``keras/src/backend/tensorflow/nn.py``) hands x
    itself to ``tf.nn.sigmoid_cross_entropy_with_logits``: no clip, the probabilities unused.
    """
    return logits_stable(x, y, None, ev)


def keras3_numpy(x, y, eps, ev: Evaluator) -> np.ndarray:
    """Keras 3 ``keras/src/backend/numpy/nn.py`` binary_crossentropy, its lines as numpy runs them.

    ``np.clip(p, eps, 1.0 - eps)`` with Python-float bounds keeps float16/32/64 (`keras3` then),
    but has no loop for ml_dtypes (bfloat16, float8): p comes out float32, clipped to float32
    bounds (``1 - eps`` is 0.99999988, not 1), the logs run in float32, and the float32 result is
    rounded to the dtype once, here as in the audit of the real backend. ``from_logits=True``
    runs the same: sigmoid, then the clip.
    """
    p = ev.np_clip(ev.sigmoid(x), eps, 1.0 - eps)  # the promotion is the point: no ev.c here
    bce = y * ev.np_log(p)
    bce = bce + (1.0 - y) * ev.np_log(1.0 - p)
    return (-bce).astype(ev.dtype)


@dataclass(frozen=True)
class Clip:
    """What a clipping formula does to p, as data, so the exact baseline can do it too.

    ``hi_in_dtype``: the upper bound is ``1 - eps`` computed in the dtype (True) or as a
    Python float rounded afterwards (False). ``shift`` adds eps inside both logs (tf-keras);
    ``log_floor`` clamps each log from below (torch: -100). ``np_clip``: numpy's ``np.clip``
    with Python-float bounds, in the dtype numpy gives it (float32 for ml_dtypes arrays).
    """

    uses_eps: bool = True
    hi_in_dtype: bool = True
    shift: bool = False
    log_floor: float | None = None
    np_clip: bool = False


@dataclass(frozen=True)
class Formula:
    """A BCE formula (kind "bce"), or a user sigmoid/logit audited through the round trip."""

    name: str
    fn: Callable[..., np.ndarray]
    clip: Clip | None = None
    kind: str = "bce"  # "bce", "sigmoid" or "logit"
    user: impl.UserImpl | None = None
    mean32: bool = True  # a batch mean of a narrow dtype accumulates in float32 (not TF's reduce_mean)

    @property
    def ops(self) -> Ops | None:
        """For a user sigmoid or logit: the ops that put it in place of the built-in one."""
        if self.kind == "sigmoid":
            return Ops(sigmoid=self.user)
        if self.kind == "logit":
            return Ops(logit=self.user)
        return None

    @property
    def uses_eps(self) -> bool:
        return self.clip is not None and self.clip.uses_eps

    def __call__(self, x: np.ndarray, y: np.ndarray, eps: float | None, ev: Evaluator) -> np.ndarray:
        """Evaluate on dtype arrays; overflow and log(0) are deliberate, so warnings are off."""
        with np.errstate(all="ignore"):
            out = self.fn(ev.inputs(x), ev.inputs(y), eps, ev)
        return np.asarray(out).astype(ev.dtype, copy=False)


FRAMEWORK_MODES = {  # the mode each built-in formula's framework computes in on CPU
    "keras2-logits": "tf", "tf-keras": "tf", "keras3": "tf", "logits-stable": "tf",  # Keras 3: TF backend
    "torch-bce": "upcast", "torch-bce-logits": "upcast", "optax": "xla",
    "keras3-torch": "upcast", "keras-sigmoid-logits": "tf",  # keras3-numpy: numpy's, per-op
}


def framework_mode(mode: str, formula: str | None) -> str:
    """The mode a formula (None: the sigmoid and round trip) is evaluated in: ``mode`` itself,
    or under ``native`` its framework's (`FRAMEWORK_MODES`; per-op for numpy and user code)."""
    if mode != "native":
        return mode
    return FRAMEWORK_MODES.get(formula, "per-op") if formula is not None else "per-op"


def pair_mean(formula: Formula, l0: np.ndarray, l1: np.ndarray, ev: Evaluator) -> np.ndarray:
    """The seed's two-point batch mean ``(l0 + l1) / 2`` as the formula's framework reduces it:
    torch, JAX, Keras 3 and numpy accumulate a float16/bfloat16 mean in float32 and round once;
    TensorFlow's ``reduce_mean`` (keras2-logits, tf-keras, logits-stable) sums in the dtype."""
    with np.errstate(all="ignore"):
        if formula.mean32 and ev.info.narrow:
            wide = Evaluator("float32", "xla" if ev.ftz else "per-op")
            half = (wide.arr(l0) + wide.arr(l1)) * wide.c(0.5)
            return ev.arr(np.asarray(half))
        return (l0 + l1) * ev.c(0.5)


FORMULAS: dict[str, Formula] = {
    f.name: f
    for f in (
        Formula("naive", naive),
        Formula("keras2-logits", keras2_logits, Clip(), mean32=False),
        Formula("tf-keras", tf_keras, Clip(shift=True), mean32=False),
        Formula("keras3", keras3, Clip(hi_in_dtype=False)),
        Formula("torch-bce", torch_bce, Clip(uses_eps=False, log_floor=-100.0)),
        Formula("logits-stable", logits_stable, mean32=False),
        Formula("torch-bce-logits", torch_bce_logits),
        Formula("optax", optax),
        Formula("sklearn", sklearn),
        Formula("keras3-torch", keras3_torch, Clip(hi_in_dtype=False, log_floor=-100.0)),
        Formula("keras-sigmoid-logits", keras_sigmoid_logits),
        Formula("keras3-numpy", keras3_numpy, Clip(hi_in_dtype=False, np_clip=True)),
    )
}
NAMES: tuple[str, ...] = records.FORMULA_NAMES  # one list of the built-ins; FORMULAS has one each


_USER: dict[str, Formula] = {}


def get(name: str) -> Formula:
    """A built-in formula, or a user implementation registered with `register_impl`."""
    if name in FORMULAS:
        return FORMULAS[name]
    if name in _USER:
        return _USER[name]
    raise KeyError(f"unknown formula {name!r}; choose from {', '.join(NAMES)} or impl:module:function")


def register_impl(spec: str, kind: str, pythonpath: Sequence[str] = ()) -> Formula:
    """Import a user implementation (from the ``pythonpath`` directories first) and make it
    available by its spec; raises ImplError."""
    return _register(impl.load(spec, kind, pythonpath))


def register_function(func: Callable, kind: str, name: str) -> Formula:
    """Make a Python callable a formula named ``name`` (``impl:...``), with no import spec: it
    runs in this process only (no pool or Dask worker can import it again)."""
    if not impl.is_impl(name):
        raise ValueError(f"a user formula's name starts with {impl.PREFIX!r}: {name!r}")
    if kind not in impl.KINDS:
        raise impl.ImplError(f"unknown implementation kind {kind!r}; choose from {', '.join(impl.KINDS)}")
    return _register(impl.UserImpl(name, kind, func, impl.Source(name, kind)))


def _register(user: impl.UserImpl) -> Formula:
    def bce_logits(x, y, eps, ev):
        return user(np.asarray(x), np.asarray(y))

    def bce_probs(x, y, eps, ev):
        return user(np.asarray(ev.sigmoid(x)), np.asarray(y))

    kind = user.kind
    fn = {"bce-logits": bce_logits, "bce-probs": bce_probs}.get(kind, bce_logits)
    f = Formula(user.spec, fn, None, "bce" if kind.startswith("bce") else kind, user)
    _USER[user.spec] = f
    return f


def sources(names: Sequence[str]) -> tuple[impl.Source, ...]:
    """What a worker needs to register the user implementations among ``names`` again."""
    out = []
    for n in names:
        if impl.is_impl(n):
            user = get(n).user
            assert user is not None and user.source is not None  # impl.load gave it both
            out.append(user.source)
    return tuple(out)


def ensure(sources_: Sequence[impl.Source]) -> None:
    """Register user implementations where they are missing or another version (a worker
    process); a no-op where they are already the same (the process that resolved them)."""
    for src in sources_:
        f = _USER.get(src.spec)
        if f is None or f.user is None or f.user.source != src:
            _register(impl.resolve(src))


def clip_bounds(formula: Formula, eps: float, ev: Evaluator) -> tuple[np.generic, np.generic]:
    """The clip bounds as the framework really uses them, rounded to the dtype."""
    assert formula.clip is not None  # only a clipping formula has bounds
    if formula.clip.np_clip:
        dt = np.clip(ev.arr(0.5), eps, 1.0 - eps).dtype  # the dtype numpy clips in
        bounds = np.asarray([eps, 1.0 - eps]).astype(dt)
        return cast(np.generic, bounds[0]), cast(np.generic, bounds[1])
    lo = ev.c(eps)
    with np.errstate(all="ignore"):
        hi = ev.c(1.0) - lo if formula.clip.hi_in_dtype else ev.c(1.0 - eps)
    # 0-d arrays indexed by (): numpy scalars, which the stubs type as arrays
    return cast(np.generic, lo[()]), cast(np.generic, np.asarray(hi).astype(ev.dtype)[()])


def evaluate_sigmoid(x: np.ndarray, ev: Evaluator) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(ev.sigmoid(ev.inputs(x)))


def evaluate_roundtrip(x: np.ndarray, ev: Evaluator) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.asarray(roundtrip(ev.inputs(x), ev))
