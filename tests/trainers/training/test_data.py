"""A broken dataset file's error names the command that writes that file again as it was: ``ee experience dataset`` for
em.parquet, ``ee datasets build`` for il/iwm/sr.parquet. Was: every one said "Rebuild it with `ee datasets build`", which
refuses the em kind ("Unknown dataset kind(s) em"), so a user with a damaged em.parquet was sent to a command that
cannot make it; then (8c714a5) `ee datasets build --store STORE --out FOLDER`, the defaults: for a folder built with a
held-out split that command, run as written, removed heldout/ and trained on the held-out trajectories, and for a file
in heldout/ it named ``--out FOLDER/heldout``, a training build nested in the held-out folder. Now the command carries the
store and the options the build's datasets.json records, and is ``--out`` the build's folder. Real files built from a
real replayed BFCL store by the two commands, damaged, read by the real loader; the advice is then followed as written
and must write the same files again."""

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
from ee_middleware.trainers.training.data import FILE_NAMES, check_one_build, load_dataset
from ee_middleware.trainers.training.errors import MissingDatasetError, TrainDataError

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
    command = _command(message)
    assert command.startswith(f"{WRITER[kind]} ") and command.endswith(f"--out {folder}"), message
    _run(command.replace("STORE", shlex.quote(str(store))))
    assert load_dataset(folder, kind).rows


def _command(message: str) -> str:
    """The one command (in backticks) ``message`` names."""
    (command,) = re.findall(r"`(ee [^`]+)`", message)
    return command


def _run(command: str) -> None:
    result = CliRunner().invoke(app, shlex.split(command)[1:])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("kind", list(FILE_NAMES))
def test_an_unreadable_dataset_file_names_the_command_that_writes_it(built: tuple[Path, Path], kind: str, tmp_path: Path) -> None:
    folder = _copy(built, kind, tmp_path)
    path = folder / FILE_NAMES[kind]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut off halfway: no footer

    message = _error(folder, kind)

    assert f"{path} is not a readable Parquet file" in message, message
    assert f"Rebuild it with `{WRITER[kind]} --store STORE --out {folder}` and the options it was built with" in message, message
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
    assert f"Rebuild it with `{WRITER[kind]} --store STORE --out {folder}` and the options it was built with" in message, message
    _follow(message, built[0], folder, kind)


BUILD_OPTIONS = ["--kinds", "il,iwm,sr", "--heldout-share", "0.4", "--seed", "7", "--sr-k", "2", "--max-error-share", "0.3"]
"""A build with a held-out split and other settings than the defaults."""
EM_OPTIONS = ["--held-out", "0.4", "--seed", "5", "--top-k", "1"]


def _files(folder: Path) -> dict[str, pl.DataFrame]:
    """Every dataset file of a build's folder (heldout/ included), by its path relative to the folder."""
    return {str(p.relative_to(folder)): pl.read_parquet(p) for p in sorted(folder.rglob("*.parquet"))}


def _split(folder: Path) -> dict[str, list[str]]:
    split = json.loads((folder / "datasets.json").read_text())["split"]
    return {side: split[side] for side in ("train_trajectories", "heldout_trajectories")}


def _same_files(folder: Path, original: Path) -> None:
    before, after = _files(original), _files(folder)
    assert sorted(after) == sorted(before)
    for name, frame in before.items():
        assert after[name].equals(frame), name


@pytest.fixture(scope="module")
def built_with_options(replayed_store_template: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(store, folder): a copy of the replayed BFCL store and a build of it with :data:`BUILD_OPTIONS` (heldout/ has files)."""
    root = tmp_path_factory.mktemp("options")
    store, folder = root / "experience", root / "data"
    shutil.copytree(replayed_store_template, store)
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(store), "--out", str(folder), *BUILD_OPTIONS])
    assert result.exit_code == 0, result.output
    assert {f"heldout/{name}" for name in ("il.parquet", "iwm.parquet", "sr.parquet")} <= set(_files(folder))
    assert all(_split(folder).values())
    return store, folder


@pytest.mark.parametrize("name", ["il.parquet", "iwm.parquet", "sr.parquet", "heldout/il.parquet", "heldout/sr.parquet"])
def test_a_damaged_file_of_a_build_with_options_names_the_build_s_store_and_options_and_following_it_writes_the_same_files(
    built_with_options: tuple[Path, Path], name: str, tmp_path: Path
) -> None:
    store, original = built_with_options
    folder = tmp_path / "data"
    shutil.copytree(original, folder)
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    message = _error(path.parent, path.stem)

    command = _command(message)
    assert command.startswith(f"ee datasets build --store {store} --out {folder} "), message  # the build's folder, not heldout/
    for option in ("--heldout-share 0.4", "--seed 7", "--sr-k 2", "--max-error-share 0.3"):
        assert option in command, message
    assert f"{folder / 'datasets.json'} records" in message and "STORE" not in command, message
    _run(command)
    _same_files(folder, original)
    assert _split(folder) == _split(original)


def test_ee_train_on_heldout_names_the_build_s_folder_not_heldout(built_with_options: tuple[Path, Path], tmp_path: Path) -> None:
    """``ee train --data DATA/heldout`` with a row that is not a chat pair (the read fails before the held-out check): the
    rebuild is ``--out DATA`` (one into heldout/ would nest a training build in it), and it writes the same files again."""
    original = built_with_options[1]
    folder = tmp_path / "data"
    shutil.copytree(original, folder)
    path = folder / "heldout" / "iwm.parquet"
    pl.read_parquet(path).with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("{not json")).otherwise(pl.col("prompt")).alias("prompt")
    ).write_parquet(path)

    args = ["train", "--base-model", str(tmp_path / "no-model"), "--data", str(folder / "heldout"), "--schedule", "iwm"]
    result = CliRunner().invoke(app, [*args, "--max-steps", "1", "--output-dir", str(tmp_path / "adapter"), "--no-progress"])

    message = " ".join(result.output.split())
    assert result.exit_code == 1 and f"{path} row 0" in message and "prompt is not valid JSON" in message, message
    command = _command(message)
    args = shlex.split(command)
    assert args[args.index("--out") + 1] == str(folder), message
    _run(command)
    _same_files(folder, original)


def test_a_missing_kind_in_a_build_s_folder_names_the_build_s_options_with_that_kind_added(
    built_with_options: tuple[Path, Path], tmp_path: Path
) -> None:
    """Building the missing kind as named keeps the folder's held-out split and its other files as they were."""
    store, original = built_with_options
    folder = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["datasets", "build", "--store", str(store), "--out", str(folder), *BUILD_OPTIONS[2:], "--kinds", "il"]
    )
    assert result.exit_code == 0, result.output

    with pytest.raises(MissingDatasetError) as caught:
        load_dataset(folder, "sr")

    command = _command(" ".join(str(caught.value).split()))
    assert "--kinds il,sr " in command and "--heldout-share 0.4" in command, command
    _run(command)
    rebuilt = _files(folder)
    assert sorted(rebuilt) == ["heldout/il.parquet", "heldout/sr.parquet", "il.parquet", "sr.parquet"]
    for name, frame in rebuilt.items():
        assert frame.equals(pl.read_parquet(original / name)), name
    assert _split(folder) == _split(original)


def test_files_of_two_builds_name_the_latest_build_s_options(built_with_options: tuple[Path, Path], tmp_path: Path) -> None:
    """check_one_build's "Rebuild them together" keeps the latest build's held-out split (it was --kinds alone: run as
    written it built every trajectory into training, the held-out ones too)."""
    store, original = built_with_options
    older = tmp_path / "older"
    result = CliRunner().invoke(app, ["datasets", "build", "--store", str(store), "--out", str(older), "--kinds", "iwm"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "data"
    result = CliRunner().invoke(
        app, ["datasets", "build", "--store", str(store), "--out", str(folder), *BUILD_OPTIONS[2:], "--kinds", "il"]
    )
    assert result.exit_code == 0, result.output
    iwm = pl.read_parquet(older / "iwm.parquet")
    iwm.with_columns(pl.lit("another-state").alias("source_hash")).write_parquet(folder / "iwm.parquet")  # an older build's file

    with pytest.raises(TrainDataError) as caught:
        check_one_build({kind: load_dataset(folder, kind) for kind in ("il", "iwm")})

    command = _command(" ".join(str(caught.value).split()))
    assert "--kinds il,iwm " in command and "--heldout-share 0.4" in command and "--seed 7" in command, command
    _run(command)
    rebuilt = _files(folder)
    assert sorted(rebuilt) == ["heldout/il.parquet", "heldout/iwm.parquet", "il.parquet", "iwm.parquet"]
    for name, frame in rebuilt.items():
        assert frame.equals(pl.read_parquet(original / name)), name


def test_a_damaged_em_file_asks_for_the_options_it_was_built_with(replayed_store_template: Path, tmp_path: Path) -> None:
    """em.parquet records no options: the advice names the ones that change its rows, and followed with the original
    ones it writes the same file again (the defaults would not)."""
    folder = tmp_path / "em"
    args = ["experience", "dataset", "--store", str(replayed_store_template), "--out", str(folder)]
    result = CliRunner().invoke(app, [*args, *EM_OPTIONS])
    assert result.exit_code == 0, result.output
    original = pl.read_parquet(folder / "em.parquet")
    path = folder / "em.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    message = _error(folder, "em")

    command = _command(message)
    assert command == f"ee experience dataset --store STORE --out {folder}", message
    assert all(option in message for option in ("--held-out", "--seed", "--top-k", "--teacher", "--retriever")), message
    assert "em.parquet does not record them" in message, message
    store = shlex.quote(str(replayed_store_template))
    _run(command.replace("STORE", store))
    assert not pl.read_parquet(path).equals(original)  # the defaults: another held-out split
    _run(f"{command.replace('STORE', store)} {shlex.join(EM_OPTIONS)}")
    assert pl.read_parquet(path).equals(original)


def test_a_setting_no_flag_gives_and_a_relative_store_are_named_with_how_to_give_them(
    built_with_options: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build from a --config file (iwm_include_expert_steps = false has no flag) and a relative --store: the advice says
    where to run it and the config line to add; followed so, it writes the same files again."""
    shutil.copytree(built_with_options[0], tmp_path / "experience")
    (tmp_path / "ds.toml").write_text("[datasets]\niwm_include_expert_steps = false\nheldout_share = 0.4\nseed = 7\n")
    monkeypatch.chdir(tmp_path)
    args = ["datasets", "build", "--store", "experience", "--out", "data", "--config", "ds.toml", "--kinds", "iwm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    shutil.copytree("data", "original")
    path = tmp_path / "data" / "iwm.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    monkeypatch.chdir(tmp_path / "data")  # ee train run from elsewhere: the recorded store names nothing from here

    message = _error(tmp_path / "data", "iwm")

    command = _command(message)
    assert command == f"ee datasets build --store experience --out {tmp_path / 'data'} --kinds iwm --seed 7 --heldout-share 0.4"
    assert "the store 'experience' is relative to the folder the build ran in: run it from there" in message, message
    assert "add iwm_include_expert_steps = false to the [datasets] table of a --config file" in message, message
    monkeypatch.chdir(tmp_path)
    (tmp_path / "more.toml").write_text("[datasets]\niwm_include_expert_steps = false\n")
    _run(f"{command} --config more.toml")
    _same_files(tmp_path / "data", tmp_path / "original")
