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


@contextlib.contextmanager
def holder_lock(path: Path, busy: Callable[[str], BaseException], *, doing: str = "") -> Iterator[None]:
    """Hold ``path``'s lock for the block; when another process holds it, raise ``busy(holder)`` at once
    (``holder``: what that process wrote, e.g. ``pid 123 on host since 2026-11-30T05:00:00+00:00``, followed by
    ``: DOING`` when it passed ``doing``, e.g. ``promote of support-bot-v3-1a2b3c4d by alice``)."""
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise busy(fh.read().strip() or "another process") from None
        try:
            fh.seek(0)
            fh.truncate()
            since = datetime.now(UTC).isoformat(timespec="seconds")
            fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {since}{': ' + doing if doing else ''}\n")
            fh.flush()
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
