"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every write goes to a temporary file in the destination's folder (so the final rename never crosses
a file system), is flushed and ``fsync``-ed, then renamed over the destination with
:func:`os.replace`, and the folder is ``fsync``-ed so that the rename itself survives a power cut.
If anything fails before the rename, the temporary file is removed and the destination is left as
it was. :func:`create_exclusive` does the same for a file that must be created once only: it
hard-links the temporary file into place instead, which fails when the destination exists.

The temporary files of :func:`atomic_open`, :func:`atomic_write_bytes`, :func:`atomic_write_text` and
:func:`create_exclusive` are held ``flock``-ed by their writer from their creation until they are
renamed or removed, so that :func:`remove_abandoned_temps` removes only those a killed writer left,
never one a live writer is about to rename (so are :func:`atomic_path`'s with ``locked=True``). On a file system
that takes no locks the writers write unlocked, and the sweep goes by age alone (:data:`UNLOCKED_TEMP_AGE_S`).

>>> atomic_write_text(path, "hello\\n")                       # doctest: +SKIP
>>> with atomic_open(path, "w") as fh:                        # doctest: +SKIP
...     for line in lines:
...         fh.write(line)
>>> with atomic_path(path) as tmp:                            # doctest: +SKIP
...     frame.write_parquet(tmp)                              # writers that want a path
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import time
import uuid
from collections.abc import Collection, Iterator
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
    "open_for_lock",
    "pid_alive",
    "remove_abandoned_temps",
    "remove_left_behind",
    "temp_path_for",
]

TMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<name>.<random>.tmp`` beside their destination."""

TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}" + re.escape(TMP_SUFFIX))
"""The name :func:`temp_path_for` gives a temporary file; ``name`` is its destination's."""

UNLOCKED_TEMP_AGE_S = 3600.0
"""How long ago a temporary file must have been last written before :func:`remove_abandoned_temps` removes it on a file
system that takes no locks: no writer there holds one, so its age is all that tells a killed writer's file from a live
one's."""

_NO_LOCKS = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL})
"""What ``flock`` fails with on a file system that takes no locks (NFS mounted without a lock daemon: ENOLCK)."""


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


def open_for_lock(path: str | os.PathLike[str], flags: int = 0, mode: int = 0o666) -> int:
    """A descriptor of ``path`` to ``flock`` exclusively: open for reading and writing, or for reading only where writing
    is refused (the file's permissions, a read-only mount). ``flags`` are added (``O_CREAT``, ``O_NOFOLLOW``).

    An NFS client emulates ``flock`` with byte-range locks, and an exclusive one needs a file open for writing
    (``man 2 flock``): on a read-only descriptor it fails with ``EBADF``. Opening one for writing changes nothing in it."""
    try:
        return os.open(path, os.O_RDWR | flags, mode)
    except OSError as exc:
        if not isinstance(exc, PermissionError) and exc.errno != errno.EROFS:
            raise
    return os.open(path, os.O_RDONLY | flags, mode)


@contextlib.contextmanager
def _held_temp(final: Path, mode: int = 0o666) -> Iterator[tuple[Path, int]]:
    """Create a fresh temporary file beside ``final`` (made with ``mode``, less the umask) and hold it ``flock``-ed;
    yield its path and a descriptor open for writing, closed (which drops the lock) when the block ends: after the
    caller renamed or linked it into place, or removed it. On a file system that takes no locks it is held unlocked.

    A sweep (:func:`remove_abandoned_temps`) that locked the new file between its creation and this lock, taking it for
    a killed writer's, removed it: then another is made. Interrupted (Ctrl-C) before it is yielded, the file is removed."""
    while True:
        tmp = temp_path_for(final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # no locks here: written unlocked, and sweeps go by its age (UNLOCKED_TEMP_AGE_S)
                break
            try:
                if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
    try:
        yield tmp, fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True, locked: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces ``path`` atomically.

    For writers that take a file name (``DataFrame.write_parquet``, ``savefig``). The temporary
    name ends in ``.tmp``: pass the format explicitly to writers that guess it from the suffix.
    On an exception the temporary file is removed, ``path`` is untouched and the exception goes on.

    By default the writer creates the temporary file, so it is not held locked: in a folder that
    :func:`remove_abandoned_temps` sweeps, use this only where no sweep can run meanwhile (the
    store's parts, written and swept under its compaction lock). With ``locked`` the file is created
    here (empty) and held locked until after the rename, so that sweeps leave it alone, as long as
    the writer writes into it by name (``open``, ``write_parquet``) rather than putting another file
    in its place.
    """
    final = Path(path)
    with _held_temp(final) if locked else contextlib.nullcontext((temp_path_for(final), -1)) as (tmp, _fd):
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
    final = Path(path)
    # Written through the descriptor that holds the lock: the file is never opened again by name.
    with _held_temp(final) as (tmp, fd):
        try:
            with open(fd, mode, encoding=None if "b" in mode else encoding, closefd=False) as fh:
                yield fh
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    if fsync:
        fsync_dir(final.parent)


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
    never half of one. With ``fsync`` the file, and the folder once the link is made or found, reach the disk. The
    temporary file is held locked until it is removed (:func:`remove_abandoned_temps` leaves it alone). Raises
    :class:`OSError` where the file system has no hard links (``EPERM``, ``ENOTSUP``), and :class:`FileNotFoundError`
    when the temporary file was removed before the link by a sweep that does not look at locks (an older version's)."""
    final = Path(path)
    with _held_temp(final, mode) as (tmp, fd):
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
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


def remove_abandoned_temps(folder: Path, *, min_age_s: float = 0.0, of: Collection[str] | None = None) -> list[Path]:
    """Remove the temporary files in ``folder`` (named by :func:`temp_path_for`) that killed writers left; returns them.

    One is removed only when no process holds it locked (the writers here hold theirs until they rename or remove it)
    and it was last written at least ``min_age_s`` seconds ago: the age spares writers that take no lock (another
    program, an older version), so give one where such writers may be under way. ``of``: only the temporary files of
    these destination names. On a file system that takes no locks, where no writer holds one either, a file is removed
    once it is :data:`UNLOCKED_TEMP_AGE_S` old (or ``min_age_s``, if longer). A file that cannot be opened, or that
    cannot be locked for another reason, is kept."""
    try:
        names = [p for p in folder.iterdir() if (m := TEMP_NAME.fullmatch(p.name)) and (of is None or m["name"] in of)]
    except OSError:
        return []  # no such folder, or it cannot be listed: nothing to remove
    removed = []
    for left in names:
        try:
            fd = open_for_lock(left, os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            age = min_age_s
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError while a writer holds it
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    continue
                age = max(min_age_s, UNLOCKED_TEMP_AGE_S)
            st = os.fstat(fd)
            if time.time() - st.st_mtime >= age and os.path.samestat(st, os.stat(left)):
                left.unlink()  # still locked by this sweep: a writer that created it just now finds it gone and makes another
                removed.append(left)
        except OSError:  # renamed or removed meanwhile, or not ours to remove
            pass
        finally:
            os.close(fd)
    return removed


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
