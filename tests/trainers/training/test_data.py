"""A broken dataset file's error names the command that writes that file: ``ee experience dataset`` for em.parquet,
``ee datasets build`` for il/iwm/sr.parquet. Was: every one said "Rebuild it with `ee datasets build`", which refuses
the em kind ("Unknown dataset kind(s) em"), so a user with a damaged em.parquet was sent to a command that cannot
make it. Real files built from a real replayed BFCL store by the two commands, damaged, read by the real loader; the
advice is then followed as written and must make a readable file again."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.trainers.training.data import FILE_NAMES, load_dataset
from ee_middleware.trainers.training.errors import TrainDataError

WRITER = {"il": "ee datasets build", "iwm": "ee datasets build", "sr": "ee datasets build", "em": "ee experience dataset"}


@pytest.fixture(scope="module")
def built(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, folder): a copy of the replayed BFCL store and a folder holding the four dataset files its commands write."""
    root = tmp_path_factory.mktemp("datasets")
    store, folder = root / "experience", root / "data"
    shutil.copytree(replayed_store_template, store)
    for args in (["datasets", "build", "--kinds", "il,iwm,sr"], ["experience", "dataset"]):
        result = CliRunner().invoke(app, [*args, "--store", str(store), "--out", str(folder)])
        assert result.exit_code == 0, result.output
    for kind in FILE_NAMES:
        assert load_dataset(folder, kind).rows, kind
    return store, folder


def _copy(built: tuple[Path, Path], kind: str, tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(built[1] / FILE_NAMES[kind], folder / FILE_NAMES[kind])
    return folder


def _error(folder: Path, kind: str) -> str:
    with pytest.raises(TrainDataError) as caught:
        load_dataset(folder, kind)
    return " ".join(str(caught.value).split())


def _follow(message: str, store: Path, folder: Path, kind: str) -> None:
    """Run the command the message names, as written (its STORE the store), and read the file it names again."""
    (command,) = re.findall(r"Rebuild it with `(ee [^`]+)`", message)
    assert command.startswith(f"{WRITER[kind]} ") and command.endswith(f"--out {folder}"), message
    args = shlex.split(command.replace("STORE", shlex.quote(str(store))))[1:]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert load_dataset(folder, kind).rows


@pytest.mark.parametrize("kind", list(FILE_NAMES))
def test_an_unreadable_dataset_file_names_the_command_that_writes_it(built: tuple[Path, Path], kind: str, tmp_path: Path) -> None:
    folder = _copy(built, kind, tmp_path)
    path = folder / FILE_NAMES[kind]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut off halfway: no footer

    message = _error(folder, kind)

    assert f"{path} is not a readable Parquet file" in message, message
    assert f"Rebuild it with `{WRITER[kind]} --store STORE --out {folder}`" in message, message
    assert {w for w in WRITER.values() if w != WRITER[kind]}.isdisjoint(re.findall(r"ee \w+ \w+", message)), message
    _follow(message, built[0], folder, kind)


@pytest.mark.parametrize("kind", list(FILE_NAMES))
def test_a_dataset_row_that_is_not_a_chat_pair_names_the_command_that_writes_the_file(
    built: tuple[Path, Path], kind: str, tmp_path: Path
) -> None:
    folder = _copy(built, kind, tmp_path)
    path = folder / FILE_NAMES[kind]
    frame = pl.read_parquet(path)
    frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("{not json")).otherwise(pl.col("prompt")).alias("prompt")
    ).write_parquet(path)

    message = _error(folder, kind)

    assert f"{path} row 0" in message and "prompt is not valid JSON" in message, message
    assert f"Rebuild it with `{WRITER[kind]} --store STORE --out {folder}`" in message, message
    _follow(message, built[0], folder, kind)
