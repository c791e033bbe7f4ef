"""A compaction interrupted (Ctrl-C, SIGTERM: ``ee store compact`` and ``ee improve`` turn both into KeyboardInterrupt)
right after a rename took effect, while the folder it renamed into was synced. Real local stores; the interrupt is raised
by the real ``fsync_dir`` wrapped, the moment the sweep that found these reached with signals.

Before: after the manifest swap, the clean-up of a failed compaction deleted the parts the new manifest listed (merged
parts whose originals were retired: their rows lost once the retired parts expired, and every read failed on a missing
part meanwhile); after a part's own rename, the part was left out of the clean-up and adopted by the next compaction
after the parts written before it, out of the order the spool was written in, for good."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import ee_middleware._files as files
from ee_middleware.store import LocalExperienceStore, local
from ee_middleware.store import manifest as manifest_module
from ee_middleware.testing.store_conformance import sample_trajectory


def _interrupt_on(monkeypatch: pytest.MonkeyPatch, folder: Path, nth: int) -> list[str]:
    """Raise KeyboardInterrupt after the real sync of ``folder`` the ``nth`` time it is synced (after a rename into it)."""
    real, seen = files.fsync_dir, []

    def fsync_dir(path: Any) -> None:
        real(path)
        if os.path.realpath(path) == os.path.realpath(folder):
            seen.append(str(path))
            if len(seen) == nth:
                raise KeyboardInterrupt

    monkeypatch.setattr(files, "fsync_dir", fsync_dir)
    return seen


def _sealed_segments(store: LocalExperienceStore, count: int, per_segment: int = 2) -> list[str]:
    for segment in range(count):
        store.write([sample_trajectory(f"seg{segment}-run{i}") for i in range(per_segment)])
        store.close()  # (its segment sealed: the next write opens another)
    return store.trajectories()["id"].to_list()


def test_an_interrupt_after_the_manifest_swap_keeps_the_parts_it_made_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 3)
    store = LocalExperienceStore(tmp_path / "store")
    for segment in range(4):  # four parts: the fifth compaction folds one more and merges them all
        store.write([sample_trajectory(f"run-{segment}")])
        store.close()
        store.compact()
    store.write([sample_trajectory("run-4")])
    store.close()
    ids = store.trajectories()["id"].to_list()
    seen = _interrupt_on(monkeypatch, store.root, 1)  # the store's folder is synced after manifest.json's rename
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    assert seen, "the manifest was swapped in"
    monkeypatch.undo()
    monkeypatch.setattr(manifest_module, "RETIRED_PART_GRACE_S", 0.0)  # the retired parts are gone at the next compaction
    reopened = LocalExperienceStore(store.root, create=False)
    assert reopened.trajectories()["id"].to_list() == ids
    reopened.compact()
    again = LocalExperienceStore(store.root, create=False)
    assert again.trajectories()["id"].to_list() == ids
    assert [t.id for t in again.iter_trajectories()] == ids
    assert again.steps()["trajectory_id"].unique().sort().to_list() == sorted(ids)


def test_an_interrupt_after_a_parts_rename_leaves_no_part_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "PART_FRAME_BYTES", 1)  # a part per segment and table, as a large spool gets
    store = LocalExperienceStore(tmp_path / "store")
    written = _sealed_segments(store, 4)
    _interrupt_on(monkeypatch, store.root / "trajectories", 3)  # after the third part's rename
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()
    assert sorted(p.name for p in (store.root / "trajectories").glob("part-*")) == []
    assert not (store.root / "manifest.json").exists()
    reopened = LocalExperienceStore(store.root, create=False)
    assert reopened.trajectories()["id"].to_list() == written
    reopened.compact()
    assert LocalExperienceStore(store.root, create=False).trajectories()["id"].to_list() == written  # in the order written


def test_a_second_interrupt_during_the_clean_up_keeps_the_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A second Ctrl-C while the clean-up deleted the parts, first to last, left the later ones: adopted after
    the listed parts, the spool folded again after them, their rows came first. The last is deleted first now: what a
    second interrupt leaves is the first parts, whose rows come first anyway."""
    monkeypatch.setattr(local, "PART_FRAME_BYTES", 1)
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("old")])
    store.close()
    store.compact()
    written = ["old", *_sealed_segments(store, 4)[1:]]
    _interrupt_on(monkeypatch, store.root / "trajectories", 3)
    real, unlinked = Path.unlink, []

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self.name.startswith("part-") and self.parent.parent == store.root:
            unlinked.append(self)
            if len(unlinked) == 2:
                raise KeyboardInterrupt("a second Ctrl-C")
        real(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        store.compact()
    monkeypatch.undo()
    LocalExperienceStore(store.root, create=False).compact()
    assert LocalExperienceStore(store.root, create=False).trajectories()["id"].to_list() == written
