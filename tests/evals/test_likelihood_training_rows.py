"""``ee eval likelihood`` never scores the rows an adapter was trained on as held-out states.

A data folder built without ``--heldout-...`` has only the training ``il.parquet``; scoring it called the training rows
"held-out states" (every one "improved" by an adapter trained on them). It is refused, naming the rebuild; once the
folder has the held-out split the hint names, the held-out rows (and only they) are scored.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.evals.likelihood import load_heldout
from ee_middleware.trainers.datasets.split import HELDOUT, SPLIT_METADATA_KEY
from tests.trainers.training.conftest import FOLDERS, il_row, write_dataset


def _training_folder(folder: Path, rows: int = 6) -> Path:
    write_dataset(folder, "il", [il_row(i, FOLDERS[i % len(FOLDERS)]) for i in range(rows)])
    return folder


def test_a_data_folder_without_a_heldout_split_is_refused_naming_the_rebuild(tmp_path: Path) -> None:
    data = _training_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"training dataset, not a held-out one.*--heldout-share 0\.1") as caught:
        load_heldout(data)
    assert f"{data} has no heldout/il.parquet" in str(caught.value)
    result = CliRunner().invoke(app, ["eval", "likelihood", "--data", str(data), "--base", str(tmp_path / "no-model")])
    assert result.exit_code == 1, result.output
    assert "training dataset, not a held-out one" in result.stderr and "held-out states" not in result.stdout


def test_a_training_il_parquet_named_directly_is_refused(tmp_path: Path) -> None:
    data = _training_folder(tmp_path / "data")
    with pytest.raises(ConfigError, match=r"il\.parquet is a training dataset.*--heldout-share"):
        load_heldout(data / "il.parquet")


def test_following_the_hint_scores_the_heldout_rows_only(tmp_path: Path) -> None:
    data = _training_folder(tmp_path / "data", rows=6)
    heldout = data / "heldout"
    heldout.mkdir()
    # What `ee datasets build --heldout-share` writes: its held-out rows, marked ee.split=heldout.
    rows = pl.DataFrame([il_row(100 + i, FOLDERS[i % len(FOLDERS)]) for i in range(2)], schema=pl.read_parquet(data / "il.parquet").schema)
    rows.write_parquet(heldout / "il.parquet", metadata={SPLIT_METADATA_KEY: HELDOUT})
    for given in (data, heldout, heldout / "il.parquet"):
        assert [s.id for s in load_heldout(given)] == ["il-100", "il-101"]
