"""The store conformance kit fails stores that break a promise callers rely on.

Each broken store below is the embedded store with one realistic mistake; the kit must name it.
(The embedded store itself passes it: tests/store/test_local_store.py.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ee_middleware.errors import TrajectoryNotFoundError
from ee_middleware.records import ApprovalEvent, Rollout, Trajectory, utcnow
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.store.metadata import MetadataNotKeptWarning
from ee_middleware.store.spool_cache import SpoolRows
from ee_middleware.testing import check_store
from tests.store.sqlite_plugin import SqliteMetaStore, SqliteStore


class RolloutsNotDeduplicated(LocalExperienceStore):
    """Forgets to drop rollouts written twice (a retried replay batch)."""

    def _load(self, *args: Any, **kwargs: Any) -> dict[str, pl.DataFrame]:
        tables = super()._load(*args, **kwargs)
        spooled = SpoolRows(spool.iter_records(self.root / "spool")).frames()
        tables["rollouts"] = pl.concat([self._read_parts("rollouts"), spooled["rollouts"]])
        return tables


class FirstMatchingId(LocalExperienceStore):
    """Resolves an ambiguous prefix to the first id that matches."""

    def resolve_id(self, id_or_prefix: str) -> str:
        matches = [i for i in self.trajectories()["id"].to_list() if i.startswith(id_or_prefix)] if id_or_prefix else []
        if not matches:
            raise TrajectoryNotFoundError(id_or_prefix)
        return id_or_prefix if id_or_prefix in matches else matches[0]


class ExactRolloutIdsOnly(LocalExperienceStore):
    """Finds rollouts by their full id only."""

    def get_rollout(self, rollout_id: str) -> Rollout:
        if rollout_id not in self.rollouts()["id"].to_list():
            raise TrajectoryNotFoundError(rollout_id)
        return super().get_rollout(rollout_id)


class EveryReplayRecord(LocalExperienceStore):
    """Returns every replay record written, not the latest per (replay_id, trajectory)."""

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        records = SpoolRows(spool.iter_records(self.root / "spool")).frames()["replays"]
        return pl.concat([self._read_parts("replays"), records])


class UnsortedRollouts(LocalExperienceStore):
    """Returns rollouts in write order."""

    def rollouts(self, trajectory_ids: Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        frame = self._load()["rollouts"]
        if trajectory_ids is not None:
            frame = frame.filter(pl.col("trajectory_id").is_in(list(trajectory_ids)))
        if replay_id is not None:
            frame = frame.filter(pl.col("replay_id") == replay_id)
        return frame


class HalfAppliedApprovals(LocalExperienceStore):
    """Records the known decisions of a batch before complaining about an unknown id."""

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        known = set(self.trajectories()["id"].to_list())
        super().set_approval([e for e in events if e.trajectory_id in known])
        if any(e.trajectory_id not in known for e in events):
            raise TrajectoryNotFoundError("unknown id in the batch")


class LossyCompaction(LocalExperienceStore):
    """Compacts by dropping the spool's rollouts."""

    def compact(self) -> int:
        self._writer.seal()
        folded = 0
        for segment in spool.list_segments(self.root / "spool"):
            kept = [r for r in spool.read_segment(segment) if r.get("kind") != "rollout"]
            segment.write_bytes(b"".join(spool.encode_line(r) for r in kept))
            folded += 1
        return folded


class SilentOverrides(LocalExperienceStore):
    """Approves and rejects without recording the decision a flip overturns."""

    def approve(self, ids: Sequence[str], *, by: str, reason: str | None = None) -> None:
        self.set_approval([ApprovalEvent(trajectory_id=i, status="approved", by=by, reason=reason) for i in ids])


class StaleInfo(LocalExperienceStore):
    """Counts trajectories from Parquet parts only, missing what is still in the spool."""

    def info(self) -> dict[str, object]:
        return {**super().info(), "trajectories": self._read_parts("trajectories").height}


class StepsBackwards(LocalExperienceStore):
    """Gives a trajectory's steps back in reverse order (sweep G: said only "a trajectory must round-trip exactly")."""

    def get(self, trajectory_id: str) -> Trajectory:
        trajectory = super().get(trajectory_id)
        return trajectory.model_copy(update={"steps": list(reversed(trajectory.steps))})


class DropsALastRollout(LocalExperienceStore):
    """Loses the last rollout of each replay record (sweep G: reported as rollouts in the wrong order)."""

    def write_replay(self, record: object, rollouts: Sequence[Rollout] = ()) -> None:
        super().write_replay(record, list(rollouts)[:-1])


class FramesLoseSynthetic(LocalExperienceStore):
    """rollouts() gives every rollout as real (sweep: passed the kit, then datasets trained on model-written observations)."""

    def rollouts(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        return super().rollouts(*args, **kwargs).with_columns(synthetic=pl.lit(False))


class ForgetsThreads(LocalExperienceStore):
    """Stores no thread id (sweep: passed the kit, then a held-out split put one thread on both sides)."""

    def write(self, trajectories: Sequence[Trajectory]) -> int:
        return super().write([t.model_copy(update={"thread_id": None}) for t in trajectories])


class ReplaysLoseCounts(LocalExperienceStore):
    """replays() gives no fidelity mismatches (sweep: the rollouts of a mismatched sandbox were trained on)."""

    def replays(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        return super().replays(*args, **kwargs).with_columns(fidelity_mismatches=pl.lit(0, dtype=pl.Int64))


class TimesAsText(LocalExperienceStore):
    """Gives times back as ISO text, as a SQL round trip does (sweep: the kit stopped on a bare ValueError, and ee traces
    list said 'unexpected AttributeError ... a bug in ee-middleware')."""

    def trajectories(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        frame = super().trajectories(*args, **kwargs)
        return frame.with_columns(pl.col("started_at", "ended_at").dt.to_string("%Y-%m-%dT%H:%M:%S%.f"))


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (FramesLoseSynthetic, r"rollouts\(\) column 'synthetic' returned '\[False, False, False, False\]'"),
        (ForgetsThreads, r"iter_trajectories\(\) returned a trajectory differing at thread_id: wrote 'thread-7', got None"),
        (ReplaysLoseCounts, r"replays\(\) column 'fidelity_mismatches' returned '\[0\]'"),
        (
            TimesAsText,
            r"trajectories frames must have the types of ee_middleware.store.tables, which the product reads them as: started_at is String",
        ),
        (
            StepsBackwards,
            r"a trajectory must round-trip exactly: get\('traj-1b7'\) differs from the trajectory written, at steps\[0\]\.index: "
            r"wrote 0, got 3\. Store every field as written, in order",
        ),
        (DropsALastRollout, r"every rollout write_replay\(\) was given is stored: rollouts\(\) lacks \['ro-b-0-1', 'ro-c-0-1'\]"),
        (RolloutsNotDeduplicated, "must not duplicate them"),
        (FirstMatchingId, r"resolve_id\('traj-1'\), a prefix of several ids"),
        (ExactRolloutIdsOnly, "get_rollout\\(\\) accepts a unique prefix"),
        (EveryReplayRecord, r"replays\(\) keeps one record per \(replay_id, trajectory\), the latest"),
        (UnsortedRollouts, "ordered by trajectory, step and branch"),
        (HalfAppliedApprovals, "must record none of its decisions"),
        (LossyCompaction, "compaction must not change what is read"),
        (StaleInfo, r"info\(\)\['trajectories'\] counts trajectories"),
        (SilentOverrides, "records the decision it overturned"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_a_broken_store_fails_with_the_broken_promise(broken: type[LocalExperienceStore], message: str, store_path: Path):
    with pytest.raises(AssertionError, match=message):
        check_store(lambda: broken(store_path))


# --- metadata blobs: a user's own SQLite store (tests/store/sqlite_plugin.py), as it keeps them, and as it might get them wrong


class ReplacesOnExclusive(SqliteMetaStore):
    """Ignores ``exclusive``: a second process starting would replace the pseudonym salt the first one records with."""

    def write_meta(self, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        return super().write_meta(name, data)


class MetaAsText(SqliteMetaStore):
    """Keeps blobs as text, so bytes that are not UTF-8 come back changed."""

    def write_meta(self, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        return super().write_meta(name, bytes(data).decode("utf-8", "replace").encode(), exclusive=exclusive)


class MetaAsStr(SqliteMetaStore):
    """Returns ``str`` from ``read_meta``."""

    def read_meta(self, name: str) -> bytes | None:  # type: ignore[override]
        data = super().read_meta(name)
        return data.decode("utf-8", "replace") if data is not None else None  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (ReplacesOnExclusive, r"write_meta\(\.\.\., exclusive=True\) of a blob that exists must return False"),
        (MetaAsText, "any bytes round-trip exactly"),
        (MetaAsStr, r"returned str; it must return bytes or None"),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_a_plug_in_store_that_keeps_metadata_wrongly_fails_naming_it(broken: type[SqliteMetaStore], message: str, tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match=message):
        check_store(lambda: broken(str(tmp_path / "experience.sqlite")))


def test_a_plug_in_store_with_the_metadata_methods_passes_and_one_without_is_told_what_it_loses(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetadataNotKeptWarning)
        check_store(lambda: SqliteMetaStore(str(tmp_path / "meta.sqlite")), crash=False)  # crash check: test_store_conformance_crash
    with pytest.warns(MetadataNotKeptWarning, match=r"SqliteStore keeps no metadata.*pseudonyms differ in each process.*read_meta\(name\)"):
        check_store(lambda: SqliteStore(str(tmp_path / "plain.sqlite")), crash=False)


# --- the message of every check names the call, what it returned, what the protocol requires and the fix ---------------


class IgnoresStatusFilter(LocalExperienceStore):
    """Returns every trajectory, whatever ``status=`` asks for."""

    def trajectories(self, *, status: str | None = None, app: str | None = None) -> pl.DataFrame:  # type: ignore[override]
        return super().trajectories(app=app)


class ApprovalsInMemory(LocalExperienceStore):
    """Keeps approval decisions in this handle's memory only, where no read ever looks."""

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        self.decisions = [*getattr(self, "decisions", []), *events]


class CachedGet(LocalExperienceStore):
    """Caches the records ``get()`` returns, so a decision recorded later never shows."""

    def get(self, trajectory_id: str) -> Trajectory:
        cache: dict[str, Trajectory] = self.__dict__.setdefault("cache", {})
        if trajectory_id not in cache:
            cache[trajectory_id] = super().get(trajectory_id)
        return cache[trajectory_id]


class StepsOfEveryTrajectory(LocalExperienceStore):
    """Ignores the ids ``steps()`` is given."""

    def steps(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        return super().steps()


class StampsDecisionsWhenWritten(LocalExperienceStore):
    """Records each decision at the time it is written, not the time it was made (a store ordering by its own clock)."""

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        super().set_approval([event.model_copy(update={"at": utcnow()}) for event in events])


class ApprovalsOfEveryTrajectory(LocalExperienceStore):
    """Ignores the ids ``approvals()`` is given."""

    def approvals(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        return super().approvals()


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            StampsDecisionsWhenWritten,
            r"^approvals\(\['traj-2c'\]\)\['by'\]\[:2\] returned \['dana', 'dana'\] where the protocol requires \['early-clock', "
            r"'late-clock'\]: approvals\(\) comes oldest decision first by the time each was made.*Sort the decisions by their time",
        ),
        (
            ApprovalsOfEveryTrajectory,
            r"^approvals\(\['traj-0a'\]\) as \(trajectory_id, status\) returned \[\('traj-0a', 'approved'\), \('traj-1b', "
            r"'rejected'\).*approvals\(ids\) keeps every decision on those trajectories alone",
        ),
        (
            IgnoresStatusFilter,
            r"^trajectories\(status='approved'\) returned \['traj-0a', 'traj-1b', 'traj-1b7', 'traj-2c'\] where the protocol "
            r"requires \['traj-0a'\]: it returns the trajectories whose latest decision is 'approved'.*status= is not applied",
        ),
        (
            ApprovalsInMemory,
            r"^trajectories\(status='approved'\) returned \[\] where the protocol requires \['traj-0a'\].*"
            r"set_approval\(\) must record each decision where every handle reads it",
        ),
        (
            CachedGet,
            r"^get\('traj-1b7'\)\.approval\.status after approve\(\['traj-1b7'\]\) returned 'pending' where the protocol "
            r"requires 'approved': get\(\) returns the trajectory with its current approval.*a cache of get\(\)'s records",
        ),
        (
            StepsOfEveryTrajectory,
            r"^steps\(\['traj-1b'\]\) returned 9 rows \(by trajectory_id: \{'traj-0a': 2, 'traj-1b': 3, 'traj-1b7': 4\}\) "
            r"where the protocol requires the 3 steps of traj-1b: steps\(ids\) returns the steps of the given trajectories only",
        ),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else "",
)
def test_a_failed_check_says_which_call_returned_what_against_what_the_protocol_requires(
    broken: type[LocalExperienceStore], message: str, store_path: Path
) -> None:
    """The kit's checks are plain asserts in an installed package, which pytest does not rewrite: without a message of
    their own a broken store failed with an empty AssertionError."""
    with pytest.raises(AssertionError, match=message) as caught:
        check_store(lambda: broken(store_path), crash=False)
    assert len(str(caught.value)) < 700, "values in a failure are clipped"


class FramesFromRows(LocalExperienceStore):
    """Builds its frames from plain rows, as a SQL store does (``pl.DataFrame(rows)``): a column whose every value is
    null has no type (``Null``), which reads as empty. A correct store (the review of the every-field check: it failed)."""

    def trajectories(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        return pl.DataFrame(super().trajectories(*args, **kwargs).to_dicts())


def test_a_store_giving_untyped_all_null_columns_passes(store_path: Path) -> None:
    check_store(lambda: FramesFromRows(store_path), crash=False)
