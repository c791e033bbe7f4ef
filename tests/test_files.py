"""The one atomic-write helper: whole new file or the old one, never half, never a stray temp file."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest

from ee_middleware import _files
from ee_middleware._files import (
    UNLOCKED_TEMP_AGE_S,
    atomic_open,
    atomic_path,
    atomic_write_bytes,
    atomic_write_parquet,
    atomic_write_text,
    create_exclusive,
    open_for_lock,
    remove_abandoned_temps,
    temp_path_for,
)
from tests.store.mounts import nfs_locks_stand_in, no_locks_stand_in, open_fds, read_only_view


class Boom(Exception):
    pass


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(_files.TMP_SUFFIX))


def test_write_bytes_and_text_replace_the_file_and_leave_no_temp_file(tmp_path: Path):
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    text = tmp_path / "note.txt"
    atomic_write_text(text, "h\u00e9llo \u65e5\u672c\n")
    assert text.read_text(encoding="utf-8") == "h\u00e9llo \u65e5\u672c\n"
    assert _leftovers(tmp_path) == []


def test_a_failure_mid_write_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path):
    target = tmp_path / "export.jsonl"
    target.write_text("old contents\n")
    with pytest.raises(Boom), atomic_open(target, "w") as fh:
        fh.write("half of the new")
        fh.flush()
        assert _leftovers(tmp_path), "the new contents go to a temporary file beside the target"
        raise Boom
    assert target.read_text() == "old contents\n"
    assert _leftovers(tmp_path) == []


def test_a_failing_path_writer_keeps_the_old_file(tmp_path: Path):
    target = tmp_path / "il.parquet"
    pl.DataFrame({"a": [1]}).write_parquet(target)

    with pytest.raises(Boom), atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.name != target.name
        pl.DataFrame({"a": [2, 3]}).write_parquet(tmp)
        raise Boom
    assert pl.read_parquet(target)["a"].to_list() == [1]
    assert _leftovers(tmp_path) == []

    with atomic_path(target) as tmp:
        pl.DataFrame({"a": [2, 3]}).write_parquet(tmp)
    assert pl.read_parquet(target)["a"].to_list() == [2, 3]
    assert _leftovers(tmp_path) == []


def test_a_failed_rename_keeps_the_old_file_and_removes_the_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "manifest.json"
    target.write_text("{}")

    def refuse(src: object, dst: object) -> None:
        raise OSError("disk went away")

    monkeypatch.setattr(_files.os, "replace", refuse)
    with pytest.raises(OSError, match="disk went away"):
        atomic_write_text(target, '{"new": true}')
    assert target.read_text() == "{}"
    assert _leftovers(tmp_path) == []


def test_file_and_folder_are_fsynced_before_and_after_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(_files.os, "fsync", fsync)
    monkeypatch.setattr(_files.os, "replace", replace)
    atomic_write_bytes(tmp_path / "a", b"x")
    assert events == ["fsync-file", "replace", "fsync-dir"]

    events.clear()
    with atomic_path(tmp_path / "b") as tmp:
        tmp.write_bytes(b"y")
    assert events == ["fsync-file", "replace", "fsync-dir"]

    events.clear()
    atomic_write_bytes(tmp_path / "c", b"z", fsync=False)
    assert events == ["replace"]


def test_only_whole_file_modes_are_accepted(tmp_path: Path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_open(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []


def _left_by_a_killed_writer(final: Path, written_ago: float) -> Path:
    """A temporary file for ``final`` that no process holds, last written ``written_ago`` seconds ago."""
    left = temp_path_for(final)
    left.write_bytes(b"half")
    then = time.time() - written_ago
    os.utime(left, (then, then))
    return left


def test_writes_go_on_unlocked_on_a_file_system_without_locks_stand_in_no_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Where ``flock`` fails (ENOLCK: NFS without a lock daemon) every writer still writes, unlocked, and leaves neither
    a temporary file nor a descriptor behind; without the fallback each of these raised "No locks available"."""
    no_locks_stand_in(monkeypatch)
    pl.DataFrame({"a": [1]}).write_parquet(tmp_path / "warm.parquet")  # polars' first write opens descriptors it keeps
    (tmp_path / "warm.parquet").unlink()
    before = open_fds(tmp_path)
    atomic_write_text(tmp_path / "a.json", "x")
    atomic_write_bytes(tmp_path / "b", b"y")
    with atomic_open(tmp_path / "c", "w") as fh:
        fh.write("z")
    assert create_exclusive(tmp_path / "k", b"s", mode=0o600) is True
    assert create_exclusive(tmp_path / "k", b"t") is False
    with atomic_path(tmp_path / "d.parquet", locked=True) as tmp:
        pl.DataFrame({"a": [1]}).write_parquet(tmp)
    assert [(tmp_path / n).read_bytes() for n in ("a.json", "b", "c", "k")] == [b"x", b"y", b"z", b"s"]
    assert pl.read_parquet(tmp_path / "d.parquet")["a"].to_list() == [1]
    assert _leftovers(tmp_path) == []
    assert open_fds(tmp_path) == before


@pytest.mark.parametrize("min_age_s", [0.0, 2 * UNLOCKED_TEMP_AGE_S])
def test_on_a_file_system_without_locks_a_sweep_removes_a_temporary_file_once_old_stand_in_no_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, min_age_s: float
):
    """No writer holds a lock there, so age alone tells a killed writer's file: it was kept for good, whatever its age.
    Now one last written :data:`UNLOCKED_TEMP_AGE_S` ago (or ``min_age_s``, if longer) goes; a younger one stays."""
    no_locks_stand_in(monkeypatch)
    bound = max(min_age_s, UNLOCKED_TEMP_AGE_S)
    young = _left_by_a_killed_writer(tmp_path / "a.json", bound - 60)
    old = _left_by_a_killed_writer(tmp_path / "a.json", bound + 60)
    assert remove_abandoned_temps(tmp_path, min_age_s=min_age_s) == [old]
    assert _leftovers(tmp_path) == [young.name]


HOLDER = """
import sys
from ee_middleware._files import atomic_open
with atomic_open(sys.argv[1], "w") as fh:  # a live writer, holding its temporary file
    print("held", flush=True)
    sys.stdin.read()
"""


def test_on_nfs_a_sweep_removes_a_killed_writers_temporary_file_and_keeps_a_live_ones_stand_in_nfs_locks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The sweep opened each file read-only, and NFS grants an exclusive lock only on a file open for writing: every
    lock failed (EBADF) and every file was kept, however old. Now it opens them for writing; a live writer (a real
    process holding its file) still keeps its own."""
    nfs_locks_stand_in(monkeypatch)
    left = _left_by_a_killed_writer(tmp_path / "a.json", 7200)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "b.json")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        (busy,) = [p for p in tmp_path.iterdir() if p.name.startswith(".b.json.")]
        assert remove_abandoned_temps(tmp_path) == [left]
        assert _leftovers(tmp_path) == [busy.name]
    finally:
        holder.communicate("", timeout=60)
    assert (tmp_path / "b.json").exists() and _leftovers(tmp_path) == []


def test_a_file_that_cannot_be_opened_for_writing_is_opened_to_lock_read_only(tmp_path: Path):
    """On a read-only mount (EROFS) the descriptor falls back to read-only; elsewhere it is open for writing."""
    (tmp_path / "f").write_bytes(b"")
    fd = open_for_lock(tmp_path / "f")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    finally:
        os.close(fd)
    with read_only_view(tmp_path) as view:
        fd = open_for_lock(view / "f")
        try:
            assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


@pytest.mark.parametrize("where", ["flock", "stat"])
def test_an_interrupt_while_the_temporary_file_is_locked_removes_it_and_closes_it_stand_in_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
):
    """Stand-in: a Ctrl-C lands in the writer's ``flock`` (which waits while a sweep holds the new file) or in its check
    that the file is still there. The descriptor stayed open (from ``flock``) and the temporary file stayed on disk."""
    module = _files.fcntl if where == "flock" else _files.os
    real = getattr(module, where)
    calls: list[object] = []

    def interrupted(*args: object, **kwargs: object) -> object:
        if not calls:
            calls.append(args)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, where, interrupted)
    before = open_fds(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(tmp_path / "a.json", "x")
    monkeypatch.undo()
    assert calls, "the interrupt landed"
    assert _leftovers(tmp_path) == []
    assert open_fds(tmp_path) == before
    assert not (tmp_path / "a.json").exists()


def test_an_atomic_write_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    """Sweep W: the rename replaced the link itself with a file; the file it pointed to kept the old content."""
    target = tmp_path / "shared" / "out.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)
    atomic_write_text(link, "new\n")
    assert link.is_symlink() and link.resolve() == target and target.read_text() == "new\n"
    with atomic_path(link) as tmp:
        tmp.write_text("newer\n")
    assert link.is_symlink() and target.read_text() == "newer\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.jsonl"], "no temporary file left"


@pytest.mark.parametrize("kind", ["fifo", "link_to_fifo"])
def test_an_atomic_write_to_a_pipe_or_device_is_refused_and_leaves_it_in_place(tmp_path: Path, kind: str) -> None:
    """Sweep W: ``ee traces export -o /dev/stdout`` (or a FIFO, ``/dev/null``) put a regular file in the device's place,
    for root for every process, said it wrote there, and the reader got nothing."""
    import stat

    from ee_middleware._files import NotARegularFileError
    from ee_middleware.errors import os_error_advice

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    path = fifo if kind == "fifo" else tmp_path / "stdout"
    if kind != "fifo":
        path.symlink_to(fifo)
    with pytest.raises(NotARegularFileError, match="it is a pipe \\(FIFO\\), not a file") as refused:
        atomic_write_text(path, "data\n")
    assert refused.value.filename == str(path) and "device, pipe or socket" in os_error_advice(refused.value, output=True)
    with pytest.raises(NotARegularFileError), atomic_path(path):
        pass
    assert stat.S_ISFIFO(fifo.stat().st_mode) and (kind == "fifo" or path.is_symlink())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"pipe", path.name}), "nothing written beside it"


@pytest.mark.parametrize("mode", [0o600, 0o444, 0o640])
def test_a_file_written_again_keeps_its_permission_bits_and_a_new_one_gets_the_umasks(tmp_path: Path, mode: int) -> None:
    """Before: every atomic write made its file 0666 less the umask, so an export its owner had made private (chmod 600)
    became world-readable when the same command wrote it again, and a read-only one became writable."""
    import stat

    old = os.umask(0o022)
    try:
        writers = {
            "text": lambda p: atomic_write_text(p, "new\n"),
            "bytes": lambda p: atomic_write_bytes(p, b"new\n"),
            "parquet": lambda p: atomic_write_parquet(pl.DataFrame({"a": [1]}), p),
        }
        for name, write in writers.items():
            path = tmp_path / f"{name}.out"
            write(path)
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, name  # new: the umask's
            path.chmod(mode)
            write(path)
            assert stat.S_IMODE(path.stat().st_mode) == mode, name
            assert path.read_bytes()[:4] in (b"new\n", b"PAR1"), name
            path.chmod(0o644)
    finally:
        os.umask(old)


@pytest.mark.parametrize("name", ["a" * 250, "é" * 127, "中" * 85], ids=["ascii", "two-byte", "three-byte"])
def test_a_file_whose_name_is_as_long_as_a_name_may_be_is_written(tmp_path: Path, name: str) -> None:
    """Before: a name of 242 to 255 bytes (one the file system holds, `touch` makes it) failed with "File name too long":
    the temporary file's name added 14 bytes to it."""
    assert len(os.fsencode(name)) <= 255
    atomic_write_text(tmp_path / name, "x")
    atomic_write_parquet(pl.DataFrame({"a": [1]}), tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    left = temp_path_for(tmp_path / name)  # as a killed writer leaves it: swept by its destination's name
    left.write_text("half")
    assert len(os.fsencode(left.name)) <= 255 and remove_abandoned_temps(tmp_path, of={name}) == [left]
