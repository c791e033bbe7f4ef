"""A spool segment is created under a hidden ``.NAME.new`` name, locked, then renamed: what a writer killed in between
leaves behind is never read, never deleted under a writer still alive, and cleaned up by compaction.

The writers are real processes paused at the exact point by a hook in their own ``os.rename`` or ``fcntl.flock``
(they print ``paused`` and wait for a line on stdin), then killed with SIGKILL or let go.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ee_middleware.errors import StoreCorruptionWarning
from ee_middleware.store import LocalExperienceStore, spool
from ee_middleware.testing.store_conformance import sample_trajectory

REPO = Path(__file__).resolve().parents[2]

PAUSING_WRITER = textwrap.dedent(
    """
    import fcntl, os, sys
    from ee_middleware.store import LocalExperienceStore
    from ee_middleware.testing.store_conformance import sample_trajectory

    where, real_rename, real_flock = sys.argv[2], os.rename, fcntl.flock

    def pause():
        print("paused", flush=True)
        sys.stdin.readline()

    def rename(src, dst, *args, **kwargs):
        if where == "rename" and str(src).endswith(".new"):
            pause()
        return real_rename(src, dst, *args, **kwargs)

    def flock(fd, op):
        if where == "flock" and op == fcntl.LOCK_EX and os.readlink(f"/proc/self/fd/{fd}").endswith(".new"):
            pause()
        return real_flock(fd, op)

    os.rename, fcntl.flock = rename, flock
    store = LocalExperienceStore(sys.argv[1])
    store.write([sample_trajectory(sys.argv[3])])
    store.close()
    print("written", flush=True)
    """
)


@pytest.fixture
def paused_writer(store_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[str]] = []

    def start(where: str, trajectory_id: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSING_WRITER, str(store_path), where, trajectory_id],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "paused"
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _left_behind(store_path: Path) -> list[str]:
    return sorted(p.name for p in (store_path / "spool").iterdir() if p.name.endswith(".new"))


@pytest.mark.parametrize("where", ["flock", "rename"])
def test_a_writer_killed_between_creating_and_renaming_leaves_nothing_after_compaction(store_path: Path, paused_writer, where):
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("kept")])
    store.close()
    proc = paused_writer(where, "never-written")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (hidden,) = _left_behind(store_path)
    assert (store_path / "spool" / hidden).stat().st_size == 0

    # never read as a segment (warnings are errors in this suite), nor counted as one
    reader = LocalExperienceStore(store_path)
    assert reader.trajectories()["id"].to_list() == ["kept"]
    assert reader.info()["spool_segments"] == 1

    assert reader.compact() == 1
    assert _left_behind(store_path) == [], "compaction removes the empty file the killed writer left"
    assert not (store_path / "quarantine").exists(), "an empty file held nothing: it is removed, not quarantined"
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["kept"]


@pytest.mark.parametrize("where", ["flock", "rename"])
def test_compaction_never_removes_the_hidden_segment_of_a_writer_still_alive(store_path: Path, paused_writer, where):
    """Paused before its ``flock`` the new file is not locked yet: only the spool's creation lock tells it from a dead one."""
    LocalExperienceStore(store_path)
    proc = paused_writer(where, "late")
    (hidden,) = _left_behind(store_path)
    LocalExperienceStore(store_path).compact()
    assert _left_behind(store_path) == [hidden], "the writer is alive: its file stays"
    out, _ = proc.communicate("go\n", timeout=60)
    assert proc.returncode == 0 and out.split() == ["written"]
    assert _left_behind(store_path) == []
    store = LocalExperienceStore(store_path)
    assert store.trajectories()["id"].to_list() == ["late"]
    store.compact()
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["late"]


def test_a_left_behind_file_holding_bytes_is_moved_to_quarantine_with_a_warning(store_path: Path):
    """No writer writes before the rename; bytes there (another tool, a disk's repair) are kept for inspection, not read."""
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("a")])
    store.close()
    hidden = store_path / "spool" / f".{spool.sortable_stamp()}-host-1-abcdef12.jsonl.new"
    data = spool.encode_line({"kind": "trajectory", "data": {"id": "x"}})
    hidden.write_bytes(data)
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["a"]
    with pytest.warns(StoreCorruptionWarning, match=r"quarantine.*never renamed.*Nothing stored was lost"):
        store.compact()
    assert _left_behind(store_path) == []
    assert (store_path / "quarantine" / hidden.name[1:]).read_bytes() == data
    assert LocalExperienceStore(store_path).trajectories()["id"].to_list() == ["a"]
