"""Compaction holds about one part's worth of a table (``PART_FRAME_BYTES``), whatever the size of the spool or the store:
folding the spool writes a part whenever a table's folded frames reach it, and merging takes runs of consecutive small
parts together, up to it, in their place; parts that reach it are not merged again. Before, a fold held every frame of
the whole spool (about 1 GB for a spool of 384 MB) and a merge read the whole table (every step the store ever recorded).
Real local stores; every read gives what the same records give compacted the old way, in one part."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from ee_middleware.store import LocalExperienceStore, local
from ee_middleware.store.manifest import read_manifest
from ee_middleware.store.tables import TABLES
from ee_middleware.testing.store_conformance import sample_trajectory


def _reads(path: Path) -> list[object]:
    store = LocalExperienceStore(path, create=False)
    return [
        store.trajectories().drop("approval_at").rows(),
        store.steps().rows(),
        [t.model_dump_json() for t in store.iter_trajectories()],
        store.get(store.trajectories()["id"].to_list()[-2]).model_dump_json(),
    ]


def _parts(path: Path, table: str) -> list[str]:
    return read_manifest(path, TABLES).parts[table]


def _frame_bytes(path: Path, table: str, name: str) -> int:
    return int(pl.read_parquet_metadata(path / table / name)[local.FRAME_BYTES_KEY])


def test_a_spool_larger_than_a_part_is_folded_into_parts_of_about_that_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalExperienceStore(tmp_path / "store")
    for batch in range(6):  # six segments
        store.write([sample_trajectory(f"run-{batch * 5 + i:03d}", steps=6) for i in range(5)])
        store.close()
    reference = tmp_path / "reference"
    shutil.copytree(store.root, reference)
    LocalExperienceStore(reference, create=False).compact()  # every table folded into one part
    assert len(_parts(reference, "steps")) == 1
    one_segment = _frame_bytes(reference, "steps", _parts(reference, "steps")[0]) // 6

    monkeypatch.setattr(local, "PART_FRAME_BYTES", 2 * one_segment)
    assert store.compact() == 6
    steps = _parts(store.root, "steps")
    assert len(steps) == 3, steps  # two segments' steps in each
    assert all(_frame_bytes(store.root, "steps", name) <= 3 * one_segment for name in steps)
    assert _reads(store.root) == _reads(reference)


def test_merges_take_runs_of_small_parts_in_place_and_leave_large_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 3)
    store = LocalExperienceStore(tmp_path / "store")
    reference = LocalExperienceStore(tmp_path / "reference")
    small = None
    for batch, size in enumerate([1, 1, 8, 1, 1, 1]):  # one large part amid small ones
        runs = [sample_trajectory(f"run-{batch * 10 + i:03d}", steps=4) for i in range(size)]
        for target in (store, reference):
            target.write(runs)
            target.close()
        if small is None:
            store.compact()
            small = _frame_bytes(store.root, "steps", _parts(store.root, "steps")[0])
            monkeypatch.setattr(local, "PART_FRAME_BYTES", 4 * small)  # the part of 8 runs is large, three small ones fit
            continue
        store.compact()
    names = _parts(store.root, "steps")
    sizes = [_frame_bytes(store.root, "steps", name) for name in names]
    # the first two merged when the large one came (parts 1, 2 | 8), then the three after it merged in its place
    assert len(names) == 3 and sizes[1] >= 4 * small and sizes[0] < sizes[1] and sizes[2] < sizes[1], sizes
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 16)
    reference.compact()
    assert _reads(store.root) == _reads(reference.root)
    assert store.trajectories()["id"].to_list() == sorted(store.trajectories()["id"].to_list()), "written order kept"


def test_merged_parts_sort_where_their_runs_were_for_reads_without_a_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A read whose manifest is gone or unreadable takes every part in name order: a merged part named as a new
    one sorted after the parts that followed its run, which changed the order of the rows and which copy of a repeated
    record won. It is named after the first part it replaces."""
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 3)
    store = LocalExperienceStore(tmp_path / "store")
    for batch, size in enumerate([1, 1, 8, 1]):
        store.write([sample_trajectory(f"run-{batch * 10 + i:03d}", steps=4) for i in range(size)])
        store.close()
        store.compact()
        if batch == 0:
            small = _frame_bytes(store.root, "steps", _parts(store.root, "steps")[0])
            monkeypatch.setattr(local, "PART_FRAME_BYTES", 4 * small)
    assert len(_parts(store.root, "steps")) == 3  # the first two merged, in their place
    for table in ("trajectories", "steps"):
        names = _parts(store.root, table)
        assert names == sorted(names), names
    expected = _reads(store.root)
    monkeypatch.setattr("ee_middleware.store.manifest.RETIRED_PART_GRACE_S", 0.0)
    store.compact()  # the merged parts' files removed
    (store.root / "manifest.json").unlink()
    assert _reads(store.root) == expected


def test_a_part_listed_twice_is_not_lost_to_a_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) The manifest's parser takes a part listed twice (a hand edit); the merge of its run named the merged part
    nowhere, and every row of the run was gone until another compaction."""
    from ee_middleware.store.manifest import write_manifest

    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 3)
    store = LocalExperienceStore(tmp_path / "store")
    for i in range(3):
        store.write([sample_trajectory(f"run-{i:03d}")])
        store.close()
        store.compact()
    snapshot = read_manifest(store.root, TABLES)
    snapshot.parts["trajectories"].append(snapshot.parts["trajectories"][0])
    write_manifest(store.root, snapshot, fsync=False)
    store.write([sample_trajectory("run-003")])
    store.close()
    store.compact()
    assert store.trajectories()["id"].to_list() == ["run-000", "run-001", "run-002", "run-003"]
    twice = snapshot.parts["trajectories"][0]
    assert read_manifest(store.root, TABLES).parts["trajectories"].count(twice) == 2  # left where it is, both times


def test_the_small_last_part_of_each_large_fold_is_merged_with_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A fold larger than a part ends with a smaller one, alone between full parts: never merged, one more part at
    every compaction. It is merged with the part after it, so that one such part is left at most (the last)."""
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 2)
    store = LocalExperienceStore(tmp_path / "store")
    reference = LocalExperienceStore(tmp_path / "reference")
    bound = None
    for compaction in range(5):
        for segment in range(3):
            runs = [sample_trajectory(f"run-{compaction}-{segment}-{i}", steps=4) for i in range(5)]
            for target in (store, reference):
                target.write(runs)
                target.close()
        if bound is None:  # two segments' steps make a part
            copy = tmp_path / "measure"
            shutil.copytree(store.root, copy)
            LocalExperienceStore(copy, create=False).compact()
            bound = 2 * _frame_bytes(copy, "steps", _parts(copy, "steps")[0]) // 3
            monkeypatch.setattr(local, "PART_FRAME_BYTES", bound)
        store.compact()
    sizes = [_frame_bytes(store.root, "steps", name) for name in _parts(store.root, "steps")]
    assert len([s for s in sizes if s < bound]) <= 1 and max(sizes) <= 2 * bound, sizes
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 16)
    reference.compact()
    assert _reads(store.root) == _reads(reference.root)


def test_a_killed_merges_part_is_adopted_before_its_run_and_others_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A merge killed before its manifest swap leaves its part, named after its run's first part, unlisted; adopted at
    the end of the manifest, it was read last with a manifest and in its run's place without one. It is adopted right
    before its run (where its name sorts); a part of another name, one a user copied in, last; a merge such a part leads
    is named as a new part."""
    monkeypatch.setattr(local, "MAX_PARTS_BEFORE_MERGE", 3)
    monkeypatch.setattr(local, "PART_FRAME_BYTES", 1)  # no merges: every part is large
    store = LocalExperienceStore(tmp_path / "store")
    for i in range(3):
        store.write([sample_trajectory(f"run-{i:03d}")])
        store.close()
        store.compact()
    for table in ("trajectories", "steps"):  # as a killed merge of the second part leaves it (its rows, named after it)
        name = _parts(store.root, table)[1]
        shutil.copy(store.root / table / name, store.root / table / name.replace(".parquet", "-m0123abcd.parquet"))
        shutil.copy(store.root / table / name, store.root / table / "part-copied in by hand.parquet")
    store.write([sample_trajectory("run-003")])
    store.close()
    store.compact()
    for table in ("trajectories", "steps"):
        names = _parts(store.root, table)
        ours = [n for n in names if local._PART_NAME.fullmatch(n)]  # (the copied-in part was adopted last, then a fold)
        assert len(names) == 6 and ours == sorted(ours) and "-m0123abcd" in ours[1], names
    assert store.trajectories()["id"].to_list() == ["run-000", "run-001", "run-002", "run-003"]  # (the copies: repeats)
    before = _reads(store.root)
    (store.root / "manifest.json").unlink()
    assert _reads(store.root) == before
    LocalExperienceStore(store.root, create=False).compact()  # a manifest made again, from the parts in name order
    monkeypatch.setattr(local, "PART_FRAME_BYTES", 2**30)  # now everything merges, the copied-in part leading one run
    store.write([sample_trajectory("run-004")])
    store.close()
    store.compact()
    names = _parts(store.root, "trajectories")
    assert not any("copied" in n for n in names) and all(local._PART_NAME.fullmatch(n) for n in names), names
    assert store.trajectories()["id"].to_list() == ["run-000", "run-001", "run-002", "run-003", "run-004"]


def _killed_compaction(root: Path, scratch: Path) -> None:
    """Leave in the store at ``root`` what a compaction killed before its manifest swap leaves: the parts it wrote (its
    fold's, of the spool it would have deleted), unlisted."""
    shutil.copytree(root, scratch)
    LocalExperienceStore(scratch, create=False).compact()
    for table in TABLES:
        for part in (scratch / table).glob("part-*.parquet"):
            if not (root / table / part.name).exists():
                shutil.copy(part, root / table / part.name)


def test_a_killed_folds_part_is_adopted_last_when_the_clock_stepped_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(review) A part no manifest lists was adopted where its name sorts. A killed fold's part holds the newest rows, but a
    clock stepped back (NTP, a restored VM, another host compacting a shared store) names it before the parts an earlier
    compaction wrote: adopted ahead of them, its newer copy of a re-recorded trajectory became the one reads keep."""
    store = LocalExperienceStore(tmp_path / "store")
    monkeypatch.setattr(local.spool, "sortable_stamp", lambda: "20300101T000000-000000000")  # this compaction's clock is ahead
    store.write([sample_trajectory("x").model_copy(update={"task": "first copy"})])
    store.close()
    store.compact()
    monkeypatch.undo()
    store.write([sample_trajectory("x").model_copy(update={"task": "second copy"})])
    store.close()
    assert store.get("x").task == "first copy"
    _killed_compaction(store.root, tmp_path / "killed")
    store.compact()
    assert store.get("x").task == "first copy"
    assert [t.task for t in LocalExperienceStore(store.root, create=False).iter_trajectories()] == ["first copy"]
    assert _parts(store.root, "trajectories")[0].startswith("part-20300101T000000")  # the earlier compaction's part first


def test_a_killed_folds_part_is_adopted_last_after_a_part_copied_in(tmp_path: Path) -> None:
    """(review) The same with a part copied in by hand earlier (adopted last, so the manifest's names are not in order
    after it): the killed fold's part sorted before it and before the parts written after it, and was adopted there."""
    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory("y")])
    store.close()
    store.compact()
    for table in ("trajectories", "steps"):
        [part] = _parts(store.root, table)
        shutil.copy(store.root / table / part, store.root / table / "part-copied-in.parquet")
    store.write([sample_trajectory("x").model_copy(update={"task": "first copy"})])
    store.close()
    store.compact()  # adopts the copied-in part last, then appends this fold's
    store.write([sample_trajectory("x").model_copy(update={"task": "second copy"})])
    store.close()
    _killed_compaction(store.root, tmp_path / "killed")
    store.compact()
    assert store.get("x").task == "first copy"
    assert [t.task for t in LocalExperienceStore(store.root, create=False).iter_trajectories() if t.id == "x"] == ["first copy"]


def test_a_fold_holds_no_segment_decoded_whole(tmp_path: Path) -> None:
    """A segment's records are folded one at a time, their steps' rows written as each is decoded: the fold held every
    validated trajectory of a segment (about seven times the spool's size in Python objects) to write its steps."""
    import tracemalloc

    from ee_middleware.store import spool

    store = LocalExperienceStore(tmp_path / "store")
    store.write([sample_trajectory(f"{i:03d}-run", steps=8) for i in range(400)])
    store.close()
    reference = tmp_path / "reference"
    shutil.copytree(store.root, reference)
    size = sum(p.stat().st_size for p in spool.list_segments(store.root / "spool"))
    tracemalloc.start()
    try:
        assert store.compact() == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * size, peak / size
    assert _reads(store.root)[:3] == [
        LocalExperienceStore(reference, create=False).trajectories().drop("approval_at").rows(),
        LocalExperienceStore(reference, create=False).steps().rows(),
        [t.model_dump_json() for t in LocalExperienceStore(reference, create=False).iter_trajectories()],
    ]
