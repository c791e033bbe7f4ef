"""A curriculum judge that does not reason, whose verdict stops at ``--judge-max-tokens`` (``finish_reason`` ``"length"``),
is reported as cut off with the fix (more --judge-max-tokens), not as a judge that cannot answer the format.

The judge is a real HTTP server on 127.0.0.1 (a scripted stand-in for a served model); the policy, sandbox, store, judge
and CLI are the real ones."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ee_middleware.testing.http import Answer, ScriptedChatServer
from tests.evals.test_curriculum_judge_context import _run
from tests.replay import conftest as replay_fixtures

serve = replay_fixtures.serve  # scripted policies behind real local HTTP servers

CUT_VERDICT = '{"reasoning": "The agent listed the folder with ls and then described at length what it'


def test_a_verdict_cut_at_judge_max_tokens_names_the_cut_and_raise_judge_max_tokens_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    """Was: dropped as 'the judge gave no verdict' and the error said to check --judge (a chat model that follows
    instructions)."""

    def answer(body: dict[str, Any]) -> Answer:
        return {"role": "assistant", "content": CUT_VERDICT}, "length"

    with ScriptedChatServer(answer) as server:
        result = _run(bfcl_store_path, tmp_path, serve, server.base_url, "--judge-max-tokens", "40")
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    reason = "the judge gave no verdict: the answer was cut off at max_tokens (finish_reason 'length'): raise max_tokens (now 40)"
    assert summary["dropped"] == {reason: 1}
    error = summary["error"]
    assert "cut off at max_tokens" in error and "Raise --judge-max-tokens (now 40)" in error
    assert "while still reasoning" not in error and "follows instructions" not in error


def test_a_verdict_that_stopped_on_its_own_unreadable_is_still_a_judge_without_a_verdict_scripted_server(
    bfcl_store_path: Path, tmp_path: Path, serve: Any
) -> None:
    def answer(body: dict[str, Any]) -> Answer:
        return {"role": "assistant", "content": CUT_VERDICT}, "stop"

    with ScriptedChatServer(answer) as server:
        result = _run(bfcl_store_path, tmp_path, serve, server.base_url)
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["dropped"] == {"the judge gave no verdict": 1}
    assert "follows instructions" in summary["error"]
