"""Shared test set-up: precision never leaks between tests (as in mpmath's own conftest)."""

import os

import pytest
from mpmath import mp


@pytest.fixture(autouse=True)
def _reset_mp_prec():
    before = mp.prec
    yield
    assert mp.prec == before, "a test or the code under test leaked mpmath precision"
    mp.prec = before


@pytest.fixture(autouse=True)
def _fixed_terminal(monkeypatch):
    """Golden output is taken at a fixed terminal width, without colour."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    yield


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """The CLI caches results under $XDG_CACHE_HOME: a fresh one for each test, never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    yield
    from bce_audit import cache

    cache.use(None)


@pytest.fixture(autouse=True)
def _impl_timeout():
    """--impl-timeout sets a module-level limit: each test starts from the default."""
    from bce_audit import impl

    before = impl.TIMEOUT
    yield
    impl.TIMEOUT = before
