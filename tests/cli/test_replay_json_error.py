"""``ee replay run --json`` says in its summary's ``error`` why a run exits 1, as ``ee experience eval --json`` and
``ee curriculum run --json`` fill theirs.

A run whose experience model gave no usable prediction exited 1 with its ``error:`` line on stderr, but the JSON summary
on stdout had no ``error`` (a script reading ``summary.get("error")`` saw success); a run in which a trajectory failed
exited 1 with no ``error:`` line at all. Now every exit-1 summary holds the message stderr's ``error:`` line gives, and a
run that succeeds says ``"error": null``. The experience model is a scripted one behind a real local HTTP server (the test
name says so) replaying real BFCL expert trajectories; the failing trajectory is a key-value app recorded with a real
``create_agent`` graph and replayed in a real subprocess sandbox (tests/replay/kv_world.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from tests.replay import conftest as replay_fixtures
from tests.replay.test_experience import ScriptedExperienceModel

serve = replay_fixtures.serve  # scripted experience models behind real local HTTP servers

KV_SANDBOX = "tests.replay.kv_world:make_sandbox"


def _errors(result: Any) -> list[str]:
    """The text of stderr's ``error:`` lines."""
    return [line.removeprefix("error: ") for line in result.stderr.splitlines() if line.startswith("error:")]


def test_json_error_holds_the_stderr_error_when_no_prediction_is_usable_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Callable[[Any], ScriptedExperienceModel]
) -> None:
    model = serve(lambda messages: "The tool probably works.")  # prose: no prediction is usable
    config = tmp_path / "replay.toml"
    config.write_text(f'[replay]\nstore = "{bfcl_store_path}"\nsandbox = "experience:openai:{model.base_url}#em"\nk = 2\n')
    result = CliRunner().invoke(app, ["replay", "run", "--config", str(config), "--limit", "1", "--no-progress", "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["synthetic_branches"] == 0 and sum(summary["synthetic_failures"].values()) > 0, summary
    [error] = _errors(result)
    assert error.startswith("the experience model gave no usable observation"), error
    assert summary["error"] == error, summary.get("error", "(no 'error' key)")


def test_json_error_holds_the_stderr_error_when_a_trajectory_failed(tmp_path: Path) -> None:
    """The expert's kv_set takes longer in the subprocess sandbox than --tool-timeout: the trajectory fails (retried by
    the next run) and the run exits 1; its summary and stderr now both say so."""
    from tests.replay.kv_world import record_kv

    root = tmp_path / "experience"
    [trajectory_id] = record_kv(root, [("kv_set", {"key": "s", "value": "9"}), ("kv_get", {"key": "s"})], environment={"slow_keys": ["s"]})
    args = ["replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1"]
    args += ["--isolation", "subprocess", "--tool-timeout", "1", "--no-progress"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert list(summary["failed"]) == [trajectory_id], summary
    [error] = _errors(result)
    assert error.startswith("1 trajectory failed"), error
    assert "retries" in error and summary["failed"][trajectory_id].split(":")[0] in error, error
    assert summary.get("error") == error, summary.get("error", "(no 'error' key)")


def test_json_error_is_null_when_the_run_succeeds(tmp_path: Path) -> None:
    from tests.replay.kv_world import record_kv

    root = tmp_path / "experience"
    record_kv(root, [("kv_set", {"key": "a", "value": "1"}), ("kv_get", {"key": "a"})])
    args = ["replay", "run", "--store", str(root), "--sandbox", KV_SANDBOX, "--policy", "tests.replay.kv_world:Lookups", "--k", "1"]
    result = CliRunner().invoke(app, [*args, "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["done"] == 1 and "error" in summary and summary["error"] is None, summary
    assert _errors(result) == [], result.stderr
