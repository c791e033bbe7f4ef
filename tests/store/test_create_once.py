"""Files the local store creates once only, whole, by any of many processes: the store's marker (``ee-store.json``)
and exclusive metadata blobs (the redaction salt ``redaction.key``). One helper writes both
(:func:`ee_middleware._files.create_exclusive`); a real store in a real folder, ``os.fsync`` observed."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from ee_middleware.store import LocalExperienceStore
from ee_middleware.store.local import MARKER
from ee_middleware.testing.store_conformance import sample_trajectory


class _Synced:
    """``os.fsync`` that records what it was called on (file or folder, by inode), each call then made for real."""

    def __init__(self) -> None:
        self.real = os.fsync
        self.calls: list[tuple[int, bool]] = []

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.calls.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        self.real(fd)

    def folders(self) -> set[int]:
        return {ino for ino, is_dir in self.calls if is_dir}

    def files(self) -> set[int]:
        return {ino for ino, is_dir in self.calls if not is_dir}


@pytest.fixture
def synced(monkeypatch: pytest.MonkeyPatch) -> _Synced:
    spy = _Synced()
    monkeypatch.setattr(os, "fsync", spy)
    return spy


def _temporary_files(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.endswith(".tmp")]


def test_a_blob_created_once_reaches_the_disk_with_its_folder(tmp_path: Path, synced: _Synced) -> None:
    """Defect: ``write_meta(exclusive=True)`` synced the new file but not the folder holding its name, where the
    store's marker (and every other atomic write) syncs both: a power cut could lose a redaction salt already used to
    pseudonymise records, and the next process would make another."""
    store = LocalExperienceStore(tmp_path / "s")
    synced.calls.clear()
    assert store.write_meta("redaction.key", b"salt-1", exclusive=True) is True
    key = store.root / "redaction.key"
    assert key.read_bytes() == b"salt-1"
    assert key.stat().st_ino in synced.files()
    assert store.root.stat().st_ino in synced.folders(), "the store folder, which holds the new name, was not synced"
    store.close()


def test_a_blob_that_exists_is_kept_and_the_folder_naming_it_is_synced(tmp_path: Path, synced: _Synced) -> None:
    """The caller that finds another process's blob goes on with it: that blob's name is made durable too."""
    store = LocalExperienceStore(tmp_path / "s")
    store.write_meta("redaction.key", b"first", exclusive=True)
    synced.calls.clear()
    assert store.write_meta("redaction.key", b"second", exclusive=True) is False
    assert store.read_meta("redaction.key") == b"first"
    assert store.root.stat().st_ino in synced.folders()
    assert _temporary_files(store.root) == []
    store.close()


def test_a_blob_created_once_is_owner_only_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = LocalExperienceStore(tmp_path / "s")
    store.write_meta("redaction.key", b"salt", exclusive=True)
    assert stat.S_IMODE((store.root / "redaction.key").stat().st_mode) == 0o600
    store.write_meta("redaction.json", b"{}")  # not exclusive: replaced whole
    store.write_meta("redaction.json", b'{"a": 1}')
    assert store.read_meta("redaction.json") == b'{"a": 1}'
    assert _temporary_files(store.root) == []
    store.close()


def test_a_new_stores_marker_reaches_the_disk_with_its_folder_and_a_store_without_fsync_syncs_neither(
    tmp_path: Path, synced: _Synced
) -> None:
    store = LocalExperienceStore(tmp_path / "s")
    marker = store.root / MARKER
    assert marker.stat().st_ino in synced.files() and store.root.stat().st_ino in synced.folders()
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(marker.stat().st_mode) == 0o666 & ~umask  # readable by all who may read the store
    store.close()
    synced.calls.clear()
    LocalExperienceStore(tmp_path / "unsynced", fsync=False).close()
    assert synced.calls == []


def _no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    def link(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", link)


def test_on_a_file_system_without_hard_links_the_marker_is_written_whole_stand_in_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``link`` is refused (some network and FUSE file systems; here a stand-in), the marker is renamed into place
    instead (every creator's says the same); an exclusive blob is refused, since two processes could each keep one."""
    _no_hard_links(monkeypatch)
    store = LocalExperienceStore(tmp_path / "s")
    assert LocalExperienceStore(tmp_path / "s", create=False).root == store.root
    assert _temporary_files(store.root) == []
    with pytest.raises(OSError) as caught:
        store.write_meta("redaction.key", b"salt", exclusive=True)
    assert caught.value.errno == errno.EPERM
    assert store.read_meta("redaction.key") is None and _temporary_files(store.root) == []
    store.close()


@pytest.mark.parametrize("umask", [0o002, 0o022])
def test_the_spools_creation_lock_is_writable_by_whom_the_umask_lets_so_others_can_compact_a_shared_store(
    tmp_path: Path, umask: int
) -> None:
    """Compaction locks ``spool/.create.lock`` exclusively, which NFS grants only on a descriptor open for writing. It
    was made 0o644 whatever the umask: on a group-shared store (umask 002) only its creator could compact (others fell
    back to reading it, and NFS refused the lock: 'Bad file descriptor')."""
    from ee_middleware.store.spool import CREATION_LOCK

    before = os.umask(umask)
    try:
        store = LocalExperienceStore(tmp_path / "s")
        store.write([sample_trajectory("a")])
        assert store.compact() == 1
        store.close()
    finally:
        os.umask(before)
    [lock] = list((tmp_path / "s").rglob(CREATION_LOCK))
    assert stat.S_IMODE(lock.stat().st_mode) == 0o666 & ~umask
