"""The embedded experience store: a local folder of Parquet parts fed by a crash-safe spool.

Layout::

    STORE/
      ee-store.json              format marker and schema version
      spool/*.jsonl              append-only segments, one per writing process (see spool.py)
      trajectories/part-*.parquet
      steps/part-*.parquet
      approvals/part-*.parquet   append-only approval log; the last decision made wins (see approvals.py)
      rollouts/part-*.parquet    replayed alternatives (one row per branch)
      replays/part-*.parquet     one row per (replay configuration, trajectory): the resume markers
      quarantine/                segments with damaged records, kept for inspection (and any non-empty spool/.*.new
                                 file a writer killed while creating its segment left)

Writers only ever append to their own segment, so many threads and processes can record at once.
Readers see parts plus every segment (so a record is visible as soon as it is written). Compaction
turns finished segments into parts with write-to-temp, fsync and atomic rename, and only then
deletes the segments; a crash at any point leaves duplicates at worst, which reads drop by id.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Literal, get_args

import polars as pl

from ee_middleware._files import (
    TMP_SUFFIX,
    FileTooLargeError,
    atomic_write_bytes,
    atomic_write_parquet,
    create_exclusive,
    fsync_dir,
    named_in_utf8,
    remove_abandoned_temps,
)
from ee_middleware._locks import lock_held
from ee_middleware.errors import (
    ConfigError,
    IncompleteReadWarning,
    StoreCorruptionWarning,
    StoreError,
    StoreUnreadableError,
    StoreWriteError,
    TrajectoryNotFoundError,
    os_error_advice,
)
from ee_middleware.records import SCHEMA_VERSION, ApprovalEvent, ApprovalStatus, ReplayRecord, Rollout, Trajectory, utcnow
from ee_middleware.store import spool
from ee_middleware.store.access import UnreadableFileWarning, cannot_read, read_advice, refused
from ee_middleware.store.approvals import decide, in_order_decided
from ee_middleware.store.int64 import check_trajectories
from ee_middleware.store.manifest import MANIFEST, Manifest, PartVanished, expired, list_part_files, read_manifest, retire, write_manifest
from ee_middleware.store.metadata import check_meta_name, read_file, write_file
from ee_middleware.store.protocol import APPROVAL_COLUMNS, id_list
from ee_middleware.store.registry import reads_by_index
from ee_middleware.store.repair_losses import record_losses
from ee_middleware.store.replay_spool import MARKER, replay_lines, replay_redactor
from ee_middleware.store.rows import TrajectoryRows
from ee_middleware.store.spool_cache import SpoolCache, SpoolRead, SpoolRows, SpoolTrajectories
from ee_middleware.store.tables import (
    APPROVAL_SCHEMA,
    TABLES,
    TRAJECTORY_SCHEMA,
    Decoded,
    frame,
    keep_step,
    rollout_from_row,
    step_row,
    trajectory_from_rows,
)

FORMAT = "ee-experience-store"
MAX_PARTS_BEFORE_MERGE = 16
"""A table with more live parts than this has its runs of small consecutive parts merged by the next compaction."""
UNFINISHED_REPAIR = "quarantine/repair-unfinished.json"
"""What an ``ee store repair`` is taking out of the store, written before the parts leave the manifest and removed once
what they held is recorded: a repair stopped in between leaves it, and the next one finishes the work."""
PART_FRAME_BYTES = 128 * 2**20
"""About the most (in memory, uncompressed) that compaction holds of one table to write it as a part: folding the spool
writes a part whenever its frames reach it, and merging takes consecutive parts smaller than it together, up to it; parts
that reach it are not merged again, but for the small last part of a large fold, merged with the part after it (up to twice
this). Compaction then holds about this much, whatever the size of the spool or the store: a
fold held every frame of the whole spool (about 1 GB for a spool of 384 MB), and a merge the whole table (every step the
store ever recorded, read at once)."""
FRAME_BYTES_KEY = "ee.frame_bytes"
"""The Parquet key-value metadata in which a part says its frame's size in memory (what merges go by)."""
PARQUET_EXPANSION = 400
"""What a part without :data:`FRAME_BYTES_KEY` (written by an older version) is taken to hold in memory per byte on disk: on
the high side (steps repeat the conversation so far, which compresses 100-350 times), so that such a part is merged only
where it is surely small."""
_PART_NAME = re.compile(r"part-[0-9]{8}T[0-9]{6}-[0-9]{9}-[0-9a-f]{8}(-m[0-9a-f]{8})?\.parquet")
"""The name of a part this version writes (:meth:`LocalExperienceStore._write_part`)."""
_MERGED_SUFFIX = re.compile(r"(-m[0-9a-f]{8})+$")
"""What a merged part's name adds to the name of the first part it replaced (see :meth:`LocalExperienceStore._write_part`)."""
READ_ATTEMPTS = 8
"""How often one read starts again when compaction swapped the manifest under it."""
ROW_GROUP_BYTES = 16 * 2**20
"""About how much (in memory, uncompressed) one row group of a Parquet part holds. A read of one record decompresses the
whole row group holding it (ids are random: no row group's statistics rule one out), and a part of a compaction was one
row group of up to polars's 262,144 rows: reading one run of 10,000 of 15 KB (``ee traces show``, an approval, ingest
finding a run's stored versions) took 98 MB and 0.047 s, in groups of 1,024 runs 38 MB and 0.018 s (a whole read 246 MB
and 0.24 s, 187 MB and 0.12 s)."""
_MOST_ROWS_PER_GROUP = 512**2  # polars's own row group size
FIRST_READ_GROUP = 64
"""Trajectories whose steps the first group of :meth:`LocalExperienceStore.iter_trajectory_rows` reads."""
READ_GROUP_BYTES = 32 * 2**20
"""About this much of steps (in memory) each later group reads: its size follows the trajectories read before."""


def read_group_size(read_bytes: int, trajectories: int) -> int:
    """How many trajectories the next group reads, after a group of ``trajectories`` whose steps took ``read_bytes``:
    about :data:`READ_GROUP_BYTES` of them, at least :data:`FIRST_READ_GROUP`. Each group costs a pass over the
    trajectory ids of every steps part, so groups are as large as that memory allows."""
    per_trajectory = max(1, read_bytes // max(1, trajectories))
    return max(FIRST_READ_GROUP, READ_GROUP_BYTES // per_trajectory)


ABANDONED_TEMP_AGE_S = 3600.0
"""How old an unlocked temporary file in the store's folder (of a metadata blob, of the marker) must be before compaction
removes it. This version's writers hold theirs locked, so it only spares writers that take no lock (an older version's);
a killed writer's file goes at the first compaction this long after. (A file system without locks lets no writer hold
one, and the sweep would go by age alone, :data:`~ee_middleware._files.UNLOCKED_TEMP_AGE_S`, but compaction cannot run
there: it takes a lock of its own.)"""
COMPACTION_LOCK = ".compact.lock"
"""The file in a store's folder whose ``flock`` one compaction at a time holds."""


def _quarantined(segment: Path, moved_to: Path, folded: int, problems: list[spool.SpoolProblem]) -> dict[str, Any]:
    """What moving a damaged spool segment out of the store kept of it, JSON-ready: ``segment``, ``moved_to``, ``reason``
    (what it held), ``records_kept`` (its whole records, in the store's Parquet parts now) and ``records_lost`` (whether
    damaged records went with it: only a half-written last line, never acknowledged to its writer, loses nothing)."""
    lost = [p for p in problems if p.hides_records]
    where = f"line {lost[0].line}: " if lost and lost[0].line else ""  # 0: a whole record that fits no schema
    # a line is one record, or more where the damage took a line break too (the records around it run together)
    what = f"{len(lost)} damaged line(s) of one record or more ({where}{lost[0].reason})" if lost else problems[0].reason
    return {"segment": str(segment), "moved_to": str(moved_to), "reason": what, "records_kept": folded, "records_lost": bool(lost)}


def _warn_quarantined(moved: dict[str, Any]) -> None:
    """Say that compaction moved a damaged spool segment out of the store (:func:`_quarantined`), and what of it was kept."""
    warnings.warn(
        f"Moved the spool segment {Path(moved['segment']).name} to {moved['moved_to']}: it held {moved['reason']}. Its "
        f"{moved['records_kept']} whole record(s) are in the store's Parquet parts now; "
        + (
            "the damaged ones are lost to the store (the file is kept for inspection)."
            if moved["records_lost"]
            else "nothing stored was lost."
        ),
        StoreCorruptionWarning,
        stacklevel=5,
    )


def _kept_entry(segment: Path, size: int, newer: list[str], rejected: list[str]) -> dict[str, Any]:
    """What the manifest keeps of a spool segment kept for records of a newer schema (``newer``: their schema versions;
    ``rejected``: why other records of it fit no schema), its other records folded (:attr:`Manifest.kept`)."""
    return {
        "name": segment.name,
        "size": size,
        "newer": len(newer),
        "newest": max(newer, key=lambda v: tuple(map(int, v.split(".")))),
        "rejected": len(rejected),
        "first_rejected": rejected[0] if rejected else None,
    }


def _warn_kept(segment: Path, kept: dict[str, Any]) -> None:
    """Say that compaction kept a spool segment holding records this version of ee-middleware cannot read (``kept``: its
    :func:`_kept_entry`)."""
    newest = kept["newest"]
    unfit = f" ({kept['rejected']} more fit no schema, the first: {kept['first_rejected']})" if kept["rejected"] else ""
    warnings.warn(
        f"Kept the spool segment {segment.name} in the spool: {kept['newer']} of its record(s) say they have record schema "
        f"{newest}, newer than this version's {SCHEMA_VERSION}{unfit}. A newer ee-middleware wrote them: upgrade "
        "ee-middleware where this store is compacted and read (the nightly job, the CLI) to at least the version the app "
        "records with. Nothing was lost: the segment is read and folded again by a version that can read it.",
        StoreCorruptionWarning,
        stacklevel=5,
    )


@dataclass(frozen=True)
class _Folded:
    """What one pass over the spool folded (:meth:`LocalExperienceStore._fold_spool`)."""

    folded: int
    """Segments whose records are in the Parquet parts now."""
    quarantined: list[dict[str, Any]]
    """Of those, the ones moved to quarantine/ (:func:`_quarantined`)."""


class _MarkerMissing(StoreError):
    """The folder has no ``ee-store.json``."""


class _MarkerDamaged(StoreError):
    """The folder's ``ee-store.json`` is damaged: not JSON, or no JSON object."""


class _MarkerRefused(StoreError):
    """The system would not let this process read the folder's ``ee-store.json`` (:func:`~ee_middleware.store.access.refused`):
    it may be whole, so ``ee store repair`` leaves it as it is."""


def _refuse_file(root: Path) -> None:
    """Raise :class:`StoreError` when ``root`` (a store's folder) is a file, or leads to one: every way of opening a store
    would otherwise blame a file inside it (``ee-store.json: Not a directory``), or find no store and say to record one."""
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a folder: pass the store's folder (--store), or a new path for a new store.")


def _marker_example() -> str:
    return json.dumps({"format": FORMAT, "schema_version": SCHEMA_VERSION})


def _read_marker(root: Path) -> dict[str, Any]:
    """What ``root``'s marker holds; :class:`_MarkerMissing`, :class:`_MarkerDamaged` or (one the system would not let
    this process read) :class:`_MarkerRefused`, saying how to recover."""
    marker = root / MARKER
    try:
        meta = json.loads(marker.read_bytes())
        if not isinstance(meta, dict):
            raise ValueError(f"it holds a JSON {type(meta).__name__}, not an object")
    except FileNotFoundError:
        raise _MarkerMissing(f"No experience store at {root}. Record a run into it first, or check the --store path.") from None
    except OSError as exc:
        raise _MarkerRefused(
            f"{cannot_read(marker, exc)} It is the file that marks the folder as an experience store; `ee store repair` "
            "leaves it as it is, and nothing stored is lost."
        ) from exc
    except ValueError as exc:
        raise _MarkerDamaged(
            f"{marker} is unreadable ({exc or 'it is empty'}). It only marks the folder as an experience store and holds "
            f"{_marker_example()}; the store's records are in other files, and nothing of them is lost. Run "
            f"`ee store repair --store {root}` to write a new one (the damaged file is kept in quarantine/)."
        ) from exc
    return meta


def _check_marker(root: Path, meta: dict[str, Any]) -> None:
    """Refuse a marker of another format, or of a schema major version this library does not read."""
    if meta.get("format") != FORMAT:
        raise StoreError(f"{root} is not an ee-middleware experience store ({root / MARKER} says format={meta.get('format')!r}).")
    major = str(meta.get("schema_version", "1.0")).split(".")[0]
    if major != SCHEMA_VERSION.split(".")[0]:
        raise StoreError(
            f"{root} has schema version {meta.get('schema_version')}, this library reads {SCHEMA_VERSION}. Upgrade ee-middleware to read it."
        )


def _publish_marker(marker: Path, *, fsync: bool) -> None:
    """Create ``marker`` whole, unless another process did first (its marker then stands: every marker says the same).

    Written to a temporary file and hard-linked into place, which fails when the marker exists: a reader never sees a
    half-written marker, and a creator killed before the link leaves only its temporary file, which creating and
    opening the store ignore (compaction deletes it once it is old: :data:`ABANDONED_TEMP_AGE_S`)."""
    data = json.dumps({"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_at": utcnow().isoformat()}, indent=2).encode()
    try:
        create_exclusive(marker, data, fsync=fsync)
    except FileNotFoundError:  # the temporary file was taken (an older version's compaction): only by a store that exists
        if not marker.exists():
            raise
        if fsync:
            fsync_dir(marker.parent)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        atomic_write_bytes(marker, data, fsync=fsync)  # a file system without hard links: the last creator's marker stands


def _foreign(name: str) -> bool:
    """Whether a file named ``name`` in a folder without a marker keeps it from becoming a store: anything but the
    store's own folders and temporary markers (of creators under way, or killed)."""
    temporary_marker = name.startswith(f".{MARKER}.") and name.endswith(TMP_SUFFIX)
    return name not in TABLES and name != "spool" and not temporary_marker


def _store_files(root: Path) -> list[str]:
    """The store's files ``root`` holds (spool segments, a manifest, Parquet parts), described; empty for none."""
    found = []
    segments = spool.list_segments(root / "spool")
    if segments:
        found.append(f"spool/ ({len(segments)} segment(s))")
    if (root / MANIFEST).is_file():
        found.append(MANIFEST)
    for table in TABLES:
        parts = list_part_files(root / table)
        if parts:
            found.append(f"{table}/ ({len(parts)} part(s))")
    return found


def _marker_missing(root: Path, found: list[str]) -> str:
    return (
        f"{root} holds an experience store's files ({', '.join(found)}) but no {MARKER}, the file that marks the folder "
        f"as a store (it holds {_marker_example()}). Run `ee store repair --store {root}` to write a new one; nothing stored "
        "is lost."
    )


STATUSES: tuple[str, ...] = get_args(ApprovalStatus)
"""The approval statuses a read can select; ``"all"`` (as ``ee traces list --status all``) or ``None`` selects every row."""

StatusSelection = ApprovalStatus | Literal["all"] | None
"""What a read's ``status=`` takes: one approval status, or ``"all"``/``None`` for every trajectory."""


def _status_filter(status: str | None) -> str | None:
    """The approval a read keeps (``None``: every row, for ``None`` or ``"all"``); :class:`ConfigError` for another word,
    which would otherwise select nothing without a word said."""
    if status is None or status == "all":
        return None
    if status not in STATUSES:
        raise ConfigError(
            f"status={status!r} is not an approval status: use one of {', '.join(STATUSES)}, or 'all' (or None) for every trajectory."
        )
    return status


def _merge_base(name: str) -> str | None:
    """The name a merged part was named after (its run's first part's, without merge suffixes), for a part this
    version named; ``None`` for another name."""
    return _MERGED_SUFFIX.sub("", Path(name).stem) if _PART_NAME.fullmatch(name) else None


def _adopt(parts: list[str], name: str) -> None:
    """Put part file ``name``, which no manifest lists, into the listed ``parts`` (in place). A killed merge's part
    (``<base>-m<hex>``, holding the rows of a run whose first part is named after ``base``, still listed) goes right
    before that run, where its name sorts beside it; every other (a killed fold's, holding the newest rows; one copied in
    by hand) goes last, as parts added later are, whatever its name: where the listed parts are not in name order (a
    clock stepped back between two compactions, a part of another name adopted before) a place by name could put a
    fold's newer copy of a trajectory ahead of its older one, and change which copy reads keep."""
    base = _merge_base(name)
    if base is not None and base != Path(name).stem:
        at = next((i for i, listed in enumerate(parts) if _merge_base(listed) == base), None)
        if at is not None:
            parts.insert(at, name)
            return
    parts.append(name)


class LocalExperienceStore:
    """Experience store in a local folder. Safe to share between threads and processes.

    >>> store = LocalExperienceStore("./experience")          # doctest: +SKIP
    >>> store.trajectories(status="approved")                  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True) -> None:
        # Absolute once, here: the spool writer, its cache and the redaction files all hang off it, and a relative path
        # would follow the process's working directory (a daemon's chdir, a later os.chdir) to a folder that is no store.
        if isinstance(root, (str, os.PathLike)) and not str(os.fspath(root)).strip():  # as open_store(" ") refuses it
            raise StoreError(
                f"The store's folder {os.fspath(root)!r} is empty or blank (an unset variable?): name the folder, e.g. "
                "LocalExperienceStore('./experience')."
            )
        self.root = Path(root).expanduser().absolute()
        self._fsync = fsync
        self._open_or_create(create)
        self._writer = spool.SpoolWriter(self.root / "spool", fsync=fsync)
        self._spool = SpoolCache(self.root / "spool")
        self._damaged: dict[Path, str] = {}  # parts whose data a whole read found damaged (check_parts): scans skip them

    def __repr__(self) -> str:
        return f"LocalExperienceStore({str(self.root)!r})"

    # --- set-up ------------------------------------------------------------------------------

    def _open_or_create(self, create: bool) -> None:
        _refuse_file(self.root)
        marker = self.root / MARKER
        if not marker.exists():
            if not create:
                found = _store_files(self.root)
                if found:
                    raise StoreError(_marker_missing(self.root, found))
                raise StoreError(f"No experience store at {self.root}. Record a run into it first, or check the --store path.")
            self._create(marker)
        _check_marker(self.root, _read_marker(self.root))

    def _create(self, marker: Path) -> None:
        """Make the folder a store, unless another process just did: many processes may create one store at once (a
        web app's workers starting), and each opens it."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a folder. Choose another --store path.")
        if self.root.is_symlink() and not self.root.exists():  # (mkdir says "File exists", advice about the disk)
            raise StoreError(
                f"{self.root} is a symbolic link to {os.readlink(self.root)}, which does not exist. Create the folder it points "
                "to, point the link at the store's folder, or choose another --store path."
            )
        # Listed after the marker was found missing: a file another creator made after publishing the marker (its
        # spool, its redaction key) means the marker is there now. Temporary markers (of creators under way, or
        # killed) do not count.
        if self.root.exists() and any(_foreign(p.name) for p in self.root.iterdir()) and not marker.exists():
            found = _store_files(self.root)
            if found:
                raise StoreError(_marker_missing(self.root, found))
            raise StoreError(f"{self.root} is a non-empty folder without {MARKER}. Use an empty or new folder for the store.")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            _publish_marker(marker, fsync=self._fsync)
        except OSError as exc:
            raise StoreWriteError(
                f"Cannot create an experience store at {self.root}: {exc}. {os_error_advice(exc)}", errno=exc.errno
            ) from exc

    @staticmethod
    def restore_marker(root: str | os.PathLike[str]) -> dict[str, Any]:
        """Write a new ``ee-store.json`` into ``root`` when it is missing or damaged and the folder holds a store's files
        (spool segments, Parquet parts, a manifest); a damaged one is kept as ``quarantine/ee-store.json.damaged``.
        Returns what was done (``marker_written``: the new marker's path, or ``None`` when the marker was fine), JSON-ready.
        Raises :class:`StoreError` for a folder without a store's files, one whose marker names another format, or one
        whose marker this process may not read (no permission, a folder in its place: it may be whole, and is left as it is).

        The marker only says that the folder is a store and which major schema version it holds; nothing stored is in it.
        Safe while agents are recording and when run twice at once."""
        root = Path(root).expanduser()
        _refuse_file(root)
        marker = root / MARKER
        try:
            _check_marker(root, _read_marker(root))
            return {"root": str(root), "marker_written": None, "damaged_marker_moved_to": None}
        except _MarkerMissing:
            damaged = None
        except _MarkerDamaged:
            damaged = root / "quarantine" / f"{MARKER}.damaged"
            if damaged.exists():  # one an earlier repair kept
                damaged = damaged.with_name(f"{damaged.name}-{spool.sortable_stamp()}")
        if damaged is None and not _store_files(root):
            raise StoreError(
                f"No experience store at {root}: no {MARKER}, and none of a store's files (spool segments, Parquet parts, "
                f"{MANIFEST}). Check the --store path."
            )
        try:
            if damaged is not None:
                damaged.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(marker, damaged)
                except FileNotFoundError:  # moved by a repair running at the same time
                    pass
            _publish_marker(marker, fsync=True)
        except OSError as exc:
            raise StoreWriteError(f"Cannot write {marker}: {exc}. Nothing was changed. {os_error_advice(exc)}", errno=exc.errno) from exc
        _check_marker(root, _read_marker(root))
        return {"root": str(root), "marker_written": str(marker), "damaged_marker_moved_to": None if damaged is None else str(damaged)}

    def add_restore_hook(self, key: Hashable, hook: Callable[[], None]) -> None:
        """Have ``hook`` write again what this store's folder must hold besides its marker (capture's redaction settings
        and salt) when the folder is removed while this process writes to it and is made again: before the batch that found
        it gone counts as written, which fails when the hook raises
        (:meth:`~ee_middleware.store.spool.SpoolWriter.add_restore_hook`). One hook per ``key``."""
        self._writer.add_restore_hook(key, hook)

    # --- writing -----------------------------------------------------------------------------

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        """Durably append trajectories to this process's spool segment, all of them or none: a trajectory with an integer
        the store cannot hold (a step's ``truncated_chars`` of 2**64) is refused with its batch, a
        :class:`~ee_middleware.errors.RecordError` naming it (:func:`~ee_middleware.store.int64.check_trajectories`)."""
        batch = list(trajectories)
        check_trajectories(batch)
        lines = spool.model_line_pieces("trajectory", batch, piecewise=(Trajectory, "steps"))
        self._writer.append_lines(lines)
        return len(lines)

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        """Append approval decisions. Raises :class:`TrajectoryNotFoundError` for unknown ids."""
        wanted = list(dict.fromkeys(e.trajectory_id for e in events))
        if reads_by_index(self):  # those ids alone
            known = set(self._scanned("trajectories", _among("id", wanted), ["id"])["id"].to_list()) if wanted else set()
        else:  # a subclass's own trajectories() says which it shows
            known = set(self.trajectories()["id"].to_list())
        missing = [e.trajectory_id for e in events if e.trajectory_id not in known]
        if missing:
            raise TrajectoryNotFoundError(
                f"No trajectory with id {', '.join(missing)} in {self.root}. List ids with: ee traces list --store {self.root}"
            )
        # a decision without an override is written as before, so older readers still read it
        self._writer.append(
            {"kind": "approval", "data": e.model_dump(mode="json", exclude=None if e.overrides else {"overrides"})} for e in events
        )

    def approve(self, ids: str | Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories approved for training (overturning a rejection is recorded as such)."""
        decide(self, ids, "approved", by=by, reason=reason, force=True)

    def reject(self, ids: str | Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories rejected: they never feed training (overturning an approval is recorded)."""
        decide(self, ids, "rejected", by=by, reason=reason, force=True)

    def approvals(self, trajectory_ids: str | Sequence[str] | None = None) -> pl.DataFrame:
        """Every approval decision, oldest first, with the opposite decision each one overturned."""
        if trajectory_ids is None:  # the decisions alone (not the conversations)
            spooled = self._read_spool(stacklevel=3)
            trajectories = self._scanned("trajectories", pl.lit(True), _RECORDED_DECISION, spooled=spooled)
            return _decisions(trajectories, self._scanned("approvals", pl.lit(True), spooled=spooled))
        # the trajectories' own rows alone (a decision's order depends only on its trajectory's decisions)
        trajectories, approvals = self._decision_rows(id_list(trajectory_ids), self._read_spool(stacklevel=3), _RECORDED_DECISION)
        return _decisions(trajectories, approvals)

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        """Append one trajectory's rollouts and its replay record in a single batch, synced in groups (by the first write
        :data:`~ee_middleware.store.spool.GROUP_SYNC_INTERVAL_S` or more after the last sync, and when the store is
        closed: see :meth:`~ee_middleware.store.spool.SpoolWriter.append_lines`; a replay lost to a machine that
        stopped is made again by the next run).

        Observations, proposed arguments, the record's reason and details are redacted with the
        store's own rules and salt first (:func:`~ee_middleware.capture.store_redaction.store_redactor`),
        whoever wrote them: the replay job already did, and redacting twice changes nothing.

        The record is written last: a crash part-way leaves rollouts without a record, the
        trajectory is replayed again, and the repeated rollouts (same ids) are dropped on read.

        A rollout or record with an integer the store cannot hold is refused with the whole batch, a
        :class:`~ee_middleware.errors.RecordError` naming it (:func:`~ee_middleware.store.int64.check_replay`).
        """
        self._writer.append_lines(replay_lines(record, rollouts, replay_redactor(self)), durable=False)

    def close(self) -> None:
        """Seal this process's open segment (it can then be compacted)."""
        self._writer.seal()

    # --- reading -----------------------------------------------------------------------------

    def trajectories(self, *, status: StatusSelection = None, app: str | None = None) -> pl.DataFrame:
        """One row per trajectory (in the order they were written: oldest write first) with its current ``approval``, ``approval_by``,
        ``approval_at`` and ``approval_reason``; ``status`` keeps those with that approval (``"all"`` or ``None``: every
        one; another word raises :class:`~ee_middleware.errors.ConfigError`)."""
        tables = self._load(_DECISIONS)
        current = _current_approvals(tables["trajectories"], tables["approvals"])
        if (wanted_status := _status_filter(status)) is not None:
            current = current.filter(pl.col("approval") == wanted_status)
        if app is not None:
            current = current.filter(pl.col("app") == app)
        return current

    def steps(self, trajectory_ids: str | Sequence[str] | None = None) -> pl.DataFrame:
        if trajectory_ids is None:
            return self._load(("steps",))["steps"]
        # filtered as the parts are read: the other trajectories' steps are never held
        wanted = id_list(trajectory_ids)
        return self._scanned("steps", _among("trajectory_id", wanted), spooled=self._read_spool(stacklevel=3), carrying=wanted)

    def resolve_id(self, id_or_prefix: str) -> str:
        """The full id of the one trajectory whose id is, or starts with, ``id_or_prefix``."""
        return self._resolved([id_or_prefix])[0]

    def resolve_ids(self, ids_or_prefixes: Sequence[str]) -> list[str]:
        """:meth:`resolve_id` of each, the ids read once (their column alone: a prefix copied from ``ee traces list``
        read every column of the whole table, conversations included, once for each: 2 s a prefix at 86k runs). A
        subclass's own :meth:`resolve_id` decides where it has one."""
        if type(self).resolve_id is not LocalExperienceStore.resolve_id:
            return [self.resolve_id(i) for i in ids_or_prefixes]
        return self._resolved(ids_or_prefixes)

    def _resolved(self, ids_or_prefixes: Sequence[str], spooled: SpoolRead | None = None) -> list[str]:
        """The full ids of ``ids_or_prefixes`` by this store's rule (an id, or the unique id it starts); ``spooled``: the
        spool as a read just before saw it."""
        ids = self._scanned("trajectories", pl.lit(True), ["id"], spooled=spooled)["id"].to_list()
        known = set(ids)
        resolved = []
        for id_or_prefix in ids_or_prefixes:
            if id_or_prefix in known:
                resolved.append(id_or_prefix)
                continue
            matches = [i for i in ids if i.startswith(id_or_prefix)] if id_or_prefix else []
            if len(matches) != 1:
                hint = f" (ambiguous: {len(matches)} ids start with it)" if matches else ""
                raise TrajectoryNotFoundError(
                    f"No trajectory {id_or_prefix!r} in {self.root}{hint}. List ids with: ee traces list --store {self.root}"
                )
            resolved.append(matches[0])
        return resolved

    def get(self, trajectory_id: str, *, states: bool = True) -> Trajectory:
        """The full trajectory (an unambiguous id prefix is accepted). Its steps are read alone: the other trajectories'
        steps are filtered out as the Parquet parts are read, so a lookup does not hold the whole steps table.

        ``states=False``: each step's state (the conversation before it, most of a long run's size) is left unread and
        empty, for a view that shows none (``ee traces show``'s table; :func:`~ee_middleware.store.registry.get_trajectory`
        asks any store for it)."""
        [trajectory_id] = id_list([trajectory_id])  # (a string)
        spooled = self._read_spool(stacklevel=3)
        if type(self).resolve_id is not LocalExperienceStore.resolve_id:  # a subclass's rule decides, always
            trajectory_id = self.resolve_id(trajectory_id)
        rows = _current_approvals(*self._decision_rows([trajectory_id], spooled))
        if rows.is_empty() and type(self).resolve_id is LocalExperienceStore.resolve_id:  # a prefix: of an id this read saw?
            with suppress(TrajectoryNotFoundError):  # (none, or several: resolved below, as they are now)
                trajectory_id = self._resolved([trajectory_id], spooled)[0]  # (the spool is not decoded again for it)
                rows = _current_approvals(*self._decision_rows([trajectory_id], spooled))
        if rows.is_empty():  # a prefix of an id written after the spool was read (or none): resolved, and read again
            trajectory_id = self.resolve_id(trajectory_id)
            spooled = self._read_spool(stacklevel=3)
            rows = _current_approvals(*self._decision_rows([trajectory_id], spooled))
        columns = None if states else [pl.exclude("state_json")]
        steps = self._scanned("steps", pl.col("trajectory_id") == trajectory_id, columns, spooled=spooled, carrying=[trajectory_id])
        step_rows = steps.to_dicts()
        if not states:
            for row in step_rows:
                row["state_json"] = "[]"
        return trajectory_from_rows(rows.row(0, named=True), step_rows)

    def _read_spool(self, *, stacklevel: int) -> SpoolRead:
        """The spool as it is now, its damaged records warned about (``stacklevel``: as ``warnings.warn``'s, from the
        caller of this method)."""
        spooled = self._spool.read()
        spooled.warn(stacklevel=stacklevel)
        return spooled

    def _decision_rows(
        self, ids: Sequence[str], spooled: SpoolRead, columns: Sequence[str] | None = None
    ) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The rows of the trajectories ``ids`` (full ids; only ``columns`` where given) and of their decisions, read
        alone (filtered as the Parquet parts are read): what :func:`_current_approvals` and :func:`_decisions` need."""
        trajectories = self._scanned("trajectories", _among("id", ids), columns, spooled=spooled)
        return trajectories, self._scanned("approvals", _among("trajectory_id", ids), spooled=spooled)

    def _scanned(
        self,
        table: str,
        where: pl.Expr,
        columns: Sequence[str | pl.Expr] | None = None,
        *,
        spooled: SpoolRead | None = None,
        spool: bool = True,
        carrying: Collection[str] | None = None,
    ) -> pl.DataFrame:
        """The rows of ``table`` that ``where`` keeps (only ``columns``, where given), repeats dropped, read by :meth:`scan`
        (filter and columns pushed into the Parquet reader); a part damaged past its footer is skipped with a warning,
        as every read does. ``spooled``: the spool as a read just before saw it (not decoded again); ``spool=False``: the
        Parquet parts' rows alone; ``carrying`` (steps, where ``where`` keeps only steps of those trajectories): the spool's
        steps are written for the records holding them alone (:meth:`SpoolRead.frame`). A part a compaction merged away
        meanwhile makes it read the parts again (as :meth:`_load` does)."""
        checked = False
        for _ in range(READ_ATTEMPTS):
            try:
                scanned = self._scan(table, spooled, vanished=True, spool=spool, carrying=carrying).filter(where)
                return drop_repeats(table, (scanned.select(columns) if columns is not None else scanned).collect())
            except (PartVanished, FileNotFoundError):
                continue  # the spool read before is still before the new manifest: no record can be missed
            except pl.exceptions.PolarsError:
                if checked or not self.check_parts((table,)):  # no damaged part: a real error
                    raise
                checked = True
        raise StoreError(
            f"The Parquet parts of {self.root} changed {READ_ATTEMPTS} times while being read (compaction running "
            "without pause?). Try again; nothing stored is affected."
        )

    def iter_trajectories(self, *, status: StatusSelection = None) -> Iterator[Trajectory]:
        for t in self.iter_trajectory_rows(status=status):
            yield t if type(t) is not TrajectoryRows else t.build()

    def iter_trajectory_rows(
        self, *, status: StatusSelection = None, ids: str | Collection[str] | None = None
    ) -> Iterator[Trajectory | TrajectoryRows]:
        """As :meth:`iter_trajectories`, but a trajectory read from Parquet parts comes as its rows (:class:`TrajectoryRows`:
        ``build()`` gives the trajectory), for a job that hands trajectories to workers which build them; ``ids``: those
        trajectories alone (the others' steps are not read).

        The steps are read a group of trajectories at a time (filtered as the Parquet parts are read, see
        :meth:`_scanned`): an iteration holds about :data:`READ_GROUP_BYTES` of the parts' steps, not the whole steps
        table, and its first trajectories come without reading the others' steps. The spool is read whole as every read
        does; its trajectories are decoded again one at a time as they are yielded, but those of the segments the store's
        cache keeps, which are held from the start until yielded (:mod:`~ee_middleware.store.spool_cache`). A part damaged past its footer is found by
        the first group whose read decodes it, and warned about then (a read of the whole table found it at the start)."""
        spooled = self._read_spool(stacklevel=3)
        wanted_status = _status_filter(status)
        if wanted_status is None and ids is None:
            trajectories = self._scanned("trajectories", pl.lit(True), spooled=spooled)
            approvals = self._scanned("approvals", pl.lit(True), spooled=spooled)
        else:  # which trajectories from their ids and decisions alone, then their rows alone (not the store's every one)
            selected = self._trajectory_index(["id"], spooled, status=wanted_status, ids=ids)
            if selected.is_empty():
                return
            trajectories, approvals = self._decision_rows(selected["id"].to_list(), spooled)
        current = _current_approvals(trajectories, approvals)
        del trajectories, approvals
        if wanted_status is not None:  # (again: a decision compacted in since the ids were chosen)
            current = current.filter(pl.col("approval") == wanted_status)
        if current.is_empty():
            return
        # Trajectories only in the spool are rebuilt from their records without a JSON round trip (spool_cache), the
        # others from their rows; both by trajectory_from_rows, with the same result.
        decoded = self._spooled_alone(spooled, current["id"])
        rows, group = current.iter_rows(named=True), FIRST_READ_GROUP
        while batch := list(islice(rows, group)):
            wanted = [row["id"] for row in batch if row["id"] not in decoded]
            steps_by_id: dict[Any, pl.DataFrame] = {}
            if wanted:
                steps = self._scanned("steps", _among("trajectory_id", wanted), spooled=spooled, carrying=wanted)
                group = read_group_size(steps.estimated_size(), len(wanted))
                steps_by_id = steps.partition_by("trajectory_id", as_dict=True)
                del steps
            for row in batch:
                t = decoded.pop(row["id"], None)
                if t is not None:
                    yield _rebuilt(row, t)
                    continue
                own = steps_by_id.pop((row["id"],), None)
                yield TrajectoryRows(row, own.to_dicts() if own is not None else [])

    def _spooled_alone(self, spooled: SpoolRead, selected: pl.Series) -> SpoolTrajectories:
        """Of the ``selected`` trajectories, those whose rows come from one spool record alone, decoded (see
        :meth:`SpoolRead.take_trajectories`): none with a row in the trajectories' parts or a step in the steps' parts."""
        in_spool = spooled.frame("trajectories")["id"]
        candidates = in_spool.filter(in_spool.is_in(selected.implode()))
        if candidates.is_empty():
            return SpoolTrajectories()
        in_parts = self._scanned("trajectories", pl.col("id").is_in(candidates.implode()), ["id"], spooled=spooled, spool=False)["id"]
        candidates = candidates.filter(~candidates.is_in(in_parts.implode()))
        if candidates.is_empty():
            return SpoolTrajectories()
        where = pl.col("trajectory_id").is_in(candidates.implode())
        # (no candidate has a row in the trajectories' parts: those with a step in the steps' parts are the ones left out)
        with_steps = set(self._scanned("steps", where, ["trajectory_id", "index"], spooled=spooled, spool=False)["trajectory_id"])
        return spooled.take_trajectories(exclude=with_steps, wanted=set(candidates.to_list()))

    def rollouts(self, trajectory_ids: str | Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        """One row per rollout (alternative action and its real observation)."""
        wanted = []
        if trajectory_ids is not None:
            wanted.append(_among("trajectory_id", id_list(trajectory_ids)))
        if replay_id is not None:
            wanted.append(pl.col("replay_id") == replay_id)
        if wanted:  # filtered as the parts are read (a rollout's repeats share its trajectory and replay)
            rollouts = self._scanned("rollouts", pl.all_horizontal(wanted), spooled=self._read_spool(stacklevel=3))
        else:
            rollouts = self._load(("rollouts",))["rollouts"]
        return rollouts.sort(["trajectory_id", "step_index", "branch_index"], maintain_order=True)

    def rollout_index(self, columns: Sequence[str]) -> pl.DataFrame:
        """``columns`` of every rollout (``id`` always, first), repeats dropped, in the order :meth:`rollouts` reads them
        before sorting, read without the other columns (the calls and observations are most of the largest table)."""
        return self._scanned("rollouts", pl.lit(True), list(dict.fromkeys(["id", *columns])), spooled=self._read_spool(stacklevel=3))

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        """The latest replay record per (replay configuration, trajectory)."""
        if replay_id is not None:  # (a record's repeats share its replay id)
            return self._scanned("replays", pl.col("replay_id") == replay_id, spooled=self._read_spool(stacklevel=3))
        return self._load(("replays",))["replays"]

    def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id (an unambiguous prefix is accepted)."""
        spooled = self._read_spool(stacklevel=3)
        exact = self._scanned("rollouts", pl.col("id") == rollout_id, spooled=spooled)
        if exact.is_empty() and rollout_id:  # a prefix
            exact = self._scanned("rollouts", pl.col("id").str.starts_with(rollout_id), spooled=spooled)
        if exact.height != 1:
            hint = f" (ambiguous: {exact.height} ids start with it)" if exact.height > 1 else ""
            raise TrajectoryNotFoundError(
                f"No rollout {rollout_id!r} in {self.root}{hint}. List them with: ee replay list --store {self.root}"
            )
        return rollout_from_row(exact.row(0, named=True))

    def iter_rollouts(self, trajectory_ids: str | Sequence[str] | None = None, *, replay_id: str | None = None) -> Iterator[Rollout]:
        """Rollouts as records, ordered by trajectory, step and branch."""
        for row in self.rollouts(trajectory_ids, replay_id=replay_id).iter_rows(named=True):
            yield rollout_from_row(row)

    def scan(self, table: str) -> pl.LazyFrame:
        """``table``'s rows as a lazy frame, for readers of stores too large to hold at once (dataset
        builds read a group of trajectories at a time): the Parquet parts are read only when it is
        collected, with filters and column selections pushed into the reader; the spool's rows (few:
        compaction folds them into parts) are read now and come last, as in the other readers.
        Unlike them, repeated records are still there: filter first (by trajectory: a record's
        repeats share its trajectory), then drop them with :func:`drop_repeats`. Damaged parts are
        skipped with a warning, as :meth:`steps` does."""
        return self._scan(table)

    def _scan(
        self,
        table: str,
        spooled: SpoolRead | None = None,
        *,
        vanished: bool = False,
        spool: bool = True,
        carrying: Collection[str] | None = None,
    ) -> pl.LazyFrame:
        """:meth:`scan`; ``spooled``: the spool as a read just before saw it (warned about by that read); ``vanished``: a
        listed part that is gone since the manifest moved on raises :class:`PartVanished` (the caller reads again)
        instead of being skipped with a warning; ``spool=False``: without the spool's rows; ``carrying``: of the spool's
        steps, only those of the records holding steps of those trajectories (see :meth:`_scanned`)."""
        schema = TABLES[table]
        if spooled is None:
            spooled = self._spool.read()  # the spool first, as _load
            spooled.warn(stacklevel=4)
        snapshot = read_manifest(self.root, TABLES)
        self._warn_manifest(snapshot)
        frames = [frame([], schema).lazy()]
        for path in snapshot.paths(self.root, table):
            if path in self._damaged:
                self._warn_part(path, self._damaged[path])
                continue
            try:
                if named_in_utf8(path):
                    with open(path, "rb") as fh:  # as _read_part: a folder in its place is no empty part
                        columns = pl.read_parquet_schema(fh)
                else:
                    columns = _read_part(path, schema).schema
            except FileNotFoundError as exc:
                if vanished and (snapshot.generation is None or not read_manifest(self.root, TABLES).same_as(snapshot)):
                    raise PartVanished(path) from None
                self._warn_part(path, f"it is listed in {MANIFEST} but missing" if vanished else exc)
                continue
            except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged, unreadable or vanished file
                self._warn_part(path, exc)
                continue
            absent = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in columns]
            part = pl.scan_parquet(path) if named_in_utf8(path) else _read_part(path, schema).lazy()
            frames.append((part.with_columns(absent) if absent else part).select(list(schema)).cast(schema))  # type: ignore[arg-type]
        if spool:
            frames.append(spooled.frame(table, carrying=carrying).lazy())
        return pl.concat(frames, how="vertical")

    def check_parts(self, tables: Iterable[str] = TABLES) -> list[Path]:
        """Read every Parquet part of ``tables`` whole and return those whose data cannot be decoded (damaged past a
        footer that reads: a lazy :meth:`scan` only finds them when it is collected, with an error that names no file).
        Each is warned about as a damaged part is (:class:`~ee_middleware.errors.IncompleteReadWarning`, naming it and
        ``ee store repair``) and later scans of this store object skip it. A part this process may not read is not
        damaged (:meth:`scan` says so)."""
        snapshot = read_manifest(self.root, TABLES)
        found = []
        for table in tables:
            for path in snapshot.paths(self.root, table):
                if path in self._damaged:
                    continue
                try:
                    _read_part(path, TABLES[table])
                except FileNotFoundError:
                    continue  # merged away meanwhile: its rows are in the merged part
                except Exception as exc:  # noqa: BLE001 - any decoder failure of a file that opens is damage
                    if refused(exc) is None:
                        self._damaged[path] = f"its data cannot be read ({exc})"
                        found.append(path)
        for path in found:
            self._warn_part(path, self._damaged[path])
        return found

    def trajectory_index(
        self, columns: Sequence[str], *, status: StatusSelection = None, app: str | None = None, ids: str | Collection[str] | None = None
    ) -> pl.DataFrame:
        """:meth:`trajectories` with only ``columns`` of the trajectories table (and the ``approval*``
        columns, which ``columns`` may name too), read without loading steps or rollouts; ``ids``: those trajectories
        alone (full ids; the other rows are filtered out as the parts are read)."""
        return self._trajectory_index(columns, self._read_spool(stacklevel=3), status=status, app=app, ids=ids)

    def _trajectory_index(
        self,
        columns: Sequence[str],
        spooled: SpoolRead,
        *,
        status: StatusSelection = None,
        app: str | None = None,
        ids: str | Collection[str] | None = None,
    ) -> pl.DataFrame:
        """:meth:`trajectory_index` with the spool as ``spooled`` saw it."""
        needed = list(dict.fromkeys(["id", "app", *_RECORDED_DECISION]))
        wanted = list(dict.fromkeys([*needed, *(c for c in columns if c not in APPROVAL_COLUMNS)]))
        # (read as every filtered read is: a part merged away meanwhile read again, one damaged past its footer skipped)
        if ids is None:
            trajectories = self._scanned("trajectories", pl.lit(True), wanted, spooled=spooled)
            approvals = self._scanned("approvals", pl.lit(True), spooled=spooled)
        else:  # filtered as the parts are read
            trajectories, approvals = self._decision_rows(id_list(ids), spooled, wanted)
        current = _current_approvals(trajectories, approvals)
        if (wanted_status := _status_filter(status)) is not None:
            current = current.filter(pl.col("approval") == wanted_status)
        if app is not None:
            current = current.filter(pl.col("app") == app)
        return current.select(list(dict.fromkeys([*columns, *APPROVAL_COLUMNS])))

    def _load(self, names: Collection[str] = TABLES) -> _Tables:
        """The tables ``names`` (a read that needs no steps or rollouts does not hold them, the largest by far)."""
        # The spool before the manifest: a compaction in between then shows a record twice (dropped
        # below), never zero times. The manifest's parts are one consistent snapshot; should one of
        # them vanish because a compaction moved on meanwhile, the whole read starts again.
        for _ in range(READ_ATTEMPTS):
            spooled = self._spool.read()
            snapshot = read_manifest(self.root, TABLES)
            try:
                parts = {name: self._read_table(snapshot, name) for name in TABLES if name in names}
            except PartVanished:
                continue
            break
        else:
            raise StoreError(
                f"The Parquet parts of {self.root} changed {READ_ATTEMPTS} times while being read (compaction running "
                "without pause?). Try again; nothing stored is affected."
            )
        self._warn_manifest(snapshot)
        spooled.warn(stacklevel=4)
        return _Tables(parts, spooled)

    def _read_parts(self, table: str) -> pl.DataFrame:
        """The rows of ``table``'s live Parquet parts (damaged parts are skipped with a warning)."""
        return self._read_table(read_manifest(self.root, TABLES), table)

    def _read_table(self, snapshot: Manifest, table: str) -> pl.DataFrame:
        frames = [frame([], TABLES[table])]
        for path in snapshot.paths(self.root, table):
            try:
                frames.append(_read_part(path, TABLES[table]))
            except FileNotFoundError:
                if snapshot.generation is None or not read_manifest(self.root, TABLES).same_as(snapshot):
                    raise PartVanished(path) from None
                self._warn_part(path, f"it is listed in {MANIFEST} but missing")
            except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged (or unreadable) file
                self._warn_part(path, exc)
        return pl.concat(frames, how="vertical")

    def _warn_part(self, path: Path, why: str | Exception) -> None:
        """Warn that ``path``'s rows are missing from the answer: a damaged part (``ee store repair`` takes it out), or
        one the system would not let this process read (:class:`UnreadableFileWarning`: it is left where it is)."""
        problem = refused(why) if isinstance(why, Exception) else None
        if problem is not None:
            warnings.warn(
                f"Could not read Parquet part {path}: {problem.strerror or problem}. Its rows are missing from this answer. "
                f"{read_advice(problem)} `ee store repair` leaves it where it is.",
                UnreadableFileWarning,
                stacklevel=5,
            )
            return
        warnings.warn(
            f"Skipped unreadable Parquet part {path}: {why}. Its rows are missing from this answer. "
            f"Run `ee store repair --store {self.root}` to move it to quarantine/, then restore it from a backup if you have one.",
            IncompleteReadWarning,
            stacklevel=5,
        )

    def _warn_manifest(self, snapshot: Manifest) -> None:
        if snapshot.refused is not None:
            warnings.warn(
                f"{cannot_read(self.root / MANIFEST, snapshot.refused)} Read every part file instead (the answer is "
                "complete). `ee store compact` and `ee store repair` leave it as it is and refuse to run until it can be read.",
                StoreCorruptionWarning,
                stacklevel=5,
            )
            return
        if snapshot.unreadable is not None:
            warnings.warn(
                f"{self.root / MANIFEST} is unreadable ({snapshot.unreadable}); read every part file instead. "
                f"`ee store compact --store {self.root}` writes a new one.",
                StoreCorruptionWarning,
                stacklevel=5,
            )

    # --- compaction --------------------------------------------------------------------------

    def compact(self) -> int:
        """Fold finished spool segments into Parquet parts; merge parts when there are many.

        Returns the number of segments folded. Live segments (held by a running writer) are left.
        Readers are never disturbed: new parts go live in one atomic manifest swap, and the parts a
        merge replaced stay readable for :data:`~ee_middleware.store.manifest.RETIRED_PART_GRACE_S`.
        """
        self._writer.seal()
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._compaction_lock())
                folded = self._compact_locked()
            except OSError as exc:
                raise StoreWriteError(
                    f"Cannot compact {self.root}: {exc}. Nothing stored was changed or lost. {os_error_advice(exc)}", errno=exc.errno
                ) from exc
            # under the lock, as repair records its losses (see _repair_locked): the note of a segment moved out goes once
            # its lost rollouts reopened their replays; a stopped repair's parts stay noted for the next repair
            if folded.quarantined:  # (the replays' counts tell, also of a segment a stopped compaction moved)
                self._reopen_lost_replays("damaged records of a spool segment compaction moved to quarantine/")
                self._forget_taken_out(segments_only=True)
        return folded.folded

    def _compact_locked(self) -> _Folded:
        snapshot = read_manifest(self.root, TABLES)
        self._refuse_unread_manifest(snapshot, "compact")
        changed = self._remove_leftovers(snapshot)
        for hidden, moved_to in spool.remove_left_behind(self.root / "spool", self.root / "quarantine"):
            if moved_to is not None:
                warnings.warn(
                    f"Moved {hidden.name} to {moved_to}: a spool segment that a writer killed while creating it never "
                    "renamed, holding bytes no writer put there (the store never reads it). Nothing stored was lost; "
                    "the file is kept for inspection.",
                    StoreCorruptionWarning,
                    stacklevel=3,
                )
        return self._fold_spool(snapshot, changed=changed)

    def _fold_spool(self, snapshot: Manifest, *, changed: bool = False, damaged_only: bool = False) -> _Folded:
        """Fold the finished spool segments into Parquet parts, live in one manifest swap (written when ``changed`` too),
        then delete them. A segment holding damaged records (a damaged line; a record that fits no schema, such as an
        integer outside 64 bits an older version stored) is moved to quarantine/ instead, once its whole records are in
        the parts; one holding records of a newer schema stays in the spool. Live segments are left to their writers.

        ``damaged_only`` (``ee store repair``): only the segments to be moved to quarantine/ are folded, said in the result
        and not warned about; parts are not merged, and segments that cannot be read are left to the caller to report."""
        spool_dir = self.root / "spool"
        segments: list[Path] = []
        folded: dict[str, list[pl.DataFrame]] = {name: [] for name in TABLES}
        damaged: dict[Path, tuple[int, list[spool.SpoolProblem]]] = {}
        unreadable: dict[Path, dict[str, Any]] = {}  # kept segments: what is said of them (not their rows)
        # kept segments whose other records an earlier compaction folded: not folded again (another copy each time)
        known = {} if damaged_only else {entry["name"]: entry for entry in snapshot.kept}
        kept_again: list[Path] = []
        not_read: list[tuple[Path, OSError]] = []
        written: list[Path] = []

        def fold(name: str) -> None:
            """Write ``name``'s frames folded so far as a part (listed in ``snapshot``, live once it is written)."""
            frames, folded[name] = folded[name], []
            df = pl.concat(frames, how="vertical") if frames else frame([], TABLES[name])
            if not df.is_empty():
                snapshot.parts[name].append(self._write_part(name, df, written).name)

        try:  # nothing is live before the manifest swap: on any failure before it, remove what this pass wrote
            for segment in spool.list_segments(spool_dir):
                try:
                    if spool.is_live(segment):
                        continue
                    if segment.name in known and segment.stat().st_size == known[segment.name]["size"]:
                        kept_again.append(segment)
                        continue
                    data = segment.read_bytes()
                except FileNotFoundError:  # an empty segment its writer removed after a failed write (see spool.py)
                    continue
                except OSError as exc:  # not known to be damaged: left where it is, its records kept (said below, or by repair)
                    if not damaged_only:
                        not_read.append((segment, exc))
                    continue
                problems: list[spool.SpoolProblem] = []
                # a record at a time, none kept: its rows, its steps' rows among them, written as it is decoded
                rows = SpoolRows(spool.iter_lines(data, segment, problems, live=False), segment, None, False, steps=True)
                size = len(data)
                del data
                if damaged_only and (rows.newer or not (problems or rows.rejected)):
                    continue  # nothing to quarantine: compaction folds it
                segments.append(segment)
                if problems:
                    damaged[segment] = (rows.count, problems)
                # Said by _warn_kept and _warn_quarantined below, never as damage a read would fail on: the segment is kept
                # or quarantined, and `ee store repair` (damaged parts) has nothing to do with it.
                if rows.newer:  # a newer ee-middleware wrote records this version cannot read: it stays
                    unreadable[segment] = _kept_entry(segment, size, rows.newer, rows.rejected)
                elif rows.rejected:  # records that fit no schema: kept for inspection, out of the store
                    unfit = [spool.SpoolProblem(segment, 0, reason) for reason in rows.rejected]
                    damaged[segment] = (rows.count - len(rows.rejected), [*damaged.get(segment, (0, []))[1], *unfit])
                for name, df in rows.frames().items():
                    folded[name].append(df)
                    if sum(f.estimated_size() for f in folded[name]) >= PART_FRAME_BYTES:
                        fold(name)  # (a part every PART_FRAME_BYTES: the whole spool is never held)
            for name in folded:
                fold(name)
            if not damaged_only:  # (repair merges no part and folds no kept segment: what compaction knew of them stays)
                damaged_parts = self._check_parts(snapshot)
                for name in TABLES:
                    self._merge_parts(snapshot, name, written, skip=damaged_parts[name])
                kept = [known[segment.name] for segment in kept_again] + list(unreadable.values())
                changed = changed or kept != snapshot.kept
                snapshot.kept = kept
            if written or changed or snapshot.generation is None:
                snapshot.generation = (snapshot.generation or 0) + 1
                write_manifest(self.root, snapshot, fsync=self._fsync)
        except BaseException:
            try:
                live = self._made_live(written)
            except Exception:  # noqa: BLE001 - the manifest cannot be listed now: the parts are left (adopted next time)
                live = True
            if not live:
                # the last written first: a second Ctrl-C mid-way leaves the first parts, whose rows come first anyway
                for path in reversed(written):
                    path.unlink(missing_ok=True)
            raise
        quarantined = []
        for segment in segments:  # their records are live in parts now
            if segment in unreadable:
                # Kept where it is: its other records are in the parts now (reads drop the repeats), and the ones this
                # version could not read stay for a newer ee-middleware to read and fold. Deleting it lost them.
                _warn_kept(segment, unreadable[segment])
            elif segment in damaged:
                quarantine = self.root / "quarantine"
                quarantine.mkdir(exist_ok=True)
                # noted first: a stop after the move leaves its lost rollouts to the next repair (their replays reopened)
                self._note_taken_out({"quarantined_segments": [{"segment": str(segment), "moved_to": str(quarantine / segment.name)}]})
                os.replace(segment, quarantine / segment.name)
                quarantined.append(_quarantined(segment, quarantine / segment.name, *damaged[segment]))
                if not damaged_only:
                    _warn_quarantined(quarantined[-1])
            else:
                segment.unlink(missing_ok=True)
        if self._fsync and segments:
            fsync_dir(spool_dir)
        for segment in kept_again:  # still kept: said at every compaction, as when it was first folded
            _warn_kept(segment, known[segment.name])
        for segment, exc in not_read:  # last: under reading_store(allow_partial=False) this warning raises
            warnings.warn(
                f"Left the spool segment {segment} in the spool: {cannot_read(segment, exc)} Its records are not in the "
                "store's Parquet parts and reads cannot see them until it can be read; nothing of it was changed or lost. "
                "Run `ee store compact` again then.",
                UnreadableFileWarning,
                stacklevel=4,
            )
        return _Folded(len(segments), quarantined)

    def _refuse_unread_manifest(self, snapshot: Manifest, doing: str) -> None:
        """Raise :class:`StoreError` when the system would not let this process read ``manifest.json``: it may be whole, and
        ``doing`` (compaction, repair) would replace it by a listing of every part file (the retired ones live again)."""
        if snapshot.refused is not None:
            raise StoreError(
                f"Cannot {doing} {self.root}: {cannot_read(self.root / MANIFEST, snapshot.refused)} It lists the store's "
                "live Parquet parts, and is not replaced while it cannot be read. Nothing was changed."
            )

    def _remove_leftovers(self, snapshot: Manifest) -> bool:
        """Delete retired parts past their grace period and temporary files of killed writers;
        adopt part files no manifest lists (a compaction killed before its swap, or one by an older
        version: their rows are whole, and repeats are dropped on read). Returns whether the
        manifest changed."""
        changed = False
        if snapshot.generation is not None:
            for entry in expired(snapshot):
                (self.root / entry["table"] / entry["name"]).unlink(missing_ok=True)
                snapshot.retired.remove(entry)
                changed = True
            retired = {(r["table"], r["name"]) for r in snapshot.retired}
            for table in TABLES:
                listed = set(snapshot.parts[table])
                for path in list_part_files(self.root / table):
                    if path.name not in listed and (table, path.name) not in retired:
                        _adopt(snapshot.parts[table], path.name)
                        changed = True
        # Parts and the manifest are written only under the compaction lock, which this pass holds: theirs are a killed
        # compaction's. The store's folder also holds the temporary files of metadata blobs and of the marker, written
        # by other processes without that lock: only those no writer holds locked, and old, are a killed writer's.
        for table in TABLES:
            remove_abandoned_temps(self.root / table)
        remove_abandoned_temps(self.root, of={MANIFEST})
        remove_abandoned_temps(self.root, min_age_s=ABANDONED_TEMP_AGE_S)
        return changed

    def _made_live(self, written: list[Path]) -> bool:
        """Whether the manifest now in the store lists a part of ``written``: a compaction interrupted (Ctrl-C, SIGTERM)
        after its manifest swap, while the store's folder was synced, has made them live, and the parts they replaced are
        retired (deleting them lost those rows). ``True`` where the manifest cannot be read: the parts are then left, for
        the next compaction to adopt (a repeat is dropped on read; a loss is not undone)."""
        if not written:
            return False
        current = read_manifest(self.root, TABLES)
        if current.unreadable is not None:
            return True
        if current.generation is None:  # no manifest yet: none was swapped in (its listing is of the files on disk)
            return False
        listed = {(table, name) for table, names in current.parts.items() for name in names}
        return any((path.parent.name, path.name) in listed for path in written)

    def _write_part(self, table: str, df: pl.DataFrame, written: list[Path], *, after: str | None = None) -> Path:
        """Write ``df`` as a new part of ``table`` (live once a manifest lists it), its path added to ``written`` before the
        file appears: an interrupt after its rename, while its folder is synced, leaves it to the caller's clean-up too (a
        part left alone is adopted by the next compaction after the parts written before it, out of the spool's order). A
        failed write leaves no file and raises the operating system's :class:`OSError`, or :class:`StoreWriteError` when
        the part would be too large for this process's file-size limit (``ulimit -f``, systemd's ``LimitFSIZE=``) or the
        file system.

        ``after``: the part whose place it takes (a merge's first): named to sort where that one does, between the parts
        before and after it, as reads without a manifest take the parts in name order."""
        folder = self.root / table
        folder.mkdir(exist_ok=True)
        if after is not None and _PART_NAME.fullmatch(after):
            name = f"{_MERGED_SUFFIX.sub('', Path(after).stem)}-m{uuid.uuid4().hex[:8]}.parquet"
        else:  # (a part of another name, one a user copied in: named as a new one, as merges always were)
            name = f"part-{spool.sortable_stamp()}-{uuid.uuid4().hex[:8]}.parquet"
        final = folder / name
        written.append(final)
        try:
            atomic_write_parquet(
                df,
                final,
                fsync=self._fsync,
                compression="zstd",
                row_group_size=_rows_per_group(df),
                metadata={FRAME_BYTES_KEY: str(df.estimated_size())},
            )
        except FileTooLargeError as exc:
            rerun = f"run `ee store compact --store {self.root}` where no limit applies"
            raise_it = "raise the limit for this process (`ulimit -f unlimited`, LimitFSIZE=infinity)"
            move = f"move the store to a file system that holds larger files, then run `ee store compact --store {self.root}`"
            if exc.by_process_limit:
                fix = f"R{raise_it[1:]}, or {rerun}."
            elif exc.limit is not None:
                fix = f"If the limit stopped it, {raise_it} or {rerun}; if the file system did, {move}."
            else:
                fix = f"M{move[1:]}."
            raise StoreWriteError(
                f"Cannot compact {self.root}: the Parquet part it writes to {table}/ would be larger than {exc.which}. "
                "Nothing stored was changed or lost: the spool segments and parts it was folding are kept, and reads see "
                f"them all (only more slowly). {fix}",
                errno=errno.EFBIG,
            ) from exc
        return final

    def _check_footers(self, snapshot: Manifest, table: str) -> set[str]:
        """:meth:`_check_parts` of one table."""
        damaged: set[str] = set()
        for path in snapshot.paths(self.root, table):
            try:
                with open(path, "rb") as fh:
                    pl.read_parquet_schema(fh)
            except FileNotFoundError:
                self._warn_part(path, f"it is listed in {MANIFEST} but missing")
                damaged.add(path.name)
            except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged (or unreadable) file
                self._warn_part(path, exc)
                damaged.add(path.name)
        return damaged

    def _check_parts(self, snapshot: Manifest) -> dict[str, set[str]]:
        """The live parts whose footer cannot be read (a cut-off or missing file), per table, each warned about as a read
        warns (:class:`IncompleteReadWarning`: `ee store compact` exits 1 naming it and `ee store repair`). Only the
        footer: reading every part in full at each compaction would read the whole store; the parts a merge reads are
        read in full, and ``ee store repair`` reads them all."""
        return {table: self._check_footers(snapshot, table) for table in TABLES}

    def _merge_parts(self, snapshot: Manifest, table: str, written: list[Path], skip: Collection[str] = ()) -> None:
        """When ``table`` has many parts, merge each run of consecutive readable parts smaller than
        :data:`PART_FRAME_BYTES` into one, up to that size, in its place (``skip``: parts known to be damaged, warned about
        already); retire the merged ones. The parts it writes are added to ``written`` (the caller removes them on a
        failure before its manifest swap)."""
        names = snapshot.parts[table]
        if len(names) <= MAX_PARTS_BEFORE_MERGE:
            return
        listed = Counter(names)  # (a part listed twice is left where it is, both times)
        sizes = [None if name in skip or listed[name] > 1 else self._mergeable_size(table, name) for name in names]
        runs: list[list[int]] = []  # positions in names
        current: list[int] = []
        total = 0
        for i, size in enumerate(sizes):
            if size is None or size >= PART_FRAME_BYTES or total + size > PART_FRAME_BYTES:
                runs.append(current)  # a damaged, newer or large part stays where it is, between the runs around it
                current, total = [], 0
            if size is not None and size < PART_FRAME_BYTES:
                current.append(i)
                total += size
        runs.append(current)
        for run in runs:  # the small last part a large fold left, alone before the next fold's first: the two together
            if len(run) == 1 and run[0] + 1 < len(sizes):
                small, large = sizes[run[0]], sizes[run[0] + 1]
                if small is not None and large is not None and large >= PART_FRAME_BYTES and small + large <= 2 * PART_FRAME_BYTES:
                    run.append(run[0] + 1)
        replaced: dict[str, str | None] = {}  # a merged part's name -> the part that replaces its run (named at its first)
        for run in runs:
            if len(run) < 2:
                continue
            read: list[tuple[str, pl.DataFrame]] = []  # consecutive parts read (one that cannot be ends them)
            for name in [*(names[i] for i in run), None]:
                if name is not None:
                    try:
                        read.append((name, _read_part(self.root / table / name, TABLES[table])))
                        continue
                    except Exception as exc:  # noqa: BLE001 - a damaged part stays live (and reported) until repaired
                        self._warn_part(self.root / table / name, exc)
                if len(read) >= 2:
                    merged = drop_repeats(table, pl.concat([f for _, f in read], how="vertical"))
                    part = self._write_part(table, merged, written, after=read[0][0])
                    replaced.update({n: (part.name if i == 0 else None) for i, (n, _) in enumerate(read)})
                read = []
        if not replaced:
            return
        snapshot.parts[table] = [replaced.get(n, n) for n in names if replaced.get(n, n) is not None]
        retire(snapshot, table, list(replaced))

    def _mergeable_size(self, table: str, name: str) -> int | None:
        """About how much part ``name`` of ``table`` holds in memory (:data:`FRAME_BYTES_KEY`), or ``None`` where it is
        not merged: it cannot be read (warned), or a newer ee-middleware wrote columns this version would drop."""
        path = self.root / table / name
        try:
            if _unknown_columns(path, TABLES[table]):
                return None  # written by a newer ee-middleware: merging it here would drop what it holds beyond this schema
            with open(path, "rb") as fh:
                said = pl.read_parquet_metadata(fh).get(FRAME_BYTES_KEY)
            if said is not None and said.isdigit():
                return int(said)
            return path.stat().st_size * PARQUET_EXPANSION
        except Exception as exc:  # noqa: BLE001 - a damaged part stays live (and reported) until repaired
            self._warn_part(path, exc)
            return None

    @contextmanager
    def _compaction_lock(self) -> Iterator[None]:
        with open(self.root / COMPACTION_LOCK, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def compaction_running(self) -> bool:
        """Whether another process (or handle) compacts this store now: :meth:`compact` would wait for it."""
        try:
            return lock_held(self.root / COMPACTION_LOCK)
        except OSError:
            return False  # (a lock file this process cannot open: compact says so itself)

    def spool_size(self) -> tuple[int, int]:
        """The spool's finished segments (what :meth:`compact` folds; a writer's open one is left): how many, and their
        bytes."""
        count = size = 0
        for segment in spool.list_segments(self.root / "spool"):
            try:
                if not spool.is_live(segment):
                    size += segment.stat().st_size
                    count += 1
            except OSError:
                continue  # compacted away meanwhile, or unreadable (compact names it)
        return count, size

    @contextmanager
    def decisions_locked(self) -> Iterator[None]:
        """Held by :func:`~ee_middleware.store.approvals.decide` from reading the current decisions to recording new ones
        (in any process), so that two people deciding on one trajectory at once cannot overturn each other silently.
        Readers are not held up."""
        try:
            fh = open(self.root / ".decide.lock", "a")  # noqa: SIM115 - closed below, which releases the lock
        except OSError as exc:
            raise StoreWriteError(
                f"Cannot record decisions in {self.root}: {exc}. Nothing was recorded. {os_error_advice(exc)}", errno=exc.errno
            ) from exc
        with fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield

    # --- repair ------------------------------------------------------------------------------

    def repair(self) -> dict[str, Any]:
        """Take damaged Parquet parts out of the store: move them to ``quarantine/TABLE/`` and drop
        parts the manifest lists but that are gone, so that reads are complete again (without
        their rows). Finished spool segments holding damaged records (a damaged line, a record that fits no schema such as
        an integer outside 64 bits an older version stored) are moved to ``quarantine/`` as compaction moves them, by the
        same code, once their whole records are in Parquet parts (``quarantined_segments``: each with ``reason`` and
        ``records_kept``); other segments are left to compaction. Returns what was done, JSON-ready.

        A part or spool segment the system would not let this process read (no permission, a folder in its place, a
        failed disk) is not known to be damaged: it is left where it is, and listed under ``unreadable_files`` with why
        and what to do. A ``manifest.json`` it cannot read raises :class:`StoreError` (nothing is changed).

        What the parts taken out held is recorded per trajectory (:mod:`~ee_middleware.store.repair_losses`), and listed:
        ``steps_lost`` (each such trajectory is rejected by ``ee store repair``), ``decisions_lost`` (set back to pending
        by it: deciding again needs ``force``), ``trajectories_lost`` and ``parts_lost`` (per part: what it held and which
        trajectories lost it); lost rollouts reopen their replays (``replays_reopened``)."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._compaction_lock())
                done = self._repair_locked()
            except OSError as exc:
                raise StoreWriteError(
                    f"Cannot repair {self.root}: {exc}. Nothing was changed. {os_error_advice(exc)}", errno=exc.errno
                ) from exc
            # still under the lock: a second repair waits for this one's note to go (it read and rewrote the note, which
            # this one then deleted with the second's parts in it)
            self._record_losses_of(done)
        return done

    def _record_losses_of(self, done: dict[str, Any]) -> None:
        """Record what the files :meth:`_repair_locked` took out held (``done`` gets the report's keys), then forget the
        note that says it is still to be done. A store it cannot read for it (a spool segment with a folder in its
        place) keeps the note: ``losses_not_recorded`` says why, and the next repair records them."""
        whys = []
        if any(Path(p["part"]).parent.name == "rollouts" for p in done["quarantined_parts"]):
            whys.append("a damaged Parquet part `ee store repair` moved to quarantine/")
        if any(Path(p).parent.name == "rollouts" for p in done["missing_parts_dropped"]):
            whys.append("a Parquet part gone from the store that `ee store repair` dropped from its manifest")
        if any(item.get("records_lost") for item in done["quarantined_segments"]):
            whys.append("damaged records of a spool segment moved to quarantine/")
        if done["finished_stopped_repair"] and not whys:  # what it moved is not all known: the replays' counts tell
            whys.append("a damaged file that a stopped `ee store repair` or compaction moved to quarantine/")
        try:
            done["replays_reopened"] = self._reopen_lost_replays(" or ".join(whys)) if whys else []
            done.update(record_losses(self, done))
        except StoreUnreadableError as exc:
            done.setdefault("replays_reopened", [])
            done.update({"steps_lost": [], "decisions_lost": [], "trajectories_lost": [], "parts_lost": []})
            done["losses_not_recorded"] = (
                f"{exc} What the files taken out held is recorded by the next `ee store repair` once the store reads again."
            )
            return
        self._forget_taken_out()

    def _reopen_lost_replays(self, why: str) -> list[dict[str, Any]]:
        """After rollouts were taken out of the store (``why``: a damaged Parquet part or spool segment moved to quarantine/ by
        :meth:`repair` or :meth:`compact`, a missing part dropped): each replay of a trajectory that now has fewer rollouts
        than its record says it stored gets a ``failed`` record saying so, so that the next ``ee replay run`` of that
        configuration replays it again (the rollouts it stores anew that are still here, of the same ids, count once).
        Without it the record would say the trajectory was replayed while its rollouts are gone (the store's rule: no
        replay record without its rollouts). Returns the replays reopened (``replay_id``, ``trajectory_id``, ``had``,
        ``left``)."""
        records = self.replays().filter((pl.col("status") == "done") & (pl.col("branches") > 0))
        if records.is_empty():
            return []
        left = self.rollouts().group_by(["replay_id", "trajectory_id"]).agg(pl.len().alias("left"))
        short = (
            records.join(left, on=["replay_id", "trajectory_id"], how="left")
            .with_columns(pl.col("left").fill_null(0))
            .filter(pl.col("left") < pl.col("branches"))
        )
        reopened = []
        for row in short.iter_rows(named=True):
            reason = (
                f"{row['branches'] - row['left']} of its {row['branches']} rollouts were lost to the store ({why}): replayed "
                "again by the next `ee replay run` of this configuration"
            )
            details = json.loads(row["details_json"] or "{}")
            record = ReplayRecord(
                replay_id=row["replay_id"],
                trajectory_id=row["trajectory_id"],
                status="failed",
                reason=reason,
                policy=row["policy"],
                sandbox=row["sandbox"],
                k=row["k"],
                seed=row["seed"],
                details={key: details[key] for key in ("attempt_of", "attempt") if key in details},  # which attempt it was
            )
            self.write_replay(record)
            reopened.append(
                {"replay_id": row["replay_id"], "trajectory_id": row["trajectory_id"], "had": row["branches"], "left": row["left"]}
            )
        self.close()  # the records synced before repair returns
        return reopened

    def _repair_locked(self) -> dict[str, Any]:
        snapshot = read_manifest(self.root, TABLES)
        self._refuse_unread_manifest(snapshot, "repair")
        earlier = self._unfinished_repair()  # a repair or compaction stopped before it recorded what it took out
        if earlier is not None:
            self._finish_moves(earlier, snapshot)
        not_read = _unreadable_segments(self.root / "spool")
        # First, as compaction does: a failure here (a full disk) leaves everything as it was.
        segments = self._fold_spool(snapshot, damaged_only=True).quarantined
        damaged: list[tuple[str, str, str]] = []
        missing: list[str] = []
        for table in TABLES:
            keep = []
            for path in snapshot.paths(self.root, table):
                try:
                    _read_part(path, TABLES[table])
                    keep.append(path.name)
                except FileNotFoundError:
                    missing.append(str(path))
                except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged (or unreadable) file
                    if (problem := refused(exc)) is not None:
                        keep.append(path.name)  # not known to be damaged: moving it would take whole rows out
                        not_read.append(_unread(path, problem))
                    else:
                        damaged.append((table, path.name, str(exc)))
            snapshot.parts[table] = keep
        moved = [
            {"part": str(self.root / table / name), "moved_to": str(self.root / "quarantine" / table / name), "reason": reason}
            for table, name, reason in damaged
        ]
        taken_out = {"quarantined_parts": moved, "missing_parts_dropped": missing, "quarantined_segments": segments}
        if moved or missing or segments:
            # Noted before any part leaves the manifest (a segment, before it was moved), and forgotten once what they
            # held is recorded (_record_losses_of: the trajectories that lost steps rejected, lost decisions set back to
            # pending, replays reopened): a repair stopped in between (Ctrl-C, a kill) leaves the note, and the next
            # repair finishes that work; without it the files were out of the store and every read complete, with
            # nothing left to say what they had held.
            self._note_taken_out(taken_out)
        if earlier is not None:
            taken_out = _merged_taken_out(earlier, taken_out)
        if damaged or missing or snapshot.generation is None:
            snapshot.generation = (snapshot.generation or 0) + 1
            write_manifest(self.root, snapshot, fsync=self._fsync)  # first out of the snapshot, then moved
        for table, name, _reason in damaged:
            target = self.root / "quarantine" / table / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / table / name, target)
        return {
            "root": str(self.root),
            **taken_out,
            "unreadable_files": not_read,
            "finished_stopped_repair": earlier is not None,
        }

    def _finish_moves(self, earlier: dict[str, list[Any]], snapshot: Manifest) -> None:
        """Move to quarantine/ the parts a stopped repair took out of the manifest but had not moved yet (one a compaction
        adopted again since, listed again, is left to this repair's own check)."""
        for item in earlier.get("quarantined_parts", []):
            part, target = Path(item["part"]), Path(item["moved_to"])
            if part.is_file() and not target.exists() and part.name not in snapshot.parts.get(part.parent.name, []):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)

    def _note_taken_out(self, taken_out: dict[str, list[Any]]) -> None:
        """Add ``taken_out`` (files about to be taken out of the store) to :data:`UNFINISHED_REPAIR`, written whole."""
        earlier = self._unfinished_repair()
        noted = _merged_taken_out(earlier, taken_out) if earlier is not None else taken_out
        (self.root / UNFINISHED_REPAIR).parent.mkdir(exist_ok=True)
        atomic_write_bytes(self.root / UNFINISHED_REPAIR, json.dumps(noted, indent=1).encode(), fsync=self._fsync)

    def _forget_taken_out(self, *, segments_only: bool = False) -> None:
        """Remove :data:`UNFINISHED_REPAIR`: what it names is recorded. ``segments_only`` (a compaction, which records a
        segment's losses but not a part's): only a note that names no part."""
        if segments_only:
            noted = self._unfinished_repair()
            if noted is None or noted.get("quarantined_parts") or noted.get("missing_parts_dropped"):
                return
        (self.root / UNFINISHED_REPAIR).unlink(missing_ok=True)

    def _unfinished_repair(self) -> dict[str, list[Any]] | None:
        """What a repair stopped before it recorded their losses took out (its note, :data:`UNFINISHED_REPAIR`), or
        ``None``. A note that cannot be read is set aside (kept beside it as ``.damaged``) and said with a warning: the
        parts it named are in quarantine/ all the same."""
        path = self.root / UNFINISHED_REPAIR
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            data, problem = None, str(exc)
        else:
            problem = "" if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()) else "not a JSON object of lists"
        if problem:
            os.replace(path, path.with_name(f"{path.name}.damaged-{time.time_ns()}"))  # (an earlier one is kept)
            warnings.warn(
                f"{path} (what an earlier `ee store repair` took out before it was stopped) cannot be read ({problem}); it is "
                "kept as .damaged. The parts that repair moved are in quarantine/: what they held was not recorded.",
                UserWarning,
                stacklevel=4,
            )
            return None
        return data

    # --- metadata blobs (ee_middleware.store.protocol.KeepsMetadata) ------------------------------

    def read_meta(self, name: str) -> bytes | None:
        """The file ``<root>/<name>`` (``redaction.json``, ``redaction.key``); ``None`` when it is not there."""
        return read_file(self._meta_path(name))

    def write_meta(self, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Replace ``<root>/<name>`` atomically; with ``exclusive``, create it owner-only unless it exists (the salt).
        Returns whether it was written."""
        return write_file(self._meta_path(name), data, exclusive=exclusive)

    def _meta_path(self, name: str) -> Path:
        if check_meta_name(name) in (MARKER, MANIFEST, "spool", "quarantine", *TABLES):
            raise ValueError(f"{name!r} is one of the store's own files; choose another metadata name.")
        return self.root / name

    # --- information -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts and sizes, for ``ee store info``."""
        segments = spool.list_segments(self.root / "spool")
        spooled = self._read_spool(stacklevel=3)
        # the columns counted alone (the conversations are most of the trajectories table)
        trajectories = self._trajectory_index(["schema_version"], spooled)
        replays = self._scanned("replays", pl.lit(True), ["replay_id", "trajectory_id", "finished_at"], spooled=spooled)
        snapshot = read_manifest(self.root, TABLES)
        for table in ("steps", "rollouts"):  # not read whole here: their footers, as compaction checks them (warned)
            self._check_footers(snapshot, table)
        counts = trajectories.group_by("approval").len().to_dicts() if not trajectories.is_empty() else []
        quarantine = self.root / "quarantine"
        return {
            "root": str(self.root),
            "schema_version": SCHEMA_VERSION,  # (what this ee writes; the records' own are counted below)
            "records_schema_versions": _version_counts(trajectories),
            "trajectories": trajectories.height,
            "by_approval": {c["approval"]: c["len"] for c in counts},
            "rollouts": self._scanned("rollouts", pl.lit(True), ["id"], spooled=spooled).height,
            "replayed_trajectories": replays["trajectory_id"].n_unique(),
            "spool_segments": len(segments),
            "live_segments": sum(spool.is_live(s) for s in segments),
            "parquet_parts": {name: len(snapshot.parts[name]) for name in TABLES},
            "retired_parts": len(snapshot.retired),
            "manifest_generation": snapshot.generation,
            "quarantined_segments": len(list(quarantine.glob(f"*{spool.SEGMENT_SUFFIX}"))),
            "quarantined_parts": len(list(quarantine.glob("*/part-*.parquet"))),
            "unfinished_repair": (self.root / UNFINISHED_REPAIR).exists(),
        }


def _merged_taken_out(earlier: dict[str, list[Any]], later: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Two notes of files taken out of the store as one, each file once (the later entry of a file kept)."""
    keys = {"quarantined_parts": "part", "quarantined_segments": "segment"}
    merged: dict[str, list[Any]] = {}
    for name in ("quarantined_parts", "missing_parts_dropped", "quarantined_segments"):
        entries: dict[Any, Any] = {}
        for entry in [*earlier.get(name, []), *later.get(name, [])]:
            key = entry.get(keys[name]) if name in keys and isinstance(entry, dict) else json.dumps(entry, sort_keys=True)
            entries.pop(key, None)  # (the later one, in its place in the order)
            entries[key] = entry
        merged[name] = list(entries.values())
    return merged


def _version_counts(trajectories: pl.DataFrame) -> dict[str, int]:
    """How many trajectories were recorded under each record schema version, oldest first (``ee store info``: a store of
    1.2 records showed only the code's 1.7)."""
    if "schema_version" not in trajectories.columns or trajectories.is_empty():
        return {}
    counts = trajectories.group_by("schema_version").len().to_dicts()
    return {
        str(c["schema_version"]): c["len"]
        for c in sorted(counts, key=lambda c: [int(p) if p.isdigit() else 0 for p in str(c["schema_version"]).split(".")])
    }


def _unread(path: Path, exc: OSError) -> dict[str, str]:
    """A file repair left where it is because it could not read it, JSON-ready."""
    return {"path": str(path), "reason": exc.strerror or str(exc), "advice": read_advice(exc)}


def _unreadable_segments(spool_dir: Path) -> list[dict[str, str]]:
    """The spool segments this process cannot open to read (:func:`_unread`): compaction leaves them where they are."""
    found = []
    for segment in spool.list_segments(spool_dir):
        try:
            with open(segment, "rb"):
                pass
        except FileNotFoundError:  # compacted meanwhile
            continue
        except OSError as exc:
            found.append(_unread(segment, exc))
    return found


def _unknown_columns(path: Path, schema: dict[str, pl.DataType]) -> list[str]:
    """The columns of a part that ``schema`` does not have (a newer ee-middleware wrote it), read from its footer."""
    with open(path, "rb") as fh:
        return [name for name in pl.read_parquet_schema(fh) if name not in schema]


def _rows_per_group(df: pl.DataFrame) -> int:
    """How many of ``df``'s rows make a row group of about :data:`ROW_GROUP_BYTES` (as many as polars puts in one where
    its rows are small)."""
    per_row = df.estimated_size() / max(df.height, 1)
    return max(1, min(_MOST_ROWS_PER_GROUP, int(ROW_GROUP_BYTES / max(per_row, 1.0))))


def _read_part(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """One part with exactly ``schema``'s columns (columns added since it was written are null). A part the system will not
    let this process read raises the system's :class:`OSError` naming it (opened here first: polars reads a folder in its
    place as an empty dataset, and reports its errors as its own), which is no sign of damage
    (:func:`~ee_middleware.store.access.refused`)."""
    with open(path, "rb") as fh:
        df = pl.read_parquet(path) if named_in_utf8(path) else pl.read_parquet(fh)
    absent = [pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in df.columns]
    return (df.with_columns(absent) if absent else df).select(list(schema)).cast(schema)  # type: ignore[arg-type]


def drop_repeats(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Drop repeated records (a retried batch, a compaction killed after its swap) from rows of
    ``table``, as every read does: the first copy stays (for replay records, the latest)."""
    if table == "trajectories":
        return df.unique("id", keep="first", maintain_order=True)
    if table == "steps":
        return df.unique(["trajectory_id", "index"], keep="first", maintain_order=True)
    if table == "rollouts":
        return df.unique("id", keep="first", maintain_order=True)
    if table == "replays":
        return df.sort("finished_at", maintain_order=True).unique(["replay_id", "trajectory_id"], keep="last", maintain_order=True)
    return df.unique(maintain_order=True)


_DECISIONS = ("trajectories", "approvals")
"""The tables a trajectory's row and its current approval come from."""

_RECORDED_DECISION = ["id", *(c for c in TRAJECTORY_SCHEMA if c.startswith("recorded_approval"))]
"""The columns of the trajectories table :func:`_decisions` reads."""


def _among(column: str, ids: Sequence[str]) -> pl.Expr:
    """Rows whose ``column`` is one of ``ids`` (a filter the Parquet reader applies as it reads)."""
    return pl.col(column).is_in(pl.Series(ids, dtype=pl.String).implode())


class _Tables(MutableMapping[str, pl.DataFrame]):
    """One read's tables: the Parquet parts' rows, then the spool's, repeats dropped. A table is put together when first
    asked for, so a read that never needs the steps does not write the spool's states as ``state_json``."""

    def __init__(self, parts: dict[str, pl.DataFrame], spooled: SpoolRead) -> None:
        self._parts = parts
        self.spooled = spooled
        self._tables: dict[str, pl.DataFrame] = {}

    def __getitem__(self, name: str) -> pl.DataFrame:
        if name not in self._tables and name not in self._parts:
            raise KeyError(f"this read did not load the {name} table (LocalExperienceStore._load(names))")
        if name not in self._tables:
            self._tables[name] = drop_repeats(name, pl.concat([self._parts[name], self.spooled.frame(name)], how="vertical"))
        return self._tables[name]

    def __setitem__(self, name: str, table: pl.DataFrame) -> None:
        self._tables[name] = table

    def __delitem__(self, name: str) -> None:
        raise TypeError("a read's tables cannot be removed")

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)

    def parts(self, name: str) -> pl.DataFrame:
        """``name``'s rows from the Parquet parts alone (repeats still there)."""
        return self._parts[name]


def _rebuilt(row: dict[str, Any], t: Trajectory) -> Trajectory:
    """What :func:`trajectory_from_rows` rebuilds from ``t``'s rows (``row`` with its current approval), without writing
    and parsing its JSON columns: exact for records that round-trip (:func:`~ee_middleware.store.spool_cache.round_trips`)."""
    row = {
        **row,
        "tools_json": Decoded(t.tools),
        "messages_json": Decoded(t.messages),
        "environment_json": None if t.environment is None else Decoded(t.environment),
    }
    return trajectory_from_rows(row, [keep_step(step_row(s, encode=Decoded), s) for s in t.steps])


def _decisions(trajectories: pl.DataFrame, approvals: pl.DataFrame) -> pl.DataFrame:
    """Every decision in the order made (the one recorded with a trajectory included), oldest first: a decision that
    overrides another comes after it, whatever the clocks said (:func:`~ee_middleware.store.approvals.in_order_decided`)."""
    overrides = [pl.lit(None, dtype=APPROVAL_SCHEMA[c]).alias(c) for c in APPROVAL_SCHEMA if c.startswith("overrides_")]
    recorded = trajectories.filter(pl.col("recorded_approval") != "pending").select(
        pl.col("id").alias("trajectory_id"),
        pl.col("recorded_approval").alias("status"),
        pl.col("recorded_approval_by").alias("by"),
        pl.col("recorded_approval_at").alias("at"),
        pl.col("recorded_approval_reason").alias("reason"),
        *overrides,
    )
    return in_order_decided(pl.concat([recorded, approvals.select(list(APPROVAL_SCHEMA))], how="vertical"))


def _current_approvals(trajectories: pl.DataFrame, approvals: pl.DataFrame) -> pl.DataFrame:
    """Attach the latest decision per trajectory (recorded one included) as ``approval*`` columns."""
    latest = (
        _decisions(trajectories, approvals)
        .group_by("trajectory_id", maintain_order=True)
        .last()
        .select(
            pl.col("trajectory_id").alias("id"),
            pl.col("status").alias("approval"),
            pl.col("by").alias("approval_by"),
            pl.col("at").alias("approval_at"),
            pl.col("reason").alias("approval_reason"),
        )
    )
    joined = trajectories.join(latest, on="id", how="left", maintain_order="left")
    return joined.with_columns(pl.col("approval").fill_null("pending"))
