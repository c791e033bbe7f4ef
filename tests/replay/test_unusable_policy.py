"""A served policy whose model never answers usably (no choices, a choice without a message, prose only, arguments that
are not JSON) fails the replay with an ``error:`` line naming why, and leaves the trajectories to replay again; one that
answers usably at some states keeps today's behaviour. The timeout advice names the knob of the command that runs.

Against real HTTP servers (:class:`~ee_middleware.testing.http.ScriptedChatServer`) and the BFCL expert store."""

from __future__ import annotations

import json
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ee_middleware.errors import ModelError
from ee_middleware.models.openai_compat import FewerChoicesWarning, OpenAIChatClient
from ee_middleware.replay.config import ReplayConfig
from ee_middleware.replay.job import run_replay
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing.http import Reply, ScriptedChatServer, serving
from tests.conftest import BFCL_ENTRIES

K = 3
A_CALL = '<tool_call>{"name": "pwd", "arguments": {}}</tool_call>'
"""A usable answer at every BFCL state (``pwd``: an offered tool with no arguments)."""


def _bad_arguments(body: dict[str, Any]) -> dict[str, Any]:
    name = body["tools"][0]["function"]["name"]
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{not json"}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}


UNUSABLE = {
    "no choices": ([Reply({"id": "x", "object": "chat.completion"})], "the response has no choices"),
    "empty choices": ([Reply({"choices": []})], "the response has no choices"),
    "null message": ([Reply({"choices": [{"index": 0, "message": None, "finish_reason": "stop"}]})], "has no 'message' object"),
    "prose": (["I would not call anything here."], "answered prose, no tool call: serve the model with a tool-call parser"),
    "arguments not JSON": (_bad_arguments, "arguments are not valid JSON"),
}


def _ee(*args: str) -> Any:
    from ee_middleware.cli.app import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_a_served_policy_that_never_answers_usably_fails_the_replay_and_a_rerun_replays(kind: str, bfcl_store_path: Path) -> None:
    script, reason = UNUSABLE[kind]
    store = str(bfcl_store_path)
    with ScriptedChatServer(script) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        spec = f"openai:{server.base_url}#m"
        result = _ee("replay", "run", "--store", store, "--policy", spec, "--k", str(K), "--json", "--no-progress")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert {"done", "states", "branches", "rejected_by_reason", "failed", "branches_per_s"} <= set(summary), "the keys it had are kept"
    assert summary["done"] == 0 and len(summary["failed"]) == BFCL_ENTRIES
    assert any(reason in why for why in summary["unusable_proposals"]), summary["unusable_proposals"]
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "gave no usable proposal at any state" in error and reason in error and "run the same command again" in error
    assert LocalExperienceStore(store).rollouts().height == 0, "no refill-only alternatives were stored as the policy's"

    with ScriptedChatServer([A_CALL]) as fixed, warnings.catch_warnings():  # the server fixed, behind the same spec
        warnings.simplefilter("ignore", FewerChoicesWarning)
        again = _ee("replay", "run", "--store", store, "--policy", spec.replace(server.base_url, fixed.base_url), "--k", str(K))
        assert again.exit_code == 0, again.output
        assert fixed.requests, "the trajectories were replayed again"
    rollouts = LocalExperienceStore(store).rollouts()
    assert rollouts.height and (rollouts["proposer_policy"] == "openai").any()


def test_a_served_policy_usable_at_some_states_only_replays_every_trajectory_as_before(bfcl_store_path: Path) -> None:
    # usable at each trajectory's first state (system + user message) only; prose at every later one
    def answer(body: dict[str, Any]) -> str:
        return A_CALL if len(body["messages"]) <= 2 else "I would not call anything here."

    with ScriptedChatServer(answer) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=K, workers=1, policy=f"openai:{server.base_url}#m"))
    assert summary.done == BFCL_ENTRIES and summary.failed == {} and not summary.no_usable_proposal
    assert summary.rejected_by_reason.get("unparsable", 0) > 0 and summary.unusable_proposals == {}


def test_a_replay_whose_alternatives_are_mostly_refilled_says_so(bfcl_store_path: Path) -> None:
    """Sweep V: a policy usable at each trajectory's first state only stored 108 of 128 alternatives from the refill,
    exit 0, and the summary said only `unparsable=108` under rejections: nothing told the rollouts were mostly not the
    policy's. The summary counts them (refilled_branches) and, past half, the replay warns."""

    def answer(body: dict[str, Any]) -> str:
        return A_CALL if len(body["messages"]) <= 2 else "I would not call anything here."

    with ScriptedChatServer(answer) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        spec = f"openai:{server.base_url}#m"
        result = _ee("replay", "run", "--store", str(bfcl_store_path), "--policy", spec, "--k", str(K), "--no-progress", "--json")
        shown = _ee("replay", "run", "--store", str(bfcl_store_path), "--policy", spec, "--k", str(K), "--no-progress", "--again")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rollouts = LocalExperienceStore(bfcl_store_path).rollouts()
    rollouts = rollouts.filter(rollouts["replay_id"] == summary["replay_id"])  # (the first run's; --again made more)
    refilled = rollouts.filter(rollouts["proposer_policy"] == "mutate").height
    assert summary["refilled_branches"] == refilled and refilled * 2 > summary["branches"] > 0
    text = " ".join(shown.output.split())
    assert f"mostly refilled: {refilled} of the {summary['branches']} stored alternatives were proposed by the refill" in text, text


def test_the_fewer_choices_count_does_not_count_the_problem_made_up_for_a_body_without_choices(bfcl_store_path: Path) -> None:
    no_choices = ScriptedChatServer([Reply({"id": "x", "object": "chat.completion"})])
    with no_choices as server, pytest.warns(FewerChoicesWarning, match=rf"asked 'm' for {K} answers and got 0:"):
        summary = run_replay(ReplayConfig.load(store=bfcl_store_path, k=K, workers=1, policy=f"openai:{server.base_url}#m"))
    assert summary.short_answers == summary.states and summary.missing_answers == K * summary.states


class _Hanging(BaseHTTPRequestHandler):
    """Answers every request after 2 s: longer than the timeouts below."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        time.sleep(2)
        try:
            self.send_response(200)
            self.end_headers()
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_timeout_advice_of_a_replay_names_its_policy_setting_not_a_flag_it_lacks(bfcl_store_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hanging)
    with serving(server) as url:
        spec = f"openai:{url}#m"
        result = _ee(
            "replay", "run", "--store", str(bfcl_store_path), "--policy", spec, "--k", "2", "--limit", "1", "--no-progress",
            "--policy-setting", "timeout_s=0.5", "--policy-setting", "retries=0",
        )  # fmt: skip
        assert result.exit_code == 1, result.output
        text = " ".join(result.stderr.split())
        assert "raise timeout_s (`--policy-setting timeout_s=N`, or timeout_s under [replay.policy_settings]; now 0.5 s)" in text, text
        assert "--timeout;" not in text

        client = OpenAIChatClient(url, "m", timeout_s=0.5, retries=0)  # a caller that names no knob: the setting alone
        with pytest.raises(ModelError) as info:
            client.complete([{"role": "user", "content": "hi"}])
        assert "raise timeout_s (now 0.5 s)" in str(info.value) and "--timeout" not in str(info.value)
        client.close()
        knob = OpenAIChatClient(url, "m", timeout_s=0.5, retries=0, timeout_knob="--timeout N")
        with pytest.raises(ModelError) as info:
            knob.complete([{"role": "user", "content": "hi"}])
        assert "raise timeout_s (--timeout N; now 0.5 s)" in str(info.value)
        knob.close()


GARBAGE_POLICY = '''
from ee_middleware.records import ProposerInfo, ToolCall
from ee_middleware.replay.policies.protocol import Candidate, Proposals


class Garbage:
    """Proposes only calls no offered tool takes (a user's own policy with a bug; no model behind it)."""

    name = "garbage"

    def propose(self, point, k, *, seed):
        info = ProposerInfo(policy=self.name, seed=seed)
        return Proposals(candidates=[Candidate(call=ToolCall(id=f"g{i}", name="burn_library", arguments={}), proposer=info) for i in range(k)])

    def describe(self):
        return {}

    def close(self):
        pass


def make():
    return Garbage()
'''


def test_a_users_own_policy_that_never_proposes_usably_is_told_to_fix_the_policy_not_a_model_server(
    bfcl_store_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: "the policy's model gave no usable proposal ...: fix the model's server (or the model)", for a plug-in
    policy that asks no model (sweep S20, finding 8); the stored reasons said the same. A served policy's advice stays
    the model's server's (the test above)."""
    (tmp_path / "garbage_policy.py").write_text(GARBAGE_POLICY)
    monkeypatch.syspath_prepend(str(tmp_path))
    store = str(bfcl_store_path)
    result = _ee("replay", "run", "--store", store, "--policy", "garbage_policy:make", "--k", str(K), "--json", "--no-progress")
    assert result.exit_code == 1, result.output
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert "the policy 'garbage_policy:make' gave no usable proposal at any state" in error, error
    assert "fix the policy 'garbage_policy:make'" in error and "model's server" not in error, error
    reasons = json.loads(result.stdout)["failed"].values()
    assert reasons and all("fix the policy 'garbage_policy:make'" in why and "model's server" not in why for why in reasons), reasons


def test_a_served_policys_advice_still_names_the_models_server(bfcl_store_path: Path) -> None:
    with ScriptedChatServer(["I would not call anything here."]) as server, warnings.catch_warnings():
        warnings.simplefilter("ignore", FewerChoicesWarning)
        result = _ee(
            "replay", "run", "--store", str(bfcl_store_path), "--policy", f"openai:{server.base_url}#m", "--k", str(K), "--no-progress"
        )
    error = next(line for line in result.stderr.splitlines() if line.startswith("error:"))
    assert (
        result.exit_code == 1 and "the policy's model gave no usable proposal" in error and "fix the model's server (or the model)" in error
    ), error
