"""User implementations: ``impl:package.module:function``, imported and audited like a built-in.

The function is called with numpy arrays of the audited dtype and must return an array of
the same shape and dtype. Anything else (a module that does not import, a function that
raises, a result of the wrong type, shape or dtype) is an `ImplError` naming the function:
the CLI prints it as one line and exits 2.

Kinds: ``bce-logits`` f(x, y) -> loss; ``bce-probs`` f(p, y) -> loss, p = sigmoid(x) in the
dtype; ``sigmoid`` f(x) -> p; ``logit`` f(p) -> x.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KINDS = ("bce-logits", "bce-probs", "sigmoid", "logit")
PREFIX = "impl:"


class ImplError(ValueError):
    """A user implementation that cannot be audited; the message names it and says why."""


@dataclass(frozen=True)
class UserImpl:
    spec: str
    kind: str
    func: Callable

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        """Call with dtype arrays and check the result, turning every failure into ImplError."""
        x = args[0]
        where = f"{self.spec} ({self.kind})"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                out = self.func(*args)
            except Exception as e:  # the user's code: any failure is reported, never re-raised
                raise ImplError(f"{where} raised {type(e).__name__}: {_short(e)} "
                                f"(called with {x.dtype} arrays of shape {x.shape})") from None
        if not isinstance(out, np.ndarray):
            raise ImplError(f"{where} returned {type(out).__name__}; it must return a numpy array "
                            f"of the input's shape and dtype")
        if out.shape != x.shape:
            raise ImplError(f"{where} returned shape {out.shape} for input shape {x.shape}; "
                            "it must be elementwise")
        if out.dtype != x.dtype:
            raise ImplError(f"{where} returned {out.dtype} for {x.dtype} input; return the input's "
                            "dtype (e.g. .astype(x.dtype)) so it is audited in that dtype")
        return out


def _short(e: Exception) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def is_impl(name: str) -> bool:
    return name.startswith(PREFIX)


def load(spec: str, kind: str) -> UserImpl:
    """Import ``impl:package.module:function`` (the current directory is importable)."""
    if kind not in KINDS:
        raise ImplError(f"unknown implementation kind {kind!r}; choose from {', '.join(KINDS)}")
    body = spec[len(PREFIX):]
    module_name, _, func_name = body.partition(":")
    if not module_name or not func_name or ":" in func_name:
        raise ImplError(f"{spec!r} is malformed; write impl:package.module:function")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or anything the module raises at import time
        raise ImplError(f"{spec}: cannot import module {module_name!r}: "
                        f"{type(e).__name__}: {_short(e)}") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise ImplError(f"{spec}: module {module_name!r} has no attribute {func_name!r}")
    if not callable(func):
        raise ImplError(f"{spec}: {func_name!r} is a {type(func).__name__}, not a function")
    return UserImpl(spec, kind, func)
