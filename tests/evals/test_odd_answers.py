"""A served model that answers oddly, behind a fake server (a real local HTTP server speaking the OpenAI chat API,
with scripted answers): what the loop keeps of its answer and what the result's reason says."""

from __future__ import annotations

from typing import Any

from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.evals.runner import result_row
from ee_middleware.evals.tasks import EvalTask, TaskResult
from ee_middleware.records import Observation, ToolCall
from ee_middleware.testing.http import ScriptedChatServer


class _Recording:
    def __init__(self) -> None:
        self.calls: list[ToolCall] = []

    def execute(self, call: ToolCall) -> Observation:
        self.calls.append(call)
        return Observation(content="ok")


TASK = EvalTask("s", "t1", "c", [[{"role": "user", "content": "Make c1 high priority."}]], [[]], [[]])
LIST_ARGUMENTS = {"id": "c1", "type": "function", "function": {"name": "set-priority", "arguments": '["c1", "high"]'}}


def _converse(answers: list[dict[str, Any]], config: LoopConfig = LoopConfig()) -> tuple[Any, _Recording]:
    """A fake OpenAI chat server: the n-th request gets ``answers[n]`` (the last one once they run out)."""
    environment = _Recording()
    with ScriptedChatServer(answers) as server:
        client = build_eval_client(f"openai:{server.base_url}#m", retries=0, timeout_s=10)
        try:
            return run_conversation(client, TASK, environment, config), environment
        finally:
            client.close()


def test_a_structured_call_whose_arguments_cannot_be_read_is_a_problem_not_silence() -> None:
    """Before: the call vanished (no call, no problem), the turn ended as if the model had answered nothing,
    and the task's reason said only that the state differed."""
    conversation, environment = _converse([{"role": "assistant", "content": "", "tool_calls": [LIST_ARGUMENTS]}])
    [step] = conversation.turns[0].steps
    assert step.calls == [] and environment.calls == []
    assert step.problems and "must be a JSON object" in step.problems[0], step.problems
    result = TaskResult("s", "c", "t1", 0, False, "the final state differs", "state_mismatch", conversation, 0.0)
    reason = result_row(result, "m")["reason"]
    assert reason.startswith("the final state differs") and "could not be read" in reason and "set-priority" in reason, reason


def test_an_unreadable_structured_call_is_fed_back_when_asked() -> None:
    good = {"id": "c2", "type": "function", "function": {"name": "set-priority", "arguments": '{"contact_id": "c1", "level": "high"}'}}
    answers = [
        {"role": "assistant", "content": "", "tool_calls": [LIST_ARGUMENTS]},
        {"role": "assistant", "content": "", "tool_calls": [good]},
        {"role": "assistant", "content": "c1 is high priority."},
    ]
    conversation, environment = _converse(answers, LoopConfig(feed_back_parse_errors=True))
    assert [c.arguments for c in environment.calls] == [{"contact_id": "c1", "level": "high"}]
    assert any("could not be read" in str(m.get("content")) for m in conversation.messages if m["role"] == "user")
    assert conversation.turns[0].final_text == "c1 is high priority."
