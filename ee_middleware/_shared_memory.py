"""The shared memory a process group leaves behind: POSIX shared memory and named semaphores in ``/dev/shm``.

A model server's processes share memory through files there (vLLM's message queues: ``psm_*``, hundreds of MiB of
address space each, and multiprocessing's ``sem.mp-*`` semaphores). They unlink them when they shut down in order; a
server whose engine is killed before its clean-up (its own shutdown timing out on a loaded machine, a SIGKILL of the
group after the grace period) leaves them for good: /dev/shm is memory, and in a container often only 64 MiB.

The launcher lists /dev/shm before it starts the group (:func:`shared_memory_files`), notes which files the group's
processes have mapped or open while they run (:func:`group_shared_memory`, read from ``/proc``), and once the group has
ended unlinks those still there that were not there before and that no live process holds
(:func:`remove_orphaned_shared_memory`). Without ``/proc`` (not Linux) both do nothing.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator

SHARED_MEMORY_DIR = "/dev/shm"
_PREFIX = SHARED_MEMORY_DIR + "/"
_PROC = "/proc"


def group_shared_memory(pgid: int) -> set[str]:
    """The files in /dev/shm that the processes of group ``pgid`` hold (mapped or open), as paths."""
    found: set[str] = set()
    for pid in _group_pids(pgid):
        found |= _held_by(pid)
    return found


def shared_memory_files() -> dict[str, tuple[int, int]]:
    """The files in /dev/shm now, with their (device, inode): what was there before a group started is not its to leave
    (a model file served from RAM, another program's memory)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        with os.scandir(SHARED_MEMORY_DIR) as entries:
            for entry in entries:
                identity = _identity(entry.path)
                if identity is not None:
                    found[entry.path] = identity
    except OSError:
        pass
    return found


def remove_orphaned_shared_memory(
    paths: Iterable[str], *, existed: dict[str, tuple[int, int]], wait_s: float = 5.0, poll_s: float = 0.05
) -> list[str]:
    """Unlink those of ``paths`` (files in /dev/shm) that still exist, were not there before the group started (not in
    ``existed``, :func:`shared_memory_files` then, as the same file), belong to this user and that no live process holds
    any longer, waiting up to ``wait_s`` for processes that were just killed to go; returns the paths removed. A file a
    process still holds after that is left alone (it is someone's, outside the group that made it)."""
    pending = {
        p
        for p in paths
        if os.path.dirname(os.path.normpath(p)) == SHARED_MEMORY_DIR and _own_file(p) and _identity(p) != existed.get(p, (-1, -1))
    }
    removed: list[str] = []
    deadline = time.monotonic() + wait_s
    while pending:
        held = _held_anywhere(pending)
        for path in sorted(pending - held):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
        pending = {p for p in held if os.path.exists(p)}
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return removed


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _own_file(path: str) -> bool:
    try:
        return os.lstat(path).st_uid == os.getuid()
    except OSError:
        return False


def _pids() -> Iterator[int]:
    try:
        names = os.listdir(_PROC)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def _group_pids(pgid: int) -> list[int]:
    pids = []
    for pid in _pids():
        try:
            with open(f"{_PROC}/{pid}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()  # after the command's name, which may hold spaces
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode():  # state, ppid, pgrp
            pids.append(pid)
    return pids


def _held_by(pid: int) -> set[str]:
    """The /dev/shm files process ``pid`` has mapped (``/proc/PID/maps``) or open (``/proc/PID/fd``); those already
    unlinked (``(deleted)``) are not named."""
    held: set[str] = set()
    try:
        with open(f"{_PROC}/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)  # address, perms, offset, device, inode, path
                if len(fields) == 6 and fields[5].startswith(_PREFIX) and not fields[5].endswith(" (deleted)\n"):
                    held.add(fields[5].rstrip("\n"))
    except OSError:
        return held
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"{_PROC}/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"{_PROC}/{pid}/fd/{fd}")
                if target.startswith(_PREFIX):
                    held.add(target)
    return held


def _held_anywhere(paths: set[str]) -> set[str]:
    """Those of ``paths`` that some live process (any this user may read) has mapped or open."""
    held: set[str] = set()
    for pid in _pids():
        held |= _held_by(pid) & paths
        if held == paths:
            break
    return held
