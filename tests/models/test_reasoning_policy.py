"""A chat policy proposing alternatives with a reasoning model served by vLLM (a real local HTTP server answering as
vLLM does with and without ``--reasoning-parser``), from a state recorded by ``@record_experience`` on a real
``create_agent`` graph whose model reasoned: the request gives the earlier reply back with its ``reasoning_content``
(as vLLM takes it, for the chat template to render), and every shape of answer is read for its calls alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage
from langchain_core.tools import tool

from ee_middleware import record_experience
from ee_middleware.replay.policies.chat import OpenAIPolicy
from ee_middleware.replay.policies.protocol import DecisionPoint
from ee_middleware.store import LocalExperienceStore
from ee_middleware.testing import ScriptedChatModel, tool_call
from ee_middleware.testing.http import Reply, ScriptedChatServer

THOUGHT = "The user asks about pears and apples; check pears first."


@tool
def check_stock(item: str) -> str:
    """How many of an item are in stock."""
    return "0"


@pytest.fixture
def point(tmp_path: Path) -> DecisionPoint:
    """The second decision of a run whose model reasoned inline (Qwen3 served without a reasoning parser)."""
    script = [
        AIMessage(content=f"<think>\n{THOUGHT}\n</think>\n\n", tool_calls=[tool_call("check_stock", item="pear")]),
        AIMessage(content="<think>\nNow apples.\n</think>\n\n", tool_calls=[tool_call("check_stock", item="apple")]),
        AIMessage(content="<think>\nBoth are out.\n</think>\n\nNeither is in stock."),
    ]
    agent = record_experience(create_agent(ScriptedChatModel(script=script), [check_stock]), app="shop", store=tmp_path / "store")
    agent.invoke({"messages": [("user", "Do we have pears and apples?")]})
    agent.flush()
    agent.recorder.close()
    store = LocalExperienceStore(tmp_path / "store")
    [t] = list(store.iter_trajectories())
    store.close()
    step = t.steps[1]
    return DecisionPoint(trajectory_id=t.id, step_index=step.index, state=step.state, tools=t.tools, expert=step.action.tool_call)


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}


ANSWERS = [
    # vLLM --reasoning-parser qwen3 --tool-call-parser hermes
    (
        {"role": "assistant", "content": None, "reasoning_content": "Kiwis might be in.", "tool_calls": [call("check_stock", item="kiwi")]},
        "tool_calls",
    ),
    # no reasoning parser: the reasoning inline, a call it only considered inside it
    (
        {
            "role": "assistant",
            "content": '<think>\nMaybe <tool_call>{"name": "check_stock", "arguments": {"item": "fig"}}</tool_call>? No.\n</think>\n\n'
            '<tool_call>\n{"name": "check_stock", "arguments": {"item": "plum"}}\n</tool_call>',
        },
        "stop",
    ),
    ({"role": "assistant", "content": None, "reasoning_content": "Let me think about"}, "length"),  # cut off while reasoning
]


@pytest.fixture
def vllm() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    choices = [{"index": i, "message": m, "finish_reason": f} for i, (m, f) in enumerate(ANSWERS)]
    reply = Reply({"id": "chatcmpl-1", "object": "chat.completion", "model": "qwen3", "choices": choices})
    with ScriptedChatServer([reply]) as server:
        yield server.base_url, server.requests


def test_a_reasoning_models_proposals_from_a_state_that_holds_reasoning(point: DecisionPoint, vllm: tuple[str, list]) -> None:
    """Was: the state given to the policy held the earlier reply's reasoning inline in its text ('<think>...</think>'),
    and that of a model served with a reasoning parser not at all."""
    base_url, requests = vllm
    policy = OpenAIPolicy(base_url, "qwen3", backoff_s=0.01)
    try:
        proposals = policy.propose(point, 3, seed=7)
    finally:
        policy.close()
    [request] = requests
    reply = request["messages"][1]
    assert (reply["content"], reply["reasoning_content"]) == ("", THOUGHT)
    assert "<think>" not in json.dumps(request["messages"])
    found = [(c.call.name, c.call.arguments) if c.call else c.problem for c in proposals.candidates]
    assert found[:2] == [("check_stock", {"item": "kiwi"}), ("check_stock", {"item": "plum"})]  # never the 'fig' it only considered
    assert "still reasoning" in found[2] and "max_tokens" in found[2]
