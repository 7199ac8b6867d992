"""Keras 3 as a real backend: `keras.losses.binary_crossentropy` and `keras.ops.sigmoid`, run for real.

One process holds one Keras backend (chosen at import by ``KERAS_BACKEND``), so each Keras
backend runs in a long-lived Keras worker of its own (`bce_audit.keras_runner`, the one that
`reproduce` uses too) and arrays travel through its pipes bit for bit. What each Keras backend
really runs, per formula (``keras/src/backend/{tensorflow,jax,torch,numpy}/nn.py``
binary_crossentropy and sigmoid):

- tensorflow: from probabilities, ``clip(p, eps, 1-eps)`` then logs (``keras3``); the sigmoid's
  output carries ``_keras_logits`` and a loss on it uses those logits with no clip
  (``keras-sigmoid-logits``); ``from_logits=True`` is ``tf.nn.sigmoid_cross_entropy_with_logits``
  (``logits-stable``).
- jax: the clip and logs (``keras3``); ``from_logits=True`` is ``-y*log_sigmoid(x) -
  (1-y)*log_sigmoid(-x)``, optax's formula (``optax``).
- torch: ``torch.clip`` then ``F.binary_cross_entropy`` (``keras3-torch``); ``from_logits=True``
  is ``F.binary_cross_entropy_with_logits`` (``torch-bce-logits``).
- numpy: the clip and logs, where ``np.clip`` promotes ml_dtypes arrays (bfloat16, float8) to
  float32 (``keras3-numpy``); ``from_logits=True`` runs the same sigmoid-then-clip path.

Keras has no logit op: the round trip's logit is ``keras.ops.log(p / (1 - p))``. Gradients are
each backend's own autodiff of the same call (none on numpy); the gradient models follow
TensorFlow's rules for ``keras3`` in mode tf and JAX's in mode xla (where its float16 gradient is
NaN once ``1/p`` overflows), torch's for ``keras3-torch``. A clipping formula's eps is set as
Keras's ``epsilon()`` in the worker. A result of another dtype than the input is an error
(`Failed`), except the numpy backend's float32 from an ml_dtypes input, rounded back to the
dtype (`keras3-numpy` models that rounding too); Keras's numpy backend turns float64 inputs into
float32, so float64 is not audited there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bce_audit import keras_runner
from bce_audit.records import KERAS_BACKENDS

INSTALL = "pip install 'bce-audit[keras]'"
EXTRA = {"tensorflow": "tensorflow-cpu", "jax": "jax", "torch": "torch", "numpy": "numpy"}
START_TIMEOUT = 300.0  # seconds the worker may take to import Keras (TensorFlow on a busy machine)
BLOCK = 256  # elements: whole SIMD blocks (Eigen's packets, torch's vectors) for every value

# formula -> the worker's call, per Keras backend (keras_runner.CALLS says what each runs)
FORMULAS = {
    "tensorflow": {"keras3": "bce-probs", "keras-sigmoid-logits": "bce-sigmoid",
                   "logits-stable": "bce-logits"},
    "jax": {"keras3": "bce-probs", "optax": "bce-logits"},
    "torch": {"keras3-torch": "bce-probs", "torch-bce-logits": "bce-logits"},
    "numpy": {"keras3-numpy": "bce-probs"},
}
# how each backend computes, as the models' mode (formulas.MODES: TensorFlow's kernels, XLA's
# flushing, torch's float32 opmath for narrow dtypes, numpy's own)
MODES = {"tensorflow": "tf", "jax": "xla", "torch": "upcast", "numpy": "per-op"}


class Missing(RuntimeError):
    """Keras (or its backend framework) cannot run here, or its worker died; says how to install."""


class Failed(RuntimeError):
    """One call failed in the worker (a dtype the framework has no kernel for)."""


class Worker(keras_runner.Worker):
    """One Keras 3 backend in its own worker process, answering calls until it is closed."""

    def __init__(self, keras_backend: str):
        self.keras_backend = keras_backend
        # float64 stays float64 under JAX, as with --backend jax; every backend on the CPU (no GPU
        # visible to TensorFlow or torch), as the kernel models and --device say
        env = {"JAX_ENABLE_X64": "1", "CUDA_VISIBLE_DEVICES": ""}
        try:
            super().__init__("keras", keras_backend, env=env, start_timeout=START_TIMEOUT)
        except keras_runner.TimedOut:
            raise Missing(f"--keras-backend {keras_backend}: Keras did not start within "
                          f"{START_TIMEOUT:g} s") from None
        except keras_runner.ImportFailed as e:
            raise Missing(f"--keras-backend {keras_backend}: cannot import Keras with the {keras_backend} "
                          f"backend ({e.error}); {self.install}") from None
        except keras_runner.WorkerError as e:
            raise Missing(f"--keras-backend {keras_backend}: {e}; {self.install}") from None

    @property
    def install(self) -> str:
        extra = EXTRA.get(self.keras_backend, "")
        return f"{INSTALL} {extra}" if extra and extra != "numpy" else INSTALL

    def call(self, op: str, *arrays: np.ndarray, eps: float | None = None) -> np.ndarray:
        """Run one call (at Keras's ``epsilon()`` = eps, if given); its error is `Failed`, a
        dead worker `Missing`."""
        try:
            header, out = self.request({"op": op, "eps": eps}, list(arrays))
        except keras_runner.WorkerError as e:
            raise Missing(f"--keras-backend {self.keras_backend}: {e}; {self.install}") from None
        if not header.get("ok"):
            raise Failed(f"keras {self.keras_backend} {keras_runner.CALLS[op]} does not support "
                         f"{arrays[0].dtype}: {header.get('error')}")
        return out[0]


_WORKERS: dict[str, Worker] = {}


def worker(keras_backend: str) -> Worker:
    """The worker of one Keras backend, started on first use and kept for the process."""
    if keras_backend not in _WORKERS:
        _WORKERS[keras_backend] = Worker(keras_backend)
    return _WORKERS[keras_backend]


def version(keras_backend: str) -> str | None:
    """Keras's version and its backend framework's (both are part of a cache key)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as v

    dist = {"tensorflow": ("tensorflow", "tensorflow-cpu"), "jax": ("jax", "jaxlib"),
            "torch": ("torch",), "numpy": ("numpy",)}[keras_backend]
    parts = []
    for name in ("keras", *dist):
        with contextlib.suppress(PackageNotFoundError):
            parts.append(f"{name} {v(name)}")
    return ", ".join(parts) if parts and parts[0].startswith("keras ") else None


@dataclass(frozen=True)
class Adapter:
    """A Keras backend's ops as numpy functions (`backends` makes them a Backend)."""

    sigmoid: Callable[[np.ndarray], np.ndarray]
    logit: Callable[[np.ndarray], np.ndarray]
    bce: dict[str, Callable[..., np.ndarray]]  # f(x, y), or f(x, y, eps) for a clipping formula
    grad: dict[str, Callable[..., np.ndarray]]  # the same arguments; numpy: none (no autodiff)
    what: dict[str, str]


def adapter(keras_backend: str) -> Adapter:
    """Keras 3 on ``keras_backend``, its ops running in a worker process."""
    if keras_backend not in KERAS_BACKENDS:
        raise Missing(f"unknown Keras backend {keras_backend!r}; choose from {', '.join(KERAS_BACKENDS)}")
    w = worker(keras_backend)
    promotes = keras_backend == "numpy"  # np.clip has no ml_dtypes loop: float32 comes back

    def wrap(op: str) -> Callable[..., np.ndarray]:
        def run(*args) -> np.ndarray:
            """f(x), f(x, y), or f(x, y, eps) for a clipping formula (Keras's epsilon())."""
            arrays = [a for a in args if isinstance(a, np.ndarray)]
            eps = next((float(a) for a in args if not isinstance(a, np.ndarray)), None)
            dtype = arrays[0].dtype
            n = arrays[0].size
            if not n:
                return np.empty(0, dtype)
            # whole blocks: every value takes the kernels' vector path, wherever it sits
            pad = (-n) % BLOCK
            padded = [np.concatenate([a.ravel(), np.repeat(a.ravel()[-1:], pad)]).astype(dtype, copy=False)
                      for a in arrays]
            out = w.call(op, *padded, eps=eps)[:n]
            if out.dtype != dtype:
                if not (promotes and out.dtype == np.float32 and dtype.type.__module__ == "ml_dtypes"):
                    raise Failed(f"keras {keras_backend} {keras_runner.CALLS[op]} returned "
                                 f"{out.dtype} for {dtype} input")
                out = out.astype(dtype)  # ml_dtypes on numpy: computed in float32, rounded once here
            return out
        return run

    calls = FORMULAS[keras_backend]
    padded_note = f" (shape (n, 1), padded to whole blocks of {BLOCK})"
    what = {f: keras_runner.CALLS[c] + padded_note for f, c in calls.items()}
    if keras_backend == "numpy":
        what["keras3-numpy"] += "; from_logits=True runs the same sigmoid then clip; bfloat16/float8: " \
                                "float32 result rounded to the dtype"
    grad = {} if keras_backend == "numpy" else {f: wrap(f"grad-{c}") for f, c in calls.items()}
    return Adapter(wrap("sigmoid"), wrap("logit"), {f: wrap(c) for f, c in calls.items()}, grad, what)
