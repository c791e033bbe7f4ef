"""``ee improve`` as an operator runs it from cron: where its paths came from, what goes to stdout and stderr, and what
``--json`` says when it cannot start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.jobs.runs import RunsDir
from tests.jobs.conftest import write_config

pytestmark = pytest.mark.heavy  # whole ee improve runs from the command line: make test-heavy

SHORT_NIGHT = "[improve.budgets]\nmax_minutes = 0.000001\n"
"""A run that starts (run.json written) and stops before its first stage (exit 3)."""


def test_ee_variables_that_override_the_files_registry_and_runs_are_said_and_recorded(
    workspace: Path, tiny_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leftover EE_ADAPTER_REGISTRY or EE_RUNS in a crontab replaced the file's registry and runs folder without a word
    (the night promoted into a registry the router never read, and its run was where `ee runs list --config` could not
    find it), while EE_STORE got a note. Now each gets the same note, and run.json says where each path came from."""
    path = write_config(workspace, tiny_base, improve=SHORT_NIGHT)
    env = {"EE_ADAPTER_REGISTRY": str(workspace / "old-registry"), "EE_RUNS": str(workspace / "old-runs")}
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--no-progress"], env=env)
    assert result.exit_code == 3, result.output
    stderr = " ".join(result.stderr.split())
    for variable, key in (("EE_ADAPTER_REGISTRY", "registry"), ("EE_RUNS", "runs")):
        assert f"note: {variable}={workspace / f'old-{key}'} overrides {key} = '{workspace / key}' in [improve] of {path}" in stderr, stderr
        assert f"unset {variable} to use the file's" in stderr
    [run] = RunsDir(workspace / "old-runs").list()
    assert run.data["settings_from"] == {
        "store": f"store in [improve] of {path}",
        "registry": f"EE_ADAPTER_REGISTRY={workspace / 'old-registry'}",
        "runs": f"EE_RUNS={workspace / 'old-runs'}",
        "base_model": f"base_model in [improve] of {path}",
    }
    listed = CliRunner().invoke(app, ["runs", "list", "--config", str(path)], env={"EE_RUNS": str(workspace / "old-runs")})
    assert listed.exit_code == 0 and "note: EE_RUNS=" in listed.stderr and run.id in listed.stdout, listed.output

    # the same place, written another way (relative to the working directory): nothing to say; a flag is recorded as such
    monkeypatch.chdir(workspace)
    same = CliRunner().invoke(
        app, ["improve", "--config", str(path), "--no-progress", "--runs", "runs"], env={"EE_ADAPTER_REGISTRY": "registry"}
    )
    assert same.exit_code == 3, same.output
    assert "note:" not in same.stderr, same.stderr
    run = RunsDir(workspace / "runs").get("latest")
    assert run.data["settings_from"]["runs"] == "--runs" and run.data["settings_from"]["registry"] == "EE_ADAPTER_REGISTRY=registry"


def test_json_says_why_when_another_run_holds_the_runs_folder(workspace: Path, tiny_base: Path) -> None:
    """With another run holding the lock, `ee improve --json` printed nothing on stdout (exit 1): a cron wrapper
    reading `| jq .status` got a parse error. It now prints a JSON object saying so; the exit status is still 1."""
    path = write_config(workspace, tiny_base)
    runs = RunsDir(workspace / "runs")
    with runs.lock():
        result = CliRunner().invoke(app, ["improve", "--config", str(path), "--json"])
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["status"] == "refused" and "Another run holds" in data["error"] and data["runs"] == str(runs.root)
    assert "Another run holds" in result.stderr and runs.list() == []


def test_json_says_a_file_error_as_stderr_says_it(workspace: Path, tiny_base: Path) -> None:
    """A runs folder that is a file: stderr said 'is a file, not a folder: choose another path', the JSON error the raw
    'FileExistsError: [Errno 17] File exists: ...' (a CLI sweep), though it promises the error as stderr says it."""
    path = write_config(workspace, tiny_base)
    (workspace / "afile").write_text("")
    result = CliRunner().invoke(app, ["improve", "--config", str(path), "--runs", str(workspace / "afile"), "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert "is a file, not a folder" in error and "Errno" not in error, error
    assert error in " ".join(result.stderr.split()), result.stderr


def _ee(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ee_middleware.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"})


def test_progress_goes_to_stderr_and_no_progress_silences_the_libraries_bars(workspace: Path, tiny_base: Path) -> None:
    """`ee improve > night.log` put the stage rules, info lines and progress bars on stdout (off a terminal the bars
    cut to 80 columns: 'baseline: traces:/...  ━ … … 0:…'), although stdout should hold the answer alone; and with
    --no-progress, stderr still got transformers' 'Loading weights' tqdm bars (carriage returns) at each model load.
    Now progress is drawn on stderr and stdout holds the summary; without progress, no library draws a bar."""
    path = write_config(workspace, tiny_base)
    night = _ee("improve", "--config", path)
    assert night.returncode == 0, night.stderr
    assert "ee improve [1/8] select" in night.stderr and "done select" in night.stderr
    assert "ee improve [" not in night.stdout and "done select" not in night.stdout, night.stdout
    assert "0:00:0" not in night.stdout and "0:00:0" in night.stderr, "the bars' times: on stderr only"
    [run] = RunsDir(workspace / "runs").list()
    assert f"ee improve run {run.id}: succeeded" in night.stdout and "Report:" in night.stdout

    for flags in (["--no-progress"], ["--json"]):
        quiet = _ee("improve", "--config", path, "--force", *flags)  # trains, loads and evaluates models again
        assert quiet.returncode == 0, quiet.stderr
        assert "Loading weights" not in quiet.stderr and "\r" not in quiet.stderr, quiet.stderr
        assert "ee improve [" not in quiet.stderr + quiet.stdout
    assert json.loads(quiet.stdout)["status"] == "succeeded"
