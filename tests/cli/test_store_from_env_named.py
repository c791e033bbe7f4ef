"""A store a command could not open names ``EE_STORE`` when that variable set it (``EE_STORE=" " ee traces list`` said
"Unknown store ' '" alone, and a wrong ``EE_STORE`` folder 'check the --store path', a flag the user never gave); one the
``--store`` flag gave is told as before."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize("command", [["traces", "list"], ["replay", "list"]])
def test_a_blank_ee_store_is_named_in_the_error(command: list[str]) -> None:
    result = runner.invoke(app, command, env={"EE_STORE": " "})
    assert result.exit_code == 1, result.output
    assert "Unknown store ' '" in result.stderr and "This store was set by EE_STORE=" in result.stderr, result.stderr


def test_a_missing_store_folder_from_ee_store_names_it_and_not_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "no-store"
    result = runner.invoke(app, ["traces", "list"], env={"EE_STORE": str(missing)})
    assert result.exit_code == 1, result.output
    assert f"This store was set by EE_STORE={missing}" in result.stderr and "--store path" not in result.stderr, result.stderr


def test_a_store_the_flag_gave_is_told_as_before(tmp_path: Path) -> None:
    missing = tmp_path / "no-store"
    result = runner.invoke(app, ["traces", "list", "--store", str(missing)], env={"EE_STORE": str(tmp_path / "other")})
    assert result.exit_code == 1, result.output
    assert "check the --store path" in result.stderr and "EE_STORE" not in result.stderr, result.stderr
