"""The question's experiment, run inside the Keras worker (`bce_audit.keras_runner`, op
``reproduce``) for `bce-audit reproduce`.

Under each dtype policy, a ``Dense(1, sigmoid)`` model is evaluated on the pair {(-a, 0), (a, 1)}
for every a, in the graph and with the probabilities fed from outside. The answer: the versions,
then one case per (policy, feeding) with the loss at each a. ``framework`` is the worker's:
"tf-keras" or "keras" (on the backend of KERAS_BACKEND).

Imports nothing of bce_audit: the parent reads the answer, this only runs Keras.
"""

from __future__ import annotations

import sys

import numpy as np


def _modules(keras, framework: str) -> tuple[str, ...]:
    """The module names that make up the framework (for the versions)."""
    return ("tensorflow", "tf_keras") if framework == "tf-keras" else ("keras", keras.backend.backend())


def _version(name: str) -> str:
    mod = sys.modules.get(name)
    return str(getattr(mod, "__version__", "?"))


def _model(keras):
    """The question's model: Dense(1, sigmoid) on one input, weight 1, bias 0."""
    inp = keras.Input(shape=(1,))
    out = keras.layers.Dense(1, activation="sigmoid")(inp)
    model = keras.Model(inp, out)
    model.set_weights([np.ones((1, 1), "float32"), np.zeros((1,), "float32")])
    model.compile(loss="binary_crossentropy")
    return model


def _carries_logits(keras, framework: str, model, x: np.ndarray) -> bool:
    """Whether the model's output tensor carries ``_keras_logits`` when the loss sees it: in a
    traced graph for TensorFlow (where evaluate computes), eagerly on the other backends."""
    if framework == "tf-keras" or keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        seen: list[bool] = []

        @tf.function
        def probe(t):
            out = model(t, training=False)
            seen.append(hasattr(out, "_keras_logits"))
            return out

        probe(tf.constant(x))
        return seen[0]
    return hasattr(model(x, training=False), "_keras_logits")


def _reads_logits(keras, framework: str) -> bool:
    """Whether the backend's ``binary_crossentropy`` looks for ``_keras_logits``: in its source
    or in that of the module's functions it calls (tf_keras and Keras 3 use a helper)."""
    import importlib
    import inspect

    where = "tf_keras.src.backend" if framework == "tf-keras" else \
        f"keras.src.backend.{keras.backend.backend()}.nn"
    try:
        module = importlib.import_module(where)
        fn = inspect.unwrap(module.binary_crossentropy)
        called = [getattr(module, n) for n in fn.__code__.co_names
                  if inspect.isfunction(getattr(module, n, None))]
        return any("_keras_logits" in inspect.getsource(inspect.unwrap(f)) for f in (fn, *called))
    except (ImportError, AttributeError, OSError, TypeError):
        return False


def _pair(a: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[-a], [a]], dtype=dtype), np.array([[0.0], [1.0]], dtype=dtype)


def run(keras, framework: str, policies: list[str], a_values: list[float]) -> dict:
    """The experiment on ``keras``, the worker's Keras module (tf_keras for "tf-keras")."""
    versions = {n: _version(n) for n in _modules(keras, framework)}
    reads = _reads_logits(keras, framework)
    cases = []
    for policy in policies:
        keras.mixed_precision.set_global_policy(policy)
        compute = "float16" if policy == "mixed_float16" else "float32"
        model = _model(keras)
        loss_fn = keras.losses.BinaryCrossentropy()
        x0, _ = _pair(16.0, "float32")
        carries = _carries_logits(keras, framework, model, x0)
        graph, fed = [], []
        for a in a_values:
            x, y = _pair(a, "float32")
            graph.append(float(model.evaluate(x, y, batch_size=2, verbose=0)))
            # the probabilities fed from outside the graph: sigmoid(a) rounded once to the
            # dtype the model outputs, a numpy array that carries no logits
            with np.errstate(over="ignore"):
                p = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(compute)
            fed.append(float(np.asarray(loss_fn(y.astype(compute), p))))
        out_dtype = str(getattr(model.outputs[0], "dtype", "?")).replace("<dtype: '", "").rstrip("'>")
        cases.append({"policy": policy, "feeding": "in-graph", "losses": graph, "keras_logits": carries,
                      "output_dtype": out_dtype})
        cases.append({"policy": policy, "feeding": "fed", "losses": fed, "keras_logits": False,
                      "output_dtype": compute})
    keras.mixed_precision.set_global_policy("float32")
    return {"versions": versions, "backend": "tensorflow" if framework == "tf-keras" else
            keras.backend.backend(), "reads_logits": reads, "cases": cases}
