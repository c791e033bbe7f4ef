"""``ee replay run --isolation subprocess --tool-timeout inf`` (or ``tool_timeout_s = inf`` in ``[replay]``) is refused
before anything runs, naming the flag (the setting) and a finite value: before, it passed ``> 0`` and the subprocess
sandbox's first tool call crashed with ``OverflowError: cannot convert float infinity to integer``."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.store import LocalExperienceStore
from tests.cli.json_failure import json_failure


def _refused(result, where: str) -> None:
    assert result.exit_code == 1 and json_failure(result) and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in (where, "must be a finite number of seconds", "e.g. 30", "(got inf)"):
        assert needle in lines[0], (needle, lines[0])


def test_replay_run_refuses_an_infinite_tool_timeout_flag(bfcl_store_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["replay", "run", "--store", str(bfcl_store_path), "--k", "2", "--json", "--isolation", "subprocess", "--tool-timeout", "inf"],
    )
    _refused(result, "--tool-timeout")
    assert LocalExperienceStore(bfcl_store_path).rollouts().is_empty(), "nothing was replayed"


def test_replay_run_refuses_an_infinite_tool_timeout_in_its_file(bfcl_store_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{bfcl_store_path}"\nk = 2\nisolation = "subprocess"\ntool_timeout_s = inf\n')
    result = CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--json", "--no-progress"])
    _refused(result, "tool_timeout_s")
    assert LocalExperienceStore(bfcl_store_path).rollouts().is_empty(), "nothing was replayed"
