"""The process that runs Keras 3 for `keras_backend`: one Keras backend per process.

Keras picks its backend once, at import, from ``KERAS_BACKEND``; so each backend audited runs
in its own worker (``python -m bce_audit.keras_runner``), started by `bce_audit.keras_backend`
with that variable set. The worker answers requests on its stdin/stdout pipes.

A message is one JSON line (a header) and then the raw bytes of each array the header lists
by dtype name and shape: bit for bit, every dtype kept (ml_dtypes' bfloat16 and float8 too),
nothing pickled. The first message the worker writes says whether Keras imported (and its
version); each answer is ``{"ok": true}`` with the result arrays or ``{"ok": false, "error":
...}`` naming what failed. Anything a library prints goes to stderr, never into the protocol.

>>> import io
>>> buf = io.BytesIO()
>>> write_message(buf, {"op": "sigmoid"}, [np.arange(3, dtype=np.float16)])
>>> _ = buf.seek(0)
>>> header, arrays = read_message(buf)
>>> header["op"], arrays[0].dtype.name, arrays[0].tolist()
('sigmoid', 'float16', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from typing import IO, Any

import ml_dtypes
import numpy as np

# what each request runs, in Keras's public API (the names are the adapter's "calls")
CALLS = {
    "sigmoid": "keras.ops.sigmoid(x)",
    "logit": "keras.ops.log(p / (1 - p))",
    "bce-probs": "keras.losses.binary_crossentropy(y, keras.ops.convert_to_numpy(keras.ops.sigmoid(x)))",
    "bce-sigmoid": "keras.losses.binary_crossentropy(y, keras.ops.sigmoid(x))",
    "bce-logits": "keras.losses.binary_crossentropy(y, x, from_logits=True)",
}
CALLS.update({f"grad-{k}": f"d/dx {v}, by the backend's autodiff" for k, v in list(CALLS.items())
              if k.startswith("bce-")})


def dtype_of(name: str) -> np.dtype:
    """A dtype from its name: numpy's own, or ml_dtypes' (bfloat16, float8_e4m3fn, ...)."""
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def write_message(f: IO[bytes], header: dict[str, Any], arrays: list[np.ndarray] | None = None) -> None:
    arrays = [np.ascontiguousarray(a) for a in arrays or ()]
    header = {**header, "arrays": [{"dtype": a.dtype.name, "shape": list(a.shape)} for a in arrays]}
    f.write(json.dumps(header).encode() + b"\n")
    for a in arrays:
        f.write(a.tobytes())
    f.flush()


def read_message(f: IO[bytes]) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One message; EOFError when the other side has closed the pipe (or died)."""
    line = f.readline()
    if not line.endswith(b"\n"):
        raise EOFError("the pipe closed")
    header = json.loads(line)
    arrays = []
    for spec in header.pop("arrays"):
        dt = dtype_of(spec["dtype"])
        n = math.prod(spec["shape"]) * dt.itemsize
        raw = f.read(n)
        if len(raw) != n:
            raise EOFError("the pipe closed inside an array")
        arrays.append(np.frombuffer(raw, dtype=dt).reshape(spec["shape"]).copy())
    return header, arrays


def _calls() -> dict[str, Callable[..., np.ndarray]]:
    import keras
    from keras import ops

    def col(a: np.ndarray):
        return ops.convert_to_tensor(a.reshape(-1, 1))  # binary_crossentropy means over the last axis

    def flat(t) -> np.ndarray:
        return np.asarray(ops.convert_to_numpy(t)).reshape(-1)

    def bce(y, p, from_logits=False):
        return flat(keras.losses.binary_crossentropy(col(y), p, from_logits=from_logits))

    backend = keras.backend.backend()
    plain: Callable = lambda t: t  # noqa: E731
    if backend == "tensorflow":  # a new tensor of the same values, without the _keras_logits attribute
        import tensorflow as tf

        plain = tf.identity
    losses = {  # tensor x, tensor y -> the loss per row, differentiable
        "bce-probs": lambda x, y: keras.losses.binary_crossentropy(y, plain(ops.sigmoid(x))),
        "bce-sigmoid": lambda x, y: keras.losses.binary_crossentropy(y, ops.sigmoid(x)),
        "bce-logits": lambda x, y: keras.losses.binary_crossentropy(y, x, from_logits=True),
    }
    calls: dict[str, Callable[..., np.ndarray]] = {
        "sigmoid": lambda x: flat(ops.sigmoid(col(x))),
        "logit": lambda p: flat(ops.log(ops.divide(col(p), ops.subtract(1.0, col(p))))),
        # the probabilities as a plain array: no tensor attribute (TF's _keras_logits) comes along
        "bce-probs": lambda x, y: bce(y, ops.convert_to_numpy(ops.sigmoid(col(x)))),
        "bce-sigmoid": lambda x, y: bce(y, ops.sigmoid(col(x))),
        "bce-logits": lambda x, y: bce(y, col(x), from_logits=True),
    }
    for name, loss in losses.items():
        g = _grad(backend, loss, col, flat)
        if g is not None:
            calls[f"grad-{name}"] = g
    return calls


def _grad(backend: str, loss: Callable, col: Callable, flat: Callable) -> Callable | None:
    """x, y -> d loss / dx through the backend's own autodiff (None: numpy has none)."""
    if backend == "tensorflow":
        import tensorflow as tf

        def tf_grad(x, y):
            xt, yt = col(x), col(y)
            with tf.GradientTape() as tape:
                tape.watch(xt)
                out = loss(xt, yt)
            return flat(tape.gradient(out, xt, output_gradients=tf.ones_like(out)))
        return tf_grad
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def jax_grad(x, y):
            yt = col(y)
            return flat(jax.grad(lambda t: jnp.sum(loss(t, yt)))(col(x)))
        return jax_grad
    if backend == "torch":
        import torch

        def torch_grad(x, y):
            xt = col(x).detach().clone().requires_grad_(True)
            out = loss(xt, col(y))
            out.backward(torch.ones_like(out))
            return flat(xt.grad)
        return torch_grad
    return None


def _versions() -> dict[str, str]:
    import keras

    backend = keras.backend.backend()
    out = {"keras": keras.__version__, "backend": backend}
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}.get(backend)
    if module:
        out["framework"] = f"{module} {sys.modules[module].__version__}"
    return out


def main() -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the protocol's own copy of stdout
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # what libraries print goes to stderr
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    try:
        import keras

        calls = _calls()
        hello = _versions()
    except BaseException as e:  # an import failure is the answer, not a crash
        write_message(out, {"ok": False, "error": f"{type(e).__name__}: {_first_line(e)}"})
        return 1
    write_message(out, {"ok": True, **hello})
    while True:
        try:
            header, arrays = read_message(inp)
        except EOFError:
            return 0
        try:
            if header.get("eps") is not None:  # what backend.epsilon() gives binary_crossentropy
                keras.config.set_epsilon(header["eps"])
            result = calls[header["op"]](*arrays)
        except Exception as e:
            write_message(out, {"ok": False, "error": f"{type(e).__name__}: {_first_line(e)}"})
            continue
        write_message(out, {"ok": True}, [result])


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


if __name__ == "__main__":
    sys.exit(main())
