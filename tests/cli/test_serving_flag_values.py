"""Serving flags as users type them (a serving sweep of 2026-12-07): a malformed ``--server``/``--endpoint`` URL was
repeated whole in the usage error, its user:password and ?api_key= included; ``--launcher bogus`` was named as the
setting ``vllm.launcher``, not as the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app

runner = CliRunner()


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "router", "-r", "reg", "--server"],
        ["adapters", "promote", "bot-v1", "-r", "reg", "--json", "--server"],
        ["eval", "run", "--suite", "tau", "--model", "m", "--out", "evout", "--endpoint"],
    ],
)
@pytest.mark.parametrize("url", ["http://alice:s3cretPW@127.0.0.1:99999/v1", "http://127.0.0.1:99999/v1?api_key=sk-QUERYSECRET"])
def test_a_malformed_server_url_is_refused_without_its_credentials(command: list[str], url: str, tmp_path: Path) -> None:
    result = runner.invoke(app, [*command, url])
    assert result.exit_code == 2, result.output
    assert "port 99999 is out of range" in result.output and "***" in result.output, result.output
    assert "s3cretPW" not in result.output and "QUERYSECRET" not in result.output, result.output
    if "--json" in command:
        assert "s3cretPW" not in json.loads(result.stdout)["error"]["message"]


def test_a_bad_launcher_is_named_as_the_flag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "vllm", "--base", str(tmp_path), "--launcher", "bogus"])
    assert result.exit_code == 1, result.output
    assert "--launcher: Input should be 'cli' or 'module' (got 'bogus')" in result.output and "vllm.launcher" not in result.output


def test_a_bad_launcher_in_a_file_is_named_as_its_key(tmp_path: Path) -> None:
    config = tmp_path / "serve.toml"
    config.write_text(f'[serve]\nbase_model = "{tmp_path}"\n\n[serve.vllm]\nlauncher = "bogus"\n')
    result = runner.invoke(app, ["serve", "vllm", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "vllm.launcher" in result.output and "--launcher" not in result.output.split("Usage")[0], result.output
