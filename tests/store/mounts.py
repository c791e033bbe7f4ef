"""Real mounts for store tests: a tiny tmpfs (a disk that fills up) and a read-only bind mount.

Both need root and mount permission (the sandbox has them); where the mount is refused the test
that asked for it is skipped, and a test with an injected error covers the same path everywhere.

Two file systems' locks cannot be mounted here (no NFS server): stand-ins make ``fcntl.flock``
behave as they do, :func:`no_locks_stand_in` and :func:`nfs_locks_stand_in`.
"""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here (needs root and mount permission): {done.stderr.strip()}")


@contextmanager
def tiny_tmpfs(parent: Path, size: str = "1m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted under ``parent`` for the duration of the block."""
    point = parent / f"tmpfs-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point))
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def fill_up(path: Path) -> None:
    """Write ``path`` until its file system has not one byte left: 64 KiB at a time, then ever smaller writes down to one
    byte (stopping at the first 64 KiB that does not fit left up to 64 KiB free, room for a small write after all)."""
    with open(path, "wb", buffering=0) as out:
        chunk = 65536
        while chunk:
            try:
                out.write(b"x" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2


@contextmanager
def read_only_view(folder: Path) -> Iterator[Path]:
    """``folder`` bind-mounted read-only at a new path (root can write through chmod, not through this)."""
    point = folder.parent / f"{folder.name}-ro-{uuid.uuid4().hex[:6]}"
    point.mkdir()
    _mount("--bind", str(folder), str(point))
    try:
        done = subprocess.run(["mount", "-o", "remount,bind,ro", str(point)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {done.stderr.strip()}")
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)


def open_fds(folder: Path) -> set[tuple[str, str]]:
    """This process's descriptors onto ``folder`` or a file in it (descriptor, path): those a writer there could leave
    open. Not every descriptor: under ``pytest -n`` a thread an earlier test of the same worker left running may open
    one of its own meanwhile."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed since the listing (the listing's own descriptor)
            continue
        if target == str(folder) or target.startswith(f"{folder}/"):
            found.add((fd, target))
    return found


def _on_mount(fd: int, under: Path | None) -> bool:
    """Whether the file open as ``fd`` lies under ``under`` (the stand-in's mount point; ``None``: everywhere)."""
    return under is None or Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(under)


def no_locks_stand_in(monkeypatch: pytest.MonkeyPatch, under: Path | None = None) -> None:
    """Stand-in for a file system that takes no locks (NFS mounted without a lock daemon), mounted at ``under`` (or
    everywhere): every ``flock`` of a file there fails with ENOLCK, "No locks available"."""
    real = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if _on_mount(fd, under):
            raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)


def nfs_locks_stand_in(monkeypatch: pytest.MonkeyPatch, under: Path | None = None) -> None:
    """Stand-in for the locks of an NFS mount at ``under`` (or everywhere): the client emulates ``flock`` with byte-range
    locks, so an exclusive one on a descriptor not open for writing fails with EBADF (``man 2 flock``). Every other
    lock is a real one."""
    real = fcntl.flock

    def flock(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_EX and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY and _on_mount(fd, under):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock)
