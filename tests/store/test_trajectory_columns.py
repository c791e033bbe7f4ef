"""Reading a few columns of the trajectories table (``store.registry.trajectory_columns``): the CLI's listings, the
improve job's selection and short ids read the columns they show, not every trajectory's conversation and tools (most
of the table: ``ee traces list`` on a store of 40k runs read 0.7 GB), through the store's ``trajectory_index``; a
local-store subclass with a ``trajectories`` of its own (an audit line, a filter) is still read through it, and a
plug-in without an index answers from its ``trajectories``. Real local and SQLite stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import TrajectoryNotFoundError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.registry import reads_by_index, recorded_apps, trajectory_columns
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.store.sqlite_plugin import SqliteStore

APPROVAL = ["approval", "approval_by", "approval_at", "approval_reason"]


class FilteringStore(LocalExperienceStore):
    """Shows only the trajectories of one tenant: every read of the trajectories goes through its own method."""

    def trajectories(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        return super().trajectories(*args, **kwargs).filter(pl.col("app") == "tenant-a")


def _write(store: Any, approved: tuple[str, ...] = ("a1", "b1")) -> None:
    store.write([sample_trajectory("a1", app="tenant-a"), sample_trajectory("b1", app="tenant-b"), sample_trajectory("a2", app="tenant-a")])
    store.approve(list(approved), by="alice")


def test_the_local_store_reads_the_columns_alone_through_its_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    _write(store)
    store.close()
    store.compact()
    whole = store.trajectories(status="approved")
    monkeypatch.setattr(LocalExperienceStore, "_load", lambda *a, **k: pytest.fail("a table was read whole"))
    assert reads_by_index(store)
    frame = trajectory_columns(store, ["id", "app"], status="approved")
    assert frame.columns == ["id", "app", *APPROVAL]
    assert frame.equals(whole.select("id", "app", *APPROVAL))
    assert recorded_apps(store) == ["tenant-a", "tenant-b"]


def test_a_subclass_with_its_own_trajectories_is_read_through_it(tmp_path: Path) -> None:
    """Before, ``recorded_apps`` (and the improve job's reads) went past a subclass's ``trajectories`` to the index."""
    store = FilteringStore(tmp_path / "store")
    _write(store, approved=("a1",))
    assert not reads_by_index(store)
    assert trajectory_columns(store, ["id"])["id"].to_list() == ["a1", "a2"]
    assert recorded_apps(store) == ["tenant-a"]
    with pytest.raises(TrajectoryNotFoundError, match="'b1' among those the store shows"):  # (was a KeyError)
        store.reject("b1", by="bob")


def test_a_plugin_without_an_index_answers_from_its_trajectories(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))
    _write(store)
    assert not reads_by_index(store)
    frame = trajectory_columns(store, ["id", "app", "no_such_column"], status="approved")
    assert frame.columns == ["id", "app", *APPROVAL]  # (a column the plug-in lacks is left out: the caller checks)
    assert sorted(frame["id"].to_list()) == ["a1", "b1"]


def test_traces_list_and_approve_read_no_table_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    _write(store)
    store.close()
    store.compact()
    runner = CliRunner()
    monkeypatch.setattr(LocalExperienceStore, "_load", lambda *a, **k: pytest.fail("a table was read whole"))
    listed = runner.invoke(app, ["traces", "list", "--store", str(store.root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert '"a2"' in listed.output and '"approval": "approved"' in listed.output
    decided = runner.invoke(app, ["traces", "reject", "a2", "--by", "bob", "--store", str(store.root)])
    assert decided.exit_code == 0, decided.output
    assert "Rejected 1 trajectory(ies): a2" in decided.output


def test_replay_list_reads_the_rollouts_it_shows_and_the_id_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, ``ee replay list --trajectory ID`` read every column of every rollout (the largest table: each state's K
    calls and observations) to show one trajectory's; now those rollouts alone, and the id columns for the short ids."""
    import json

    from ee_middleware.store.registry import rollout_ids
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout

    store = LocalExperienceStore(tmp_path / "store")
    _write(store)
    store.write_replay(sample_replay_record("a1"), [sample_rollout(f"roll-a1-{b}", "a1", 0, b) for b in range(3)])
    store.write_replay(sample_replay_record("b1"), [sample_rollout(f"roll-b1-{b}", "b1", 0, b) for b in range(2)])
    store.close()
    store.compact()
    store.write_replay(sample_replay_record("a2"), [sample_rollout("roll-a2-0", "a2", 1, 0)])  # (in the spool)
    assert sorted(rollout_ids(store)) == ["roll-a1-0", "roll-a1-1", "roll-a1-2", "roll-a2-0", "roll-b1-0", "roll-b1-1"]
    monkeypatch.setattr(LocalExperienceStore, "_load", lambda *a, **k: pytest.fail("a table was read whole"))
    runner = CliRunner()
    listed = runner.invoke(app, ["replay", "list", "--trajectory", "b1", "--store", str(store.root), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [r["id"] for r in json.loads(listed.output)] == ["roll-b1-0", "roll-b1-1"]
    shown = runner.invoke(app, ["replay", "list", "--trajectory", "a1", "--store", str(store.root)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert "roll-a1-0" in shown.output and "roll-b1" not in shown.output


def test_rollout_ids_of_a_subclass_with_its_own_rollouts_come_from_it(tmp_path: Path) -> None:
    from ee_middleware.store.registry import rollout_ids
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout

    class OwnRollouts(LocalExperienceStore):
        def rollouts(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
            return super().rollouts(*args, **kwargs).filter(pl.col("trajectory_id") == "a1")

    store = OwnRollouts(tmp_path / "store")
    _write(store, approved=())
    store.write_replay(sample_replay_record("a1"), [sample_rollout("x1", "a1", 0, 0)])
    store.write_replay(sample_replay_record("b1"), [sample_rollout("x2", "b1", 0, 0)])
    assert rollout_ids(store) == ["x1"]


class WrappingStore:
    """A plug-in that wraps the local store (composition): its own trajectories(), everything else forwarded."""

    def __init__(self, inner: LocalExperienceStore) -> None:
        self._inner = inner

    def trajectories(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
        return self._inner.trajectories(*args, **kwargs).filter(pl.col("app") == "tenant-a")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_wrapper_that_forwards_to_a_local_store_is_read_through_its_own_trajectories(tmp_path: Path) -> None:
    """(review) The forwarded trajectory_index answered for the wrapper, and its filter was skipped."""
    inner = LocalExperienceStore(tmp_path / "store")
    _write(inner)
    store = WrappingStore(inner)
    assert not reads_by_index(store)
    assert trajectory_columns(store, ["id"])["id"].to_list() == ["a1", "a2"]
    assert recorded_apps(store) == ["tenant-a"]


def test_a_filtering_subclass_refuses_a_decision_on_a_trajectory_it_does_not_show(tmp_path: Path) -> None:
    """(review) set_approval checked the ids against the table itself, past the subclass's trajectories()."""
    from ee_middleware.records import ApprovalEvent

    store = FilteringStore(tmp_path / "store")
    _write(store, approved=())
    with pytest.raises(TrajectoryNotFoundError, match="b1"):
        store.set_approval([ApprovalEvent(trajectory_id="b1", status="approved", by="x")])
    store.set_approval([ApprovalEvent(trajectory_id="a2", status="approved", by="x")])
    assert store.get("a2").approval.status == "approved"


def test_subclasses_with_their_own_index_or_trajectories_approve_by_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A trajectory_index of the signature before ``ids`` made approving raise TypeError; a subclass with its
    own trajectories() resolved each prefix with a read of its own (12 reads for 10 prefixes, not 1)."""

    class OldIndex(LocalExperienceStore):
        def trajectory_index(self, columns: Any, *, status: Any = None, app: Any = None) -> pl.DataFrame:
            return super().trajectory_index(columns, status=status, app=app)

    class Audited(LocalExperienceStore):
        def trajectories(self, *args: Any, **kwargs: Any) -> pl.DataFrame:
            return super().trajectories(*args, **kwargs)

    names = [f"{i:03d}-run" for i in range(10)]
    LocalExperienceStore(tmp_path / "store").write([sample_trajectory(n) for n in names])
    OldIndex(tmp_path / "store").approve("000", by="bob")
    resolved: list[int] = []
    real = LocalExperienceStore._resolved
    monkeypatch.setattr(LocalExperienceStore, "_resolved", lambda self, ids: resolved.append(len(ids)) or real(self, ids))
    Audited(tmp_path / "store").approve([n[:3] for n in names[1:]], by="alice")
    assert resolved == [9], resolved
    assert LocalExperienceStore(tmp_path / "store").trajectories(status="approved").height == 10


@pytest.mark.parametrize("bad", [None, 5, b"a1"])
def test_an_id_that_is_no_string_is_a_type_error_naming_it(tmp_path: Path, bad: Any) -> None:
    """Before: ``get(None)`` answered "No trajectory None", ``get(5)`` and ``steps([5])`` failed inside polars."""
    store = LocalExperienceStore(tmp_path / "store")
    _write(store)
    for call in (
        lambda: store.get(bad),
        lambda: store.steps([bad]),
        lambda: store.approve(["a1", bad], by="x"),
        lambda: store.rollouts([bad]),
    ):
        with pytest.raises(TypeError, match=f"trajectory ids are strings, got {type(bad).__name__}"):
            call()
    assert store.get("a1").approval.status == "approved"  # nothing recorded by the refused decision
