"""Real frameworks: run the installed torch / JAX / TensorFlow / scikit-learn ops on the audit's
grid, audited like the models.

A backend turns numpy arrays of the audited dtype into the framework's tensors (bit for bit),
runs the real op, and converts back. Keras 3 (`--backend keras`) runs in a worker process per
Keras backend (`bce_audit.keras_backend`). Formulas with no real counterpart in a backend are listed
by `missing()` and reported as such; a dtype the framework cannot compute in is an
`Unsupported` error naming the op. The frameworks are optional extras, imported only when
asked for: without them `BackendMissing` carries the install command.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from bce_audit import formulas
from bce_audit.formulas import Formula, Ops
from bce_audit.records import KERAS_BACKENDS, Settings

NAMES = ("numpy", "torch", "jax", "tensorflow", "sklearn", "keras")
INSTALL = {"torch": "pip install 'bce-audit[torch]'", "jax": "pip install 'bce-audit[jax]'",
           "tensorflow": "pip install 'bce-audit[tensorflow]'", "sklearn": "pip install 'bce-audit[sklearn]'",
           "keras": "pip install 'bce-audit[keras]'"}


class BackendMissing(RuntimeError):
    """The framework is not installed; the message says how to install it."""


class Unsupported(RuntimeError):
    """The framework has no such op for this dtype (e.g. torch.sigmoid on float8)."""


@dataclass
class Backend:
    """One framework on one device: its sigmoid, logit, BCE ops and their gradients."""

    name: str
    device: str
    sigmoid: Callable[[np.ndarray], np.ndarray]
    logit: Callable[[np.ndarray], np.ndarray]
    bce: dict[str, Callable[..., np.ndarray]]  # f(x, y), or f(x, y, eps) for a clipping formula
    grad: dict[str, Callable[..., np.ndarray]] = field(default_factory=dict)
    what: dict[str, str] = field(default_factory=dict)  # formula -> the real call it runs
    block: int = 0  # arrays are padded to whole blocks of this many elements (0: not padded)
    keras_backend: str | None = None  # keras: the Keras backend it runs on
    variants: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    """Round-trip variants only this framework has (jax: ``logit(sigmoid(x))`` in one jit,
    which XLA rewrites), compared by fidelity with the model of the same name."""

    @property
    def evaluation(self) -> str:
        """How the real ops see the inputs, for the output to say."""
        if not self.block:
            return f"{self.label} evaluates each array as given"
        return (f"{self.label} evaluates arrays padded to whole blocks of {self.block} values, so "
                "every value takes the kernel's vector path wherever it sits")

    @property
    def label(self) -> str:
        return "-".join(p for p in (self.name, self.keras_backend, self.device) if p)

    def select(self, s: Settings) -> Settings:
        """``s`` with this backend selected."""
        return replace(s, backend=self.name, device=self.device,
                       keras_backend=self.keras_backend or s.keras_backend)

    def ops(self) -> Ops:
        return Ops(sigmoid=self.sigmoid, logit=self.logit)

    def formula(self, name: str) -> Formula | None:
        """The real counterpart of a model formula, as a Formula (None if there is none)."""
        if name not in self.bce:
            return None
        op = self.bce[name]

        model = formulas.get(name)

        def fn(x, y, eps, ev):
            return op(x, y, eps) if model.uses_eps else op(x, y)

        return Formula(name, fn, model.clip, mean32=model.mean32)

    def missing(self, names) -> list[str]:
        return [n for n in names if formulas.get(n).kind == "bce" and n not in self.bce]


_BACKENDS: dict[tuple[str, str, str], Backend] = {}


def version(name: str, keras_backend: str | None = None) -> str | None:
    """The installed framework's version (part of a cache key), None for numpy's models; for
    keras, Keras's and its backend framework's."""
    if name == "numpy":
        return None
    if name == "keras":
        from bce_audit import keras_backend as kb

        return kb.version(keras_backend or KERAS_BACKENDS[0])
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    try:
        return v(name)
    except PackageNotFoundError:
        return None


def get(name: str, device: str = "cpu", keras_backend: str = KERAS_BACKENDS[0]) -> Backend | None:
    """The backend by name (None for numpy, the models themselves); cached."""
    if name == "numpy":
        return None
    key = (name, device, keras_backend if name == "keras" else "")
    if key not in _BACKENDS:
        if device != "cpu" and name != "torch":
            raise BackendMissing(f"--device applies to the torch backend; {name} runs on cpu here")
        if name == "keras":
            _BACKENDS[key] = _keras(keras_backend)
        else:
            make = {"torch": _torch, "jax": _jax, "tensorflow": _tensorflow, "sklearn": _sklearn}[name]
            _BACKENDS[key] = make(device)
    return _BACKENDS[key]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """TensorFlow's import, quietly: its C++ logging (absl's banner, oneDNN and CUDA notes)
    writes to the process's stderr before any Python setting can reach it, so file
    descriptor 2 points at /dev/null meanwhile."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _padded(run: Callable[..., np.ndarray], block: int) -> Callable[..., np.ndarray]:
    """``run`` on arrays padded to whole blocks of ``block`` elements (the last value repeated):
    a CPU kernel runs whole SIMD blocks and a scalar remainder, which can differ by an ULP, so
    padding gives every element the block path, wherever it sits. Scalars pass through."""
    def padded(*args):
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        n = arrays[0].size
        pad = (-n) % block if n else 0
        args = tuple(np.concatenate([a.ravel(), np.repeat(a.ravel()[-1:], pad)]) if isinstance(a, np.ndarray)
                     else a for a in args)
        return run(*args)[:n]
    return padded


# ---------------------------------------------------------------- torch

_BLOCK = 256  # elements: a multiple of every SIMD block width torch uses on CPU

_TORCH_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32", "float64": "float64",
                 "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}


def _torch(device: str) -> Backend:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        raise BackendMissing("the torch backend needs PyTorch: pip install 'bce-audit[torch]'") from None
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendMissing("--device cuda: no CUDA device is available to torch here; use --device cpu")

    def to_t(a: np.ndarray):
        name = a.dtype.name
        if name not in _TORCH_DTYPES:
            raise Unsupported(f"torch has no {a.dtype} tensors")
        tdt = getattr(torch, _TORCH_DTYPES[name])
        raw = np.ascontiguousarray(a).view(np.dtype(f"int{a.dtype.itemsize * 8}"))
        return torch.from_numpy(raw.copy()).view(tdt).to(device)

    def to_n(t, dtype: np.dtype) -> np.ndarray:
        t = t.detach().to("cpu")
        raw = t.view(getattr(torch, f"int{dtype.itemsize * 8}")).numpy()
        return raw.view(dtype)

    def wrap(what: str, fn: Callable) -> Callable:
        def run(*arrays: np.ndarray) -> np.ndarray:
            dtype = arrays[0].dtype
            try:
                out = fn(*(to_t(a) for a in arrays))
            except (RuntimeError, NotImplementedError, TypeError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise Unsupported(f"torch {what} does not support {dtype}: {first}") from None
            return to_n(out, dtype)
        return _padded(run, _BLOCK)

    def bce(x, y):
        return F.binary_cross_entropy(torch.sigmoid(x), y, reduction="none")

    def bce_logits(x, y):
        return F.binary_cross_entropy_with_logits(x, y, reduction="none")

    def grad_of(loss: Callable) -> Callable:
        def g(x, y):
            x = x.clone().requires_grad_(True)
            loss(x, y).backward(torch.ones_like(x))
            return x.grad
        return g

    return Backend(
        "torch", device,
        sigmoid=wrap("sigmoid", torch.sigmoid),
        logit=wrap("logit", torch.logit),
        bce={"torch-bce": wrap("binary_cross_entropy", bce),
             "torch-bce-logits": wrap("binary_cross_entropy_with_logits", bce_logits)},
        grad={"torch-bce": wrap("binary_cross_entropy backward", grad_of(bce)),
              "torch-bce-logits": wrap("binary_cross_entropy_with_logits backward", grad_of(bce_logits))},
        what={"torch-bce": "F.binary_cross_entropy(torch.sigmoid(x), y)",
              "torch-bce-logits": "F.binary_cross_entropy_with_logits(x, y)"},
        block=_BLOCK,
    )


# ---------------------------------------------------------------- jax


def _jax(device: str) -> Backend:
    if device != "cpu":
        raise BackendMissing("--device applies to the torch backend; jax runs on cpu here")
    try:
        import jax
    except ImportError:
        raise BackendMissing("the jax backend needs JAX: pip install 'bce-audit[jax]'") from None
    jax.config.update("jax_enable_x64", True)  # float64 stays float64
    import jax.numpy as jnp
    import jax.scipy.special as jss

    try:
        import optax

        def optax_bce(x, y):
            return optax.sigmoid_binary_cross_entropy(x, y)
        what = "optax.sigmoid_binary_cross_entropy(x, y)"
    except ImportError:  # optax's own formula on jax.nn.log_sigmoid
        def optax_bce(x, y):
            return -y * jax.nn.log_sigmoid(x) - (1 - y) * jax.nn.log_sigmoid(-x)
        what = "-y*jax.nn.log_sigmoid(x) - (1-y)*jax.nn.log_sigmoid(-x)"

    def wrap(name: str, fn: Callable) -> Callable:
        jitted = jax.jit(fn)

        def run(*arrays: np.ndarray) -> np.ndarray:
            dtype = arrays[0].dtype
            if dtype == np.longdouble and dtype != np.float64:
                raise Unsupported(f"jax {name} has no {dtype} arrays")
            try:
                out = np.asarray(jitted(*(jnp.asarray(a) for a in arrays)))
            except (TypeError, ValueError, RuntimeError, NotImplementedError) as e:
                raise Unsupported(f"jax {name} does not support {dtype}: {str(e).splitlines()[0]}") from None
            if out.dtype != dtype:
                raise Unsupported(f"jax {name} returned {out.dtype} for {dtype} input")
            return out
        return run

    def grad_of(loss: Callable) -> Callable:
        def g(x, y):
            return jax.grad(lambda t: jnp.sum(loss(t, y)))(x)
        return g

    return Backend(
        "jax", "cpu",
        sigmoid=wrap("jax.nn.sigmoid", jax.nn.sigmoid),
        logit=wrap("jax.scipy.special.logit", jss.logit),
        variants={"roundtrip in one jit": wrap("fused round trip", lambda x: jss.logit(jax.nn.sigmoid(x)))},
        bce={"optax": wrap("optax", optax_bce)},
        grad={"optax": wrap("optax grad", grad_of(optax_bce))},
        what={"optax": what},
    )


# ---------------------------------------------------------------- tensorflow


def _tensorflow(device: str) -> Backend:
    """TensorFlow's own ops, eagerly, on the CPU; tf_keras's binary_crossentropy where installed."""
    try:
        with quiet():
            import tensorflow as tf

            tf.math.sigmoid(tf.constant([0.0]))  # the first op finds the devices, noisily
    except ImportError:
        raise BackendMissing(f"the tensorflow backend needs TensorFlow: {INSTALL['tensorflow']}") from None
    tf.get_logger().setLevel("ERROR")
    try:
        import tf_keras
    except ImportError:
        tf_keras = None

    def wrap(what: str, fn: Callable) -> Callable:
        def run(*args):
            dtype = args[0].dtype
            try:
                with tf.device("/CPU:0"):  # the CPU kernels the models are of, with a GPU present too
                    tensors = [tf.constant(a) if isinstance(a, np.ndarray) else a for a in args]
                    out = fn(*tensors).numpy()
            except (tf.errors.OpError, TypeError, ValueError, NotImplementedError) as e:
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise Unsupported(f"tensorflow {what} does not support {dtype}: {first}") from None
            if out.dtype != dtype:
                raise Unsupported(f"tensorflow {what} returned {out.dtype} for {dtype} input")
            return out
        return _padded(run, _TF_BLOCK)

    def logit(p):
        return tf.math.log(p / (1 - p))

    def stable(x, y):
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)

    def keras2(x, y, eps):
        """multi-backend Keras 2.2.4 `keras/backend/tensorflow_backend.py`, in TF ops."""
        p = tf.math.sigmoid(x)
        e = tf.constant(eps, dtype=p.dtype)
        p = tf.clip_by_value(p, e, 1 - e)
        return tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=tf.math.log(p / (1 - p)))

    def legacy(x, y, eps):
        """tf_keras `backend.binary_crossentropy` on a plain tensor (no `_keras_logits`)."""
        assert tf_keras is not None
        old = tf_keras.backend.epsilon()
        tf_keras.backend.set_epsilon(eps)
        try:
            return tf_keras.backend.binary_crossentropy(y, tf.math.sigmoid(x))
        finally:
            tf_keras.backend.set_epsilon(old)

    def grad_of(loss: Callable) -> Callable:
        def g(x, y, *eps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = loss(x, y, *eps)
            return tape.gradient(out, x)
        return g

    bce: dict[str, Callable[..., Any]] = {"keras2-logits": keras2, "logits-stable": stable}
    what = {"keras2-logits": "tf.nn.sigmoid_cross_entropy_with_logits(y, tf.math.log(p / (1 - p))), "
                             "p = tf.clip_by_value(tf.math.sigmoid(x), eps, 1 - eps)",
            "logits-stable": "tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=x)"}
    if tf_keras is not None:
        bce["tf-keras"] = legacy
        what["tf-keras"] = "tf_keras.backend.binary_crossentropy(y, tf.math.sigmoid(x))"
    return Backend(
        "tensorflow", "cpu",
        sigmoid=wrap("tf.math.sigmoid", tf.math.sigmoid),
        logit=wrap("tf.math.log(p / (1 - p))", logit),
        bce={k: wrap(k, f) for k, f in bce.items()},
        grad={k: wrap(f"{k} gradient", grad_of(f)) for k, f in bce.items()},
        what=what,
        block=_TF_BLOCK,
    )


_TF_BLOCK = 256  # elements: whole packets of every width Eigen vectorises with


# ---------------------------------------------------------------- scikit-learn


def _sklearn(device: str) -> Backend:
    """``sklearn.metrics.log_loss`` on ``p = sigmoid(x)`` (numpy's sigmoid: sklearn has none)."""
    try:
        from sklearn.metrics import _classification as skc
        from sklearn.utils import check_array
        from sklearn.utils._array_api import supported_float_dtypes
    except ImportError:
        raise BackendMissing(f"the sklearn backend needs scikit-learn: {INSTALL['sklearn']}") from None

    def log_loss(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Each point's loss: p in the dtype, then sklearn's own input conversion and
        validation (the [1 - p, p] columns) over all points at once, and its `_log_loss` on
        each row (`log_loss` returns only the mean); points of equal (p, y) share one call.
        The loss, a Python float, is rounded to the audited dtype."""
        dtype = x.dtype
        p = formulas.evaluate_sigmoid(x, formulas.Evaluator(dtype.name))
        keys = np.stack([p.astype(np.float64), y.astype(np.float64)], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        pu, yu = p[first], y[first].astype(np.float64)
        good = np.flatnonzero(np.isfinite(pu.astype(np.float64)))  # sklearn refuses nan
        vals = np.full(len(first), np.nan)
        if good.size:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probs = check_array(pu[good], ensure_2d=False, dtype=supported_float_dtypes(np))
                labels, probs = skc._validate_multiclass_probabilistic_prediction(
                    yu[good], probs, None, [0, 1])
                vals[good] = [skc._log_loss(labels[i:i + 1], probs[i:i + 1], normalize=False)
                              for i in range(len(good))]
        with np.errstate(over="ignore"):
            return vals[inverse.ravel()].astype(dtype)

    return Backend(
        "sklearn", "cpu",
        sigmoid=lambda x: formulas.evaluate_sigmoid(x, formulas.Evaluator(x.dtype.name)),
        logit=lambda p: formulas._logit(formulas.Evaluator(p.dtype.name), p),
        bce={"sklearn": log_loss},
        what={"sklearn": "sklearn.metrics.log_loss(y, p) per point (its _log_loss after its own "
                         "validation), p = numpy's 1 / (1 + exp(-x))"},
    )



# ---------------------------------------------------------------- keras


def _keras(keras_backend: str) -> Backend:
    """Keras 3 on one of its backends, in a worker process (`bce_audit.keras_backend`)."""
    from bce_audit import keras_backend as kb

    def real(fn: Callable) -> Callable:
        def run(*args):
            try:
                return fn(*args)
            except kb.Failed as e:
                raise Unsupported(str(e)) from None
            except kb.Missing as e:
                raise BackendMissing(str(e)) from None
        return run

    try:
        a = kb.adapter(keras_backend)
    except kb.Missing as e:
        raise BackendMissing(str(e)) from None
    return Backend("keras", "cpu", sigmoid=real(a.sigmoid), logit=real(a.logit),
                   bce={f: real(op) for f, op in a.bce.items()},
                   grad={f: real(op) for f, op in a.grad.items()}, what=a.what, block=kb.BLOCK,
                   keras_backend=keras_backend)
