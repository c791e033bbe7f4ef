"""``--timeout`` of ``ee experience eval|dataset`` and ``ee curriculum propose|run``, and the experience sandbox's
``timeout_s`` setting: the model client waits that long per request, and the advice after a timeout names the knob the
running command really has.

The model is a scripted stand-in behind a real local HTTP server (ScriptedChatServer) that answers every chat request
only after DELAY_S seconds, as a model served on CPU does; the store of real BFCL expert trajectories, the sandbox, the
clients and the CLI are the real ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.cli.app import app
from ee_middleware.errors import SandboxError
from ee_middleware.models.openai_compat import OpenAIChatClient
from ee_middleware.records import ToolCall
from ee_middleware.replay.sandboxes.experience import ExperienceSandbox, SyntheticObservationError
from ee_middleware.replay.sandboxes.registry import build_sandbox
from ee_middleware.store.local import LocalExperienceStore
from ee_middleware.testing.http import ScriptedChatServer
from tests.evals.test_curriculum import _tasks

DELAY_S = 0.4
SHORT, LONG = "0.1", "5"
ADVICE = "raise timeout_s (`--timeout N`; now 0.1 s)"
"""The client's advice after a timeout (models/openai_compat.py), naming the commands' flag."""
SANDBOX_KNOB = "timeout_s under [replay.sandbox_settings]"  # spelled out: the test ran against the code before it

runner = CliRunner()


def _slow(answer: Callable[[dict[str, Any]], str]) -> Callable[[dict[str, Any]], str]:
    def reply(body: dict[str, Any]) -> str:
        time.sleep(DELAY_S)
        return answer(body)

    return reply


def _prediction(body: dict[str, Any]) -> str:
    return json.dumps({"reasoning": "it lists the folder", "observation": "report.pdf", "is_error": False})


def _flat(output: str) -> str:
    return " ".join(output.split())  # rich wraps long lines


def test_experience_eval_timeout_is_the_flag_its_advice_names_slow_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Before: no --timeout ('No such option'); the client waited its fixed 60 s, and a timeout's advice named
    timeout_s alone, which the command has no way to set."""
    with ScriptedChatServer(_slow(_prediction), models=["em"]) as server:
        args = ["experience", "eval", "--model", f"openai:{server.base_url}#em", "--store", str(bfcl_store_path), "--limit", "1"]
        short = runner.invoke(app, [*args, "--out", str(tmp_path / "short"), "--timeout", SHORT, "--json"])
        long = runner.invoke(app, [*args, "--out", str(tmp_path / "long"), "--timeout", LONG, "--json"])
    assert short.exit_code == 1, short.output
    assert ADVICE in _flat(short.output), short.output
    assert not (tmp_path / "short" / "report.json").exists()
    assert long.exit_code == 0, long.output
    report = json.loads(long.stdout)
    assert report["variants"]["retrieval"]["overall"]["n"] == 1 and not report.get("model_errors"), report


def test_experience_dataset_timeout_reaches_the_teacher_slow_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    def reasoning(body: dict[str, Any]) -> str:
        return "The agent asked the tool for it, and the tool answered."

    with ScriptedChatServer(_slow(reasoning), models=["t"]) as server:
        args = ["experience", "dataset", "--store", str(bfcl_store_path), "--teacher", f"openai:{server.base_url}#t", "--json"]
        short = runner.invoke(app, [*args, "--out", str(tmp_path / "short"), "--timeout", SHORT])
        long = runner.invoke(app, [*args, "--out", str(tmp_path / "long"), "--timeout", LONG])
    assert short.exit_code != 0 and ADVICE in _flat(short.output), short.output
    assert long.exit_code == 0, long.output
    assert json.loads(long.stdout)["rows"] > 0 and (tmp_path / "long" / "em.parquet").is_file()


def _results(store_path: Path, folder: Path) -> Path:
    store = LocalExperienceStore(store_path)
    entry = sorted(t.environment["entry_id"] for t in store.iter_trajectories())[0]
    store.close()
    folder.mkdir(parents=True, exist_ok=True)
    results = folder / "results.jsonl"
    rows = [{"suite": "bfcl", "task_id": entry, "trial": i, "success": ok} for i, ok in enumerate([True, False, True, False])]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return results


def test_curriculum_propose_timeout_reaches_the_writer_slow_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    def variant(body: dict[str, Any]) -> str:
        return json.dumps({"instruction": "List the files in the current folder.", "tools": ["ls"]})

    results = _results(bfcl_store_path, tmp_path)
    with ScriptedChatServer(_slow(variant), models=["w"]) as server:
        args = ["curriculum", "propose", "--from", str(results), "--model", f"openai:{server.base_url}#w"]
        args += ["--store", str(bfcl_store_path), "--n", "1", "--json"]
        short = runner.invoke(app, [*args, "--out", str(tmp_path / "short.jsonl"), "--timeout", SHORT])
        long = runner.invoke(app, [*args, "--out", str(tmp_path / "long.jsonl"), "--timeout", LONG])
    assert short.exit_code != 0 and ADVICE in _flat(short.output), short.output
    assert not (tmp_path / "short.jsonl").exists()
    assert long.exit_code == 0, long.output
    assert json.loads(long.stdout)["variants"] == 1


def _policy(messages: list[dict[str, Any]]) -> str:
    return "Done." if messages[-1]["role"] == "tool" else '<tool_call>{"name": "ls", "arguments": {}}</tool_call>'


def test_curriculum_run_timeout_reaches_the_judge_and_the_policy_slow_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """A slow judge: every rollout unjudged, and the run's error names --timeout; a slow policy: every rollout failed,
    with the client's advice in the reason (before: 'the rollout failed: model_error', nothing more)."""
    tasks, _ = _tasks(bfcl_store_path, tmp_path)
    verdict = json.dumps({"reasoning": "it listed the folder", "reward": 1})
    fast_policy = ScriptedChatServer(lambda body: _policy(body["messages"]), models=["p"])
    slow_judge = ScriptedChatServer(_slow(lambda body: verdict), models=["j"])
    with fast_policy as policy, slow_judge as judge:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"]
        short = runner.invoke(app, [*args, "--timeout", SHORT])
        long = runner.invoke(app, [*args, "--timeout", LONG])
    assert short.exit_code == 1, short.output
    summary = json.loads(short.stdout)
    assert summary["kept"] == 0 and any(ADVICE in reason for reason in summary["dropped"]), summary["dropped"]
    assert "raise --timeout, now 0.1 s" in _flat(short.stderr), short.stderr
    assert long.exit_code == 0, long.output
    assert json.loads(long.stdout)["kept"] == 1

    slow_policy = ScriptedChatServer(_slow(lambda body: _policy(body["messages"])), models=["p"])
    with slow_policy as policy, ScriptedChatServer([verdict], models=["j"]) as judge:
        args = ["curriculum", "run", str(tasks), "--policy", f"openai:{policy.base_url}#p", "--sandbox", "bfcl"]
        args += ["--judge", f"openai:{judge.base_url}#j", "--store", str(bfcl_store_path), "--json"]
        failed = runner.invoke(app, [*args, "--timeout", SHORT])
    dropped = json.loads(failed.stdout)["dropped"]
    assert [reason for reason in dropped if reason.startswith("the rollout failed: model_error") and ADVICE in reason], dropped


@pytest.mark.parametrize("value", ["0", "inf", "nan"])
@pytest.mark.parametrize("command", [["experience", "eval"], ["experience", "dataset"], ["curriculum", "propose"], ["curriculum", "run"]])
def test_a_timeout_that_is_not_positive_and_finite_is_refused_naming_the_flag(command: list[str], value: str) -> None:
    """Before: --timeout inf passed the check ("> 0"), then every request failed (see the test below)."""
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "--timeout" in result.output, result.output
    result = runner.invoke(app, [*command, "--timeout", value])
    flat = _flat(result.output)
    assert result.exit_code == 2 and "--timeout" in flat and "must be a finite number of seconds > 0" in flat, result.output
    assert f"got {value}" in flat and "--timeout 3600" in flat, result.output


def test_experience_eval_timeout_inf_is_a_usage_error_not_a_crash_scripted_server(bfcl_store_path: Path, tmp_path: Path) -> None:
    """Before: the eval ran, the client's first request raised OverflowError (httpx's deadline past time_t), and the
    command ended with "unexpected OverflowError ... a bug in ee-middleware", exit 1."""
    with ScriptedChatServer(_prediction, models=["em"]) as server:
        args = ["experience", "eval", "--model", f"openai:{server.base_url}#em", "--store", str(bfcl_store_path), "--limit", "1"]
        result = runner.invoke(app, [*args, "--out", str(tmp_path / "out"), "--timeout", "inf", "--json"])
        assert server.requests == [], server.requests
    assert result.exit_code == 2, result.output
    assert "--timeout" in result.output and "OverflowError" not in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_the_sandbox_setting_timeout_s_reaches_the_client_and_its_advice_names_it_slow_scripted_server(bfcl_store_path: Path) -> None:
    """Before: timeout_s was an unknown setting ('Bad options'), and the client waited 60 s whatever the config said."""
    with ScriptedChatServer(_slow(_prediction), models=["em"]) as server:
        spec = f"experience:openai:{server.base_url}#em"
        for timeout_s, fails in ((0.1, True), (5, False)):
            sandbox = build_sandbox(spec, timeout_s=timeout_s, store=str(bfcl_store_path))
            assert isinstance(sandbox, ExperienceSandbox)
            client = sandbox._client
            assert isinstance(client, OpenAIChatClient)
            assert (client.timeout_s, client.timeout_knob) == (timeout_s, SANDBOX_KNOB)
            store = LocalExperienceStore(bfcl_store_path)
            trajectory = next(iter(store.iter_trajectories()))
            store.close()
            step = next(s for s in trajectory.steps if s.action.tool_call is not None)
            assert step.action.tool_call is not None
            sandbox.reset(None)
            sandbox.at_step(trajectory, step)
            call = ToolCall(id="alt", name=step.action.tool_call.name, arguments={**step.action.tool_call.arguments, "__alt": 1})
            try:
                if fails:
                    with pytest.raises(Exception) as caught:
                        sandbox.execute(call)
                    assert f"raise timeout_s ({SANDBOX_KNOB}; now 0.1 s)" in str(caught.value)
                    assert not isinstance(caught.value, SyntheticObservationError)
                else:
                    assert sandbox.execute(call).content == "report.pdf"
            finally:
                sandbox.close()


@pytest.mark.parametrize("value", [0, -1, "60", True, float("nan"), float("inf"), float("-inf")])
def test_a_bad_timeout_s_setting_is_named_with_its_fix(value: Any) -> None:
    """Before: inf (valid TOML: ``timeout_s = inf``) was accepted, and every request to the model then failed."""
    with pytest.raises(SandboxError, match=r"timeout_s must be a finite number of seconds > 0.*e\.g\. timeout_s = 120"):
        build_sandbox("experience:openai:http://127.0.0.1:9/v1#em", timeout_s=value, check_endpoint=False)


def test_timeout_knob_is_not_a_sandbox_setting() -> None:
    with pytest.raises(SandboxError, match="timeout_knob is not a setting"):
        build_sandbox("experience:openai:http://127.0.0.1:9/v1#em", timeout_knob="x", check_endpoint=False)
