"""Whether a thread's later turn gave the structured response in its state is read from that turn's own messages, and
from a reply's text blocks only (as ``ProviderStrategy`` parses it): a model giving the same answer on two turns keeps
it on both, and a reasoning model's earlier reply (thinking blocks beside the JSON) still marks its response as that
turn's, not a later turn's. Real ``create_react_agent`` and ``create_agent`` graphs on a real checkpointer, recorded
into a real local store."""

from __future__ import annotations

from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain.agents.structured_output import ProviderStrategy
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent

from ee_middleware import record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.payloads import PayloadEncoder
from ee_middleware.capture.redaction import Redactor
from ee_middleware.testing import ScriptedChatModel, tool_call
from tests.capture.test_structured_responses import Verdict, _turns, fetch

ANSWER = '{"verdict":"ok","score":7}'
THINKING = {"type": "thinking", "thinking": "The draft reads fine; 7 of 10.", "signature": "sig"}


@pytest.mark.parametrize(
    "second_reply",
    ["Still fine: ok, 7.", '```json\n{"verdict": "ok", "score": 7}\n```'],
    ids=["prose", "fenced-json"],
)
def test_create_react_agent_giving_the_same_answer_on_a_later_turn_keeps_it(store, store_path, second_reply: str) -> None:
    """Turn 1's reply is the JSON as text; turn 2's is not; ``generate_structured_response`` gives the same ``Verdict`` on
    both. Was: turn 2 was taken for a turn that gave none (turn 1's reply carries an equal value) and stored its reply."""
    replies = iter(['{"verdict": "ok", "score": 7}', second_reply])

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if [t["function"]["name"] for t in tools or []] == ["Verdict"]:
            return AIMessage(content="", tool_calls=[tool_call("Verdict", verdict="ok", score=7)])
        return AIMessage(content=next(replies))

    graph = create_react_agent(
        ScriptedChatModel(policy=policy, model_name="m"), [fetch], response_format=Verdict, checkpointer=InMemorySaver()
    )
    agent = record_experience(graph, app="react", store=store_path)
    config = {"configurable": {"thread_id": "r1"}}
    outputs = [agent.invoke({"messages": [("user", f"review d{i}")]}, config) for i in (1, 2)]
    assert agent.flush()
    assert [o["structured_response"] for o in outputs] == [Verdict(verdict="ok", score=7)] * 2

    assert [t.final_answer for t in _turns(store)] == [ANSWER, ANSWER]


def test_a_reasoning_replys_structured_response_is_not_a_later_turns_answer(store, store_path) -> None:
    """``ProviderStrategy``, turn 1's reply a thinking block and the JSON in a text block (Anthropic extended thinking);
    turn 2 ended by ``ModelCallLimitMiddleware`` gives none. Was: the thinking block made the reply's text no JSON, so
    nothing carried turn 1's response and turn 2 answered with it."""
    first = AIMessage(content=[THINKING, {"type": "text", "text": '{"verdict": "ok", "score": 7}'}])
    model = ScriptedChatModel(script=[first], model_name="scripted-expert")
    limit = ModelCallLimitMiddleware(thread_limit=1, exit_behavior="end")
    graph = create_agent(model, [], response_format=ProviderStrategy(Verdict), middleware=[limit], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="stale", store=store_path)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "review d1")]}, config)
    second = agent.invoke({"messages": [("user", "review d2")]}, config)
    assert agent.flush()
    assert second["structured_response"] == Verdict(verdict="ok", score=7)  # turn 1's, kept by the checkpoint

    one, two = _turns(store)
    assert one.final_answer == ANSWER
    assert two.final_answer == second["messages"][-1].content and two.final_answer.startswith("Model call limits exceeded")


def test_reasoning_blocks_beside_the_json_leave_the_turns_own_answer_and_an_earlier_ones_apart() -> None:
    """The same read on states as ingest reads them back (a plain dict response): a reply whose text block is the JSON,
    beside a reasoning block (OpenAI Responses), carries it; the turn that gave it answers with it, a later one that
    did not answers with its own message."""
    encoder = PayloadEncoder(Redactor(defaults=False), 10_000)
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "fine"}]}
    reply = AIMessage(content=[reasoning, {"type": "text", "text": '{"verdict": "ok", "score": 7}'}])
    response = {"verdict": "ok", "score": 7}
    turn_one = [HumanMessage("review d1"), reply]
    assert encoder.graph_output_attributes({"messages": turn_one, "structured_response": response})[sc.EE_FINAL_ANSWER] == ANSWER
    later = {"messages": [*turn_one, HumanMessage("review d2"), AIMessage("Model call limits exceeded")], "structured_response": response}
    assert encoder.graph_output_attributes(later)[sc.EE_FINAL_ANSWER] == "Model call limits exceeded"
