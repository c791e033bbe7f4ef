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

A segment is decoded one record at a time, and only the segments the cache keeps keep their validated records; the
others keep their bytes and their tables' rows (the steps' aside), and where a read needs a trajectory's record or
steps again (a lookup of one trajectory, a read group's steps, ``iter_trajectories``), it decodes those records alone
again from their lines (:class:`TrajectoryLines`). A spool far larger than the cache is thus read in about twice its
size in memory, not the seven times or more its decoded records take.

The garbage collector is paused while a segment is decoded (:func:`_collector_paused`).
"""

from __future__ import annotations

import gc
import os
import re
import threading
import warnings
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware.errors import IncompleteReadWarning, LargeSpoolWarning, RecordError, StoreCorruptionWarning, StoreUnreadableError
from ee_middleware.records import SCHEMA_VERSION, ApprovalEvent, ReplayRecord, Rollout, Trajectory
from ee_middleware.store import spool
from ee_middleware.store.access import store_unreadable
from ee_middleware.store.tables import TABLES, approval_row, frame, json_text, replay_row, rollout_row, step_row, trajectory_row

CACHE_BYTES = 16 << 20
"""How many bytes of spool segments one store handle keeps decoded. The decoded records, with their table frames, take
about seven times as much memory (≈ 110 MB at this bound) until ``iter_trajectories`` takes the trajectories over; the
other segments keep their bytes and table rows alone (see above)."""

LARGE_SPOOL_BYTES = 64 << 20
"""A spool larger than this is said once per store handle (:class:`~ee_middleware.errors.LargeSpoolWarning`): reads decode
what the cache does not keep every time (about 1 s per 35 MB, and 1.6x its size in memory), so a day of traces left
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
    only when asked for (:meth:`frames`), or, with ``steps``, as each record is decoded.

    ``records``: plain records, or the :class:`~ee_middleware.store.spool.DecodedLine` s of a segment's bytes ``data``
    (each trajectory's line is then noted, so that it can be decoded again: :attr:`lines`). ``keep``: whether the
    validated trajectories are kept (:attr:`trajectories`); without, each is dropped once its row and what
    :class:`TrajectoryLines` notes of it are made, so that decoding a segment holds one record at a time."""

    def __init__(
        self,
        records: Iterable[dict[str, Any] | spool.DecodedLine],
        segment: Path | None = None,
        data: bytes | None = None,
        keep: bool = True,
        *,
        steps: bool = False,
    ) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES if name != "steps"}
        self.step_rows: StepRows | None = StepRows() if steps else None
        """With ``steps``: the steps' rows, written as each record is decoded, so that compaction needs no trajectory kept
        to write them."""
        self.trajectories: list[Trajectory] = []
        """The validated trajectories, in record order (only where kept)."""
        self.lines = TrajectoryLines()
        """What each trajectory record is (its id, where its line is, what its steps say), in record order."""
        self.rejected: list[str] = []
        """Why records did not fit the schema (those of a newer schema aside: :attr:`newer`)."""
        self.newer: list[str] = []
        """The schema versions of the records that do not fit this version's schema and say they have a newer one (a
        newer ee-middleware wrote them)."""
        self.count = 0
        """How many records were given (those skipped included)."""
        where = "" if segment is None else f" of {segment}"
        for item in records:
            self.count += 1
            line = item if type(item) is spool.DecodedLine else None
            record = line.record if line is not None else item
            kind, data_ = record.get("kind"), record.get("data")
            version = newer_schema(record)
            if version is not None:  # a newer ee-middleware's record: skipped even where it fits this schema, whose fields
                self.newer.append(version)  # it may mean otherwise (1.7's NAME#K in step.tools read by 1.6 dropped tools)
                continue
            try:
                if kind == "trajectory":
                    t = Trajectory.parse(data_, where="spool record")
                    self.rows["trajectories"].append(trajectory_row(t, json_text))
                    exact = line is not None and data is not None and line.strict and round_trips(data[line.start + 9 : line.end])
                    self.lines.add(t, (line.start, line.end) if line is not None else None, exact)
                    if keep:
                        self.trajectories.append(t)
                    if self.step_rows is not None:
                        self.step_rows.add(t)
                elif kind == "approval":
                    self.rows["approvals"].append(approval_row(ApprovalEvent.parse(data_, where="spool record")))
                elif kind == "rollout":
                    self.rows["rollouts"].append(rollout_row(Rollout.parse(data_, where="spool record")))
                elif kind == "replay":
                    self.rows["replays"].append(replay_row(ReplayRecord.parse(data_, where="spool record")))
                else:
                    raise RecordError(f"unknown spool record kind {kind!r}")
            except RecordError as exc:
                self.rejected.append(f"Skipped a spool record{where} that does not fit the schema: {exc}")

    def frames(self) -> dict[str, pl.DataFrame]:
        """Every table's rows, steps included (those written as the records were decoded, else the kept trajectories')."""
        return {name: self._steps() if name == "steps" else frame(self.rows[name], schema) for name, schema in TABLES.items()}

    def _steps(self) -> pl.DataFrame:
        return self.step_rows.frame() if self.step_rows is not None else steps_frame(self.trajectories)


STEP_ROWS_AT_ONCE = 2_000
"""Step rows written before they are put in a frame (:class:`StepRows`)."""


class StepRows:
    """The steps table's rows of trajectories added one at a time, put in a frame every :data:`STEP_ROWS_AT_ONCE` rows
    (each step's state is written as JSON text, a row's largest part: the rows of a whole segment at once took several
    times its frame)."""

    def __init__(self) -> None:
        self._frames: list[pl.DataFrame] = []
        self._rows: list[dict[str, Any]] = []

    def add(self, t: Trajectory) -> None:
        self._rows += [step_row(s, json_text) for s in t.steps]
        if len(self._rows) >= STEP_ROWS_AT_ONCE:
            self._frames.append(frame(self._rows, TABLES["steps"]))
            self._rows = []

    def frame(self) -> pl.DataFrame:
        """Every row added, as one frame."""
        frames = [*self._frames, frame(self._rows, TABLES["steps"])]
        return pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]


def steps_frame(trajectories: Iterable[Trajectory]) -> pl.DataFrame:
    """The steps table's rows of ``trajectories`` (:class:`StepRows`), the collector paused meanwhile."""
    rows = StepRows()
    with _collector_paused():
        for t in trajectories:
            rows.add(t)
    return rows.frame()


class TrajectoryLines:
    """What a segment's trajectory records are, in record order, without the records: enough to find the records a read
    needs (by id, or by the trajectory ids their steps carry) and to decode those alone again from their lines."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.spans: list[tuple[int, int] | None] = []
        """Where each record's line is in the segment's bytes (``None``: not read from a segment)."""
        self.exact: list[bool] = []
        """Whether each can be rebuilt from its record alone (see :func:`round_trips`)."""
        self.alone: list[bool] = []
        """Whether each record's steps all carry its own id, at distinct indices."""
        self.owners: dict[str, list[int]] = {}
        """By trajectory id: the records (positions) holding steps that carry that id."""
        self.foreign: set[str] = set()
        """Ids that steps of another trajectory's record carry."""

    def add(self, t: Trajectory, span: tuple[int, int] | None, exact: bool) -> None:
        position = len(self.ids)
        self.ids.append(t.id)
        self.spans.append(span)
        self.exact.append(exact)
        carried = {s.trajectory_id for s in t.steps}
        self.alone.append(carried <= {t.id} and len({s.index for s in t.steps}) == len(t.steps))
        for owner in carried:
            self.owners.setdefault(owner, []).append(position)
        self.foreign.update(carried - {t.id})

    def carrying(self, ids: Iterable[str]) -> list[int]:
        """The records (positions, in record order) holding a step that carries one of ``ids``."""
        return sorted({position for i in ids for position in self.owners.get(i, ())})


def newer_schema(record: dict[str, Any]) -> str | None:
    """The record schema version a spool record says it was written with, when it is newer than this version's (asked
    of every record read: this version's own, most of them, are told at once)."""
    data = record.get("data")
    version = data.get("schema_version") if isinstance(data, dict) else None
    if not isinstance(version, str) or version == SCHEMA_VERSION:
        return None
    try:
        newer = tuple(map(int, version.split("."))) > _OWN_SCHEMA
    except ValueError:
        return None
    return version if newer else None


_OWN_SCHEMA = tuple(map(int, SCHEMA_VERSION.split(".")))


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
    """What the whole lines of one segment decode to (the bytes after its last newline are not part of it): its tables'
    rows but the steps', and where each trajectory's record is (:class:`TrajectoryLines`).

    ``keep_records``: the validated trajectories are kept too, so that a read of the steps, or of the trajectories
    themselves, does not decode their records again (a segment a :class:`SpoolCache` keeps); without, each record is
    dropped once its rows are made, and decoded again from its line where a read needs it (the one trajectory a lookup
    asks for, the steps of the trajectories a read group holds): reading a spool larger than the cache then holds its
    bytes and its tables' rows, not every record it decodes to."""

    def __init__(self, segment: Path, data: bytes, *, keep_records: bool = True) -> None:
        self.segment = segment
        self.data = data
        self.lines = data.count(b"\n")
        rows, self.problems = self._decode(keep_records)
        self.rejected = rows.rejected
        self.newer = rows.newer
        self.index = rows.lines
        self._frames = {name: frame(r, TABLES[name]) for name, r in rows.rows.items()}
        self._steps: pl.DataFrame | None = None
        self._records: list[Trajectory | None] | None = list(rows.trajectories) if keep_records else None
        """The validated trajectories, until handed over (:meth:`hand_over`); ``None`` where not kept."""
        self._lock = threading.Lock()

    def _decode(self, keep: bool) -> tuple[SpoolRows, list[spool.SpoolProblem]]:
        problems: list[spool.SpoolProblem] = []
        with _collector_paused():
            rows = SpoolRows(spool.iter_lines(self.data, self.segment, problems, live=True), self.segment, self.data, keep)
        return rows, problems

    def trajectory(self, position: int) -> Trajectory:
        """The trajectory of the ``position``-th trajectory record, decoded again from its line (the caller's own)."""
        span = self.index.spans[position]
        assert span is not None  # (a segment's records are all read from its lines)
        record = spool.decode_span(self.data, *span)
        return Trajectory.parse(record.get("data"), where="spool record")

    def _trajectories(self, positions: Iterable[int]) -> Iterator[Trajectory]:
        """(With ``_lock`` held.) The trajectories at ``positions``: the kept ones where they are still here, the others
        decoded again."""
        for position in positions:
            kept = self._records[position] if self._records is not None else None
            yield kept if kept is not None else self.trajectory(position)

    def frame(self, table: str) -> pl.DataFrame:
        if table != "steps":
            return self._frames[table]
        with self._lock:
            if self._steps is None:
                self._steps = self._step_frame(range(len(self.index.ids)))
            return self._steps

    def steps_carrying(self, ids: Collection[str]) -> pl.DataFrame:
        """The steps that carry one of ``ids``, in record order, without writing the others' (where the segment's steps
        were not written yet: every step of the records holding one, a superset to filter)."""
        with self._lock:  # (held while the rows are written: a kept trajectory is not handed over meanwhile, and changed)
            if self._steps is not None:
                return self._steps.filter(pl.col("trajectory_id").is_in(pl.Series(list(ids), dtype=pl.String).implode()))
            return self._step_frame(self.index.carrying(ids))

    def _step_frame(self, positions: Iterable[int]) -> pl.DataFrame:
        """(With ``_lock`` held.) The steps' rows of the trajectory records at ``positions``."""
        return steps_frame(self._trajectories(positions))

    def hand_over(self, positions: Collection[int]) -> dict[int, Trajectory]:
        """The kept trajectories at ``positions``, for the caller to keep; every kept trajectory is let go (a later read
        decodes them again from their lines)."""
        with self._lock:
            records, self._records = self._records, None
        if records is None:
            return {}
        return {p: t for p in positions if (t := records[p]) is not None}


class SpoolTrajectories:
    """Trajectories rebuilt from their spool records alone, by id (see :meth:`SpoolRead.take_trajectories`): those a
    segment kept decoded are handed over at once, the others decoded from their lines one at a time, when popped."""

    def __init__(self) -> None:
        self._ready: dict[str, Trajectory] = {}
        self._lines: dict[str, tuple[DecodedSegment, int]] = {}

    def __contains__(self, trajectory_id: object) -> bool:
        return trajectory_id in self._ready or trajectory_id in self._lines

    def pop(self, trajectory_id: str, default: Trajectory | None = None) -> Trajectory | None:
        """The trajectory ``trajectory_id`` (the caller's own), no longer held here; ``default`` where there is none."""
        if trajectory_id in self._ready:
            return self._ready.pop(trajectory_id)
        found = self._lines.pop(trajectory_id, None)
        return found[0].trajectory(found[1]) if found is not None else default


class SpoolRead:
    """The spool as one read saw it: its segments' decoded records (oldest segment first) and the damaged lines found."""

    def __init__(self, segments: list[DecodedSegment], problems: list[spool.SpoolProblem]) -> None:
        self.segments = segments
        self.problems = problems

    def frame(self, table: str, *, carrying: Collection[str] | None = None) -> pl.DataFrame:
        """``table``'s rows from the spool, in record order (repeated records still there). ``carrying`` (steps only):
        only the steps of the records holding a step that carries one of those trajectory ids, written alone (a superset
        of those trajectories' steps: filter them)."""
        if carrying is not None:
            assert table == "steps", table
            frames = [s.steps_carrying(carrying) for s in self.segments]
        else:
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

    def take_trajectories(self, exclude: Collection[str], wanted: Collection[str]) -> SpoolTrajectories:
        """Of the ``wanted`` trajectories, those that can be rebuilt from their records alone, for the caller to keep.

        A trajectory qualifies when its rows come from its one record and nothing else: its id is not in ``exclude``
        (ids with rows in Parquet parts), no other record has its id or steps with its id, its steps carry its id and
        distinct indices, and it round-trips exactly (:func:`round_trips`). The trajectories the segments kept decoded
        are handed over now (and the others they kept let go); the rest are decoded when taken.
        """
        records: dict[str, int] = {}
        foreign: set[str] = set()
        for segment in self.segments:
            for i in segment.index.ids:
                records[i] = records.get(i, 0) + 1
            foreign |= segment.index.foreign
        out = SpoolTrajectories()
        for segment in self.segments:
            index = segment.index
            chosen = {
                position: i
                for position, i in enumerate(index.ids)
                if i in wanted and index.exact[position] and index.alone[position] and records[i] == 1
                and i not in exclude and i not in foreign
            }  # fmt: skip
            handed = segment.hand_over(chosen)
            for position, i in chosen.items():
                if position in handed:
                    out._ready[i] = handed[position]
                else:
                    out._lines[i] = (segment, position)
        return out


class SpoolCache:
    """Decoded segments of one store's spool, reused while a segment's bytes stay the same. Thread-safe."""

    def __init__(self, spool_dir: Path, *, max_bytes: int | None = None) -> None:
        self.dir = spool_dir
        self.max_bytes = CACHE_BYTES if max_bytes is None else max_bytes
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
            try:
                live = spool.is_live(segment)
                data = segment.read_bytes()
            except FileNotFoundError:  # compacted away between listing and reading: its records are in parts now
                continue
            except OSError as exc:  # a folder in its place, no permission, a failed disk: the store's file, said so
                raise StoreUnreadableError(store_unreadable(self.dir.parent, exc), os_error=exc) from exc
            end = data.rfind(b"\n") + 1
            d = cached.get(segment)
            if d is None or len(d.data) != end or not data.startswith(d.data):
                # (a segment the cache has no room for keeps no decoded records: each is dropped once its rows are made)
                d = DecodedSegment(segment, data if end == len(data) else data[:end], keep_records=end <= room)
            decoded.append(d)
            problems += d.problems
            if end < len(data) and not live:  # as spool.decode_lines reports it
                problems.append(spool.SpoolProblem(segment, d.lines + 1, spool.HALF_WRITTEN))
            del data
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
                    f"decodes it again, so each command takes seconds and more memory than that. Run `ee store "
                    f"compact --store {store}`, and schedule it (hourly, say) where capture writes this much between "
                    "nightly runs."
                ),
                stacklevel=4,
            )
        return SpoolRead(decoded, problems)
