"""A store's file that cannot be read for want of permission (or a folder in its place) is not damage: every ``ee store``
command names it with the real cause and the fix, ``ee store repair`` neither moves nor replaces it, and ``ee store
compact`` leaves it where it is and compacts the rest. Real stores, through the real CLI; permissions are checked as a
user they apply to (for root: ``nobody``, or root without the capabilities that let it read any file)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory

runner = CliRunner()
ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
NOBODY = 65534
NO_READ_OVERRIDE = "-dac_override,-dac_read_search"
"""The capabilities that let root read, write and search any file whatever its permissions: without them root is held
to a file's mode bits like anyone (a mode-000 file is unreadable to its owner too)."""


def ee(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def _user_switches() -> list[list[str]]:
    return [
        [SETPRIV or "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"],
        [SETPRIV or "setpriv", f"--inh-caps={NO_READ_OVERRIDE}", f"--bounding-set={NO_READ_OVERRIDE}"],
    ]


def _runs_python(switch: list[str]) -> bool:
    try:
        done = subprocess.run([*switch, sys.executable, "-c", "import ee_middleware.cli.app"], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _another_user() -> list[str] | None:
    """How to run a command as a user that file permissions stop: ``[]`` for this process's own (not root); for root, the
    ``nobody`` user (as tests/cli/test_traces_export_failures.py does) or, where nobody cannot reach this Python (a
    virtual environment under /root), root without its read-any-file capabilities; ``None`` when neither runs."""
    if not ROOT:
        return []
    if SETPRIV is None:
        return None
    return next((switch for switch in _user_switches() if _runs_python(switch)), None)


ANOTHER_USER = _another_user()
needs_another_user = pytest.mark.skipif(
    ANOTHER_USER is None, reason="root, and neither nobody nor root without CAP_DAC_OVERRIDE can run this Python"
)


def ee_as_another_user(*args: str) -> tuple[int, str]:
    """The CLI run by a user that file permissions apply to (see :func:`_another_user`)."""
    if not ANOTHER_USER:
        return ee(*args)
    done = subprocess.run(
        [*ANOTHER_USER, sys.executable, "-m", "ee_middleware.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": "/tmp", "COLUMNS": "4000"},
        timeout=300,
    )
    return done.returncode, done.stdout + done.stderr


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder anyone may reach (pytest's own tmp_path is its owner's only)."""
    path = Path(tempfile.mkdtemp(prefix="ee-unreadable-"))
    path.chmod(0o755)
    yield path
    for inner in [path, *path.rglob("*")]:
        if not inner.is_symlink():
            inner.chmod(0o755 if inner.is_dir() else 0o644)
    shutil.rmtree(path)


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
    """Every file of the store by path (relative) and the hash of its bytes (as root: whatever their permissions)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _flat(output: str) -> str:
    return " ".join(output.split())


def _segments(store_path: Path) -> list[Path]:
    return sorted(p for p in (store_path / "spool").iterdir() if p.name.endswith(".jsonl"))


def _ids(store_path: Path) -> set[str]:
    """The approved trajectories' ids (as root)."""
    return set(LocalExperienceStore(store_path, create=False).trajectories(status="approved")["id"].to_list())


ALL = {"first", "second", "spooled", "spooled-too"}


@needs_another_user
@pytest.mark.parametrize("unreadable", ["the part", "its folder"])
def test_a_parquet_part_this_user_may_not_read_is_named_and_repair_leaves_it(store_path: Path, unreadable: str) -> None:
    """Before: `Skipped unreadable Parquet part ... Run ee store repair to move it to quarantine/`, and repair moved the
    whole part to quarantine/ (its rows gone from the store); for an unreadable trajectories/ folder repair dropped every
    part of it from manifest.json, then failed."""
    part, *_ = sorted(store_path.glob("trajectories/part-*.parquet"))
    (part if unreadable == "the part" else part.parent).chmod(0)
    before = _files(store_path)

    code, output = ee_as_another_user("store", "info", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Could not read Parquet part {part}: Permission denied" in flat and "chmod" in flat
    assert "to move it to quarantine" not in flat and "`ee store repair` leaves it where it is" in flat

    code, output = ee_as_another_user("store", "repair", "--store", str(store_path), "--json")
    assert code == 1, output
    report = json.loads(output[: output.rindex("}") + 1])
    assert report["quarantined_parts"] == [] and report["missing_parts_dropped"] == []
    assert part in [Path(f["path"]) for f in report["unreadable_files"]]
    code, output = ee_as_another_user("store", "repair", "--store", str(store_path))
    assert code == 1 and f"Cannot read {part}: Permission denied. Left it where it is." in _flat(output), output
    assert _files(store_path) == before and not (store_path / "quarantine").exists()

    code, output = ee_as_another_user("store", "compact", "--store", str(store_path))
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


@needs_another_user
def test_a_marker_this_user_may_not_read_is_named_and_not_replaced(store_path: Path) -> None:
    """Before: `ee-store.json is unreadable ... Run ee store repair to write a new one`, and repair moved the healthy
    marker to quarantine/ and wrote another."""
    marker = store_path / "ee-store.json"
    marker.chmod(0)
    before = _files(store_path)
    for command in ("info", "compact", "repair"):
        code, output = ee_as_another_user("store", command, "--store", str(store_path))
        flat = _flat(output)
        assert code == 1, (command, output)
        assert f"Cannot read {marker}: Permission denied" in flat and "chmod" in flat, (command, output)
        assert "to write a new one" not in flat and "`ee store repair` leaves it as it is" in flat
    assert _files(store_path) == before and not (store_path / "quarantine").exists()


@needs_another_user
def test_a_manifest_this_user_may_not_read_is_not_replaced(store_path: Path) -> None:
    """Before: reads said `ee store compact writes a new one`, and compact and repair replaced it with a listing of
    every part file (retired ones live again)."""
    manifest = store_path / "manifest.json"
    manifest.chmod(0)
    before = _files(store_path)
    code, output = ee_as_another_user("store", "info", "--store", str(store_path))
    assert code == 0 and f"Cannot read {manifest}: Permission denied" in _flat(output), output
    assert "writes a new one" not in _flat(output)
    for command in ("compact", "repair"):
        code, output = ee_as_another_user("store", command, "--store", str(store_path))
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
    if how == "no permission" and ANOTHER_USER is None:
        pytest.skip("root, and neither nobody nor root without CAP_DAC_OVERRIDE can run this Python")
    run = ee_as_another_user if how == "no permission" else ee
    unreadable, readable = _segments(store_path)
    _make_unreadable(unreadable, how)
    reason = {"no permission": "Permission denied", "a folder": "Is a directory", "a symbolic link to itself": "Too many levels"}[how]
    fix = "chmod" if how == "no permission" else "move it out of the store folder"

    code, output = run("store", "info", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Cannot read the experience store {store_path}: {unreadable}: {reason}" in flat and fix in flat

    code, output = run("store", "repair", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert f"Cannot read {unreadable}: {reason}" in flat and "Left it where it is" in flat and fix in flat

    before = unreadable.read_bytes() if how == "no permission" else None
    code, output = run("store", "compact", "--store", str(store_path))
    flat = _flat(output)
    assert code == 1, output
    assert "Compacted 1 spool segment(s)" in flat
    assert f"Left the spool segment {unreadable} in the spool: Cannot read {unreadable}: {reason}" in flat and fix in flat
    assert "nothing of it was changed or lost" in flat and "damaged parts found" not in flat
    assert not readable.exists() and os.path.lexists(unreadable)  # folded; left where it was
    assert not (store_path / "quarantine").exists()
    if before is not None:
        assert unreadable.read_bytes() == before
        unreadable.chmod(0o666)
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
