"""An append-only, crash-safe spool of JSON records.

Each writing process owns one *segment* file and holds an exclusive ``flock`` on it while it is
open, so readers and the compactor can tell a live segment from one left behind by a finished or
killed process. A segment is created as a hidden ``.NAME.new`` file, locked and only then renamed, under the
spool's creation lock (held shared); what a writer killed in between leaves is never read, and compaction removes
it (:func:`remove_left_behind`). Every record is one line::

    <crc32 of the JSON, 8 hex digits> <JSON>\\n

A crash can leave at most the last line half-written; readers detect it (no newline, wrong
checksum or bad JSON), skip it with a :class:`~ee_middleware.errors.StoreCorruptionWarning`, and read
everything before and after it.

A segment deleted while its writer holds it open (the store folder removed while an agent runs: a clean-up job, a volume
provisioned again) is noticed at the next write: that write goes to a new segment, the spool folder is made again, and,
when the whole store folder went, the store's marker is written again (with a warning), and what the writer's owners
registered with :meth:`SpoolWriter.add_restore_hook` (capture's redaction settings and salt) is written again before the
batch counts as written, so nothing written after the removal is acknowledged without being stored, or stored in a folder
whose readers would redact it otherwise. A process forked while another thread writes gets a writer of its own
(:func:`os.register_at_fork`): the fork waits for that write, and the child never waits on a lock the parent held.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
import warnings
import weakref
import zlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic_core import from_json

from ee_middleware._files import file_size_limit, open_for_lock
from ee_middleware.errors import IncompleteReadWarning, StoreCorruptionWarning, StoreWriteError, os_error_advice

if TYPE_CHECKING:
    from pydantic import BaseModel

SEGMENT_SUFFIX = ".jsonl"

logger = logging.getLogger("ee_middleware.store")


def encode_line(record: dict[str, Any]) -> bytes:
    """One spool line for ``record``: checksum, space, compact JSON, newline.

    A lone surrogate (a file name decoded with ``surrogateescape``, a ``"\\ud800"`` escape in JSON a tool received),
    which UTF-8 cannot encode, is stored as U+FFFD, as capture stores it (:func:`~ee_middleware.messages.clean_text`):
    the record is kept, not refused."""
    return b"".join(_encoded_line(record))


def _encoded_line(record: dict[str, Any]) -> tuple[bytes, bytes, bytes]:
    """:func:`encode_line` in its pieces (checksum and space, JSON, newline), the JSON not copied into a line."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        from ee_middleware.messages import clean_text

        data = clean_text(text).encode("utf-8")
    return b"%08x " % zlib.crc32(data), data, b"\n"


def frame_line(payload: bytes) -> bytes:
    """The spool line for a record already encoded as ``payload`` (compact UTF-8 JSON, as :func:`encode_line` writes it)."""
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def json_may_differ(data: bytes) -> bool:
    """Whether pydantic's JSON ``data`` may differ from what ``json.dumps`` writes for the same values: only floats are spelled
    differently, and only where either writes an exponent. Pydantic then writes one with a sign (``1e-7``, ``1e+16``; Python:
    ``1e-07``) or spells out a small number (``0.00001``; Python: ``1e-05``). Such text inside a string also counts: that record
    then simply takes the ``json`` path. (Plain substring tests: a regular expression cost more than the encoding saved.)"""
    return b"e-" in data or b"e+" in data or b"0.0000" in data


SpoolLine = bytes | tuple[bytes, ...]
"""A spool line, whole or as the pieces it is made of, in order (:func:`model_line_pieces`): :meth:`SpoolWriter.append_lines`
writes a large piece (a long run's states) as it is, where joining it into its line and its line into the batch would hold
two more copies of it."""


def model_lines(kind: str, models: Sequence[BaseModel]) -> list[bytes]:
    """``[encode_line({"kind": kind, "data": m.model_dump(mode="json")}) for m in models]``, byte for byte, with about a third
    of the work: pydantic's serializer writes each model's JSON itself (what ``model_dump_json`` calls, with the same
    defaults, as bytes), instead of a dict that ``json.dumps`` then encodes.

    Both write the same keys in the same order, the same datetimes and values, the same separators and escapes, UTF-8
    unescaped, and ``null`` for a NaN or an infinity (``mode="json"`` dumps them as ``None``). They differ only in how some
    floats are spelled (:func:`json_may_differ`: a model whose text may differ takes the ``json`` path) and in what fails (a lone surrogate, which ``encode_line`` cleans): those take the ``json`` path."""
    return [b"".join(line) for line in model_line_pieces(kind, models)]


def model_line_pieces(
    kind: str, models: Sequence[BaseModel], *, piecewise: tuple[type[BaseModel], str] | None = None
) -> list[tuple[bytes, ...]]:
    """:func:`model_lines`, each line in its pieces (:data:`SpoolLine`): the model's JSON is never copied into its line.

    ``piecewise``: a model class and its last field, a list of models (``(Trajectory, "steps")``). A model of exactly that
    class (not a subclass, whose serialization may differ) whose list holds :data:`_PIECEWISE_FROM` items or more has
    each item encoded on its own, its JSON a piece of the line, where the whole model's JSON in one piece would be built
    in a buffer that grows to about twice its size and then copied (a long run's steps hold its conversation again and
    again: 100 steps of 100 KB tool results make a line of 500 MB). The line is the same, byte for byte."""
    head = b'{"kind":"%s","data":' % kind.encode("ascii")
    try:
        datas = [_json_pieces(m, piecewise) for m in models]
    except Exception:  # noqa: BLE001 - one model pydantic cannot encode: each takes its own path
        return [_model_line(kind, head, m) for m in models]
    suspect = any(json_may_differ(piece) for pieces in datas for piece in pieces)  # no pattern spans two pieces
    head_crc = zlib.crc32(head)
    lines: list[tuple[bytes, ...]] = []
    for model, pieces in zip(models, datas, strict=True):
        if suspect and any(json_may_differ(piece) for piece in pieces):
            lines.append(_encoded_line({"kind": kind, "data": model.model_dump(mode="json")}))
            continue
        lines.append(_framed(head, head_crc, pieces))
    return lines


def _framed(head: bytes, head_crc: int, pieces: Sequence[bytes]) -> tuple[bytes, ...]:
    """The spool line of a record whose ``data`` is the JSON ``pieces``, after ``head`` (``{"kind":...,"data":``, its
    checksum ``head_crc``), in pieces: the line's checksum continues from its constant head over the pieces."""
    crc = head_crc
    for piece in pieces:
        crc = zlib.crc32(piece, crc)
    return (b"%08x " % zlib.crc32(b"}", crc), head, *pieces, b"}\n")


_PIECEWISE_FROM = 8
"""How many items a model's last list holds before :func:`model_line_pieces` encodes them one by one: a run of a few steps
holds its conversation a few times, and one call encodes it with less work."""


def _json_pieces(model: BaseModel, piecewise: tuple[type[BaseModel], str] | None) -> list[bytes]:
    """Pydantic's JSON of ``model`` (what ``model_dump_json`` writes, as bytes), in pieces (see :func:`model_line_pieces`):
    the items of the last field ``piecewise`` names each in its own, each encoded by the serializer of the field's item
    type, as the model's own serializer encodes them; else in one piece."""
    serializer = model.__pydantic_serializer__
    item_type = _piecewise_item_type(*piecewise) if piecewise is not None and type(model) is piecewise[0] else None
    if item_type is None:
        return [serializer.to_json(model)]
    name = piecewise[1]  # type: ignore[index]
    items = getattr(model, name)
    if type(items) is not list or len(items) < _PIECEWISE_FROM or any(type(item) is not item_type for item in items):
        return [serializer.to_json(model)]
    rest = serializer.to_json(model, exclude={name})
    if not rest.endswith(b"}") or rest == b"{}":
        return [serializer.to_json(model)]
    item_serializer = item_type.__pydantic_serializer__
    pieces = [rest[:-1], b',"%s":[' % name.encode("ascii")]
    for n, item in enumerate(items):
        if n:
            pieces.append(b",")
        pieces.append(item_serializer.to_json(item))
    pieces.append(b"]}")
    return pieces


@functools.lru_cache(maxsize=8)
def _piecewise_item_type(cls: type[BaseModel], last_list: str) -> type[BaseModel] | None:
    """``M`` where ``cls`` is serialized field by field, in order, and its last field ``last_list``, written under its own
    name, is declared ``list[M]`` of a pydantic model ``M``: no model or field serializer, no computed or extra fields
    (written after the declared ones), the field not excluded; else ``None`` (the model is then encoded whole)."""
    import typing

    from pydantic import BaseModel

    fields = cls.model_fields
    if len(fields) < 2 or next(reversed(fields)) != last_list:
        return None
    field = fields[last_list]
    decorators = cls.__pydantic_decorators__
    if (
        decorators.model_serializers
        or decorators.field_serializers
        or cls.model_computed_fields
        or cls.model_config.get("extra") == "allow"
        or field.exclude
        or getattr(field, "exclude_if", None) is not None
        or field.alias not in (None, last_list)
        or field.serialization_alias not in (None, last_list)
    ):
        return None
    args = typing.get_args(field.annotation)
    if typing.get_origin(field.annotation) is not list or len(args) != 1:
        return None
    item = args[0]
    return item if isinstance(item, type) and issubclass(item, BaseModel) else None


def _model_line(kind: str, head: bytes, model: BaseModel) -> tuple[bytes, ...]:
    """One line of :func:`model_line_pieces`, encoded whole."""
    try:
        data = model.model_dump_json().encode("utf-8")
    except Exception:  # noqa: BLE001 - the json path below raises what it always raised, or cleans a lone surrogate
        data = b"e-"
    if json_may_differ(data):
        return _encoded_line({"kind": kind, "data": model.model_dump(mode="json")})
    return _framed(head, zlib.crc32(head), (data,))


@dataclass(frozen=True)
class SpoolProblem:
    """A damaged line found while reading a segment."""

    segment: Path
    line: int
    reason: str

    @property
    def hides_records(self) -> bool:
        """Whether a stored record was lost. A half-written last line is a write a crash cut
        short, never acknowledged to its writer; a damaged whole line was acknowledged."""
        return self.reason != HALF_WRITTEN

    def warn(self, *, stacklevel: int = 2) -> None:
        warnings.warn(
            f"Skipped a damaged record in {self.segment} line {self.line}: {self.reason}. "
            "Every other whole record of the segment was read; `ee store compact` moves the segment to quarantine/.",
            IncompleteReadWarning if self.hides_records else StoreCorruptionWarning,
            stacklevel=stacklevel + 1,
        )


HALF_WRITTEN = "half-written last record (no newline)"


class DecodedLine(NamedTuple):
    """A record of a segment, with where its text is: ``data[start:end]`` (checksum prefix included), which
    :func:`decode_span` decodes again to the same record, and whether pydantic's parser decoded it (:func:`decode_json`)."""

    record: dict[str, Any]
    start: int
    end: int
    strict: bool


def iter_lines(data: bytes, segment: Path, problems: list[SpoolProblem], *, live: bool) -> Iterator[DecodedLine]:
    """A segment's records one at a time (none held by this function), the damaged lines appended to ``problems`` as they
    are met: :func:`decode_lines` without holding every record at once.

    A final line without a newline in a ``live`` segment is a write in progress, not damage.
    """
    position, number = 0, 0
    while (newline := data.find(b"\n", position)) >= 0:
        number += 1
        if newline > position:
            line = data[position:newline]
            record, strict = _decode_line(line)
            if isinstance(record, str):
                problems.append(SpoolProblem(segment, number, record))
                salvaged = _salvage(line)
                if salvaged is not None:
                    yield DecodedLine(salvaged[0], position + salvaged[1], newline, False)
            else:
                yield DecodedLine(record, position, newline, strict)
        position = newline + 1
    if position < len(data) and not live:
        problems.append(SpoolProblem(segment, number + 1, HALF_WRITTEN))


def decode_lines(data: bytes, segment: Path, *, live: bool) -> tuple[list[dict[str, Any]], list[SpoolProblem]]:
    """Parse a segment's bytes into records, collecting (not raising) problems.

    A final line without a newline in a ``live`` segment is a write in progress, not damage.
    """
    problems: list[SpoolProblem] = []
    records = [line.record for line in iter_lines(data, segment, problems, live=live)]
    return records, problems


def decode_span(data: bytes, start: int, end: int) -> dict[str, Any]:
    """The record :func:`iter_lines` found at ``data[start:end]`` (its :class:`DecodedLine` span), decoded again."""
    record, _ = _decode_line(data[start:end])
    if isinstance(record, str):  # the bytes are the ones decoded before: never, unless they were changed in place
        raise ValueError(f"the spool record at bytes {start}-{end} no longer decodes: {record}")
    return record


_RECORD_START = re.compile(rb"[0-9a-f]{8} \{")


def _salvage(line: bytes) -> tuple[dict[str, Any], int] | None:
    """The whole record that follows a cut-off one on the same line, and where it starts on the line.

    Spools written before failed writes were rolled back can hold a line where a write cut short
    by a full disk is followed by the next, acknowledged record: that record is still read.
    """
    for match in _RECORD_START.finditer(line, 1):
        record, _ = _decode_line(line[match.start() :])
        if not isinstance(record, str):
            return record, match.start()
    return None


def decode_json(payload: bytes) -> tuple[Any, bool]:
    """``json.loads(payload)``, and whether pydantic's parser decoded it (about a third less CPU than ``json``).

    Where it accepts the text it builds the same values as ``json`` (see :func:`~ee_middleware.store.tables._loads`); it is
    asked to refuse ``NaN`` and ``Infinity`` too, so ``True`` also says the record holds neither token and no lone
    surrogate. Whatever it refuses is decoded, or refused with ``json``'s own error, by ``json``.
    """
    try:
        return from_json(payload, allow_inf_nan=False), True
    except ValueError:
        return json.loads(payload), False


def _decode_line(line: bytes) -> tuple[dict[str, Any] | str, bool]:
    """The record on ``line`` (or why there is none), and whether pydantic's parser decoded it (:func:`decode_json`)."""
    if len(line) < 10 or line[8:9] != b" ":
        return "line has no checksum prefix", False
    payload = line[9:]
    try:
        expected = int(line[:8], 16)
    except ValueError:
        return "checksum prefix is not hexadecimal", False
    if zlib.crc32(payload) != expected:
        return "checksum mismatch (record damaged)", False
    try:
        record, strict = decode_json(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return f"record is not valid JSON: {exc}", False
    if not isinstance(record, dict):
        return "record is not a JSON object", False
    return record, strict


def is_live(segment: Path) -> bool:
    """Whether some process still holds ``segment`` open for writing."""
    try:
        fd = os.open(segment, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_segment(segment: Path, *, warn: bool = True) -> list[dict[str, Any]]:
    """All intact records of one segment; damaged lines are skipped with a warning."""
    records, problems = check_segment(segment)
    if warn:
        for problem in problems:
            problem.warn(stacklevel=3)
    return records


def check_segment(segment: Path) -> tuple[list[dict[str, Any]], list[SpoolProblem]]:
    """All intact records of one segment and the damaged lines found (nothing is warned)."""
    live = is_live(segment)
    try:
        data = segment.read_bytes()
    except FileNotFoundError:  # compacted away between listing and reading: its records are in parts now
        return [], []
    return decode_lines(data, segment, live=live)


def read_spool(spool_dir: Path) -> tuple[list[dict[str, Any]], list[SpoolProblem]]:
    """Every intact record of every segment (oldest segment first) and the damaged lines found."""
    records: list[dict[str, Any]] = []
    problems: list[SpoolProblem] = []
    for segment in list_segments(spool_dir):
        good, bad = check_segment(segment)
        records += good
        problems += bad
    return records, problems


def list_segments(spool_dir: Path) -> list[Path]:
    """Segments in creation order (their names start with a sortable timestamp)."""
    if not spool_dir.exists():
        return []
    return sorted(p for p in spool_dir.iterdir() if p.name.endswith(SEGMENT_SUFFIX) and not p.name.startswith("."))


NEW_SUFFIX = ".new"
"""A segment is created as ``.NAME.new``, locked, and only then renamed to ``NAME``; it is never written before."""

CREATION_LOCK = ".create.lock"
"""The spool's creation lock: a writer holds it shared from creating its hidden ``.new`` file until it renamed it, so
whoever holds it exclusively knows that every ``.new`` file there was left by a writer that died in between."""


def remove_left_behind(spool_dir: Path, quarantine: Path) -> list[tuple[Path, Path | None]]:
    """Take away the hidden ``.new`` files that writers killed between creating a segment and renaming it left in
    ``spool_dir``: an empty one is deleted, one holding bytes (no writer writes before the rename) is moved to
    ``quarantine`` for inspection. Returns each file taken and where it went (``None``: deleted).

    The files are listed while no writer is creating a segment (the creation lock, tried without waiting: a writer busy
    creating one means the files are taken at the next call), and a file still locked by its writer is never taken. Its records are
    never read either way: :func:`list_segments` skips hidden names.
    """
    try:
        gate = open_for_lock(
            spool_dir / CREATION_LOCK, os.O_CREAT, 0o666
        )  # writable (by any user the umask lets: a shared store): NFS locks only such exclusively
    except FileNotFoundError:  # no spool yet
        return []
    try:
        try:
            fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []
        # Listed while no writer is between its create and its rename: each file listed was left by a dead one.
        # Writers wait for the lock only this long; those that create a file later use fresh names.
        left = sorted(spool_dir.glob(f".*{SEGMENT_SUFFIX}{NEW_SUFFIX}"))
    finally:
        os.close(gate)
    taken: list[tuple[Path, Path | None]] = []
    for path in left:
        if is_live(path):  # a writer of an older version (no creation lock) between its flock and its rename
            continue
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if size == 0:
            path.unlink(missing_ok=True)
            taken.append((path, None))
        else:
            quarantine.mkdir(parents=True, exist_ok=True)
            target = quarantine / path.name.lstrip(".")  # not hidden there: kept to be looked at
            os.replace(path, target)
            taken.append((path, target))
    return taken


FORK_WAIT_S = 5.0
"""How long a fork waits for a write under way in another thread (each writer's lock is taken before the fork, so that the
child inherits a writer between writes); a write that takes longer (a hung network file system) is not waited for: the
child gets a new lock all the same."""

GROUP_SYNC_INTERVAL_S = 0.5
"""How long a write made with ``durable=False`` may wait for its ``fsync`` (see :meth:`SpoolWriter.append_lines`)."""


class SpoolWriter:
    """Appends records to this process's own segment. Thread-safe; one instance per process."""

    def __init__(
        self,
        spool_dir: Path,
        *,
        fsync: bool = True,
        max_segment_bytes: int = 64 << 20,
        max_segment_age_s: float = 600.0,
        group_sync_interval_s: float | None = None,
    ) -> None:
        self._dir = spool_dir
        self._fsync = fsync
        self._group_sync_interval = GROUP_SYNC_INTERVAL_S if group_sync_interval_s is None else group_sync_interval_s
        self._synced_at = float("-inf")
        self._unsynced = False  # the open segment holds writes not yet synced (made with durable=False)
        self._max_bytes = max_segment_bytes
        self._max_age = max_segment_age_s
        self._opened_at = 0.0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._pid = os.getpid()
        self._made_segments = False  # a segment was created here: the folder existed, a store's spool
        self._folder_lost: Path | None = None  # the segment found deleted: the folder is made again at the next open
        self._restore_pending = False  # the store folder was made again, but what the hooks keep could not be written
        self._restore_hooks: dict[Hashable, Callable[[], None]] = {}
        _writers.add(self)

    def add_restore_hook(self, key: Hashable, hook: Callable[[], None]) -> None:
        """Have ``hook`` write again what the store folder must hold besides its marker (capture's ``redaction.json`` and
        ``redaction.key``) when the whole folder was removed while this writer wrote to it and is made again. It runs under
        the writer's lock, before the batch that found the folder gone counts as written: when it raises, that batch fails
        (:class:`~ee_middleware.errors.StoreWriteError`) and the next write runs it again. One hook per ``key`` (registering
        a key again replaces its hook); a hook must not write through this writer."""
        with self._lock:
            self._restore_hooks[key] = hook

    @property
    def segment(self) -> Path | None:
        """The segment currently open for writing, if any."""
        return self._path

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records durably (one ``write`` and, by default, one ``fsync`` per call)."""
        self.append_lines(_encoded_line(r) for r in records)

    def append_lines(self, lines: Iterable[SpoolLine], *, durable: bool = True) -> None:
        """:meth:`append` for records already encoded as spool lines (:func:`encode_line`, :func:`frame_line`), whole or in
        pieces (:func:`model_line_pieces`).

        ``durable=False`` syncs in groups: the write is synced by the first write made
        :data:`GROUP_SYNC_INTERVAL_S` or more after the last sync, or when the segment is sealed (only
        sealed segments are compacted). A process that crashes (even killed) loses none of it, the
        kernel holds it; a machine that stops (power, kernel) can lose the writes made since the last
        sync. For records that can be made again (a replay's rollouts: the next run replays what has
        no record), not for captured trajectories.

        A batch that would take the segment past the largest file this process may write (``ulimit -f``, systemd's
        ``LimitFSIZE=``) goes to a new segment, and one larger than that limit to as many new segments as it needs
        (:meth:`_write_split_locked`). A write that fails is rolled back and its segment closed: the next write goes to a
        new one.
        """
        lines = list(lines)
        size = sum(_line_size(line) for line in lines)
        if not size:
            return
        with self._lock:
            limit = file_size_limit()
            if limit is not None and self._size > 0 and self._size + size > limit:
                self._seal_quietly_locked()  # this segment would pass the file-size limit: a new one takes the batch
            if limit is not None and size > limit:
                self._write_split_locked(lines, limit, durable=durable)
            else:
                self._write_locked(lines, size, durable=durable)
            # sealed segments can be compacted, so a long-running agent's records still reach Parquet
            if self._size >= self._max_bytes or time.monotonic() - self._opened_at >= self._max_age:
                self._seal_quietly_locked()

    def _write_locked(self, lines: Sequence[SpoolLine], size: int, *, durable: bool) -> None:
        """Write ``lines`` (whole spool lines, ``size`` bytes in all) to the open segment, or a new one (:func:`_write_lines`).
        A failed write is rolled back; one that met a file-size limit (``EFBIG``) in a segment holding records is made again
        once, in a new segment."""
        retried = reopened = False
        while True:
            fd = self._ensure_open()
            segment = self._path
            unsynced_before = self._unsynced
            had_records = self._size > 0
            try:
                _write_lines(fd, lines)
                if self._fsync:
                    now = time.monotonic()
                    if durable or now - self._synced_at >= self._group_sync_interval:
                        os.fsync(fd)
                        self._synced_at, self._unsynced = now, False
                    else:
                        self._unsynced = True
                # checked after the write: a segment deleted at any moment before the batch is acknowledged holds it nowhere
                deleted = os.fstat(fd).st_nlink == 0
            except OSError as exc:
                what = self._roll_back_locked(fd)
                if exc.errno == errno.EFBIG and had_records and not retried:
                    retried = True  # the segment reached a file-size limit: a new one takes the batch
                    continue
                before = (
                    "the writes made since the last sync (replay results, made again by the next run) may not have reached the disk"
                    if unsynced_before
                    else "everything written before it is intact"
                )
                raise StoreWriteError(
                    f"Could not write to spool segment {segment}: {exc}. This batch was not stored ({what}); {before}. "
                    f"{os_error_advice(exc)}",
                    errno=exc.errno,
                ) from exc
            self._size += size
            if deleted:
                self._drop_deleted_locked()
                if reopened:  # the new segment went at once too: the folder is being removed again and again
                    raise StoreWriteError(
                        f"Could not write to the spool in {self._dir}: its segments are deleted as they are written (the store "
                        f"folder is being removed). This batch was not stored; the next write tries again.",
                        errno=errno.ENOENT,
                    )
                reopened = True
                continue
            return

    def _drop_deleted_locked(self) -> None:
        """Let go of the open segment, found deleted (its folder removed while it was open): what it held went with it. The
        next open makes the folder again and a new segment (:meth:`_ensure_open`)."""
        fd, path = self._fd, self._path
        self._fd, self._path, self._size, self._unsynced = None, None, 0, False
        self._folder_lost = path
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _restore_folder_locked(self, lost: Path | None, *, store_removed: bool) -> None:
        """The segment or the folder of a spool this writer wrote to was removed (``lost``: the segment found deleted), and
        a new segment was made in the folder made again. Where the whole store folder went (``store_removed``), its marker
        is written again: a folder holding a spool but no marker is not a store. Said in a warning: what was written
        there before the removal went with it."""
        restored = ""
        root = self._dir.parent
        if store_removed:
            try:
                from ee_middleware.store.local import LocalExperienceStore

                LocalExperienceStore.restore_marker(root)
                restored = f"; the store folder {root} was made again, with a new marker"
            except Exception as exc:  # noqa: BLE001 - the batch is written all the same; `ee store repair` writes the marker
                restored = f"; the store folder {root} was made again, but its marker could not be written ({exc}): run `ee store repair --store {root}`"
        # every writer that lost its segment or folder writes again what its hooks keep, not only the one that found the
        # store folder gone: another writer (another recorder with its own rules, ingest) may have made it again first
        self._run_restore_hooks_locked(root)
        if self._restore_hooks:
            restored += "; the redaction settings and salt of the recorders writing through it were written again"
        what = f"its segment {lost} was deleted" if lost is not None else "the folder was gone"
        logger.warning(
            "ee-middleware: the spool %s was removed while this process wrote to it (%s): what was written there before went "
            "with it; later records go to a new segment %s%s.",
            self._dir,
            what,
            self._path,
            restored,
        )

    def _run_restore_hooks_locked(self, root: Path) -> None:
        """Run the hooks (:meth:`add_restore_hook`) for the store folder ``root`` made again; when one fails, give up the
        new segment (empty) and raise :class:`StoreWriteError`: the batch is not stored, and the next write tries again."""
        for hook in list(self._restore_hooks.values()):
            try:
                hook()
            except Exception as exc:  # any failure: the batch must not be acknowledged in a folder without them
                fd, path = self._fd, self._path
                self._fd, self._path, self._size, self._unsynced = None, None, 0, False
                self._restore_pending = True
                if fd is not None:
                    if path is not None:
                        path.unlink(missing_ok=True)  # still locked: empty, never taken for a finished segment
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                raise StoreWriteError(
                    f"The store folder {root} was removed while this process wrote to it and was made again, but what its "
                    f"writers keep in it (the redaction settings and salt) could not be written again: {exc}. This batch was not "
                    "stored (its readers would redact it with other rules); the next write tries again."
                    + (f" {os_error_advice(exc)}" if isinstance(exc, OSError) else ""),
                    errno=exc.errno if isinstance(exc, OSError) else None,
                ) from exc
        self._restore_pending = False

    def _write_split_locked(self, lines: list[SpoolLine], limit: int, *, durable: bool) -> None:
        """Write a batch larger than ``limit`` (the largest file this process may write) to as many new segments as it
        needs, each kept open and locked until the whole batch is written: no compactor folds part of it, and a failure
        removes all of it (the batch is stored whole or not at all, as any batch)."""
        largest = max(_line_size(line) for line in lines)
        if largest > limit:
            raise StoreWriteError(
                f"Could not write to the spool in {self._dir}: a record of this batch takes {largest} bytes, more than the "
                f"largest file this process may write ({limit} bytes). This batch was not stored; everything written before "
                f"it is intact. {os_error_advice(OSError(errno.EFBIG, os.strerror(errno.EFBIG)))}",
                errno=errno.EFBIG,
            )
        chunks: list[tuple[list[SpoolLine], int]] = []
        chunk: list[SpoolLine] = []
        size = 0
        for line in lines:
            line_size = _line_size(line)
            if chunk and size + line_size > limit:
                chunks.append((chunk, size))
                chunk, size = [], 0
            chunk.append(line)
            size += line_size
        chunks.append((chunk, size))
        held: list[tuple[int, Path, bool]] = []  # the batch's full segments, still locked
        try:
            for n, (chunk, size) in enumerate(chunks):
                if n and self._fd is not None and self._path is not None:
                    held.append((self._fd, self._path, self._unsynced))
                    self._fd, self._path, self._size, self._unsynced = None, None, 0, False
                self._write_locked(chunk, size, durable=durable)
        except StoreWriteError:
            for fd, path, _ in held:
                try:
                    os.ftruncate(fd, 0)
                    path.unlink(missing_ok=True)  # still locked: never taken for a finished segment meanwhile
                except OSError:
                    pass  # locked until the close below only: compaction may fold what it holds (repeats are dropped on read)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            raise
        for fd, path, unsynced in held:
            try:
                self._close_segment(fd, path, unsynced)
            except StoreWriteError as exc:  # this batch was written: its caller is not told it failed
                logger.warning("ee-middleware: %s", exc)

    def _seal_quietly_locked(self) -> None:
        """Seal the open segment; a failed sync of its writes made with ``durable=False`` is logged, not raised (the
        batch at hand is not concerned)."""
        try:
            self._seal_locked()
        except StoreWriteError as exc:
            logger.warning("ee-middleware: %s", exc)

    def seal(self) -> Path | None:
        """Close the current segment so that it can be compacted; the next append opens a new one."""
        with self._lock:
            return self._seal_locked()

    close = seal

    def __del__(self) -> None:
        """A writer dropped without :meth:`seal` (a store handle never closed: a service that opens one per request) seals
        its segment: its descriptor and lock released, the segment compactable. Before, each such handle kept both until
        the process ended (a reviewer service ran out of file descriptors, and compaction folded none of the segments)."""
        try:
            if self._fd is not None and self._pid == os.getpid():
                self._seal_quietly_locked()  # (no other reference: no write can be under way; a failed sync is logged)
        except Exception:  # noqa: BLE001 - nothing may be raised from a finaliser; the segment stays as the process leaves it
            pass

    def _ensure_open(self) -> int:
        if self._fd is not None and self._pid != os.getpid():  # forked child: never share a segment
            self._forget_inherited_locked()
        if self._fd is None:
            lost = self._folder_lost
            pending = self._restore_pending  # the folder was made again, but the last try to restore it failed
            removed = pending or lost is not None or (self._made_segments and not self._dir.is_dir())
            store_removed = pending or (removed and not self._dir.parent.exists())
            path = self._dir / _segment_name()
            # Created and locked under a hidden name, then renamed: a compactor must never see an
            # unlocked new segment, take it for a dead one and delete it under the writer. The spool's
            # creation lock, held shared meanwhile, tells a hidden file of a live writer from one a
            # killed writer left (see remove_left_behind).
            hidden = path.with_name(f".{path.name}{NEW_SUFFIX}")
            fd = gate = -1
            try:
                self._dir.mkdir(parents=True, exist_ok=True)
                gate = os.open(self._dir / CREATION_LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
                fcntl.flock(gate, fcntl.LOCK_SH)
                fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.rename(hidden, path)
            except OSError as exc:
                if fd >= 0:
                    os.close(fd)
                    hidden.unlink(missing_ok=True)
                raise StoreWriteError(f"Cannot create spool segment {path}: {exc}. {os_error_advice(exc)}", errno=exc.errno) from exc
            finally:
                if gate >= 0:
                    os.close(gate)  # releases the creation lock
            self._fd, self._path, self._size, self._pid = fd, path, 0, os.getpid()
            self._opened_at = time.monotonic()
            self._made_segments, self._folder_lost = True, None
            if removed:
                self._restore_folder_locked(lost, store_removed=store_removed)
        return self._fd

    def _roll_back_locked(self, fd: int) -> str:
        """Undo a failed write: cut the segment back to its last whole record, and close it (the next append opens a new
        segment; an empty one is removed).

        No later record can land on the line a failed write left half-written (a full disk, a quota): it would be read
        back as part of a damaged line and lost. And none goes to the segment that failed: one at a file-size limit
        (``ulimit -f``, systemd's ``LimitFSIZE=``) took no more, and every later batch failed on it too.
        """
        try:
            os.ftruncate(fd, self._size)
            if self._fsync:
                os.fsync(fd)
        except OSError:
            self._unsynced = False  # the segment is given up on: its sync failed already
            self._seal_locked()  # the next append opens a new segment; this one ends in a half line
            return "the segment it began was closed, its unfinished last line is skipped on read"
        self._unsynced = False
        if self._size == 0 and self._path is not None:
            self._path.unlink(missing_ok=True)  # still locked: no reader or compactor takes it for a finished segment
            self._seal_locked()
            return "the new segment it began was removed; later writes go to a new one"
        self._seal_locked()
        return "the segment was cut back to its last whole record and closed; later writes go to a new one"

    def _forget_inherited_locked(self) -> None:
        """In a forked child: let go of the parent's segment without unlocking it. The lock belongs to the open file
        both processes share, so unlocking it here would tell the compactor the parent's segment is finished (it
        would be folded and deleted while the parent still writes to it); closing this copy of the descriptor does not."""
        fd = self._fd
        self._fd, self._path, self._size, self._unsynced = None, None, 0, False
        if fd is not None:
            os.close(fd)

    def _seal_locked(self) -> Path | None:
        if self._fd is not None and self._pid != os.getpid():  # a forked child's copy: the segment is the parent's
            self._forget_inherited_locked()
            return None
        path, fd, unsynced = self._path, self._fd, self._unsynced
        self._fd, self._path, self._size, self._unsynced = None, None, 0, False
        if fd is not None:
            self._close_segment(fd, path, unsynced)
        return path

    @staticmethod
    def _close_segment(fd: int, path: Path | None, unsynced: bool) -> None:
        """Sync (``unsynced``: it holds writes made with ``durable=False``), unlock and close a segment: it can be compacted."""
        try:
            if unsynced:  # what durable=False writes left for a later sync: synced before the segment can be compacted
                os.fsync(fd)
        except OSError as exc:
            raise StoreWriteError(
                f"Could not sync spool segment {path}: {exc}. Its last writes are in the system's cache and may be lost if "
                f"the machine stops before it writes them out. {os_error_advice(exc)}",
                errno=exc.errno,
            ) from exc
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_writers: weakref.WeakSet[SpoolWriter] = weakref.WeakSet()
_held_at_fork: list[SpoolWriter] = []


_JOINED_UP_TO = 1 << 20
"""How much of a batch is joined into one write: its small pieces are, up to this many bytes (a batch of small lines in one
write, as always)."""

_WRITTEN_AS_IS = 64 << 10
"""A piece of a spool line this large (a long run's states) is written as it is, not copied into a write: joining such
pieces made a copy of each, and the heap kept the copies' memory (a run of 1,000 steps: 150 MB more while written)."""


def _line_size(line: SpoolLine) -> int:
    """The length of ``line`` in bytes, whole or in pieces."""
    return len(line) if isinstance(line, bytes) else sum(len(piece) for piece in line)


def _write_lines(fd: int, lines: Sequence[SpoolLine]) -> None:
    """Write ``lines`` to ``fd`` in order: their small pieces joined into writes of up to :data:`_JOINED_UP_TO` bytes, and a
    piece of :data:`_WRITTEN_AS_IS` or more written on its own, so that a batch is never copied whole: a long run's line
    is held once while it is written (its pieces), not two or three times."""
    pending: list[bytes] = []
    size = 0
    for line in lines:
        for piece in (line,) if isinstance(line, bytes) else line:
            if pending and (size + len(piece) > _JOINED_UP_TO or len(piece) >= _WRITTEN_AS_IS):
                _write_fully(fd, b"".join(pending))
                pending, size = [], 0
            if len(piece) >= _WRITTEN_AS_IS:
                _write_fully(fd, piece)
            else:
                pending.append(piece)
                size += len(piece)
    if pending:
        _write_fully(fd, b"".join(pending))


def _write_fully(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a large write may be partial)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _before_fork() -> None:
    """Take every writer's lock (waiting at most :data:`FORK_WAIT_S` for a write under way): the child then inherits each
    writer between writes, never a lock held by a thread it does not have."""
    for writer in list(_writers):
        if writer._lock.acquire(timeout=FORK_WAIT_S):
            _held_at_fork.append(writer)


def _after_fork_in_parent() -> None:
    while _held_at_fork:
        _held_at_fork.pop()._lock.release()


def _after_fork_in_child() -> None:
    """A lock of its own for each writer (the parent's stays the parent's); its segment stays the parent's (see
    :meth:`SpoolWriter._forget_inherited_locked`): the child's first write opens one of its own."""
    _held_at_fork.clear()
    for writer in list(_writers):
        writer._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


def sortable_stamp() -> str:
    """``YYYYMMDDTHHMMSS-NNNNNNNNN`` (UTC, nanoseconds) from one clock reading, so names sort in time order.

    Reading the seconds and the nanoseconds separately put a name written at X.999... before one
    written a moment earlier whenever the second turned between the two readings.
    """
    now = time.time_ns()
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now // 10**9))}-{now % 10**9:09d}"


def _segment_name() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:32]
    return f"{sortable_stamp()}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"


def iter_records(spool_dir: Path, *, warn: bool = True) -> Iterator[dict[str, Any]]:
    """Every intact record of every segment, oldest segment first."""
    for segment in list_segments(spool_dir):
        yield from read_segment(segment, warn=warn)
