"""A reasoning model's answers in an eval conversation: the next prompt of the turn shows its reasoning as capture
records an agent's (``reasoning_content``), so a model trained on recorded states is asked with the states it learned.

The model is a fake server (a real local HTTP server speaking the OpenAI chat API, scripted answers); the client is the
real one."""

from __future__ import annotations

from typing import Any

from ee_middleware.evals.clients import build_eval_client
from ee_middleware.evals.loop import LoopConfig, run_conversation
from ee_middleware.messages import langchain_to_openai
from ee_middleware.testing.http import ScriptedChatServer
from tests.evals.test_call_ids import TASK, _call, _Weather

REASONING = "Paris first: the user named it first."


def _requests(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with ScriptedChatServer(answers, models=None) as server:
        client = build_eval_client(f"openai:{server.base_url}#m", retries=0, timeout_s=10)
        try:
            run_conversation(client, TASK, _Weather(), LoopConfig())
        finally:
            client.close()
        return server.requests


def test_the_reasoning_of_an_answer_is_in_the_prompts_that_follow_it() -> None:
    """Before, the loop rebuilt the answer from its text and calls: the reasoning was dropped, and a Qwen3-style
    template rendered the turn without the ``<think>`` block the trained states had."""
    answers = [
        {"role": "assistant", "content": None, "reasoning_content": REASONING, "tool_calls": [_call("c1", "Paris")]},
        {"role": "assistant", "content": "<think>Rome next.</think>", "tool_calls": [_call("c2", "Rome")]},
        {"role": "assistant", "content": "Paris 20C, Rome 25C"},
    ]
    first, second, third = _requests(answers)
    assert not any(m["role"] == "assistant" for m in first["messages"])
    [answered] = [m for m in second["messages"] if m["role"] == "assistant"]
    assert answered["reasoning_content"] == REASONING and answered["tool_calls"][0]["function"]["name"] == "get_weather"
    # reasoning written inline (a server without a reasoning parser) is kept apart from the text, as capture keeps it
    later = [m for m in third["messages"] if m["role"] == "assistant"]
    assert [m.get("reasoning_content") for m in later] == [REASONING, "Rome next."]
    assert all("<think>" not in (m.get("content") or "") for m in later)


def test_an_answer_without_reasoning_has_no_reasoning_field() -> None:
    answers = [{"role": "assistant", "content": None, "tool_calls": [_call("c1", "Paris")]}, {"role": "assistant", "content": "20C"}]
    _, second = _requests(answers)
    [answered] = [m for m in second["messages"] if m["role"] == "assistant"]
    assert "reasoning_content" not in answered


def test_capture_records_a_reasoning_answer_in_the_same_field() -> None:
    """The field the loop writes is the one capture writes for a LangChain message carrying reasoning."""
    from langchain_core.messages import AIMessage

    [recorded] = langchain_to_openai([AIMessage(content="", additional_kwargs={"reasoning_content": REASONING})])
    assert recorded.get("reasoning_content") == REASONING
