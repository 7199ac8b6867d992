"""The Keras worker: the one process that runs Keras for bce-audit, and its launcher.

Keras picks its backend once, at import, from ``KERAS_BACKEND``; so each Keras run is a worker
process of its own (``python -m bce_audit.keras_runner``), started by `Worker` with that
variable set and ``BCE_AUDIT_KERAS`` naming the framework: ``keras`` (Keras 3, the default) or
``tf-keras`` (tf_keras on TensorFlow). `bce_audit.keras_backend` audits Keras 3's ops through
it, `bce_audit.reproduce` runs the question's experiment (`bce_audit.keras_experiment`) through
it. The worker answers requests on its stdin/stdout pipes until stdin closes.

A message is one JSON line (a header) and then the raw bytes of each array the header lists
by dtype name and shape: bit for bit, every dtype kept (ml_dtypes' bfloat16 and float8 too),
nothing pickled. The first message the worker writes says whether the framework imported (and
its versions); each answer is ``{"ok": true}`` with the result arrays (or, for ``reproduce``,
its ``result`` in the header) or ``{"ok": false, "error": ...}`` naming what failed, with
``"missing"``: the module an ImportError could not find. Requests: the ops of `CALLS` (Keras 3
only: tf_keras has no ``keras.ops``) and ``reproduce`` (both). Anything a library prints goes
to stderr, never into the protocol.

>>> import io
>>> buf = io.BytesIO()
>>> write_message(buf, {"op": "sigmoid"}, [np.arange(3, dtype=np.float16)])
>>> _ = buf.seek(0)
>>> header, arrays = read_message(buf)
>>> header["op"], arrays[0].dtype.name, arrays[0].tolist()
('sigmoid', 'float16', [0.0, 1.0, 2.0])
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import select
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import ml_dtypes
import numpy as np

FRAMEWORKS = ("tf-keras", "keras")  # what BCE_AUDIT_KERAS may name
FRAMEWORK_VAR = "BCE_AUDIT_KERAS"  # the environment variable naming the worker's framework
MODULE = "bce_audit.keras_runner"  # the module run as the worker (tests point it elsewhere)

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


def _versions(framework: str) -> dict[str, str]:
    if framework == "tf-keras":
        import tf_keras

        return {"tf_keras": tf_keras.__version__, "backend": "tensorflow",
                "framework": f"tensorflow {sys.modules['tensorflow'].__version__}"}
    import keras

    backend = keras.backend.backend()
    out = {"keras": keras.__version__, "backend": backend}
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy"}.get(backend)
    if module:
        out["framework"] = f"{module} {sys.modules[module].__version__}"
    return out


def _import(framework: str) -> Any:
    """The framework's Keras module, imported quietly."""
    warnings.filterwarnings("ignore")  # chatter on stderr would hide the last line, the error
    logging.disable(logging.WARNING)
    with contextlib.suppress(ImportError):
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    if framework == "tf-keras":
        import tensorflow as tf  # tf_keras needs it
        import tf_keras

        tf.get_logger().setLevel("ERROR")
        return tf_keras
    if framework != "keras":
        raise ValueError(f"{FRAMEWORK_VAR}={framework!r}: choose from {', '.join(FRAMEWORKS)}")
    import keras

    return keras


def main() -> int:
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")  # the protocol's own copy of stdout
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())   # what libraries print goes to stderr
    sys.stdout = sys.stderr
    inp = sys.stdin.buffer
    framework = os.environ.get(FRAMEWORK_VAR, "keras")
    try:
        keras = _import(framework)
        calls = _calls() if framework == "keras" else {}  # keras.ops is Keras 3's
        hello = _versions(framework)
    except BaseException as e:  # an import failure is the answer, not a crash
        write_message(out, _error(e))
        return 1
    write_message(out, {"ok": True, **hello})
    while True:
        try:
            header, arrays = read_message(inp)
        except EOFError:
            return 0
        try:
            if header["op"] == "reproduce":  # the question's experiment: its answer is the header
                from bce_audit import keras_experiment

                answer = keras_experiment.run(keras, framework, header["policies"], header["a"])
                write_message(out, {"ok": True, "result": answer})
                continue
            if header["op"] not in calls:
                raise ValueError(f"{framework} has no op {header['op']!r}")
            if header.get("eps") is not None:  # what backend.epsilon() gives binary_crossentropy
                keras.config.set_epsilon(header["eps"])
            result = calls[header["op"]](*arrays)
        except Exception as e:
            write_message(out, _error(e))
            continue
        write_message(out, {"ok": True}, [result])


def _error(e: BaseException) -> dict[str, Any]:
    """A failure as an answer: one line, and the module an ImportError could not find."""
    answer: dict[str, Any] = {"ok": False, "error": f"{type(e).__name__}: {_first_line(e)}"}
    if isinstance(e, ImportError) and e.name:
        answer["missing"] = e.name
    return answer


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "(no message)"


# ---------------------------------------------------------------- the launcher (the parent's side)


class WorkerError(RuntimeError):
    """The worker could not start, or stopped: one line, which the caller prefixes with its own words."""


class ImportFailed(WorkerError):
    """The framework did not import in the worker: ``error`` says why, ``module`` (or None) is the
    module that could not be found."""

    def __init__(self, error: str, module: str | None):
        super().__init__(error)
        self.error, self.module = error, module


class TimedOut(WorkerError):
    def __init__(self, what: str, seconds: float):
        super().__init__(f"{what} took longer than {seconds:g} s")
        self.what, self.seconds = what, seconds


class Stopped(WorkerError):
    """The worker died (or answered no message) during ``what``: its exit code and the last line
    it wrote to stderr."""

    def __init__(self, what: str, code: int | None, last: str):
        super().__init__(f"the Keras worker stopped during {what} (exit code {code}): {last}")
        self.what, self.code, self.last = what, code, last


class Worker:
    """One Keras worker process, answering requests until it is closed.

    ``env`` adds to the worker's environment (the caller's settings of JAX, CUDA, ...). Every
    failure to start or to answer is a `WorkerError`; after one, each request raises it again.
    """

    def __init__(self, framework: str = "keras", keras_backend: str | None = None,
                 env: dict[str, str] | None = None, start_timeout: float = 300.0):
        self._lock = threading.Lock()
        self._dead: WorkerError | None = None  # why the worker stopped, once it has
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (the worker's, closed in close())
        root = str(Path(__file__).resolve().parent.parent)  # the worker imports this same bce_audit
        full = {**os.environ, FRAMEWORK_VAR: framework, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
                "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
                **(env or {})}
        full.pop("KERAS_BACKEND", None)
        if keras_backend is not None:
            full["KERAS_BACKEND"] = keras_backend
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", MODULE], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self._stderr, env=full)
        except OSError as e:
            self._stderr.close()
            raise WorkerError(f"cannot start {sys.executable}: {e.strerror or e}") from None
        assert self._proc.stdin is not None and self._proc.stdout is not None  # both are pipes
        self._in, self._out = self._proc.stdin, self._proc.stdout
        hello = self._answer(f"import {framework.replace('-', '_')}", start_timeout)[0]
        if not hello.get("ok"):
            self.close()
            raise ImportFailed(str(hello.get("error")), hello.get("missing"))
        self.versions = {k: v for k, v in hello.items() if k != "ok"}
        atexit.register(self.close)

    def request(self, header: dict[str, Any], arrays: list[np.ndarray] | None = None,
                timeout: float | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
        """Send one request and wait for its answer (at most ``timeout`` seconds): the answer's
        header, ``ok`` true or false, and arrays."""
        with self._lock:
            if self._dead is not None:
                raise self._dead
            try:
                write_message(self._in, header, arrays)
            except (ValueError, OSError):  # a broken pipe: the worker is gone
                raise self._died(header["op"]) from None
            return self._answer(header["op"], timeout)

    def _answer(self, what: str, timeout: float | None) -> tuple[dict[str, Any], list[np.ndarray]]:
        if timeout is not None and not select.select([self._out], [], [], max(timeout, 0.0))[0]:
            self._proc.kill()
            self.close()
            self._dead = TimedOut(what, timeout)
            raise self._dead
        try:
            return read_message(self._out)
        except (EOFError, OSError):
            raise self._died(what) from None
        except ValueError:  # not JSON, or not a message's header
            raise self._died(what, "it answered no message") from None

    def _died(self, what: str, last: str = "no message") -> Stopped:
        """Why the worker stopped: its exit code and the last line it wrote to stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        code = self._proc.poll()
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            last = lines[-1].strip()[:200] if lines else last
        self.close()
        self._dead = Stopped(what, code, last)
        return self._dead

    def close(self) -> None:
        """End the worker (it exits when its stdin closes); safe to call twice."""
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        with contextlib.suppress(OSError):
            self._out.close()
        self._stderr.close()


if __name__ == "__main__":
    sys.exit(main())
