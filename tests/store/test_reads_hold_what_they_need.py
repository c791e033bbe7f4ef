"""Reads of one trajectory, of the trajectories' rows and of the approvals do not read the whole store (sweep of a store
at 10k-100k trajectories): before, every such read put together every table, steps and rollouts included, so
``ee traces show ID``, ``ee traces approve ID`` and ``ee store info`` held memory that grew with the store (945 MiB at
100k trajectories for one lookup), and a lookup decoded the spool twice. A spool too large for the read cache is said
once (``LargeSpoolWarning``, with ``ee store compact``): every read decodes it again. A real local store."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.errors import LargeSpoolWarning, TrajectoryNotFoundError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import spool_cache as spool_cache_module
from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout, sample_trajectory


@pytest.fixture
def store(tmp_path: Path) -> LocalExperienceStore:
    """Trajectories and rollouts in Parquet parts, more of both in the spool."""
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory(f"t{i}", steps=3) for i in range(4)])
    store.write_replay(sample_replay_record("t0"), [sample_rollout(f"r{b}", "t0", 0, b) for b in range(3)])
    store.close()
    store.compact()
    store.write([sample_trajectory(f"s{i}", steps=2) for i in range(2)])
    store.write_replay(sample_replay_record("s0"), [sample_rollout(f"q{b}", "s0", 1, b) for b in range(2)])
    return store


def _tables_read(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    read: list[str] = []
    original = store._read_table

    def noted(snapshot: Any, table: str) -> Any:
        read.append(table)
        return original(snapshot, table)

    monkeypatch.setattr(store, "_read_table", noted)
    return read


def test_a_lookup_reads_no_rollouts_and_no_other_trajectorys_steps(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = {t.id: t for t in LocalExperienceStore(store.root).iter_trajectories()}
    read = _tables_read(store, monkeypatch)
    for trajectory_id in ("t1", "s1", "t3"):
        assert store.get(trajectory_id) == whole[trajectory_id]
    assert store.get("t3") == store.get("t3")  # (the same read twice: nothing of the first is handed over)
    assert read == [], read  # no table read whole: the trajectory's own rows, filtered as the parts are read


def test_a_prefix_and_a_trajectory_decided_later_are_looked_up(store: LocalExperienceStore) -> None:
    store.approve("t2", by="alice")
    store.reject("s1", by="bob")
    assert store.get("t2").approval.status == "approved" and store.get("s1").approval.status == "rejected"
    assert store.get("t2").id == "t2" and store.get("s1"[:2]).id == "s1"
    with pytest.raises(TrajectoryNotFoundError, match="ambiguous"):
        store.get("s")
    with pytest.raises(TrajectoryNotFoundError, match="No trajectory 'x'"):
        store.get("x")
    store.write([sample_trajectory("later-one", steps=1)])  # written after the handle's earlier reads
    assert store.get("later").id == "later-one"


def test_lookups_by_id_read_no_table_whole_and_answer_as_the_whole_table_filtered(
    store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: ``steps(ids)``, ``approvals(ids)``, ``rollouts(ids)``, ``replays(replay_id)``, ``get_rollout(id)`` and
    approving one run read every row of their tables (on a store of 40k runs ``steps(id)`` took 0.63 s and 1.1 GB,
    ``approve(id)`` 1.5 s and 1.3 GB; now 0.04 s / 0.1 GB and 0.1 s / 0.1 GB)."""
    import polars as pl

    store.approve(["t1", "s0"], by="alice")
    store.reject("t1", by="bob")
    whole = {
        "steps": store.steps(),
        "approvals": store.approvals(),
        "rollouts": store.rollouts(),
        "replays": store.replays(),
    }
    read = _tables_read(store, monkeypatch)
    for ids in (["t1"], ["s0", "t0"], "s0", [], ["nothing"]):
        wanted = [ids] if isinstance(ids, str) else ids
        assert store.steps(ids).equals(whole["steps"].filter(pl.col("trajectory_id").is_in(wanted))), ids
        assert store.approvals(ids).equals(whole["approvals"].filter(pl.col("trajectory_id").is_in(wanted))), ids
        assert store.rollouts(ids).equals(whole["rollouts"].filter(pl.col("trajectory_id").is_in(wanted))), ids
    replay_id = whole["replays"]["replay_id"][0]
    assert store.replays(replay_id=replay_id).equals(whole["replays"].filter(pl.col("replay_id") == replay_id))
    assert store.rollouts(replay_id=replay_id).equals(whole["rollouts"].filter(pl.col("replay_id") == replay_id))
    assert store.rollouts("t0", replay_id="other").is_empty()
    assert store.get_rollout("q1").id == "q1" and store.get_rollout("r2").id == "r2"
    with pytest.raises(TrajectoryNotFoundError, match="ambiguous"):
        store.get_rollout("r")
    store.approve("t3", by="carol")
    assert read == [], read
    assert store.get("t3").approval.status == "approved"


def test_listing_approving_and_counting_read_no_steps_or_rollouts(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    read = _tables_read(store, monkeypatch)
    assert sorted(store.trajectories()["id"].to_list()) == ["s0", "s1", "t0", "t1", "t2", "t3"]
    store.approve(["t2", "s1"], by="alice")
    assert store.approvals(["t2"])["status"].to_list()[-1] == "approved"
    info = store.info()
    assert info["rollouts"] == 5 and info["trajectories"] == 6
    assert "steps" not in read and "rollouts" not in read, read


def test_a_large_spool_is_said_once_with_the_command_that_folds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_cache_module, "LARGE_SPOOL_BYTES", 1000)
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory(f"t{i}", steps=3) for i in range(5)])
    with pytest.warns(LargeSpoolWarning, match=r"not yet compacted .*ee store compact --store ") as said:
        store.trajectories()
        store.get("t1")
        store.trajectories()
    assert len([w for w in said if issubclass(w.category, LargeSpoolWarning)]) == 1
    store.close()
    store.compact()
    with warnings.catch_warnings():
        warnings.simplefilter("error", LargeSpoolWarning)
        LocalExperienceStore(store.root).trajectories()  # folded: nothing to say


def test_a_lookup_with_a_part_of_the_wrong_column_type_warns_and_answers(tmp_path: Path) -> None:
    """(review) A steps part whose column holds another type: the lookup failed as an unexpected InvalidOperationError
    (the filtered scan caught ComputeError alone); the part is now taken out with the damage warning, as any read does."""
    import json

    import polars as pl

    from ee_middleware.errors import IncompleteReadWarning

    root = tmp_path / "store"
    writer = LocalExperienceStore(root)
    writer.write([sample_trajectory("t1", steps=2), sample_trajectory("t2")])
    writer.close()
    writer.compact()
    part = next((root / "steps").glob("*.parquet"))
    odd = pl.read_parquet(part).filter(pl.col("trajectory_id") == "t2").with_columns(pl.lit("not-a-number").alias("latency_ms"))
    name = "part-20990101T000000-000000000-deadbeef.parquet"
    odd.write_parquet(root / "steps" / name)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["parts"]["steps"].append(name)
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(IncompleteReadWarning, match=name):
        found = LocalExperienceStore(root, create=False).get("t2")
    assert found.steps == sample_trajectory("t2").steps


def test_a_part_merged_away_during_a_lookup_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A compaction that merges the parts between the lookup's manifest read and its scan: the lookup raised
    FileNotFoundError, or answered no steps with a false 'damaged part' warning; it now reads the new parts."""
    import ee_middleware.store.local as local
    import ee_middleware.store.manifest as manifest

    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 2)
    monkeypatch.setattr(manifest, "RETIRED_PART_GRACE_S", 0.0)
    writer = LocalExperienceStore(tmp_path / "store")
    for i in range(3):
        writer.write([sample_trajectory(f"t{i}", steps=2)])
        writer.close()
        writer.compact()
    reader = LocalExperienceStore(tmp_path / "store", create=False)
    scan, raced = LocalExperienceStore._scan, []

    def racing(self: LocalExperienceStore, *args: Any, **kwargs: Any) -> Any:
        frame = scan(self, *args, **kwargs)
        if not raced:  # once: merged away under the first scan
            raced.append(True)
            for k in range(3):
                writer.write([sample_trajectory(f"x{k}", steps=1)])
                writer.close()
                writer.compact()
        return frame

    monkeypatch.setattr(LocalExperienceStore, "_scan", racing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false damage warning
        assert reader.get("t1").steps == sample_trajectory("t1", steps=2).steps and raced


def test_a_subclass_resolving_ids_its_own_way_decides_exact_ids_too(tmp_path: Path) -> None:
    from ee_middleware.errors import TrajectoryNotFoundError

    LocalExperienceStore(tmp_path / "store").write([sample_trajectory("secret-1"), sample_trajectory("public-1")])

    class Scoped(LocalExperienceStore):
        def resolve_id(self, id_or_prefix: str) -> str:
            if id_or_prefix.startswith("secret"):
                raise TrajectoryNotFoundError(id_or_prefix)
            return super().resolve_id(id_or_prefix)

    with pytest.raises(TrajectoryNotFoundError):
        Scoped(tmp_path / "store", create=False).get("secret-1")
    assert Scoped(tmp_path / "store", create=False).get("public-1").id == "public-1"


def test_the_large_spool_is_said_again_once_it_grew_back_after_a_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_cache_module, "LARGE_SPOOL_BYTES", 1000)
    store = LocalExperienceStore(tmp_path / "store")
    for _ in range(2):
        store.write([sample_trajectory(f"t{i}-{_}", steps=3) for i in range(5)])
        with pytest.warns(LargeSpoolWarning):
            store.trajectories()
        store.close()
        store.compact()
        store.trajectories()  # below the bound: re-armed


def test_counting_and_listing_decisions_read_no_table_whole(store: LocalExperienceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ee store info`` counts trajectories by approval and schema version, rollouts and replayed trajectories from those
    columns alone, and every decision is listed from the decisions' columns: both read the whole trajectories table (the
    conversations: ``ee store info`` 209 MB at 20,000 runs of 15 KB, 105 MB now)."""
    store.approve(["t2", "s1"], by="alice")
    store.write_replay(sample_replay_record("t0"), [])  # the same trajectory replayed again: counted once
    read = _tables_read(store, monkeypatch)
    info = store.info()
    decisions = store.approvals()  # every decision: from the decisions' columns too
    assert read == [], read
    assert decisions.select("trajectory_id", "status", "by").rows() == [("t2", "approved", "alice"), ("s1", "approved", "alice")]
    assert info["trajectories"] == 6 and info["by_approval"] == {"approved": 2, "pending": 4}
    assert info["records_schema_versions"] == {spool_cache_module.SCHEMA_VERSION: 6}
    assert info["rollouts"] == 5 and info["replayed_trajectories"] == 2
