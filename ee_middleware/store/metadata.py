"""Small named blobs kept with a store: the redaction settings (``redaction.json``) and the pseudonym salt (``redaction.key``).

Capture writes them when it first writes to a store; replay, the dataset builders, the exports and ingest read them, so
that every writer after capture redacts with capture's rules and makes the same pseudonym of the same value. A store
keeps them in one of two ways, tried in this order:

- its own ``read_meta(name)`` and ``write_meta(name, data, *, exclusive=False)`` methods
  (:class:`~ee_middleware.store.protocol.KeepsMetadata`; the local store implements them with files in its folder);
- files in its local ``root`` folder, for a store without the methods that has one (a plug-in wrapping a folder, as
  before the methods existed).

A store with neither keeps nothing: :func:`keeps_metadata` is False, and
:func:`~ee_middleware.capture.store_redaction.record_store_redaction` refuses rules its later writers would lose (and
warns about pseudonyms that differ per process).
"""

from __future__ import annotations

import fcntl
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ee_middleware._files import atomic_write_bytes, create_exclusive

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A metadata blob's name: a plain file name of ASCII letters, digits, ``.``, ``_`` and ``-`` (``redaction.json``)."""

METHODS = ("read_meta", "write_meta")


class MetadataNotKeptWarning(UserWarning):
    """A store keeps no metadata blobs (neither ``read_meta``/``write_meta`` nor a local folder): what that loses."""


def check_meta_name(name: str) -> str:
    """``name``, when it is a valid metadata name (:data:`NAME`); :class:`ValueError` otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a metadata name: use a plain file name of letters, digits, '.', '_' and '-'.")
    return name


def has_meta_methods(store: Any) -> bool:
    """Whether ``store`` offers ``read_meta`` and ``write_meta`` (:class:`~ee_middleware.store.protocol.KeepsMetadata`)."""
    return all(callable(getattr(store, method, None)) for method in METHODS)


def local_folder(store: Any) -> Path | None:
    """The folder ``store`` keeps its own files in where it is the embedded local store; ``None`` for a store of any other
    kind, whatever its ``root`` is: a plug-in's ``root`` (``info()['root']``) may name a database file, a URL or a folder
    of its own layout, which nothing but the plug-in reads or writes."""
    from ee_middleware.store.local import LocalExperienceStore

    return store.root if isinstance(store, LocalExperienceStore) else None


def meta_folder(store: Any) -> Path | None:
    """The local folder a store without the methods keeps its blobs in (its ``root``), or ``None``."""
    root = getattr(store, "root", None)
    return Path(root) if root is not None else None


def keeps_metadata(store: Any) -> bool:
    """Whether ``store`` keeps metadata blobs: through its own methods, or as files in its ``root`` folder."""
    return has_meta_methods(store) or meta_folder(store) is not None


def read_meta(store: Any, name: str) -> bytes | None:
    """The blob ``name`` kept with ``store``; ``None`` when there is none, or the store keeps none."""
    check_meta_name(name)
    if has_meta_methods(store):
        data = store.read_meta(name)
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"{type(store).__name__}.read_meta({name!r}) returned {type(data).__name__}; it must return bytes or None.")
        return bytes(data) if data is not None else None
    folder = meta_folder(store)
    return read_file(folder / name) if folder is not None else None


def write_meta(store: Any, name: str, data: bytes, *, exclusive: bool = False) -> bool:
    """Keep ``data`` as the blob ``name`` of ``store`` atomically; with ``exclusive``, only when there is no such blob.

    Returns whether it was written. A store that keeps no metadata (:func:`keeps_metadata`) raises :class:`ValueError`:
    callers check first, and say what is lost."""
    check_meta_name(name)
    if has_meta_methods(store):
        return bool(store.write_meta(name, data, exclusive=exclusive))
    folder = meta_folder(store)
    if folder is None:
        raise ValueError(f"{store!r} keeps no metadata: it has neither read_meta()/write_meta() nor a local root folder.")
    return write_file(folder / name, data, exclusive=exclusive)


def meta_where(store: Any, name: str) -> str:
    """Where the blob ``name`` of ``store`` is, for messages: a file's path, or the name and the store."""
    folder = meta_folder(store)
    if folder is not None and (not has_meta_methods(store) or folder.is_dir()):
        return str(folder / name)
    return f"{name} (kept by {store!r})"


@contextmanager
def meta_locked(store: Any, lock_name: str) -> Iterator[None]:
    """Hold ``<root>/<lock_name>`` locked (``flock``) around a read-modify-write of blobs, for a store with a local
    folder: its writers on one machine take turns. Other stores have no shared lock (their writers read back)."""
    folder = meta_folder(store)
    if folder is None or (has_meta_methods(store) and not folder.is_dir()):  # a plug-in's `root` may name no local folder
        yield
        return
    with open(folder / lock_name, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --- blobs as files of a folder (the local store's methods, and stores with only a root) ----------------------------------


def read_file(path: Path) -> bytes | None:
    """The file's bytes; ``None`` when it is not there."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def write_file(path: Path, data: bytes, *, exclusive: bool = False) -> bool:
    """Replace ``path`` with ``data`` atomically; with ``exclusive``, create it owner-only unless it exists (one of many
    processes doing this at once wins, and the others find its file). Returns whether it was written."""
    if exclusive:
        return create_exclusive(path, bytes(data), mode=0o600)
    atomic_write_bytes(path, bytes(data))
    return True
