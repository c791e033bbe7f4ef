"""`ee curriculum run` with a policy that answers nothing: a down endpoint is refused before any rollout, and a run in
which the policy's server failed every rollout ends with an error line and exit 1 (before: exit 0, "0 kept")."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.testing.http import Reply, ScriptedChatServer
from tests.cli.test_experience_timeout import SHORT, _flat, _policy, _slow
from tests.evals.test_curriculum import _tasks

runner = CliRunner()
VERDICT = json.dumps({"reasoning": "it listed the folder", "reward": 1})


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_policy_that_answered_no_rollout_fails_the_run_naming_the_policy_and_timeout_slow_scripted_server(
    bfcl_store_path: Path, tmp_path: Path
) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    with (
        ScriptedChatServer(_slow(lambda body: _policy(body["messages"])), models=["p"]) as policy,
        ScriptedChatServer([VERDICT], models=["j"]) as judge,
    ):
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--timeout", SHORT]
        as_json = runner.invoke(app, [*args, "--json"])
        as_text = runner.invoke(app, args)
    assert as_json.exit_code == 1, as_json.output
    summary = json.loads(as_json.stdout)
    assert summary["kept"] == 0 and summary["error"].startswith(f"the policy openai:{policy.base_url}#p answered none of the"), summary
    assert "raise timeout_s (`--timeout N`; now 0.1 s)" in summary["error"], summary["error"]
    assert as_text.exit_code == 1 and "error: the policy" in _flat(as_text.stderr), as_text.output


def test_a_policy_endpoint_that_is_down_is_refused_before_any_rollout(bfcl_store_path: Path, tmp_path: Path) -> None:
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    down = f"openai:http://127.0.0.1:{_closed_port()}/v1#p"
    with ScriptedChatServer([VERDICT], models=["j"]) as judge:
        args = ["curriculum", "run", str(tasks), "--policy", down, "--sandbox", "bfcl", "--judge", f"openai:{judge.base_url}#j"]
        result = runner.invoke(app, [*args, "--store", str(bfcl_store_path)])
        asked = len(judge.requests)
    assert result.exit_code == 2, result.output
    assert "--policy" in result.output and "cannot be reached" in _flat(result.output), result.output
    assert asked == 0


def test_a_policy_that_refuses_every_request_fails_the_run_with_the_refusal_not_timeout_advice(
    bfcl_store_path: Path, tmp_path: Path
) -> None:
    # up (it lists its models) but refusing the model's name: the refusal is the cause, not a slow server (found by r4)
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    refusal = Reply({"error": {"message": "The model `wrong-name` does not exist.", "type": "NotFoundError", "code": 404}}, 404)
    with ScriptedChatServer(lambda body: refusal, models=["p"]) as policy, ScriptedChatServer([VERDICT], models=["j"]) as judge:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#wrong-name", "--sandbox", "bfcl"]
        result = runner.invoke(app, [*args, "--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stdout)["error"]
    assert "answered none of the 1 rollout(s)" in error and "does not exist" in error, error
    assert "answers in time" not in error, error
