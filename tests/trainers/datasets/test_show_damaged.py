"""``ee datasets show`` on a damaged dataset file: an error naming the file (and the row), what is wrong and the command
that writes the file again, the one ``ee train`` names for the same damage (the store and options the build's
datasets.json records, ``--out`` the build's folder). Was: without --tokenizer a row whose prompt is not JSON crashed
while showing the examples ("unexpected JSONDecodeError ... a bug in ee-middleware"), and with --json it was counted
and measured as if it were a row; an unreadable file said "Rebuild it with ee datasets build." (the defaults, which
hold nothing out and remove heldout/). Real files built by ``ee datasets build`` from a real replayed BFCL store, then
damaged; the advice is followed as written and ``show`` then shows the folder again, with the same --json keys."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.trainers.datasets.build import read_dataset
from ee_middleware.trainers.training.data import load_dataset
from ee_middleware.trainers.training.errors import TrainDataError

OPTIONS = ("--heldout-share 0.4", "--seed 7")


@pytest.fixture(scope="module")
def built(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, folder): a copy of the replayed BFCL store and ``ee datasets build`` of it with a held-out split."""
    root = tmp_path_factory.mktemp("show")
    store, folder = root / "experience", root / "data"
    shutil.copytree(replayed_store_template, store)
    args = ["datasets", "build", "--store", str(store), "--out", str(folder), "--kinds", "il,iwm,sr", *" ".join(OPTIONS).split()]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert all((folder / "heldout" / f"{kind}.parquet").is_file() for kind in ("il", "iwm", "sr"))
    return store, folder


def _copy(built: tuple[Path, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(built[1], folder)
    return folder


def _show(target: Path, *args: str) -> tuple[int, str]:
    """The exit code and the error line (stderr: with --json, stdout holds the same error as a JSON object)."""
    result = CliRunner().invoke(app, ["datasets", "show", str(target), *args])
    if "--json" in args and result.exit_code:
        assert json.loads(result.stdout)["error"]["exit_code"] == result.exit_code, result.stdout
    return result.exit_code, " ".join(result.stderr.split())


def _keys(target: Path) -> dict[str, list[str]]:
    """The keys of each dataset ``show --json`` describes (a contract)."""
    result = CliRunner().invoke(app, ["datasets", "show", str(target), "--json"])
    assert result.exit_code == 0, result.output
    return {name: sorted(d) for name, d in json.loads(result.stdout).items()}


def _follow(message: str, store: Path, folder: Path) -> None:
    """The one command (in backticks) ``message`` names is the build's own: its store, ``--out`` the build's folder, its
    options; run as written, it writes the folder again."""
    (command,) = re.findall(r"`(ee [^`]+)`", message)
    assert command.startswith(f"ee datasets build --store {store} --out {folder} "), message
    assert all(option in command for option in OPTIONS), message
    assert f"{folder / 'datasets.json'} records" in message, message
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output


def _break_prompt(path: Path, row: int) -> None:
    frame = pl.read_parquet(path)
    assert frame.height > row, path
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row).then(pl.lit("{not json")).otherwise(pl.col("prompt")).alias("prompt")
    ).write_parquet(path)


@pytest.mark.parametrize("name", ["il.parquet", "sr.parquet", "heldout/iwm.parquet"])
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_show_names_a_row_whose_prompt_is_not_json_and_the_build_that_writes_it_again(
    built: tuple[Path, Path], name: str, as_json: bool, tmp_path: Path
) -> None:
    folder = _copy(built, tmp_path)
    keys = _keys(folder)
    path = folder / name
    _break_prompt(path, 1)  # the second row: the first example shows before it

    code, output = _show(path.parent, *(["--json"] if as_json else []))

    assert code == 1, output
    assert "unexpected" not in output and "JSONDecodeError" not in output, output
    assert f"{path} row 1 (id " in output and "prompt is not valid JSON" in output, output
    with pytest.raises(TrainDataError) as caught:  # the same words ee train's loader has for it
        load_dataset(path.parent, path.stem)
    assert " ".join(str(caught.value).split()) in output
    _follow(output, built[0], folder)
    assert _keys(folder) == keys


@pytest.mark.parametrize("name", ["il.parquet", "heldout/sr.parquet"])
def test_show_of_an_unreadable_file_names_the_build_that_writes_it_again(built: tuple[Path, Path], name: str, tmp_path: Path) -> None:
    folder = _copy(built, tmp_path)
    keys = _keys(folder)
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut off halfway: no footer

    code, output = _show(path.parent)

    assert code == 1, output
    assert f"Dataset {path} is not readable Parquet" in output, output
    with pytest.raises(ConfigError) as caught:
        read_dataset(path)
    assert " ".join(str(caught.value).split()) in output
    _follow(output, built[0], folder)
    assert _keys(folder) == keys


def test_read_dataset_names_the_build_of_a_file_without_the_dataset_columns_or_missing(built: tuple[Path, Path], tmp_path: Path) -> None:
    """``ee datasets export`` reads with :func:`read_dataset` too: a file without a prompt column, and a held-out file
    that is not there, name the build's own command (not ``--out FOLDER/heldout``, a training build nested in heldout/)."""
    folder = _copy(built, tmp_path)
    path = folder / "heldout" / "il.parquet"
    pl.read_parquet(path).drop("prompt").write_parquet(path)
    with pytest.raises(ConfigError) as caught:
        read_dataset(path)
    message = " ".join(str(caught.value).split())
    assert f"Dataset {path} lacks column(s) prompt" in message, message
    _follow(message, built[0], folder)
    assert read_dataset(path).height

    path.unlink()
    result = CliRunner().invoke(app, ["datasets", "export", str(path), "--out", str(tmp_path / "il.jsonl")])
    assert result.exit_code == 1, result.output
    message = " ".join(result.output.split())
    assert f"Dataset {path} does not exist" in message, message
    (command,) = re.findall(r"`(ee [^`]+)`", message)
    assert command.startswith(f"ee datasets build --store {built[0]} --out {folder} ") and all(o in command for o in OPTIONS), message


def test_an_unreadable_file_of_another_name_names_both_commands_that_write_dataset_files(tmp_path: Path) -> None:
    path = tmp_path / "old-il.parquet"
    path.write_bytes(b"not parquet")
    code, output = _show(path)
    assert code == 1 and f"Dataset {path} is not readable Parquet" in output, output
    assert "`ee datasets build --store STORE --out FOLDER`" in output and "`ee experience dataset --store STORE --out FOLDER`" in output
