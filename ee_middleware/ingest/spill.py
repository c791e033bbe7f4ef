"""Spans grouped by trace on disk, so that ingest's memory does not grow with its input.

A run's spans can arrive in any order, in several requests and several files (a Collector batches
and rotates), so a trace can only be assembled once every file is read. Holding every span until
then made ingest's peak memory grow with the input; :class:`SpanSpill` keeps them in a SQLite file
in a temporary folder instead (removed on close), and hands them back one trace at a time, traces in
the order they were first seen and each trace's spans in the order they were read.

The spans are as read, not yet redacted. An ingest that is killed (``kill -9``, the OOM killer, SIGTERM) never
removes its folder, so each spill holds a lock on its folder (``owner.lock``, an ``flock`` the system drops when
the process ends however it ends) and every new spill first removes the ``ee-ingest-*`` folders whose lock nobody
holds (:func:`sweep_stale_spills`): a killed ingest's raw spans last until the next ingest at most.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

from ee_middleware.capture.spandata import SpanData

logger = logging.getLogger("ee_middleware.ingest")

_BATCH = 2000
PREFIX = "ee-ingest-"
"""The name of every spill folder starts so (in the system's temporary folder: ``TMPDIR``)."""
_LOCK = "owner.lock"
_SPANS = "spans.sqlite"
LEGACY_AGE_S = 24 * 3600
"""A spill folder of a version before owner locks (``spans.sqlite`` and no ``owner.lock``) is removed once it has not
changed for this long: its owner cannot be asked whether it still runs."""


def sweep_stale_spills(folder: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove the spill folders in ``folder`` (default: the temporary folder) whose ingest has ended without removing
    them (killed): those whose ``owner.lock`` no process holds, and legacy ones untouched for :data:`LEGACY_AGE_S`.
    Returns the folders removed. Folders of other users, and those that cannot be removed, are left as they are."""
    base = Path(folder if folder is not None else tempfile.gettempdir())
    try:
        candidates = [p for p in base.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return []
    removed = []
    for path in candidates:
        try:
            if path.is_symlink() or not path.is_dir() or path.stat().st_uid != os.getuid():
                continue
            if _stale(path):
                shutil.rmtree(path, ignore_errors=True)
                if not path.exists():
                    removed.append(path)
        except OSError:
            continue  # gone meanwhile (another ingest swept it), or not ours to read
    return removed


def _stale(path: Path) -> bool:
    lock = path / _LOCK
    if not lock.exists():  # a spill being made (no spans yet), or one made before owner locks
        spans = path / _SPANS
        return spans.exists() and time.time() - spans.stat().st_mtime > LEGACY_AGE_S
    try:
        # Never created here: a lock gone since exists() is a spill its owner is removing, and a file made in its
        # folder now would fail the owner's removal (Directory not empty).
        fd = os.open(lock, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its ingest runs
    else:
        return True  # nobody holds it: its ingest has ended (the lock is dropped with the process)
    finally:
        os.close(fd)


def _locked_file(folder: Path) -> IO[str]:
    """``folder/owner.lock``, created already locked (made under another name, then renamed), so that a sweep in
    another process never finds it unlocked while this ingest runs."""
    making = folder / f".{_LOCK}"
    fh = open(making, "w")  # noqa: SIM115 - held open (and locked) for the spill's lifetime
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        os.rename(making, folder / _LOCK)
    except BaseException:
        fh.close()
        raise
    return fh


class SpanSpill:
    """Spans written to a temporary SQLite file and read back by trace."""

    def __init__(self) -> None:
        sweep_stale_spills()
        self._folder = tempfile.TemporaryDirectory(prefix=PREFIX, ignore_cleanup_errors=True)
        self._owner = _locked_file(Path(self._folder.name))
        self._db = sqlite3.connect(Path(self._folder.name) / _SPANS, isolation_level=None)
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
        """Remove the spill's folder. Never fails the ingest: a folder another process wrote into while it was
        removed (a sweep of an earlier version recreating ``owner.lock``) is removed once more, and one still there
        after that is left, unlocked, to the next ingest's sweep, with a warning naming it."""
        self._db.close()
        folder = self._folder.name
        try:
            self._folder.cleanup()  # ignore_cleanup_errors: the folder is checked below instead
            if os.path.lexists(folder):
                shutil.rmtree(folder, ignore_errors=True)
            if os.path.lexists(folder):
                logger.warning(
                    "Could not remove the ingest's temporary folder %s: files were written into it while it was removed."
                    " The next ingest removes it if they are its owner.lock; otherwise remove it by hand.",
                    folder,
                )
        finally:
            self._owner.close()

    def __enter__(self) -> SpanSpill:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class MemorySpill:
    """:class:`SpanSpill`'s interface over a dict: the spans of a live batch (the span processor's), already in memory,
    need no temporary file (nor a writable temporary folder)."""

    def __init__(self) -> None:
        self._traces: dict[str, list[SpanData]] = {}

    def add(self, spans: Iterable[SpanData]) -> int:
        """Keep ``spans``; return how many."""
        count = 0
        for span in spans:
            self._traces.setdefault(span.trace_id, []).append(span)
            count += 1
        return count

    def traces(self) -> Iterator[tuple[str, list[SpanData]]]:
        """Each trace id with its spans, in the order the traces were first read."""
        yield from self._traces.items()

    def trace(self, trace_id: str) -> list[SpanData]:
        """The spans of one trace, in the order they were read."""
        return list(self._traces.get(trace_id, ()))

    def close(self) -> None:
        self._traces = {}

    def __enter__(self) -> MemorySpill:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
