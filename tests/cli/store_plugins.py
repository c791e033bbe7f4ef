"""Store plug-ins written as a user writes them (a store wrapping the local one), that fail while they read: named by
``package.module:factory`` in the tests of how ``ee`` reports errors raised in a plug-in's code."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from typing import Any

from ee_middleware.store.local import LocalExperienceStore
from tests.cli.store_plugin_base import FlakyDiskStore


class LockedStore(LocalExperienceStore):
    """Its database is locked by another process."""

    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")


class UnreachableStore(LocalExperienceStore):
    """Its server is down: reading raises an OSError that is no file's."""

    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused by store.internal:5432")


def locked() -> LockedStore:
    return LockedStore(os.environ["EE_TEST_STORE_ROOT"])


def unreachable() -> UnreachableStore:
    return UnreachableStore(os.environ["EE_TEST_STORE_ROOT"])


class InheritingStore(FlakyDiskStore):
    """Reads as the base class it inherits from reads."""


def inheriting() -> InheritingStore:
    return InheritingStore(os.environ["EE_TEST_STORE_ROOT"])


class AuditedStore(LocalExperienceStore):
    """Adds an audit line to each read and passes it on to the local store (``super()``): correct code of its own."""

    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        self.audit = [*getattr(self, "audit", []), "trajectories"]
        return super().trajectories(*args, **kwargs)


class AuditedLoadingStore(AuditedStore):
    """Passes reads on with ``super()``, and the local store's reading calls back into its own loading, which fails."""

    def _load(self, *args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("audit log is locked")


class ClosingStore(LocalExperienceStore, contextlib.AbstractContextManager):
    """The local store, usable in a ``with`` block (a standard library mixin; no read of its own)."""

    def __exit__(self, *exc: object) -> None:
        self.close()


def audited() -> AuditedStore:
    return AuditedStore(os.environ["EE_TEST_STORE_ROOT"])


def audited_loading() -> AuditedLoadingStore:
    return AuditedLoadingStore(os.environ["EE_TEST_STORE_ROOT"])


def closing() -> ClosingStore:
    return ClosingStore(os.environ["EE_TEST_STORE_ROOT"])


class OffsetTimesStore(LocalExperienceStore):
    """Hands out its times at UTC-05:00 (a store of another database's conventions): the same moments, another offset."""

    def get(self, trajectory_id: str) -> Any:
        import datetime as dt

        t = super().get(trajectory_id)
        zone = dt.timezone(dt.timedelta(hours=-5))
        approval = t.approval.model_copy(update={"at": t.approval.at.astimezone(zone) if t.approval.at else None})
        return t.model_copy(update={"started_at": t.started_at.astimezone(zone), "approval": approval})

    def trajectories(self, *args: Any, **kwargs: Any) -> Any:
        import polars as pl

        frame = super().trajectories(*args, **kwargs)
        return frame.with_columns(pl.col("started_at").dt.convert_time_zone("America/New_York"))


def offset_times() -> OffsetTimesStore:
    return OffsetTimesStore(os.environ["EE_TEST_STORE_ROOT"])
