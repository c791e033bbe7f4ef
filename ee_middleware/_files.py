"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Every write goes to a temporary file in the destination's folder (so the final rename never crosses
a file system), is flushed and ``fsync``-ed, then renamed over the destination with
:func:`os.replace`, and the folder is ``fsync``-ed so that the rename itself survives a power cut.
If anything fails before the rename, the temporary file is removed and the destination is left as
it was. A file replaced gets no permission it lacked (a private or read-only file stays so); a new one gets the umask's.
:func:`create_exclusive` does the same for a file that must be created once only: it
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
...     savefig(tmp)                                          # writers that want a path
>>> atomic_write_parquet(frame, path, compression="zstd")     # doctest: +SKIP

Parquet is written with :func:`atomic_write_parquet` only: polars reports a failed write as its own error, without the
operating system's (a full disk, a file-size limit met while it writes the footer: "Invalid thrift: transport error"),
so it is given a Python file that keeps that error, and the caller gets the :class:`OSError`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "FileTooLargeError",
    "NotARegularFileError",
    "atomic_open",
    "atomic_path",
    "atomic_write_parquet",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_exclusive",
    "fsync_dir",
    "file_above",
    "file_size_limit",
    "folders_made",
    "fsync_file",
    "named_in_utf8",
    "open_for_lock",
    "parquet_sources",
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


_NAME_MAX = 255
"""The longest file name (in bytes) the file systems ee writes to hold (ext4, xfs, btrfs, tmpfs, NFS)."""


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (hidden, unique, ending in :data:`TMP_SUFFIX`): ``.<name>.<8 hex>.tmp``,
    the destination's name cut (:func:`_temp_stem`) where it would be longer than a file name may be."""
    return path.with_name(f".{_temp_stem(path.name)}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")


_TEMP_ADDED = len(".") + len(".01234567") + len(TMP_SUFFIX)
"""The bytes a temporary file's name adds to its destination's."""


def _temp_stem(name: str) -> str:
    """The part of a temporary file's name that names its destination: ``name``, cut (at a whole character) where the
    temporary name would be longer than :data:`_NAME_MAX` bytes (a destination of 242 to 255 bytes, a name the file
    system holds, could not be written)."""
    encoded = os.fsencode(name)
    room = _NAME_MAX - _TEMP_ADDED
    if len(encoded) <= room:
        return name
    encoded = encoded[:room]
    for _ in range(3):  # a UTF-8 character cut in its middle: drop its first bytes too (other bytes stay as they are)
        try:
            encoded.decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            if exc.reason != "unexpected end of data":
                break
            encoded = encoded[: exc.start]
    return os.fsdecode(encoded)


def cache_folder() -> Path:
    """ee-middleware's cache: ``$EE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/ee-middleware``, ``~/.cache/ee-middleware``):
    ``ee serve``'s chat templates and server records, ``ee train``'s converted GGUF bases."""
    root = os.environ.get("EE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ee-middleware"
    return Path(root).expanduser()


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


class NotARegularFileError(OSError):
    """What is at a path to be replaced by a file is a device, a pipe or a socket (``/dev/stdout``, ``/dev/null``, a
    FIFO): the rename would put a regular file in its place (for root, replacing ``/dev/null`` for every process)."""


_SPECIAL_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe (FIFO)"))


def _destination(path: str | os.PathLike[str]) -> Path:
    """The file an atomic write of ``path`` replaces: the file a symbolic link points to (the link is kept, and its
    target gets the new content, as a shell's ``>`` writes it); refused before anything is written where that is a
    folder (``IsADirectoryError``: the rename would fail only at the end, naming the temporary file) or no regular file
    (:class:`NotARegularFileError`)."""
    final = Path(path)
    try:
        mode = final.stat().st_mode  # (through any links)
    except OSError:
        mode = None  # nothing there (or nothing this process may see): the write says what is wrong
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(final))
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((what for test, what in _SPECIAL_KINDS if test(mode)), "a socket" if stat.S_ISSOCK(mode) else "no regular file")
        raise NotARegularFileError(errno.EINVAL, f"it is {kind}, not a file", os.fspath(final))
    return Path(os.path.realpath(final)) if final.is_symlink() else final


def _keep_mode(tmp: Path, final: Path, fd: int = -1) -> None:
    """Give the new file ``tmp`` no permission the file ``final`` it is about to replace lacks, where there is one: a
    file its owner made private (``chmod 600``) or read-only stays so when it is written again (a new file was created
    ``0666`` less the umask: an owner-only export became world-readable when re-written). Nor more than ``tmp`` was
    made with: a writer that made its file private (a run's copy of a config holding secrets) keeps it so, whatever the
    file it replaces allowed. A new file keeps what it was made with."""
    try:
        old = stat.S_IMODE(os.stat(final).st_mode)
        made = stat.S_IMODE(os.fstat(fd).st_mode if fd >= 0 else os.stat(tmp).st_mode)
    except OSError:
        return  # nothing there yet (or nothing this process may see)
    if made & old == made:
        return
    try:
        if fd >= 0:
            os.fchmod(fd, made & old)
        else:
            os.chmod(tmp, made & old)
    except OSError:  # a file system without modes (FAT, some mounts): the new file keeps what it was made with
        pass


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
    final = _destination(path)
    with _held_temp(final) if locked else contextlib.nullcontext((temp_path_for(final), -1)) as (tmp, _fd):
        try:
            yield tmp
            if fsync:
                fsync_file(tmp)
            _keep_mode(tmp, final)
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
    final = _destination(path)
    # Written through the descriptor that holds the lock: the file is never opened again by name.
    with _held_temp(final) as (tmp, fd):
        try:
            with open(fd, mode, encoding=None if "b" in mode else encoding, closefd=False) as fh:
                yield fh
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            _keep_mode(tmp, final, fd)
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


class FileTooLargeError(OSError):
    """A write failed with ``EFBIG``: the file would pass this process's file-size limit (``ulimit -f``, systemd's
    ``LimitFSIZE=``), or the largest file its file system holds (FAT, some network file systems).

    ``size``: the bytes the file held when the write failed; ``limit``: this process's limit (``None``: unlimited).
    The limit is blamed alone only when the file reached it; otherwise the file system may be the cause.
    ``strerror`` says which, and the fix (:attr:`advice`)."""

    def __init__(self, path: str | os.PathLike[str], size: int, limit: int | None) -> None:
        self.size, self.limit = size, limit
        super().__init__(errno.EFBIG, f"File too large: it would be larger than {self.which}. {self.advice}", os.fspath(path))

    @property
    def by_process_limit(self) -> bool:
        """Whether the file reached this process's file-size limit (then the limit is what stopped it)."""
        return self.limit is not None and self.size >= self.limit

    @property
    def which(self) -> str:
        """What stopped the write, in words."""
        process = f"this process's file-size limit ({self.limit} bytes: `ulimit -f`, systemd's LimitFSIZE=)"
        if self.by_process_limit:
            return process
        if self.limit is not None:
            return f"{process} or the largest file the file system holds (it had {self.size} bytes when the write failed)"
        return f"the largest file the file system holds (it had {self.size} bytes when the write failed)"

    @property
    def advice(self) -> str:
        """The fix, one sentence."""
        raise_it = "raise the limit for this process (`ulimit -f unlimited`, LimitFSIZE=infinity)"
        elsewhere = "write to a file system that holds larger files"
        if self.by_process_limit:
            return f"{raise_it[0].upper()}{raise_it[1:]}, then try again."
        if self.limit is not None:
            return f"{raise_it[0].upper()}{raise_it[1:]}, or {elsewhere}, then try again."
        return f"{elsewhere[0].upper()}{elsewhere[1:]}, then try again."


def file_size_limit() -> int | None:
    """The largest file this process may write (``ulimit -f``, systemd's ``LimitFSIZE=``), ``None`` when unlimited."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


@contextlib.contextmanager
def folders_made(folder: Path) -> Iterator[None]:
    """``mkdir -p folder`` for an output written inside the block; on any failure in it, the folders this call made (not
    one another process made meanwhile) are removed again, innermost first, while they are empty: a failed export or
    dataset build leaves no empty output folder behind."""
    made: list[Path] = []
    try:
        for missing in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
            try:
                missing.mkdir()
            except FileExistsError:
                if not missing.is_dir():
                    raise
                continue
            made.insert(0, missing)
        yield
    except BaseException:
        for made_here in made:
            try:
                made_here.rmdir()
            except OSError:  # something was put into it: it stays, and so do the ones around it
                break
        raise


def named_in_utf8(path: str | os.PathLike[str]) -> bool:
    """Whether polars can open ``path`` by name. A name that is not UTF-8 (a folder named in Latin-1: Linux names are
    bytes; any non-ASCII name in an ASCII-locale Python) it cannot: open the file and give polars the open file."""
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def parquet_sources(paths: list[Path]) -> Iterator[list[Path] | list[BinaryIO]]:
    """``paths`` as ``pl.scan_parquet`` can take them: the paths themselves where polars can open each by name
    (:func:`named_in_utf8`), else the files opened here (closed when the block ends: what reads them must be done by
    then, a lazy frame collected or sunk inside it)."""
    if all(named_in_utf8(path) for path in paths):
        yield paths
        return
    with contextlib.ExitStack() as files:
        yield [files.enter_context(open(path, "rb")) for path in paths]


def atomic_write_parquet(
    frame: pl.DataFrame | pl.LazyFrame, path: str | os.PathLike[str], *, fsync: bool = True, locked: bool = False, **options: Any
) -> None:
    """Replace ``path`` with ``frame`` as Parquet, atomically (:func:`atomic_path`, with its ``fsync`` and ``locked``); a
    :class:`~polars.LazyFrame` is streamed (``sink_parquet``). ``options`` go to polars (``compression``, ``metadata``).

    A write the operating system refused raises its :class:`OSError` (a full disk: ``ENOSPC``; it names no file, as a
    failed write does not), a file too large :class:`FileTooLargeError` naming ``path``, whatever part of the file polars
    was writing; ``path`` is left as it was.
    Polars alone would report these as its own error, the error number lost where it failed writing the footer."""
    import polars as pl

    final = Path(path)
    with atomic_path(final, fsync=fsync, locked=locked) as tmp:
        sink: _KeepsWriteError | None = None
        try:
            # Opened here, not by polars: polars cannot open a name that is not UTF-8 (a folder named in Latin-1). Inside
            # the try: closing the file after a failed write tries the write again, and raises again.
            with open(tmp, "wb") as fh:
                sink = _KeepsWriteError(fh)
                if isinstance(frame, pl.LazyFrame):
                    frame.sink_parquet(sink, **options)
                else:
                    frame.write_parquet(sink, **options)
                sink.flush()
        except (pl.exceptions.PolarsError, OSError) as exc:
            kept = sink.error if sink is not None else None
            error = kept or (exc if isinstance(exc, OSError) else _os_error_in(exc))
            if error is None:
                raise
            if error.errno == errno.EFBIG:
                size = sink.size_at_error if sink is not None and sink.size_at_error is not None else _size(tmp)
                raise FileTooLargeError(final, size, file_size_limit()) from exc
            if error is exc:
                raise
            raise error from exc


def _size(path: Path) -> int:
    """``path``'s size in bytes, 0 when it cannot be read."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class _KeepsWriteError:
    """A binary file for polars to write to that keeps the first :class:`OSError` a write raised (polars reports it as
    text, and drops the error number where it fails writing the footer), and the file's size then."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.error: OSError | None = None
        self.size_at_error: int | None = None

    def _keep(self, exc: OSError) -> None:
        if self.error is None:
            self.error = exc
            try:
                self.size_at_error = os.fstat(self._fh.fileno()).st_size
            except OSError:
                pass

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self._keep(exc)
            raise

    def flush(self) -> None:
        try:
            self._fh.flush()
        except OSError as exc:
            self._keep(exc)
            raise


def _os_error_in(exc: Exception) -> OSError | None:
    """The operating system's error that polars reports inside ``exc`` (``... No space left on device (os error 28)``)."""
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number))


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
        stems = None if of is None else {_temp_stem(name) for name in of}
        names = [p for p in folder.iterdir() if (m := TEMP_NAME.fullmatch(p.name)) and (stems is None or m["name"] in stems)]
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


def file_above(path: Path) -> Path | None:
    """The file standing where a folder above ``path`` should be (so ``path`` can never be written), or None."""
    for parent in path.parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


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


DEMO_MARKER = ".ee-demo-output"
"""The file ee's demos (``examples/``) leave in each folder they make: a folder holding it is one a demo may remove."""


def clear_demo_folders(*named: tuple[Path, str]) -> list[Path]:
    """Remove each folder of ``named`` (``(folder, option)``: the flag that named it, for a refusal) for a demo's new run,
    where it is missing, empty or made by a demo (it, or a folder above it, holds :data:`DEMO_MARKER`); returns them
    absolute. Any other folder is refused (``SystemExit`` naming its option) before any of them is removed: the demos
    removed the folders they were given whatever they held, the working folder included. Make them again with
    :func:`make_demo_folder`."""
    cwd = Path.cwd().resolve()
    checked = []
    for given, option in named:
        given = given.expanduser()
        if given.is_symlink():
            raise SystemExit(f"{option} {given} is a link, which this demo would not remove: give a new or empty folder.")
        folder = given.resolve()
        if cwd.is_relative_to(folder):
            raise SystemExit(f"{option} {folder} is the current folder or holds it, which this demo would remove: give another folder.")
        if folder.exists() and not folder.is_dir():
            raise SystemExit(f"{option} {folder} is not a folder: give a new or empty folder.")
        if folder.is_dir() and any(folder.iterdir()) and not any((f / DEMO_MARKER).is_file() for f in (folder, *folder.parents)):
            raise SystemExit(
                f"Not removing {folder} ({option}): it holds files a demo did not make (no {DEMO_MARKER} in it or above it), "
                "and each run removes and remakes its folders. Give a new or empty folder."
            )
        checked.append(folder)
    for folder in checked:
        if folder.is_dir():
            shutil.rmtree(folder)
    return checked


def make_demo_folder(folder: Path, make: Callable[[Path], object] | None = None) -> Path:
    """Make ``folder`` (with ``make``, e.g. a store's constructor; else a plain folder) and the folders above it that are
    missing, and leave :data:`DEMO_MARKER` in each of them: any demo's later run may remove them. Returns ``folder``."""
    missing = [f for f in (folder, *folder.parents) if not f.exists()]
    folder.parent.mkdir(parents=True, exist_ok=True)
    (make or (lambda f: f.mkdir(exist_ok=True)))(folder)
    for made in missing:
        (made / DEMO_MARKER).write_text("Made by an ee-middleware demo, which removes this folder when it is run again with it.\n")
    return folder
