"""A store's file that cannot be read for want of permission (or a folder in its place) is not damage: every ``ee store``
command names it with the real cause and the fix, ``ee store repair`` neither moves nor replaces it, and ``ee store
compact`` leaves it where it is and compacts the rest. Real stores, through the real CLI; permissions are checked as a
user they apply to (for root: root without the capabilities that let it read any file, else ``nobody``: tests/unreadable.py)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.unreadable import HELD, MISSING, ee_as_held_user, needs_held_user, open_folder

runner = CliRunner()


def ee(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder any user may reach, for a permission test's child process (tests/unreadable.py)."""
    with open_folder("ee-unreadable-") as path:
        yield path


@pytest.fixture
def store_path(folder: Path) -> Path:
    """A real store: two compacted Parquet parts per table and two finished spool segments (two writers), every trajectory
    approved; anyone may read and write it (then one file is made unreadable to everyone but root's overrides)."""
    path = folder / "experience"
    store = LocalExperienceStore(path)
    for name in ("first", "second"):
        store.write([sample_trajectory(name)])
        store.compact()
    store.approve(["first", "second"], by="alice")
    store.compact()
    for name in ("spooled", "spooled-too"):
        writer = LocalExperienceStore(path)
        writer.write([sample_trajectory(name)])
        writer.approve([name], by="alice")
        writer.close()
    for inner in [path, *path.rglob("*")]:
        inner.chmod(0o777 if inner.is_dir() else 0o666)
    return path


def _files(root: Path) -> dict[str, str]:
    """Every file of the store by path (relative) and the hash of its bytes; one this test's user may not read (and a
    folder it may not list) by its inode, size and modification time (a suite run as root reads them all)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_dir() and os.access(path, os.R_OK | os.X_OK):
            continue  # its files are listed
        try:
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            seen = path.lstat()
            found[str(path.relative_to(root))] = f"not read: inode {seen.st_ino}, {seen.st_size} bytes, {seen.st_mtime_ns}"
    return found


def _flat(output: str) -> str:
    return " ".join(output.split())


def _segments(store_path: Path) -> list[Path]:
    return sorted(p for p in (store_path / "spool").iterdir() if p.name.endswith(".jsonl"))


def _ids(store_path: Path) -> set[str]:
    """The approved trajectories' ids (as root)."""
    return set(LocalExperienceStore(store_path, create=False).trajectories(status="approved")["id"].to_list())


ALL = {"first", "second", "spooled", "spooled-too"}


@needs_held_user
@pytest.mark.parametrize("unreadable", ["the part", "its folder"])
def test_a_parquet_part_this_user_may_not_read_is_named_and_repair_leaves_it(store_path: Path, unreadable: str) -> None:
    """Before: `Skipped unreadable Parquet part ... Run ee store repair to move it to quarantine/`, and repair moved the
    whole part to quarantine/ (its rows gone from the store); for an unreadable trajectories/ folder repair dropped every
    part of it from manifest.json, then failed."""
    part, *_ = sorted(store_path.glob("trajectories/part-*.parquet"))
    (part if unreadable == "the part" else part.parent).chmod(0)
    before = _files(store_path)

    code, output = ee_as_held_user("store", "info", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Could not read Parquet part {part}: Permission denied" in flat and "chmod" in flat
    assert "to move it to quarantine" not in flat and "`ee store repair` leaves it where it is" in flat

    code, output = ee_as_held_user("store", "repair", "--store", str(store_path), "--json")
    assert code == 1, output
    report = json.loads(output[: output.rindex("}") + 1])
    assert report["quarantined_parts"] == [] and report["missing_parts_dropped"] == []
    assert part in [Path(f["path"]) for f in report["unreadable_files"]]
    code, output = ee_as_held_user("store", "repair", "--store", str(store_path))
    assert code == 1 and f"Cannot read {part}: Permission denied. Left it where it is." in _flat(output), output
    assert _files(store_path) == before and not (store_path / "quarantine").exists()

    code, output = ee_as_held_user("store", "compact", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1 and "damaged parts found" not in flat, output
    if unreadable == "the part":  # the rest compacted
        assert f"Could not read Parquet part {part}" in flat and "files that could not be read were left where they are" in flat
        assert "Compacted 2 spool segment(s)" in flat
    else:  # no new part can be written into a folder this user may not enter: nothing is done
        assert f"Cannot compact {store_path}: [Errno 13] Permission denied: '{part.parent}'" in flat
        assert "Nothing stored was changed or lost" in flat and _files(store_path) == before
    assert part.name in json.loads((store_path / "manifest.json").read_bytes())["parts"]["trajectories"]

    (part if unreadable == "the part" else part.parent).chmod(0o777 if unreadable == "its folder" else 0o666)
    assert _ids(store_path) == ALL  # nothing was lost


@needs_held_user
def test_a_marker_this_user_may_not_read_is_named_and_not_replaced(store_path: Path) -> None:
    """Before: `ee-store.json is unreadable ... Run ee store repair to write a new one`, and repair moved the healthy
    marker to quarantine/ and wrote another."""
    marker = store_path / "ee-store.json"
    marker.chmod(0)
    before = _files(store_path)
    for command in ("info", "compact", "repair"):
        code, output = ee_as_held_user("store", command, "--store", str(store_path))
        flat = _flat(output)
        assert code == 1, (command, output)
        assert f"Cannot read {marker}: Permission denied" in flat and "chmod" in flat, (command, output)
        assert "to write a new one" not in flat and "`ee store repair` leaves it as it is" in flat
    assert _files(store_path) == before and not (store_path / "quarantine").exists()


@needs_held_user
def test_a_manifest_this_user_may_not_read_is_not_replaced(store_path: Path) -> None:
    """Before: reads said `ee store compact writes a new one`, and compact and repair replaced it with a listing of
    every part file (retired ones live again)."""
    manifest = store_path / "manifest.json"
    manifest.chmod(0)
    before = _files(store_path)
    code, output = ee_as_held_user("store", "info", "--store", str(store_path))
    assert code == 0 and f"Cannot read {manifest}: Permission denied" in _flat(output), output
    assert "writes a new one" not in _flat(output)
    for command in ("compact", "repair"):
        code, output = ee_as_held_user("store", command, "--store", str(store_path))
        flat = _flat(output)
        assert code == 1, (command, output)
        assert f"Cannot {command} {store_path}: Cannot read {manifest}: Permission denied" in flat and "Nothing was changed" in flat
    assert _files(store_path) == before


def _make_unreadable(segment: Path, how: str) -> None:
    if how == "no permission":
        segment.chmod(0)
        return
    data = segment.read_bytes()
    segment.unlink()
    if how == "a folder":
        segment.mkdir()
        (segment / "kept").write_bytes(data)  # what was there stays, to be looked at
    else:
        segment.symlink_to(segment)


@pytest.mark.parametrize("how", ["no permission", "a folder", "a symbolic link to itself"])
def test_an_unreadable_spool_segment_is_named_and_compact_folds_the_rest(store_path: Path, how: str) -> None:
    """Before: `ee store compact` failed the whole store on it (`Cannot compact ...: Permission denied ... run as a user who
    may write there`), `ee store repair` said `No damaged parts`, `ee store info` gave a bare file error."""
    if how == "no permission" and HELD is None:
        pytest.skip(MISSING)
    run = ee_as_held_user if how == "no permission" else ee
    unreadable, readable = _segments(store_path)
    before = unreadable.read_bytes() if how == "no permission" else None
    _make_unreadable(unreadable, how)
    reason = {"no permission": "Permission denied", "a folder": "Is a directory", "a symbolic link to itself": "Too many levels"}[how]
    fix = "chmod" if how == "no permission" else "move it out of the store folder"

    code, output = run("store", "info", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Cannot read the experience store {store_path}: {unreadable}: {reason}" in flat and fix in flat

    # the commands that read records name it alike (they told a folder in its place as an output file to write: "Give
    # the path of a file to write", an IsADirectoryError; sweep of 2026-12-07)
    for command in (["traces", "list"], ["traces", "show", "first"], ["replay", "list"], ["traces", "list", "--json"]):
        code, output = run(*command, "--store", str(store_path))
        flat = _flat(output)
        assert code == 1, (command, output)
        assert f"Cannot read the experience store {store_path}: {unreadable}: {reason}" in flat and fix in flat, (command, output)
        assert "file to write" not in flat and "IsADirectoryError" not in flat, (command, output)

    code, output = run("store", "repair", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Cannot read {unreadable}: {reason}" in flat and "Left it where it is" in flat and fix in flat

    code, output = run("store", "compact", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert "Compacted 1 spool segment(s)" in flat
    assert f"Left the spool segment {unreadable} in the spool: Cannot read {unreadable}: {reason}" in flat and fix in flat
    assert "nothing of it was changed or lost" in flat and "damaged parts found" not in flat
    assert not readable.exists() and os.path.lexists(unreadable)  # folded; left where it was
    assert not (store_path / "quarantine").exists()
    if before is not None:
        unreadable.chmod(0o666)
        assert unreadable.read_bytes() == before
        assert _ids(store_path) == ALL
        code, output = ee("store", "compact", "--store", str(store_path))
        assert code == 0 and "Compacted 1 spool segment(s)" in output, output
        assert _segments(store_path) == [] and _ids(store_path) == ALL


def test_a_damaged_part_is_still_moved_to_quarantine(store_path: Path) -> None:
    """The guard: damage in a part's bytes is still damage, which repair takes out of the store."""
    part, *_ = sorted(store_path.glob("trajectories/part-*.parquet"))
    part.write_bytes(part.read_bytes()[:100])
    code, output = ee("store", "repair", "--store", str(store_path), "--json")
    assert code == 0, output
    report = json.loads(output)
    assert [Path(p["part"]) for p in report["quarantined_parts"]] == [part] and not report.get("unreadable_files")
    assert (store_path / "quarantine" / "trajectories" / part.name).exists() and not part.exists()


def test_a_folder_where_a_part_should_be_is_named_and_repair_leaves_it(store_path: Path) -> None:
    """Before: polars read the folder as an empty dataset and called it damage (`failed to retrieve first file schema`);
    repair moved it to quarantine/ and dropped it from manifest.json."""
    part, *_ = sorted(store_path.glob("trajectories/part-*.parquet"))
    data = part.read_bytes()
    part.unlink()
    part.mkdir()
    (part / "kept").write_bytes(data)
    before = _files(store_path)
    code, output = ee("store", "info", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1 and f"Could not read Parquet part {part}: Is a directory" in flat and "move it out of the store folder" in flat
    code, output = ee("store", "repair", "--store", str(store_path))
    assert code == 1 and f"Cannot read {part}: Is a directory. Left it where it is." in _flat(output), output
    assert _files(store_path) == before and part.is_dir() and not (store_path / "quarantine").exists()
    assert part.name in json.loads((store_path / "manifest.json").read_bytes())["parts"]["trajectories"]
