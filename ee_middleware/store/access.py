"""A store's file that the system would not let this process read, told apart from one that is damaged.

Damage is in a file's bytes (cut off, overwritten, not Parquet or JSON at all): ``ee store repair`` takes a damaged
Parquet part out of the store, ``ee store compact`` a damaged spool segment. A file the operating system refused to
give the bytes of (no read permission on it or its folder, a folder or a symbolic link loop where the file should be,
a disk that failed to read) may be whole: moving it to ``quarantine/`` or writing a new one over it would take healthy
records out of the store. Such a file is left where it is and named, with what to do about it.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from ee_middleware.errors import IncompleteReadWarning


class UnreadableFileWarning(IncompleteReadWarning):
    """A store's file could not be read (:func:`refused`): its records are missing from the answer, and it was left
    where it is (not quarantined: it is not known to be damaged)."""


def refused(exc: BaseException) -> OSError | None:
    """``exc`` as the operating system's refusal to read a file, or ``None`` when it is not one: damage found in the
    bytes read, or a file that is not there (:class:`FileNotFoundError`, told apart by each caller).

    Polars reports the system's error inside its own (``... (os error 5)``); that is a refusal too."""
    if isinstance(exc, FileNotFoundError):
        return None
    if isinstance(exc, OSError):
        return exc
    found = re.search(r"\(os error (\d+)\)", str(exc))
    if found is None or int(found.group(1)) == errno.ENOENT:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number))


def read_advice(exc: OSError) -> str:
    """What to do about a store's file that ``exc`` kept from being read (one or two sentences)."""
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return (
            "This user may not read it (the file is not damaged as far as ee can tell): run the command as a user who may "
            "read the store (`ls -l` shows the file's owner), or give this user read permission on the file and its "
            "folder (chmod/chown)."
        )
    if exc.errno == errno.EIO:
        return "The disk holding the store failed to read it: check the disk (dmesg), and restore the file from a backup."
    if isinstance(exc, IsADirectoryError) or exc.errno in (errno.EISDIR, errno.ELOOP, errno.ENOTDIR):
        return (
            "It is not a file the store can read (a folder, or a symbolic link that leads nowhere readable, is where the "
            "store's file should be): move it out of the store folder (restore the file from a backup if you have one)."
        )
    return "Check the file and its folder (permissions, the disk), then try again."


def cannot_read(path: Path | str, exc: OSError) -> str:
    """``Cannot read PATH: REASON.`` and :func:`read_advice`."""
    return f"Cannot read {path}: {exc.strerror or exc}. {read_advice(exc)}"


def store_unreadable(root: Path | str, exc: OSError) -> str:
    """A read of the store at ``root`` failed on one of its files: ``Cannot read the experience store ROOT: FILE:
    REASON.`` and :func:`read_advice`."""
    file = f"{exc.filename}: " if exc.filename is not None else ""
    return f"Cannot read the experience store {root}: {file}{exc.strerror or exc}. {read_advice(exc)}"
