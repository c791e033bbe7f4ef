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

from ee_middleware.errors import LargeSpoolWarning
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
    assert set(read) == {"trajectories", "approvals"}, read


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
