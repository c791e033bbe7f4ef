"""A process forked while another thread writes to the store gets a spool writer it can use.

The writer's lock was inherited as it was at the fork: a child forked while the parent's writer thread held it (in the
middle of a write and its fsync) waited on it for ever at its first write, so every run it recorded was lost and its
flush timed out (4 of 40 forked jobs of a busy service). The fork now waits for the write under way, and the child gets
a lock of its own. Every wait here has a time limit, and the child is killed if it outlives it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.store_conformance import sample_trajectory


def _wait_for_child(pid: int, timeout: float) -> int:
    """The child's exit code; killed (and the test failed) if it has not ended within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child did not end within {timeout} s: its write waited on a lock its parent held")


def test_a_child_forked_during_another_threads_write_can_write(store_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalExperienceStore(store_path)
    store.write([sample_trajectory("first")])  # the segment is open: the next write only writes and syncs
    in_sync, go_on = threading.Event(), threading.Event()
    real_fsync = os.fsync
    writer = threading.Thread(target=lambda: store.write([sample_trajectory("parent")]), name="writer")

    def slow_fsync(fd: int) -> None:  # the writer thread's sync takes a while (a busy disk): it holds the lock meanwhile
        if threading.current_thread() is writer:
            in_sync.set()
            go_on.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer.start()
    assert in_sync.wait(10), "the writer thread never reached its sync"
    releaser = threading.Timer(0.5, go_on.set)  # the disk answers while the fork is under way
    releaser.start()
    pid = os.fork()
    if pid == 0:  # the child: one write on a thread of its own, which must end
        code = 3
        try:
            done = threading.Thread(target=lambda: store.write([sample_trajectory("child")]))
            done.start()
            done.join(10)
            code = 3 if done.is_alive() else 0
        finally:
            os._exit(code)
    try:
        assert _wait_for_child(pid, 30) == 0, "the child's write never ended"
    finally:
        go_on.set()
        releaser.join(10)
        writer.join(10)
    assert not writer.is_alive()
    store.close()
    assert sorted(LocalExperienceStore(store_path).trajectories()["id"].to_list()) == ["child", "first", "parent"]
