"""``iter_trajectory_rows`` (``iter_trajectories``, the replay job's read, ``ee traces export``) reads the steps a group
of trajectories at a time: before, it put the whole steps table together and split it by trajectory (1.9 GiB at 100k
trajectories, 3.4 s before the first of them, for ``ee replay run --limit 20`` too). The answer is the same, also when a
compaction folds the spool and merges the parts between two groups. A real local store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ee_middleware.records import Trajectory
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import local as local_module
from ee_middleware.testing.store_conformance import sample_trajectory


def _store(root: Path) -> LocalExperienceStore:
    """Trajectories in two Parquet parts, more in the spool, one of them written again there (a repeated record)."""
    store = LocalExperienceStore(root)
    for part in range(2):
        store.write([sample_trajectory(f"p{part}-{i}", steps=1 + i % 4) for i in range(12)])
        store.close()
        store.compact()
    store.write([sample_trajectory(f"s{i}", steps=2) for i in range(5)])
    store.write([sample_trajectory("p0-3", steps=4)])
    store.approve(["p0-1", "p1-5", "s2"], by="alice")
    return store


@pytest.fixture
def small_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups of 3 trajectories: the test stores hold a few dozen."""
    monkeypatch.setattr(local_module, "FIRST_READ_GROUP", 3)
    monkeypatch.setattr(local_module, "READ_GROUP_BYTES", 1)


def _steps_rows_read(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The steps rows each read of the store puts together, as they are read."""
    read: list[int] = []
    whole, scanned = store._read_table, store._scanned

    def whole_table(snapshot: Any, table: str) -> Any:
        rows = whole(snapshot, table)
        if table == "steps":
            read.append(rows.height)
        return rows

    def filtered(table: str, *args: Any, **kwargs: Any) -> Any:
        rows = scanned(table, *args, **kwargs)
        if table == "steps":
            read.append(rows.height)
        return rows

    monkeypatch.setattr(store, "_read_table", whole_table)
    monkeypatch.setattr(store, "_scanned", filtered)
    return read


def test_the_first_trajectory_comes_before_the_other_steps_are_read(
    tmp_path: Path, small_groups: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "store")
    expected = {t.id: t for t in (store.get(i) for i in store.trajectories()["id"].to_list())}
    read = _steps_rows_read(store, monkeypatch)
    trajectories = store.iter_trajectories()
    first = next(trajectories)
    assert first == expected[first.id]
    group = list(expected.values())[:3]
    assert sum(read) == sum(len(t.steps) for t in group), f"the first group reads its 3 trajectories' steps alone, read {read}"
    rest = list(trajectories)
    assert [first, *rest] == list(expected.values())
    assert max(read) <= max(len(t.steps) for t in expected.values()) * 4, read  # 3 trajectories, and a repeat's rows


@pytest.mark.parametrize("status", [None, "approved", "pending"])
def test_groups_give_what_one_read_of_every_step_gives(tmp_path: Path, small_groups: None, status: str | None) -> None:
    store = _store(tmp_path / "store")
    expected = [store.get(i) for i in store.trajectories(status=status)["id"].to_list()]
    assert expected and list(store.iter_trajectories(status=status)) == expected
    rows = list(store.iter_trajectory_rows(status=status))
    assert [row.id for row in rows] == [t.id for t in expected]
    assert any(type(row) is Trajectory for row in rows), "the spool's own are decoded, not read as rows"


def test_a_compaction_between_two_groups_loses_and_repeats_nothing(tmp_path: Path, small_groups: None) -> None:
    """The spool read at the start is folded into a new part, and the parts merged, while the iteration is between two
    groups; trajectories written meanwhile are not in the iteration (it answers for the store as it started)."""
    store = _store(tmp_path / "store")
    expected = [store.get(i) for i in store.trajectories()["id"].to_list()]
    seen: list[Trajectory] = []
    for n, trajectory in enumerate(store.iter_trajectories()):
        seen.append(trajectory)
        if n == 4:
            other = LocalExperienceStore(store.root)
            other.write([sample_trajectory("late", steps=2)])
            other.close()
            other.compact()
    assert seen == expected
    assert "late" in {t.id for t in store.iter_trajectories()}


def test_a_read_of_some_ids_reads_their_steps_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replay job selects a few trajectories of a large store (``--limit 20``, a night's new ones) and read every
    approved trajectory's steps to pick them out (a review of the grouped reads): it names them now."""
    store = _store(tmp_path / "store")
    wanted = ["s3", "p1-7", "p0-3"]
    expected = [store.get(i) for i in store.trajectories()["id"].to_list() if i in wanted]
    read = _steps_rows_read(store, monkeypatch)
    rows = list(store.iter_trajectory_rows(ids=wanted))
    assert [row.id for row in rows] == [t.id for t in expected], "in store order"
    assert [row if isinstance(row, Trajectory) else row.build() for row in rows] == expected
    assert sum(read) <= sum(len(t.steps) for t in expected) + len(store.get("p0-3").steps), read  # (p0-3's repeat too)


def test_the_replay_job_reads_the_trajectories_it_selected_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ee_middleware.replay.config import ReplayConfig
    from ee_middleware.replay.job import run_replay

    store = _store(tmp_path / "store")
    store.approve(store.trajectories()["id"].to_list(), by="alice")
    store.close()
    asked: list[Any] = []
    original = LocalExperienceStore.iter_trajectory_rows

    def noted(self: LocalExperienceStore, **kwargs: Any) -> Any:
        asked.append(kwargs.get("ids"))
        return original(self, **kwargs)

    monkeypatch.setattr(LocalExperienceStore, "iter_trajectory_rows", noted)
    summary = run_replay(ReplayConfig.load(store=tmp_path / "store", sandbox="tests.replay.sandboxes_for_tests:fruit_shop", k=1, limit=2))
    assert summary.selected == 2 and len(asked) == 1 and asked[0] is not None and len(asked[0]) == 2, asked
