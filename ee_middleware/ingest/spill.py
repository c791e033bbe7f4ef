"""Spans grouped by trace on disk, so that ingest's memory does not grow with its input.

A run's spans can arrive in any order, in several requests and several files (a Collector batches
and rotates), so a trace can only be assembled once every file is read. Holding every span until
then made ingest's peak memory grow with the input; :class:`SpanSpill` keeps them in a SQLite file
in a temporary folder instead (removed on close), and hands them back one trace at a time, traces in
the order they were first seen and each trace's spans in the order they were read.
"""

from __future__ import annotations

import pickle
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType

from ee_middleware.capture.spandata import SpanData

_BATCH = 2000


class SpanSpill:
    """Spans written to a temporary SQLite file and read back by trace."""

    def __init__(self) -> None:
        self._folder = tempfile.TemporaryDirectory(prefix="ee-ingest-")
        self._db = sqlite3.connect(Path(self._folder.name) / "spans.sqlite", isolation_level=None)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=FILE;"
            "CREATE TABLE spans (seq INTEGER PRIMARY KEY, trace TEXT NOT NULL, span BLOB NOT NULL);"
        )
        self._indexed = False

    def add(self, spans: Iterable[SpanData]) -> int:
        """Store ``spans``; return how many."""
        count, batch = 0, []
        for span in spans:
            batch.append((span.trace_id, pickle.dumps(span, protocol=pickle.HIGHEST_PROTOCOL)))
            if len(batch) >= _BATCH:
                count += self._insert(batch)
                batch = []
        return count + self._insert(batch)

    def _insert(self, rows: list[tuple[str, bytes]]) -> int:
        if rows:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO spans (trace, span) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")
        return len(rows)

    def traces(self) -> Iterator[tuple[str, list[SpanData]]]:
        """Each trace id with its spans, one trace in memory at a time."""
        if not self._indexed:
            self._db.execute("CREATE INDEX by_trace ON spans (trace, seq)")
            self._indexed = True
        order = self._db.execute("SELECT trace FROM spans GROUP BY trace ORDER BY MIN(seq)")
        for (trace_id,) in order:
            yield trace_id, self.trace(trace_id)

    def trace(self, trace_id: str) -> list[SpanData]:
        """The spans of one trace, in the order they were read (after :meth:`traces` has been called)."""
        rows = self._db.execute("SELECT span FROM spans WHERE trace = ? ORDER BY seq", (trace_id,))
        return [pickle.loads(blob) for (blob,) in rows]  # our own temporary file

    def close(self) -> None:
        self._db.close()
        self._folder.cleanup()

    def __enter__(self) -> SpanSpill:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
