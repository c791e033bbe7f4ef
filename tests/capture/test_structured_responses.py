"""The final answer of a run whose graph asked for a structured response is that response as JSON, whichever agent
asked for it: ``create_agent``'s ``ToolStrategy`` (the run ends on the tool message its model node wrote),
``create_agent``'s ``ProviderStrategy`` (parsed from the model's reply) and ``langgraph.prebuilt.create_react_agent``'s
``response_format`` (a structured-output call after the model's reply, in its ``generate_structured_response`` node)."""

from __future__ import annotations

from typing import Any

from langchain.agents import create_agent
from langchain.agents.structured_output import ProviderStrategy
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from ee_middleware import record_experience
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
