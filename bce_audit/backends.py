"""Real frameworks: run the installed torch / JAX ops on the audit's grid, audited like the models.

A backend turns numpy arrays of the audited dtype into the framework's tensors (bit for bit),
runs the real op, and converts back. Keras 3 (`--backend keras`) runs in a worker process per
Keras backend (`bce_audit.keras_backend`). Formulas with no real counterpart in a backend are listed
by `missing()` and reported as such; a dtype the framework cannot compute in is an
`Unsupported` error naming the op. torch and jax are optional extras: without them
`BackendMissing` carries the install command.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from bce_audit import formulas
from bce_audit.formulas import Formula, Ops
from bce_audit.records import KERAS_BACKENDS, Settings

NAMES = ("numpy", "torch", "jax", "keras")


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
    bce: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]
    grad: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = field(default_factory=dict)
    what: dict[str, str] = field(default_factory=dict)  # formula -> the real call it runs
    variant: str | None = None  # keras: the Keras backend it runs on

    @property
    def label(self) -> str:
        return "-".join(p for p in (self.name, self.variant, self.device) if p)

    def select(self, s: Settings) -> Settings:
        """``s`` with this backend selected."""
        return replace(s, backend=self.name, device=self.device,
                       keras_backend=self.variant or s.keras_backend)

    def ops(self) -> Ops:
        return Ops(sigmoid=self.sigmoid, logit=self.logit)

    def formula(self, name: str) -> Formula | None:
        """The real counterpart of a model formula, as a Formula (None if there is none)."""
        if name not in self.bce:
            return None
        op = self.bce[name]

        def fn(x, y, eps, ev):
            return op(x, y)

        model = formulas.get(name)
        return Formula(name, fn, model.clip)

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
        if name == "keras":
            _BACKENDS[key] = _keras(device, keras_backend)
        else:
            _BACKENDS[key] = {"torch": _torch, "jax": _jax}[name](device)
    return _BACKENDS[key]


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
            n = arrays[0].size
            # torch's CPU kernels run whole SIMD blocks and a scalar remainder, which can differ by
            # an ULP; padding to whole blocks gives every element the block path, wherever it sits
            pad = (-n) % _BLOCK if n else 0
            arrays = tuple(np.concatenate([a.ravel(), np.repeat(a.ravel()[-1:], pad)]) for a in arrays)
            try:
                out = fn(*(to_t(a) for a in arrays))
            except (RuntimeError, NotImplementedError, TypeError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise Unsupported(f"torch {what} does not support {dtype}: {first}") from None
            return to_n(out, dtype)[:n]
        return run

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
        bce={"optax": wrap("optax", optax_bce)},
        grad={"optax": wrap("optax grad", grad_of(optax_bce))},
        what={"optax": what},
    )


# ---------------------------------------------------------------- keras


def _keras(device: str, keras_backend: str) -> Backend:
    """Keras 3 on one of its backends, in a worker process (`bce_audit.keras_backend`)."""
    if device != "cpu":
        raise BackendMissing("--device applies to the torch backend; keras runs on cpu here")
    from bce_audit import keras_backend as kb

    def real(fn: Callable) -> Callable:
        def run(*arrays: np.ndarray) -> np.ndarray:
            try:
                return fn(*arrays)
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
                   grad={f: real(op) for f, op in a.grad.items()}, what=a.what, variant=keras_backend)
