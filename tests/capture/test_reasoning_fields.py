"""record_experience keeps a reasoning model's reasoning whichever field its chat model put it in: a real LangGraph
ReAct agent whose replies carry it as Ollama's and the gpt-oss template's ``thinking`` or OpenRouter's
``reasoning_details`` (in ``additional_kwargs``, as LangChain keeps a message dict's extra fields and
langchain-openrouter keeps OpenRouter's), recorded through the real OTel SDK into the real store: each step the reply
made carries it, every assistant message holds it as ``reasoning_content``, and no text holds it. Before, both were
dropped."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, convert_to_messages
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.messages import content_to_text
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.conftest import record_once

THOUGHT = "Pears may be out: check the stock before ordering."
DETAILS = [
    {"type": "reasoning.summary", "summary": THOUGHT, "format": "openai-responses-v1", "index": 0},
    {"type": "reasoning.encrypted", "data": "gAAAAABo", "format": "openai-responses-v1", "index": 1},
]


def _replies(shape: str) -> list[AIMessage]:
    check = tool_call("check_stock", item="pear")
    if shape == "thinking":  # the message dict Ollama's /api/chat returns, kept in the graph's state
        [first] = convert_to_messages(
            [{"role": "assistant", "content": "", "thinking": THOUGHT, "tool_calls": [{**check, "type": "tool_call"}]}]
        )
    else:  # langchain-openrouter for a model that returns a summary and its encrypted reasoning
        first = AIMessage(content="", additional_kwargs={"reasoning_details": DETAILS}, tool_calls=[check])
    return [first, AIMessage(content="No pears in stock.")]


@pytest.mark.parametrize("shape", ["thinking", "reasoning_details"])
def test_a_replys_reasoning_in_thinking_or_reasoning_details_is_recorded(store_path: Any, tools: list[Any], shape: str) -> None:
    model = ScriptedChatModel(script=_replies(shape), model_name="gpt-oss-20b")
    agent = record_experience(create_react_agent(model, tools), app="shop", store=store_path)
    trajectory = record_once(agent, store_path, {"messages": [("user", "Do we have pears?")]})
    assert [(s.action.kind, s.action.reasoning) for s in trajectory.steps] == [("tool_call", THOUGHT), ("answer", None)]
    assert [m.get("reasoning_content") for m in trajectory.messages if m["role"] == "assistant"] == [THOUGHT, None]
    assert [m.get("reasoning_content") for m in trajectory.steps[1].state if m["role"] == "assistant"] == [THOUGHT]
    texts = [content_to_text(m.get("content")) for m in trajectory.messages]
    assert not any(THOUGHT in text or "reasoning." in text for text in texts)
