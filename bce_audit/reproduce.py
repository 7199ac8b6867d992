"""`bce-audit reproduce`: the seed question's experiment, end to end, on a real Keras.

The question: a model ``Dense(1, activation='sigmoid')`` on one input, weight 1 and bias 0,
compiled with ``binary_crossentropy`` and evaluated on the pair {(-a, 0), (a, 1)}, whose loss
stops falling near 1e-7 from a = 16. The exact mean loss of the pair is ``log1p(exp(-a))``.

Keras runs in a worker process of its own (`bce_audit.keras_runner`, as for ``--backend keras``;
the experiment is `bce_audit.keras_experiment`), under each dtype policy, twice: in the graph
(``model.evaluate``), where Keras may take the logits its sigmoid left on the output tensor
(``_keras_logits``) and skip the clip, and with the probabilities fed from outside as a numpy
array, where it cannot. Which path it took is read from the data: at each a where the
clip-and-log model and the with-logits model differ by more than a factor of 2, the loss votes
for the nearer one. The worker also reports whether the output tensor carries
``_keras_logits`` and whether the backend's loss reads it.
"""

from __future__ import annotations

import importlib.util
import math
import os
import time

import numpy as np

from bce_audit import keras_runner, reference
from bce_audit.records import ReproCase

FRAMEWORKS = keras_runner.FRAMEWORKS
POLICIES = ("float32", "mixed_float16")
EPS = 1e-7  # keras.backend.epsilon()
TIMEOUT = 600.0  # seconds a worker may run: two policies of 65 evaluate calls take about 10
FEEDINGS = {"in-graph": "in-graph", "fed": "fed p"}


def grid() -> list[float]:
    """a = 0..40 step 1, and step 0.25 from 12 to 20, where the floor sets in.

    >>> g = grid(); len(g), g[:3], g[-1]
    (65, [0.0, 1.0, 2.0], 40.0)
    """
    return sorted({float(a) for a in range(41)} | {12 + k / 4 for k in range(33)})


class ReproError(RuntimeError):
    """The Keras run failed: the message is one line."""


class ReproMissing(ReproError):
    """A framework is not installed: the message names the install command."""


def requirements(framework: str, backend: str) -> tuple[tuple[str, ...], str]:
    """The modules a run needs, and the install command that brings them."""
    if framework == "tf-keras":
        return ("tensorflow", "tf_keras"), "pip install 'bce-audit[tensorflow]'"
    extra = "keras" if backend == "numpy" else f"keras,{backend}"
    return ("keras", *((backend,) if backend != "numpy" else ())), f"pip install 'bce-audit[{extra}]'"


def _what(framework: str, backend: str) -> str:
    return "--backend tf-keras" if framework == "tf-keras" else f"--backend keras --keras-backend {backend}"


def check_installed(framework: str, backend: str) -> None:
    """Raise `ReproMissing` unless every module the run needs can be found (none is imported)."""
    modules, install = requirements(framework, backend)
    for m in modules:
        if importlib.util.find_spec(m) is None:
            raise ReproMissing(f"reproduce {_what(framework, backend)} needs {m}, which is not "
                               f"installed: {install}")


def run_worker(framework: str, backend: str, policies: tuple[str, ...], a: list[float],
               timeout: float | None = None) -> dict:
    """Run the experiment in a fresh Keras worker (`bce_audit.keras_runner`, op "reproduce"):
    its answer. At most ``timeout`` seconds (`TIMEOUT`), the start included."""
    check_installed(framework, backend)
    timeout = TIMEOUT if timeout is None else timeout
    what = _what(framework, backend)
    deadline = time.monotonic() + timeout
    # the question's model as its user runs it: on the CPU, JAX in its default float32
    env = {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "")}
    try:
        worker = keras_runner.Worker(framework, backend if framework == "keras" else None, env=env,
                                     start_timeout=timeout)
        try:
            header, _ = worker.request({"op": "reproduce", "policies": list(policies), "a": a},
                                       timeout=deadline - time.monotonic())
        finally:
            worker.close()
    except keras_runner.ImportFailed as e:
        if e.module:
            raise ReproMissing(f"reproduce {what} needs {e.module}, which cannot be imported: "
                               f"{requirements(framework, backend)[1]}") from None
        raise ReproError(f"reproduce {what}: the Keras run failed: {e.error}") from None
    except keras_runner.TimedOut:
        raise ReproError(f"reproduce {what}: the Keras run took longer than {timeout:g} s") from None
    except keras_runner.Stopped as e:
        raise ReproError(f"reproduce {what}: the Keras run failed (exit {e.code}): {e.last}") from None
    except keras_runner.WorkerError as e:
        raise ReproError(f"reproduce {what}: {e}") from None
    if not header.get("ok"):
        raise ReproError(f"reproduce {what}: the Keras run failed: {header.get('error')}")
    answer = header.get("result")
    if not isinstance(answer, dict):
        raise ReproError(f"reproduce {what}: the Keras run answered {type(answer).__name__}, not an object")
    return answer


# ---------------------------------------------------------------- the models


def exact_mean(a: float) -> float:
    """The exact mean loss of the pair {(-a, 0), (a, 1)}: both terms are ``softplus(-a)``.

    >>> exact_mean(0.0) == math.log(2)
    True
    """
    return float(reference.exact_bce(reference.to_mpf(a), 1))


def _pair(a: list[float], dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """x = (-a, a) and y = (0, 1) for every a, as (n, 2) arrays of ``dtype``."""
    av = np.asarray(a, dtype=np.float64)
    x = np.stack([-av, av], axis=1)
    return x.astype(dtype), np.broadcast_to(np.array([0.0, 1.0]), x.shape).astype(dtype)


def _sigmoid(x: np.ndarray, dtype: str) -> np.ndarray:
    """sigmoid of the dtype's x, computed in float64 and rounded once to the dtype."""
    with np.errstate(over="ignore"):
        return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(dtype)


def clipped_model(framework: str, backend: str, a: list[float], out_dtype: str) -> np.ndarray:
    """The mean loss of the pair by the backend's clip-and-log formula, on probabilities of
    ``out_dtype`` (FORMULAS.md: tf-keras adds eps inside the logs and computes in the output's
    dtype; Keras 3 converts to float32 first; its torch backend clips, then calls torch's BCE)."""
    x, y = _pair(a, out_dtype)
    p = _sigmoid(x, out_dtype)
    dt = np.dtype(out_dtype) if framework == "tf-keras" else np.dtype(np.float32)
    p, y = p.astype(dt), y.astype(dt)
    one, eps = dt.type(1.0), dt.type(EPS)
    with np.errstate(all="ignore"):
        if framework == "tf-keras":
            p = np.minimum(np.maximum(p, eps), one - eps)
            loss = -(y * np.log(p + eps) + (one - y) * np.log(one - p + eps))
        else:
            p = np.minimum(np.maximum(p, eps), dt.type(1.0 - EPS))
            if backend == "torch":
                floor = dt.type(-100.0)
                loss = (y - one) * np.maximum(np.log1p(-p), floor) - y * np.maximum(np.log(p), floor)
            else:
                loss = -(y * np.log(p) + (one - y) * np.log(one - p))
    return loss.astype(np.float32).mean(axis=1, dtype=np.float32).astype(np.float64)


def logits_model(a: list[float], out_dtype: str) -> np.ndarray:
    """The mean loss of the pair by ``tf.nn.sigmoid_cross_entropy_with_logits`` on the logits,
    in the output's dtype: ``max(x, 0) - x*y + log1p(exp(-|x|))``."""
    x, y = _pair(a, out_dtype)
    with np.errstate(all="ignore"):
        loss = (np.maximum(x, x.dtype.type(0)) - x * y) + np.log1p(np.exp(-np.abs(x)))
    return loss.astype(np.float32).mean(axis=1, dtype=np.float32).astype(np.float64)


# ---------------------------------------------------------------- reading the data

TINY = 1e-45  # below every float32 subnormal: log distances stay finite at 0


def _log_distance(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(np.log(np.maximum(u, 0) + TINY) - np.log(np.maximum(v, 0) + TINY))


def classify(loss: np.ndarray, clipped: np.ndarray, logits: np.ndarray) -> tuple[str, int, int]:
    """(path, differ, agree): at the points where the models differ by more than a factor of 2,
    the loss votes for the nearer one; a path needs at least 3 of 4 votes.

    >>> classify(np.array([1e-7, 1e-7]), np.array([1e-7, 1e-7]), np.array([1e-9, 1e-12]))
    ('clipped', 2, 2)
    """
    differ = _log_distance(clipped, logits) > math.log(2)
    n = int(differ.sum())
    if n == 0:
        return "unclear", 0, 0
    to_clip = _log_distance(loss, clipped)[differ]
    to_logits = _log_distance(loss, logits)[differ]
    for path, votes in (("clipped", int((to_clip < to_logits).sum())),
                        ("logits", int((to_logits < to_clip).sum()))):
        if 4 * votes >= 3 * n:
            return path, n, votes
    return "unclear", n, max(int((to_clip < to_logits).sum()), int((to_logits < to_clip).sum()))


def tail(a: list[float], loss: np.ndarray, exact: np.ndarray) -> tuple[str, float | None, float | None]:
    """How the curve ends: ("floor", value, first a) when it is flat above the exact curve at
    the last a, ("zero", 0.0, first a) when it is exactly 0 there, else ("none", None, None).
    Flat: within one float32 spacing of the last value at every a from the first one.

    >>> tail([0.0, 1.0, 2.0, 3.0], np.array([0.7, 1e-7, 1e-7, 1e-7]), np.array([0.7, 0.3, 0.1, 0.05]))
    ('none', None, None)
    >>> tail([0.0, 1.0, 2.0], np.array([0.7, 0.2, 0.2]), np.array([0.7, 0.3, 0.01]))
    ('floor', 0.2, 1.0)
    """
    last, e = float(loss[-1]), float(exact[-1])
    if last == 0 and e > 0:
        kind = "zero"
    elif math.isfinite(last) and last > 2 * e:
        kind = "floor"
    else:
        return "none", None, None
    near = np.abs(loss - last) <= float(np.spacing(np.float32(last)))
    start = len(loss) - 1
    while start > 0 and near[start - 1]:
        start -= 1
    return kind, last, float(a[start])


def cases_from(answer: dict, framework: str, a: list[float]) -> list[ReproCase]:
    """The worker's answer as records, each beside the exact curve, the models and the verdict."""
    exact = np.array([exact_mean(v) for v in a])
    backend = str(answer.get("backend", "tensorflow"))
    out = []
    for c in answer["cases"]:
        loss = np.array([float(v) for v in c["losses"]], dtype=np.float64)
        if loss.shape != exact.shape:
            raise ReproError(f"the Keras run answered {loss.size} losses for {exact.size} values of a")
        dtype = "float16" if c["output_dtype"] == "float16" else "float32"
        clipped = clipped_model(framework, backend, a, dtype)
        logits = logits_model(a, dtype)
        path, differ, agree = classify(loss, clipped, logits)
        kind, floor, floor_a = tail(a, loss, exact)
        out.append(ReproCase(framework, backend, dict(answer.get("versions", {})), c["policy"], c["feeding"],
                             c["output_dtype"], list(a), loss.tolist(), exact.tolist(), clipped.tolist(),
                             logits.tolist(), path, differ, agree, kind, floor, floor_a,
                             bool(c["keras_logits"]), bool(answer.get("reads_logits", False))))
    return out


def reproduce(framework: str, backend: str = "tensorflow", policies: tuple[str, ...] = POLICIES,
              a: list[float] | None = None) -> list[ReproCase]:
    """Run the question's experiment on one Keras; one case per (policy, feeding)."""
    values = grid() if a is None else list(a)
    answer = run_worker(framework, backend, policies, values)
    try:
        return cases_from(answer, framework, values)
    except (KeyError, TypeError, ValueError) as e:
        raise ReproError(f"reproduce {_what(framework, backend)}: the Keras run answered a malformed "
                         f"result ({type(e).__name__}: {e})") from None

