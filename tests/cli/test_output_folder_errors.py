"""An output path that is an existing folder is named as the user gave it. ``ee datasets export FILE -o FOLDER`` said
``error: /tmp/x/.FOLDER.7b7c5ed9.tmp is a folder; a file is expected there``: the atomic write's temporary file, which
the user never typed (``os.replace`` names the destination second, as ``filename2``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware._files import atomic_write_bytes, temp_path_for
from ee_middleware.cli.app import _describe_os_error, app


def test_datasets_export_into_a_folder_names_the_folder_and_the_fix(bfcl_store_path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    built = runner.invoke(app, ["datasets", "build", "--store", str(bfcl_store_path), "--kinds", "il", "--out", str(tmp_path / "ds")])
    assert built.exit_code == 0, built.output
    folder = tmp_path / "outdir"
    folder.mkdir()
    result = runner.invoke(app, ["datasets", "export", str(tmp_path / "ds" / "il.parquet"), "-o", str(folder)])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith(f"error: {folder} is a folder; a file is expected there"), result.stderr
    assert f"{folder / 'NAME'}" in result.stderr and ".tmp" not in result.stderr, result.stderr
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".*.tmp")), "nothing left behind"


def test_a_rename_onto_a_folder_names_the_destination_not_the_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "report.json"
    folder.mkdir()
    temporary = temp_path_for(folder)  # as an atomic write names it
    temporary.write_text("{}")
    with pytest.raises(IsADirectoryError) as raised:
        os.replace(temporary, folder)
    message = _describe_os_error(raised.value)
    assert message.startswith(f"{folder} is a folder; a file is expected there") and ".tmp" not in message, message


def test_a_rename_of_the_users_own_files_names_both(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as raised:
        os.replace(tmp_path / "a.jsonl", tmp_path / "gone" / "b.jsonl")
    message = _describe_os_error(raised.value)
    assert message.startswith(f"{tmp_path / 'a.jsonl'} -> {tmp_path / 'gone' / 'b.jsonl'}: "), message


def test_an_atomic_write_onto_a_folder_fails_first_naming_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "out.jsonl"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        atomic_write_bytes(folder, b"x" * 1000)
    assert raised.value.filename == str(folder), "the path the caller gave, not the temporary file"
    assert list(tmp_path.iterdir()) == [folder], "no temporary file was written"
