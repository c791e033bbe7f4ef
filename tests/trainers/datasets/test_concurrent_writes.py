"""A dataset build while the store changes under it: compaction merging parts, a replay adding rollouts.

A build reads the keys of the source first, then the groups of trajectories for the rest of the build
(with a real teacher, for hours). The store says compaction is safe while others read: the parts a merge
replaced stay on disk for a grace period (``RETIRED_PART_GRACE_S``) and are deleted by a later compaction.
These tests run real compactions (the grace period set to zero, as if the build had outlived it) and a real
replay in the middle of a real build, and check the build gives exactly the rows of a quiet one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets


def _compact_twice(root: Path) -> None:
    """A compaction that merges the parts (retiring those a reader may hold), then one that deletes them."""
    store = LocalExperienceStore(root)
    try:
        store.compact()
        store.compact()
    finally:
        store.close()


def _rows(out: Path) -> dict[str, pl.DataFrame]:
    return {kind: pl.read_parquet(out / f"{kind}.parquet") for kind in ("il", "iwm", "sr")}


@pytest.fixture
def two_part_store(replayed_store: Path) -> Path:
    """The replayed store compacted, with a second replay's rollouts in a second part (a merge has two parts to merge)."""
    LocalExperienceStore(replayed_store).compact()
    summary = run_replay(ReplayConfig.load(store=replayed_store, k=2, seed=1))
    assert summary.done and not summary.failed
    LocalExperienceStore(replayed_store).compact()
    assert len(list((replayed_store / "rollouts").glob("*.parquet"))) >= 2
    return replayed_store


def test_a_compaction_that_merges_parts_during_a_build_leaves_its_rows_as_they_were(
    two_part_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the build read the parts it had listed at its start: once a later compaction deleted the merged
    ones, it failed ('No such file or directory ... Check the path') after all the work done so far. Now it reads
    the store's current parts again and goes on; a replay that wrote rollouts meanwhile adds none (the build is of
    the source it started from: its source_hash and counts stay true)."""
    import ee_middleware.store.local as local
    import ee_middleware.store.manifest as manifest

    settings = {"store": two_part_store, "kinds": ("il", "iwm", "sr"), "chunk_mb": 1e-6}
    quiet = build_datasets(DatasetConfig.load(out=tmp_path / "quiet", **settings))
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 1)
    monkeypatch.setattr(manifest, "RETIRED_PART_GRACE_S", 0.0)
    changed: list[str] = []

    def on_stage(kind: str) -> None:
        if not changed:  # after the build read its keys, before it reads any group
            third = run_replay(ReplayConfig.load(store=two_part_store, k=3, seed=2))
            assert third.branches > 0
            before = {p.name for p in (two_part_store / "rollouts").glob("*.parquet")}
            _compact_twice(two_part_store)
            assert not before & {p.name for p in (two_part_store / "rollouts").glob("*.parquet")}, "the parts read are gone"
            changed.append(kind)

    busy = build_datasets(DatasetConfig.load(out=tmp_path / "busy", **settings), on_stage=on_stage)
    assert changed
    assert busy["source_hash"] == quiet["source_hash"] and busy["rollouts"] == quiet["rollouts"]
    busy_rows = _rows(tmp_path / "busy")
    for kind, frame in _rows(tmp_path / "quiet").items():
        assert busy_rows[kind].equals(frame), kind
        assert busy["datasets"][kind]["rows"] == quiet["datasets"][kind]["rows"]
