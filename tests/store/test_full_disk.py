"""A full disk loses nothing that was acknowledged: a failed spool write is rolled back.

One test injects ``ENOSPC`` into the spool's ``os.write`` (always runs); another fills a real 1 MiB
tmpfs (runs where the test may mount one, as root in the sandbox; skipped elsewhere).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ee_middleware.errors import StoreWriteError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.store import spool as spool_module
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.store.mounts import tiny_tmpfs


class _DiskFillsUp:
    """``os.write`` that writes part of the data and then fails with ENOSPC, ``times`` times."""

    def __init__(self, times: int = 1) -> None:
        self.left = times
        self.real = os.write

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.left > 0 and len(data) > 10:
            self.left -= 1
            self.real(fd, bytes(data[: len(data) // 2]))  # the kernel took half, then the disk was full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def test_injected_enospc_is_rolled_back_and_the_next_record_survives(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    monkeypatch.setattr(spool_module.os, "write", _DiskFillsUp(times=2))
    for failed in ("lost-1", "lost-2"):
        with pytest.raises(StoreWriteError, match=r"No space left on device.*was not stored.*intact.*free space") as caught:
            store.write([sample_trajectory(failed)])
        assert caught.value.errno == errno.ENOSPC
    assert store.write([sample_trajectory("after")]) == 1  # space is back: acknowledged
    monkeypatch.undo()
    store.close()
    # warnings are errors in this suite: a record sharing a line with a cut-off one would fail here
    reader = LocalExperienceStore(store_path)
    assert reader.trajectories()["id"].to_list() == ["before", "after"]
    assert reader.steps(["after"]).height == 3
    reader.compact()
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["before", "after"]
    assert not (store_path / "quarantine").exists(), "nothing was damaged, so nothing is quarantined"


def test_a_segment_that_cannot_be_cut_back_is_closed_instead(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    first = store._writer.segment
    monkeypatch.setattr(spool_module.os, "write", _DiskFillsUp(times=1))

    def no_truncate(fd: int, length: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(spool_module.os, "ftruncate", no_truncate)
    with pytest.raises(StoreWriteError, match="segment it began was closed"):
        store.write([sample_trajectory("lost")])
    monkeypatch.undo()
    store.write([sample_trajectory("after")])
    assert store._writer.segment != first, "the next record goes to a new segment, never onto the cut-off line"
    store.close()
    with pytest.warns(Warning, match="half-written last record"):
        ids = LocalExperienceStore(store_path).trajectories()["id"].to_list()
    assert ids == ["before", "after"]


def test_a_record_after_a_cut_off_one_on_the_same_line_is_still_read(store_path: Path):
    """Spools written by earlier versions (no rollback) hold such lines; the acknowledged record is kept."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    segment = store._writer.segment
    store.close()
    good = spool_module.encode_line({"kind": "trajectory", "data": sample_trajectory("after").model_dump(mode="json")})
    with open(segment, "ab") as fh:
        fh.write(good[: len(good) // 3] + good)  # a write cut short, then the next record on its line
    with pytest.warns(Warning, match="checksum mismatch"):
        ids = LocalExperienceStore(store_path).trajectories()["id"].to_list()
    assert ids == ["before", "after"]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with tiny_tmpfs(tmp_path) as point:
        yield point


def test_a_really_full_tmpfs_loses_nothing_acknowledged(tmpfs: Path):
    filler = tmpfs / "filler"
    filler.write_bytes(b"x" * 300_000)
    root = tmpfs / "experience"
    store = LocalExperienceStore(root)
    acknowledged: list[str] = []
    failures = 0
    for i in range(2000):
        try:
            store.write([sample_trajectory(f"t{i}", steps=6)])
        except StoreWriteError as exc:
            assert exc.errno == errno.ENOSPC, exc
            failures += 1
            if failures == 2:
                break
            filler.unlink()  # space comes back: writing goes on until the disk is full again
            continue
        acknowledged.append(f"t{i}")
    store.close()
    assert failures == 2, "the tmpfs never filled up: the test proved nothing"
    present = LocalExperienceStore(root).trajectories()["id"].to_list()
    assert set(acknowledged) <= set(present), f"{len(set(acknowledged) - set(present))} acknowledged records lost"
    assert len(present) == len(acknowledged), "a batch reported as not stored must not appear"


class _SyncFails:
    """``os.fsync`` that fails with EIO on spool segments (``times`` times), as a disk that stopped taking writes."""

    def __init__(self, times: int = 1) -> None:
        self.left = times
        self.real = os.fsync

    def __call__(self, fd: int) -> None:
        if self.left > 0 and os.readlink(f"/proc/self/fd/{fd}").endswith(spool_module.SEGMENT_SUFFIX):
            self.left -= 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        self.real(fd)


def test_a_failed_sync_after_grouped_writes_says_they_may_be_lost_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes left for a group sync were acknowledged: when the sync that should cover them fails, the error says so
    instead of calling everything before the failed batch intact."""
    monkeypatch.setattr(spool_module, "GROUP_SYNC_INTERVAL_S", 3600.0)
    writer = spool_module.SpoolWriter(tmp_path / "spool")
    writer.append([{"n": 0}])
    writer.append_lines([spool_module.encode_line({"n": 1})], durable=False)  # not synced yet
    monkeypatch.setattr(os, "fsync", _SyncFails())
    with pytest.raises(StoreWriteError, match=r"since the last sync .* may not have reached the disk"):
        writer.append([{"n": 2}])
    writer.append([{"n": 3}])  # the sync failed once: the next write goes through
    monkeypatch.setattr(os, "fsync", _SyncFails())
    with pytest.raises(StoreWriteError, match="everything written before it is intact"):
        writer.append([{"n": 4}])  # nothing was left unsynced this time
    writer.seal()


def test_a_segment_sealed_for_its_size_after_a_grouped_write_warns_when_its_sync_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batch that made the segment full was written: a failed sync while sealing it is logged, not raised to
    that batch's writer as if it had not been stored."""
    monkeypatch.setattr(spool_module, "GROUP_SYNC_INTERVAL_S", 3600.0)
    writer = spool_module.SpoolWriter(tmp_path / "spool", max_segment_bytes=200)
    writer.append_lines([spool_module.encode_line({"n": 0})], durable=False)  # synced: the first write
    monkeypatch.setattr(os, "fsync", _SyncFails())
    writer.append_lines([spool_module.encode_line({"n": 1, "pad": "x" * 300})], durable=False)  # full: sealed here
    assert "Could not sync spool segment" in caplog.text
    assert [r["n"] for r in spool_module.iter_records(tmp_path / "spool")] == [0, 1]


def test_compaction_on_a_really_full_tmpfs_fails_with_a_store_write_error_and_loses_nothing(tmpfs: Path):
    """Polars reports the full disk as a ComputeError (``os error 28``): compaction names the disk, not a bug."""
    root = tmpfs / "experience"
    store = LocalExperienceStore(root)
    written = []
    try:
        for i in range(10_000):
            t = sample_trajectory(f"t{i}", steps=6)
            t.steps[0].observation.content = os.urandom(20_000).hex()  # incompressible: the parts need room too
            store.write([t])
            written.append(t.id)
    except StoreWriteError:
        pass
    store.close()
    with pytest.raises(
        StoreWriteError, match=r"Cannot compact .*No space left on device.*Nothing stored was changed or lost.*free space"
    ) as caught:
        store.compact()
    assert caught.value.errno == errno.ENOSPC
    assert not [p for p in root.rglob("*") if p.suffix in (".parquet", ".tmp")], "nothing half-written is left"
    assert LocalExperienceStore(root).trajectories()["id"].to_list() == written


def test_a_parquet_write_failing_on_a_full_disk_is_a_store_write_error(store_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The same error injected where no tmpfs can be mounted: polars' ComputeError carrying the OS error."""
    import polars as pl

    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("a")])
    store.close()

    def disk_full(self: pl.DataFrame, file: object, **kwargs: object) -> None:
        file.write(b"PAR1")  # type: ignore[attr-defined]  # polars had begun the file
        raise pl.exceptions.ComputeError("parquet: File out of specification: underlying IO error: No space left on device (os error 28)")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", disk_full)
    with pytest.raises(StoreWriteError, match=r"No space left on device.*Nothing stored was changed or lost.*free space") as caught:
        store.compact()
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert not [p for p in store_path.rglob("*") if p.suffix in (".parquet", ".tmp")]
    assert store.compact() == 1
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["a"]


FILE_SIZE_LIMITED = """
import json, resource, sys
from ee_middleware.errors import StoreWriteError
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory
root, limit, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = LocalExperienceStore(root)  # created before the limit: only the spool's segments meet it
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # as `ulimit -f` or systemd's LimitFSIZE= set it
acknowledged, errors = [], []
for i in range(runs):
    try:
        store.write([sample_trajectory(f"run-{i}")])  # one run per batch, as capture writes them
        acknowledged.append(f"run-{i}")
    except StoreWriteError as exc:
        errors.append(str(exc))
try:  # a batch larger than the limit: split over new segments
    store.write([sample_trajectory(f"batch-{i}") for i in range(60)])
    acknowledged += [f"batch-{i}" for i in range(60)]
except StoreWriteError as exc:
    errors.append(str(exc))
huge = sample_trajectory("huge")
huge.messages[-1]["content"] = "x" * limit
try:  # one record larger than the limit can go nowhere
    store.write([sample_trajectory("with-huge"), huge])
except StoreWriteError as exc:
    errors.append(str(exc))
store.close()
print(json.dumps({"acknowledged": acknowledged, "errors": errors}))
"""


def test_a_file_size_limit_loses_no_run_and_says_what_the_limit_is(store_path: Path):
    """A recording process with a file-size limit (ulimit -f, systemd LimitFSIZE): once its segment reached the limit,
    every later batch was written to that same full segment again (it is sealed only at 64 MB or 10 minutes), so
    500 runs left 40 stored, and the advice was 'Check the folder's permissions and free space'. Now a batch that
    would pass the limit goes to a new segment, a batch larger than the limit is split over new segments, and only a
    record larger than the limit fails (its whole batch, with advice about the limit). A real limit, set in a child
    process."""
    import json
    import subprocess
    import sys

    limit, runs = 32 * 1024, 60
    done = subprocess.run(
        [sys.executable, "-c", FILE_SIZE_LIMITED, str(store_path), str(limit), str(runs)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["acknowledged"] == [f"run-{i}" for i in range(runs)] + [f"batch-{i}" for i in range(60)], result["errors"]
    (error,) = result["errors"]
    assert "was not stored" in error and "file-size limit" in error and "ulimit -f" in error, error
    assert "permissions and free space" not in error
    segments = spool_module.list_segments(store_path / "spool")
    assert len(segments) > 1 and all(s.stat().st_size <= limit for s in segments)
    store = LocalExperienceStore(store_path)
    assert store.trajectories()["id"].to_list() == result["acknowledged"], "every acknowledged run is stored, nothing else"


def test_a_write_error_closes_the_segment_and_efbig_is_written_again_in_a_new_one_injected(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EFBIG injected (a file system's own largest file cannot be made small here): a batch that meets it in a segment
    holding records is written to a new segment. And after any failed write the next goes to a new segment, never to
    the one that failed (at a file-size limit, every later batch failed on it)."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("before")])
    first = store._writer.segment
    real = os.write
    failures = [OSError(errno.EFBIG, os.strerror(errno.EFBIG))]

    def too_large_once(fd: int, data: bytes | memoryview) -> int:
        if failures:
            real(fd, bytes(data[:10]))  # the kernel took a little, then the file could not grow
            raise failures.pop()
        return real(fd, data)

    monkeypatch.setattr(spool_module.os, "write", too_large_once)
    assert store.write([sample_trajectory("moved")]) == 1
    second = store._writer.segment
    assert second != first
    monkeypatch.setattr(spool_module.os, "write", _DiskFillsUp(times=1))
    with pytest.raises(StoreWriteError, match="closed; later writes go to a new one"):
        store.write([sample_trajectory("lost")])
    monkeypatch.undo()
    store.write([sample_trajectory("after")])
    assert store._writer.segment not in (first, second)
    store.close()
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["before", "moved", "after"]
