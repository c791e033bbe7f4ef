"""What a process group leaves in /dev/shm is found while it runs and removed once it has ended, unless someone else
still holds it (real processes, real POSIX shared memory through multiprocessing.shared_memory, real mapped files)."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from ee_middleware._shared_memory import SHARED_MEMORY_DIR, group_shared_memory, remove_orphaned_shared_memory, shared_memory_files

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/maps").is_file() or not Path(SHARED_MEMORY_DIR).is_dir(), reason="Linux's /proc and /dev/shm"
)

# One process in a group of its own maps a file in /dev/shm; its child (same group) holds another open only, and a
# third made with multiprocessing's SharedMemory, whose resource tracker (in the group too) dies with the group's SIGKILL
HOLDERS = textwrap.dedent(
    """
    import mmap, os, subprocess, sys, time
    from multiprocessing import shared_memory
    mapped, opened = sys.argv[1], sys.argv[2]
    fd = os.open(mapped, os.O_CREAT | os.O_RDWR, 0o600)
    os.ftruncate(fd, 65536)
    held = mmap.mmap(fd, 65536)
    os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", "import os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR, 0o600); print(flush=True); time.sleep(600)", opened], stdout=subprocess.PIPE)
    child.stdout.readline()
    block = shared_memory.SharedMemory(create=True, size=65536)
    print(block.name, flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def names() -> tuple[Path, Path]:
    token = uuid.uuid4().hex
    paths = (Path(SHARED_MEMORY_DIR) / f"ee-test-mapped-{token}", Path(SHARED_MEMORY_DIR) / f"ee-test-opened-{token}")
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)


def _start_holders(mapped: Path, opened: Path) -> tuple[subprocess.Popen[str], Path]:
    group = subprocess.Popen(
        [sys.executable, "-c", HOLDERS, str(mapped), str(opened)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    block = Path(SHARED_MEMORY_DIR) / group.stdout.readline().strip()  # type: ignore[union-attr]
    return group, block


def _end(group: subprocess.Popen[str]) -> None:
    os.killpg(group.pid, signal.SIGKILL)
    group.wait(timeout=30)


def test_what_a_killed_group_held_in_dev_shm_is_found_while_it_runs_and_removed_after(names: tuple[Path, Path]) -> None:
    mapped, opened = names
    group, block = _start_holders(mapped, opened)
    try:
        held = group_shared_memory(group.pid)
        assert {str(mapped), str(opened), str(block)} <= held
        assert all(path.startswith(SHARED_MEMORY_DIR + "/") for path in held)
        assert remove_orphaned_shared_memory(held, existed={}, wait_s=0) == [], "nothing is removed while the group holds it"
        assert mapped.exists() and opened.exists() and block.exists()
    finally:
        _end(group)
    assert mapped.exists() and opened.exists(), "the group left them (its SIGKILL ran no clean-up)"
    removed = remove_orphaned_shared_memory(held, existed={})
    assert set(removed) >= {str(mapped), str(opened)}
    assert not mapped.exists() and not opened.exists() and not block.exists()


def test_a_file_someone_outside_the_group_still_holds_is_kept(names: tuple[Path, Path]) -> None:
    mapped, opened = names
    group, block = _start_holders(mapped, opened)
    fd = os.open(mapped, os.O_RDWR)
    ours = mmap.mmap(fd, 65536)  # this process maps it too
    os.close(fd)
    try:
        held = group_shared_memory(group.pid)
    finally:
        _end(group)
    try:
        started = time.monotonic()
        removed = remove_orphaned_shared_memory(held, existed={}, wait_s=0.3)
        assert str(mapped) not in removed and mapped.exists(), "held by a live process outside the group"
        assert str(opened) in removed and not opened.exists() and not block.exists()
        assert time.monotonic() - started < 10
    finally:
        ours.close()
    assert remove_orphaned_shared_memory({str(mapped)}, existed={}) == [str(mapped)] and not mapped.exists()


def test_only_files_in_dev_shm_are_ever_removed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "queue"
    elsewhere.write_bytes(b"x")
    gone = Path(SHARED_MEMORY_DIR) / f"ee-test-gone-{uuid.uuid4().hex}"
    assert remove_orphaned_shared_memory({str(elsewhere), str(gone), f"{SHARED_MEMORY_DIR}/../..{elsewhere}"}, existed={}) == []
    assert elsewhere.exists()


def test_a_group_that_is_gone_holds_nothing() -> None:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, start_new_session=True)
    assert group_shared_memory(int(done.stdout)) == set()


def test_a_file_that_was_there_before_the_group_started_is_never_removed(names: tuple[Path, Path]) -> None:
    """Review: a model file served from RAM (``vllm serve /dev/shm/model.gguf``), mapped by the server, was unlinked when
    the server stopped."""
    mapped, opened = names
    mapped.write_bytes(b"\0" * 65536)  # the user's file, there before the group
    before = shared_memory_files()
    group, block = _start_holders(mapped, opened)
    try:
        held = group_shared_memory(group.pid)
    finally:
        _end(group)
    removed = remove_orphaned_shared_memory(held, existed=before)
    assert str(mapped) not in removed and mapped.exists(), "there before: not the group's"
    assert str(opened) in removed and not opened.exists() and not block.exists(), "made by the group and left"
