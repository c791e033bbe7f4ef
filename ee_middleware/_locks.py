"""A lock file that names its holder: one process at a time does a job on a folder (a run, an eval).

The lock is an ``flock`` on the file, so it is released when the holding process exits, even when it
is killed; while held, the file says which process holds it (pid, host, since when), for the error
the next process gives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ee_middleware._files import open_for_lock


@contextlib.contextmanager
def holder_lock(path: Path, busy: Callable[[str], BaseException], *, doing: str = "", remove: bool = False) -> Iterator[None]:
    """Hold ``path``'s lock for the block; when another process holds it, raise ``busy(holder)`` at once
    (``holder``: what that process wrote, e.g. ``pid 123 on host since 2026-11-30T05:00:00+00:00``, followed by
    ``: DOING`` when it passed ``doing``, e.g. ``promote of support-bot-v3-1a2b3c4d by alice``).

    ``remove``: the lock file is removed at the end of the block (a lock beside a folder it guards, which should leave
    nothing behind). A process that opened the file before it was removed and locked it after finds it no longer at
    ``path`` and takes the lock again on the file there, so two processes never hold it at once."""
    while True:
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (closed below, or by the with block)
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            fh.close()
            raise busy(holder) from None
        if remove and not _still_at(fh, path):  # removed by the holder before: lock the file at path now
            fh.close()
            continue
        break
    with fh:
        try:
            fh.seek(0)
            fh.truncate()
            since = datetime.now(UTC).isoformat(timespec="seconds")
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}{': ' + doing if doing else ''}\n")
            fh.flush()
            yield
        finally:
            if remove:
                with contextlib.suppress(OSError):
                    path.unlink()  # while still held: whoever opened it meanwhile sees it gone and retries
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock_held(path: Path) -> bool:
    """Whether some process holds ``path``'s ``flock`` now (one working under it: its lock is tried without waiting and
    dropped at once); ``False`` where no such file is. An ``OSError`` opening it is raised."""
    if not path.is_file():
        return False
    fd = open_for_lock(path)  # (read-only where this user may not write it: `ee runs list` on a read-only mount)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # an exclusive lock on a read-only descriptor (NFS): a shared one is refused just the same
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return False


def _still_at(fh: Any, path: Path) -> bool:
    """Whether the open file ``fh`` is still the file at ``path``."""
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)
