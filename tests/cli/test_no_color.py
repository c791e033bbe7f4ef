"""``NO_COLOR`` (https://no-color.org) and ``TERM=dumb`` turn off the colour of the ``error:``, ``warning:`` and
``note:`` lines, as rich already turns it off for tables. Before, on a terminal, ``NO_COLOR=1 ee traces show nope``
still wrapped its error line in ``ESC[31m ... ESC[0m``."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

ESC = "\x1b["


def _error_line(env: dict[str, str], tmp_path: Path) -> str:
    # color=True: as on a terminal, where click keeps the colour of typer.secho's lines
    result = CliRunner().invoke(app, ["traces", "show", "nope", "-s", str(tmp_path / "nope")], env=env, color=True)
    assert result.exit_code == 1, result.output
    return result.stderr


@pytest.mark.parametrize("env", [{"NO_COLOR": "1"}, {"TERM": "dumb"}, {"NO_COLOR": "yes", "TERM": "xterm-256color"}])
def test_no_color_and_a_dumb_terminal_get_plain_error_lines(env: dict[str, str], tmp_path: Path) -> None:
    line = _error_line(env, tmp_path)
    assert line.startswith("error: No experience store") and ESC not in line, repr(line)


def test_a_terminal_that_asks_for_nothing_keeps_the_colour(tmp_path: Path) -> None:
    # An empty NO_COLOR is "not set" (no-color.org)
    for env in ({"TERM": "xterm-256color"}, {"NO_COLOR": "", "TERM": "xterm-256color"}):
        assert _error_line(env, tmp_path).startswith(f"{ESC}31merror: "), env


def test_a_warning_line_is_plain_too(tmp_path: Path) -> None:
    # a note: line from inside a command (an EE_STORE overriding the config file's store), under NO_COLOR
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{tmp_path / "a"}"\nk = 1\n')
    result = CliRunner().invoke(
        app,
        ["replay", "run", "--config", str(config), "--no-progress"],
        env={"NO_COLOR": "1", "EE_STORE": str(tmp_path / "b")},
        color=True,
    )
    assert "note: EE_STORE=" in result.stderr and ESC not in result.stderr, repr(result.stderr)
