"""An unknown key in a sub-table of ``ee improve``'s config file is refused naming the table it is written in:
``[improve.serving]`` and ``[improve.budgets]`` keys were said to be "in [improve]", and a ``[train.lora]`` table "in
[train]". The real command, real TOML files and store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from tests.jobs.test_config import _base_folder, _improve_file


@pytest.mark.parametrize(
    ("body", "where", "fix"),
    [
        ("[improve.serving]\nservrs = ['http://localhost:8000/v1']\n", "in [improve.serving] of", "remove the key"),
        ("[improve.budgets]\nmax_minute = 3\n", "in [improve.budgets] of", "remove the key"),
        ("[train]\nmax_steps = 2\n[train.lora]\nrnk = 2\n", "in [train.lora] of", "remove the table"),
        (
            "[improve.serving]\nservrs = ['http://localhost:8000/v1']\n[improve.budgets]\nmax_minute = 3\n",
            "in [improve.budgets] and [improve.serving] of",  # in the errors' order
            "remove the key",
        ),
        ("bogus_key = 1\n", "in [improve] of", "remove the key"),
    ],
)
def test_an_unknown_key_of_a_sub_table_is_refused_naming_that_table(tmp_path: Path, body: str, where: str, fix: str) -> None:
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), body)

    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"])

    assert result.exit_code == 1, result.output
    error = " ".join(result.stderr.split())
    assert f"{where} {path} ({fix}, or correct its name)" in error, error
