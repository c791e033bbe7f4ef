"""The experience-store protocol: what every store backend provides, and all its callers use.

Capture writes trajectories; people approve or reject them (``ee traces``); the replay job reads
approved trajectories and writes rollouts with one replay record per trajectory; dataset building
reads trajectories, steps and rollouts; the CLI lists, shows and resolves short ids. Every one of
them goes through this protocol (and :func:`~ee_middleware.store.registry.open_store`), never a
concrete class, so a store on object storage only has to implement it and pass
:func:`ee_middleware.testing.check_store`, the conformance kit the embedded
:class:`~ee_middleware.store.local.LocalExperienceStore` passes in our own tests.

Tables come back as Polars frames with the columns of :mod:`ee_middleware.store.tables`; records as
the pydantic models of :mod:`ee_middleware.records`. Kept free of heavy imports (types only).

A store that subclasses :class:`ExperienceStore` explicitly inherits :meth:`~ExperienceStore.approve`,
:meth:`~ExperienceStore.reject` and :meth:`~ExperienceStore.iter_rollouts`, written on top of
the other methods.

A store should also keep small named blobs beside its records, through the optional methods of
:class:`KeepsMetadata` (``read_meta``/``write_meta``): the redaction settings capture recorded with and the
pseudonym salt live there, so that replay, datasets and exports redact as capture did and the same value
gets the same pseudonym in every process. They are not members of :class:`ExperienceStore` (a store
without them still is one), but a store that offers neither them nor a local ``root`` folder cannot be
recorded into with redaction rules beyond the defaults (see :mod:`ee_middleware.store.metadata`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import polars as pl

    from ee_middleware.records import ApprovalEvent, ApprovalStatus, ReplayRecord, Rollout, Trajectory


APPROVAL_COLUMNS = ("approval", "approval_by", "approval_at", "approval_reason")
"""The columns of a trajectory's current decision in :meth:`ExperienceStore.trajectories`' frame."""


def id_list(ids: str | Iterable[str]) -> list[str]:
    """Trajectory ids as a list: one id given as a string is that id, not a sequence of one-character ids. Every method
    of a store that takes ids (``approve``, ``reject``, ``approvals``, ``steps``, ``rollouts``, ...) reads them so; the
    conformance kit (:func:`~ee_middleware.testing.store_conformance.check_store`) checks a plug-in store does too. An
    id that is no string (``None``, a number) raises :class:`TypeError` naming it (a read failed inside polars, or
    answered "no trajectory None")."""
    listed = [ids] if isinstance(ids, str) else list(ids)
    for value in listed:
        if not isinstance(value, str):
            raise TypeError(f"trajectory ids are strings, got {type(value).__name__} {value!r} (ids as ee traces list prints them)")
    return listed


def check_store_object(store: object, *, given_as: str, takes: str = "an ExperienceStore object") -> None:
    """Raise :class:`~ee_middleware.errors.ConfigError` unless ``store`` is a store object (it has ``write``, as every
    :class:`ExperienceStore` has): a number or ``None`` given where a store goes was taken, and every run recorded into
    it was then lost ("'int' object has no attribute 'write'", one run after another). ``given_as``: where it was given,
    for the message (``"record_experience(store=...)"``); ``takes``: what it takes there, for the message."""
    if not callable(getattr(store, "write", None)):
        from ee_middleware.errors import ConfigError

        raise ConfigError(f"{given_as} must be {takes}, got {type(store).__name__} {store!r:.80}.")


@runtime_checkable
class ExperienceStore(Protocol):
    """Durable storage of trajectories, their steps, approval decisions, rollouts and replay records.

    Writes are appends; reads drop repeated records by id, so writing the same record twice (a
    retried batch, a crash between two writes) never shows it twice. Ids are unique strings; where
    a method takes an id, an unambiguous prefix of one is accepted too (see :meth:`resolve_id`).
    """

    # --- trajectories and approvals ----------------------------------------------------------------

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        """Durably append trajectories (idempotent by id on read); return how many were written."""
        ...

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        """Record approval decisions as given (with their ``overrides``); the latest one per
        trajectory wins, and every one stays in :meth:`approvals`.

        Raises :class:`~ee_middleware.errors.TrajectoryNotFoundError` (and records nothing) when
        any id is unknown.
        """
        ...

    def approve(self, ids: str | Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories approved for training; overturning a rejection is recorded with both
        decisions (see :func:`ee_middleware.store.approvals.decide`)."""
        from ee_middleware.store.approvals import decide

        decide(self, ids, "approved", by=by, reason=reason, force=True)

    def reject(self, ids: str | Sequence[str], *, by: str, reason: str | None = None) -> None:
        """Mark trajectories rejected: they never feed training; overturning an approval is
        recorded with both decisions."""
        from ee_middleware.store.approvals import decide

        decide(self, ids, "rejected", by=by, reason=reason, force=True)

    def approvals(self, trajectory_ids: str | Sequence[str] | None = None) -> pl.DataFrame:
        """Every approval decision (of the given trajectories, or all), oldest first: the one
        recorded with a trajectory and each :meth:`set_approval` event, with the columns of
        ``ee_middleware.store.tables.APPROVAL_SCHEMA`` (``overrides_*``: the decision it overturned)."""
        ...

    def trajectories(self, *, status: ApprovalStatus | None = None, app: str | None = None) -> pl.DataFrame:
        """One row per trajectory, oldest write first, with the current decision's columns (:data:`APPROVAL_COLUMNS`)."""
        ...

    def steps(self, trajectory_ids: str | Sequence[str] | None = None) -> pl.DataFrame:
        """One row per step (of the given trajectories, or all)."""
        ...

    def resolve_id(self, id_or_prefix: str) -> str:
        """The full id of the one trajectory whose id is, or starts with, ``id_or_prefix``.

        Raises :class:`~ee_middleware.errors.TrajectoryNotFoundError` when none or several match.
        """
        ...

    def get(self, trajectory_id: str) -> Trajectory:
        """The full trajectory with its steps and current approval (an unambiguous prefix is accepted).

        Raises :class:`~ee_middleware.errors.TrajectoryNotFoundError` when the id is unknown.
        """
        ...

    def iter_trajectories(self, *, status: ApprovalStatus | None = None) -> Iterator[Trajectory]:
        """Full trajectories, oldest first, optionally only those with the given approval."""
        ...

    # --- replay: rollouts and replay records ----------------------------------------------------------

    def write_replay(self, record: ReplayRecord, rollouts: Sequence[Rollout] = ()) -> None:
        """Append one trajectory's rollouts and its replay record as one batch (durably, or synced in groups: a replay
        the store loses is made again by the next run).

        Rollouts are idempotent by id on read; for replay records the latest per
        ``(replay_id, trajectory_id)`` wins. The record must become visible no earlier than its
        rollouts, so that a replay job resuming after a crash redoes the trajectory.
        """
        ...

    def rollouts(self, trajectory_ids: str | Sequence[str] | None = None, *, replay_id: str | None = None) -> pl.DataFrame:
        """One row per rollout, ordered by trajectory id, step index and branch index."""
        ...

    def replays(self, *, replay_id: str | None = None) -> pl.DataFrame:
        """The latest replay record per ``(replay_id, trajectory_id)``."""
        ...

    def get_rollout(self, rollout_id: str) -> Rollout:
        """One rollout by id (an unambiguous prefix is accepted).

        Raises :class:`~ee_middleware.errors.TrajectoryNotFoundError` when none or several match.
        """
        ...

    def iter_rollouts(self, trajectory_ids: str | Sequence[str] | None = None, *, replay_id: str | None = None) -> Iterator[Rollout]:
        """Rollouts as records, in the order of :meth:`rollouts`."""
        from ee_middleware.store.tables import rollout_from_row

        for row in self.rollouts(trajectory_ids, replay_id=replay_id).iter_rows(named=True):
            yield rollout_from_row(row)

    # --- upkeep ----------------------------------------------------------------------------------------

    def compact(self) -> int:
        """Fold pending writes into the store's long-term form; return how many batches were folded.

        Never changes what is read.
        """
        ...

    def info(self) -> dict[str, Any]:
        """JSON-ready counts for ``ee store info``: at least ``root`` (where the store lives) and
        ``trajectories`` (how many)."""
        ...

    def close(self) -> None:
        """Finish this handle's pending writes and release what it holds (files, connections).

        Idempotent. What was written stays readable through any other handle on the same store.
        """
        ...


@runtime_checkable
class KeepsMetadata(Protocol):
    """The optional methods of a store that keeps small named blobs (a few KB each) beside its records.

    ee keeps two there: ``redaction.json`` (the rules capture redacted with) and ``redaction.key`` (the pseudonym
    salt, a secret: keep it as private as the trajectories, and out of exports). Names are plain file names of
    ASCII letters, digits, ``.``, ``_`` and ``-``. :func:`ee_middleware.testing.check_store` checks both methods
    when a store has them. The local store keeps each blob as the file ``<root>/<name>``.
    """

    def read_meta(self, name: str) -> bytes | None:
        """The blob last written under ``name`` (by any handle on the same store, in any process); ``None`` when
        there is none."""
        ...

    def write_meta(self, name: str, data: bytes, *, exclusive: bool = False) -> bool:
        """Keep ``data`` under ``name`` durably and atomically: a reader sees the old blob or the whole new one.

        With ``exclusive=True``, write only when no blob ``name`` exists yet, as one atomic step (a conditional
        put, ``INSERT ... ON CONFLICT DO NOTHING``, a create-only file): of many processes creating the salt at
        once exactly one wins, and the others read its salt. Returns whether ``data`` was written (always True
        without ``exclusive``).
        """
        ...
