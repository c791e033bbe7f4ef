"""``ee traces export`` says whose fault a failure is: the store's (naming its file and the fix) or the output's
(naming the output file), and on any failure leaves no partial or temporary file and an existing output untouched."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware import LocalExperienceStore
from ee_middleware.cli.app import app
from ee_middleware.testing.store_conformance import sample_trajectory
from tests.unreadable import ee_as_held_user, needs_held_user, open_folder

runner = CliRunner()
OLD = "an earlier export, to be kept as it is\n"


def ee(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder any user may reach, for a permission test's child process (tests/unreadable.py)."""
    with open_folder("ee-export-") as path:
        yield path


@pytest.fixture
def store_path(folder: Path) -> Path:
    """A real store: two compacted Parquet parts and one spool segment, every trajectory approved."""
    path = folder / "experience"
    store = LocalExperienceStore(path)
    for name in ("first", "second"):
        store.write([sample_trajectory(name)])
        store.compact()
    store.write([sample_trajectory("spooled")])
    store.approve(["first", "second", "spooled"], by="alice")
    return path


@pytest.fixture
def out(folder: Path) -> Path:
    """An existing output file (an earlier export) in a folder anyone may write to."""
    outputs = folder / "exports"
    outputs.mkdir()
    outputs.chmod(0o777)
    path = outputs / "train.jsonl"
    path.write_text(OLD)
    path.chmod(0o666)
    return path


def _untouched(out: Path) -> None:
    """The earlier export is as it was, and nothing else is beside it (no partial or temporary file)."""
    assert out.read_text() == OLD
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def _segment(store_path: Path) -> Path:
    (segment,) = [p for p in (store_path / "spool").iterdir() if p.name.endswith(".jsonl")]
    return segment


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_damaged_parquet_part_is_named_with_the_fix_not_the_output(store_path: Path, out: Path, fmt: str) -> None:
    (part, *_) = sorted(store_path.glob("trajectories/part-*.parquet"))
    part.write_bytes(part.read_bytes()[:100])  # truncated: a full disk, a bad copy
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out))
    assert code == 1
    assert f"unreadable Parquet part {part}" in output and "ee store repair" in output and "--allow-partial" in output
    assert "Cannot write" not in output
    _untouched(out)
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out), "--allow-partial")
    assert code == 0 and "Wrote" in output, output  # the rest
    assert out.read_bytes() != OLD.encode()


def test_trajectories_whose_steps_were_in_a_damaged_part_are_left_out_for_that_reason(store_path: Path, out: Path) -> None:
    """Before: with a steps part emptied, --allow-partial left its trajectories out as ones "that teach nothing (each:
    its run called no model: a resumed run that the reviewed calls alone ended)"."""
    (part, *_) = sorted(store_path.glob("steps/part-*.parquet"))
    part.write_bytes(b"")
    code, output = ee("traces", "export", "--store", str(store_path), "--format", "jsonl", "--out", str(out), "--allow-partial")
    flat = " ".join(output.split())
    assert code == 0 and "recorded steps could not be read (a damaged part of the store left out of this read)" in flat, output
    assert "called no model" not in flat


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
@pytest.mark.parametrize("damage", ["a folder", "a symbolic link to itself"])
def test_an_unreadable_spool_segment_is_named_not_the_output(store_path: Path, out: Path, fmt: str, damage: str) -> None:
    """Before, the JSONL export said `Cannot write OUT: Is a directory ... Check the folder's permissions` of the
    output, and the Parquet one a bare OSError; the segment is the store's file."""
    segment = _segment(store_path)
    segment.unlink()
    if damage == "a folder":
        segment.mkdir()
    else:
        segment.symlink_to(segment)
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out))
    assert code == 1, output
    flat = " ".join(output.split())  # the error line is wrapped at the terminal's width
    assert f"Cannot read the experience store {store_path}: {segment}" in flat
    assert f"Nothing was written to {out}" in flat and "move it out of the store folder" in flat
    assert "Cannot write" not in flat
    _untouched(out)


@needs_held_user
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_spool_segment_the_user_may_not_read_is_named_not_the_output(store_path: Path, out: Path, fmt: str) -> None:
    """Before: `Cannot write OUT: Permission denied ... run as a user who may write there` (JSONL)."""
    segment = _segment(store_path)
    segment.chmod(0)
    code, output = ee_as_held_user("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out))
    assert code == 1, output
    flat = " ".join(output.split())
    assert f"Cannot read the experience store {store_path}: {segment}: Permission denied" in flat
    assert "may read the store" in flat and "Cannot write" not in flat
    _untouched(out)


@needs_held_user
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_output_folder_the_user_may_not_write_is_named(store_path: Path, out: Path, fmt: str) -> None:
    out.parent.chmod(0o555)  # no one's, not even its owner's
    code, output = ee_as_held_user("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out))
    assert code == 1, output
    flat = " ".join(output.split())
    assert f"Cannot write {out}: Permission denied. Nothing was written." in flat and "Cannot read" not in flat
    _untouched(out)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_output_path_that_is_a_folder_is_named(store_path: Path, out: Path, fmt: str) -> None:
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out.parent))
    assert code == 1 and f"{out.parent} is a folder; give the file to write" in " ".join(output.split())
    _untouched(out)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_an_output_path_ending_in_a_slash_is_a_folder_and_no_file_is_written_there(store_path: Path, out: Path, fmt: str) -> None:
    """Before: ``--out exports/`` wrote a file named ``exports`` (Path drops the slash), and ``--out train.jsonl/``
    replaced the file ``train.jsonl``, where a shell says "Not a directory"."""
    new_folder = out.parent / "new"
    for given in (f"{new_folder}/", f"{out}/"):
        code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", given)
        flat = " ".join(output.split())
        assert code == 2 and "ends in '/', which names a folder: --out names the file to write, e.g. --out" in flat, output
    assert not new_folder.exists()
    _untouched(out)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_store_folder_removed_during_the_export_fails_and_says_so(
    store_path: Path, out: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: `Wrote 0 examples` over the earlier export (exit 0), with a note that the store holds no approved
    trajectories. The folder is removed once the command has opened the store, before it reads it."""
    import ee_middleware.cli.traces as traces

    opened = traces.open_existing_store

    def open_then_removed(spec: str) -> object:
        store = opened(spec)
        shutil.rmtree(store_path)
        return store

    monkeypatch.setattr(traces, "open_existing_store", open_then_removed)
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(out))
    assert code == 1, output
    flat = " ".join(output.split())
    assert f"The experience store {store_path} was removed (or moved) while the export read it" in flat
    assert f"nothing was written to {out}" in flat
    _untouched(out)


def test_a_missing_output_folder_is_made(store_path: Path, out: Path) -> None:
    target = out.parent / "new" / "deeper" / "train.jsonl"
    code, output = ee("traces", "export", "--store", str(store_path), "--format", "jsonl", "--out", str(target))
    assert code == 0 and "Wrote" in output, output
    assert target.read_text().count("\n") >= 3


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_a_failed_export_removes_the_output_folders_it_made_and_only_those(store_path: Path, out: Path, fmt: str) -> None:
    """Before: the JSONL export made NEW/DEEPER before it read the store, and left both behind when the store failed."""
    segment = _segment(store_path)
    segment.unlink()
    segment.mkdir()  # the store cannot be read
    there = out.parent / "there"  # an empty folder that was already there stays
    there.mkdir()
    target = there / "new" / "deeper" / f"train.{fmt}"
    code, output = ee("traces", "export", "--store", str(store_path), "--format", fmt, "--out", str(target))
    assert code == 1 and f"Cannot read the experience store {store_path}: {segment}" in " ".join(output.split()), output
    assert there.is_dir() and list(there.iterdir()) == []
