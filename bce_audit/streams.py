"""Streaming row writers: JSON Lines, CSV and Parquet, fed a chunk's blocks at a time.

Each writer formats a block's columns directly (no `Row` per point), so a sweep of every row
writes in memory bounded by one chunk. The records are the rows of the JSON document: the same
fields and values, inf/nan as the strings "inf", "-inf", "nan" (Parquet keeps them as floats),
an absent clipped-exact value as null (CSV: empty).
"""

from __future__ import annotations

import collections
import contextlib
import csv
import json
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import fields
from typing import IO, Protocol

import numpy as np

from bce_audit import compiled
from bce_audit.dtypes import bits_key
from bce_audit.records import CLIP_FLOATS, ROW_FLOATS, Block, Row, clean

FIELDS = tuple(f.name for f in fields(Row))


class Writer(Protocol):
    every_core: bool  # formats on every core itself: the grid's chunks are then best computed here

    def write(self, blocks: Sequence[Block]) -> None: ...
    def pause(self) -> None: ...  # everything given so far written, and no thread left running
    def close(self) -> None: ...  # everything written (raises the first error met)
    def abort(self) -> None: ...  # the run failed: what is queued dropped, no thread left running


def _floats(a: np.ndarray, style: str, absent: np.ndarray | None = None, memo: dict | None = None
            ) -> list[str]:
    """Each float as text: repr for finite values (as json.dumps writes them), the words for
    inf/nan (quoted in JSON), and null (CSV: empty) where ``absent``. ``memo``: the texts of
    columns already formatted in this chunk (the inputs, and exact values, repeat across series)."""
    if absent is None and memo is not None:
        key = bits_key(a)
        if key not in memo:
            memo[key] = _floats(a, style)
        return memo[key]
    out = list(map(repr, a.tolist()))
    quote = '"{}"' if style == "json" else "{}"
    for i in np.flatnonzero(~np.isfinite(a)).tolist():
        out[i] = quote.format(clean(float(a[i])))
    if absent is not None:
        gone = "null" if style == "json" else ""
        for i in np.flatnonzero(absent).tolist():
            out[i] = gone
    return out


def _constant(v, style: str) -> str:
    if style == "json":
        return json.dumps(clean(v))
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)


CONSTANT = ("dtype", "mode", "backend", "quantity", "formula", "eps", "label")  # one value per block


def _columns(b: Block, style: str, memo: dict) -> dict[str, list[str] | str]:
    """Every field of the block's rows as text ("json" or "csv"): a list per varying field, one
    text for a field that is the same on every row of the block."""
    cols: dict[str, list[str] | str] = {k: _floats(a, style, memo=memo) for k, a in b.floats.items()
                                        if k not in CLIP_FLOATS}
    if "clipped_exact" in b.floats:
        absent = np.isnan(b.floats["clipped_exact"])
        cols.update({k: _floats(b.floats[k], style, absent) for k in CLIP_FLOATS})
    else:
        cols.update({k: _constant(None, style) for k in CLIP_FLOATS})
    cols.update({k: _constant(getattr(b, k), style) for k in CONSTANT})
    return cols


def _escape(text: str) -> str:
    """Literal text inside a str.format template."""
    return text.replace("{", "{{").replace("}", "}}")


class JsonLines:
    """One JSON object a line, keys sorted (as the JSON document's rows). Floats are written as
    Arrow writes them, the shortest text that reads back the same (``1e-7`` where Python writes
    ``1e-07``: the same number): by the compiled formatter (`compiled.jsonl`) where it is built,
    else by Arrow's cast where pyarrow is installed; with neither, by Python's ``repr``."""

    KEYS = tuple(sorted(FIELDS))

    IN_FLIGHT = 48  # blocks (about a chunk's series and a few more) formatting or waiting their turn

    def __init__(self, f: IO[str]):
        self.f = f
        self._pool: ThreadPoolExecutor | None = None
        self._room = threading.Semaphore(self.IN_FLIGHT)
        self._lock = threading.Lock()  # over the write order, and the file
        self._ready: dict[int, object] = {}  # formatted blocks (or their errors) by their place
        self._submitted = self._written = 0
        self._error: BaseException | None = None
        self._aborted = False
        self.arrow: tuple | None = None
        if not compiled.active():
            try:
                import pyarrow as pa
                import pyarrow.compute as pc
                self.arrow = (pa, pc)
            except ImportError:
                pass
        self.every_core = compiled.active() or self.arrow is not None  # (`_write_threads`)

    def write(self, blocks: Sequence[Block]) -> None:
        if self.every_core:
            self._write_threads(blocks)
            return
        memo: dict = {}
        for b in blocks:
            cols = _columns(b, "json", memo)
            # the block's constants go into the line's template once; the rest row by row
            parts = [f'"{k}":' + (_escape(v) if isinstance(v := cols[k], str) else "{}") for k in self.KEYS]
            template = "{{" + ",".join(parts) + "}}\n"
            varying = [v for k in self.KEYS if not isinstance(v := cols[k], str)]
            self.f.write("".join(map(template.format, *varying)))

    def _write_threads(self, blocks: Sequence[Block]) -> None:
        # The compiled formatter and Arrow's kernels let go of the GIL: the blocks are formatted
        # on every core while this thread computes the next chunk, and written in order by the
        # thread that formats the block whose turn it is. At most IN_FLIGHT blocks are held:
        # memory stays per chunk.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        memo: dict = {}  # one chunk's column texts, by the column's bits
        for b in blocks:
            if not len(b):
                continue
            self._room.acquire()
            self._raise()
            self._pool.submit(self._format, self._submitted, b, memo)
            self._submitted += 1

    def _format(self, place: int, b: Block, memo: dict) -> None:
        """Format a block, then write every formatted block whose turn has come."""
        try:
            done: object = self._lines(b, memo)
        except BaseException as e:  # told by the next write or by close
            done = e
        with self._lock:
            self._ready[place] = done
            while self._written in self._ready:
                data = self._ready.pop(self._written)
                self._written += 1
                self._room.release()
                if self._error is not None or self._aborted:
                    continue
                if isinstance(data, BaseException):
                    self._error = data
                    continue
                try:
                    self._emit(data)
                except BaseException as e:
                    self._error = e

    def _emit(self, data) -> None:
        """A block's UTF-8 lines (bytes, or an Arrow buffer) into the file."""
        raw = getattr(self.f, "buffer", None)  # UTF-8 already: straight to the bytes under the text
        encoding = str(getattr(self.f, "encoding", None) or "").lower().replace("-", "")
        if raw is not None and encoding == "utf8":
            self.f.flush()
            raw.write(memoryview(data))
        else:
            self.f.write((data if isinstance(data, bytes) else bytes(memoryview(data))).decode())

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _lines(self, b: Block, memo: dict):
        """The block's lines as UTF-8: the literal texts between the float columns' values."""
        absent = np.isnan(b.floats["clipped_exact"]) if "clipped_exact" in b.floats else None
        literals: list[str] = []
        columns: list[tuple[np.ndarray, np.ndarray | None]] = []
        literal = "{"
        for i, k in enumerate(self.KEYS):
            literal += ("," if i else "") + f'"{k}":'
            if k in b.floats:
                literals.append(literal)
                columns.append((b.floats[k], absent if k in CLIP_FLOATS else None))
                literal = ""
            else:
                literal += _constant(None if k in CLIP_FLOATS else getattr(b, k), "json")
        literals.append(literal + "}\n")
        if self.arrow is not None:
            return self._arrow_lines(literals, columns, len(b), memo, *self.arrow)
        texts = [self._texts(a, absent, memo) for a, absent in columns]
        return compiled.jsonl([t.encode() for t in literals], texts)

    @staticmethod
    def _texts(a: np.ndarray, absent: np.ndarray | None, memo: dict) -> compiled.Texts:
        """A column's texts, formatted once a chunk (the inputs and exact values repeat across
        its series)."""
        key = (bits_key(a), None if absent is None else bits_key(absent))
        if key not in memo:
            memo[key] = compiled.texts(a, absent)
        return memo[key]

    def _text(self, a: np.ndarray, pa, pc, memo: dict, absent: np.ndarray | None = None):
        """One column as JSON texts (shortest round-trip floats, quoted inf/nan, null where absent);
        columns that repeat across a chunk's series are formatted once (``memo``)."""
        key = bits_key(a) if absent is None else None
        if key is not None and key in memo:
            return memo[key]
        out = pc.cast(pa.array(a), pa.string())  # shortest text that reads back the same
        # the few texts that differ go in by mask (if_else would rebuild every text)
        bad = ~np.isfinite(a)
        if bad.any():
            v = a[bad]
            words = np.where(np.isnan(v), '"nan"', np.where(v > 0, '"inf"', '"-inf"'))
            out = pc.replace_with_mask(out, pa.array(bad), pa.array(words.tolist(), pa.string()))
        if absent is not None and absent.any():
            out = pc.replace_with_mask(out, pa.array(absent), pa.repeat(pa.scalar("null"), int(absent.sum())))
        if key is not None:
            memo[key] = out
        return out

    def _arrow_lines(self, literals: list[str], columns: list, n: int, memo: dict, pa, pc):
        """The lines joined by Arrow, as one Arrow buffer."""
        pieces: list = []
        for literal, (a, absent) in zip(literals, columns, strict=False):
            pieces += [literal, self._text(a, pa, pc, memo, absent)]
        pieces.append(literals[-1])
        # Arrow broadcasts a scalar piece slowly (3x the join): each literal becomes an array
        pieces = [_repeated(pa, p, n, memo) if isinstance(p, str) else p for p in pieces if p != ""]
        lines = pc.binary_join_element_wise(*pieces, "")
        offsets = np.frombuffer(lines.buffers()[1], np.int32, len(lines) + 1, lines.offset * 4)
        return lines.buffers()[2].slice(int(offsets[0]), int(offsets[-1] - offsets[0]))

    def pause(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()  # every block formatted and written; a pool anew at the next write
            self._pool = None
        self._raise()

    def close(self) -> None:
        self.pause()
        self.f.flush()

    def abort(self) -> None:
        self._aborted = True  # (blocks still formatting are not written)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


class Csv:
    """A header of the row fields, then one row a line: inf/nan as words, absent values empty."""

    every_core = False

    def __init__(self, f: IO[str]):
        self.f = f
        self.w = csv.writer(f, lineterminator="\n")
        self.w.writerow(FIELDS)

    def write(self, blocks: Sequence[Block]) -> None:
        memo: dict = {}
        for b in blocks:
            cols = _columns(b, "csv", memo)
            n = len(b)
            rows = zip(*([v] * n if isinstance(v := cols[k], str) else v for k in FIELDS), strict=True)
            self.w.writerows(rows)

    def pause(self) -> None:
        pass

    def close(self) -> None:
        self.f.flush()

    def abort(self) -> None:
        pass


class Parquet:
    """Row groups of a chunk each; floats stay floats (inf/nan included), absent values null.
    Arrow encodes a chunk on a thread of its own (it lets go of the GIL) while this process
    computes the next: at most `IN_FLIGHT` chunks are held."""

    every_core = True  # the chunks are best computed here, beside the encoding thread

    IN_FLIGHT = 2

    def __init__(self, f: IO[bytes]):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ParquetMissing("--format parquet needs pyarrow: pip install 'bce-audit[parquet]'") from None
        self.pa = pa
        floats = (*ROW_FLOATS, *CLIP_FLOATS, "eps")
        self.schema = pa.schema([(n, pa.float64() if n in floats else pa.string()) for n in FIELDS])
        self.w = pq.ParquetWriter(f, self.schema)
        self._pool: ThreadPoolExecutor | None = None  # one thread: the row groups go in grid order
        self._pending: collections.deque[Future] = collections.deque()

    def write(self, blocks: Sequence[Block]) -> None:
        self._wait(self.IN_FLIGHT - 1)  # room for this chunk first (an encoding's error is raised here)
        table = self._table(blocks)
        if table is None:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending.append(self._pool.submit(self.w.write_table, table))

    def _wait(self, held: int) -> None:
        """Until at most ``held`` chunks are waiting or encoding; a failed one drops the rest."""
        while len(self._pending) > held:
            try:
                self._pending.popleft().result()
            except BaseException:
                self._drop()
                raise

    def _drop(self) -> None:
        self._pending.clear()  # (the pool's shutdown cancels those not started)
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _table(self, blocks: Sequence[Block]):
        pa = self.pa
        parts = []
        memo: dict = {}  # the chunk's constant columns (`_repeated`)
        for b in blocks:
            n = len(b)
            cols = {}
            for name in FIELDS:
                if name in b.floats:
                    a = b.floats[name]
                    mask = np.isnan(b.floats["clipped_exact"]) if name in CLIP_FLOATS else None
                    cols[name] = pa.array(a, type=pa.float64(), mask=mask)
                elif name in CLIP_FLOATS:
                    cols[name] = pa.nulls(n, type=pa.float64())
                elif name == "eps":
                    cols[name] = pa.array(np.full(n, np.nan if b.eps is None else b.eps),
                                          mask=np.full(n, b.eps is None))
                else:
                    cols[name] = _repeated(pa, getattr(b, name), n, memo)
            parts.append(pa.table(cols, schema=self.schema))
        return pa.concat_tables(parts) if parts else None

    def pause(self) -> None:
        self._wait(0)
        self._drop()  # (nothing left to drop: the thread let go)

    def close(self) -> None:
        try:
            self.pause()
        finally:
            self.w.close()

    def abort(self) -> None:
        self._drop()
        with contextlib.suppress(Exception):  # (the file is discarded: its footer does not matter)
            self.w.close()


def _repeated(pa, v, n: int, memo: dict):
    """A string column of one value (null for None) n times, built by Arrow (no list of n), once
    per value and length in ``memo`` (a chunk's blocks share both)."""
    key = (type(v), v, n)
    if key not in memo:
        if v is None:
            memo[key] = pa.nulls(n, type=pa.string())
        else:
            size = len(str(v).encode())
            if n * size >= 2**31:  # past a string array's int32 offsets
                raise OverflowError(f"{n} texts of {size} bytes overflow an Arrow string array")
            one = pa.array([str(v)])
            memo[key] = pa.DictionaryArray.from_arrays(np.zeros(n, np.int8), one).cast(pa.string())
    return memo[key]


class ParquetMissing(RuntimeError):
    """pyarrow is not installed."""


def writer(fmt: str, f: IO) -> Writer:
    return {"jsonl": JsonLines, "csv": Csv, "parquet": Parquet}[fmt](f)
