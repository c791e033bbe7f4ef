"""The spool as table rows: decoded once per store handle, and trajectories rebuilt without a JSON round trip.

Reading a freshly captured store is mostly reading its spool: decoding each JSON line, validating the record and
turning it into table rows, which writes every step's state back to JSON text (``state_json``); rebuilding a
trajectory from those rows then parses that text again. The replay job reads three times before it starts (the
selection, the resume markers, the trajectories), so all of it ran three times, and reading the spool cost about
four times as much CPU as reading the same store compacted. Two things change that, and neither changes what a
read returns:

* A store handle keeps what each segment decoded to (:class:`SpoolCache`), keyed by the segment's exact bytes: a
  later read decodes a segment again only if its bytes changed (a live segment that grew), so every record is
  visible as soon as it is written, as before. Damaged lines and records that do not fit the schema are reported
  on every read, as before. Segments beyond :data:`CACHE_BYTES` in all are decoded on every read, as before.
* The steps' rows (and their ``state_json``) are written only when a read needs the steps table, and
  :meth:`SpoolRead.take_trajectories` gives ``iter_trajectories`` the validated records themselves: it rebuilds
  each trajectory from its rows by the same :func:`~ee_middleware.store.tables.trajectory_from_rows`, with the JSON
  columns holding the decoded values (:class:`~ee_middleware.store.tables.Decoded`) instead of text to parse. That
  is exact where writing a value as JSON and reading it back gives the same value, which :func:`round_trips`
  checks on the record's line: pydantic's parser decoded it (so it holds no ``NaN``, ``Infinity`` or lone
  surrogate, and is not nested deeper than ``json`` goes) and no number in it is too large for a float. Other
  records take the row path. The records are handed over once (a caller may change what it gets); a second
  ``iter_trajectories`` on the same handle decodes them again.

The garbage collector is paused while a segment is decoded (:func:`_collector_paused`).
"""

from __future__ import annotations

import gc
import os
import re
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.errors import IncompleteReadWarning, LargeSpoolWarning, RecordError, StoreCorruptionWarning
from ee_middleware.records import SCHEMA_VERSION, ApprovalEvent, ReplayRecord, Rollout, Trajectory
from ee_middleware.store import spool
from ee_middleware.store.tables import TABLES, approval_row, frame, json_text, replay_row, rollout_row, step_row, trajectory_row

CACHE_BYTES = 16 << 20
"""How many bytes of spool segments one store handle keeps decoded. The decoded records, with their table frames, take
about seven times as much memory (≈ 110 MB at this bound) until ``iter_trajectories`` takes the trajectories over."""

LARGE_SPOOL_BYTES = 64 << 20
"""A spool larger than this is said once per store handle (:class:`~ee_middleware.errors.LargeSpoolWarning`): reads decode
what the cache does not keep every time (about 1 s and 7x its size in memory per 40 MB), so a day of traces left
uncompacted makes a lookup of one trajectory take many seconds and gigabytes."""

_BIG_EXPONENT = (re.compile(rb"e\+?[0-9]{3,}[,\]}\s]"), re.compile(rb"E\+?[0-9]{3,}[,\]}\s]"))
_DIGITS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 200


def round_trips(payload: bytes) -> bool:
    """Whether no number in ``payload`` (a record's JSON that pydantic's parser decoded) can be too large for a float.

    Such a number decodes to an infinity, which ``json`` cannot write back as it was read. It needs an exponent of three
    digits or more, or at least 210 digits before the point (JSON numbers have no leading zeros). The test is conservative:
    a longer run of digits anywhere, or a three-digit exponent inside a string, only sends the record down the row path.
    """
    if any(p.search(payload) for p in _BIG_EXPONENT):
        return False
    return _LONG_NUMBER not in payload.translate(_DIGITS)


_paused = 0
_paused_lock = threading.Lock()
_resume = False


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while a segment is decoded (and back on when the last decoding thread is done,
    if it was on before the first began).

    Decoding makes about a million objects (JSON values, validated records) that stay alive, and the collector walked
    the whole growing heap several times meanwhile: a third of the CPU of reading the spool of the BFCL store. They
    hold no reference cycles, so nothing needs the collector to be freed; what it still owes them afterwards is one
    pass (``benchmarks/store_read.py`` counts it, as ``settled``).
    """
    global _paused, _resume
    with _paused_lock:
        if _paused == 0:
            _resume = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _resume:
                gc.enable()


def _after_fork_in_child() -> None:
    """A process forked while another thread decodes starts with no decoding under way: its collector back on."""
    global _paused, _paused_lock
    if _paused and _resume:
        gc.enable()
    _paused, _paused_lock = 0, threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SpoolRows:
    """Table rows of some spool records (in record order) and why records were skipped; the steps' rows are written
    only when asked for (:meth:`steps`)."""

    def __init__(
        self, records: Iterable[dict[str, Any]], payloads: Iterable[bytes | None] | None = None, segment: Path | None = None
    ) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES if name != "steps"}
        self.trajectories: list[Trajectory] = []
        self.exact: list[bool] = []
        """Per trajectory: whether it can be rebuilt from its record (see :func:`round_trips`)."""
        self.rejected: list[str] = []
        """Why records did not fit the schema (those of a newer schema aside: :attr:`newer`)."""
        self.newer: list[str] = []
        """The schema versions of the records that do not fit this version's schema and say they have a newer one (a
        newer ee-middleware wrote them)."""
        where = "" if segment is None else f" of {segment}"
        lines = iter(payloads) if payloads is not None else None
        for record in records:
            line = next(lines) if lines is not None else None
            kind, data = record.get("kind"), record.get("data")
            try:
                if kind == "trajectory":
                    t = Trajectory.parse(data, where="spool record")
                    self.rows["trajectories"].append(trajectory_row(t, json_text))
                    self.trajectories.append(t)
                    self.exact.append(line is not None and round_trips(line))
                elif kind == "approval":
                    self.rows["approvals"].append(approval_row(ApprovalEvent.parse(data, where="spool record")))
                elif kind == "rollout":
                    self.rows["rollouts"].append(rollout_row(Rollout.parse(data, where="spool record")))
                elif kind == "replay":
                    self.rows["replays"].append(replay_row(ReplayRecord.parse(data, where="spool record")))
                else:
                    raise RecordError(f"unknown spool record kind {kind!r}")
            except RecordError as exc:
                version = newer_schema(record)
                if version is not None:
                    self.newer.append(version)
                else:
                    self.rejected.append(f"Skipped a spool record{where} that does not fit the schema: {exc}")

    def steps(self) -> list[dict[str, Any]]:
        return [step_row(s, json_text) for t in self.trajectories for s in t.steps]

    def frames(self) -> dict[str, pl.DataFrame]:
        """Every table's rows, steps included."""
        return {name: frame(self.steps() if name == "steps" else self.rows[name], schema) for name, schema in TABLES.items()}


def newer_schema(record: dict[str, Any]) -> str | None:
    """The record schema version a spool record says it was written with, when it is newer than this version's."""
    data = record.get("data")
    version = data.get("schema_version") if isinstance(data, dict) else None
    try:
        newer = isinstance(version, str) and tuple(map(int, version.split("."))) > tuple(map(int, SCHEMA_VERSION.split(".")))
    except ValueError:
        return None
    return version if newer else None


def warn_rejected(rejected: Iterable[str], *, stacklevel: int) -> None:
    for message in rejected:
        warnings.warn(message, IncompleteReadWarning, stacklevel=stacklevel + 1)


def warn_newer(segment: Path, versions: list[str], *, stacklevel: int) -> None:
    """Say that a read skipped the records of ``segment`` a newer ee-middleware wrote (schema ``versions``), and what to
    do. Not damage: nothing is lost (compaction keeps the segment), so reads go on without them, as the README says."""
    if not versions:
        return
    newest = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    warnings.warn(
        f"Skipped {len(versions)} record(s) of the spool segment {segment}: a newer ee-middleware wrote them (record schema "
        f"{newest}; this version reads {SCHEMA_VERSION}). Upgrade ee-middleware where this store is read and compacted (the "
        "nightly job, the CLI) to at least the version the app records with; nothing is lost meanwhile (compaction keeps the "
        "segment for a version that reads it).",
        StoreCorruptionWarning,
        stacklevel=stacklevel + 1,
    )


class DecodedSegment:
    """What the whole lines of one segment decode to (the bytes after its last newline are not part of it)."""

    def __init__(self, segment: Path, data: bytes) -> None:
        self.segment = segment
        self.data = data
        self.lines = data.count(b"\n")
        rows, self.problems = self._decode()
        self.rejected = rows.rejected
        self.newer = rows.newer
        self._frames = {name: frame(r, TABLES[name]) for name, r in rows.rows.items()}
        self._steps: pl.DataFrame | None = None
        self._rows: SpoolRows | None = rows  # None once its trajectories are handed over
        self._lock = threading.Lock()

    def _decode(self) -> tuple[SpoolRows, list[spool.SpoolProblem]]:
        payloads: list[bytes | None] = []
        with _collector_paused():
            records, problems = spool.decode_lines(self.data, self.segment, live=True, payloads=payloads)
            return SpoolRows(records, payloads, self.segment), problems

    def frame(self, table: str) -> pl.DataFrame:
        if table != "steps":
            return self._frames[table]
        with self._lock:
            if self._steps is None:
                rows = self._rows if self._rows is not None else self._decode()[0]
                self._steps = frame(rows.steps(), TABLES["steps"])
            return self._steps

    def take_trajectories(self) -> SpoolRows:
        """The records' trajectories, for the caller to keep: the first call gets the ones decoded already."""
        with self._lock:
            rows, self._rows = self._rows, None
        return rows if rows is not None else self._decode()[0]


class SpoolRead:
    """The spool as one read saw it: its segments' decoded records (oldest segment first) and the damaged lines found."""

    def __init__(self, segments: list[DecodedSegment], problems: list[spool.SpoolProblem]) -> None:
        self.segments = segments
        self.problems = problems

    def frame(self, table: str) -> pl.DataFrame:
        """``table``'s rows from the spool, in record order (repeated records still there)."""
        frames = [s.frame(table) for s in self.segments]
        return pl.concat(frames, how="vertical") if frames else frame([], TABLES[table])

    def warn(self, *, stacklevel: int) -> None:
        """Warn about the damaged lines, then about the records that do not fit the schema (or are of a newer one), as every
        read does."""
        for problem in self.problems:
            problem.warn(stacklevel=stacklevel + 1)
        for s in self.segments:
            warn_rejected(s.rejected, stacklevel=stacklevel + 1)
            warn_newer(s.segment, s.newer, stacklevel=stacklevel + 1)

    def take_trajectories(self, exclude: set[str]) -> dict[str, Trajectory]:
        """The trajectories that can be rebuilt from their records alone, by id, for the caller to keep.

        A trajectory qualifies when its rows come from its one record and nothing else: its id is not in ``exclude``
        (ids with rows in Parquet parts), no other record has its id or steps with its id, its steps carry its id and
        distinct indices, and it round-trips exactly (:func:`round_trips`).
        """
        taken: list[tuple[Trajectory, bool]] = []
        for segment in self.segments:
            rows = segment.take_trajectories()
            taken += zip(rows.trajectories, rows.exact, strict=True)
        records: dict[str, int] = {}
        foreign: set[str] = set()  # ids that steps of another trajectory's record carry
        for t, _ in taken:
            records[t.id] = records.get(t.id, 0) + 1
            foreign.update(s.trajectory_id for s in t.steps if s.trajectory_id != t.id)
        out = {}
        for t, exact in taken:
            if not exact or records[t.id] != 1 or t.id in exclude or t.id in foreign:
                continue
            if any(s.trajectory_id != t.id for s in t.steps) or len({s.index for s in t.steps}) != len(t.steps):
                continue
            out[t.id] = t
        return out


class SpoolCache:
    """Decoded segments of one store's spool, reused while a segment's bytes stay the same. Thread-safe."""

    def __init__(self, spool_dir: Path, *, max_bytes: int = CACHE_BYTES) -> None:
        self.dir = spool_dir
        self.max_bytes = max_bytes
        self._segments: dict[Path, DecodedSegment] = {}
        self._said_large = False

    def read(self) -> SpoolRead:
        """Every segment's records (oldest first), decoded again only where its bytes changed, and the damaged lines."""
        decoded: list[DecodedSegment] = []
        problems: list[spool.SpoolProblem] = []
        kept: dict[Path, DecodedSegment] = {}
        room = self.max_bytes
        cached = self._segments
        for segment in spool.list_segments(self.dir):
            live = spool.is_live(segment)
            try:
                data = segment.read_bytes()
            except FileNotFoundError:  # compacted away between listing and reading: its records are in parts now
                continue
            end = data.rfind(b"\n") + 1
            d = cached.get(segment)
            if d is None or len(d.data) != end or not data.startswith(d.data):
                d = DecodedSegment(segment, data if end == len(data) else data[:end])
            decoded.append(d)
            problems += d.problems
            if end < len(data) and not live:  # as spool.decode_lines reports it
                problems.append(spool.SpoolProblem(segment, d.lines + 1, spool.HALF_WRITTEN))
            if len(d.data) <= room:
                kept[segment] = d
                room -= len(d.data)
        self._segments = kept  # segments gone from the spool (compacted) are forgotten
        total = sum(len(d.data) for d in decoded)
        if total <= LARGE_SPOOL_BYTES:
            self._said_large = False  # (compacted since: said again should it grow back)
        elif not self._said_large:
            self._said_large = True
            store = self.dir.parent
            warnings.warn(
                LargeSpoolWarning(
                    f"The spool of {store} holds {total / 2**20:.0f} MB not yet compacted ({len(decoded)} segments): every read "
                    f"decodes it again, so each command takes seconds and memory several times that size. Run `ee store "
                    f"compact --store {store}`, and schedule it (hourly, say) where capture writes this much between "
                    "nightly runs."
                ),
                stacklevel=4,
            )
        return SpoolRead(decoded, problems)
