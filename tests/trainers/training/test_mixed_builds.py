"""``ee train`` on a data folder whose files come from different builds (an older ``ee datasets build`` left an
earlier build's files beside a later one's) refuses before loading the model, naming the files and the fix.

Before 19c6991 a rebuild into a folder kept the files it did not write: after a full build, ``--kinds il
--heldout-share 0.5`` left the first build's iwm.parquet (every trajectory, the held-out ones too) beside the new
il.parquet, and ``ee train --schedule iwm`` trained on both without a word: on the held-out trajectories and on two
states of the store. Such folders are still on users' disks. Real replayed BFCL store, real builds, real CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.trainers.datasets.build import DatasetConfig, build_datasets
from ee_middleware.trainers.training import TrainConfig, train
from ee_middleware.trainers.training.errors import TrainDataError


@pytest.fixture
def older_folder(replayed_store: Path, tmp_path: Path) -> Path:
    """il.parquet (and heldout/) of a build with a held-out split, beside iwm.parquet of an earlier full build."""
    build_datasets(DatasetConfig.load(store=replayed_store, out=tmp_path / "first"))
    out = tmp_path / "data"
    build_datasets(DatasetConfig.load(store=replayed_store, out=out, kinds="il", heldout_share=0.5, seed=3))
    shutil.copy(tmp_path / "first" / "iwm.parquet", out / "iwm.parquet")  # what the older build left in place
    held = set(pl.read_parquet(out / "heldout" / "il.parquet")["trajectory_id"].to_list())
    assert held & set(pl.read_parquet(out / "iwm.parquet")["trajectory_id"].to_list()), "the stale file holds held-out trajectories"
    return out


def test_train_refuses_files_of_two_builds_naming_them_and_the_rebuild(older_folder: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    config = TrainConfig.load(
        base_model=str(tiny_model_dir), data=str(older_folder), schedule="iwm", output_dir=str(tmp_path / "adapter"), max_steps=2
    )
    with pytest.raises(TrainDataError) as raised:
        train(config, progress=False)
    message = str(raised.value)
    assert "il.parquet" in message and "iwm.parquet" in message and "different builds" in message
    assert "ee datasets build" in message and "--kinds il,iwm" in message
    assert not (tmp_path / "adapter").exists()

    args = ["--base-model", str(tiny_model_dir), "--data", str(older_folder), "--schedule", "iwm", "--max-steps", "2"]
    result = CliRunner().invoke(app, ["train", *args, "--output-dir", str(tmp_path / "adapter-cli"), "--no-progress"])
    assert result.exit_code == 1 and "different builds" in result.output and "Traceback" not in result.output


def test_the_files_of_one_build_train_together(older_folder: Path, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The IL schedule reads il.parquet alone: the stale iwm.parquet beside it does not matter."""
    config = TrainConfig.load(
        base_model=str(tiny_model_dir), data=str(older_folder), schedule="il", output_dir=str(tmp_path / "adapter"), max_steps=1
    )
    with pytest.warns(Warning):  # BFCL states are long for the test tokenizer (ContextBudgetWarning)
        result = train(config, progress=False)
    assert (result.adapter_dir / "adapter_config.json").exists()
