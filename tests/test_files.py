"""The one atomic-write helper: whole new file or the old one, never half, never a stray temp file."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from ee_middleware import _files
from ee_middleware._files import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text


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
