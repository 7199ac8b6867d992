"""Chunks that run away from the process that resolved the selection, or side by side.

User ``impl:`` formulas in the process pool (``--jobs``) and on process-based Dask workers give
the local run's output. The user modules are written into tmp_path, the current directory of the
run, as a user's would be; the workers never have tmp_path on their sys.path, so what lets them
import the module is what each chunk carries (`impl.Source`: spec, kind, directory, digest).

Chunks in several threads of one process (a Dask worker's) give the serial results: each thread
computes in an mpmath context of its own, whatever another thread does to mpmath's global one.
"""

from __future__ import annotations

import re
import sys
import threading
import types
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict

import pytest
from cli_support import assert_usage_error, ok, run
from mpmath import mp

from bce_audit import reference, sweep
from bce_audit.records import Settings

STABLE = '''import numpy as np


def bce(x, y):
    zero = np.zeros((), dtype=x.dtype)
    return np.maximum(x, zero) - x * y + np.log1p(np.exp(-np.abs(x)))
'''

# a second version of the module, of another length (so no stale .pyc is taken for it)
NAIVE = '''import numpy as np


def bce(x, y):
    """The textbook formula: overflows and loses the tails."""
    one = np.ones((), dtype=x.dtype)
    p = one / (one + np.exp(-x))
    return -(y * np.log(p) + (one - y) * np.log(one - p))
'''

POINTS = 4000  # four chunks of 1000 (see `small_chunks`)


@pytest.fixture
def user_module(request, tmp_path, monkeypatch):
    """Write a module under a name unique to this test into tmp_path, which becomes the cwd."""
    name = re.sub(r"\W", "_", f"bce_user_{request.node.name}").strip("_")
    path = tmp_path / f"{name}.py"

    def write(source: str) -> str:
        path.write_text(source, encoding="utf-8")
        sys.modules.pop(name, None)  # as a fresh `bce-audit` process would import it
        return f"impl:{name}:bce"

    monkeypatch.chdir(tmp_path)
    yield write
    sys.modules.pop(name, None)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks are cut in this process: small ones make several tasks of a small grid, which the
    pool takes however small (POOL_MIN_POINTS)."""
    monkeypatch.setattr(sweep, "CHUNK", 1000)
    monkeypatch.setattr(sweep, "POOL_MIN_POINTS", 0)


def sweep_args(spec: str) -> tuple[str, ...]:
    return ("sweep", "--dtype", "float16", "--points", str(POINTS), "--range", "-30:30", "--formula", spec,
            "--formula", "keras3", "--format", "json", "--no-cache")


@pytest.fixture
def pool_spy(monkeypatch) -> list[int]:
    """Records the process pools made (the real pool runs the chunks)."""
    import concurrent.futures

    made: list[int] = []

    def recording(*args, **kw):
        made.append(kw.get("max_workers"))
        return ProcessPoolExecutor(*args, **kw)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", recording)
    return made


def parent_only_module(monkeypatch) -> str:
    """A module this process has imported but no worker can: it has no file anywhere."""
    module = types.ModuleType("bce_user_parent_only")
    module.bce = lambda x, y: x * 0
    monkeypatch.setitem(sys.modules, module.__name__, module)
    return f"impl:{module.__name__}:bce"


# ---------------------------------------------------------------- --jobs


def test_impl_formula_in_process_pool_equals_local_run(user_module, small_chunks, pool_spy):
    args = sweep_args(user_module(STABLE))
    local = ok(*args, "--jobs", "1")
    assert pool_spy == []
    pooled = ok(*args, "--jobs", "2")
    assert pool_spy == [2]
    assert pooled == local


def test_issue_12_impl_formula_from_pythonpath_in_process_pool(tmp_path, monkeypatch, small_chunks, pool_spy,
                                                              request):
    """A module found through --pythonpath (or a config's pythonpath), not the cwd: the workers
    import it from the directory its Source carries, and give the local run's output."""
    name = re.sub(r"\W", "_", f"bce_user_{request.node.name}")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / f"{name}.py").write_text(STABLE, encoding="utf-8")
    (tmp_path / "run").mkdir()
    monkeypatch.chdir(tmp_path / "run")
    try:
        args = (*sweep_args(f"impl:{name}:bce"), "--pythonpath", "../src")
        local = ok(*args, "--jobs", "1")
        pooled = ok(*args, "--jobs", "2")
        assert pool_spy == [2]
        assert pooled == local
        config = tmp_path / "sweep.toml"
        config.write_text('pythonpath = ["src"]\n', encoding="utf-8")
        sys.modules.pop(name, None)
        assert ok(*sweep_args(f"impl:{name}:bce"), "--config", str(config), "--jobs", "2") == local
    finally:
        sys.modules.pop(name, None)


def test_impl_formula_the_pool_cannot_import_is_a_usage_error(monkeypatch, small_chunks, pool_spy):
    r = run(*sweep_args(parent_only_module(monkeypatch)), "--jobs", "2")
    assert pool_spy == [2]
    assert_usage_error(r, "impl:bce_user_parent_only:bce", "cannot import module", "worker process")


# ---------------------------------------------------------------- Dask


@pytest.mark.slow
def test_impl_formula_on_process_dask_cluster_equals_local_run(user_module, small_chunks, monkeypatch,
                                                               tmp_path, tmp_path_factory):
    """Worker processes import the user module from the directory the run resolved it in, import
    it again when it has changed since (a long-lived worker), and fail in one line when they cannot."""
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))  # the workers start in a directory without it
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, scheduler_port=0,
                                  dashboard_address=":0") as cluster:
        address = cluster.scheduler_address
        monkeypatch.chdir(tmp_path)
        runs = {}
        for version, source in (("stable", STABLE), ("naive", NAIVE)):
            args = sweep_args(user_module(source))
            local = ok(*args, "--jobs", "1")
            assert ok(*args, "--scheduler", address) == local, version
            runs[version] = local
        assert runs["stable"] != runs["naive"]  # the workers really ran the edited module
        r = run(*sweep_args(parent_only_module(monkeypatch)), "--scheduler", address)
    assert_usage_error(r, "impl:bce_user_parent_only:bce", "cannot import module", "worker process")


# ---------------------------------------------------------------- threads


def canon(chunks: list[sweep.ChunkResult]) -> list[str]:
    """Chunk results as exact text: repr keeps every float bit (and -0.0, nan)."""
    return [repr(asdict(c)) for c in chunks]


@pytest.mark.slow
def test_chunks_in_threads_equal_serial_while_global_precision_changes():
    """Regression: mpmath's working precision was one global per process, so chunks in one
    process's threads raced on it (and took turns behind a lock); now each thread owns its own."""
    s = Settings(dtypes=("float16",), points=1200, range=(-30.0, 30.0), formulas=("keras3", "tf-keras"),
                 reference="mpmath", grad=True)
    spans = [(start, start + 200, [0, 199]) for start in range(0, s.points, 200)]
    serial = [sweep.audit_chunk(s, "float16", *span) for span in spans]
    with mp.workprec(20):  # the global precision is not the baseline's
        assert canon([sweep.audit_chunk(s, "float16", *spans[0])]) == canon(serial[:1])

    before, done = mp.prec, threading.Event()

    def meddle() -> None:  # another thread's mpmath work moving the global precision about
        while not done.is_set():
            for prec in (11, 53, 300):
                mp.prec = prec

    meddler = threading.Thread(target=meddle)
    meddler.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            threaded = list(pool.map(lambda span: sweep.audit_chunk(s, "float16", *span), spans))
            contexts = set(pool.map(lambda _: id(reference.context()), range(8)))
    finally:
        done.set()
        meddler.join()
        mp.prec = before
    assert canon(threaded) == canon(serial)
    assert id(reference.context()) not in contexts  # every thread its own context
    assert reference.context().prec == reference.PREC
