"""A store handle dropped without ``close()`` (a reviewer service opening one per request) releases its spool segment
when it is collected: before, each kept an open descriptor and a locked ("live") segment until the process ended, so
a service ran out of file descriptors and compaction folded none of those segments (thread-safety sweep). A real local
store."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_handles_dropped_without_close_release_their_segments(tmp_path: Path) -> None:
    root = tmp_path / "store"
    LocalExperienceStore(root).write([sample_trajectory(f"t{i}") for i in range(40)])
    gc.collect()
    before = _open_fds()
    for i in range(40):
        LocalExperienceStore(root).approve(f"t{i}", by="alice")  # the handle is dropped here, never closed
    gc.collect()
    assert _open_fds() <= before + 5, (before, _open_fds())  # (not one per dropped handle: 40 before)
    store = LocalExperienceStore(root)
    assert store.compact() == 41  # every segment, the first write's included: none is left locked by a dropped handle
    assert store.trajectories(status="approved").height == 40


def test_a_dropped_handle_keeps_its_group_synced_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes made with ``durable=False`` (replay's) are synced when the dropped handle's segment is sealed."""
    from ee_middleware.store import spool
    from ee_middleware.testing.store_conformance import sample_replay_record, sample_rollout

    root = tmp_path / "store"
    store = LocalExperienceStore(root)
    store.write([sample_trajectory("t0")])
    store.write_replay(sample_replay_record("t0"), [sample_rollout("r0", "t0", 0, 0)])
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(spool.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    fd = store._writer._fd
    del store
    gc.collect()
    assert fd in synced  # the segment's group-synced writes made durable as it was sealed
    again = LocalExperienceStore(root)
    assert again.compact() >= 1 and again.rollouts()["id"].to_list() == ["r0"]
