"""Iterating a selection of a store's trajectories (``iter_trajectories(status=...)``, ``iter_trajectory_rows(ids=...)``:
what replay, ``ee traces export`` and ``ee experience dataset`` read) reads the selected runs' rows alone.

Defect (CLI memory sweep): it read the whole trajectories table, every stored conversation, and filtered afterwards: a
replay of 1 of 20,000 runs of 15 KB peaked at 459 MB (164 MB on the same store without the conversations), an export
of 300 approved at 447 MB; iterating 304 approved of 10,000 took 271 MB, now 122 MB (the same trajectories). A real
local store, compacted and not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory


@pytest.fixture(params=["compacted", "spool"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LocalExperienceStore:
    store = LocalExperienceStore(tmp_path / "s")
    for start in range(0, 60, 20):  # written in three batches: their order is the store's
        store.write([sample_trajectory(f"run-{i:02d}") for i in range(start, start + 20)][::-1])
    store.approve([f"run-{i:02d}" for i in (3, 17, 44, 58)], by="me")
    store.reject(["run-44"], by="me")
    store.close()
    if request.param == "compacted":
        store.compact()
    return LocalExperienceStore(tmp_path / "s")


def _rows_read(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many trajectory rows with their conversations each read of the store returned (patched on the class)."""
    read: list[int] = []
    scanned, load = LocalExperienceStore._scanned, LocalExperienceStore._load

    def _scanned(self: Any, table: str, where: Any, columns: Any = None, **kwargs: Any) -> pl.DataFrame:
        frame = scanned(self, table, where, columns, **kwargs)
        if table == "trajectories" and "messages_json" in frame.columns:
            read.append(frame.height)
        return frame

    def _load(self: Any, names: Any = ()) -> Any:
        tables = load(self, names)
        if "trajectories" in names:
            read.append(tables["trajectories"].height)
        return tables

    monkeypatch.setattr(LocalExperienceStore, "_scanned", _scanned)
    monkeypatch.setattr(LocalExperienceStore, "_load", _load)
    return read


def test_iterating_the_approved_reads_their_rows_alone(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    every = {t.id: t for t in store.iter_trajectories()}
    order = list(every)
    read = _rows_read(store, monkeypatch)
    approved = list(store.iter_trajectories(status="approved"))
    assert [t.id for t in approved] == [i for i in order if i in {"run-03", "run-17", "run-58"}]  # in the order written
    assert [t.model_dump() for t in approved] == [every[t.id].model_dump() for t in approved]
    assert sum(read) == 3, read  # (was: all 60)
    read.clear()
    chosen = [t.id for t in store.iter_trajectory_rows(ids=["run-58", "run-01"])]
    assert chosen == [i for i in order if i in ("run-01", "run-58")] and sum(read) == 2, read
    read.clear()
    assert [t.id for t in store.iter_trajectories(status="pending")] == [
        i for i in order if i not in {"run-03", "run-17", "run-44", "run-58"}
    ]
    assert [t.approval.status for t in store.iter_trajectories(status="rejected")] == ["rejected"]


def test_a_decision_compacted_in_between_the_reads_is_the_one_filtered_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) The ids are chosen by their decisions, then their rows read again: a rejection recorded and compacted in
    between was returned as approved (replay could replay, an export export, a run just rejected)."""
    store = LocalExperienceStore(tmp_path / "s")
    store.write([sample_trajectory("a"), sample_trajectory("b")])
    store.approve(["a", "b"], by="me")
    store.close()
    decision_rows = LocalExperienceStore._decision_rows

    def _decision_rows(self: Any, ids: Any, spooled: Any, columns: Any = None) -> Any:
        if columns is None:  # the rows of the chosen: another process decides meanwhile, and compacts
            other = LocalExperienceStore(tmp_path / "s")
            other.reject(["a"], by="reviewer")
            other.close()
            other.compact()
        return decision_rows(self, ids, spooled, columns)

    monkeypatch.setattr(LocalExperienceStore, "_decision_rows", _decision_rows)
    assert [(t.id, t.approval.status) for t in LocalExperienceStore(tmp_path / "s").iter_trajectories(status="approved")] == [
        ("b", "approved")
    ]
