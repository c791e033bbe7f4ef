"""The experience-store protocol: what every store backend provides.

Kept free of heavy imports; :mod:`ee_middleware.testing` has a conformance kit that checks any
implementation (the embedded :class:`~ee_middleware.store.local.LocalExperienceStore` is run
through it in our own tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import polars as pl

    from ee_middleware.records import ApprovalEvent, ApprovalStatus, Trajectory


@runtime_checkable
class ExperienceStore(Protocol):
    """Durable storage of trajectories, their steps and approval decisions."""

    def write(self, trajectories: Iterable[Trajectory]) -> int:
        """Durably append trajectories (idempotent by id on read); return how many were written."""
        ...

    def set_approval(self, events: Sequence[ApprovalEvent]) -> None:
        """Record approval decisions for existing trajectories (raises for unknown ids)."""
        ...

    def trajectories(self, *, status: ApprovalStatus | None = None, app: str | None = None) -> pl.DataFrame:
        """One row per trajectory, with the current ``approval`` columns."""
        ...

    def steps(self, trajectory_ids: Sequence[str] | None = None) -> pl.DataFrame:
        """One row per step."""
        ...

    def get(self, trajectory_id: str) -> Trajectory:
        """The full trajectory with its steps and current approval."""
        ...

    def iter_trajectories(self, *, status: ApprovalStatus | None = None) -> Iterator[Trajectory]:
        """Full trajectories, oldest first, optionally only those with the given approval."""
        ...

    def compact(self) -> int:
        """Fold finished spool segments into Parquet parts; return how many segments were folded."""
        ...
