"""The embedded experience store: a local folder of Parquet parts fed by a crash-safe spool.

Layout::

    STORE/
      ee-store.json              format marker and schema version
      spool/*.jsonl              append-only segments, one per writing process (see spool.py)
      trajectories/part-*.parquet
      steps/part-*.parquet
      approvals/part-*.parquet   append-only approval log; the latest decision wins
      rollouts/part-*.parquet    replayed alternatives (one row per branch)
      replays/part-*.parquet     one row per (replay configuration, trajectory): the resume markers
      quarantine/                segments with damaged records, kept for inspection

Writers only ever append to their own segment, so many threads and processes can record at once.
Readers see parts plus every segment (so a record is visible as soon as it is written). Compaction
turns finished segments into parts with write-to-temp, fsync and atomic rename, and only then
deletes the segments; a crash at any point leaves duplicates at worst, which reads drop by id.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from ee_middleware._files import atomic_path, atomic_write_bytes, fsync_dir
from ee_middleware.errors import RecordError, StoreCorruptionWarning, StoreError, TrajectoryNotFoundError
from ee_middleware.records import SCHEMA_VERSION, ApprovalEvent, ApprovalStatus, ReplayRecord, Rollout, Trajectory, utcnow
from ee_middleware.store import spool
from ee_middleware.store.tables import (
    APPROVAL_SCHEMA,
    REPLAY_SCHEMA,
    ROLLOUT_SCHEMA,
    STEP_SCHEMA,
    TRAJECTORY_SCHEMA,
    approval_row,
    frame,
    replay_row,
    rollout_from_row,
    rollout_row,
    step_row,
    trajectory_from_rows,
    trajectory_row,
)

MARKER = "ee-store.json"
FORMAT = "ee-experience-store"
TABLES = {
    "trajectories": TRAJECTORY_SCHEMA,
    "steps": STEP_SCHEMA,
    "approvals": APPROVAL_SCHEMA,
    "rollouts": ROLLOUT_SCHEMA,
    "replays": REPLAY_SCHEMA,
}
MAX_PARTS_BEFORE_MERGE = 16


class LocalExperienceStore:
    """Experience store in a local folder. Safe to share between threads and processes.

    >>> store = LocalExperienceStore("./experience")          # doctest: +SKIP
    >>> store.trajectories(status="approved")                  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True, fsync: bool = True) -> None:
        self.root = Path(root).expanduser()
        self._fsync = fsync
        self._open_or_create(create)
        self._writer = spool.SpoolWriter(self.root / "spool", fsync=fsync)

    def __repr__(self) -> str:
        return f"LocalExperienceStore({str(self.root)!r})"

    # --- set-up ------------------------------------------------------------------------------

    def _open_or_create(self, create: bool) -> None:
        marker = self.root / MARKER
        if marker.exists():
            try:
                meta = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise StoreError(f"{marker} is unreadable ({exc}). Restore it or recreate it as an empty store marker.") from exc
            if meta.get("format") != FORMAT:
                raise StoreError(f"{self.root} is not an ee-middleware experience store ({marker} says format={meta.get('format')!r}).")
            major = str(meta.get("schema_version", "1.0")).split(".")[0]
            if major != SCHEMA_VERSION.split(".")[0]:
                raise StoreError(
                    f"{self.root} has schema version {meta.get('schema_version')}, this library reads {SCHEMA_VERSION}. "
                    "Upgrade ee-middleware to read it."
                )
            return
        if not create:
            raise StoreError(f"No experience store at {self.root}. Record a run into it first, or check the --store path.")
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"{self.root} exists and is not a folder. Choose another --store path.")
        if self.root.exists() and any(p.name not in TABLES and p.name != "spool" for p in self.root.iterdir()):
            raise StoreError(f"{self.root} is a non-empty folder without {MARKER}. Use an empty or new folder for the store.")
        self.root.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "created_at": utcnow().isoformat()}
        atomic_write_bytes(marker, json.dumps(meta, indent=2).encode(), fsync=self._fsync)

    # --- writing -----------------------------------------------------------------------------

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        """Durably append trajectories to this process's spool segment."""
        records = [{"kind": "trajectory", "data": t.model_dump(mode="json")} for t in trajectories]
        self._writer.append(records)
        return len(records)

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        """Append approval decisions. Raises :class:`TrajectoryNotFoundError` for unknown ids."""
        known = set(self.trajectories()["id"].to_list())
        missing = [e.trajectory_id for e in events if e.trajectory_id not in known]
        if missing:
            raise TrajectoryNotFoundError(
                f"No trajectory with id {', '.join(missing)} in {self.root}. List ids with: ee traces list --store {self.root}"
            )
        self._writer.append({"kind": "approval", "data": e.model_dump(mode="json")} for e in events)

    def approve(self, ids: Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories approved for training."""
        self.set_approval([ApprovalEvent(trajectory_id=i, status="approved", by=by, reason=reason) for i in ids])

    def reject(self, ids: Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories rejected: they never feed training."""
        self.set_approval([ApprovalEvent(trajectory_id=i, status="rejected", by=by, reason=reason) for i in ids])

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        """Durably append one trajectory's rollouts and its replay record in a single batch.

        The record is written last: a crash part-way leaves rollouts without a record, the
        trajectory is replayed again, and the repeated rollouts (same ids) are dropped on read.
        """
        lines = [{"kind": "rollout", "data": r.model_dump(mode="json")} for r in rollouts]
        lines.append({"kind": "replay", "data": record.model_dump(mode="json")})
        self._writer.append(lines)

    def close(self) -> None:
        """Seal this process's open segment (it can then be compacted)."""
        self._writer.seal()

    # --- reading -----------------------------------------------------------------------------

    def trajectories(self, *, status: ApprovalStatus | None = None, app: str | None = None) -> pl.DataFrame:
        """One row per trajectory (oldest first) with its current ``approval``, ``approval_by``,
        ``approval_at`` and ``approval_reason``."""
        tables = self._load()
        current = _current_approvals(tables["trajectories"], tables["approvals"])
        if status is not None:
            current = current.filter(pl.col("approval") == status)
        if app is not None:
            current = current.filter(pl.col("app") == app)
        return current

    def steps(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        steps = self._load()["steps"]
        if trajectory_ids is not None:
            steps = steps.filter(pl.col("trajectory_id").is_in(list(trajectory_ids)))
        return steps

    def resolve_id(self, id_or_prefix: str) -> str:
        """The full id of the one trajectory whose id is, or starts with, ``id_or_prefix``."""
        ids = self._load()["trajectories"]["id"].to_list()
        if id_or_prefix in ids:
            return id_or_prefix
        matches = [i for i in ids if i.startswith(id_or_prefix)] if id_or_prefix else []
        if len(matches) == 1:
            return matches[0]
        hint = f" (ambiguous: {len(matches)} ids start with it)" if matches else ""
        raise TrajectoryNotFoundError(
            f"No trajectory {id_or_prefix!r} in {self.root}{hint}. List ids with: ee traces list --store {self.root}"
        )

    def get(self, trajectory_id: str) -> Trajectory:
        """The full trajectory (an unambiguous id prefix is accepted)."""
        trajectory_id = self.resolve_id(trajectory_id)
        tables = self._load()
        rows = _current_approvals(tables["trajectories"], tables["approvals"]).filter(pl.col("id") == trajectory_id)
        steps = tables["steps"].filter(pl.col("trajectory_id") == trajectory_id)
        return trajectory_from_rows(rows.row(0, named=True), steps.to_dicts())

    def iter_trajectories(self, *, status: ApprovalStatus | None = None) -> Iterator[Trajectory]:
        tables = self._load()
        current = _current_approvals(tables["trajectories"], tables["approvals"])
        if status is not None:
            current = current.filter(pl.col("approval") == status)
        steps_by_id = tables["steps"].partition_by("trajectory_id", as_dict=True)
        for row in current.iter_rows(named=True):
            steps = steps_by_id.get((row["id"],))
            yield trajectory_from_rows(row, steps.to_dicts() if steps is not None else [])

    def rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        """One row per rollout (alternative action and its real observation)."""
        rollouts = self._load()["rollouts"]
        if trajectory_ids is not None:
            rollouts = rollouts.filter(pl.col("trajectory_id").is_in(list(trajectory_ids)))
        if replay_id is not None:
            rollouts = rollouts.filter(pl.col("replay_id") == replay_id)
        return rollouts.sort(["trajectory_id", "step_index", "branch_index"], maintain_order=True)

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        """The latest replay record per (replay configuration, trajectory)."""
        replays = self._load()["replays"]
        if replay_id is not None:
            replays = replays.filter(pl.col("replay_id") == replay_id)
        return replays

    def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id (an unambiguous prefix is accepted)."""
        rollouts = self._load()["rollouts"]
        exact = rollouts.filter(pl.col("id") == rollout_id)
        if exact.is_empty():
            exact = rollouts.filter(pl.col("id").str.starts_with(rollout_id)) if rollout_id else exact
        if exact.height != 1:
            hint = f" (ambiguous: {exact.height} ids start with it)" if exact.height > 1 else ""
            raise TrajectoryNotFoundError(
                f"No rollout {rollout_id!r} in {self.root}{hint}. List them with: ee replay list --store {self.root}"
            )
        return rollout_from_row(exact.row(0, named=True))

    def iter_rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> Iterator[Rollout]:
        """Rollouts as records, ordered by trajectory, step and branch."""
        for row in self.rollouts(trajectory_ids, replay_id=replay_id).iter_rows(named=True):
            yield rollout_from_row(row)

    def _load(self) -> dict[str, pl.DataFrame]:
        # Spool before parts: a compaction in between then shows a record twice (dropped below),
        # never zero times.
        spooled = _records_to_frames(spool.iter_records(self.root / "spool"))
        parts = {name: self._read_parts(name) for name in TABLES}
        merged = {name: pl.concat([parts[name], spooled[name]], how="vertical") for name in TABLES}
        merged["trajectories"] = merged["trajectories"].unique("id", keep="first", maintain_order=True)
        merged["steps"] = merged["steps"].unique(["trajectory_id", "index"], keep="first", maintain_order=True)
        merged["approvals"] = merged["approvals"].unique(maintain_order=True)
        merged["rollouts"] = merged["rollouts"].unique("id", keep="first", maintain_order=True)
        merged["replays"] = (
            merged["replays"]
            .sort("finished_at", maintain_order=True)
            .unique(["replay_id", "trajectory_id"], keep="last", maintain_order=True)
        )
        return merged

    def _read_parts(self, table: str) -> pl.DataFrame:
        frames = [frame([], TABLES[table])]
        for path in _parts(self.root / table):
            try:
                frames.append(pl.read_parquet(path).select(list(TABLES[table])).cast(TABLES[table]))  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 - any reader failure means a damaged file
                warnings.warn(
                    f"Skipped unreadable Parquet part {path}: {exc}. Move it out of the store or restore it from a backup.",
                    StoreCorruptionWarning,
                    stacklevel=3,
                )
        return pl.concat(frames, how="vertical")

    # --- compaction --------------------------------------------------------------------------

    def compact(self) -> int:
        """Fold finished spool segments into Parquet parts; merge parts when there are many.

        Returns the number of segments folded. Live segments (held by a running writer) are left.
        """
        self._writer.seal()
        with self._compaction_lock():
            segments = [s for s in spool.list_segments(self.root / "spool") if not spool.is_live(s)]
            if segments:
                records: list[dict[str, Any]] = []
                damaged: list[Path] = []
                for segment in segments:
                    data = segment.read_bytes()
                    good, problems = spool.decode_lines(data, segment, live=False)
                    records.extend(good)
                    if problems:
                        damaged.append(segment)
                frames = _records_to_frames(records)
                for name, df in frames.items():
                    if not df.is_empty():
                        self._write_part(name, df)
                for segment in segments:
                    if segment in damaged:
                        quarantine = self.root / "quarantine"
                        quarantine.mkdir(exist_ok=True)
                        os.replace(segment, quarantine / segment.name)
                    else:
                        segment.unlink(missing_ok=True)
                if self._fsync:
                    fsync_dir(self.root / "spool")
            for name in TABLES:
                self._merge_parts(name)
        return len(segments)

    def _write_part(self, table: str, df: pl.DataFrame) -> Path:
        folder = self.root / table
        folder.mkdir(exist_ok=True)
        name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{time.time_ns() % 10**9:09d}-{uuid.uuid4().hex[:8]}.parquet"
        final = folder / name
        with atomic_path(final, fsync=self._fsync) as tmp:
            df.write_parquet(tmp, compression="zstd")
        return final

    def _merge_parts(self, table: str) -> None:
        parts = _parts(self.root / table)
        if len(parts) <= MAX_PARTS_BEFORE_MERGE:
            return
        merged = pl.concat([pl.read_parquet(p) for p in parts], how="vertical")
        self._write_part(table, merged)
        for p in parts:
            p.unlink()

    @contextmanager
    def _compaction_lock(self) -> Iterator[None]:
        with open(self.root / ".compact.lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # --- information -------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Counts and sizes, for ``ee store info``."""
        segments = spool.list_segments(self.root / "spool")
        tables = self._load()
        trajectories = _current_approvals(tables["trajectories"], tables["approvals"])
        counts = trajectories.group_by("approval").len().to_dicts() if not trajectories.is_empty() else []
        return {
            "root": str(self.root),
            "schema_version": SCHEMA_VERSION,
            "trajectories": trajectories.height,
            "by_approval": {c["approval"]: c["len"] for c in counts},
            "rollouts": tables["rollouts"].height,
            "replayed_trajectories": tables["replays"]["trajectory_id"].n_unique(),
            "spool_segments": len(segments),
            "live_segments": sum(spool.is_live(s) for s in segments),
            "parquet_parts": {name: len(_parts(self.root / name)) for name in TABLES},
            "quarantined_segments": len(list((self.root / "quarantine").glob("*"))) if (self.root / "quarantine").exists() else 0,
        }


def _parts(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet")


def _records_to_frames(records: Iterable[dict[str, Any]]) -> dict[str, pl.DataFrame]:
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    for record in records:
        kind, data = record.get("kind"), record.get("data")
        try:
            if kind == "trajectory":
                t = Trajectory.parse(data, where="spool record")
                rows["trajectories"].append(trajectory_row(t))
                rows["steps"].extend(step_row(s) for s in t.steps)
            elif kind == "approval":
                rows["approvals"].append(approval_row(ApprovalEvent.parse(data, where="spool record")))
            elif kind == "rollout":
                rows["rollouts"].append(rollout_row(Rollout.parse(data, where="spool record")))
            elif kind == "replay":
                rows["replays"].append(replay_row(ReplayRecord.parse(data, where="spool record")))
            else:
                raise RecordError(f"unknown spool record kind {kind!r}")
        except RecordError as exc:
            warnings.warn(f"Skipped a spool record that does not fit the schema: {exc}", StoreCorruptionWarning, stacklevel=4)
    return {name: frame(rows[name], TABLES[name]) for name in TABLES}


def _current_approvals(trajectories: pl.DataFrame, approvals: pl.DataFrame) -> pl.DataFrame:
    """Attach the latest decision per trajectory (recorded one included) as ``approval*`` columns."""
    recorded = trajectories.filter(pl.col("recorded_approval") != "pending").select(
        pl.col("id").alias("trajectory_id"),
        pl.col("recorded_approval").alias("status"),
        pl.col("recorded_approval_by").alias("by"),
        pl.col("recorded_approval_at").alias("at"),
        pl.col("recorded_approval_reason").alias("reason"),
    )
    decisions = pl.concat([recorded, approvals], how="vertical").with_row_index("_seq")
    latest = (
        decisions.sort(["at", "_seq"], nulls_last=False)
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
