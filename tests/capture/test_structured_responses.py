"""The final answer of a run whose graph asked for a structured response is that response as JSON, whichever agent
asked for it: ``create_agent``'s ``ToolStrategy`` (the run ends on the tool message its model node wrote),
``create_agent``'s ``ProviderStrategy`` (parsed from the model's reply) and ``langgraph.prebuilt.create_react_agent``'s
``response_format`` (a structured-output call after the model's reply, in its ``generate_structured_response`` node)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain.agents.structured_output import ProviderStrategy, ToolStrategy
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel, ConfigDict, Field

from ee_middleware import record_experience
from ee_middleware.capture import semconv as sc
from ee_middleware.capture.payloads import PayloadEncoder
from ee_middleware.capture.redaction import Redactor
from ee_middleware.testing import ScriptedChatModel, tool_call


@tool
def fetch(doc: str) -> str:
    """Fetch a document."""
    return f"text of {doc}"


class Verdict(BaseModel):
    verdict: str
    score: int


def _reviewer(messages: list[Any], tools: Any) -> AIMessage:
    """Reads d1, says so, and, asked for a ``Verdict`` (the only tool of the structured-output call), gives it."""
    names = [t["function"]["name"] for t in tools or []]
    if names == ["Verdict"]:
        return AIMessage(content="", tool_calls=[tool_call("Verdict", verdict="ok", score=7)])
    if not any(m.type == "ai" for m in messages):
        return AIMessage(content="", tool_calls=[tool_call("fetch", doc="d1")])
    return AIMessage(content="done with d1")


def test_create_react_agents_structured_response_is_the_final_answer(store, store_path):
    """Before, the final answer was the model's prose before the structured call ('done with d1')."""
    graph = create_react_agent(ScriptedChatModel(policy=_reviewer, model_name="scripted-expert"), [fetch], response_format=Verdict)
    agent = record_experience(graph, app="react", store=store_path)
    result = agent.invoke({"messages": [("user", "review d1")]}, {"configurable": {"thread_id": "r1"}})
    assert agent.flush()
    assert result["structured_response"] == Verdict(verdict="ok", score=7)
    [t] = list(store.iter_trajectories())
    assert (t.status, t.final_answer) == ("completed", '{"verdict":"ok","score":7}')
    assert [(s.action.kind, s.action.tool_call.name if s.action.tool_call else s.action.content) for s in t.steps][:2] == [
        ("tool_call", "fetch"),
        ("answer", "done with d1"),
    ]


def test_provider_strategys_structured_response_is_the_final_answer_as_compact_json(store, store_path):
    """``ProviderStrategy`` parses the model's JSON reply: the answer is the structured response written as JSON, the
    same text whichever strategy gave it (not the model's spacing)."""
    model = ScriptedChatModel(script=[AIMessage(content='{"verdict": "ok",  "score": 7}')], model_name="scripted-expert")
    graph = create_agent(model, [], response_format=ProviderStrategy(Verdict))
    agent = record_experience(graph, app="provider", store=store_path)
    result = agent.invoke({"messages": [("user", "review d1")]}, {"configurable": {"thread_id": "p1"}})
    assert agent.flush()
    assert result["structured_response"] == Verdict(verdict="ok", score=7)
    [t] = list(store.iter_trajectories())
    assert (t.status, t.final_answer) == ("completed", '{"verdict":"ok","score":7}')


class Order(BaseModel):
    """A schema whose JSON (the schema the model is given, and its reply) uses aliases."""

    model_config = ConfigDict(populate_by_name=True)
    order_id: int = Field(alias="orderId")
    ship_by: dt.date = Field(alias="shipBy")


def _turns(store: Any) -> list[Any]:
    return sorted(store.iter_trajectories(), key=lambda t: t.started_at)


@pytest.mark.parametrize("strategy", ["provider", "tool"])
def test_a_later_turn_ended_without_a_structured_response_answers_with_its_own_message(store, store_path, strategy):
    """LangGraph keeps turn 1's ``structured_response`` in the thread's checkpoint. Turn 2, ended by
    ``ModelCallLimitMiddleware`` before any model call, gives none: its answer is the middleware's message. Before, it
    was turn 1's structured response ('{"verdict":"ok","score":7}')."""
    if strategy == "provider":
        first, response_format = AIMessage(content='{"verdict": "ok", "score": 7}'), ProviderStrategy(Verdict)
    else:
        first, response_format = AIMessage(content="", tool_calls=[tool_call("Verdict", verdict="ok", score=7)]), ToolStrategy(Verdict)
    model = ScriptedChatModel(script=[first], model_name="scripted-expert")
    limit = ModelCallLimitMiddleware(thread_limit=1, exit_behavior="end")
    graph = create_agent(model, [], response_format=response_format, middleware=[limit], checkpointer=InMemorySaver())
    agent = record_experience(graph, app="stale", store=store_path)
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke({"messages": [("user", "review d1")]}, config)
    second = agent.invoke({"messages": [("user", "review d2")]}, config)
    assert agent.flush()
    assert second["structured_response"] == Verdict(verdict="ok", score=7)  # turn 1's, kept by the checkpoint
    one, two = _turns(store)
    assert one.final_answer == '{"verdict":"ok","score":7}'
    assert two.final_answer == second["messages"][-1].content and two.final_answer.startswith("Model call limits exceeded")


def test_create_react_agent_answers_each_turn_of_a_thread_with_its_own_structured_response(store, store_path):
    """``create_react_agent`` asks for a new structured response at the end of every turn, in a call of its own (no
    message carries it): each turn's answer is the one it gave, never an earlier turn's."""
    verdicts = iter([("ok", 7), ("bad", 1)])

    def policy(messages: list[Any], tools: Any) -> AIMessage:
        if [t["function"]["name"] for t in tools or []] == ["Verdict"]:
            verdict, score = next(verdicts)
            return AIMessage(content="", tool_calls=[tool_call("Verdict", verdict=verdict, score=score)])
        return AIMessage(content="reviewed")

    model = ScriptedChatModel(policy=policy, model_name="scripted-expert")
    graph = create_react_agent(model, [fetch], response_format=Verdict, checkpointer=InMemorySaver())
    agent = record_experience(graph, app="react", store=store_path)
    config = {"configurable": {"thread_id": "r1"}}
    agent.invoke({"messages": [("user", "review d1")]}, config)
    agent.invoke({"messages": [("user", "review d2")]}, config)
    assert agent.flush()
    assert [t.final_answer for t in _turns(store)] == ['{"verdict":"ok","score":7}', '{"verdict":"bad","score":1}']


@pytest.mark.parametrize("strategy", ["provider", "tool"])
def test_a_structured_answer_has_its_schemas_alias_keys(store, store_path, strategy):
    """The provider is given ``Order``'s JSON schema (``orderId``, ``shipBy``) and the model answers with those keys:
    the stored answer has them too, whichever strategy parsed it. Before, it had the Python field names
    (``{"order_id":7,"ship_by":"2026-12-03"}``), keys neither the schema nor the reply has."""
    assert list(Order.model_json_schema()["properties"]) == ["orderId", "shipBy"]
    if strategy == "provider":
        reply, response_format = AIMessage(content='{"orderId": 7, "shipBy": "2026-12-03"}'), ProviderStrategy(Order)
    else:
        reply = AIMessage(content="", tool_calls=[tool_call("Order", orderId=7, shipBy="2026-12-03")])
        response_format = ToolStrategy(Order)
    graph = create_agent(ScriptedChatModel(script=[reply], model_name="scripted-expert"), [], response_format=response_format)
    agent = record_experience(graph, app="alias", store=store_path)
    result = agent.invoke({"messages": [("user", "which order?")]})
    assert agent.flush()
    assert result["structured_response"] == Order(order_id=7, ship_by=dt.date(2026, 12, 3))
    [t] = list(store.iter_trajectories())
    assert (t.status, t.final_answer) == ("completed", '{"orderId":7,"shipBy":"2026-12-03"}')


def test_an_ingested_state_with_an_earlier_turns_structured_response_answers_with_its_last_message():
    """Ingest reads a graph's output state back from JSON (the structured response a plain dict) and answers with the
    same function: an earlier turn's response, carried by that turn's reply, is not this turn's answer; this turn's,
    carried by its last reply, is."""
    encoder = PayloadEncoder(Redactor(defaults=False), 10_000)
    earlier = [HumanMessage("review d1"), AIMessage(content='{"verdict": "ok", "score": 7}'), HumanMessage("review d2")]
    stale = {"messages": [*earlier, AIMessage(content="Model call limits exceeded")], "structured_response": {"verdict": "ok", "score": 7}}
    fresh = {
        "messages": [*earlier, AIMessage(content='{"verdict":"bad","score":1}')],
        "structured_response": {"verdict": "bad", "score": 1},
    }
    assert encoder.graph_output_attributes(stale)[sc.EE_FINAL_ANSWER] == "Model call limits exceeded"
    assert encoder.graph_output_attributes(fresh)[sc.EE_FINAL_ANSWER] == '{"verdict":"bad","score":1}'
