"""User implementations: ``impl:package.module:function``, imported and audited like a built-in.

The function is called with numpy arrays of the audited dtype and must return an array of
the same shape and dtype. Anything else (a module that does not import, a function that
raises, a result of the wrong type, shape or dtype) is an `ImplError` naming the function:
``sweep``, ``points`` and ``check`` print it as one line and exit 2; the gate reports it as an
errored check and runs the others.

Where modules are found: the directories of ``pythonpath`` (a gate config's key, ``--pythonpath``),
then the current directory, then the interpreter's ``sys.path``; a module that is not found says
which directories were searched.

Kinds: ``bce-logits`` f(x, y) -> loss; ``bce-probs`` f(p, y) -> loss, p = sigmoid(x) in the
dtype; ``sigmoid`` f(x) -> p; ``logit`` f(p) -> x.

User code runs in a sandbox of behaviour, not of security (a config that names code runs it, as
a conftest does): whatever it raises, ``sys.exit`` included, is an `ImplError`, never the tool's
own exit; what it prints goes to stderr, so machine-readable stdout stays valid; a call or an
import that takes longer than `TIMEOUT` seconds is stopped and reported. Only a real Ctrl-C
stops the run.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("bce-logits", "bce-probs", "sigmoid", "logit")
PREFIX = "impl:"


TIMEOUT = 60.0  # seconds one call or import of user code may take (0: no limit); --impl-timeout


class ImplError(ValueError):
    """A user implementation that cannot be audited; the message names it and says why."""


class _Timeout(BaseException):
    """Raised in user code by the timer of `_sandbox` (a BaseException: user code's
    ``except Exception`` cannot swallow it)."""


_CTRL_C = threading.Event()  # set by a real SIGINT while user code runs


def _on_sigint(signum, frame):
    _CTRL_C.set()
    raise KeyboardInterrupt


def _on_alarm(signum, frame):
    raise _Timeout


@contextlib.contextmanager
def _sandbox(raised: Callable[[str], str], late: Callable[[str], str]) -> Iterator[None]:
    """Run user code: its prints to stderr, anything it raises (SystemExit, a KeyboardInterrupt
    of its own, ...) an ImplError with the message ``raised(the exception)``, a hang past
    TIMEOUT one with ``late(the limit)``."""
    main = threading.current_thread() is threading.main_thread()
    timed = main and TIMEOUT > 0 and hasattr(signal, "setitimer")
    if main:
        _CTRL_C.clear()
        old_int = signal.signal(signal.SIGINT, _on_sigint)
    if timed:
        old_alarm = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    except _Timeout:
        raise ImplError(late(f"{TIMEOUT:g} s")) from None
    except KeyboardInterrupt:
        if _CTRL_C.is_set() or not main:
            raise
        raise ImplError(raised("KeyboardInterrupt")) from None
    except ImplError:
        raise
    except BaseException as e:  # the user's code: any failure is reported, never re-raised
        raise ImplError(raised(f"{type(e).__name__}: {_short(e)}")) from None
    finally:
        if timed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old_alarm)
        if main:
            signal.signal(signal.SIGINT, old_int)


@dataclass(frozen=True)
class Source:
    """What a worker process needs to import a user implementation again.

    ``root``: the directory its module was found under (put on sys.path in the worker);
    ``digest``: sha256 of the module's file, so a worker never runs another version of it.
    """

    spec: str
    kind: str
    root: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class UserImpl:
    spec: str
    kind: str
    func: Callable
    source: Source | None = None

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        """Call with dtype arrays and check the result, turning every failure into ImplError."""
        x = args[0]
        where = f"{self.spec} ({self.kind})"
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            called = f"called with {x.dtype} arrays of shape {x.shape}"
            with _sandbox(lambda why: f"{where} raised {why} ({called})",
                          lambda limit: f"{where} did not return within {limit} ({called}; "
                                        "--impl-timeout sets the limit)"):
                out = self.func(*args)
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


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def is_impl(name: str) -> bool:
    return name.startswith(PREFIX)


def _parse(spec: str, kind: str) -> tuple[str, str]:
    if kind not in KINDS:
        raise ImplError(f"unknown implementation kind {kind!r}; choose from {', '.join(KINDS)}")
    module_name, _, func_name = spec[len(PREFIX):].partition(":")
    if not module_name or not func_name or ":" in func_name:
        raise ImplError(f"{spec!r} is malformed; write impl:package.module:function")
    return module_name, func_name


_IMPORTING = threading.Lock()  # sys.path is shared by a worker's threads
_DIGESTS: dict[str, str | None] = {}  # module name -> digest of the file it was imported from


def _import(spec: str, module_name: str, where: Sequence[str], again: bool = False,
            who: str = "") -> tuple[object, str | None]:
    """Import a module with the directories ``where`` first on sys.path, in order, for the while
    (``again``: reload it); return it and the digest of the file it was imported from."""
    with _IMPORTING:
        added = list(dict.fromkeys(where))  # first, even where sys.path has them further on
        sys.path[:0] = added
        try:
            fresh = again or module_name not in sys.modules
            fail = f"{spec}: {who}cannot import module {module_name!r}: "
            late = f"{fail}the import took more than "
            with warnings.catch_warnings(), _sandbox(lambda why: fail + why, lambda limit: late + limit):
                warnings.simplefilter("ignore")
                try:
                    module = importlib.import_module(module_name)
                except ModuleNotFoundError as e:
                    searched = ", ".join(dict.fromkeys(where)) or "no directory of its own"
                    raise ImplError(f"{fail}ModuleNotFoundError: {_short(e)} (searched {searched}, then "
                                    "the interpreter's sys.path; pythonpath in a config or "
                                    "--pythonpath adds directories)") from None
                if again:
                    module = importlib.reload(module)
        finally:
            for d in added:
                sys.path.remove(d)  # the first occurrence: the one put there
        if fresh or module_name not in _DIGESTS:
            _DIGESTS[module_name] = _digest(module)
        return module, _DIGESTS[module_name]


def _root(module, module_name: str) -> str | None:
    """The sys.path entry a module was found under (None for a module without a file)."""
    path = getattr(module, "__file__", None)
    if not path:
        return None
    root = os.path.dirname(os.path.abspath(path))
    depth = module_name.count(".") + (1 if os.path.basename(path).startswith("__init__.") else 0)
    for _ in range(depth):
        root = os.path.dirname(root)
    return root


def _first_holder(module_name: str, where: Sequence[str]) -> str | None:
    """The first directory of ``where`` holding the top-level module or package of a name."""
    top = module_name.partition(".")[0]
    for d in where:
        if any(os.path.isfile(os.path.join(d, *f)) for f in ((f"{top}.py",), (top, "__init__.py"))):
            return d
    return None


def _digest(module) -> str | None:
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):
        return None


def _user(spec: str, kind: str, module, module_name: str, func_name: str, source: Source) -> UserImpl:
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise ImplError(f"{spec}: module {module_name!r} has no attribute {func_name!r}")
    if not callable(func):
        raise ImplError(f"{spec}: {func_name!r} is a {type(func).__name__}, not a function")
    return UserImpl(spec, kind, func, source)


def check(spec: str, kind: str) -> None:
    """Raise ImplError for a malformed spec or an unknown kind, importing nothing."""
    _parse(spec, kind)


def load(spec: str, kind: str, pythonpath: Sequence[str] = ()) -> UserImpl:
    """Import ``impl:package.module:function`` from the ``pythonpath`` directories (absolute), else
    the current directory, else sys.path."""
    module_name, func_name = _parse(spec, kind)
    where = (*pythonpath, os.getcwd())
    module, digest = _import(spec, module_name, where)
    root, first = _root(module, module_name), _first_holder(module_name, where)
    if first is not None and root is not None and os.path.realpath(root) != os.path.realpath(first):
        raise ImplError(f"{spec}: module {module_name!r} was imported from {root} already, but here "
                        f"{first} comes first on the search path; two modules of one name cannot both "
                        "be audited in one run: rename one")
    return _user(spec, kind, module, module_name, func_name,
                 Source(spec, kind, _root(module, module_name), digest))


WORKER = "a worker process "
WORKER_HINT = "start the workers where it is importable, or put its directory on their PYTHONPATH"


def resolve(source: Source) -> UserImpl:
    """Import a user implementation again where a chunk runs (a pool process, a Dask worker).

    Its module is looked for under ``source.root`` too; one already imported from another file
    (a long-lived worker, a module edited since) is re-imported, and one that still differs is
    an ImplError, as is one that cannot be imported: never another version's results.
    """
    module_name, func_name = _parse(source.spec, source.kind)
    roots = (source.root,) if source.root is not None else ()
    try:
        module, digest = _import(source.spec, module_name, roots, who=WORKER)
        if source.digest is not None and digest != source.digest:
            module, digest = _import(source.spec, module_name, roots, again=True,
                                     who=WORKER)
    except ImplError as e:
        raise ImplError(f"{e}; {WORKER_HINT}") from None
    if source.digest is not None and digest != source.digest:
        raise ImplError(f"{source.spec}: {WORKER}imports module {module_name!r} from another file "
                        f"({getattr(module, '__file__', None)}) than this run did (under {source.root}); "
                        "the workers must run the same code")
    return _user(source.spec, source.kind, module, module_name, func_name, source)
