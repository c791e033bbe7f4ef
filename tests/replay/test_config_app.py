"""``[replay] app`` / ``ee replay run --app``: an empty or blank app is refused, and an app with blanks around it is that
app, as capture stores names and as ``ee improve`` reads its app. Before, both were taken as given: the run found no
trajectory of app ``''`` (or ``' bfcl.multi_turn_base '``), replayed nothing and exited 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import ConfigError
from ee_middleware.replay.config import ReplayConfig


@pytest.mark.parametrize("value", ["", "  "])
def test_a_blank_app_is_refused_in_code_and_in_the_file(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"app: .*is empty or blank"):
        ReplayConfig.load(store="s", app=value)
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "s"\napp = "{value}"\n')
    with pytest.raises(ConfigError, match=r"app: .*is empty or blank.*\[replay\] of"):
        ReplayConfig.load(config)


def test_an_app_is_its_name_without_the_blanks_around_it() -> None:
    assert ReplayConfig.load(store="s", app=" bfcl.multi_turn_base ").app == "bfcl.multi_turn_base"
    assert ReplayConfig.load(store="s", app=" shop ").replay_id == ReplayConfig.load(store="s", app="shop").replay_id


def test_replay_run_refuses_an_empty_app_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["replay", "run", "--store", str(tmp_path / "experience"), "--app", ""])
    assert result.exit_code == 1, result.output
    assert "--app" in result.stderr and "is empty or blank" in result.stderr, result.stderr
    assert "Traceback" not in result.output
