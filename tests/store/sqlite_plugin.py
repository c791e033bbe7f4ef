"""A plug-in experience store as a user writes one: one SQLite file, records as JSON, no local folder (no ``root``).

``SqliteStore`` implements the store protocol only; ``SqliteMetaStore`` adds the optional ``read_meta``/``write_meta``
(:class:`~ee_middleware.store.protocol.KeepsMetadata`) in a table of the same file. Both pass ``check_store``.
Open with ``open_sqlite(path)`` / ``open_sqlite_meta(path)`` (``--store tests.store.sqlite_plugin:...`` works as well).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import polars as pl

from ee_middleware.errors import TrajectoryNotFoundError
from ee_middleware.records import ApprovalEvent, ReplayRecord, Rollout, Trajectory
from ee_middleware.store import tables as T
from ee_middleware.store.approvals import in_order_decided
from ee_middleware.store.protocol import ExperienceStore, id_list

_SCHEMA = """
create table if not exists traj (seq integer primary key autoincrement, id text unique, data text);
create table if not exists approval (seq integer primary key autoincrement, data text);
create table if not exists rollout (id text primary key, data text);
create table if not exists replay (replay_id text, trajectory_id text, data text, primary key (replay_id, trajectory_id));
create table if not exists meta (name text primary key, data blob);
"""


class SqliteStore(ExperienceStore):
    """The store protocol over one SQLite file (see the module docstring)."""

    def __init__(self, location: str) -> None:
        self.location = str(location)
        self._db = sqlite3.connect(self.location, check_same_thread=False, isolation_level=None, timeout=30)
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def _rows(self, query: str, *args: Any) -> list[Any]:
        with self._lock:
            return self._db.execute(query, args).fetchall()

    # --- writes

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        batch = [(t.id, t.model_dump_json()) for t in trajectories]
        with self._lock:
            self._db.executemany("insert into traj (id, data) values (?, ?) on conflict (id) do update set data = excluded.data", batch)
        return len(batch)

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        known = {row[0] for row in self._rows("select id from traj")}
        missing = [e.trajectory_id for e in events if e.trajectory_id not in known]
        if missing:
            raise TrajectoryNotFoundError(f"unknown trajectories {missing}")
        with self._lock:
            self._db.executemany("insert into approval (data) values (?)", [(e.model_dump_json(),) for e in events])

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        with self._lock:
            self._db.executemany("insert or replace into rollout (id, data) values (?, ?)", [(r.id, r.model_dump_json()) for r in rollouts])
            self._db.execute(
                "insert or replace into replay (replay_id, trajectory_id, data) values (?, ?, ?)",
                (record.replay_id, record.trajectory_id, record.model_dump_json()),
            )

    # --- reads

    def _trajectories(self) -> list[Trajectory]:
        return [Trajectory.model_validate_json(row[0]) for row in self._rows("select data from traj order by seq")]

    def approvals(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        rows = [
            T.approval_row(ApprovalEvent(trajectory_id=t.id, status=t.approval.status, by=t.approval.by or "", at=t.approval.at))
            for t in self._trajectories()
            if t.approval.status != "pending"
        ]
        rows += [T.approval_row(ApprovalEvent.model_validate_json(row[0])) for row in self._rows("select data from approval order by seq")]
        decided = in_order_decided(T.frame(rows, T.APPROVAL_SCHEMA))
        return decided if trajectory_ids is None else decided.filter(pl.col("trajectory_id").is_in(id_list(trajectory_ids)))

    def _latest(self) -> dict[str, dict[str, Any]]:
        return {row["trajectory_id"]: row for row in self.approvals().iter_rows(named=True)}

    def trajectories(self, *, status: str | None = None, app: str | None = None) -> pl.DataFrame:
        latest, rows = self._latest(), []
        for t in self._trajectories():
            decision = latest.get(t.id) or {}
            row = {
                **T.trajectory_row(t),
                "approval": decision.get("status", "pending"),
                "approval_by": decision.get("by"),
                "approval_at": decision.get("at"),
                "approval_reason": decision.get("reason"),
            }
            if (status is None or row["approval"] == status) and (app is None or t.app == app):
                rows.append(row)
        schema = {
            **T.TRAJECTORY_SCHEMA,
            "approval": pl.String(),
            "approval_by": pl.String(),
            "approval_at": T.UTC_TIME,
            "approval_reason": pl.String(),
        }
        return T.frame(rows, schema)

    def steps(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        wanted = None if trajectory_ids is None else set(id_list(trajectory_ids))
        rows = [T.step_row(s) for t in self._trajectories() if wanted is None or t.id in wanted for s in t.steps]
        return T.frame(rows, T.STEP_SCHEMA)

    def resolve_id(self, id_or_prefix: str) -> str:
        ids = [row[0] for row in self._rows("select id from traj")]
        if id_or_prefix in ids:
            return id_or_prefix
        matches = [i for i in ids if id_or_prefix and i.startswith(id_or_prefix)]
        if len(matches) != 1:
            raise TrajectoryNotFoundError(f"no single trajectory {id_or_prefix!r}")
        return matches[0]

    def get(self, trajectory_id: str) -> Trajectory:
        tid = self.resolve_id(trajectory_id)
        [(data,)] = self._rows("select data from traj where id = ?", tid)
        t = Trajectory.model_validate_json(data)
        decision = self._latest().get(tid)
        if decision is None:
            return t
        approval = t.approval.model_copy(
            update={k: decision[c] for k, c in (("status", "status"), ("by", "by"), ("at", "at"), ("reason", "reason"))}
        )
        return t.model_copy(update={"approval": approval})

    def iter_trajectories(self, *, status: str | None = None) -> Iterator[Trajectory]:
        for (tid,) in self._rows("select id from traj order by seq"):
            t = self.get(tid)
            if status is None or t.approval.status == status:
                yield t

    def rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        found = [Rollout.model_validate_json(row[0]) for row in self._rows("select data from rollout")]
        found = [
            r
            for r in found
            if (trajectory_ids is None or r.trajectory_id in set(id_list(trajectory_ids))) and replay_id in (None, r.replay_id)
        ]
        found.sort(key=lambda r: (r.trajectory_id, r.step_index, r.branch_index))
        return T.frame([T.rollout_row(r) for r in found], T.ROLLOUT_SCHEMA)

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        rows = [ReplayRecord.model_validate_json(row[0]) for row in self._rows("select data from replay")]
        return T.frame([T.replay_row(r) for r in rows if replay_id in (None, r.replay_id)], T.REPLAY_SCHEMA)

    def get_rollout(self, rollout_id: str) -> Rollout:
        found = [row[0] for row in self._rows("select data from rollout where id = ?", rollout_id)]
        if not found and rollout_id:
            found = [data for rid, data in self._rows("select id, data from rollout") if rid.startswith(rollout_id)]
        if len(found) != 1:
            raise TrajectoryNotFoundError(f"no single rollout {rollout_id!r}")
        return Rollout.model_validate_json(found[0])

    # --- upkeep

    def compact(self) -> int:
        return 0

    def info(self) -> dict[str, Any]:
        return {"root": self.location, "trajectories": len(self._rows("select id from traj"))}

    def close(self) -> None:
        pass


class SqliteMetaStore(SqliteStore):
    """:class:`SqliteStore` with the optional metadata methods, in the file's ``meta`` table."""

    def read_meta(self, name: str) -> bytes | None:
        rows = self._rows("select data from meta where name = ?", name)
        return bytes(rows[0][0]) if rows else None

    def write_meta(self, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        verb = "insert or ignore" if exclusive else "insert or replace"
        with self._lock:
            return self._db.execute(f"{verb} into meta (name, data) values (?, ?)", (name, bytes(data))).rowcount == 1


def open_sqlite(location: str) -> SqliteStore:
    return SqliteStore(location)


def open_sqlite_meta(location: str) -> SqliteMetaStore:
    return SqliteMetaStore(location)
