"""A persistent cache of audit results: per-chunk reference values and errors, and key points.

Entries live under ``$XDG_CACHE_HOME/bce-audit`` (default ``~/.cache/bce-audit``), one JSON file
each, named by a SHA-256 of everything that decides the result: the code itself (a digest of the
package's source files) and the versions of the libraries it computes with, the dtype (its bits),
the reference and its precision, the formulas and settings, and the chunk. An entry lives in the
folder of its code stamp, so entries that an edit or an upgrade made stale are told apart
(``cache info``) and cleared (``cache clear --stale``) without reading them. Files are
written atomically (temporary file + rename), so two runs writing the same entry both leave a
whole file; each carries a checksum of its payload, so a truncated or corrupted file is noticed,
reported and rebuilt. Values are stored as records.clean writes JSON (inf and nan as strings);
the reader decodes its records with records.decode. A directory that cannot be written means
running without the cache, with a warning, never a crash. JSON, not pickle: nothing in the cache can run code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bce_audit import files
from bce_audit.records import clean

FORMAT = "bce-audit-cache/2"
_ENTRY = re.compile(r"[0-9a-f]{64}\.json")  # the only files the cache writes, and so deletes
_STAMP = re.compile(r"[0-9a-f]{16}")        # a code stamp's folder
DEPENDENCIES = ("numpy", "ml_dtypes", "mpmath", "gmpy2")  # what every result is computed with


@functools.cache
def code_digest() -> str:
    """SHA-256 of the package's own source files and its compiled kernels (`compiled`): any edit
    to the code, or a build of it, changes it (once per process)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted([*root.rglob("*.py"), *root.glob("_kernels.*")]):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _version(dist: str) -> str | None:
    import importlib.metadata  # (here: its import takes 10 ms of every start, and most runs never ask)

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def dependency_versions() -> dict[str, str | None]:
    """The versions of the libraries every result depends on (a real backend's is in its key)."""
    return {d: _version(d) for d in DEPENDENCIES}


@functools.cache
def stamp() -> str:
    """The code digest with the dependency versions, the interpreter, the C library (the
    xla mode's short arrays call libm, torch's BCE kernel too) and torch's CPU capability (which
    float32 code mode upcast models, `sleef.torch_capability`): 16 hex digits."""
    from bce_audit import sleef

    env = {"code": code_digest(), "deps": dependency_versions(),
           "python": list(sys.version_info[:2]), "machine": platform.machine(),
           "libc": list(platform.libc_ver()), "torch_cpu": sleef.torch_capability()}
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bce-audit"


def key_of(kind: str, parts: dict) -> str:
    text = json.dumps(clean({"kind": kind, "stamp": stamp(), **parts}), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Cache:
    """One cache directory; ``warnings`` collects what the user should be told (once each)."""

    root: Path
    warnings: list[str] = field(default_factory=list)
    writable: bool = True

    def warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    def path(self, key: str) -> Path:
        return self.root / stamp() / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        p = self.path(key)
        try:
            raw = p.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        except UnicodeDecodeError:
            raw = ""  # not even text: corrupted, handled below
        except OSError as e:
            self.warn(f"cache entry {p} unreadable ({e.strerror or e}): running without it")
            return None
        try:
            doc = json.loads(raw)
            payload = doc["payload"]
            ok = (doc.get("format") == FORMAT and doc.get("key") == key
                  and doc.get("sha256") == _digest(payload))
        except (ValueError, KeyError, TypeError, RecursionError):  # RecursionError: nested too deep
            ok = False
        if not ok:
            self.warn(f"cache entry {p} is corrupted or truncated: rebuilt")
            return None
        return payload

    def put(self, key: str, value: Any) -> None:
        if not self.writable:
            return
        payload = clean(value)
        doc = {"format": FORMAT, "key": key, "sha256": _digest(payload), "payload": payload}
        p = self.path(key)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            files.write_text(str(p), json.dumps(doc, sort_keys=True), durable=False)
        except (OSError, files.WriteError) as e:
            self.writable = False
            self.warn(f"cache directory {self.root} is not writable ({getattr(e, 'strerror', None) or e}): "
                       "running without the cache")

    def lookup(self, key: str, decode: Callable[[Any], Any]) -> Any | None:
        """The entry decoded, or None: missing, damaged, or not of the shape decode expects
        (an entry of another version, said in a warning)."""
        hit = self.get(key)
        if hit is None:
            return None
        try:
            return decode(hit)
        except (TypeError, KeyError, ValueError, AttributeError, IndexError, RecursionError):
            self.warn(f"cache entry {self.path(key)} does not fit this version: rebuilt")
            return None

    def entries(self) -> Iterator[tuple[Path, bool]]:
        """Each of this cache's own files, and whether it is stale (another code stamp's, or
        of the layout before stamps)."""
        if not self.root.is_dir():
            return
        current = stamp()
        for e in self.root.glob("*/??/*.json"):
            if _STAMP.fullmatch(e.parent.parent.name) and _ENTRY.fullmatch(e.name) \
                    and e.name.startswith(e.parent.name):
                yield e, e.parent.parent.name != current
        for e in self.root.glob("??/*.json"):  # bce-audit-cache/1: no stamp folder
            if _ENTRY.fullmatch(e.name) and e.name.startswith(e.parent.name):
                yield e, True

    def info(self) -> dict:
        found = [(e, stale, e.stat().st_size) for e, stale in self.entries()]
        return {"path": str(self.root), "stamp": stamp(), "code": code_digest(),
                "deps": dependency_versions(), "entries": len(found),
                "stale": sum(stale for _, stale, _ in found), "bytes": sum(n for _, _, n in found)}

    def clear(self, stale_only: bool = False) -> int:
        """Delete every entry, or only the stale ones (only this cache's own files); returns
        how many went."""
        n = 0
        for e, stale in list(self.entries()):
            if stale or not stale_only:
                e.unlink()
                n += 1
        if self.root.is_dir():
            for d in sorted((d for d in self.root.rglob("*") if d.is_dir()), reverse=True):
                if not any(d.iterdir()):
                    d.rmdir()
        return n


def _digest(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


_ACTIVE: Cache | None = None


def active() -> Cache | None:
    """The cache the current command uses (None: no caching, the default for library calls)."""
    return _ACTIVE


def use(cache: Cache | None) -> None:
    global _ACTIVE
    _ACTIVE = cache
