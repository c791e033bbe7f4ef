"""An unknown key in any table of ``ee improve``'s config file is refused naming the file, as a value of the wrong type
is: ``bogus_key = 1`` in [improve] or ``min_taks = 3`` in [gate] said only 'Extra inputs are not permitted'. The real
command and ImproveConfig, real TOML files and store."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.jobs.config import ImproveConfig
from ee_middleware.store import LocalExperienceStore
from tests.jobs.test_config import _base_folder, _improve_file


@pytest.mark.parametrize(
    ("body", "table", "key"),
    [
        ("bogus_key = 1\n", "improve", "bogus_key"),
        ("[gate]\nmin_taks = 3\n", "gate", "min_taks"),
        ("[replay]\nkk = 2\n", "replay", "kk"),
        ("[datasets]\nheldout_shares = 0.1\n", "datasets", "heldout_shares"),
        ("[train]\nlora_rank = 4\n", "train", "lora_rank"),
        ("[eval]\nmax_step_per_turn = 2\n", "eval", "max_step_per_turn"),
    ],
)
def test_an_unknown_key_is_refused_naming_the_file_and_its_table(tmp_path: Path, body: str, table: str, key: str) -> None:
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), body)

    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"])

    assert result.exit_code == 1, result.output
    error = result.stderr.strip()
    assert f"{key}: Extra inputs are not permitted" in error and f"in [{table}] of {path}" in error, error


def test_a_wrong_type_still_names_the_file_once(tmp_path: Path) -> None:
    LocalExperienceStore(tmp_path / "s").close()
    path = _improve_file(tmp_path, _base_folder(tmp_path), '[gate]\nmin_tasks = "x"\n')

    with pytest.raises(ConfigError) as raised:
        ImproveConfig.load(path).check()

    assert str(raised.value).count(str(path)) == 1, raised.value
