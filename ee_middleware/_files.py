"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every write goes to a temporary file in the destination's folder (so the final rename never crosses
a file system), is flushed and ``fsync``-ed, then renamed over the destination with
:func:`os.replace`, and the folder is ``fsync``-ed so that the rename itself survives a power cut.
If anything fails before the rename, the temporary file is removed and the destination is left as
it was. :func:`create_exclusive` does the same for a file that must be created once only: it
hard-links the temporary file into place instead, which fails when the destination exists.

>>> atomic_write_text(path, "hello\\n")                       # doctest: +SKIP
>>> with atomic_open(path, "w") as fh:                        # doctest: +SKIP
...     for line in lines:
...         fh.write(line)
>>> with atomic_path(path) as tmp:                            # doctest: +SKIP
...     frame.write_parquet(tmp)                              # writers that want a path
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_open",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_exclusive",
    "fsync_dir",
    "fsync_file",
    "pid_alive",
    "remove_left_behind",
    "temp_path_for",
]

TMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<name>.<random>.tmp`` beside their destination."""


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (hidden, unique, ending in :data:`TMP_SUFFIX`)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (renames, new and deleted files) to disk. No-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory; the data itself is already synced
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush one file's contents to disk (for files a library wrote and closed itself)."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path`` atomically.

    For writers that take a file name (``DataFrame.write_parquet``, ``savefig``). The temporary
    name ends in ``.tmp``: pass the format explicitly to writers that guess it from the suffix.
    On an exception the temporary file is removed, ``path`` is untouched and the exception goes on.
    """
    final = Path(path)
    tmp = temp_path_for(final)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = "utf-8", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"`` (bytes). On an exception the temporary
    file is removed, ``path`` is untouched and the exception goes on.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    with atomic_path(path, fsync=False) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as fh:
        yield fh
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())
    if fsync:
        fsync_dir(Path(path).parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_open(path, "wb", fsync=fsync) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8", fsync: bool = True) -> None:
    """Replace ``path`` with ``text`` atomically (see the module docstring)."""
    with atomic_open(path, "w", encoding=encoding, fsync=fsync) as fh:
        fh.write(text)


def create_exclusive(path: str | os.PathLike[str], data: bytes, *, mode: int = 0o666, fsync: bool = True) -> bool:
    """Create ``path`` holding ``data`` unless it exists; returns whether this call created it.

    Written whole to a temporary file beside ``path`` (made with ``mode``, less the umask) and hard-linked into place,
    which fails when ``path`` exists: of many processes doing this at once one wins, and the others find its file,
    never half of one. With ``fsync`` the file, and the folder once the link is made or found, reach the disk. Raises
    :class:`OSError` where the file system has no hard links (``EPERM``, ``ENOTSUP``), and :class:`FileNotFoundError`
    when the temporary file was removed before the link (a sweep of left-behind temporary files)."""
    final = Path(path)
    tmp = temp_path_for(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        try:
            os.link(tmp, final)
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    if fsync:
        fsync_dir(final.parent)
    return created


def remove_left_behind(parent: Path, pattern: str, marker: str) -> None:
    """Remove the folders matching ``pattern`` in ``parent`` whose process (the pid after ``marker``) is gone.

    For work folders named ``...<marker><pid>[-...]`` that a killed process left; a live process's are kept."""
    for left in parent.glob(pattern):
        if left.is_dir() and not pid_alive(left.name.rpartition(marker)[2].split("-")[0]):
            shutil.rmtree(left, ignore_errors=True)


def pid_alive(pid: str) -> bool:
    """Whether the process ``pid`` (text) still runs (a folder not named by a pid counts as in use)."""
    if not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
