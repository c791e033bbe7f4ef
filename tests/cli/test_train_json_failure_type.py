"""``ee train --json`` that fails prints the error object with the error's own type (``ConfigError``), as every other
command does, not the stand-in ``CommandFailed``; the standalone ``train_cmds.app`` still says the error in one line and
exits 1."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.cli.train_cmds import app as train_app
from tests.cli.json_failure import json_failure


def test_a_failed_train_with_json_names_the_errors_type(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.toml"), "--json"])
    error = json_failure(missing, "ConfigError")
    assert "missing.toml does not exist" in error["message"] and missing.stderr == f"error: {error['message']}\n", missing.stderr

    empty = tmp_path / "empty.toml"
    empty.write_text("[train]\nepochs = 'many'\n")
    bad = CliRunner().invoke(app, ["train", "--config", str(empty), "--json"])
    assert json_failure(bad, "ConfigError")["message"], bad.output


def test_the_standalone_train_app_says_the_error_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(train_app, ["--config", str(tmp_path / "missing.toml")])
    assert result.exit_code == 1 and result.stderr == f"error: Config file {tmp_path / 'missing.toml'} does not exist.\n", result.output
