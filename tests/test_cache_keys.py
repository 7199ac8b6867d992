"""Cache keys follow the code: an edit to the package or a new library version never serves an old
number (issue 10: the key held ``__version__``, 0.1.0 for every commit, so an edited formula
printed yesterday's results until ``--no-cache``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import ok

from bce_audit import cache

PACKAGE = Path(cache.__file__).resolve().parent
SWEEP = ("sweep", "--points", "41", "--dtype", "float32", "--formula", "keras3", "--label", "1",
         "--format", "json", "--jobs", "1")


def _copy_package(dest: Path) -> Path:
    shutil.copytree(PACKAGE, dest / "bce_audit", ignore=shutil.ignore_patterns("__pycache__"))
    return dest / "bce_audit"


def _run_copy(root: Path, xdg: Path, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(xdg), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-m", "bce_audit", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _values(doc: str) -> list[float]:
    return [r["value"] for r in json.loads(doc)["rows"] if r["formula"] == "keras3"]


@pytest.mark.slow
def test_issue_10_editing_a_formula_misses_the_cache(tmp_path):
    root, xdg = tmp_path / "copy", tmp_path / "xdg"
    pkg = _copy_package(root)
    before = _run_copy(root, xdg, *SWEEP)
    assert _run_copy(root, xdg, *SWEEP) == before  # the same code: served from the cache

    formulas = pkg / "formulas.py"
    text = formulas.read_text(encoding="utf-8")
    edit = "    bce = bce + (one - y) * ev.log(one - p)\n    return -bce\n"
    assert text.count(edit) == 1
    doubled = edit.replace("return -bce", "return -2 * bce")
    formulas.write_text(text.replace(edit, doubled), encoding="utf-8")
    after = _run_copy(root, xdg, *SWEEP)
    assert after == _run_copy(root, xdg, *SWEEP, "--no-cache")  # the edited code's own numbers
    assert [2 * v for v in _values(before)] == _values(after)


def test_key_holds_the_code_digest_and_dependency_versions(monkeypatch):
    key = cache.key_of("chunk", {"a": 1})
    digest = cache.code_digest()
    assert len(digest) == 64 and digest == cache.code_digest()
    with monkeypatch.context() as m:
        m.setattr(cache, "dependency_versions", lambda: {"numpy": "0.0.1", "ml_dtypes": None,
                                                         "mpmath": None, "gmpy2": None})
        cache.stamp.cache_clear()
        try:
            assert cache.key_of("chunk", {"a": 1}) != key  # another numpy: another key
        finally:
            cache.stamp.cache_clear()
    assert cache.key_of("chunk", {"a": 1}) == key


def test_stale_entries_are_counted_and_cleared_alone(tmp_path, monkeypatch):
    c = cache.Cache(tmp_path)
    c.put(cache.key_of("t", {"n": 1}), [1.0])
    old_layout = tmp_path / "ab" / ("ab" + "0" * 62 + ".json")  # bce-audit-cache/1: no stamp folder
    old_layout.parent.mkdir()
    old_layout.write_text("{}")
    monkeypatch.setattr(cache, "stamp", lambda: "0123456789abcdef")  # an upgrade or an edit later
    c.put(cache.key_of("t", {"n": 2}), [2.0])
    info = c.info()
    assert (info["entries"], info["stale"]) == (3, 2)
    assert c.clear(stale_only=True) == 2
    assert not old_layout.exists()
    assert (c.info()["entries"], c.info()["stale"]) == (1, 0)
    assert c.get(cache.key_of("t", {"n": 2})) == [2.0]


def test_cli_cache_info_names_the_stamp_and_clear_stale(monkeypatch):
    ok(*SWEEP)
    lines = ok("cache", "info").splitlines()
    assert lines[0].endswith("bytes") and "(0 stale)" in lines[0]
    assert lines[1].startswith(f"code stamp {cache.stamp()}: source sha256 {cache.code_digest()[:16]}")
    assert "numpy " in lines[1] and "mpmath " in lines[1]
    assert ok("cache", "clear", "--stale") == f"removed 0 stale entries from {cache.default_dir()}\n"
    monkeypatch.setattr(cache, "stamp", lambda: "fedcba9876543210")
    n = int(ok("cache", "info").split(": ")[1].split()[0])
    assert n > 0 and f"({n} stale)" in ok("cache", "info")
    assert ok("cache", "clear", "--stale") == f"removed {n} stale entries from {cache.default_dir()}\n"


@pytest.mark.parametrize("value", [[0.5], {"x": [1, None]}])
def test_entries_live_under_the_current_stamp(tmp_path, value):
    c = cache.Cache(tmp_path)
    key = cache.key_of("t", {"v": 1})
    c.put(key, value)
    assert c.path(key).parent.parent == tmp_path / cache.stamp()
    assert c.get(key) == value
