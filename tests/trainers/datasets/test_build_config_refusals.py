"""``[datasets]`` settings refused as their flags are: ``iwm_max_observation_tokens`` above ``--max-observation-tokens``'
bound (2**31 - 1; 2**63 - 1 failed the build inside polars as an "unexpected InvalidOperationError ... a bug in
ee-middleware"), and an empty or blank ``heldout_app`` (``""`` held out nothing without a word; ``--heldout-app ""``
replaced the file's held-out rule with that nothing). No store is opened: the configuration is refused first."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware._limits import INT32_MAX
from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.trainers.datasets.build import DatasetConfig


def _config(tmp_path: Path, setting: str) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(f'[datasets]\nstore = "{tmp_path / "experience"}"\nout = "{tmp_path / "data"}"\n{setting}\n')
    return path


def test_an_observation_budget_above_the_flags_bound_is_refused_in_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"iwm_max_observation_tokens: Input should be less than or equal to 2147483647"):
        DatasetConfig.load(_config(tmp_path, "iwm_max_observation_tokens = 9223372036854775807"))
    assert DatasetConfig.load(_config(tmp_path, f"iwm_max_observation_tokens = {INT32_MAX}")).iwm_max_observation_tokens == INT32_MAX


@pytest.mark.parametrize("value", ["", "   "])
def test_a_blank_held_out_app_is_refused_in_the_file(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"heldout_app: .*is empty or blank") as raised:
        DatasetConfig.load(_config(tmp_path, f'heldout_app = "{value}"'))
    assert "[datasets] of" in str(raised.value)


def test_a_held_out_app_is_its_name_without_the_blanks_around_it(tmp_path: Path) -> None:
    assert DatasetConfig.load(_config(tmp_path, 'heldout_app = " shop "')).split_rule().app == "shop"


def test_an_empty_heldout_app_flag_is_refused_not_a_rule_replacing_the_files(tmp_path: Path) -> None:
    config = _config(tmp_path, "heldout_share = 0.2")
    result = CliRunner().invoke(app, ["datasets", "build", "--config", str(config), "--heldout-app", ""])
    assert result.exit_code == 1, result.output
    assert "--heldout-app" in result.stderr and "is empty or blank" in result.stderr, result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "data").exists()
